"""Forwarding one request: admission, attempts on other backends until a byte reaches the client,
streaming relayed chunk by chunk, and the request's metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.server.admission import Admission
from gateway.server.attempt import (
    RETRY_STATUS,
    BrokenStream,
    Deadline,
    Retry,
    describe,
    error_message,
    failed_alike,
    is_connect,
    post,
    retry_after_seconds,
    well_formed,
)
from gateway.server.backend import Backend
from gateway.server.config import Deadlines, GatewayConfig
from gateway.server.deadline import DeadlineWatch
from gateway.server.drain import InFlight
from gateway.server.errors import (
    SHUTTING_DOWN,
    Draining,
    GatewayError,
    NoBackend,
    Overloaded,
    RequestFailed,
    UpstreamAnswer,
    UpstreamFailed,
    UpstreamTimeout,
    openai_shaped,
)
from gateway.server.metrics import GatewayMetrics
from gateway.server.pd import PrefillLegs
from gateway.server.policy import RouteRequest
from gateway.server.sendwatch import SendWatch
from gateway.server.sse import (
    EVENT_END,
    EventFramer,
    StreamMeter,
    body_usage,
    without_usage_events,
)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tells nginx (and kin) in front of us not to buffer either
}

UPSTREAM_ERRORS = (aiohttp.ClientError, TimeoutError)
log = logging.getLogger("cardinal.gateway")
MAX_FIRST_EVENT = 1 << 20  # a first event larger than this is not one


@dataclass(slots=True)
class Tally:
    """What a request used: backends tried, and tokens as the backend reported them or as
    counted off its stream."""

    attempts: int = 0
    prompt: int = 0
    completion: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One client request as the proxy needs it."""

    path: str
    body: bytes
    route: RouteRequest
    stream: bool
    request_id: str
    start_s: float
    headers: Mapping[str, str] = field(default_factory=dict)  # for the client's response
    client_usage: bool = False  # a stream whose client asked for its usage event
    max_tokens: int | None = None  # the request's cap on what it generates, if it gave one
    tally: Tally = field(default_factory=Tally)


