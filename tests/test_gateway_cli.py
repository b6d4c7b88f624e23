"""`cardinal serve` as users run it: a real process over a simulated card, one or two workers."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from tests.gateway_harness import MODEL, start_card

CARDINAL = Path(sys.executable).with_name("cardinal")


async def _serve(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CARDINAL), "serve", *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
    assert line.startswith("gateway: http://"), line
    return proc, line.split()[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_from_a_config_file(tmp_path: Path, workers: int) -> None:
    card = await start_card()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\nbackends:\n  - {{name: card-0, url: {card.url!r}, model: {MODEL}}}\n"
    )
    proc, url = await _serve("--config", str(config), "--workers", str(workers))
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 3}
            for _ in range(10):  # connections spread over the workers
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.post(url + "/v1/completions", json=body) as r,
                ):
                    assert r.status == 200, await r.text()
            async with http.get(url + "/readyz") as r:
                assert r.status == 200
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) >= workers - 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        await card.stop()


@pytest.mark.asyncio
async def test_serve_from_a_plan(tmp_path: Path) -> None:
    card = await start_card()
    port = int(card.url.rsplit(":", 1)[1])
    plan = tmp_path / "fleet.yaml"
    assert (
        main(
            [
                "plan",
                "--model",
                MODEL,
                "--quant",
                "awq",
                "--gpu",
                "h100-sxm",
                "--target-qps",
                "1",
                "--prompt-tokens",
                "64",
                "--output-tokens",
                "16",
                "-o",
                str(plan),
            ]  # fmt: skip
        )
        == 0
    )
    proc, url = await _serve(
        "--plan", str(plan), "--base-port", str(port), "--listen", "127.0.0.1:0"
    )
    try:
        async with aiohttp.ClientSession() as http, http.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == [MODEL]
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
        await card.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plan", "nope.yaml", "--base-port", "9"], "--plan: cannot read nope.yaml"),
        (["--config", "missing.yaml"], "--config: cannot read missing.yaml"),
        (["--config", "bad.yaml"], "--config: `backends[0].max_inflight` must be > 0"),
        (["--config", "bad.yaml", "--base-port", "9"], "go with --plan"),
        (["--config", "secret.yaml"], "environment variable CARD_KEY_UNSET is not set"),
    ],
)
def test_serve_errors_are_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text("backends:\n  - {url: 'http://h:1', model: m, max_inflight: 0}\n")
    Path("secret.yaml").write_text(
        "backends:\n  - {url: 'http://h:1', model: m, api_key_env: CARD_KEY_UNSET}\n"
    )
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cardinal serve: error: ") and message in err and err.count("\n") == 1
