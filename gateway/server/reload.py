"""Reloading `gateway.yaml` in a running gateway (SIGHUP or `POST /admin/reload`).

Backends are matched by name. One whose URL and models are unchanged is updated in place and keeps
its health and in-flight count; a new one joins the rotation; one that left the config (or whose
URL changed) stops taking requests while those it already has run to the end. Keys, limits,
routing, admission and health settings change at once; a restart-only one (`config.RESTART_ONLY`)
is reported as needing a restart and keeps its running value. An invalid file changes nothing.
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
from gateway.server.scrape import Scraper

log = logging.getLogger("cardinal.gateway")


@dataclass(kw_only=True)
class Live:
    """The running config (restart-only settings as started), its keys, and whether the gateway
    is draining before it stops."""

    config: GatewayConfig
    keyring: Keyring
    draining: bool = False

    def reconfigure(self, config: GatewayConfig) -> None:
        self.config = config
        self.keyring = Keyring(config.auth.keys)


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
        scraper: Scraper | None,
        metrics: GatewayMetrics,
        rng: random.Random,
        load: Callable[[], GatewayConfig] | None,
    ) -> None:
        self.live = live
        self.loaded = live.config  # the file as last read: a reload reports what changed since
        self.backends = backends  # the app's list, changed in place: every part holds it
        self.admission = admission
        self.proxy = proxy
        self.prober = prober
        self.limiter = limiter
        self.scraper = scraper
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
                return self._rejected(str(e), e.field if isinstance(e, ConfigError) else "(file)")
            except Exception as e:  # a SIGHUP's task has no one to raise it to
                # Whatever the loader missed still leaves the running config, as one log line.
                log.debug("reload: the config did not load", exc_info=True)
                why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
                return self._rejected(f"the config did not load: {why}", "(file)")
            outcome = self.apply(config)
        log.warning("reloaded: %s", outcome.as_dict())
        return outcome

    def _rejected(self, error: str, field: str) -> Outcome:
        self.metrics.child(self.metrics.reloads, "error").inc()
        log.error("reload rejected, the running config stays: %s: %s", field, error)
        return Outcome(ok=False, error=error, param=field)

    def apply(self, new: GatewayConfig) -> Outcome:
        outcome = Outcome(ok=True, restart_needed=self.loaded.restart_changes(new))
        self.loaded = new
        config = self.live.config.reloaded(new)
        added = self._reconcile(config, outcome)
        self.metrics.watch_backends(added)
        policy = make_policy(config.routing, self.backends, rng=self.rng)
        self.admission.reconfigure(config.admission, policy)
        self.proxy.reconfigure(config)
        self.prober.reconfigure(config.health)
        self.limiter.reconfigure(config.limits)
        if self.scraper is not None:
            self.scraper.reconfigure(config.routing.scrape_interval_s)
        self.live.reconfigure(config)
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
