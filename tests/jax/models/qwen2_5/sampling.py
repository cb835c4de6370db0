# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Choosing the next token: greedy or sampled, and the record of the logits that chose it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from tests.jax.models.qwen2_5.batching import GenerationError
from tests.jax.models.qwen2_5.partitioning import LOGICAL_RULES, constrain, row_axis

# Logits every step records with the token it chose (the audit judges a divergence by them):
# B x 8 values and ids per step, so a long run keeps them all.
TOP_K = 8


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(
                f"temperature must be a finite number >= 0, got {self.temperature}"
            )
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise GenerationError(
                f"seed must be an integer in [0, 2**63), got {self.seed}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def params(self) -> SamplingParams:
        """The settings a compiled step reads (a greedy step ignores them)."""
        return SamplingParams(
            jnp.float32(self.temperature or 1.0),
            jnp.int32(self.top_k),
            jnp.float32(self.top_p),
        )


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings as a compiled step's argument: scalars, so one program serves every value."""

    temperature: jax.Array  # float32, > 0
    top_k: jax.Array  # int32, 0 is off
    top_p: jax.Array  # float32, 1.0 is off

    @staticmethod
    def abstract() -> SamplingParams:
        f32, i32 = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct(
            (), jnp.int32
        )
        return SamplingParams(f32, i32, f32)


def row_keys(key: jax.Array, draws: jax.Array) -> jax.Array:
    """The seed's key and each row's (B, 2) int32 draw [prompt index, token index] -> (B,) keys.
    A token's random bits depend on its prompt and its place in the completion only, not on the
    row or the batch it runs in, so a sampled completion does not depend on the schedule.
    """

    def fold(draw: jax.Array) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(key, draw[0]), draw[1])

    return jax.vmap(fold)(draws)


def draws(prompts: Sequence[int], tokens: Sequence[int], batch: int) -> np.ndarray:
    """The (batch, 2) int32 draws of a step (row_keys): row r draws token `tokens[r]` of prompt
    `prompts[r]`; rows past them (padding, whose tokens are dropped) draw as row 0."""
    rows = np.zeros((batch, 2), np.int32)
    rows[: len(prompts), 0], rows[: len(tokens), 1] = prompts, tokens
    rows[len(prompts) :] = rows[0]
    return rows


def sample(logits: jax.Array, keys: jax.Array, params: SamplingParams) -> jax.Array:
    """(B, V) float32 logits and (B,) keys -> (B,) token ids: temperature, then top-k, then top-p,
    as Hugging Face."""
    logits = logits / params.temperature
    ordered = -jnp.sort(-logits, axis=-1)  # (B, V), descending
    vocab = logits.shape[-1]
    kth = jnp.take(ordered, jnp.clip(params.top_k - 1, 0, vocab - 1), axis=-1)[:, None]
    ordered = jnp.where((params.top_k > 0) & (ordered < kth), -jnp.inf, ordered)
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
    keep = ((jnp.cumsum(probs, axis=-1) - probs) < params.top_p) & jnp.isfinite(ordered)
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    allowed = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, allowed).astype(jnp.int32)


def top_logits(
    logits: jax.Array, k: int = TOP_K, vocab_split: bool = True
) -> jax.Array:
    """(B, V) float32 logits -> (B, k, 2): the k largest values ([..., 0]) and their token ids
    ([..., 1], exact in float32 below 2**24), descending, equal values in id order (as argmax).

    Under a mesh, logits split over `model` by vocabulary (`vocab_split`): each device takes the
    top k of its own slice and one all-gather of B x model-axis x k pairs brings them together, so
    no logit leaves its device. Each device computes its own rows: XLA's partitioner would gather
    the whole (B, V) to sort it."""

    def best(values: jax.Array, ids: jax.Array) -> jax.Array:
        top, where = jax.lax.top_k(values, k)  # stable: the first of equal values wins
        return jnp.stack(
            [top, jnp.take_along_axis(ids, where, axis=-1).astype(jnp.float32)], axis=-1
        )

    if logits.shape[-1] >= 2**24:
        raise GenerationError(
            f"a vocabulary of {logits.shape[-1]} ids is not exact in float32"
        )
    mesh = jax.sharding.get_abstract_mesh()
    vocab_axis = LOGICAL_RULES["vocab"] if vocab_split else None

    def per_device(x: jax.Array) -> jax.Array:  # (b, V / model) -> (b, k, 2)
        offset = (
            0 if vocab_axis is None else jax.lax.axis_index(vocab_axis) * x.shape[-1]
        )
        local = best(x, jnp.broadcast_to(jnp.arange(x.shape[-1]) + offset, x.shape))
        if vocab_axis is None:
            return local
        # In device order, so equal values still come in id order.
        # (b, model * k, 2)
        candidates = jax.lax.all_gather(local, vocab_axis, axis=1, tiled=True)
        return best(candidates[..., 0], candidates[..., 1])

    if mesh.empty:
        return best(
            logits, jnp.broadcast_to(jnp.arange(logits.shape[-1]), logits.shape)
        )
    batch = row_axis(logits.shape[0])
    # The candidates are the same on every device of a `model` group, so is their best k (a
    # replication shard_map cannot infer through top_k).
    spec = {
        "in_specs": P(batch, vocab_axis),
        "out_specs": P(batch, None, None),
        "check_vma": False,
    }
    return jax.shard_map(per_device, **spec)(logits)


def next_token(
    logits: jax.Array, greedy: bool, keys: jax.Array | None, params: SamplingParams
) -> tuple[jax.Array, jax.Array]:
    """(B, V) logits of the model dtype, split over `model` by vocabulary, and (B,) keys (row_keys;
    None when greedy) -> (B,) int32 tokens and the step's record (B, TOP_K, 2) (top_logits), both on every device.

    Greedy: the record's first id. Sampling sorts the whole distribution, so the logits are
    gathered over `model` first (one all-gather of B x V): a sort over a split axis would be
    partitioned into many collectives that differ between compilers. With a split batch, the
    record (and a sampled step's tokens) are then gathered over `batch`.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        record = constrain(top_logits(logits), (None, None, None))
        return record[:, 0, 1].astype(jnp.int32), record
    logits = constrain(logits, ("batch", None))
    tokens, record = sample(logits, keys, params), top_logits(logits, vocab_split=False)
    # Every device (and so every process) can read all the chosen tokens.
    return constrain(tokens, (None,)), constrain(record, (None, None, None))


GREEDY = SamplingConfig()
