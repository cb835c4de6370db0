# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Inputs and jittable workloads for the model's tests: left-padded batches, module calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.jax.infra.equivalence import JitWorkload
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import (
    attention_bias,
    attention_mask,
    positions_from_mask,
    rope_cos_sin,
)


def module_workload(
    module: nnx.Module, *inputs, output: Callable[[Any], Any] = lambda out: out
) -> JitWorkload:
    """`output(module(*inputs))` as a workload whose arguments are the module's weights and the inputs."""
    graphdef, state = nnx.split(module)
    return JitWorkload(
        lambda state, *xs: output(nnx.merge(graphdef, state)(*xs)), (state, *inputs)
    )


def placed_like(module: nnx.Module, mesh: Mesh, *input_specs: P) -> tuple:
    """Argument shardings: the module's weights where they already live, inputs by `input_specs`."""
    state_shardings = jax.tree.map(lambda x: x.sharding, nnx.state(module))
    return (state_shardings, *(NamedSharding(mesh, spec) for spec in input_specs))


def hidden_rows(batch: int, seq: int) -> Callable[[tuple], Any]:
    """Of a layer's (tokens (N, D), keys/values), the tokens as (B, T, D)."""
    return lambda out: out[0].reshape(batch, seq, -1)


@dataclass(frozen=True)
class Batch:
    """A left-padded batch: ids, key validity and positions, all (B, T)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.attention_mask.astype(bool)


def left_padded_batch(
    vocab_size: int, lengths: list[int], seq_len: int, *, seed: int = 0, pad_id: int = 0
) -> Batch:
    """Random prompts of `lengths`, left-padded to `seq_len`, positions counted from each first real token."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), seq_len), pad_id, np.int32)
    mask = np.zeros((len(lengths), seq_len), np.int32)
    for row, length in enumerate(lengths):
        ids[row, seq_len - length :] = rng.integers(0, vocab_size, length)
        mask[row, seq_len - length :] = 1
    positions = np.asarray(positions_from_mask(mask))
    return Batch(ids, mask, positions)


def layer_inputs(
    cfg: Qwen2Config, x: np.ndarray, batch: Batch, dtype: jnp.dtype
) -> tuple[np.ndarray, ...]:
    """What an attention or decoder layer takes for activations x (B, T, D) of `batch`: the tokens
    (N, D), cos and sin (B, 1, T, H) of `dtype`, the attention bias (B, 1, T, T), as Qwen2Model
    hands them over."""
    seq = x.shape[1]
    angles = rope_cos_sin(jnp.asarray(batch.positions), cfg.head_dim, cfg.rope_theta)
    cos, sin = (np.asarray(t.astype(dtype)[:, None]) for t in angles)
    visible = attention_mask(jnp.asarray(batch.attention_mask), 0, seq)
    return (
        x.reshape(-1, x.shape[-1]),
        cos,
        sin,
        np.asarray(attention_bias(visible, dtype)),
    )
