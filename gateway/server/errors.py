"""The gateway's errors, each with its HTTP status and OpenAI error `type`; one middleware renders
them as `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.server import fastjson

# The `code` of an error whose HTTP status says it all
STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class UndecodableBody(BadRequest):
    """A body that is not the gzip (or deflate, br) it claims to be: the rest of it cannot be
    read either, so the connection closes after the answer."""

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class UnsupportedMediaType(GatewayError):
    """A body in a content type or encoding the gateway does not read."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    """A known path asked with another method; the `Allow` header lists the right ones."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: Collection[str]) -> None:
        super().__init__(message)
        self.allowed = sorted(allowed)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class UpstreamAnswer(GatewayError):
    """A backend's error answer that was not in OpenAI's shape (aiohttp's plain-text
    `404: Not Found` for a route it lacks, an HTML page from a proxy, FastAPI's `{"detail": ...}`),
    given that shape with the backend's status, so SDKs raise their usual error."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "upstream_error"
        self.code = STATUS_CODES.get(status)


def openai_shaped(payload: bytes) -> bool:
    """Is this body an error in OpenAI's shape: an `error` object with a string `message`?
    vLLM's and llama.cpp's errors are (with an integer `code`)."""
    try:
        body = fastjson.loads(payload)
    except (ValueError, RecursionError):
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


class Overloaded(GatewayError):
    """Admission refused: every backend full and the wait queue full or its deadline passed."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NoBackend(GatewayError):
    """No healthy backend serves the model (all ejected or warming)."""

    status = 503
    type = "service_unavailable"
    code = "no_healthy_backend"


class UpstreamFailed(GatewayError):
    """Every attempt failed before a byte reached the client."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"


class UpstreamTimeout(UpstreamFailed):
    status = 504
    code = "upstream_timeout"


class RequestFailed(UpstreamFailed):
    """Two backends failed this very request the same way: the request is the likely cause, so
    it is not tried on a third, and the client gets the backends' status."""

    code = "request_failed_upstream"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class RequestTimeout(GatewayError):
    """The client sent its body too slowly."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(GatewayError):
    """A client key is over one of its limits (requests, tokens or concurrent requests)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self._headers = headers

    def headers(self) -> dict[str, str]:
        return self._headers


SHUTTING_DOWN = "the gateway is shutting down"


class Draining(GatewayError):
    """The gateway is shutting down: it takes no new requests, and ends those still running at
    its drain deadline."""

    status = 503
    type = "service_unavailable"
    code = "shutting_down"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Connection": "close"}
