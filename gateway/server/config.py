"""`gateway.yaml`: parsed once at the edge into frozen dataclasses; errors name the dotted field."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.errors import FieldError
from gateway.server.settings import (
    POLICIES,
    RESTART_ONLY,
    ROLES,
    AdmissionConfig,
    AuthConfig,
    BackendConfig,
    ClientKey,
    Deadlines,
    GatewayConfig,
    HealthConfig,
    KeyLimits,
    LimitsConfig,
    MetricsConfig,
    RoutingConfig,
    ServerConfig,
    TimeoutConfig,
)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_OWN = object()  # a getter's default: the one the section's dataclass gives the field


# the settings' names, for the modules that read a config through this one
__all__ = [
    "AdmissionConfig",
    "AuthConfig",
    "BackendConfig",
    "ClientKey",
    "ConfigError",
    "Deadlines",
    "GatewayConfig",
    "HealthConfig",
    "KeyLimits",
    "LimitsConfig",
    "MetricsConfig",
    "POLICIES",
    "RESTART_ONLY",
    "Reader",
    "RoutingConfig",
    "ServerConfig",
    "TimeoutConfig",
    "decode",
    "load",
    "parse",
    "parse_listen",
]


class ConfigError(FieldError):
    """A gateway config that is not valid; `field` is the key at fault."""


Reader = Callable[[str], str | bytes]  # a file the config names (`auth.keys_file`) -> its content


def load(text: str, *, env: Mapping[str, str], read: Reader | None = None) -> GatewayConfig:
    """Parse `gateway.yaml` text; `env` resolves the `*_env` fields (the CLI passes os.environ),
    `read` the files it names."""
    return parse(_yaml(text, "(file)"), env=env, read=read)


def decode(data: bytes, *, what: str, field: str) -> str:
    """The UTF-8 text of a file's bytes; a binary or compressed file is an error at `field`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(e, what=what, field=field) from None


def _not_utf8(e: UnicodeDecodeError, *, what: str, field: str) -> ConfigError:
    byte = e.object[e.start]
    return ConfigError(
        f"{what} is not UTF-8 text (byte 0x{byte:02x} at offset {e.start})", field=field
    )


def parse(data: Any, *, env: Mapping[str, str], read: Reader | None = None) -> GatewayConfig:
    top = _Section(data, "", GatewayConfig)
    host, port = top.default("host"), top.default("port")
    listen = top.get("listen", str, None)
    if listen is not None:
        host, port = parse_listen(listen)
    backends = top.get("backends", list, None, required=True)
    if not backends:
        raise ConfigError("`backends` must list at least one backend", field="backends")
    parsed = tuple(_backend(b, f"backends[{i}]", env) for i, b in enumerate(backends))
    _unique([b.name for b in parsed], "name")
    _pairs(parsed)
    admin = top.section("admin")
    config = GatewayConfig(
        host=host,
        port=port,
        backends=parsed,
        routing=_routing(top.get("routing", (str, dict), {})),
        health=_health(top.section("health", HealthConfig)),
        admission=_admission(top.section("admission", AdmissionConfig)),
        timeouts=_timeouts(top.section("timeouts", TimeoutConfig)),
        max_attempts=top.positive("max_attempts", int),
        max_body_bytes=top.positive("max_body_bytes", int),
        admin_key=_secret(admin, "key_env", env),
        auth=_auth(top.section("auth", AuthConfig), env, read),
        limits=_limits(top.section("limits", LimitsConfig), env),
        server=_server(top.section("server", ServerConfig)),
        metrics=_metrics(top.section("metrics", MetricsConfig), env),
    )
    admin.done()
    top.done()
    return config


