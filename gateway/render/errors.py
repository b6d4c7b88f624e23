"""The renderers' one error: a plan they cannot turn into files, naming the plan field."""

from __future__ import annotations


class RenderError(ValueError):
    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
