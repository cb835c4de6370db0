# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A checkpoint ready to generate: its config, tokenizer and EOS ids, then generators on a device
or a mesh, first with shape-only weights (compiled, memory known), then loaded.

Shared by the generate and GSM8K command lines.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers import Qwen2Config as HFQwen2Config

from tests.jax.infra.devices import configure_jax
from tests.jax.infra.distributed import (
    DEFAULT_TIMEOUT,
    ClusterError,
    check_cluster,
    join_cluster,
)
from tests.jax.infra.mesh import MeshError, MeshShape, make_mesh
from tests.jax.models.qwen2_5.batching import PREFILL_CHUNK, GenerationError
from tests.jax.models.qwen2_5.config import ConfigError, Qwen2Config
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.loader import (
    CheckpointError,
    check_checkpoint,
    load_model,
)
from tests.jax.models.qwen2_5.model import PLAIN, Kernels
from tests.jax.models.qwen2_5.smollm2 import NAME as SMOLLM2
from tests.jax.models.qwen2_5.smollm2 import smollm2_checkpoint
from tests.jax.models.qwen2_5.tensor_parallel import TensorParallelError, abstract_model

# What a user can get wrong; the command lines print these as one line and exit 2.
EXPECTED_ERRORS = (
    ConfigError,
    CheckpointError,
    MeshError,
    TensorParallelError,
    GenerationError,
    ClusterError,
)


def eos_token_ids(
    model_path: Path, tokenizer: PreTrainedTokenizerBase, vocab_size: int
) -> list[int]:
    """From generation_config.json (Qwen2.5: 151643 and 151645), else config.json, else the
    tokenizer; each must be a token id of the model's vocabulary (a string "2" is refused: it
    would never match a generated id, and generation would never stop on it)."""
    for name in ("generation_config.json", "config.json"):
        path = model_path / name
        if not path.is_file():
            continue
        try:
            fields = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(fields, dict):
            raise CheckpointError(f"{path} must hold a JSON object of fields")
        eos = fields.get("eos_token_id")
        if eos is None:
            continue
        ids = eos if isinstance(eos, list) else [eos]
        if not ids or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab_size
            for i in ids
        ):
            raise CheckpointError(
                f"{path}: eos_token_id must be a token id or a non-empty list of them in [0, {vocab_size}), got {eos!r}"
            )
        return ids
    if tokenizer.eos_token_id is None:
        raise CheckpointError(
            f"{model_path} declares no EOS token (generation_config.json eos_token_id)"
        )
    return [tokenizer.eos_token_id]


# A tokenizer is one of these sets of files (Qwen2's byte-level BPE).
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def load_tokenizer(model_path: Path, cfg: Qwen2Config) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, checked against the model: present, loadable, and no token id
    beyond the model's vocabulary (an embedding lookup would silently clamp it)."""
    if not any(
        all((model_path / f).is_file() for f in files) for files in _TOKENIZER_FILES
    ):
        raise CheckpointError(
            f"{model_path} has no tokenizer: tokenizer.json (or vocab.json and merges.txt) is missing"
        )
    try:
        # The validated config goes in, so transformers does not read config.json a second time.
        tokenizer = AutoTokenizer.from_pretrained(
            model_path, config=HFQwen2Config(**cfg.to_hf_dict())
        )
    except (
        Exception
    ) as err:  # transformers raises many types here; the user needs the file and the reason
        raise CheckpointError(
            f"the tokenizer in {model_path} cannot be loaded: {type(err).__name__}: {err}"
        ) from err
    if len(tokenizer) > cfg.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {model_path} has {len(tokenizer):,} tokens but the model's vocabulary is "
            f"{cfg.vocab_size:,}: tokenizer and weights come from different models"
        )
    return tokenizer


def resolve_model_path(model_path: Path | None) -> Path:
    """The given checkpoint directory, or the trained demo model, announced on stderr."""
    if model_path is None:
        path = smollm2_checkpoint()
        print(f"no --model-path: using {SMOLLM2} at {path}", file=sys.stderr)
        return path
    if not model_path.is_dir():
        raise CheckpointError(f"--model-path {model_path} is not a directory")
    return model_path