class _Section:
    """A mapping being read into dataclass `of`: typed getters that name the dotted field and
    default to `of`'s own defaults; `done` rejects the rest."""

    def __init__(self, raw: Any, path: str, of: type | None = None) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(
                f"`{path or '(top level)'}` must be a mapping, got {_shown(raw)}",
                field=path or "(top)",
            )
        self.raw = raw
        self.path = path
        self.of = of
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def default(self, key: str) -> Any:
        """The default the dataclass gives its field `key`."""
        f = next(f for f in fields(self.of or object) if f.name == key)
        return f.default_factory() if f.default_factory is not MISSING else f.default

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = _OWN,
        *,
        required: bool = False,
    ) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise ConfigError(f"`{self.name(key)}` is required", field=self.name(key))
            return self.default(key) if default is _OWN else default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            want = " or ".join("mapping" if k is dict else k.__name__ for k in kinds)
            raise ConfigError(
                f"`{self.name(key)}` must be {want}, got {_shown(value)}", field=self.name(key)
            )
        return value

    def section(self, key: str, of: type | None = None) -> _Section:
        """The mapping under `key` (absent: empty), to be read into dataclass `of`."""
        return _Section(self.get(key, dict, {}), self.name(key), of)

    def positive(self, key: str, kind: type, default: Any = _OWN) -> Any:
        value = self.get(key, kind, default)
        if value is not None and not value > 0:
            raise ConfigError(
                f"`{self.name(key)}` must be > 0, got {value!r}", field=self.name(key)
            )
        return value

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.seen)
        if extra:
            raise ConfigError(f"unknown field `{self.name(extra[0])}`", field=self.name(extra[0]))


def parse_listen(text: str, field: str = "listen") -> tuple[str, int]:
    """(host, port) from `host:port` (`[::1]:8080` for IPv6); errors name `field`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"`{field}` must be host:port, got {text!r}", field=field)
    return host.strip("[]") or "0.0.0.0", int(port)


def _backend(raw: Any, path: str, env: Mapping[str, str]) -> BackendConfig:
    s = _Section(raw, path, BackendConfig)
    url = s.get("url", str, None, required=True).rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # a port past 65535 or not a number raises only here
    except ValueError as e:  # `http://[::1` (an unclosed IPv6 address), `http://h:99999`
        raise ConfigError(
            f"`{path}.url` must be http(s)://host:port, got {_shown(url)}: {e}",
            field=path + ".url",
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(
            f"`{path}.url` must be http(s)://host:port, got {_shown(url)}", field=path + ".url"
        )
    model = s.get("model", str, None)
    models = tuple(s.get("models", list, [model] if model else []))
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"`{path}.model` (or `models`) is required", field=path + ".model")
    backend = BackendConfig(
        name=s.get("name", str, parts.netloc),
        url=url,
        models=models,
        max_inflight=s.positive("max_inflight", int),
        weight=s.positive("weight", float),
        api_key=_secret(s, "api_key_env", env),
        drain=s.get("drain", bool),
        role=s.get("role", str),
        bootstrap_port=s.get("bootstrap_port", int, None),
    )
    s.done()
    if backend.role not in ROLES:
        raise ConfigError(
            f"`{path}.role` must be one of {', '.join(ROLES)}, got {backend.role!r}",
            field=path + ".role",
        )
    port = backend.bootstrap_port
    if port is not None and (backend.role != "prefill" or not 0 < port < 65536):
        raise ConfigError(
            f"`{path}.bootstrap_port` is a prefill worker's port (1-65535)",
            field=path + ".bootstrap_port",
        )
    return backend


def _secret(s: _Section, key: str, env: Mapping[str, str]) -> str | None:
    var = s.get(key, str, None)
    if var is None:
        return None
    if not env.get(var):
        raise ConfigError(
            f"`{s.name(key)}`: environment variable {var} is not set", field=s.name(key)
        )
    if env[var] != env[var].strip():  # a header value is trimmed: such a key could never match
        raise ConfigError(
            f"`{s.name(key)}`: environment variable {var} starts or ends with whitespace, "
            "which no Authorization header can carry",
            field=s.name(key),
        )
    return env[var]


def _routing(raw: Any) -> RoutingConfig:
    s = _Section({"policy": raw} if isinstance(raw, str) else raw, "routing", RoutingConfig)
    field_name = "routing" if isinstance(raw, str) else "routing.policy"
    policy = s.get("policy", str)
    if policy not in POLICIES:
        raise ConfigError(
            f"`{field_name}` must be one of {', '.join(POLICIES)}, got {policy!r}", field=field_name
        )
    config = RoutingConfig(
        policy=policy,
        affinity_header=s.get("affinity_header", str).lower(),
        prefix_chars=s.positive("prefix_chars", int),
        load_factor=s.positive("load_factor", float),
        scrape_interval_s=s.positive("scrape_interval_s", float),
    )
    if config.load_factor < 1:
        raise ConfigError("`routing.load_factor` must be >= 1", field="routing.load_factor")
    s.done()
    return config


def _health(s: _Section) -> HealthConfig:
    config = HealthConfig(
        path=s.get("path", str),
        interval_s=s.positive("interval_s", float),
        max_backoff_s=s.positive("max_backoff_s", float),
        timeout_s=s.positive("timeout_s", float),
        failure_threshold=s.positive("failure_threshold", int),
    )
    s.done()
    return config


def _admission(s: _Section) -> AdmissionConfig:
    queue_size = s.get("queue_size", int)
    if queue_size < 0:
        raise ConfigError("`admission.queue_size` must be >= 0", field="admission.queue_size")
    config = AdmissionConfig(
        queue_size=queue_size,
        queue_timeout_s=s.positive("queue_timeout_s", float),
        retry_after_s=s.positive("retry_after_s", int),
    )
    s.done()
    return config


def _timeouts(s: _Section) -> TimeoutConfig:
    """`timeouts`: connect_s, read_s, the deadlines first_byte_s and total_s, and `models`:
    pattern -> {first_byte_s, total_s}, each unset one taken from the section's own."""
    own = _deadlines(s, Deadlines())
    models = s.section("models")
    per_model = []
    for pattern in models.raw:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(
                f"`{models.name(str(pattern))}`: a model name or pattern must be a "
                "non-empty string",
                field=models.path,
            )
        one = models.section(pattern)
        per_model.append((pattern, _deadlines(one, own)))
        one.done()
    config = TimeoutConfig(
        connect_s=s.positive("connect_s", float),
        read_s=s.positive("read_s", float),
        deadlines=own,
        models=tuple(per_model),
    )
    s.done()
    return config


