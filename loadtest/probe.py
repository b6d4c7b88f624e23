"""How late the generator reads what arrives: its own receive delay, sampled all run long.

A real OS thread writes one byte into a pipe every PROBE_INTERVAL_S and notes when; a greenlet reads
the pipe and notes when it got there. The gap is the wait any reply arriving on a socket sees
before its greenlet runs: other streams being parsed, or the process starved of CPU. It goes
through the same epoll wake-up as the replies, not a timer (libev's timers fire up to about a
millisecond late on an idle loop, a noticeable share of a 10 ms SLO).
"""

from __future__ import annotations

import collections
import os
import time

import gevent
import gevent.monkey
import gevent.socket

PROBE_INTERVAL_S = 0.01


class LoopProbe:
    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (time.time(), how late the read ran)
        self._sent: collections.deque[float] = collections.deque()
        self._running = True
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        gevent.get_hub().threadpool.spawn(self._tick)
        gevent.spawn(self._read)

    def _tick(self) -> None:
        """In a real thread (the threadpool's, not a greenlet), so it keeps time whatever the
        event loop is doing. Closing the write end when stopped ends the reader."""
        sleep = gevent.monkey.get_original("time", "sleep")
        try:
            while True:
                sleep(PROBE_INTERVAL_S)
                if not self._running:
                    return
                self._sent.append(time.perf_counter())
                os.write(self._w, b".")
        finally:
            os.close(self._w)

    def _read(self) -> None:
        try:
            while True:
                gevent.socket.wait_read(self._r)
                try:
                    got = os.read(self._r, 256)
                except BlockingIOError:
                    continue
                now, wall = time.perf_counter(), time.time()
                if not got:
                    return
                for _ in got:
                    self.samples.append((wall, max(now - self._sent.popleft(), 0.0)))
        finally:
            os.close(self._r)

    def stop(self) -> None:
        """The thread writes no more bytes; it and the reader end within an interval."""
        self._running = False
