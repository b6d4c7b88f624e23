"""What one attempt at a backend can end in: the statuses worth another backend, the failures a
request may cause itself, and reading a backend's answer (its error message, its Retry-After, its
first SSE event)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import aiohttp

from gateway.server import fastjson
from gateway.server.sse import SSE_FIELDS

# Upstream statuses worth another backend: nothing has reached the client yet, and the request
# either never ran there (429, 503) or the server is failing (500, 502, 504).
RETRY_STATUS = {
    429: "busy",
    500: "server_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


# Failures that the request itself may cause (a prompt the engine chokes on, a prefill longer than
# the read timeout): the same one on two backends ends the request there, with their answer.
REQUEST_FAULTS = {"server_error", "bad_gateway", "timeout", "malformed"}


class BrokenStream(Exception):
    """A backend's SSE stream that is not one: garbage, or cut short without `[DONE]`."""


class Deadline(TimeoutError):
    """A request's deadline passed at a backend: `stage` is first_byte or total."""

    def __init__(self, stage: str, seconds: float) -> None:
        what = "first byte" if stage == "first_byte" else "whole answer"
        super().__init__(f"no {what} within the {seconds:g} s deadline (timeouts.{stage}_s)")
        self.stage = stage


class Retry(Exception):
    """This attempt failed before any byte reached the client."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        timeout: bool = False,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.timeout = timeout
        self.status = status  # the backend's answer, when it answered
        self.retry_after_s = retry_after_s  # a 429's Retry-After, when it gave one


def well_formed(event: bytes) -> bool:
    """An SSE event whose data, if any, is `[DONE]` or a JSON object."""
    data = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    bad = [line for line in event.splitlines() if line and not line.startswith(SSE_FIELDS)]
    if bad:
        return False
    if not data:
        return True  # comments or `event:` lines only, as a keep-alive
    payload = b"\n".join(data)
    if payload == b"[DONE]":
        return True
    try:
        return isinstance(fastjson.loads(payload), dict)
    except ValueError:
        return False


def failed_alike(failed: Sequence[Retry]) -> bool:
    """Did the latest failure happen before, on another backend, in a way the request may cause?"""
    last = failed[-1]
    return last.reason in REQUEST_FAULTS and any(f.reason == last.reason for f in failed[:-1])


def error_message(payload: bytes) -> str:
    """A backend's error, short: the `message` of OpenAI's shape (or vLLM's older flat one)."""
    try:
        body = json.loads(payload)
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else payload.decode(errors="replace")
    return text[:200]


def retry_after_seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (an HTTP date is not worth parsing here: None)."""
    try:
        value = float(retry_after) if retry_after is not None else math.nan
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def is_connect(error: BaseException) -> bool:
    return isinstance(error, aiohttp.ClientConnectorError)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# llama-server closes the connection after every streamed answer though it announced keep-alive:
# a request sent on it the instant before the close is seen fails with nothing sent. Such a
# failure is retried on the same backend, on another connection, these many times.
STALE_CONNECTION_RETRIES = 3


async def post(
    session: aiohttp.ClientSession, url: str, *, data: bytes, headers: Mapping[str, str]
) -> aiohttp.ClientResponse:
    """POST, retrying a pooled connection the server had closed (see STALE_CONNECTION_RETRIES):
    a refused connection or a timeout is the backend's failure, not a stale connection's."""
    for retry in range(STALE_CONNECTION_RETRIES + 1):
        try:
            return await session.post(url, data=data, headers=headers)
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if retry == STALE_CONNECTION_RETRIES:
                raise
    raise AssertionError("unreachable")
