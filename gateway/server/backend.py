"""A backend's live state: health, in-flight count and the load its engine last reported."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.server.config import BackendConfig

UP, WARMING, DOWN = "up", "warming", "down"


@dataclass(kw_only=True)
class EngineLoad:
    """What the backend's own /metrics said at the last scrape (None: not scraped / not exposed)."""

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0..1
    tokens_per_s: float | None = None  # from the generation-token counter's rate
    # the engine's batch cap: the largest batch seen, once a scrape has found requests waiting
    # beside one (a queue means the batch may be full); None until then
    slots: float | None = None
    peak_running: float = 0.0  # the largest batch any scrape has seen
    at_s: float = 0.0


class Backend:
    """One upstream server. Mutated only on the event loop; policies read it."""

    def __init__(self, config: BackendConfig, *, index: int) -> None:
        self.config = config
        self.index = index  # position in the config, for stable ordering
        self.name = config.name
        self.url = config.url
        self.weight = config.weight
        self.max_inflight = config.max_inflight
        self.state = UP  # optimistic until the first probe or call says otherwise
        self.draining = config.drain  # takes no new requests; set too when a reload removes it
        self.inflight = 0
        self.served = 0  # requests sent here, for /admin and tests
        self.failures = 0  # consecutive; drives the probe backoff
        self.strikes = 0  # failed answers in a row; `failure_threshold` of them eject
        self.ejections = 0  # for failed answers, since the last good answer
        self.last_error: str | None = None
        self.next_probe_s = 0.0
        self.load = EngineLoad()
        self.inflight_at_scrape = 0  # the gateway's in-flight count when `load` was read

    @property
    def up(self) -> bool:
        """In rotation: healthy and not draining."""
        return self.state == UP and not self.draining

    def same_server(self, config: BackendConfig) -> bool:
        """Whether `config` describes this very server, so a reload may update it in place."""
        return config.url == self.url and config.models == self.config.models

    def reconfigure(self, config: BackendConfig, *, index: int) -> None:
        self.config = config
        self.index = index
        self.weight = config.weight
        self.max_inflight = config.max_inflight
        self.draining = config.drain

    @property
    def has_room(self) -> bool:
        return self.inflight < self.max_inflight

    def serves(self, model: str) -> bool:
        return model in self.config.models

    def eject(self, error: str, *, now: float, base_s: float, max_s: float) -> None:
        """A call or probe failed: out of rotation until a probe succeeds, backing off."""
        self.state = DOWN
        self.last_error = error
        self.failures += 1
        self.next_probe_s = now + min(max_s, base_s * 2 ** (self.failures - 1))

    def strike(
        self, error: str, *, now: float, threshold: int, base_s: float, max_s: float
    ) -> None:
        """A failed answer (5xx, timeout, broken stream): ejected at `threshold` in a row, since
        one failure may be the request's doing, not the backend's. Back from such an ejection
        and not yet proven by a good answer, one failure ejects it again, for twice as long
        (as Envoy's ejection time grows with each ejection)."""
        self.strikes += 1
        self.last_error = error
        if self.strikes >= threshold or self.ejections:
            self.ejections += 1
            base_s = min(max_s, base_s * 2 ** (self.ejections - 1))
            self.eject(error, now=now, base_s=base_s, max_s=max_s)

    def answered(self) -> None:
        """A request served (any answer below 500): the run of failed answers is over."""
        self.strikes = 0
        self.ejections = 0

    def warming(self, message: str, *, now: float, base_s: float) -> None:
        """The backend answered 503 while loading: not dead, probe again at the base interval."""
        self.state = WARMING
        self.last_error = message
        self.next_probe_s = now + base_s

    def admit(self) -> None:
        self.state = UP
        self.failures = 0
        self.strikes = 0

    def describe(self) -> dict[str, object]:
        load = self.load
        return {
            "name": self.name,
            "url": self.url,
            "models": list(self.config.models),
            "state": "draining" if self.draining else self.state,
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "weight": self.weight,
            "served": self.served,
            "consecutive_failures": self.failures,
            "failed_answers": self.strikes,
            "last_error": self.last_error,
            "engine": {
                "running": load.running,
                "waiting": load.waiting,
                "kv_usage": load.kv_usage,
                "tokens_per_s": load.tokens_per_s,
                "slots_seen": load.slots,
            },
        }
