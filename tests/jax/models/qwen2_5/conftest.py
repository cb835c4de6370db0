"""Fixtures of the Qwen2.5 tests: random Hugging Face checkpoints of the tiny presets."""

from pathlib import Path

import pytest

from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """preset name -> a sharded random checkpoint directory, built once per session (per xdist worker)."""
    built: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in built:
            built[preset] = build_checkpoint(TINY_PRESETS[preset], tmp_path_factory.mktemp(f"ckpt_{preset}"))
        return built[preset]

    return get
