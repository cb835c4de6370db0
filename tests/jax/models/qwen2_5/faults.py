# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Deliberately wrong tensor-parallel models, for the tests that must catch them.

Each fault of `CATALOG` turns a single-device model into a mesh model that is wrong in one way:
two gross layouts (query heads reading the wrong KV head) and five subtle faults of the kind a
compiler or a sharding rule can introduce, each confined to the mesh, most to one device or to
the decode path alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tests.jax.infra.mesh import MODEL_AXIS
from tests.jax.models.qwen2_5.model import (
    Qwen2ForCausalLM,
    Qwen2Model,
    grouped_attention,
    write_rows,
)
from tests.jax.models.qwen2_5.tensor_parallel import (
    HeadSplit,
    build_model,
    in_memory_source,
    param_sharding,
    shard_model,
    tensor_parallel_config,
)


@dataclass(frozen=True)
class AppendedPadding(HeadSplit):
    """Pad heads appended after the real ones (28 -> 32 as heads 28..31) instead of inside each
    GQA group: from the second group on, every real query head reads the wrong KV head.
    """

    def query_sources(self) -> np.ndarray:
        return np.concatenate([np.arange(self.num_heads), np.full(self.pad_heads, -1)])


@dataclass(frozen=True)
class ShiftedKVHeads(HeadSplit):
    """Every stored KV head holds the next group's keys and values: each query head reads a KV
    head of another group."""

    def kv_sources(self) -> np.ndarray:
        return np.roll(super().kv_sources(), -self.kv_replicas)


def shard_with_fault(
    model: Qwen2ForCausalLM, mesh: Mesh, fault: type[HeadSplit]
) -> Qwen2ForCausalLM:
    """`shard_model(model, mesh)`, but laid out by the faulty head split `fault`."""
    _, split = tensor_parallel_config(model.cfg, mesh.shape[MODEL_AXIS])
    dtype = model.model.norm.weight.dtype
    placement = lambda variable: param_sharding(variable, mesh)  # noqa: E731
    source, kernels = in_memory_source(model), model.kernels
    layout = fault(**vars(split))
    return build_model(model.cfg, dtype, layout, source, placement, kernels=kernels)


def late_on_the_first_device(
    cache: jax.Array, new: jax.Array, slots: jax.Array
) -> jax.Array:
    """A decode step's per-row write (Kernels.row_write) with the first device's KV head written
    one slot late (the token at step s lands in slot s + 1): that device attends to an empty slot
    and never to the token itself."""
    right, late = write_rows(cache, new, slots), write_rows(cache, new, slots + 1)
    # KV heads (axis 1) are split over `model`: head 0 is the first device's.
    first_device = (jnp.arange(cache.shape[1]) == 0)[None, :, None, None]
    return jnp.where(first_device, late, right)


def bfloat16_softmax(scores: jax.Array, bias: jax.Array) -> jax.Array:
    """The attention softmax computed in bfloat16 instead of float32: the sums of exponentials
    round at every step. The mask's bias is float32's most negative finite value, beyond bfloat16's
    range: clipped to bfloat16's, it stays finite as the model keeps it (a pad query sees uniform
    weights, not NaN), so the fault is the rounding alone."""
    hidden = jnp.finfo(jnp.bfloat16).min
    low = scores.astype(jnp.bfloat16) + jnp.maximum(bias, hidden).astype(jnp.bfloat16)
    return jax.nn.softmax(low, axis=-1).astype(scores.dtype)


def attention_with_bfloat16_softmax(q, k, v, bias, scale, causal=False) -> jax.Array:
    """Kernels.attention with `bfloat16_softmax`."""
    softmax = bfloat16_softmax
    return grouped_attention(
        q, k, v, bias, scale=scale, is_causal=False, softmax=softmax, causal=causal
    )


class DecodePositionOffByOne(Qwen2Model):
    """Decode steps (one token per row) rotate their token one position too far; prefill is right."""

    def __call__(self, input_ids, positions, key_valid, cache=None, start=0):
        shifted = positions + 1 if input_ids.shape[1] == 1 else positions
        return super().__call__(
            input_ids, positions=shifted, key_valid=key_valid, cache=cache, start=start
        )


def _with_kernels(model: Qwen2ForCausalLM, mesh: Mesh, **faulty) -> Qwen2ForCausalLM:
    """shard_model, computing with the model's kernels but for `faulty` ones."""
    return shard_model(model, mesh, dataclasses.replace(model.kernels, **faulty))


def _drop_q_bias_on_one_device(
    model: Qwen2ForCausalLM, layer: int = 1
) -> Qwen2ForCausalLM:
    """One layer's q_proj bias zeroed in the first device's slice (its query heads only)."""
    bias = model.model.layers[layer].self_attn.q_proj.bias
    share = bias.shape[0] // bias[...].sharding.mesh.shape[MODEL_AXIS]
    bias[...] = jax.jit(
        lambda b: b.at[:share].set(0), out_shardings=bias[...].sharding
    )(bias[...])
    return model


def _change_norm_eps(model: Qwen2ForCausalLM, eps: float = 1e-4) -> Qwen2ForCausalLM:
    """Every RMSNorm's epsilon 1e-4 instead of 1e-6."""
    norms = [model.model.norm]
    for layer in model.model.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    for norm in norms:
        norm.eps = eps
    return model


def _decode_position_off_by_one(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    model.model.__class__ = DecodePositionOffByOne
    return model


# Faults that change only weights: their mesh model runs the correct mesh model's compiled programs.
WEIGHTS_ONLY = ("appended_padding", "shifted_kv_heads", "q_bias_dropped_on_one_device")
# name -> (single-device model, mesh) -> the faulty mesh model.
Fault = Callable[[Qwen2ForCausalLM, Mesh], Qwen2ForCausalLM]
CATALOG: dict[str, Fault] = {
    "appended_padding": lambda model, mesh: shard_with_fault(
        model, mesh, AppendedPadding
    ),
    "shifted_kv_heads": lambda model, mesh: shard_with_fault(
        model, mesh, ShiftedKVHeads
    ),
    "decode_position_off_by_one": lambda model, mesh: _decode_position_off_by_one(
        shard_model(model, mesh)
    ),
    "late_cache_slot_on_one_device": lambda model, mesh: _with_kernels(
        model, mesh, row_write=late_on_the_first_device
    ),
    "q_bias_dropped_on_one_device": lambda model, mesh: _drop_q_bias_on_one_device(
        shard_model(model, mesh)
    ),
    "bfloat16_softmax": lambda model, mesh: _with_kernels(
        model, mesh, attention=attention_with_bfloat16_softmax
    ),
    "rms_norm_eps_changed": lambda model, mesh: _change_norm_eps(
        shard_model(model, mesh)
    ),
}
