"""Fixtures shared by test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_model import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight llama GGUF (tests/tiny_model.py) that llama-server serves."""
    return write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama.gguf")
