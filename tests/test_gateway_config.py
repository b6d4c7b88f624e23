"""gateway.yaml: the issue's minimal file loads, defaults fill the rest, errors name the field."""
# ruff: noqa: E501  (the issue's minimal gateway.yaml, verbatim)

from __future__ import annotations

import pytest

from gateway.server.config import ConfigError, load, parse

MINIMAL = """\
listen: 127.0.0.1:8080
backends:
  - {name: card-0, url: "http://127.0.0.1:8001", model: deepseek-r1-distill-qwen-7b, max_inflight: 32}
  - {name: card-1, url: "http://127.0.0.1:8002", model: deepseek-r1-distill-qwen-7b, max_inflight: 32}
routing: least_outstanding
"""


def test_minimal_file_loads_with_defaults() -> None:
    c = load(MINIMAL, env={})
    assert (c.host, c.port) == ("127.0.0.1", 8080)
    assert [b.name for b in c.backends] == ["card-0", "card-1"]
    assert c.backends[1].url == "http://127.0.0.1:8002"
    assert c.backends[0].models == ("deepseek-r1-distill-qwen-7b",)
    assert c.backends[0].max_inflight == 32 and c.backends[0].weight == 1.0
    assert c.routing.policy == "least_outstanding"
    assert c.admission.queue_size > 0 and c.admission.queue_timeout_s > 0
    assert c.timeouts.connect_s > 0 and c.max_attempts >= 2 and c.admin_key is None


def test_full_file_with_secrets_from_the_environment() -> None:
    text = """\
listen: "[::1]:9000"
backends:
  - {url: "http://a:1/", models: [m1, m2], weight: 2, api_key_env: A_KEY}
routing: {policy: affinity, affinity_header: X-User, load_factor: 1.5}
health: {path: /ready, interval_s: 0.5}
admission: {queue_size: 0, queue_timeout_s: 2}
timeouts: {connect_s: 1, read_s: 30}
max_attempts: 2
admin: {key_env: ADMIN}
"""
    c = load(text, env={"A_KEY": "sk-a", "ADMIN": "root"})
    assert (c.host, c.port) == ("::1", 9000)
    b = c.backends[0]
    assert (b.name, b.url, b.models, b.weight, b.api_key) == (
        "a:1",
        "http://a:1",
        ("m1", "m2"),
        2.0,
        "sk-a",
    )
    assert c.routing.policy == "affinity" and c.routing.affinity_header == "x-user"
    assert c.routing.load_factor == 1.5 and c.health.path == "/ready"
    assert c.admission.queue_size == 0 and c.timeouts.read_s == 30 and c.admin_key == "root"


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: d["backends"][1].update(url="ftp://x"), "backends[1].url", "http"),
        (lambda d: d["backends"][1].pop("url"), "backends[1].url", "required"),
        (lambda d: d["backends"][0].pop("model"), "backends[0].model", "required"),
        (lambda d: d["backends"][0].update(max_inflight=0), "backends[0].max_inflight", "> 0"),
        (lambda d: d["backends"][0].update(max_inflight="8"), "backends[0].max_inflight", "int"),
        (lambda d: d["backends"][1].update(name="card-0"), "backends[1].name", "twice"),
        (lambda d: d["backends"][0].update(api_key_env="NOPE"), "backends[0].api_key_env", "NOPE"),
        (lambda d: d["backends"][0].update(wieght=2), "backends[0].wieght", "unknown"),
        (lambda d: d.update(routing="fastest"), "routing", "round_robin"),
        (lambda d: d.update(routing={"policy": "x"}), "routing.policy", "engine_aware"),
        (lambda d: d.update(listen="8080"), "listen", "host:port"),
        (lambda d: d.update(backends=[]), "backends", "at least one"),
        (lambda d: d.update(admission={"queue_timeout_s": -1}), "admission.queue_timeout_s", "> 0"),
        (lambda d: d.update(retries=3), "retries", "unknown"),
    ],
)
def test_errors_name_the_field(edit, field: str, words: str) -> None:  # type: ignore[no-untyped-def]
    import yaml

    data = yaml.safe_load(MINIMAL)
    edit(data)
    with pytest.raises(ConfigError) as e:
        parse(data, env={})
    assert e.value.field == field
    assert words in str(e.value)


def test_not_yaml_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load("backends: [", env={})


@pytest.mark.parametrize("value", ["sk-a\n", " sk-a", "sk-a\t"])
def test_a_secret_with_whitespace_around_it_is_refused(value: str) -> None:
    """An Authorization header's value is trimmed, so a key that starts or ends with whitespace
    could never authenticate (and a backend key so written is not a valid header)."""
    import yaml

    data = yaml.safe_load(MINIMAL)
    data["backends"][0]["api_key_env"] = "A_KEY"
    with pytest.raises(ConfigError) as e:
        parse(data, env={"A_KEY": value})
    assert e.value.field == "backends[0].api_key_env"
    assert "whitespace" in str(e.value)
