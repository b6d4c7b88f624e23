"""Open-loop LLM load at a target QPS, with a verdict: does this fleet meet it within the SLOs?

    locust -f loadtest/qps.py --headless --host http://127.0.0.1:8080 -t 60s --plan fleet.yaml

Plain Locust runs it (headless or with the web UI, alone or as --master with --worker processes).
Four things differ from a stock Locust scenario, because stock Locust gets LLM load wrong:

- Open loop: each driver user starts requests on a Poisson (or constant) schedule, each in its own
  greenlet, however long earlier ones take. Latency is measured from the intended start time, so a
  slow fleet cannot hide by slowing the generator down (coordinated omission).
- TTFT is the time to the first non-empty content delta of the SSE stream, read line by line, not
  the time to the response headers.
- The verdict comes from exact per-request records (Locust's own percentiles are bucketed) and is
  the exit code: 0 pass, 1 fail, 2 invalid (the generator could not keep its schedule).
- Locust counts the chat requests only; TTFT, TPOT and output tokens are tallied apart
  (webui.py): the web UI shows them and, once a run stops, the verdict in tabs of their own
  (and GET /verdict); a run's end prints them after Locust's tables.

The rate is split evenly over the users (`-u`, default 1 per process is plenty: a driver is not a
simulated person but a clock). Nothing here imports Cardinal's gateway: users run it alone.
"""

from __future__ import annotations

import csv
import http.client
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.pool
from locust import User, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from probe import LoopProbe
from scenario import OptionError, Options, add_options
from tracefile import replay
from verdict import INVALID, Record, Verdict, finite, judge, ramp_arrivals, render
from webui import Board, Measures, install, render_measures
from workload import Prompts, read_stream, read_whole

log = logging.getLogger("cardinal.loadtest")
# the --summary-json layout (docs/summary.md), raised when a field changes meaning
SUMMARY_SCHEMA = 1
CLOSED_LOOP_ERROR_PAUSE_S = 0.05
events.init_command_line_parser.add_listener(add_options)


