# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A GSM8K run as the command line asks for it (`Settings`), and the run checked before anything
heavy (`prepare` -> `Job`): data, output, mesh, checkpoint, context, in that order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.jax.infra.mesh import MeshShape
from tests.jax.infra.runs import ResultStore
from tests.jax.models.qwen2_5.audit import RULE
from tests.jax.models.qwen2_5.gsm8k_task import (
    FEWSHOT_SEED,
    STOP_SEQUENCES,
    DataError,
    Problem,
    build_prompt,
    fewshot_exemplars,
    load_split,
)
from tests.jax.models.qwen2_5.model import Kernels
from tests.jax.models.qwen2_5.pipeline import (
    Checkpoint,
    configure_for,
    resolve_model_path,
    run_kernels,
)
from tests.jax.models.qwen2_5.tensor_parallel import tensor_parallel_config


@dataclass(frozen=True)
class Settings:
    """One GSM8K run as the command line asked for it, checked."""

    model_path: Path | None
    mesh: str
    dtype: str
    chat: bool
    max_new_tokens: int
    compare_single_device: bool
    cpu_kernels: bool
    limit: int | None
    num_fewshot: int
    data_file: Path | None
    fewshot_file: Path | None
    output: Path | None
    batch_size: int
    prefill_chunk: int
    memory_budget: float | None

    def __post_init__(self) -> None:
        for name in ("limit", "batch_size", "max_new_tokens", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.num_fewshot < 0:
            raise DataError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.memory_budget is not None and not self.memory_budget > 0:
            raise DataError(
                f"--memory-budget must be a positive number of GiB, got {self.memory_budget}"
            )

    @property
    def exemplars_file(self) -> Path | None:
        """--fewshot-file, else train.jsonl beside --data-file, else None (the hub)."""
        if self.fewshot_file is None and self.data_file is not None:
            return self.data_file.parent / "train.jsonl"
        return self.fewshot_file

    def memory_fixes(self) -> str:
        fixes = f"lower --batch-size (now {self.batch_size}) or --prefill-chunk (now {self.prefill_chunk})"
        return fixes + (
            ", or run without --compare-single-device"
            if self.compare_single_device
            else ""
        )


def load_problems(settings: Settings) -> tuple[list[Problem], list[str]]:
    """The test problems (the first --limit) and their prompts with their exemplars."""
    problems = load_split("test", settings.data_file)[: settings.limit]
    if not problems:
        raise DataError(f"{settings.data_file or 'the test split'} holds no problems")
    train = load_split("train", settings.exemplars_file) if settings.num_fewshot else []
    exemplars = fewshot_exemplars(train, len(problems), settings.num_fewshot)
    return problems, [
        build_prompt(p, ex) for p, ex in zip(problems, exemplars, strict=True)
    ]


def check_context(
    token_ids: Sequence[list[int]], max_new_tokens: int, context: int
) -> None:
    """Every prompt and its new tokens fit the model's context, or one error naming the worst."""
    too_long = [
        i for i, ids in enumerate(token_ids) if len(ids) + max_new_tokens > context
    ]
    if too_long:
        worst = max(too_long, key=lambda i: len(token_ids[i]))
        raise DataError(
            f"{len(too_long)} of {len(token_ids)} prompts do not fit the model's context of {context:,} tokens with "
            f"--max-new-tokens {max_new_tokens} (problem {worst}: {len(token_ids[worst]):,} prompt tokens): "
            "lower --num-fewshot or --max-new-tokens"
        )


@dataclass(frozen=True)
class Job:
    """A checked run: everything it needs but the weights."""

    settings: Settings
    mesh: MeshShape
    checkpoint: Checkpoint
    problems: list[Problem]
    prompts: list[str]
    token_ids: list[list[int]]
    kernels: Kernels

    @property
    def meshes(self) -> list[MeshShape]:
        """The mesh, then one device when compared."""
        return [self.mesh] + (
            [MeshShape(1, 1)] if self.settings.compare_single_device else []
        )

    def record_settings(self) -> dict:
        """What a resumed run must share with the one it resumes."""
        s = self.settings
        return {
            "model_path": str(self.checkpoint.path),
            "mesh": self.mesh.name,
            "dtype": s.dtype,
            "num_fewshot": s.num_fewshot,
            "fewshot_seed": FEWSHOT_SEED,
            "chat": s.chat,
            "limit": len(self.problems),
            "prompts_sha256": hashlib.sha256(
                "\0".join(self.prompts).encode()
            ).hexdigest(),
            "max_new_tokens": s.max_new_tokens,
            "stop_sequences": list(STOP_SEQUENCES),
            "batch_size": s.batch_size,
            "prefill_chunk": s.prefill_chunk,
            "compare_single_device": s.compare_single_device,
            # A resumed comparison audits with the rule its finished problems were audited by.
            "audit_rule": RULE if s.compare_single_device else None,
            "cpu_kernels": s.cpu_kernels,
        }


def prepare(settings: Settings) -> Job:
    """Data, mesh, checkpoint and context checked, in that order, before anything heavy."""
    problems, prompts = load_problems(settings)
    ResultStore.check_writable(settings.output)
    mesh = configure_for(settings.mesh)
    kernels = run_kernels(settings.cpu_kernels)
    if settings.compare_single_device and mesh.size == 1:
        raise DataError(
            "--compare-single-device compares a mesh with one device: choose a --mesh like 1x8"
        )
    checkpoint = Checkpoint.open(resolve_model_path(settings.model_path))
    # a mesh that cannot split this model fails here
    tensor_parallel_config(checkpoint.cfg, mesh.model)
    token_ids = [checkpoint.encode(p, settings.chat) for p in prompts]
    check_context(
        token_ids, settings.max_new_tokens, checkpoint.cfg.max_position_embeddings
    )
    return Job(settings, mesh, checkpoint, problems, prompts, token_ids, kernels)
