"""Prompt token estimate and the filler text the card generates.

Rule: a text costs ceil(utf8 bytes / 4) tokens (at least 1); a chat message adds 4 tokens of
template overhead and the assistant header 3 more (OpenAI's cookbook counts 3-4 per message).
The same rule serves /v1/completions (without the overheads) and the usage the card reports.
"""

from __future__ import annotations

import math
from typing import Any

MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string or a list of parts (text parts only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def chat_tokens(messages: list[dict[str, Any]]) -> int:
    body = sum(text_tokens(content_text(m.get("content"))) + MESSAGE_OVERHEAD for m in messages)
    return body + REPLY_OVERHEAD


def token_text(index: int) -> str:
    """The text of generated token `index` (0-based): one word, space-separated."""
    word = WORDS[index % len(WORDS)]
    return word if index == 0 else " " + word
