"""The one base of every input error Cardinal reports: a message and the field at fault.

Each stage keeps its own subclass (planner, plan file, render, calibration, simulated faults,
gateway config); the CLI's `main` is the one place that turns any of them into
`cardinal CMD: error: FIELD: message` and exit status 2. This module imports nothing of Cardinal,
so the gateway server can use it without the planner.
"""

from __future__ import annotations


class FieldError(ValueError):
    """Input that cannot be used; `field` names the flag or key at fault, as `where()` shows it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field

    def where(self) -> str:
        """The field as the user wrote it: a key path of a file (`fit.kind`), or a flag."""
        return self.field


class UsageError(FieldError):
    """A command's own input error whose field is already the flag (`--listen`, `--backend`)."""


def cannot_listen(flag: str, error: OSError) -> UsageError:
    """The one rule for an address a server cannot bind: the flag that gave it and why."""
    return UsageError(f"cannot listen: {error.strerror or error}", field=flag)