def _deadlines(s: _Section, default: Deadlines) -> Deadlines:
    total = s.positive("total_s", float, default.total_s)
    # not given: the default's, within the total
    first = s.positive("first_byte_s", float, min(default.first_byte_s, total))
    if first > total:
        raise ConfigError(
            f"`{s.name('first_byte_s')}` ({first:g}) must not exceed "
            f"`{s.name('total_s')}` ({total:g}), the whole request's deadline",
            field=s.name("first_byte_s"),
        )
    return Deadlines(first_byte_s=first, total_s=total)


def _yaml(text: str, where: str, what: str = "not valid YAML") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {_yaml_problem(e)}", field=where) from None
    except RecursionError:  # `[[[[...` a few hundred deep: no config nests past a handful
        raise ConfigError(f"{what}: nested too deeply", field=where) from None
    except (ValueError, TypeError, AttributeError) as e:
        # safe_load's own constructors raise these for a bad scalar: `2024-13-45`, `!!int x`
        raise ConfigError(f"{what}: a value cannot be read ({_one_line(e)})", field=where) from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where (its text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):
        return f"character #x{e.character:04x} at offset {e.position}: {e.reason}"
    return " ".join(str(e).split())


def _shown(value: Any, limit: int = 80) -> str:
    """`value` as an error message quotes it: its repr, cut at `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(path: str) -> str:
    """A file name as a message shows it: quoted where it holds a NUL or a newline."""
    return path if path.isprintable() else _shown(path)


def _one_line(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _auth(s: _Section, env: Mapping[str, str], read: Reader | None) -> AuthConfig:
    entries = [(e, f"auth.keys[{i}]") for i, e in enumerate(s.get("keys", list))]
    path = s.get("keys_file", str, None)
    if path is not None:
        if read is None:
            raise ConfigError("`auth.keys_file` cannot be read here", field="auth.keys_file")
        text = _keys_text(read, path)
        listed = _yaml(
            text, "auth.keys_file", f"`auth.keys_file` ({_path(path)}) is not valid YAML"
        )
        if not isinstance(listed, list):
            raise ConfigError("`auth.keys_file` must hold a list of keys", field="auth.keys_file")
        entries += [(e, f"auth.keys_file[{i}]") for i, e in enumerate(listed)]
    keys = tuple(
        _client_key(e, where, env, in_file=where.startswith("auth.keys_file"))
        for e, where in entries
    )
    seen: set[str] = set()  # a set, not a scan of those before: a keys file may list many
    for i, k in enumerate(keys):
        if k.sha256 in seen:
            raise ConfigError(f"key {k.name!r} is listed twice", field=entries[i][1])
        seen.add(k.sha256)
    s.done()
    return AuthConfig(keys=keys)


def _keys_text(read: Reader, path: str) -> str:
    """The keys file's text; a file that cannot be read or is not UTF-8 names `auth.keys_file`."""
    what = f"`auth.keys_file` ({_path(path)})"
    try:
        data = read(path)
    except UnicodeDecodeError as e:  # a reader that decodes itself (`Path.read_text`)
        raise _not_utf8(e, what=what, field="auth.keys_file") from None
    except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte in it
        why = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        raise ConfigError(
            f"`auth.keys_file`: cannot read {_path(path)}: {why}", field="auth.keys_file"
        ) from None
    return data if isinstance(data, str) else decode(data, what=what, field="auth.keys_file")


