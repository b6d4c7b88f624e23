"""Open-loop LLM load at a target QPS, with a verdict: does this fleet meet it within the SLOs?

    locust -f loadtest/qps.py --headless --host http://127.0.0.1:8080 -t 60s --plan fleet.yaml

Plain Locust runs it (headless or with the web UI, alone or as --master with --worker processes).
Three things differ from a stock Locust scenario, because stock Locust gets LLM load wrong:

- Open loop: each driver user starts requests on a Poisson (or constant) schedule, each in its own
  greenlet, however long earlier ones take. Latency is measured from the intended start time, so a
  slow fleet cannot hide by slowing the generator down (coordinated omission).
- TTFT is the time to the first non-empty content delta of the SSE stream, read line by line, not
  the time to the response headers.
- The verdict comes from exact per-request records (Locust's own percentiles are bucketed) and is
  the exit code: 0 pass, 1 fail, 2 invalid (the generator could not keep its schedule).

The rate is split evenly over the users (`-u`, default 1 per process is plenty: a driver is not a
simulated person but a clock). Nothing here imports Cardinal's gateway: users run it alone.
"""

from __future__ import annotations

import csv
import http.client
import json
import logging
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.pool
import yaml
from locust import User, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from verdict import INVALID, Record, Settings, Verdict, arrivals, judge, render

log = logging.getLogger("cardinal.loadtest")
WORDS = [
    "the",
    "and",
    "for",
    "you",
    "are",
    "was",
    "but",
    "not",
    "all",
    "can",
    "her",
    "one",
    "our",
    "out",
    "day",
    "get",
    "has",
    "him",
    "his",
    "how",
    "man",
    "new",
    "now",
    "old",
    "see",
    "two",
    "way",
    "who",
    "boy",
    "did",
    "its",
    "let",
    "put",
    "say",
    "she",
    "too",
    "use",
    "end",
    "far",
    "few",
    "big",
    "own",
    "try",
    "ask",
    "men",
    "run",
    "set",
    "why",
    "far",
    "lot",
    "sun",
    "air",
    "sea",
    "eye",
    "car",
    "dog",
    "cat",
    "red",
    "top",
    "hot",
    "job",
    "law",
    "war",
    "art",
    "act",
    "age",
]  # 3 letters + a space = 4 bytes: one token for BPE tokenizers and for the sim's count
CHAT_OVERHEAD = 7  # template tokens around one user message (4) and the reply header (3)
DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class OptionError(ValueError):
    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add = parser.add_argument
    add("--plan", env_var="LOCUST_PLAN", help="take model, workload and SLOs from this fleet.yaml")
    add("--target-qps", env_var="LOCUST_TARGET_QPS", help="requests per second to offer")
    add(
        "--arrival",
        env_var="LOCUST_ARRIVAL",
        default="poisson",
        choices=["poisson", "constant"],
        help="arrival process",
    )
    add("--warmup", env_var="LOCUST_WARMUP", help="not judged at the start (default: 2 x e2e SLO)")
    add("--cooldown", env_var="LOCUST_COOLDOWN", help="not judged at the end (default: e2e SLO)")
    add("--model", env_var="LOCUST_MODEL", help="the `model` of every request")
    add("--prompt-tokens", env_var="LOCUST_PROMPT_TOKENS", help="mean prompt length")
    add("--prompt-spread", env_var="LOCUST_PROMPT_SPREAD", default="0", help="+- share, uniform")
    add("--output-tokens", env_var="LOCUST_OUTPUT_TOKENS", help="mean max_tokens")
    add("--output-spread", env_var="LOCUST_OUTPUT_SPREAD", default="0", help="+- share, uniform")
    add(
        "--prompts-file",
        env_var="LOCUST_PROMPTS_FILE",
        help="JSONL of {prompt|messages[, max_tokens]}",
    )
    add("--no-stream", env_var="LOCUST_NO_STREAM", action="store_true", help="non-streaming calls")
    add("--no-ignore-eos", env_var="LOCUST_NO_IGNORE_EOS", action="store_true")
    add("--ttft-slo", env_var="LOCUST_TTFT_SLO", help="e.g. 2s")
    add("--tpot-slo", env_var="LOCUST_TPOT_SLO", help="e.g. 50ms")
    add("--e2e-slo", env_var="LOCUST_E2E_SLO", help="e.g. 20s")
    add("--slo-percentile", env_var="LOCUST_SLO_PERCENTILE", default="95")
    add("--attainment", env_var="LOCUST_ATTAINMENT", default="0.9", help="share meeting every SLO")
    add("--max-error-rate", env_var="LOCUST_MAX_ERROR_RATE", default="0.01")
    add("--request-timeout", env_var="LOCUST_REQUEST_TIMEOUT", default="300s")
    add("--seed", env_var="LOCUST_SEED", default="0")
    add("--summary-json", env_var="LOCUST_SUMMARY_JSON", help="write the verdict here")
    add("--records-csv", env_var="LOCUST_RECORDS_CSV", help="write every request's record here")


