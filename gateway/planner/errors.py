"""The planner's one error type: bad input, named by the field it came from."""

from __future__ import annotations

from gateway.errors import FieldError


class PlanError(FieldError):
    """Input the planner cannot use; `field` names the request field at fault (`target_qps`),
    shown as its flag (`--target-qps`)."""

    def where(self) -> str:
        return "--" + self.field.replace("_", "-").split(".")[0]
