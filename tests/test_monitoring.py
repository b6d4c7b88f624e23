"""monitoring/ and the top-level docker-compose.yml: current with `cardinal render`, accepted by
promtool, dashboards well formed, and every dashboard query answered by a real Prometheus that
scraped a gateway and a simulated card under load."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml

from gateway import planfile
from gateway.cli import main
from gateway.render.bundle import render_monitoring
from gateway.render.compose import GatewayImage, render_compose
from gateway.render.dashboards import DATASOURCE
from gateway.render.fleet import scaled
from gateway.render.prometheus import render_prometheus_config
from tests.gateway_harness import Fleet, card_config, fleet, open_loop
from tests.test_render_tools import free_port

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))

needs_promtool = pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool not installed")
needs_prometheus = pytest.mark.skipif(
    not Path(PROMETHEUS).exists(), reason="prometheus not installed"
)


def makefile_var(name: str) -> str:
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    return re.search(rf"^{name}\s*:=\s*(.*)$", text, flags=re.M).group(1)


@pytest.fixture(scope="module")
def demo_plan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Makefile's demo plan on FLEET_CARDS cards: what the committed files are rendered from."""
    path = tmp_path_factory.mktemp("demo") / "fleet.yaml"
    main(["plan", *shlex.split(makefile_var("DEMO_PLAN")), "-o", str(path)])
    plan = planfile.load(path.read_text(encoding="utf-8"))
    return scaled(plan, int(makefile_var("FLEET_CARDS")))


def test_committed_fleet_files_are_current(demo_plan: dict, capsys: pytest.CaptureFixture) -> None:
    expected = {
        "docker-compose.yml": render_compose(demo_plan, sim=True, image=GatewayImage(context=".")),
        **render_monitoring(demo_plan, sim=True),
    }
    for rel, text in expected.items():
        assert (ROOT / rel).read_text(encoding="utf-8") == text, (
            f"{rel} drifted from `cardinal render`: run `make fleet-files`"
        )


@needs_promtool
def test_promtool_checks_config_and_rules() -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(MONITORING / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts() -> None:
    tests = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
    assert tests
    result = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def recorded_names() -> set[str]:
    names = set()
    for path in (MONITORING / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def panels(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["panels"]


def test_dashboards_are_well_formed() -> None:
    provisioned = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == DATASOURCE["uid"]
    provider = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/cardinal.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids, recorded = set(), recorded_names()
    assert len(DASHBOARDS) == 3
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        assert board["uid"] not in uids and board["title"]
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for p in board["panels"]:
            where = f"{path.name}: {p['title']}"
            assert p["datasource"] == DATASOURCE, where
            assert p["fieldConfig"]["defaults"]["unit"], where
            assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, where
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), where
            for t in p["targets"]:
                assert t["datasource"] == DATASOURCE, where
                # dashboards read recording rules only, so they mean what the alerts mean
                used = set(re.findall(r"[a-z_]+:[a-z_0-9:]+", t["expr"]))
                assert used and used <= recorded, f"{where}: {used - recorded}"
        for var in board["templating"]["list"]:
            assert var["datasource"] == DATASOURCE


# -- a real Prometheus ---------------------------------------------------------------------


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel, template variables set to 'all'."""
    out = []
    for path in DASHBOARDS:
        for p in panels(path):
            for t in p["targets"]:
                expr = t["expr"].replace("$backend", ".*").replace("$instance", ".*")
                out.append((f"{path.stem}: {p['title']} [{t['refId']}]", expr))
    return out


@pytest_asyncio.fixture
async def loaded_fleet() -> AsyncIterator[Fleet]:
    card = card_config(speed_of="deepseek-r1-distill-qwen-7b", gpu="a100-80gb-sxm")
    async with fleet([card, card]) as f:
        yield f


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    async with http.get(url) as r:
        body = await r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


@needs_prometheus
@pytest.mark.slow
@pytest.mark.asyncio
async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    loaded_fleet: Fleet, demo_plan: dict, tmp_path: Path
) -> None:
    f = loaded_fleet
    rules = sorted(str(p) for p in (MONITORING / "prometheus" / "rules").glob("*.yml"))
    config = render_prometheus_config(
        demo_plan,
        gateways=[f.gateway.url.removeprefix("http://")],
        engines=[c.url.removeprefix("http://") for c in f.cards],
        static=True,
        interval="1s",
        rule_files=rules,
    )
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            load = asyncio.create_task(
                open_loop(http, f.gateway.url, rate=8, duration_s=8, max_tokens=24)
            )
            missing = await _until_all_answer(http, base, queries(), timeout_s=40)
            results = await load
            assert all(r.status == 200 for r in results)
            targets = await _targets(http, base)
        assert targets == {"up"}, targets
        assert not missing, "no data for:\n" + "\n".join(missing)
    finally:
        proc.terminate()
        err = proc.communicate(timeout=20)[1].decode()
    assert "level=error" not in err, err


async def _until_all_answer(
    http: aiohttp.ClientSession, base: str, todo: list[tuple[str, str]], *, timeout_s: float
) -> list[str]:
    """Ask every query until each has answered with at least one sample; those that never did."""
    deadline = time.monotonic() + timeout_s
    left = list(todo)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        try:
            left = [(w, e) for w, e in left if not _finite(await query(http, base, e))]
        except aiohttp.ClientConnectionError:  # Prometheus still starting
            continue
    return [f"{w}: {e}" for w, e in left]


def _finite(result: list) -> bool:
    """At least one sample that is a number (a quantile of no observations is NaN)."""
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


async def _targets(http: aiohttp.ClientSession, base: str) -> set[str]:
    async with http.get(f"{base}/api/v1/targets") as r:
        body = await r.json()
    return {t["health"] for t in body["data"]["activeTargets"]}
