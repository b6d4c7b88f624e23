"""loadtest/qps.py with a CPU hog inside the generator: a greenlet that holds the event loop for
HOG_SPIN_MS at a time, HOG_GAP_MS apart, as slow stream parsing or a starved core would. Replies
that arrive meanwhile are read late, and that delay lands in the TTFT the generator measures."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import events

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "loadtest"))

from qps import LLMUser  # noqa: E402  (Locust runs the users it finds here)

SPIN_S = float(os.environ.get("HOG_SPIN_MS", "0")) / 1e3
GAP_S = float(os.environ.get("HOG_GAP_MS", "5")) / 1e3

__all__ = ["LLMUser"]


def _hog() -> None:
    while True:
        until = time.perf_counter() + SPIN_S
        while time.perf_counter() < until:
            pass
        gevent.sleep(GAP_S)


@events.test_start.add_listener
def _start_hog(**_: Any) -> None:
    if SPIN_S > 0:
        gevent.spawn(_hog)
