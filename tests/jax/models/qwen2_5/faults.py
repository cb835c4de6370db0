"""Deliberately wrong tensor-parallel layouts, for the tests that must catch them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jax.sharding import Mesh

from tests.infra.mesh import MODEL_AXIS
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.tensor_parallel import (
    HeadPlan,
    build_model,
    in_memory_source,
    param_sharding,
    tensor_parallel_config,
)


@dataclass(frozen=True)
class AppendedPadding(HeadPlan):
    """Pad heads appended after the real ones (28 -> 32 as heads 28..31) instead of inside each
    GQA group: from the second group on, every real query head reads the wrong KV head."""

    def query_sources(self) -> np.ndarray:
        return np.concatenate([np.arange(self.num_heads), np.full(self.pad_heads, -1)])


@dataclass(frozen=True)
class ShiftedKVHeads(HeadPlan):
    """Every stored KV head holds the next group's keys and values: each query head reads a KV
    head of another group."""

    def kv_sources(self) -> np.ndarray:
        return np.roll(super().kv_sources(), -self.kv_replicas)


def shard_with_fault(model: Qwen2ForCausalLM, mesh: Mesh, fault: type[HeadPlan]) -> Qwen2ForCausalLM:
    """`shard_model(model, mesh)`, but laid out by the faulty head plan `fault`."""
    _, plan = tensor_parallel_config(model.cfg, mesh.shape[MODEL_AXIS])
    dtype = model.model.norm.weight.dtype
    placement = lambda variable: param_sharding(variable, mesh)  # noqa: E731
    return build_model(model.cfg, dtype, fault(**vars(plan)), in_memory_source(model), placement)
