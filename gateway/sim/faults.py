"""Faults a simulated card can be told to show, for tests and demos of what the gateway survives.

Set per card by `cardinal sim --fault [CARD:]NAME=VALUE` or at run time through the card's
`/admin/faults` endpoint; both go through `Faults.update`, so both name the field they reject.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gateway.errors import FieldError

DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")
UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


class FaultError(FieldError):
    """A fault spec the simulated card cannot inject; `field` is the key at fault."""


@dataclass(frozen=True, kw_only=True)
class Faults:
    loading_s: float = 0.0  # /health and the API answer 503 "Loading model" this long
    error_rate: float = 0.0  # share of generation requests answered 500
    spike_rate: float = 0.0  # share of generation requests held `spike_s` before the engine
    spike_s: float = 0.0
    hang: bool = False  # /health and generation requests are accepted and never answered
    crash_after: int | None = None  # responses are cut (TCP reset) after this many tokens
    crash_rate: float = 1.0  # share of responses `crash_after` applies to
    slowdown: float = 1.0  # every engine step takes this many times longer (10: tenfold slower)

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` applied; values may be strings as typed on a command line."""
        known = {f.name for f in fields(self)}
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise FaultError(
                    f"unknown fault `{name}`; known: {', '.join(sorted(known))}", field=name
                )
            parsed[name] = PARSERS[name](name, value)
        return replace(self, **parsed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise FaultError(f"`{name}` must be a number, got {value!r}", field=name)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            raise FaultError(f"`{name}` must be a number, got {value!r}", field=name) from None
    else:
        raise FaultError(f"`{name}` must be a number, got {value!r}", field=name)
    if not math.isfinite(number) or number < 0:
        raise FaultError(f"`{name}` must be >= 0, got {value!r}", field=name)
    return number


def _rate(name: str, value: Any) -> float:
    rate = _number(name, value)
    if rate > 1:
        raise FaultError(f"`{name}` must be between 0 and 1 (or 0-100%), got {value!r}", field=name)
    return rate


def _duration(name: str, value: Any) -> float:
    if isinstance(value, str):
        m = DURATION.match(value)
        if not m:
            raise FaultError(
                f"`{name}` must be a duration like 30s or 250ms, got {value!r}", field=name
            )
        return float(m.group(1)) * UNIT_S[m.group(2)]
    return _number(name, value)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise FaultError(f"`{name}` must be true or false, got {value!r}", field=name)


def _factor(name: str, value: Any) -> float:
    factor = _number(name, value)
    if factor < 1:
        raise FaultError(f"`{name}` must be >= 1 (a slowdown), got {value!r}", field=name)
    return factor


def _tokens(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "off")):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultError(
            f"`{name}` must be a token count >= 0 (or null), got {value!r}", field=name
        )
    return value


PARSERS = {
    "loading_s": _duration,
    "error_rate": _rate,
    "spike_rate": _rate,
    "spike_s": _duration,
    "hang": _flag,
    "crash_after": _tokens,
    "crash_rate": _rate,
    "slowdown": _factor,
}


def parse_fault_flag(spec: str, *, cards: int) -> tuple[list[int], dict[str, str]]:
    """`[CARD:]NAME=VALUE` (CARD omitted: every card) -> (card indexes, {name: value}).

    `hang` alone means `hang=true`."""
    target, sep, rest = spec.partition(":")
    if sep and target.strip().isdigit():
        index = int(target)
        if index >= cards:
            raise FaultError(f"card {index} does not exist (cards 0..{cards - 1})", field="card")
        indexes, assignment = [index], rest
    else:
        indexes, assignment = list(range(cards)), spec
    name, eq, value = assignment.partition("=")
    name = name.strip()
    if not eq:
        if name != "hang":
            raise FaultError(f"expected NAME=VALUE, got {spec!r}", field=name or spec)
        value = "true"
    Faults().update({name: value.strip()})  # validate now, with the field's name
    return indexes, {name: value.strip()}
