"""The scenario's options: flags over the plan file over defaults, with errors that name the flag.

No Locust or gevent here: `add_options` takes Locust's parser, `Options` its parsed namespace.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import tracefile as traces
import yaml
from verdict import Settings, min_requests

DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class OptionError(ValueError):
    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")


def add_options(parser: Any) -> None:
    """The scenario's options on Locust's parser (each with a LOCUST_* environment variable)."""
    add = parser.add_argument
    add("--plan", env_var="LOCUST_PLAN", help="take model, workload and SLOs from this fleet.yaml")
    add("--target-qps", env_var="LOCUST_TARGET_QPS", help="requests per second to offer")
    add(
        "--concurrency",
        env_var="LOCUST_CONCURRENCY",
        help="a closed loop instead: this many requests in flight, each sent when one ends",
    )
    add(
        "--arrival",
        env_var="LOCUST_ARRIVAL",
        default="poisson",
        help="arrival process: poisson, constant, or gamma:cv=N (bursty when N > 1)",
    )
    add("--trace", env_var="LOCUST_TRACE", help="replay arrivals and lengths from this trace")
    add("--trace-speed", env_var="LOCUST_TRACE_SPEED", help="replay N times as fast")
    add("--ramp", env_var="LOCUST_RAMP", help="rise to the rate linearly over this, e.g. 30s")
    add("--warmup", env_var="LOCUST_WARMUP", help="not judged at the start (default: 2 x e2e SLO)")
    add("--cooldown", env_var="LOCUST_COOLDOWN", help="not judged at the end (default: e2e SLO)")
    add("--model", env_var="LOCUST_MODEL", help="the `model` of every request")
    add("--prompt-tokens", env_var="LOCUST_PROMPT_TOKENS", help="mean prompt length")
    add("--prompt-spread", env_var="LOCUST_PROMPT_SPREAD", default="0", help="+- share, uniform")
    add("--output-tokens", env_var="LOCUST_OUTPUT_TOKENS", help="mean max_tokens")
    add(
        "--shared-prefix",
        env_var="LOCUST_SHARED_PREFIX",
        default="0",
        help="tokens of one system prompt every request starts with (a prefix cache can hold it)",
    )
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
    add("--min-window", env_var="LOCUST_MIN_WINDOW", default="10s", help="shortest judged window")
    add(
        "--min-requests",
        env_var="LOCUST_MIN_REQUESTS",
        help="fewest requests judged (default: 5 beyond the SLO percentile, 100 for p95)",
    )
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
        self.trace, self.trace_speed = _trace(o, wl.get("target_qps"))
        self.concurrency = _count("--concurrency", o.concurrency) if o.concurrency else 0
        if self.concurrency and self.trace:
            raise OptionError("--concurrency", "a closed loop replays no --trace: give one")
        if o.concurrency and not self.concurrency:
            raise OptionError("--concurrency", "must be 1 or more")
        if self.concurrency and o.target_qps:
            raise OptionError("--concurrency", "a closed loop has no --target-qps: give one")
        if self.concurrency:
            self.target_qps = 0.0
        elif self.trace:
            self.target_qps = traces.mean_rate(self.trace) * self.trace_speed
        else:
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
        self.arrival, self.arrival_cv = _arrival(o.arrival)
        self.shared_prefix = _count("--shared-prefix", o.shared_prefix)
        if self.shared_prefix and (o.prompts_file or self.shared_prefix >= self.prompt_tokens):
            why = "with --prompts-file" if o.prompts_file else "of --prompt-tokens or more"
            raise OptionError("--shared-prefix", f"{self.shared_prefix} tokens {why}: no room")
        self.ramp_s = _duration("--ramp", o.ramp) if o.ramp else 0.0
        if self.ramp_s and (self.concurrency or self.trace):
            raise OptionError("--ramp", "ramps an arrival rate: not with --concurrency or --trace")
        warmup = _duration("--warmup", o.warmup) if o.warmup else min(2 * worst, 60.0)
        if o.warmup and warmup < self.ramp_s:
            raise OptionError(
                "--ramp",
                f"longer than --warmup {o.warmup}: the judged window would hold part of it",
            )
        self.settings = Settings(
            target_qps=self.target_qps,
            warmup_s=max(warmup, self.ramp_s),
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
            min_window_s=_duration("--min-window", o.min_window),
            min_requests=_count("--min-requests", o.min_requests)
            if o.min_requests
            else min_requests(_number("--slo-percentile", o.slo_percentile)),
            concurrency=self.concurrency,
            trace=Path(o.trace).name if o.trace else "",
        )
        if not 0 < self.settings.percentile <= 100:
            raise OptionError("--slo-percentile", "must be in (0, 100]")


def _trace(o: Any, plan_qps: Any) -> tuple[list[traces.Arrival], float]:
    """(the trace's arrivals, replay speed): --trace-speed, else scaled to the target rate
    (--target-qps, else the plan's), else as recorded. No trace: ([], 1.0)."""
    if not o.trace:
        if o.trace_speed:
            raise OptionError("--trace-speed", "replays a --trace: give one")
        return [], 1.0
    if o.trace_speed and o.target_qps:
        raise OptionError("--trace-speed", "and --target-qps both scale the trace: give one")
    try:
        rows = traces.read(o.trace)
    except traces.TraceError as e:
        raise OptionError("--trace", str(e)) from None
    if o.trace_speed:
        return rows, _positive("--trace-speed", o.trace_speed)
    target = o.target_qps or plan_qps
    return rows, _positive("--target-qps", target) / traces.mean_rate(rows) if target else 1.0


def _arrival(value: Any) -> tuple[str, float]:
    """(kind, coefficient of variation of the gaps) from poisson, constant or gamma:cv=N."""
    text = str(value).strip()
    if text in ("poisson", "constant"):
        return text, 1.0 if text == "poisson" else 0.0
    m = re.fullmatch(r"gamma:cv=(.+)", text)
    if not m:
        raise OptionError("--arrival", f"must be poisson, constant or gamma:cv=N, got {value!r}")
    cv = _number("--arrival", m.group(1))
    if not 0 < cv <= 20:
        raise OptionError("--arrival", f"gamma's cv must be in (0, 20], got {m.group(1)!r}")
    return "gamma", cv


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


def _count(option: str, value: Any) -> int:
    number = _number(option, value)
    if number < 0 or number != int(number):
        raise OptionError(option, f"must be a whole number >= 0, got {value!r}")
    return int(number)


def _duration(option: str, value: Any) -> float:
    m = DURATION.match(str(value))
    if not m:
        raise OptionError(option, f"must be a duration like 2s or 50ms, got {value!r}")
    if m.group(2) is None and float(m.group(1)) != 0:  # 50 could be 50 ms or 50 s: ask
        number = m.group(1)
        raise OptionError(option, f"{value!r} has no unit; give one: {number}ms or {number}s")
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
