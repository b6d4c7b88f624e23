"""Reloading `gateway.yaml` in a running gateway (SIGHUP or `POST /admin/reload`).

Backends are matched by name. One whose URL and models are unchanged is updated in place and keeps
its health and in-flight count; a new one joins the rotation; one that left the config (or whose
URL changed) stops taking requests while those it already has run to the end. Keys, limits,
routing, admission and health settings change at once. An invalid file changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.server.admission import Admission
from gateway.server.auth import Keyring
from gateway.server.backend import Backend
from gateway.server.config import ConfigError, GatewayConfig
from gateway.server.health import Prober
from gateway.server.limits import Limiter
from gateway.server.metrics import GatewayMetrics
from gateway.server.policy import make_policy
from gateway.server.proxy import Proxy

log = logging.getLogger("cardinal.gateway")

# Settings bound when the gateway started (its socket, its server, its upstream session).
RESTART_ONLY = ("host", "port", "server", "timeouts", "max_body_bytes")


@dataclass(kw_only=True)
class Live:
    """What a reload swaps, and whether the gateway is draining before it stops."""

    config: GatewayConfig
    keyring: Keyring
    draining: bool = False


@dataclass(kw_only=True)
class Outcome:
    ok: bool
    error: str | None = None
    param: str | None = None  # the dotted config field an error is about
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    draining: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


class Reloader:
    def __init__(
        self,
        *,
        live: Live,
        backends: list[Backend],
        admission: Admission,
        proxy: Proxy,
        prober: Prober,
        limiter: Limiter,
        metrics: GatewayMetrics,
        rng: random.Random,
        load: Callable[[], GatewayConfig] | None,
    ) -> None:
        self.live = live
        self.backends = backends  # the app's list, changed in place: every part holds it
        self.admission = admission
        self.proxy = proxy
        self.prober = prober
        self.limiter = limiter
        self.metrics = metrics
        self.rng = rng
        self.load = load
        self._lock = asyncio.Lock()

    async def reload(self) -> Outcome:
        """Read the config again and apply it; an error leaves the running one as it was."""
        if self.load is None:
            log.error("reload ignored: this gateway was not started from a config file")
            return Outcome(ok=False, error="this gateway was not started from a config file")
        async with self._lock:
            try:
                config = await asyncio.to_thread(self.load)  # file reads stay off the loop
            except (ConfigError, OSError) as e:
                field = e.field if isinstance(e, ConfigError) else "(file)"
                self.metrics.child(self.metrics.reloads, "error").inc()
                log.error("reload rejected, the running config stays: %s: %s", field, e)
                return Outcome(ok=False, error=str(e), param=field)
            outcome = self.apply(config)
        log.warning("reloaded: %s", outcome.as_dict())
        return outcome

    def apply(self, new: GatewayConfig) -> Outcome:
        old = self.live.config
        outcome = Outcome(ok=True)
        outcome.restart_needed = [f for f in RESTART_ONLY if getattr(old, f) != getattr(new, f)]
        if (old.routing.policy == "engine_aware") != (new.routing.policy == "engine_aware"):
            outcome.restart_needed.append("routing.policy (engine_aware scrapes from start)")
        added = self._reconcile(new, outcome)
        self.metrics.watch_backends(added)
        self.admission.rebuild()
        self.admission.config = new.admission
        self.admission.policy = make_policy(new.routing, self.backends, rng=self.rng)
        self.proxy.config = new
        self.prober.reconfigure(new.health)
        self.limiter.reconfigure(new.limits)
        self.live.config = new
        self.live.keyring = Keyring(new.auth.keys)
        outcome.draining = [b.name for b in self.backends if b.draining]
        for b in self.backends:
            self.admission.wake(b)  # waiters may fit on a new backend or a raised max_inflight
        self.metrics.child(self.metrics.reloads, "ok").inc()
        return outcome

    def _reconcile(self, new: GatewayConfig, outcome: Outcome) -> list[Backend]:
        current = {b.name: b for b in self.backends}
        kept: list[Backend] = []
        added: list[Backend] = []
        for i, cfg in enumerate(new.backends):
            b = current.pop(cfg.name, None)
            if b is not None and b.same_server(cfg):
                if b.config != cfg:
                    outcome.updated.append(b.name)
                b.reconfigure(cfg, index=i)
            else:
                if b is not None:
                    self._retire(b, outcome)
                b = Backend(cfg, index=i)
                added.append(b)
                outcome.added.append(b.name)
            kept.append(b)
        for b in current.values():
            self._retire(b, outcome)
        self.backends[:] = kept
        return added

    def _retire(self, b: Backend, outcome: Outcome) -> None:
        # Its in-flight requests hold it and finish; draining keeps new ones and waiters away.
        b.draining = True
        self.metrics.unwatch(b)
        outcome.removed.append(b.name)
