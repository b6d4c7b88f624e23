"""What each request asks: prompts of the planned length, the request body, and reading the answer
(SSE line by line, so the first content token is timed as it arrives) into a `Record`."""

from __future__ import annotations

import http.client
import json
import random
import time
from typing import Any

from scenario import Options
from verdict import Record

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
MESSAGE_OVERHEAD = 4  # template tokens around each further message (the shared system prompt)


class Prompts:
    """Request bodies drawn from the scenario: random common words (a random window of a seeded
    corpus, so no two prompts share a prefix cache) or the prompts file's rows. With a shared
    prefix every request starts with the same system message of that many tokens (template
    included), and its own words make up the rest of the prompt length."""

    def __init__(self, options: Options) -> None:
        self.options = options
        rng = random.Random(options.seed)
        self._corpus = [rng.choice(WORDS) for _ in range(50_000)]
        prefix = options.shared_prefix
        words = [rng.choice(WORDS) for _ in range(max(1, prefix - MESSAGE_OVERHEAD))]
        self._system = [{"role": "system", "content": " ".join(words)}] if prefix else []

    def body(
        self, rng: random.Random, *, prompt: int | None = None, output: int | None = None
    ) -> dict[str, Any]:
        """A request's body; `prompt` and `output` (a trace's lengths) instead of the drawn."""
        o = self.options
        out = output if output is not None else spread(rng, o.output_tokens, o.output_spread)
        if o.prompts:
            row = o.prompts[rng.randrange(len(o.prompts))]
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            out = int(row.get("max_tokens") or out)
        else:
            drawn = prompt if prompt is not None else spread(rng, o.prompt_tokens, o.prompt_spread)
            length = drawn - o.shared_prefix
            words = max(1, length - CHAT_OVERHEAD)
            at = rng.randrange(len(self._corpus) - words) if words < len(self._corpus) else 0
            user = {"role": "user", "content": " ".join(self._corpus[at : at + words])}
            messages = [*self._system, user]
        body: dict[str, Any] = {"model": o.model, "messages": messages, "max_tokens": out}
        if o.ignore_eos:
            body["ignore_eos"] = True
        if o.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


def spread(rng: random.Random, mean: int, spread: float) -> int:
    return max(1, round(mean * (1 + spread * (2 * rng.random() - 1))))


def read_stream(resp: http.client.HTTPResponse, rec: Record) -> int:
    """SSE line by line: the first non-empty content delta is the first token, timed when its
    line was read (before it is parsed). Returns the bytes read."""
    events = 0
    usage = None
    size = 0
    for line in iter(resp.readline, b""):
        size += len(line)
        if not line.startswith(b"data:"):
            continue
        arrived = time.time()
        data = line[5:].strip()
        if data == b"[DONE]":
            rec.end = arrived
            rec.tokens = usage if usage is not None else events
            rec.events = events
            return size
        chunk = json.loads(data)
        if "error" in chunk:
            rec.error = f"error event: {chunk['error'].get('message', chunk['error'])}"
            return size
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or choice.get("text"):
                if events == 0:
                    rec.first = arrived
                elif events == 1:
                    rec.second = arrived
                events += 1
        if chunk.get("usage"):
            usage = chunk["usage"].get("completion_tokens")
            rec.prompt_tokens = int(chunk["usage"].get("prompt_tokens") or 0)
    rec.error = "stream ended without [DONE]"
    return size


def read_whole(resp: http.client.HTTPResponse, rec: Record) -> int:
    """A non-streaming answer: its end is its first token. Returns the bytes read."""
    raw = resp.read()
    body = json.loads(raw)
    rec.end = rec.first = time.time()
    usage = body.get("usage") or {}
    rec.tokens = int(usage.get("completion_tokens") or 0)
    rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    return len(raw)