def configure_for(
    mesh: str,
    coordinator: str | None = None,
    num_processes: int = 1,
    process_id: int = 0,
    cluster_timeout: float = DEFAULT_TIMEOUT,
) -> MeshShape:
    """Parse a mesh and, before JAX starts, ask for the simulated CPU devices it needs; with a
    coordinator, join a multi-process run in which each process holds its share of them.
    """
    shape = MeshShape.parse(mesh)
    check_cluster(coordinator, num_processes, process_id, cluster_timeout)
    if coordinator is None:
        configure_jax(cpu_devices=shape.size)
    elif shape.size % num_processes:
        raise ClusterError(
            f"mesh {shape} ({shape.size} devices) does not split evenly over {num_processes} processes"
        )
    else:
        join_cluster(
            coordinator,
            num_processes,
            process_id,
            shape.size // num_processes,
            cluster_timeout,
        )
    return shape


def run_kernels(cpu_kernels: bool) -> Kernels:
    """The kernels of a run: the golden's (PLAIN), or with `cpu_kernels` the opt-in CPU
    acceleration's, imported (and its kernel built) only then, so a missing compiler or a CPU they
    do not speed up is named before any work."""
    if not cpu_kernels:
        return PLAIN
    from tests.jax.models.qwen2_5.cpu_acceleration import kernels, native_build

    try:
        return kernels.cpu_kernels()
    except (kernels.CpuAccelerationError, native_build.KernelBuildError) as err:
        raise GenerationError(str(err)) from err


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory's config, tokenizer and EOS ids: everything but the weights."""

    path: Path
    cfg: Qwen2Config
    tokenizer: PreTrainedTokenizerBase
    eos_token_ids: list[int]
    pad_token_id: int

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        """config.json first (typed), then the tokenizer and generation config, then the weights'
        headers against the config: every problem is named before anything heavy happens.
        """
        cfg = Qwen2Config.from_pretrained(path)
        tokenizer = load_tokenizer(path, cfg)
        eos = eos_token_ids(path, tokenizer, cfg.vocab_size)
        check_checkpoint(path, cfg)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        return cls(path, cfg, tokenizer, eos, pad)

    def encode(self, prompt: str, chat: bool) -> list[int]:
        """Token ids of `prompt`, as one user turn of the chat template when `chat`."""
        if chat:
            if not self.tokenizer.chat_template:
                raise CheckpointError(
                    "--chat needs a chat template, and this checkpoint's tokenizer has none"
                )
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    def _mesh(self, shape: MeshShape) -> jax.sharding.Mesh | None:
        return make_mesh(shape, jax.devices()) if shape.size > 1 else None

    def shape_only(
        self,
        shape: MeshShape,
        dtype: str,
        prefill_chunk: int = PREFILL_CHUNK,
        kernels: Kernels = PLAIN,
    ) -> Generator:
        """A generator with shape-only weights: it compiles its steps and reports their memory
        before anything is loaded; `load` reuses what it compiled.
        """
        mesh = self._mesh(shape)
        model = abstract_model(self.cfg, getattr(jnp, dtype), mesh, kernels)
        ids = (self.eos_token_ids, self.pad_token_id)
        return Generator(model, *ids, mesh, prefill_chunk)

    def load(
        self,
        shape: MeshShape,
        dtype: str,
        shape_only: Generator | None = None,
        kernels: Kernels = PLAIN,
    ) -> Generator:
        """The weights in `dtype` on `shape` (1x1: one device), computing with `kernels`; with
        `shape_only` (a generator of the same shapes) its kernels, chunk and compiled steps.
        """
        mesh = self._mesh(shape)
        if shape_only is not None:
            kernels = shape_only.model.kernels
        options = {"mesh": mesh, "kernels": kernels, "progress": True}
        model = load_model(self.path, getattr(jnp, dtype), **options)
        ids = (self.eos_token_ids, self.pad_token_id)
        if shape_only is None:
            return Generator(model, *ids, mesh)
        steps = {"steps": shape_only.steps}
        return Generator(model, *ids, mesh, shape_only.prefill_chunk, **steps)
