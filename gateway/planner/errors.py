"""The planner's one error type: bad input, named by the field it came from."""

from __future__ import annotations


class PlanError(ValueError):
    """Input the planner cannot use; `field` names the flag or plan-file key at fault."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field
