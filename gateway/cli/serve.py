"""`cardinal serve`: the gateway from gateway.yaml, or over a plan's replicas."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway import planfile
from gateway.cli.args import (
    positive,
    read_text,
)
from gateway.errors import UsageError, cannot_listen
from gateway.planner.catalog import Catalog
from gateway.planner.errors import PlanError


def add_serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="the gateway: OpenAI-compatible load balancing over the cards, with metrics",
        description="Serve the gateway from gateway.yaml (--config), or over a plan's replicas "
        "(--plan with --backends or --base-port). SIGHUP reloads --config; SIGTERM (or SIGINT) "
        "stops accepting and lets requests in flight finish (server.drain_timeout_s).",
    )
    src = serve.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="gateway.yaml")
    src.add_argument("--plan", type=Path, help="fleet.yaml: one backend per URL or replica")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--backends", nargs="+", metavar="URL", help="the plan's replicas")
    where.add_argument(
        "--base-port", type=positive(int), help="replica i at http://127.0.0.1:PORT+i"
    )
    serve.add_argument("--listen", help="host:port (default: the config's, or 127.0.0.1:8080)")
    serve.add_argument(
        "--workers", type=positive(int), default=1, help="processes sharing the port (SO_REUSEPORT)"
    )


@dataclass(frozen=True)
class ConfigFile:
    """Reads gateway.yaml (and the environment) again, for a reload; picklable for workers."""

    path: Path
    listen: str | None = None

    def __call__(self) -> Any:
        import os

        from gateway.server import config as gwconfig

        config = _config_file(self.path, env=os.environ)
        if self.listen:
            host, port = gwconfig.parse_listen(self.listen)
            config = replace(config, host=host, port=port)
        return config


def _serve_config(args: argparse.Namespace, *, env: Any) -> Any:
    """The gateway config from --config, or from --plan and the replicas' URLs."""
    from gateway.server import config as gwconfig

    if args.config:
        if args.backends or args.base_port:
            raise PlanError("--backends and --base-port go with --plan", field="config")
        return _config_file(args.config, env=env)
    from gateway.render.gateway_config import serve_data

    plan = planfile.read(read_text(args.plan))
    replicas = plan.replicas
    if args.backends:
        urls = args.backends
    elif args.base_port:
        urls = [f"http://127.0.0.1:{args.base_port + i}" for i in range(replicas)]
    else:
        raise PlanError("--plan needs --backends URL ... or --base-port PORT", field="backends")
    if len(urls) != replicas:
        print(f"cardinal serve: note: {len(urls)} backends, the plan has {replicas} replicas")
    listen = args.listen or "127.0.0.1:8080"
    return gwconfig.parse(serve_data(plan, urls=urls, listen=listen), env={})


def _config_file(path: Path, *, env: Any) -> Any:
    from gateway.server import config as gwconfig

    try:
        data = path.read_bytes()
    except OSError as e:
        # a ConfigError, so a reload that cannot read the file is rejected, not fatal
        raise gwconfig.ConfigError(f"cannot read {path}: {e.strerror}", field="(file)") from None
    text = gwconfig.decode(data, what=str(path), field="(file)")
    beside = path.parent  # files the config names are relative to it
    return gwconfig.load(text, env=env, read=lambda name: (beside / name).read_bytes())


def cmd_serve(args: argparse.Namespace, catalog: Catalog) -> int:
    import os

    from gateway.server import config as gwconfig
    from gateway.server.runner import serve

    try:
        config = _serve_config(args, env=os.environ)
        if args.listen:
            host, port = gwconfig.parse_listen(args.listen)
            config = replace(config, host=host, port=port)
    except gwconfig.ConfigError as e:
        flag = "--config" if args.config else "--listen" if e.field == "listen" else "--plan"
        raise UsageError(str(e), field=flag) from None
    load = ConfigFile(path=args.config, listen=args.listen) if args.config else None
    try:
        serve(config, workers=args.workers, load=load)
    except OSError as e:  # the listen address taken or not ours: one line, like every other error
        raise cannot_listen("--listen", e) from None
    return 0
