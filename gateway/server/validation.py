"""A request body checked before it costs a backend anything: valid JSON, the fields OpenAI's API
defines of the right type and range, each error naming its field. Fields the gateway does not know
pass through untouched: engines add their own (vLLM's `ignore_eos`, llama.cpp's `n_probs`)."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.server.errors import BadRequest, UnsupportedMediaType

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
RESPONSES = "/v1/responses"
# What aiohttp decodes before the gateway reads the body; anything else would reach the JSON
# parser (or a backend) still encoded.
ENCODINGS = ("identity", "gzip", "deflate", "br")
JSON_TYPES = ("application/json", "application/octet-stream")
BOMS = {codecs.BOM_UTF8: "UTF-8", codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}
CHARSET_RE = re.compile(r"charset\s*=\s*\"?([\w.:-]+)", re.IGNORECASE)
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a cheap test before the full walk


def check_headers(headers: Mapping[str, str]) -> None:
    """415 for a body the gateway cannot read as JSON: another media type, charset or encoding.
    No Content-Type passes, and application/octet-stream (what HTTP libraries label bytes with
    when the caller named no type)."""
    ctype = headers.get("Content-Type")
    if ctype is not None:
        media, _, params = ctype.partition(";")
        media = media.strip().lower()
        if media not in JSON_TYPES and not media.endswith("+json"):
            raise UnsupportedMediaType(f"Content-Type must be application/json, got {_show(ctype)}")
        charset = CHARSET_RE.search(params) if params else None
        if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(
                f"Content-Type charset must be utf-8 (JSON is UTF-8), got {_show(charset.group(1))}"
            )
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding must be one of {', '.join(ENCODINGS)}, got {_show(encoding)}"
        )


def asks_usage(body: dict[str, Any]) -> bool:
    """Does a stream request ask for its usage (`stream_options.include_usage`)?"""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def with_usage(raw: bytes, body: dict[str, Any]) -> bytes:
    """The stream request `raw` (parsed: `body`) asking for its usage as well. Without
    `stream_options` the field is written in before the others (no new encoding of the body);
    with them, the body is encoded again with `include_usage` set."""
    if "stream_options" not in body:
        at = raw.index(b"{") + 1  # a JSON object, as parse_body found it
        return raw[:at] + b'"stream_options":{"include_usage":true},' + raw[at:]
    options = {**body["stream_options"], "include_usage": True}
    return json.dumps({**body, "stream_options": options}).encode()


def max_tokens(body: dict[str, Any]) -> int | None:
    """The most tokens the request lets the backend generate, where it says."""
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    return cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, from UTF-8 without a byte order mark (RFC 8259), with no lone
    surrogates in its strings; NaN, Infinity and absurd nesting are refused too."""
    for bom, name in BOMS.items():
        if body.startswith(bom):
            raise BadRequest(
                f"request body is not valid JSON: it starts with a {name} byte order mark "
                "(JSON must be UTF-8 without one)"
            )
    try:
        parsed = _DECODER.decode(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(
            f"request body is not valid JSON: not UTF-8 (byte {e.start}: {e.reason})"
        ) from None
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(parsed, dict):
        raise BadRequest("request body must be a JSON object")
    if SURROGATE_ESCAPE.search(body):
        _no_lone_surrogates(parsed)
    return parsed


def _no_lone_surrogates(body: dict[str, Any]) -> None:
    """A `\\ud800` escape without its pair is valid JSON but no text: engines fail on it (with a
    500, some of them), so it is refused here, naming the field."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:  # not recursive: the body may nest as deep as the JSON parser allows
        where, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in value.items()]
            stack += [(where or "(a key)", k) for k in value]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                code = ord(value[e.start])
                raise BadRequest(
                    f"`{where}` holds a lone UTF-16 surrogate (\\u{code:04x}): not valid text",
                    param=where,
                ) from None


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
    if path in (CHAT, COMPLETIONS):
        _one_choice(body.get("n"))
    if path == CHAT:
        _messages(body.get("messages"))
    elif path == COMPLETIONS:
        _prompt(body.get("prompt"))
    elif path == EMBEDDINGS:
        _input(body.get("input"))
    elif path == RESPONSES:
        _responses(body)


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


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # json.loads builds one a call


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
        if isinstance(content, list):
            _parts(content, where + ".content")


def _parts(parts: list[Any], where: str) -> None:
    """Content parts: objects with a string `type`; a text part's `text` is a string."""
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise BadRequest(f"`{at}` must be an object with a string `type`", param=at)
        text = part.get("text")
        if (part["type"] == "text" or text is not None) and not isinstance(text, str):
            raise BadRequest(f"`{at}.text` must be a string, got {_show(text)}", param=at + ".text")


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


def _one_choice(n: int | None) -> None:
    """`n` above 1 is refused: admission counts a request as one sequence of a backend's batch
    (`max_inflight` is the engine's max_num_seqs), which `n` choices would overfill, and of one
    model's backends llama.cpp and the simulated cards refuse it (in their own shapes), so the
    same request would fail or not by where it was routed."""
    if n is not None and n > 1:
        raise BadRequest(
            f"`n` must be 1, got {n}: the gateway relays one choice per request "
            f"(each request is one sequence of a backend's batch); send {n} requests instead",
            param="n",
        )


def _responses(body: dict[str, Any]) -> None:
    """A Responses API body. Its streams end with a `response.completed` event and no
    `[DONE]`, which the gateway's relay would take for a truncated stream (and strike the
    backend for): only whole answers are relayed."""
    _input(body.get("input"))
    _integer(body, "max_output_tokens", low=1)
    _typed(body, "instructions", str, "a string")
    if body.get("stream"):
        raise BadRequest(
            "`stream` must be false on /v1/responses: the gateway relays Responses API answers "
            "whole, not as event streams",
            param="stream",
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
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses to infinity
        raise BadRequest(f"`{name}` must be a finite number, got {value!r}", param=name)
    if not low <= value <= high:
        bound = f">= {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise BadRequest(f"`{name}` must be {bound}, got {_show(value)}", param=name)


def _show(value: Any) -> str:
    """A short rendering of a client's value for an error message."""
    if isinstance(value, str | int | float | bool) or value is None:
        return json.dumps(value)[:40]
    return "an array" if isinstance(value, list) else "an object"
