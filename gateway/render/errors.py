"""The renderers' one error: a plan they cannot turn into files, naming the plan field."""

from __future__ import annotations

from gateway.errors import FieldError


class RenderError(FieldError):
    """A plan the renderer cannot turn into files; `field` is the key at fault."""