class Proxy:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        session: aiohttp.ClientSession,
        admission: Admission,
        metrics: GatewayMetrics,
    ) -> None:
        self.config = config
        self.session = session
        self.admission = admission
        self.metrics = metrics
        self.inflight = InFlight()
        self.deadlines = DeadlineWatch()
        self._by_model: dict[str, Deadlines] = {}  # each model's deadlines, found once
        self._loop = asyncio.get_running_loop()
        self.prefill = PrefillLegs(session, metrics, strike=self._strike, failed=self._failed)
        self.sends = SendWatch(
            lambda: self.config.server.send_timeout_s, on_cut=metrics.send_timeouts.inc
        )

    def reconfigure(self, config: GatewayConfig) -> None:
        self.config = config
        self._by_model.clear()

    async def forward(self, request: web.Request, call: Call) -> web.StreamResponse:
        tried: list[Backend] = []
        failed: list[Retry] = []
        end_s = call.start_s + self._deadlines(call.route.model).total_s
        for _ in range(self.config.max_attempts):
            if failed and self._loop.time() >= end_s:
                break  # the request's deadline passed: no time for another backend
            try:
                backend, waited = await self.admission.acquire(call.route, exclude=tried)
            except NoBackend:
                if not failed:
                    raise
                break  # every backend serving the model has been tried or is out
            tried.append(backend)
            call.tally.attempts = len(tried)
            try:
                return await self._attempt(request, call, backend, waited)
            except Retry as e:
                self.metrics.child(self.metrics.retries, backend.name, e.reason).inc()
                failed.append(e)
                if failed_alike(failed):
                    break
            finally:
                self.admission.release(backend)
        raise self._gave_up(call, failed)

    def _gave_up(self, call: Call, failed: Sequence[Retry]) -> GatewayError:
        """The error for a request no backend served: theirs when all were busy or when two
        failed it alike, else the gateway's 502 (504 after a timeout). The client's message
        names no backend, address or upstream text (a backend may echo what it was sent, the
        gateway's key included); the log has them under the request id."""
        last, n = failed[-1], len(failed)
        busy = all(f.reason == "busy" for f in failed)
        # every backend full is overload, counted below, not an error to log per request
        log.log(
            logging.DEBUG if busy else logging.WARNING,
            "request %s: %d backends tried: %s", call.request_id, n, "; ".join(map(str, failed)),
        )  # fmt: skip
        see = f"the gateway's log has each backend's error under request id {call.request_id}"
        if busy:
            self.metrics.child(self.metrics.rejected, "backends_busy").inc()
            waits = [f.retry_after_s for f in failed if f.retry_after_s is not None]
            wait = math.ceil(min(waits)) if waits else self.config.admission.retry_after_s
            return Overloaded(
                f"every backend serving `{call.route.model}` is busy ({n} tried)",
                retry_after_s=max(1, wait),
            )
        if failed_alike(failed):
            message = f"{n} backends failed this request alike, so it is not retried; {see}"
            if last.status is not None:
                return RequestFailed(message, status=last.status)
            return (UpstreamTimeout if last.timeout else UpstreamFailed)(message)
        error = UpstreamTimeout if last.timeout else UpstreamFailed
        what = "timed out" if last.timeout else "failed"
        return error(f"no backend answered ({n} tried, the last {what}); {see}")

    async def _attempt(
        self, request: web.Request, call: Call, backend: Backend, waited: float
    ) -> web.StreamResponse:
        backend.served += 1
        self.metrics.overhead.observe(max(0.0, self._loop.time() - call.start_s - waited))
        self.metrics.queue_wait.observe(waited)
        headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
        if backend.config.api_key:
            headers["Authorization"] = f"Bearer {backend.config.api_key}"
        if backend.config.role == "decode":  # a prefill worker computes its prompt meanwhile
            pair = self.prefill.paired(self.admission, call.route, call.path, call.body, headers)
            async with pair as body:
                return await self._exchange(request, call, backend, body, headers)
        return await self._exchange(request, call, backend, call.body, headers)

    async def _exchange(
        self, request: web.Request, call: Call, backend: Backend, body: bytes, headers: dict
    ) -> web.StreamResponse:
        deadlines = self._deadlines(call.route.model)
        end_s = call.start_s + deadlines.total_s
        up, filed = None, None
        try:
            up, head = await self._first_byte_in_time(call, backend, body, headers, deadlines)
            # the rest of the answer within the request's deadline: past it, its reads fail
            filed = self.deadlines.at(end_s, lambda: self._expire(up, deadlines.total_s))
            if up.status in RETRY_STATUS:
                raise await self._refused(backend, up)
            if head is not None:
                return await self._relay(request, call, backend, up, head)
            return await self._whole(call, backend, up)
        except asyncio.CancelledError:  # the client went away, before or after the headers
            # (or the drain deadline passed: the caller answers 503)
            code = "503" if self.inflight.cutting else "499"
            self._finish(call, backend, code, self._loop.time())
            if code == "499" and not call.stream and call.max_tokens:
                # what the backend generated before it was told is unknown: charge the most
                call.tally.prompt, call.tally.completion = 0, call.max_tokens
            raise
        finally:
            if filed is not None:
                self.deadlines.cancel(filed)
            if up is not None:  # a no-op after a full read; else frees the backend's slot now
                up.close()

    async def _first_byte_in_time(
        self, call: Call, backend: Backend, body: bytes, headers: dict, deadlines: Deadlines
    ) -> tuple[aiohttp.ClientResponse, bytes | None]:
        """_first_byte within its deadline and the request's (a Retry past them)."""
        now, end_s = self._loop.time(), call.start_s + deadlines.total_s
        first = now + deadlines.first_byte_s <= end_s  # else the request's deadline comes first
        due = now + deadlines.first_byte_s if first else end_s
        task, late = asyncio.current_task(), []

        def expire() -> None:
            late.append(True)
            if task is not None:
                task.cancel()

        filed = self.deadlines.at(due, expire)
        try:
            return await self._first_byte(call, backend, body, headers)
        except asyncio.CancelledError:
            if not late or task is None:
                raise  # the client's, or the drain's
            task.uncancel()
            if first:
                raise self._failed(
                    backend, Deadline("first_byte", deadlines.first_byte_s)
                ) from None
            raise self._failed(backend, Deadline("total", deadlines.total_s)) from None
        finally:
            self.deadlines.cancel(filed)

    async def _first_byte(
        self, call: Call, backend: Backend, body: bytes, headers: dict
    ) -> tuple[aiohttp.ClientResponse, bytes | None]:
        """The backend's answer headers and, for a stream, its first whole event (checked)."""
        try:
            up = await post(self.session, backend.url + call.path, data=body, headers=headers)
        except UPSTREAM_ERRORS as e:
            raise self._failed(backend, e) from None
        if not (call.stream and up.status == 200):
            return up, None
        try:
            return up, await self._first_event(backend, up.content)
        except BaseException:
            up.close()
            raise

    @staticmethod
    def _expire(up: aiohttp.ClientResponse, total_s: float) -> None:
        up.content.set_exception(Deadline("total", total_s))

    def _deadlines(self, model: str) -> Deadlines:
        found = self._by_model.get(model)
        if found is None:
            found = self._by_model[model] = self.config.timeouts.for_model(model)
        return found

    async def _whole(
        self, call: Call, backend: Backend, up: aiohttp.ClientResponse
    ) -> web.Response:
        try:
            payload = await up.read()
        except UPSTREAM_ERRORS as e:
            raise self._failed(backend, e) from None
        now = self._loop.time()
        if up.status == 200:
            self._count_tokens(call, body_usage(payload))
        if up.status < 500:
            backend.answered()
        self._finish(call, backend, str(up.status), now)
        key = backend.config.api_key.encode() if backend.config.api_key else b""
        if up.status >= 400 and key and key in payload:  # an echo of what it was sent
            payload = payload.replace(key, b"[redacted]")
        if up.status >= 400 and not openai_shaped(payload):
            return self._reshaped(call, backend, up.status, payload)
        ctype = up.headers.get("Content-Type", "application/json")
        return web.Response(
            body=payload, status=up.status, headers=self._headers(call, {"Content-Type": ctype})
        )

    def _reshaped(self, call: Call, backend: Backend, status: int, payload: bytes) -> web.Response:
        """A backend's error in another shape, in OpenAI's with its status and its words."""
        text = " ".join(error_message(payload).split()) or "(an empty body)"
        where = " (it may not serve that endpoint)" if status in (404, 405) else ""
        error = UpstreamAnswer(
            f"backend {backend.name} answered {status} to POST {call.path}{where}: {text}",
            status=status,
        )
        return web.json_response(error.body(), status=status, headers=self._headers(call, {}))

    async def _relay(
        self,
        request: web.Request,
        call: Call,
        backend: Backend,
        up: aiohttp.ClientResponse,
        head: bytes,
    ) -> web.StreamResponse:
        model = call.route.model
        m = self.metrics
        meter = StreamMeter(
            start_s=call.start_s,
            ttft=m.child(m.ttft, model).observe,
            itl=m.child(m.itl, model).observe,  # (gap, tokens)
        )
        resp = web.StreamResponse(headers=self._headers(call, SSE_HEADERS))
        try:
            return await self._pump(request, call, backend, up, head, resp, meter)
        except asyncio.CancelledError:
            if resp.prepared and self.inflight.cancelled_by_cut():
                # the drain deadline passed mid-stream: end it as a failed answer, in-band
                await self._end(resp, Draining(f"{SHUTTING_DOWN}; retry the request"))
                self._finish(call, backend, "503", self._loop.time(), meter)
                return resp
            self._count_tokens(call, meter.counts())  # a client that leaves pays what it got
            raise
        except ConnectionResetError:  # gone as the headers or the end went out (never sent)
            self._finish(call, backend, "499", self._loop.time(), meter)
            return web.Response(status=499)

    async def _pump(
        self,
        request: web.Request,
        call: Call,
        backend: Backend,
        up: aiohttp.ClientResponse,
        chunk: bytes,
        resp: web.StreamResponse,
        meter: StreamMeter,
    ) -> web.StreamResponse:
        """Relay from the first whole event on (`chunk`: what came with it). Headers go out only
        with it, so a backend that fails or sends nonsense before it can still be retried."""
        content, loop = up.content, self._loop
        await resp.prepare(request)
        framer, last = EventFramer(), b""
        while chunk:
            events, bad = framer.push(chunk)
            if bad is not None:
                error = BrokenStream(f"malformed SSE event: {bad[:60]!r}")
                await self._cut(call, backend, resp, error, meter)
                return resp
            if events:
                last = events[-64:]
                if meter.feed(events, loop.time(), framer.counted) and not call.client_usage:
                    events = without_usage_events(events)  # asked for by the gateway, not shown
                try:
                    await self.sends.write(request, resp, events)
                except ConnectionResetError:
                    self._finish(call, backend, "499", loop.time(), meter)  # "client closed"
                    return resp
                except TimeoutError:
                    self._stalled(request, call, backend, meter)
                    return resp
            try:
                chunk = await content.readany()
            except UPSTREAM_ERRORS as e:
                await self._cut(call, backend, resp, e, meter)
                return resp
        if b"[DONE]" not in last or framer.pending.strip():
            # A clean close without [DONE], or mid-event, is a truncated answer: the client
            # must not take it for a whole one.
            error = BrokenStream("stream ended without [DONE]")
            await self._cut(call, backend, resp, error, meter)
            return resp
        backend.answered()
        try:
            await self.sends.write(request, resp, None)
        except TimeoutError:
            self._stalled(request, call, backend, meter)
            return resp
        self._finish(call, backend, "200", loop.time(), meter)
        return resp

    def _stalled(
        self, request: web.Request, call: Call, backend: Backend, meter: StreamMeter
    ) -> None:
        """The client read nothing for the send timeout: drop it; returning frees the slot and
        closes the upstream request (the send watch counted it)."""
        if request.transport is not None:
            request.transport.abort()  # what it has not read is lost anyway
        self._finish(call, backend, "499", self._loop.time(), meter)

    async def _first_event(self, backend: Backend, content: aiohttp.StreamReader) -> bytes:
        """What the backend sent up to its first whole SSE event, checked; Retry if broken."""
        head = b""
        while not EVENT_END.search(head) and len(head) < MAX_FIRST_EVENT:
            try:
                chunk = await content.readany()
            except UPSTREAM_ERRORS as e:
                raise self._failed(backend, e) from None
            if not chunk:
                break
            head += chunk
        first = EVENT_END.split(head, maxsplit=1)[0]
        if not EVENT_END.search(head) or not well_formed(first):
            error = BrokenStream(f"malformed SSE: {head[:80]!r}")
            self._strike(backend, error)
            raise Retry("malformed", f"{backend.name}: {error}")
        return head

    def _headers(self, call: Call, base: Mapping[str, str]) -> dict[str, str]:
        return {
            **base,
            "x-request-id": call.request_id,
            "x-gateway-attempts": str(call.tally.attempts),
            **call.headers,
        }

    async def _cut(
        self,
        call: Call,
        backend: Backend,
        resp: web.StreamResponse,
        error: BaseException,
        meter: StreamMeter,
    ) -> None:
        """The backend died mid-stream: tell the client in-band, as OpenAI does, and end."""
        if isinstance(error, BrokenStream | TimeoutError):
            self._strike(backend, error)
            if isinstance(error, Deadline):
                self.metrics.child(self.metrics.deadline_misses, backend.name, error.stage).inc()
        else:
            self._eject(backend, error)
        self.metrics.child(self.metrics.stream_errors, backend.name).inc()
        log.warning(
            "request %s: backend %s failed mid-stream: %s",
            call.request_id, backend.name, describe(error),
        )  # fmt: skip
        told = UpstreamFailed(
            f"the backend failed mid-stream; the gateway's log has why under request id "
            f"{call.request_id}"
        )
        await self._end(resp, told)
        self._finish(call, backend, "502", self._loop.time(), meter)

    async def _end(self, resp: web.StreamResponse, error: GatewayError) -> None:
        """End a stream with OpenAI's in-band error event."""
        try:
            await resp.write(b"data: " + json.dumps(error.body()).encode() + b"\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client left too; nothing to tell

    async def _refused(self, backend: Backend, up: aiohttp.ClientResponse) -> Retry:
        try:
            text = error_message(await up.read())
        except UPSTREAM_ERRORS as e:  # cut, or past the deadline, as it explained itself
            return self._failed(backend, e)
        now = self._loop.time()
        h = self.config.health
        if up.status == 503:
            backend.warming(f"503: {text}", now=now, base_s=h.interval_s)
        elif up.status != 429:
            self._strike(backend, f"{up.status}: {text}")
        return Retry(
            RETRY_STATUS[up.status],
            f"{backend.name} answered {up.status}: {text}",
            status=up.status,
            retry_after_s=retry_after_seconds(up.headers.get("Retry-After")),
        )

    def _failed(self, backend: Backend, error: BaseException) -> Retry:
        """A call that got no answer: a refused or reset connection is the backend's (out at
        once); a timeout may be the request's (a strike)."""
        timeout = isinstance(error, TimeoutError)
        (self._strike if timeout else self._eject)(backend, error)
        if isinstance(error, Deadline):
            self.metrics.child(self.metrics.deadline_misses, backend.name, error.stage).inc()
        reason = "timeout" if timeout else "connect" if is_connect(error) else "disconnect"
        return Retry(reason, f"{backend.name}: {describe(error)}", timeout=timeout)

    def _strike(self, backend: Backend, error: BaseException | str) -> None:
        h = self.config.health
        backend.strike(
            error if isinstance(error, str) else describe(error),
            now=self._loop.time(),
            threshold=h.failure_threshold,
            base_s=h.interval_s,
            max_s=h.max_backoff_s,
        )

    def _eject(self, backend: Backend, error: BaseException) -> None:
        h = self.config.health
        backend.eject(
            describe(error), now=self._loop.time(), base_s=h.interval_s, max_s=h.max_backoff_s
        )

    def _finish(
        self,
        call: Call,
        backend: Backend,
        code: str,
        now: float,
        meter: StreamMeter | None = None,
    ) -> None:
        m, model = self.metrics, call.route.model
        m.child(m.requests, model, backend.name, code).inc()
        m.child(m.duration, model).observe(now - call.start_s)
        if meter is not None:
            self._count_tokens(call, meter.counts())

    def _count_tokens(self, call: Call, counts: dict[str, int]) -> None:
        m, model = self.metrics, call.route.model
        call.tally.prompt = counts.get("prompt_tokens", 0)
        call.tally.completion = counts.get("completion_tokens", 0)
        for kind, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            if counts.get(key):
                m.child(m.tokens, model, kind).inc(counts[key])
