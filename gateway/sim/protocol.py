"""Parsing OpenAI requests into what the engine needs; errors name the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.sim.errors import BadRequest, ModelNotFound
from gateway.sim.prompt import chat_tokens, text_tokens

ROOM_MAX = 2**63 - 1  # SGLang's bootstrap rooms are int64 (its router draws them in [0, 2^63 - 1])


@dataclass(frozen=True, kw_only=True)
class Bootstrap:
    """Where a disaggregated request's prompt cache comes from: SGLang's router sends the same
    body to a prefill and a decode worker, naming the prefill worker's bootstrap server and a
    room both sides meet in."""

    host: str
    port: int | None  # None: the prefill worker's own default
    room: int


@dataclass(frozen=True, kw_only=True)
class GenRequest:
    kind: str  # chat | completion
    model: str
    prompt_tokens: int
    max_tokens: int | None  # None: the card's default
    stream: bool
    include_usage: bool
    bootstrap: Bootstrap | None = None


def parse(body: Any, *, kind: str, served: str) -> GenRequest:
    """Validate a /v1/chat/completions (`kind="chat"`) or /v1/completions body."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("`model` is required", param="model")
    if model != served:
        raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
    prompt = _chat_prompt(body) if kind == "chat" else _completion_prompt(body)
    _check_options(body)
    stream = body.get("stream") is True
    options = body.get("stream_options") or {}
    return GenRequest(
        kind=kind,
        model=model,
        prompt_tokens=prompt,
        max_tokens=_max_tokens(body),
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        bootstrap=_bootstrap(body),
    )


def _bootstrap(body: dict[str, Any]) -> Bootstrap | None:
    """SGLang's three fields, all or none (booleans are not ports or rooms)."""
    names = ("bootstrap_host", "bootstrap_port", "bootstrap_room")
    if not any(n in body for n in names):
        return None
    host, port, room = (body.get(n) for n in names)
    if not isinstance(host, str) or not host:
        raise BadRequest("`bootstrap_host` must be a host name", param="bootstrap_host")
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise BadRequest("`bootstrap_port` must be a port number or null", param="bootstrap_port")
    if type(room) is not int or not 0 <= room <= ROOM_MAX:
        raise BadRequest(
            f"`bootstrap_room` must be an integer in [0, {ROOM_MAX}]", param="bootstrap_room"
        )
    return Bootstrap(host=host, port=port, room=room)


def _chat_prompt(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        raise BadRequest("each of `messages` must be an object with a `role`", param="messages")
    for i, m in enumerate(messages):
        _content(m.get("content"), f"messages[{i}].content")
    return chat_tokens(messages)


def _content(content: Any, where: str) -> None:
    """A message's content that the tokenizer can read: text, or parts whose `text` is text."""
    if content is None:
        return
    if isinstance(content, str):
        _text(content, where)
        return
    if not isinstance(content, list):
        raise BadRequest(f"`{where}` must be a string or a list of parts", param=where)
    for j, part in enumerate(content):
        text = part.get("text") if isinstance(part, dict) else None
        if text is not None and not isinstance(text, str):
            raise BadRequest(f"`{where}[{j}].text` must be a string", param=f"{where}[{j}].text")
        if text:
            _text(text, f"{where}[{j}].text")


def _text(text: str, where: str) -> None:
    """vLLM answers 400 for text its tokenizer cannot encode, as a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            f"`{where}` is not valid text: it holds a lone surrogate", param=where
        ) from None


def _completion_prompt(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        _text(prompt, "prompt")
        return text_tokens(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)  # token ids
    raise BadRequest("`prompt` must be a non-empty string or list of token ids", param="prompt")


def _check_options(body: dict[str, Any]) -> None:
    """vLLM options the card accepts. The simulated model never samples EOS, so every response
    runs to max_tokens, as vLLM does with `ignore_eos: true` (what benchmarks send)."""
    for name in ("ignore_eos", "stream"):
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"`{name}` must be true or false, got {body[name]!r}", param=name)
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise BadRequest(f"`n` must be 1 on a simulated card, got {n!r}", param="n")


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest(f"`{name}` must be an integer > 0, got {value!r}", param=name)
        return value
    return None
