"""`nginx.conf` (built with nginx-config-builder): nginx in front of the gateway replicas.

A second server on DIRECT_PORT goes straight to the engines, to compare with and without the
gateway or to keep serving while it is down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nginx.config.api import Config, EmptyBlock, Location, Section
from nginx.config.api.options import KeyValuesMultiLines

from gateway.render.fleet import ENGINE_PORT, GATEWAY_PORT, fleet_from_plan

LISTEN_PORT = 80
DIRECT_PORT = 8081
MAX_BODY = "8m"  # the gateway's own max_body_bytes default: reject big bodies before they travel
# Temp files relative to the prefix (-p), so nginx runs as any user in any directory.
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def render_nginx(
    plan: Mapping[str, Any],
    *,
    gateways: Sequence[str] = (f"gateway:{GATEWAY_PORT}",),
    engines: Sequence[str] | None = None,
    listen: str = str(LISTEN_PORT),
    direct_listen: str = str(DIRECT_PORT),
    read_timeout_s: int = 600,
) -> str:
    """The whole nginx.conf: `gateways` behind `listen`, the engines behind `direct_listen`."""
    fleet = fleet_from_plan(plan)
    engines = engines or [f"engine-{i}:{ENGINE_PORT}" for i in range(fleet.replicas)]
    http = Section(
        "http",
        _upstream("gateways", gateways, keepalive=64),
        _upstream("engines", engines, keepalive=8 * len(engines)),
        EmptyBlock(_server(listen, "gateways", read_timeout_s)),
        EmptyBlock(_server(direct_listen, "engines", read_timeout_s)),
        access_log="off",
        client_max_body_size=MAX_BODY,
        **{f"{t}_temp_path": f"{t}_temp" for t in TEMP_PATHS},
    )
    config = Config(
        EmptyBlock(worker_processes="auto"),
        Section("events", worker_connections=4096),
        http,
    )
    head = (
        f"# nginx for {fleet.model_name} ({fleet.replicas} replicas), by `cardinal render`.\n"
        f"# :{listen} -> gateway replicas; :{direct_listen} -> the engines directly (no gateway).\n"
    )
    return head + str(config).lstrip("\n") + "\n"


def _upstream(name: str, servers: Sequence[str], *, keepalive: int) -> Section:
    # least_conn: a streamed answer holds its connection for its whole length, so the open
    # connection count is the load; keepalive saves a TCP handshake per request
    return Section(
        f"upstream {name}",
        EmptyBlock(least_conn=None),
        KeyValuesMultiLines("server", [[s, "max_fails=3", "fail_timeout=10s"] for s in servers]),
        EmptyBlock(keepalive=keepalive),
    )


def _server(listen: str, upstream: str, read_timeout_s: int) -> Section:
    return Section(
        "server",
        Location("= /nginx-health", **{"return": '200 "ok\\n"'}),
        Location(
            "/",
            KeyValuesMultiLines(
                "proxy_set_header",
                [
                    ["Connection", '""'],  # upstream keepalive needs HTTP/1.1 without close
                    ["Host", "$host"],
                    ["X-Forwarded-For", "$proxy_add_x_forwarded_for"],
                    ["X-Request-Id", "$request_id"],
                ],
            ),
            proxy_pass=f"http://{upstream}",
            proxy_http_version="1.1",
            # SSE: every event goes out as it arrives, never held in a buffer or cache
            proxy_buffering="off",
            proxy_cache="off",
            proxy_request_buffering="off",
            # a long prefill under load is silent this long before the first byte
            proxy_read_timeout=f"{read_timeout_s}s",
            proxy_send_timeout=f"{read_timeout_s}s",
            proxy_connect_timeout="5s",
            # retry another upstream only when nothing was sent yet
            proxy_next_upstream="error timeout http_502 http_503",
            proxy_next_upstream_tries=2,
        ),
        listen=listen,
    )
