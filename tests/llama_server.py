"""The real llama.cpp `llama-server` for the tests, built once and cached outside the repository.

    python -m tests.llama_server      # build it unless cached (`make llama-server`), print its path

The sources are the llama.cpp tree vendored in the `llama-cpp-python` source distribution (the only
place a package registry carries them); only the `llama-server` target is built, CPU only, static,
with no network at build time (no prebuilt web UI, no TLS). `CARDINAL_LLAMA_SERVER` points the tests
at another binary instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# The llama-cpp-python release whose vendored llama.cpp is built; the `gguf` package pinned in
# pyproject.toml's dev extras is the version of the gguf-py in that same tree (checked on build).
VERSION = "0.3.36"
GGUF_VERSION = "0.19.0"
ENV_VAR = "CARDINAL_LLAMA_SERVER"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache
    "-DGGML_NATIVE=OFF",  # portable (AVX2 baseline): the cache may outlive this CPU
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",  # the web UI needs npm or a download; the tests need the API only
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cardinal" / "llama.cpp" / VERSION


def cached_binary(env: Mapping[str, str] = os.environ) -> Path:
    return cache_dir(env) / "bin" / "llama-server"


def find(env: Mapping[str, str] = os.environ) -> Path | None:
    """The binary the tests use: $CARDINAL_LLAMA_SERVER, else the cached build (None if absent)."""
    path = Path(env[ENV_VAR]) if env.get(ENV_VAR) else cached_binary(env)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def build(*, env: Mapping[str, str] = os.environ, say: Callable[[str], None] = print) -> Path:
    """Download the source distribution, build llama-server, install it in the cache."""
    target = cached_binary(env)
    work = cache_dir(env) / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    src = _sources(work, say=say)
    _check_gguf_version(src)
    jobs = str(os.cpu_count() or 2)
    say(f"building llama-server {VERSION} with {jobs} jobs (about 10 minutes on 2 cores)")
    run_logged(
        ["cmake", "-S", str(src), "-B", str(work / "build"), *CMAKE_OPTIONS], log=work / "log"
    )
    run_logged(
        ["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", jobs],
        log=work / "log",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copy2(work / "build" / "bin" / "llama-server", partial)
    partial.replace(target)  # atomic: a half-copied binary is never found
    shutil.rmtree(work)
    say(f"built {target} in {time.monotonic() - started:.0f} s")
    return target


def _sources(work: Path, *, say: Callable[[str], None]) -> Path:
    """vendor/llama.cpp of the pinned llama-cpp-python source distribution, extracted."""
    say(f"fetching the llama-cpp-python {VERSION} source distribution (llama.cpp inside)")
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    run_logged([*pip, f"llama-cpp-python=={VERSION}", "-d", str(work)], log=work / "log")
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(work / "sdist", members=members, filter="data")
    sdist.unlink()
    return work / "sdist" / prefix


def _check_gguf_version(src: Path) -> None:
    text = (src / "gguf-py" / "pyproject.toml").read_text(encoding="utf-8")
    if f'version = "{GGUF_VERSION}"' not in text:
        raise SystemExit(
            f"llama.cpp of llama-cpp-python {VERSION} vendors a gguf-py other than {GGUF_VERSION}: "
            "pin the matching `gguf` in pyproject.toml and GGUF_VERSION here"
        )


def run_logged(argv: list[str], *, log: Path) -> None:
    """Run `argv` with its output appended to `log`; exit with the log's end when it fails."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(
            f"{argv[0]} failed with exit {code}; the end of {log}:\n" + "\n".join(tail)
        )


def main() -> int:
    found = find()
    if found is None:
        if os.environ.get(ENV_VAR):
            raise SystemExit(f"{ENV_VAR}={os.environ[ENV_VAR]} is not an executable file")
        found = build()
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
