"""The card's errors, each with its HTTP status and vLLM's OpenAI error `type`."""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    type = "InternalServerError"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }


class BadRequest(ApiError):
    status = 400
    type = "BadRequestError"


class ModelNotFound(ApiError):
    status = 404
    type = "NotFoundError"


class Loading(ApiError):
    status = 503
    type = "unavailable_error"


class PrefillUnavailable(ApiError):
    """A decode worker that could not get its prompt's cache from the prefill worker."""

    status = 503
    type = "unavailable_error"