# -- options --------------------------------------------------------------------------------------


class Options:
    """The scenario, resolved from flags over the plan file over defaults; errors name the flag."""

    def __init__(self, o: Any) -> None:
        plan = _plan(o.plan) if o.plan else {}
        wl = plan.get("inputs", {}).get("workload", {})
        self.model = o.model or plan.get("inputs", {}).get("model")
        if not self.model:
            raise OptionError("--model", "required (or --plan)")
        self.target_qps = _positive("--target-qps", o.target_qps or wl.get("target_qps"))
        self.prompt_tokens = int(
            _positive("--prompt-tokens", o.prompt_tokens or wl.get("prompt_tokens") or 512)
        )
        self.output_tokens = int(
            _positive("--output-tokens", o.output_tokens or wl.get("output_tokens") or 256)
        )
        self.prompt_spread = _share("--prompt-spread", o.prompt_spread)
        self.output_spread = _share("--output-spread", o.output_spread)
        self.stream = not o.no_stream
        self.ignore_eos = not o.no_ignore_eos
        ttft = _duration("--ttft-slo", o.ttft_slo) if o.ttft_slo else wl.get("ttft_slo_s")
        tpot = _duration("--tpot-slo", o.tpot_slo) if o.tpot_slo else wl.get("tpot_slo_s")
        e2e = _duration("--e2e-slo", o.e2e_slo) if o.e2e_slo else None
        if ttft is None and tpot is None and e2e is None:
            raise OptionError(
                "--ttft-slo", "give at least one SLO (--ttft-slo, --tpot-slo, --e2e-slo) or --plan"
            )
        worst = e2e or (ttft or 0) + (self.output_tokens - 1) * (tpot or 0)
        self.prompts = _prompts(o.prompts_file) if o.prompts_file else None
        self.timeout_s = _duration("--request-timeout", o.request_timeout)
        self.seed = int(_number("--seed", o.seed))
        self.arrival = o.arrival
        self.settings = Settings(
            target_qps=self.target_qps,
            warmup_s=_duration("--warmup", o.warmup) if o.warmup else min(2 * worst, 60.0),
            cooldown_s=_duration("--cooldown", o.cooldown)
            if o.cooldown
            else min(worst * 1.1, 120.0),
            ttft_slo_s=ttft,
            tpot_slo_s=tpot,
            e2e_slo_s=e2e,
            percentile=_number("--slo-percentile", o.slo_percentile),
            attainment=_share("--attainment", o.attainment),
            max_error_rate=_share("--max-error-rate", o.max_error_rate),
            stream=self.stream,
        )
        if not 0 < self.settings.percentile <= 100:
            raise OptionError("--slo-percentile", "must be in (0, 100]")


