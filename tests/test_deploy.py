"""Deploy files that run as rendered: the slim gateway image (`cardinal[gateway]`, the repository's
Dockerfile), its build context inside the rendered folder or a pushed image (`render --image`),
and Kubernetes with Redis, GPU-model affinity, a model-cache volume and a Prometheus scrape config.

No Docker engine runs here, so the image is checked by what it would hold: the dependency
closure of `.[gateway]` from the installed packages' own metadata, and every file the
Dockerfile copies present in the build context that render writes."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.test_monitoring import PROMTOOL, needs_promtool

ROOT = Path(__file__).resolve().parents[1]
CARDINAL = Path(sys.executable).with_name("cardinal")
HEAVY = {"litellm", "locust", "matplotlib", "nginx-config-builder"}
PLAN = [
    "--model", "deepseek-r1-distill-qwen-7b", "--quant", "awq", "--gpu", "a10g",
    "--prompt-tokens", "256", "--output-tokens", "32", "--target-qps", "20",
    "--ttft-slo", "1s", "--tpot-slo", "40ms",
]  # fmt: skip


def _closure(name: str, extras: set[str]) -> set[str]:
    """Every distribution `pip install name[extras]` pulls, read from installed metadata."""
    seen: set[str] = set()
    todo = [(name, frozenset(extras))]
    while todo:
        dist, want = todo.pop()
        for text in metadata.requires(dist) or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in want | {""}):
                continue
            key = req.name.lower()
            if key == "cardinal":  # cardinal[all] and the like: the same package, more extras
                todo.append((name, frozenset(req.extras)))
            elif key not in seen:
                seen.add(key)
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_the_gateway_extra_pulls_no_planner_load_test_or_plots() -> None:
    slim = _closure("cardinal", {"gateway"})
    assert {"aiohttp", "prometheus-client", "pyyaml", "orjson", "redis"} <= slim
    assert not slim & HEAVY, slim & HEAVY
    assert _closure("cardinal", {"all"}) >= HEAVY  # nothing lost: `all` still has them


def test_the_gateway_and_the_sim_import_none_of_it() -> None:
    probe = (
        "import sys\n"
        "from gateway.cli import main\n"
        "from gateway.cli import serve, sim\n"
        "import gateway.server.app, gateway.server.runner, gateway.sim.card\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'litellm', 'locust', "
        "'matplotlib', 'nginx'}))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout


def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    probe = (
        "import sys\n"
        "sys.modules['nginx'] = None  # as if the `plan` extra were not installed\n"
        "from gateway.cli import main\n"
        f"sys.exit(main(['render', {str(plan)!r}, '-o', {str(tmp_path / 'out')!r}]))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "cardinal render: error: " in run.stderr and "pip install 'cardinal[plan]'" in run.stderr
    assert "Traceback" not in run.stderr


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    argv = [str(CARDINAL), "plan", *PLAN, "-o", str(path)]
    subprocess.run(argv, check=True, capture_output=True)
    return path


def _render(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "deploy"
    argv = [str(CARDINAL), "render", str(_plan(tmp_path)), "-o", str(out), *args]
    subprocess.run(argv, check=True, capture_output=True)
    return out


def _copied(dockerfile: str) -> list[str]:
    """The sources of the Dockerfile's COPY lines."""
    return [w for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for w in line.split()[:-1]]


def test_compose_builds_from_the_rendered_folder_with_the_repositorys_dockerfile(
    tmp_path: Path,
) -> None:
    out = _render(tmp_path)
    compose = yaml.safe_load((out / "docker-compose.yml").read_text(encoding="utf-8"))
    builds = {s["build"]["context"] for s in compose["services"].values() if "build" in s}
    assert builds == {"cardinal-image"}  # inside the folder: it builds wherever it is copied
    context = out / "cardinal-image"
    dockerfile = (context / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile == (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "'.[gateway]'" in dockerfile
    for source in _copied(dockerfile):
        assert (context / source).exists(), source
    assert not list(context.rglob("__pycache__"))
    # the copy is the package itself: the same modules as the repository's
    assert (context / "gateway/server/app.py").read_bytes() == (
        ROOT / "gateway/server/app.py"
    ).read_bytes()


def test_render_image_pulls_a_named_image_and_builds_nothing(tmp_path: Path) -> None:
    image = "registry.example/cardinal:0.1.0"
    out = _render(tmp_path, "--image", image)
    compose = yaml.safe_load((out / "docker-compose.yml").read_text(encoding="utf-8"))
    cardinal = [s for s in compose["services"].values() if "cardinal" in str(s.get("command"))]
    assert cardinal and all(s["image"] == image and "build" not in s for s in cardinal)
    assert not (out / "cardinal-image").exists()
    docs = list(yaml.safe_load_all((out / "kubernetes.yaml").read_text(encoding="utf-8")))
    gateway = _kind(docs, "Deployment", "gateway")
    assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == image


def _kind(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture
def kubernetes(tmp_path: Path) -> list[dict]:
    text = (_render(tmp_path) / "kubernetes.yaml").read_text(encoding="utf-8")
    return list(yaml.safe_load_all(text))


def test_kubernetes_shares_limits_in_redis(kubernetes: list[dict]) -> None:
    redis = _kind(kubernetes, "Deployment", "redis")
    service = _kind(kubernetes, "Service", "redis")
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    gateway = yaml.safe_load(_kind(kubernetes, "ConfigMap", "gateway")["data"]["gateway.yaml"])
    host = re.fullmatch(r"redis://([^:/]+):(\d+)/0", gateway["limits"]["redis_url"])
    assert host and host.group(1) == "redis.cardinal.svc"
    assert int(host.group(2)) == service["spec"]["ports"][0]["port"]


def test_kubernetes_engines_land_on_the_plans_gpu_with_a_persistent_cache(
    kubernetes: list[dict],
) -> None:
    engines = [
        d for d in kubernetes if d["kind"] == "Deployment" and d["metadata"]["name"] != "gateway"
    ]
    engines = [d for d in engines if d["metadata"]["name"].startswith("engine-")]
    assert engines
    for engine in engines:
        pod = engine["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
        assert expr["key"] == "nvidia.com/gpu.product"
        assert set(expr["values"]) == {"NVIDIA-A10", "NVIDIA-A10G"}  # AWS's A10G is an A10
        (cache,) = [v for v in pod["volumes"] if v["name"] == "cache"]
        claim = _kind(
            kubernetes, "PersistentVolumeClaim", cache["persistentVolumeClaim"]["claimName"]
        )
        size = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi"))
        assert size >= 5  # a 7B AWQ checkpoint is about 5 GiB
        assert not [v for v in pod["volumes"] if v["name"] == "cache" and "emptyDir" in v]


@needs_promtool
def test_kubernetes_scrape_config_is_valid_prometheus(
    kubernetes: list[dict], tmp_path: Path
) -> None:
    text = _kind(kubernetes, "ConfigMap", "prometheus-scrape")["data"]["scrape-configs.yml"]
    jobs = yaml.safe_load(text)["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["gateway", "engines"]  # the rules' job names
    # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest (the
    # relabel rules, regexes, fields) with the discovery swapped for an empty static list
    for job in jobs:
        assert job.pop("kubernetes_sd_configs") == [
            {"role": "pod", "namespaces": {"names": ["cardinal"]}}
        ]
        job["static_configs"] = [{"targets": []}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": jobs}), encoding="utf-8")
    run = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
