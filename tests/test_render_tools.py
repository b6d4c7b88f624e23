"""The real tools accept the rendered files: `nginx -t` and a stream proxied through a real nginx,
the Compose specification's JSON schema, the Kubernetes schemas (offline)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway import planfile
from gateway.render.nginx import render_nginx
from tests.gateway_harness import MODEL, card_config, fleet

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "fleet.yaml").exists())
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# The Compose specification's schema (compose-spec/compose-spec, schema/compose-spec.json), as
# bundled in the npm package dclint 3.1.0 (schemas/compose.schema.json).
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.schema.json"
KUBERNETES_VERSION = "1.37.0"

needs_nginx = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback(conf: str) -> str:
    """Service names resolve only inside Compose; `nginx -t` resolves them, so point at loopback."""
    return re.sub(r"server [A-Za-z][\w.-]*:(\d+)", r"server 127.0.0.1:\1", conf)


def nginx(conf: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / "nginx.conf").write_text(conf, encoding="utf-8")
    cmd = [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", "stderr"]
    return subprocess.run(
        [*cmd, "-g", "pid nginx.pid;", *args], capture_output=True, text=True, timeout=20
    )


def compose_nginx_conf() -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return compose["configs"]["nginx"]["content"].replace("$$", "$")


@needs_nginx
@pytest.mark.parametrize("case", CASES)
def test_nginx_accepts_the_rendered_config(case: str, tmp_path: Path) -> None:
    conf = (GOLDEN / case / "out" / "nginx.conf").read_text(encoding="utf-8")
    listen = f"listen 127.0.0.1:{free_port()};"
    conf = loopback(conf).replace("listen 80;", listen)  # port 80 needs root
    result = nginx(conf, tmp_path, "-t")
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_nginx_accepts_the_compose_files_config(tmp_path: Path) -> None:
    result = nginx(loopback(compose_nginx_conf()).replace("listen 80;", ""), tmp_path, "-t")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def nginx_server(tmp_path: Path) -> Iterator[callable]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(conf: str) -> None:
        (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
        cmd = [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
        procs.append(subprocess.Popen([*cmd, "-g", "pid nginx.pid; daemon off;"]))

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


async def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def stream_arrivals(url: str) -> list[float]:
    """Seconds from the send at which each SSE data event reached the client."""
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 40, "stream": True}
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        async with http.post(url + "/v1/completions", json=body) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic() - t0)
    return arrivals


@needs_nginx
@pytest.mark.asyncio
async def test_a_stream_through_nginx_and_the_gateway_arrives_as_a_stream(nginx_server) -> None:
    plan = planfile.load((GOLDEN / "vllm-awq" / "fleet.yaml").read_text(encoding="utf-8"))
    # a 32B model's speed on an A100: 40 tokens take about half a second to generate
    card = card_config(speed_of="deepseek-r1-distill-qwen-32b", gpu="a100-80gb-sxm")
    async with fleet([card]) as f:
        front, direct = free_port(), free_port()
        nginx_server(
            render_nginx(
                plan,
                gateways=[f.gateway.url.removeprefix("http://")],
                engines=[f.cards[0].url.removeprefix("http://")],
                listen=f"127.0.0.1:{front}",
                direct_listen=f"127.0.0.1:{direct}",
            )
        )
        await wait_port(front)
        await wait_port(direct)
        for port in (front, direct):
            arrivals = await stream_arrivals(f"http://127.0.0.1:{port}")
            assert len(arrivals) >= 40
            spread = arrivals[-1] - arrivals[0]
            assert spread > 0.2, f"events arrived together ({spread:.3f} s): nginx buffered"
            # events keep coming through the whole answer, not in one burst at the end
            middle = arrivals[len(arrivals) // 2]
            assert arrivals[0] + 0.25 * spread < middle < arrivals[-1] - 0.25 * spread
        assert f.sample("gateway_requests_total", model=MODEL, backend="card-0", code="200") == 1


def compose_validator() -> jsonschema.Draft7Validator:
    # the schema names draft-07 without the trailing '#', which jsonschema does not look up
    return jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8")))


def compose_files() -> list[Path]:
    return [
        ROOT / "docker-compose.yml",
        *(GOLDEN / c / "out" / "docker-compose.yml" for c in CASES),
    ]


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    compose_validator().validate(data)
    for name, service in data["services"].items():
        for ref in service.get("configs", []):
            assert ref["source"] in data["configs"], f"{name} uses an undeclared config"
        for dep in service.get("depends_on", {}):
            assert dep in data["services"], f"{name} depends on a missing service"


def test_compose_schema_rejects_a_bad_file() -> None:
    with pytest.raises(jsonschema.ValidationError):
        compose_validator().validate({"services": {"x": {"image": "a", "ports": {"no": "map"}}}})


def test_the_default_fleet_needs_no_gpu_and_the_gpu_profile_reserves_them() -> None:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = data["services"]
    default = {n for n, s in services.items() if "profiles" not in s}
    assert not any(
        "deploy" in services[n] and "resources" in services[n]["deploy"] for n in default
    )
    gpu = {n for n, s in services.items() if s.get("profiles") == ["gpu"]}
    assert gpu and all(n.startswith(("engine-", "gateway-gpu")) for n in gpu)
    cards = sorted(n for n in default if n.startswith("card-"))
    engines = sorted(n for n in gpu if n.startswith("engine-"))
    assert len(cards) == len(engines) >= 2
    assert services[engines[0]]["image"].startswith("vllm/vllm-openai:")


@pytest.mark.parametrize("case", CASES)
def test_kubernetes_manifests_follow_the_kubernetes_schemas(case: str) -> None:
    text = (GOLDEN / case / "out" / "kubernetes.yaml").read_text(encoding="utf-8")
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("HorizontalPodAutoscaler") == 1
    engines = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("engine-")
    ]
    assert engines
    for d in engines:
        pod = d["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_kubernetes_schema_rejects_a_bad_manifest() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
