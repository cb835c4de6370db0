# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Inputs and jittable workloads for the model's tests: left-padded batches, module calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import nnx

from tests.infra.equivalence import JitWorkload
from tests.jax.models.qwen2_5.model import positions_from_mask


def module_workload(
    module: nnx.Module, *inputs, output: Callable[[Any], Any] = lambda out: out
) -> JitWorkload:
    """`output(module(*inputs))` as a workload whose arguments are the module's weights and the inputs."""
    graphdef, state = nnx.split(module)
    return JitWorkload(
        lambda state, *xs: output(nnx.merge(graphdef, state)(*xs)), (state, *inputs)
    )


def hidden_only(out: tuple) -> Any:
    """Of an attention or decoder layer's (hidden, keys/values), the hidden states."""
    return out[0]


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
