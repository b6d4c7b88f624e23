"""The argument types every `cardinal` command shares, and its one-line argparse errors."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from gateway.errors import UsageError
from gateway.planner.errors import PlanError


def duration(text: str) -> float:
    """Seconds from `2s`, `50ms`, `1.5s` or `1m`; a bare number is refused (`--tpot-slo 50`
    meant 50 ms, not 50 s)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 2s or 50ms")
    if m.group(2) is None:
        number = m.group(1)
        raise argparse.ArgumentTypeError(f"{text!r} has no unit; give one: {number}ms or {number}s")
    value = float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def http_url(text: str) -> str:
    """An engine's or a gateway's base URL: http(s)://host[:port][/path], one per word."""
    if "," in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} holds a comma: give each URL as its own word (--backends URL URL)"
        )
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL like http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a port that is not a number") from None
    return text.rstrip("/")


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def fraction(text: str) -> float:
    """`0.2` or `20%`."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction like 0.2 or 20%") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """A share in (0, 1]: `0.9`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number like 0.9") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def qps_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of QPS") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every stage must be a QPS > 0")
    return values


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot read {path}: {e.strerror}", field="plan") from None


def write_text(path: Path, text: str, *, flag: str = "-o") -> None:
    """Write an output file; a path that cannot be written is an error naming `flag`."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}", field=flag) from None
