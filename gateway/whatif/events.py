"""Scripted events and the autoscaling rule of a what-if, parsed from their flags.

--event 30m:lose=8            8 cards lost at minute 30 (the last 8 in service: a node)
--event 10m:add=8             8 cards added at minute 10, warm after --cold-start
--event 5m:slow=2,cards=4     4 cards take twice as long per step from minute 5
--autoscale target=1.8,cold_start=5m,min=4,max=200,interval=15s,window=60s,scale_in_delay=5m
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import FieldError

ACTIONS = ("lose", "add", "slow")
UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class EventError(FieldError):
    pass


def seconds(text: str, *, field: str) -> float:
    """`90`, `90s`, `1.5m`, `2h`, `250ms` as seconds (>= 0)."""
    t = text.strip()
    for unit in ("ms", "s", "m", "h"):
        if t.endswith(unit):
            number, scale = t[: -len(unit)], UNITS[unit]
            break
    else:
        number, scale = t, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise EventError(
            f"`{field}`: {text!r} is not a time like 90s, 5m or 1h", field=field
        ) from None
    if not value >= 0 or value == float("inf"):
        raise EventError(f"`{field}`: {text!r} must be a time >= 0", field=field)
    return value


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str  # lose | add | slow
    cards: int
    factor: float = 1.0  # slow: step time multiplier
    cold_start_s: float = 0.0  # add: seconds until the new cards serve


def parse_event(text: str, *, cold_start_s: float) -> Event:
    field = "--event"
    at, sep, rest = text.partition(":")
    if not sep:
        raise EventError(
            f"{text!r} must be AT:ACTION=N, as 30m:lose=8, 10m:add=8 or 5m:slow=2,cards=4",
            field=field,
        )
    at_s = seconds(at, field=field)
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    if not parts:
        raise EventError(f"{text!r} names no action ({', '.join(ACTIONS)})", field=field)
    action, _, value = parts[0].partition("=")
    if action not in ACTIONS:
        raise EventError(
            f"{text!r}: the action must be one of {', '.join(ACTIONS)}, got {action!r}", field=field
        )
    extra = dict(_pair(p, text) for p in parts[1:])
    if set(extra) - {"cards"} or (action != "slow" and extra):
        raise EventError(f"{text!r}: only `slow` takes `cards=N`", field=field)
    if action == "slow":
        factor = _number(value, text, what="the slowdown factor")
        cards = int(_number(extra.get("cards", "1"), text, what="cards", whole=True))
        return Event(at_s, action, cards, factor=factor)
    cards = int(_number(value, text, what="the card count", whole=True))
    return Event(at_s, action, cards, cold_start_s=cold_start_s)


def _pair(part: str, text: str) -> tuple[str, str]:
    key, sep, value = part.partition("=")
    if not sep:
        raise EventError(f"{text!r}: {part!r} must be KEY=VALUE", field="--event")
    return key.strip(), value.strip()


def _number(value: str, text: str, *, what: str, whole: bool = False) -> float:
    try:
        n = int(value) if whole else float(value)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise EventError(
            f"{text!r}: {what} must be {kind}, got {value!r}", field="--event"
        ) from None
    if not n > 0:
        raise EventError(f"{text!r}: {what} must be > 0", field="--event")
    return n


@dataclass(frozen=True)
class Autoscale:
    """Kubernetes' HPA rule on the arrival rate: desired = ceil(rate / target per card), checked
    every `interval_s` over the last `window_s`; out at once (cards serve after `cold_start_s`),
    in only after `scale_in_delay_s` of wanting fewer (HPA's stabilisation window)."""

    target_qps_per_card: float
    cold_start_s: float
    min_cards: int = 1
    max_cards: int = 100_000
    interval_s: float = 15.0
    window_s: float = 60.0
    scale_in_delay_s: float = 300.0


AUTOSCALE_KEYS = ("target", "cold_start", "min", "max", "interval", "window", "scale_in_delay")


def parse_autoscale(text: str, *, target: float | None, cold_start_s: float) -> Autoscale:
    """`target=QPS,cold_start=5m,min=N,max=N,interval=15s,window=60s,scale_in_delay=5m`, each
    optional; `target` defaults to the plan's (capacity per card / (1 + headroom))."""
    field = "--autoscale"
    values: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip() and p.strip() != "on"):
        key, sep, value = part.partition("=")
        if not sep or key not in AUTOSCALE_KEYS:
            raise EventError(
                f"{part!r} must be KEY=VALUE with KEY one of {', '.join(AUTOSCALE_KEYS)}",
                field=field,
            )
        values[key] = value
    try:
        qps = float(values["target"]) if "target" in values else target
        lo = int(values.get("min", 1))
        hi = int(values.get("max", 100_000))
    except ValueError as e:
        raise EventError(f"a number is expected: {e}", field=field) from None
    if qps is None or not qps > 0:
        raise EventError("`target` (QPS per card) must be > 0; the plan names none", field=field)
    if not 1 <= lo <= hi:
        raise EventError(f"`min` ({lo}) and `max` ({hi}) must satisfy 1 <= min <= max", field=field)
    return Autoscale(
        target_qps_per_card=qps,
        cold_start_s=seconds(values["cold_start"], field=field)
        if "cold_start" in values
        else cold_start_s,
        min_cards=lo,
        max_cards=hi,
        interval_s=max(1.0, seconds(values.get("interval", "15s"), field=field)),
        window_s=max(1.0, seconds(values.get("window", "60s"), field=field)),
        scale_in_delay_s=seconds(values.get("scale_in_delay", "5m"), field=field),
    )
