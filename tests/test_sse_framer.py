"""The stream relay's event framer: whole events only, malformed ones caught, and the one-event
fast path agreeing with the general one."""

from __future__ import annotations

import pytest

from gateway.server.attempt import well_formed
from gateway.server.sse import EventFramer, StreamMeter, usage

E1 = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
E2 = b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'


@pytest.mark.parametrize(
    ("chunks", "relayed", "bad", "pending"),
    [
        ([E1], [E1], None, b""),  # the fast path
        ([E1 + E2], [E1 + E2], None, b""),
        ([E1[:10], E1[10:]], [b"", E1], None, b""),  # an event split across reads
        ([E1 + E2[:7]], [E1], None, E2[:7]),
        ([b"data: [DONE]\n\n"], [b"data: [DONE]\n\n"], None, b""),
        ([b": ping\n\n" + E1], [b": ping\n\n" + E1], None, b""),
        ([E1.replace(b"\n\n", b"\r\n\r\n")], [E1.replace(b"\n\n", b"\r\n\r\n")], None, b""),
        ([b'data: {"x": 1\n\n'], [b""], b'data: {"x": 1', b""),  # cut JSON
        ([b"garbage\n\n"], [b""], b"garbage", b""),
        ([b'data: {"a":1}\ndata: {"b":2}\n\n'], [b'data: {"a":1}\ndata: {"b":2}\n\n'], None, b""),
        # several events in one read (a saturated relay), each checked without a regex
        ([E1 + E2 + b"data: [DONE]\n\n"], [E1 + E2 + b"data: [DONE]\n\n"], None, b""),
        ([E1 + b'data: {"x": 1\n\n' + E2], [b""], b'data: {"x": 1', b""),
        ([E1 + E2 + b"garbage\n\n"], [b""], b"garbage", b""),
        ([E1 + b'data: {"a":1}\nid: 7\n\n'], [E1 + b'data: {"a":1}\nid: 7\n\n'], None, b""),
    ],
)
def test_framer(
    chunks: list[bytes], relayed: list[bytes], bad: bytes | None, pending: bytes
) -> None:
    f = EventFramer()
    out, last_bad = [], None
    for c in chunks:
        ready, last_bad = f.push(c)
        out.append(ready)
    assert out == relayed
    assert last_bad == bad
    if bad is None:
        assert f.pending == pending


NEG_INF = (
    b'data: {"choices":[{"delta":{"content":"a"},"logprobs":{"content":[{"logprob":-Infinity}]}}]}'
)


@pytest.mark.parametrize(
    ("event", "whole"),
    [
        (E1.strip(), True),
        (NEG_INF, True),  # orjson refuses -Infinity, Python's json (and engines) write it
        (b'data: {"big": 123456789012345678901234567890}', True),
        (b"data: [1, 2]", False),  # JSON, but not an object
        (b'data: {"x": 1', False),
    ],
)
def test_the_stream_path_json_reads_what_the_standard_library_reads(
    event: bytes, whole: bool
) -> None:
    assert well_formed(event) is whole


def test_a_first_token_with_an_infinite_logprob_is_timed() -> None:
    ttfts: list[float] = []
    meter = StreamMeter(start_s=0.0, ttft=ttfts.append, itl=lambda gap, n: None)
    meter.feed(NEG_INF + b"\n\n", 0.25)
    assert ttfts == [0.25] and meter.tokens == 1


def test_usage_reads_chat_and_responses_api_counts() -> None:
    chat = b'{"usage":{"prompt_tokens":12,"total_tokens":20,"completion_tokens":8}}'
    responses = b'"usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},'
    responses += b'"output_tokens":8,"output_tokens_details":{"reasoning_tokens":0}}'
    assert usage(chat) == usage(responses) == {"prompt_tokens": 12, "completion_tokens": 8}
    assert usage(b'data: {"choices":[{"delta":{"content":"hi"}}]}') == {}


def test_the_counted_check_of_many_events_never_passes_what_the_event_walk_refuses() -> None:
    """plain_events (counts over a read of many events) against _plain_data on each event, over
    random mixes of plain, odd and broken events: it may send a read to the slow path, never
    pass one the walk would stop."""
    import random

    from gateway.server.sse import _plain_data, plain_events

    pieces = [
        b'data: {"a":1}', b"data: [DONE]", b'data: {"x": "data: {"}', b'data: {"a"',
        b"data: [DONE]}", b": ping", b"", b'data: {"a":1}\nid: 3', b"event: x", b"data: {}}",
        b"data: {{}", b"data: [DONE]\n",
    ]  # fmt: skip
    rng = random.Random(17)
    passed = 0
    for _ in range(20000):
        ready = b"".join(rng.choice(pieces) + b"\n\n" for _ in range(rng.randint(1, 5)))
        counted = plain_events(ready)
        if counted >= 0:
            passed += 1
            events = ready.split(b"\n\n")[:-1]
            assert all(_plain_data(e) for e in events), ready
            assert counted == sum(e.startswith(b"data: {") for e in events), ready
    assert passed > 100  # the fast path is taken for plain reads


def test_the_framers_count_gives_the_meter_what_its_own_count_gives() -> None:
    """A stream cut at random into reads, through the framer: the meter fed the framer's count
    of each read's events times and counts the tokens as the meter counting them itself."""
    import json
    import random

    def event(body: dict) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    role = event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    usage_event = event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    rng = random.Random(3)
    for _ in range(300):
        tokens = [event({"choices": [{"delta": {"content": f"t{i}"}}]}) for i in range(9)]
        stream = role + b"".join(tokens) + (usage_event if rng.random() < 0.5 else b"")
        stream += b": ping\n\n" * rng.randint(0, 1) + b"data: [DONE]\n\n"
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 12)))
        reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        results = []
        for use_count in (True, False):
            gaps: list[tuple[float, int]] = []
            ttfts: list[float] = []
            meter = StreamMeter(
                start_s=0.0,
                ttft=ttfts.append,
                itl=lambda gap, n, gaps=gaps: gaps.append((gap, n)),
            )
            framer, seen = EventFramer(), False
            for t, read in enumerate(reads):
                ready, bad = framer.push(read)
                assert bad is None
                if ready:
                    counted = framer.counted if use_count else -1
                    seen |= meter.feed(ready, 1.0 + t, counted)
            results.append((meter.tokens, meter.usage, ttfts, gaps, seen))
        assert results[0] == results[1]
        assert results[0][0] == 9  # the role event is no token; usage, when sent, says 9 too