class Load:
    """One process's share of the run: its drivers' records and its connections."""

    def __init__(self, env: Environment, options: Options, measures: Measures) -> None:
        self.env = env
        self.options = options
        self.measures = measures
        self.records: list[Record] = []
        self.start = math.inf
        self.drivers = 0
        self.requests = gevent.pool.Group()
        url = urlsplit(env.host or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise OptionError("--host", f"must be http(s)://host:port, got {env.host!r}")
        self._url = url
        self._idle: list[http.client.HTTPConnection] = []
        self.prompts = Prompts(options)
        self.probe = LoopProbe()
        users = max(1, int(getattr(env.parsed_options, "cardinal_users", 1) or 1))
        if options.trace and users != 1:
            raise OptionError("--trace", f"replays on one user (-u 1), not {users}")
        if options.concurrency % users:
            split = f"{options.concurrency} is not split evenly over {users} users (-u)"
            raise OptionError("--concurrency", split)

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
        if self.options.trace:
            self._replay(start, rng)
            return
        if self.options.concurrency:
            for loop in range(self.options.concurrency // total):
                self.requests.spawn(self._closed_loop, random.Random(seed * 1000 + loop + 1))
            while True:  # the loops run until Locust stops this user
                gevent.sleep(3600)
        for due in ramp_arrivals(
            self.options.target_qps / total,
            ramp_s=self.options.ramp_s,
            start=start,
            seed=seed,
            kind=self.options.arrival,
            edges=self.window_edges(),
            cv=self.options.arrival_cv,
        ):
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            rec = Record(scheduled=due)
            self.records.append(rec)
            self.requests.spawn(self._request, rec, self.prompts.body(rng))

    def _replay(self, start: float, rng: random.Random) -> None:
        """The trace's arrivals at their times (scaled), each with the trace's lengths."""
        o = self.options
        for due, a in replay(o.trace, start=start, speed=o.trace_speed):
            delay = due - time.time()
            if delay > 0:
                gevent.sleep(delay)
            rec = Record(scheduled=due)
            self.records.append(rec)
            body = self.prompts.body(
                rng, prompt=max(1, a.prompt_tokens), output=max(1, a.output_tokens)
            )
            self.requests.spawn(self._request, rec, body)

    def _closed_loop(self, rng: random.Random) -> None:
        """One request in flight: the next is sent when the last ends (after an error, 50 ms
        later, so a refusing host is not asked thousands of times a second)."""
        while True:
            rec = Record(scheduled=time.time())
            self.records.append(rec)
            self._request(rec, self.prompts.body(rng))
            if rec.error:
                gevent.sleep(CLOSED_LOOP_ERROR_PAUSE_S)

    def window_edges(self) -> list[float]:
        """The judged window's ends, in seconds from the start: after the warm-up, and before
        the cool-down when the run has a length (-t, passed on to workers as our own option)."""
        s = self.options.settings
        edges = [s.warmup_s]
        run_time = getattr(self.env.parsed_options, "cardinal_run_time", None)
        if run_time:
            edges.append(float(run_time) - s.cooldown_s)
        return edges

    def _connection(self) -> http.client.HTTPConnection:
        return self._idle.pop() if self._idle else self._new_connection()

    def _new_connection(self) -> http.client.HTTPConnection:
        cls = (
            http.client.HTTPSConnection
            if self._url.scheme == "https"
            else http.client.HTTPConnection
        )
        return cls(self._url.hostname, self._url.port, timeout=self.options.timeout_s)

    def _send(self, path: str, body: dict[str, Any]) -> tuple[Any, http.client.HTTPResponse]:
        """(connection, response). A reused connection the server closed meanwhile fails before
        the request reached it (llama-server closes each one after a stream though it announced
        keep-alive), so that one failure is retried once on a new connection."""
        reused = bool(self._idle)
        conn = self._connection()
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            return conn, conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not reused:
                raise
        conn = self._new_connection()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def _request(self, rec: Record, body: dict[str, Any]) -> None:
        path = self._url.path.rstrip("/") + "/v1/chat/completions"
        rec.sent = time.time()
        conn: Any = None
        size = 0  # bytes of the answer's body: Locust's "size" column
        try:
            conn, resp = self._send(path, body)
            if resp.status != 200:
                head = resp.read(300)
                size = len(head)
                rec.error = f"HTTP {resp.status}: {head.decode(errors='replace')}"
            elif self.options.stream:
                size = read_stream(resp, rec)
            else:
                size = read_whole(resp, rec)
            size += len(resp.read())  # drain what follows so the connection is reusable
            rec.finished = True
            if resp.will_close:
                conn.close()
            else:
                self._idle.append(conn)
        except (OSError, http.client.HTTPException, ValueError) as e:
            rec.error = rec.error or f"{type(e).__name__}: {e}"
            rec.finished = True
            if conn is not None:
                conn.close()
        self._report(rec, path, size)

    def _report(self, rec: Record, path: str, size: int) -> None:
        """One Locust request entry per request; TTFT, TPOT and tokens go to the measures (not
        requests: as entries they multiplied the request rate and put tokens under "ms")."""
        e2e_s = (time.time() if math.isnan(rec.end) else rec.end) - rec.scheduled
        self.env.events.request.fire(
            request_type="POST",
            name=path,
            response_time=e2e_s * 1e3,
            response_length=size,
            exception=RuntimeError(rec.error) if rec.error else None,
            context={},
        )
        self.measures.add(rec, stream=self.options.stream)


class RunState:
    """What this process keeps of the current run (Locust's Environment carries it)."""

    def __init__(self) -> None:
        self.load: Load | None = None
        self.payloads: list[dict[str, Any]] = []  # master: what each worker sent
        self.verdict: gevent.Greenlet | None = None
        self.interrupted = False  # Ctrl-C: the run ends with no verdict
        self.board = Board()  # what the web UI and the end-of-run tables show


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
    _show(environment)
    if not isinstance(runner, WorkerRunner) and environment.parsed_options is not None:
        _options_or_exit(environment)
        # installed, not inherited: a shell starts a background job with SIGINT ignored
        gevent.signal_handler(signal.SIGINT, _interrupt, environment)
    # the event loop's clock stands where it stood before the imports and the plan were read
    # (seconds on a busy machine): -t's timer, set next from it, would end the run that much early
    gevent.get_hub().loop.update_now()


def _show(environment: Environment) -> None:
    """The measures and the verdict: a worker sends its measures to the master with each stats
    report; the master or a lone process shows them in the web UI and after its stats table."""
    board, events = _state(environment).board, environment.events
    if isinstance(environment.runner, WorkerRunner):
        events.report_to_master.add_listener(
            lambda data, **_: data.update(cardinal_measures=board.measures.take())
        )
        return
    events.worker_report.add_listener(
        lambda data, **_: board.measures.merge(data.get("cardinal_measures") or {})
    )
    events.reset_stats.add_listener(board.measures.reset)
    events.quit.add_listener(lambda **_: _print_measures(board))
    if environment.web_ui is not None:
        install(environment.web_ui, board)


def _print_measures(board: Board) -> None:
    """After Locust's own tables, on the same console logger (stderr; stdout keeps the verdict)."""
    if board.measures.rows():
        logging.getLogger("locust.stats_logger").info(render_measures(board.measures.rows()))


def _interrupt(environment: Environment) -> None:
    """Ctrl-C: no verdict on a half-run. Exit 130 through Locust's own shutdown (its SIGTERM
    path: the quitting hooks, the users stopped, the stats printed)."""
    state = _state(environment)
    if state.interrupted:
        return
    state.interrupted = True
    environment.process_exit_code = 128 + signal.SIGINT
    sys.stderr.write("loadtest/qps.py: interrupted: no verdict\n")
    os.kill(os.getpid(), signal.SIGTERM)


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
    state.board.start()
    o = environment.parsed_options
    if not isinstance(environment.runner, WorkerRunner) and o is not None:
        # workers get the master's custom options with the spawn message, not -u or -t: pass
        # them on, as they stand now (the web UI's form sets them for each run it starts)
        o.cardinal_users, o.cardinal_run_time = o.num_users, o.run_time
    if isinstance(environment.runner, MasterRunner):
        return
    options = _options_or_exit(environment)
    try:
        state.load = Load(environment, options, state.board.measures)
    except OptionError as e:
        sys.stderr.write(f"loadtest/qps.py: error: {e}\n")
        sys.exit(2)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_: Any) -> None:
    stop = time.time()
    runner = environment.runner
    if _state(environment).interrupted:
        return
    if isinstance(runner, MasterRunner):
        _state(environment).verdict = gevent.spawn(_judge_distributed, environment, stop)
        return
    load = _state(environment).load
    if load is None:
        return
    load.requests.kill(block=False)  # requests still running are judged as unfinished
    load.probe.stop()
    payload = {
        "start": load.start,
        "stop": stop,
        "cpu": bool(runner and runner.cpu_warning_emitted),
        "records": [r.as_dict() for r in load.records],
        "loop_lag": load.probe.samples,
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
    run_time = getattr(environment.parsed_options, "cardinal_run_time", None)
    if run_time:  # the window ends on the arrivals' block edge, not when the timer fired after it
        stop = min(stop, start + float(run_time))
    lags = [(t, lag) for p in payloads for t, lag in p["loop_lag"]]
    verdict = judge(
        records, options.settings, start=start, stop=stop, cpu_overloaded=cpu, loop_lag=lags
    )
    print(render(verdict, options.settings), flush=True)
    environment.process_exit_code = verdict.code if payloads else INVALID
    _state(environment).board.judged(verdict, options.settings)
    o = environment.parsed_options
    if o.summary_json:
        summary = {
            "schema": SUMMARY_SCHEMA,
            "start": start,  # time.time() of the first schedule; the window is from there
            "verdict": verdict.as_dict(),
            "settings": options.settings.__dict__,
            "records": len(records),
        }
        Path(o.summary_json).write_text(
            json.dumps(finite(summary), indent=2, default=str), encoding="utf-8"
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
                "prompt_tokens",
                "second_token_s",
                "content_deltas",
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
                    r.prompt_tokens,
                    f"{r.second - start:.4f}",
                    r.events,
                ]
            )
