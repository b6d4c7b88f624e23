"""A request body checked before it costs a backend anything: valid JSON, the fields OpenAI's API
defines of the right type and range, each error naming its field. Fields the gateway does not know
pass through untouched: engines add their own (vLLM's `ignore_eos`, llama.cpp's `n_probs`)."""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.server.errors import BadRequest

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN, Infinity and absurd nesting are refused too."""
    try:
        parsed = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise BadRequest("request body must be a JSON object")
    return parsed


def check(path: str, body: dict[str, Any]) -> None:
    """Raise BadRequest naming the first field that is missing, mistyped or out of range."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required and must be a string", param="model")
    _typed(body, "stream", bool, "true or false")
    _typed(body, "stream_options", dict, "an object")
    _typed(body, "user", str, "a string")
    for name in ("max_tokens", "max_completion_tokens", "n", "logprobs", "top_logprobs"):
        _integer(body, name, low=0 if "logprobs" in name else 1)
    _number(body, "temperature", low=0.0)
    _number(body, "top_p", low=0.0, high=1.0)
    _number(body, "presence_penalty", low=-2.0, high=2.0)
    _number(body, "frequency_penalty", low=-2.0, high=2.0)
    _stop(body.get("stop"))
    if path == CHAT:
        _messages(body.get("messages"))
    elif path == COMPLETIONS:
        _prompt(body.get("prompt"))
    elif path == EMBEDDINGS:
        _input(body.get("input"))


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text, to estimate prompt tokens when a stream reports no usage."""
    if isinstance(body.get("messages"), list):
        return sum(
            len(m["content"])
            for m in body["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(len(v) if isinstance(v, str | list) else 1 for v in value)
    return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` is required and must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"`{where}` must be an object", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(
                f"`{where}.role` must be one of {', '.join(ROLES)}, got {_show(role)}",
                param=where + ".role",
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"`{where}.content` must be a string or a list of parts", param=where + ".content"
            )


def _prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | int) for p in prompt):
        return  # a batch of strings, or token ids
    if isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
        return
    raise BadRequest(
        "`prompt` is required: a string, a list of strings, or token ids", param="prompt"
    )


def _input(value: Any) -> None:
    if isinstance(value, str) or isinstance(value, list) and value:
        return
    raise BadRequest("`input` is required: a string or a non-empty list", param="input")


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return
    raise BadRequest("`stop` must be a string or a list of strings", param="stop")


def _typed(body: dict[str, Any], name: str, kind: type, what: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"`{name}` must be {what}, got {_show(value)}", param=name)


def _integer(body: dict[str, Any], name: str, *, low: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"`{name}` must be an integer, got {_show(value)}", param=name)
    if value < low:
        raise BadRequest(f"`{name}` must be >= {low}, got {_show(value)}", param=name)


def _number(body: dict[str, Any], name: str, *, low: float, high: float = math.inf) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"`{name}` must be a number, got {_show(value)}", param=name)
    if not low <= value <= high:
        bound = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise BadRequest(f"`{name}` must be {bound}, got {_show(value)}", param=name)


def _show(value: Any) -> str:
    """A short rendering of a client's value for an error message."""
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value)[:40]
    return "an array" if isinstance(value, list) else "an object"
