"""What a gateway config holds: frozen dataclasses whose defaults are the gateway's defaults
(config.py reads `gateway.yaml` into them, taking every default from here)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

POLICIES = ("round_robin", "least_outstanding", "engine_aware", "affinity")
ROLES = ("both", "prefill", "decode")


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    name: str
    url: str  # scheme://host:port, no trailing slash
    models: tuple[str, ...]
    max_inflight: int = 64
    weight: float = 1.0  # relative capacity: a card twice as fast gets 2
    api_key: str | None = None  # resolved from `api_key_env` by the CLI
    drain: bool = False  # in-flight requests finish, new ones go elsewhere
    # both: a whole engine; prefill / decode: one side of a disaggregated (SGLang PD) pair
    role: str = "both"
    bootstrap_port: int | None = None  # a prefill worker's; None: the workers' own default


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    policy: str = "least_outstanding"
    affinity_header: str = "x-session-id"  # affinity: this header, else `user`, else prefix
    prefix_chars: int = 256  # affinity falls back to hashing this much of the prompt
    load_factor: float = 1.25  # affinity: no backend above this times the mean load
    scrape_interval_s: float = 0.5  # engine_aware: how often backends' /metrics are read


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    path: str = "/health"
    interval_s: float = 1.0  # first re-probe of an ejected backend; doubles per failure
    max_backoff_s: float = 30.0
    timeout_s: float = 2.0
    # Failed answers in a row (5xx, timeouts, broken streams) that eject a backend, as Envoy's
    # consecutive_5xx: one bad request must not take a backend, or the fleet, out.
    failure_threshold: int = 5


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    queue_size: int = 256  # requests waiting for a free slot, all backends together
    queue_timeout_s: float = 5.0  # longest wait for a slot before 429
    retry_after_s: int = 1


@dataclass(frozen=True, kw_only=True)
class Deadlines:
    """A request's deadlines at the backends. first_byte_s: from sending it to a backend to the
    answer's headers (and, for a stream, its first whole event), per attempt; total_s: from its
    arrival to the answer's end, all attempts together."""

    first_byte_s: float = 600.0  # a long prompt's prefill on a loaded engine is silent this long
    total_s: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class TimeoutConfig:
    connect_s: float = 3.0
    read_s: float = 600.0  # between two reads: a long prefill under load is silent this long
    deadlines: Deadlines = field(default_factory=Deadlines)
    # a model's own, by name or shell-style pattern (`deepseek-r1*`), the first match winning
    models: tuple[tuple[str, Deadlines], ...] = ()

    def for_model(self, model: str) -> Deadlines:
        return next((d for p, d in self.models if fnmatch.fnmatchcase(model, p)), self.deadlines)


@dataclass(frozen=True, kw_only=True)
class KeyLimits:
    """Per client key; None: no limit. Buckets refill continuously; a burst is their size."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # prompt + completion, settled when the answer ends
    max_concurrent: int | None = None
    burst_requests: int | None = None  # default: a minute's worth, as OpenAI's limits behave
    burst_tokens: int | None = None

    def over(self, default: KeyLimits) -> KeyLimits:
        """These limits, each one not set taken from `default`."""
        return KeyLimits(
            **{
                f: getattr(self, f) if getattr(self, f) is not None else getattr(default, f)
                for f in self.__dataclass_fields__
            }
        )

    @property
    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True, kw_only=True)
class ClientKey:
    """A client's key, kept only as its SHA-256 hex digest."""

    name: str
    sha256: str
    limits: KeyLimits = field(default_factory=KeyLimits)


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    keys: tuple[ClientKey, ...] = ()  # none: the API is open, and per-key limits do not apply


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    default: KeyLimits = field(default_factory=KeyLimits)
    redis_url: str | None = None  # shared by every replica; None: limits live in this process
    redis_timeout_s: float = 0.5  # a slow Redis must not become a slow gateway
    redis_retry_s: float = 2.0  # after a Redis error, local limits this long before trying again
    concurrency_lease_s: float = 900.0  # a replica that dies leaves its slots taken this long


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    max_connections: int = 4096  # open client connections; beyond it, 503 and close
    # from one client address; behind a proxy (one address for all) raise it to max_connections
    max_connections_per_client: int = 1024
    header_timeout_s: float = 15.0  # a request's head (and an idle keep-alive) within this
    body_timeout_s: float = 30.0  # the whole body within this, else 408
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    send_timeout_s: float = 60.0  # a stream whose client reads nothing this long is cut (nginx's)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where /metrics is served and who may read it (and /readyz, which names the backends)."""

    # host:port of their own, outside the connection caps and open until the drain ends: then
    # /metrics is served only there (/healthz and /readyz on both); None: the API's address
    listen: tuple[str, int] | None = None
    key: str | None = None  # resolved from `metrics.key_env`; None: open, as Prometheus expects


# Settings bound when the gateway starts (its socket, its server, its upstream session): a reload
# reports a change to one of them as needing a restart, and the running gateway keeps its value.
RESTART_ONLY = ("host", "port", "server", "timeouts", "max_body_bytes", "metrics")


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    backends: tuple[BackendConfig, ...]
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    max_attempts: int = 3  # backends tried per request, first included
    max_body_bytes: int = 8 * 1024 * 1024
    admin_key: str | None = None  # resolved from `admin.key_env`; None: /admin is closed
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def restart_changes(self, new: GatewayConfig) -> list[str]:
        """The settings that differ in `new` and only a restart applies."""
        changed = [f for f in RESTART_ONLY if getattr(self, f) != getattr(new, f)]
        if (self.routing.policy == "engine_aware") != (new.routing.policy == "engine_aware"):
            changed.append("routing.policy (engine_aware scrapes from start)")
        return changed

    def reloaded(self, new: GatewayConfig) -> GatewayConfig:
        """`new` as a running gateway applies it: the restart-only settings stay as they are."""
        return replace(new, **{f: getattr(self, f) for f in RESTART_ONLY})
