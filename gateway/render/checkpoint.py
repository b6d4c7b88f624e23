"""Which published weights an engine loads for a catalog model and quantization."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from gateway.planner.catalog import Quant


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    repo: str  # Hugging Face repository id
    exact: bool  # False: the catalog has no repository for this quantization, `repo` stands in
    gguf_tag: str | None = None  # llama.cpp / Ollama quantization tag, e.g. Q4_K_M


@functools.cache
def _table() -> dict[str, Any]:
    text = resources.files("gateway.planner").joinpath("data/checkpoints.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def checkpoint(model: str, quant: Quant) -> Checkpoint:
    """The repository for `model` (a catalog id) at `quant`; a stand-in when none is known."""
    entry = _table().get(model, {})
    if quant.is_gguf:
        tag = (quant.ftype or quant.id).upper()
        return Checkpoint(repo=entry.get("gguf", model), exact="gguf" in entry, gguf_tag=tag)
    # vLLM quantizes fp8 (and loads fp16) from the original weights; awq/gptq/int8 need a checkpoint
    if quant.id in ("fp16", "fp8"):
        return Checkpoint(repo=entry.get("weights", model), exact="weights" in entry)
    repo = entry.get(quant.id, entry.get("weights", model))
    return Checkpoint(repo=repo, exact=quant.id in entry)


def gguf_repo(model: str) -> str:
    """The model's GGUF repository (Ollama's source even when the fleet runs vLLM)."""
    return _table().get(model, {}).get("gguf", model)