def _plan(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise OptionError("--plan", f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise OptionError("--plan", f"{path} is not YAML: {e}") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise OptionError("--plan", f"{path} is not a version 1 Cardinal plan file")
    return data


def _number(option: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise OptionError(option, f"must be finite, got {value!r}")
    return number


def _positive(option: str, value: Any) -> float:
    if value is None:
        raise OptionError(option, "required (or --plan)")
    number = _number(option, value)
    if number <= 0:
        raise OptionError(option, f"must be > 0, got {value!r}")
    return number


def _share(option: str, value: Any) -> float:
    text = str(value).strip()
    number = _number(option, text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 <= number <= 1:
        raise OptionError(option, f"must be between 0 and 1 (or 0-100%), got {value!r}")
    return number


def _duration(option: str, value: Any) -> float:
    m = DURATION.match(str(value))
    if not m:
        raise OptionError(option, f"must be a duration like 2s or 50ms, got {value!r}")
    return float(m.group(1)) * UNIT_S[m.group(2)]


def _prompts(path: str) -> list[dict[str, Any]]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise OptionError("--prompts-file", f"cannot read {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise OptionError("--prompts-file", f"line {n} is not JSON: {e.msg}") from None
        if not isinstance(row, dict) or not (
            isinstance(row.get("prompt"), str) or isinstance(row.get("messages"), list)
        ):
            raise OptionError("--prompts-file", f"line {n} needs `prompt` (text) or `messages`")
        out.append(row)
    if not out:
        raise OptionError("--prompts-file", f"{path} holds no prompts")
    return out


# -- the load -------------------------------------------------------------------------------------


class Load:
    """One process's share of the run: its drivers' records and its connections."""

    def __init__(self, env: Environment, options: Options) -> None:
        self.env = env
        self.options = options
        self.records: list[Record] = []
        self.start = math.inf
        self.drivers = 0
        self.requests = gevent.pool.Group()
        url = urlsplit(env.host or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise OptionError("--host", f"must be http(s)://host:port, got {env.host!r}")
        self._url = url
        self._idle: list[http.client.HTTPConnection] = []
        rng = random.Random(options.seed)
        self._corpus = [rng.choice(WORDS) for _ in range(50_000)]

    def drive(self, user: User) -> None:
        """Start requests on this driver's schedule, forever (Locust stops the user)."""
        index, self.drivers = self.drivers, self.drivers + 1
        total = max(1, int(getattr(self.env.parsed_options, "cardinal_users", 1) or 1))
        worker = (
            getattr(self.env.runner, "worker_index", 0)
            if isinstance(self.env.runner, WorkerRunner)
            else 0
        )
        seed = self.options.seed + 1000 * max(worker, 0) + index
        rng = random.Random(seed + 1)
        start = time.time()
        self.start = min(self.start, start)
        for due in arrivals(
            self.options.target_qps / total, start=start, seed=seed, kind=self.options.arrival
        ):
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            rec = Record(scheduled=due)
            self.records.append(rec)
            self.requests.spawn(self._request, rec, self._body(rng))

    def _body(self, rng: random.Random) -> dict[str, Any]:
        o = self.options
        out = _spread(rng, o.output_tokens, o.output_spread)
        if o.prompts:
            row = o.prompts[rng.randrange(len(o.prompts))]
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            out = int(row.get("max_tokens") or out)
        else:
            words = max(1, _spread(rng, o.prompt_tokens, o.prompt_spread) - CHAT_OVERHEAD)
            at = rng.randrange(len(self._corpus) - words) if words < len(self._corpus) else 0
            messages = [{"role": "user", "content": " ".join(self._corpus[at : at + words])}]
        body: dict[str, Any] = {"model": o.model, "messages": messages, "max_tokens": out}
        if o.ignore_eos:
            body["ignore_eos"] = True
        if o.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _connection(self) -> http.client.HTTPConnection:
        if self._idle:
            return self._idle.pop()
        cls = (
            http.client.HTTPSConnection
            if self._url.scheme == "https"
            else http.client.HTTPConnection
        )
        return cls(self._url.hostname, self._url.port, timeout=self.options.timeout_s)

    def _request(self, rec: Record, body: dict[str, Any]) -> None:
        conn = self._connection()
        path = self._url.path.rstrip("/") + "/v1/chat/completions"
        rec.sent = time.time()
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {resp.read(300).decode(errors='replace')}"
            elif self.options.stream:
                _read_stream(resp, rec)
            else:
                _read_whole(resp, rec)
            resp.read()  # drain what follows (the chunked terminator) so the connection is reusable
            rec.finished = True
            if resp.will_close:
                conn.close()
            else:
                self._idle.append(conn)
        except (OSError, http.client.HTTPException, ValueError) as e:
            rec.error = rec.error or f"{type(e).__name__}: {e}"
            rec.finished = True
            conn.close()
        self._report(rec, path)

    def _report(self, rec: Record, path: str) -> None:
        fire = self.env.events.request.fire
        e2e_ms = (time.time() if math.isnan(rec.end) else rec.end) - rec.scheduled
        fire(
            request_type="POST",
            name=path,
            response_time=e2e_ms * 1e3,
            response_length=rec.tokens,
            exception=RuntimeError(rec.error) if rec.error else None,
            context={},
        )
        if rec.ok and self.options.stream:
            fire(
                request_type="LLM",
                name="TTFT",
                response_time=rec.ttft * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
            fire(
                request_type="LLM",
                name="TPOT",
                response_time=rec.tpot * 1e3,
                response_length=0,
                exception=None,
                context={},
            )
        if rec.ok:
            fire(
                request_type="LLM",
                name="output tokens",
                response_time=rec.tokens,
                response_length=rec.tokens,
                exception=None,
                context={},
            )


def _spread(rng: random.Random, mean: int, spread: float) -> int:
    return max(1, round(mean * (1 + spread * (2 * rng.random() - 1))))


def _read_stream(resp: http.client.HTTPResponse, rec: Record) -> None:
    """SSE line by line: the first non-empty content delta is the first token."""
    events = 0
    usage = None
    for line in iter(resp.readline, b""):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            rec.end = time.time()
            rec.tokens = usage if usage is not None else events
            return
        chunk = json.loads(data)
        if "error" in chunk:
            rec.error = f"error event: {chunk['error'].get('message', chunk['error'])}"
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                now = time.time()
                if events == 0:
                    rec.first = now
                events += 1
        if chunk.get("usage"):
            usage = chunk["usage"].get("completion_tokens")
    rec.error = "stream ended without [DONE]"


def _read_whole(resp: http.client.HTTPResponse, rec: Record) -> None:
    body = json.loads(resp.read())
    rec.end = rec.first = time.time()
    rec.tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)


class RunState:
    """What this process keeps of the current run (Locust's Environment carries it)."""

    def __init__(self) -> None:
        self.load: Load | None = None
        self.payloads: list[dict[str, Any]] = []  # master: what each worker sent
        self.verdict: gevent.Greenlet | None = None


def _state(environment: Environment) -> RunState:
    state = getattr(environment, "cardinal", None)
    if state is None:
        state = RunState()
        environment.cardinal = state  # type: ignore[attr-defined]
    return state


class LLMUser(User):
    """A driver: one clock starting requests at its share of the target rate."""

    wait_time = constant(0)

    @task
    def drive(self) -> None:
        load = _state(self.environment).load
        if load is not None:
            load.drive(self)


# -- lifecycle and verdict ------------------------------------------------------------------------


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("cardinal_records", _on_records)
    if not isinstance(runner, WorkerRunner) and environment.parsed_options is not None:
        # workers get the master's custom options with the spawn message, not -u: pass it on
        environment.parsed_options.cardinal_users = environment.parsed_options.num_users
        _options_or_exit(environment)


def _options_or_exit(environment: Environment) -> Options:
    try:
        return Options(environment.parsed_options)
    except OptionError as e:
        sys.stderr.write(f"loadtest/qps.py: error: {e}\n")
        sys.exit(2)


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    state = _state(environment)
    state.payloads = []
    if isinstance(environment.runner, MasterRunner):
        return
    options = _options_or_exit(environment)
    try:
        state.load = Load(environment, options)
    except OptionError as e:
        sys.stderr.write(f"loadtest/qps.py: error: {e}\n")
        sys.exit(2)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    stop = time.time()
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _state(environment).verdict = gevent.spawn(_judge_distributed, environment, stop)
        return
    load = _state(environment).load
    if load is None:
        return
    load.requests.kill(block=False)  # requests still running are judged as unfinished
    payload = {
        "start": load.start,
        "stop": stop,
        "cpu": bool(runner and runner.cpu_warning_emitted),
        "records": [r.as_dict() for r in load.records],
    }
    if isinstance(runner, WorkerRunner):
        runner.send_message("cardinal_records", payload)
    else:
        _conclude(environment, [payload], stop)


def _on_records(environment: Environment, msg: Any, **_: Any) -> None:
    _state(environment).payloads.append(msg.data)


def _judge_distributed(environment: Environment, stop: float) -> None:
    runner = environment.runner
    expected = max(1, runner.worker_count if runner else 1)
    deadline = time.time() + 15
    state = _state(environment)
    while len(state.payloads) < expected and time.time() < deadline:
        gevent.sleep(0.1)
    _conclude(environment, state.payloads, stop)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    pending = _state(environment).verdict
    if pending is not None:
        pending.join(timeout=20)


def _conclude(environment: Environment, payloads: list[dict[str, Any]], stop: float) -> Verdict:
    options = Options(environment.parsed_options)
    records = [Record(**r) for p in payloads for r in p["records"]]
    start = min((p["start"] for p in payloads), default=stop)
    cpu = any(p["cpu"] for p in payloads)
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        cpu = cpu or runner.worker_cpu_warning_emitted or runner.cpu_warning_emitted
    if not payloads:
        log.error("no records reached the verdict (no worker reported)")
    verdict = judge(records, options.settings, start=start, stop=stop, cpu_overloaded=cpu)
    print(render(verdict, options.settings), flush=True)
    environment.process_exit_code = verdict.code if payloads else INVALID
    o = environment.parsed_options
    if o.summary_json:
        summary = {
            "verdict": verdict.as_dict(),
            "settings": options.settings.__dict__,
            "records": len(records),
        }
        Path(o.summary_json).write_text(
            json.dumps(summary, indent=2, default=str), encoding="utf-8"
        )
    if o.records_csv:
        _write_csv(Path(o.records_csv), records, start)
    return verdict


def _write_csv(path: Path, records: list[Record], start: float) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "scheduled_s",
                "sent_s",
                "first_token_s",
                "end_s",
                "tokens",
                "ttft_s",
                "tpot_s",
                "e2e_s",
                "error",
            ]
        )
        for r in sorted(records, key=lambda r: r.scheduled):
            w.writerow(
                [
                    f"{r.scheduled - start:.4f}",
                    f"{r.sent - start:.4f}",
                    f"{r.first - start:.4f}",
                    f"{r.end - start:.4f}",
                    r.tokens,
                    f"{r.ttft:.4f}",
                    f"{r.tpot:.5f}",
                    f"{r.e2e:.4f}",
                    r.error or ("" if r.finished else "unfinished"),
                ]
            )
