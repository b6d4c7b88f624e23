"""guidellm and AIPerf, as their users install them, for the tests that run them unchanged against
`cardinal serve`; each in a virtualenv of its own, built once and cached outside the repository,
with a small HuggingFace tokenizer made here (no model hub is reachable from the tests).

    python -m tests.load_tools      # build what is not cached (`make load-tools`), print the paths

Both tools read a tokenizer to size their synthetic prompts; they take the server's `usage` for
the tokens it generated, so the tokenizer's vocabulary does not move the figures compared.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.llama_server import run_logged

TOKENIZER_SCRIPT = Path(__file__).with_name("data") / "make_tokenizer.py"


@dataclass(frozen=True)
class Tool:
    name: str
    version: str
    # pip installs, in order: guidellm asks for any torch, which pip would meet with the newest
    # CUDA build (several GB); a pinned torch installed first (a CPU build where pip finds one)
    # leaves it nothing to fetch
    installs: tuple[tuple[str, ...], ...]
    command: str  # the tool's console script in the venv's bin/


GUIDELLM = Tool("guidellm", "0.8.1", (("torch==2.13.0",), ("guidellm==0.8.1",)), command="guidellm")
AIPERF = Tool("aiperf", "0.13.0", (("aiperf==0.13.0",),), command="aiperf")
TOOLS = (GUIDELLM, AIPERF)


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cardinal" / "load-tools"


def venv(tool: Tool, env: Mapping[str, str] = os.environ) -> Path:
    return cache_dir(env) / f"{tool.name}-{tool.version}"


def executable(tool: Tool, env: Mapping[str, str] = os.environ) -> Path | None:
    """The tool's command where its venv was built to the end (None: not built)."""
    root = venv(tool, env)
    path = root / "bin" / tool.command
    return path if (root / ".complete").exists() and path.is_file() else None


def tokenizer(env: Mapping[str, str] = os.environ) -> Path | None:
    path = cache_dir(env) / "tokenizer"
    return path if (path / "tokenizer.json").is_file() else None


def build(tool: Tool, *, say: Callable[[str], None] = print) -> Path:
    """A fresh venv with the tool installed, marked complete only at the end (a venv's scripts
    name their interpreter by path, so it is built where it stays)."""
    target = venv(tool)
    shutil.rmtree(target, ignore_errors=True)  # a build cut half-way
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"installing {tool.name} {tool.version} in a virtualenv of its own (once; about a GB)")
    run_logged(
        [sys.executable, "-m", "venv", str(target)], log=target.with_name(target.name + ".log")
    )
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for packages in tool.installs:
        run_logged([*pip, *packages], log=target.with_name(target.name + ".log"))
    (target / ".complete").touch()
    say(f"installed {target} in {time.monotonic() - started:.0f} s")
    return target / "bin" / tool.command


def build_tokenizer(*, say: Callable[[str], None] = print) -> Path:
    """The tokenizer directory, made with the tokenizers and transformers of AIPerf's venv."""
    out = cache_dir() / "tokenizer"
    python = venv(AIPERF) / "bin" / "python"
    run_logged([str(python), str(TOKENIZER_SCRIPT), str(out)], log=cache_dir() / "tokenizer.log")
    say(f"made {out}")
    return out


def main() -> int:
    for tool in TOOLS:
        print(executable(tool) or build(tool))
    print(tokenizer() or build_tokenizer())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