def _client_key(raw: Any, path: str, env: Mapping[str, str], *, in_file: bool) -> ClientKey:
    s = _Section(raw, path, ClientKey)
    name = s.get("name", str, None, required=True)
    digest = s.get("sha256", str, None)
    if in_file and "key_env" in s.raw:  # a keys file holds digests, never pointers to secrets
        raise ConfigError(
            f"`{path}.key_env`: a keys file holds `sha256` digests only", field=path + ".key_env"
        )
    if not in_file:
        secret = _secret(s, "key_env", env)
        if secret is not None:
            if digest is not None:
                raise ConfigError(f"`{path}`: give `key_env` or `sha256`, not both", field=path)
            digest = hashlib.sha256(secret.encode()).hexdigest()
    if digest is None:
        want = "`sha256`" if in_file else "`key_env` or `sha256`"
        raise ConfigError(f"`{path}` needs {want}", field=path)
    if not SHA256_RE.fullmatch(digest.lower()):
        raise ConfigError(
            f"`{path}.sha256` must be 64 hex digits (sha256sum of the key)", field=path + ".sha256"
        )
    limits = _key_limits(s.section("limits", KeyLimits))
    s.done()
    return ClientKey(name=name, sha256=digest.lower(), limits=limits)


def _key_limits(s: _Section) -> KeyLimits:
    limits = KeyLimits(**{f: s.positive(f, int) for f in KeyLimits.__dataclass_fields__})
    s.done()
    return limits


def _limits(s: _Section, env: Mapping[str, str]) -> LimitsConfig:
    url = s.get("redis_url", str)
    from_env = _secret(s, "redis_url_env", env)  # a URL with a password stays out of the file
    if url and from_env:
        raise ConfigError("give `limits.redis_url` or `redis_url_env`, not both", field="limits")
    url = url or from_env
    if url is not None and _scheme(url) not in ("redis", "rediss", "unix"):
        raise ConfigError(
            # not echoed: the URL may carry a password
            "`limits.redis_url` must be redis://host:port/db (or rediss://, unix://)",
            field="limits.redis_url",
        )
    config = LimitsConfig(
        default=_key_limits(s.section("default", KeyLimits)),
        redis_url=url,
        redis_timeout_s=s.positive("redis_timeout_s", float),
        redis_retry_s=s.positive("redis_retry_s", float),
        concurrency_lease_s=s.positive("concurrency_lease_s", float),
    )
    s.done()
    return config


def _scheme(url: str) -> str | None:
    """The URL's scheme; None where it does not parse (`redis://[::1`)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port past 65535 raises only when read
    except ValueError:
        return None
    return parts.scheme


def _server(s: _Section) -> ServerConfig:
    config = ServerConfig(
        max_connections=s.positive("max_connections", int),
        max_connections_per_client=s.positive("max_connections_per_client", int),
        header_timeout_s=s.positive("header_timeout_s", float),
        body_timeout_s=s.positive("body_timeout_s", float),
        drain_timeout_s=s.positive("drain_timeout_s", float),
        send_timeout_s=s.positive("send_timeout_s", float),
    )
    s.done()
    return config


def _metrics(s: _Section, env: Mapping[str, str]) -> MetricsConfig:
    listen = s.get("listen", str, None)
    config = MetricsConfig(
        listen=parse_listen(listen, s.name("listen")) if listen is not None else None,
        key=_secret(s, "key_env", env),
    )
    s.done()
    return config


def _pairs(backends: tuple[BackendConfig, ...]) -> None:
    """A model with decode workers needs prefill workers, and the other way round."""
    for i, b in enumerate(backends):
        if b.role == "both":
            continue
        other = "decode" if b.role == "prefill" else "prefill"
        for m in b.models:
            if not any(o.role == other and m in o.models for o in backends):
                raise ConfigError(
                    f"{b.role} worker {b.name!r} serves `{m}`, which no {other} worker does: "
                    "a disaggregated request needs both",
                    field=f"backends[{i}].role",
                )


def _unique(names: list[str], key: str) -> None:
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"backend name {name!r} is used twice", field=f"backends[{i}].{key}")
