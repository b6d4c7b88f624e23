"""Token timing read off an SSE stream as it passes, without slowing it down.

Until the first token, events are parsed (a chat stream opens with a role-only event that is not a
token). After it, each `data:` event counts as one token and is timed on arrival; that is exact for
vLLM and llama.cpp, which send one token per event, and the `usage` block, when the client asked for
it, replaces the count at the end.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway.server import fastjson

USAGE_RE = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)'
)
# the Responses API's names for the same two counts
USAGE_NAMES = {
    b"prompt_tokens": "prompt_tokens",
    b"completion_tokens": "completion_tokens",
    b"input_tokens": "prompt_tokens",
    b"output_tokens": "completion_tokens",
}


def usage(body: bytes) -> dict[str, int]:
    """`prompt_tokens` and `completion_tokens` from a response body or SSE chunk, if present
    (a Responses API body's `input_tokens` and `output_tokens` under those names)."""
    return {USAGE_NAMES[m.group(1)]: int(m.group(2)) for m in USAGE_RE.finditer(body)}


def body_usage(body: bytes) -> dict[str, int]:
    """usage() of a whole response body: read from its last `"usage"` key (a quote inside a
    JSON string is escaped, so the key cannot be text), wherever it sits in the body."""
    at = body.rfind(b'"usage"')
    return usage(body[at : at + 1024]) if at >= 0 else {}


class StreamMeter:
    """Feed it every chunk with its arrival time; it reports TTFT and inter-token latencies."""

    __slots__ = ("start_s", "first_s", "last_s", "events", "usage", "_head", "_ttft", "_itl")

    def __init__(
        self,
        *,
        start_s: float,
        ttft: Callable[[float], None],
        itl: Callable[[float, int], None],
    ) -> None:
        """`ttft(seconds)` once; `itl(gap, n)`: n tokens that arrived `gap` apart."""
        self.start_s = start_s
        self.first_s: float | None = None
        self.last_s = start_s
        self.events = 0  # token events after the first token, the first included
        self.usage: dict[str, int] = {}
        self._head = b""  # bytes not yet parsed, only until the first token
        self._ttft = ttft
        self._itl = itl

    @property
    def tokens(self) -> int:
        return self.usage.get("completion_tokens", self.events)

    def counts(self) -> dict[str, int]:
        """Tokens so far: the stream's `usage` where it sent one, else the events counted."""
        return {"completion_tokens": self.tokens, **self.usage}

    def feed(self, chunk: bytes, now: float, tokens: int = -1) -> bool:
        """Count and time the tokens of `chunk`; whether it carried a `usage` block.
        `tokens`: its `data: {` events where the caller counted them (EventFramer.counted),
        which spares a pass over the bytes; -1: count here."""
        if self.first_s is None:
            return self._before_first(chunk, now, tokens)
        if tokens < 0:
            tokens = chunk.count(b"data:")
            if b"[DONE]" in chunk:
                tokens -= 1
        usage = b'"usage"' in chunk and self._read_usage(chunk)
        if usage and _usage_only(chunk):
            tokens -= (
                1  # the usage event is no token (SGLang's `"usage": null` on each one is none)
            )
        if tokens > 0:
            # Events that arrive in one read share the gap since the previous read: one
            # observation of n gaps, not n observations.
            self._itl((now - self.last_s) / tokens, tokens)
            self.events += tokens
            self.last_s = now
        return usage

    def _before_first(self, chunk: bytes, now: float, tokens: int) -> bool:
        """Parse whole events up to the first token; what follows it in the same read is
        counted as feed() counts (a slice, not a split and a join of every event)."""
        if self._head:
            head, tokens = self._head + chunk, -1  # the caller's count is of `chunk` alone
        else:
            head = chunk
        at, seen = 0, False
        while (end := head.find(b"\n\n", at)) >= 0:
            event, at = head[at:end], end + 2
            if tokens > 0 and event.startswith(b"data: {"):
                tokens -= 1  # counted by the caller, parsed here
            if b'"usage"' in event and self._read_usage(event):
                seen = True
            if _is_token(event):
                self.first_s = self.last_s = now
                self.events = 1
                self._ttft(now - self.start_s)
                self._head = b""
                rest = head[at:]
                return (self.feed(rest, now, tokens) if rest else False) or seen
        self._head = head[at:] if at else head
        return seen

    def _read_usage(self, chunk: bytes) -> bool:
        found = usage(chunk)
        self.usage.update(found)
        return bool(found)


def _usage_only(chunk: bytes) -> bool:
    """Does `chunk` hold the usage-only event (`"choices": []`) that include_usage adds?"""
    return b'"choices":[]' in chunk or b'"choices": []' in chunk


def without_usage_events(ready: bytes) -> bytes:
    """Whole events `ready` less the usage-only ones: those the gateway asked for for its own
    count, from a client that did not. CR LF events pass as they are (no engine sends them)."""
    if b"\r" in ready:
        return ready
    kept = []
    for event in ready.split(b"\n\n"):
        if b'"usage"' in event and _usage_only(event) and usage(event):
            continue
        kept.append(event)
    return b"\n\n".join(kept)


def _is_token(event: bytes) -> bool:
    data = event.partition(b"data:")[2].strip()
    if not data or data == b"[DONE]":
        return False
    try:
        body = fastjson.loads(data)
    except ValueError:
        return False
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        return False
    c = choices[0]
    delta = c.get("delta") or {}
    return bool(
        c.get("text") or delta.get("content") or delta.get("reasoning_content")
        or delta.get("tool_calls") or delta.get("reasoning")
    )  # fmt: skip


EVENT_END = re.compile(rb"\r?\n\r?\n")
SSE_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")


class EventFramer:
    """Cuts a relayed stream at event boundaries, so the client only ever gets whole events,
    and checks each one's shape cheaply: known SSE fields, and data that is `[DONE]` or looks
    like one JSON object (braces at both ends; a full parse of every event would cost more than
    the relay itself)."""

    __slots__ = ("_tail", "counted")

    def __init__(self) -> None:
        self._tail = b""
        # the `data: {` events of the last whole events returned, where the check counted them
        # (a read of plain events), else -1
        self.counted = -1

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet ended."""
        return self._tail

    def push(self, chunk: bytes) -> tuple[bytes, bytes | None]:
        """(whole events ready to relay, the first malformed event or None)."""
        data = self._tail + chunk if self._tail else chunk
        if _one_data_event(data):  # the common case: one `data: {...}` event per read
            self._tail = b""
            self.counted = 1
            return data, None
        self.counted = -1
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no LF LF: perhaps CR LF CR LF, or no event end at all
            ends = [m.end() for m in EVENT_END.finditer(data)]
            end = ends[-1] if ends else 0
        ready, self._tail = data[:end], data[end:]
        # LF-only events (every engine's) are checked by counts over the bytes; a read that
        # fails them is walked event by event
        crlf = b"\r" in ready
        if not crlf and (counted := plain_events(ready)) >= 0:
            self.counted = counted
            return ready, None
        events = EVENT_END.split(ready) if crlf else ready.split(b"\n\n")
        for event in events:
            if event and not _plain_data(event) and not looks_whole(event):
                return b"", event
        return ready, None


def _one_data_event(data: bytes) -> bool:
    """One whole single-line `data: {...}` event, ended by LF LF, and nothing else: what vLLM,
    SGLang and llama.cpp send for every token (checked without splitting or a regex)."""
    return (
        data.startswith(b"data: {")
        and data.endswith(b"}\n\n")
        and data.find(b"\n") == len(data) - 2
    )


# whole single-line `data: {...}` events, then at most one `data: [DONE]`: one pass of the
# regex engine (a fifth of the cost of splitting the read, a third of counting three patterns)
PLAIN_EVENTS = re.compile(rb"(?:data: \{[^\n]*\}\n\n)*(data: \[DONE\]\n\n)?")


def plain_events(ready: bytes) -> int:
    """How many `data: {...}` events `ready` (whole LF-only events) holds, when each of its
    events is a single-line `data: {...}` but for a last `data: [DONE]`; else -1. A read that
    matches has no newline but its events' ends, so it holds half its newlines' count of
    events. Anything else (an empty event, another field, a second `[DONE]`) takes the walk."""
    match = PLAIN_EVENTS.fullmatch(ready)
    if match is None:
        return -1
    return ready.count(b"\n") // 2 - (match.group(1) is not None)


def _plain_data(event: bytes) -> bool:
    """One single-line `data: {...}` or `data: [DONE]` event, without its blank line."""
    return (
        (event.startswith(b"data: {") and event.endswith(b"}")) or event == b"data: [DONE]"
    ) and b"\n" not in event


def looks_whole(event: bytes) -> bool:
    for line in event.splitlines():
        if not line:
            continue
        if not line.startswith(SSE_FIELDS):
            return False
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data != b"[DONE]" and not (data.startswith(b"{") and data.endswith(b"}")):
                return False
    return True
