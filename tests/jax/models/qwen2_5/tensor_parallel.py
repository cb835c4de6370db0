# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Tensor parallelism over the `model` mesh axis, for any head count on any axis.

Megatron layout (see partitioning.LOGICAL_RULES): q/k/v and gate/up are column-parallel,
o_proj and down_proj row-parallel, embedding and lm_head vocab-parallel. Each device must
hold whole query heads *and* the KV head those queries read, so attention needs no
communication. Qwen2.5-7B has 28 query heads in 4 GQA groups of 7; 28 does not divide 8 or 32.
SmolLM2 has 9 query heads in 3 groups of 3; 3 divides none of 4, 8 and 32. So, per mesh:

- KV heads: padded with empty groups to a count the axis serves (a divisor of the axis, or a
  multiple of it): 3 -> 4 on 4, 8 or 32 devices; 7B's 4 need none. An empty group's KV head
  has zero k/v weights and bias, and its query heads are all pad heads.
- KV heads are then split when the axis divides their count; when the axis is larger, each
  is replicated r = axis / KV heads times, so every device holds exactly one.
- Query heads: each GQA group is padded with all-zero heads to a multiple of r (7 -> 8 for
  7B on 8 or 32 devices), *inside the group*. The pad heads get zero q weights and bias, and
  zero rows in o_proj, so whatever they attend to is multiplied by zero: the result is the
  unpadded model's, up to float summation order.

Of the layouts a count allows, split_heads takes the one with the fewest query heads, then
the fewest stored KV heads; a count the axis already serves is never padded with groups
(padding more KV heads can only add query heads). Padding at the end instead (28 -> 32 as
heads 28..31) would be wrong: attention maps query head h to KV head h // (heads per KV
head), and with 8 instead of 7 per group every real head from the second group on would read
the wrong KV head (test_tensor_parallel shows it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from tests.jax.infra.compat import value_of
from tests.jax.infra.devices import golden_device
from tests.jax.infra.mesh import MODEL_AXIS
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import PLAIN, Kernels, Qwen2ForCausalLM
from tests.jax.models.qwen2_5.partitioning import logical_to_spec


class TensorParallelError(ValueError):
    """A model that this mesh's `model` axis cannot split exactly."""


@dataclass(frozen=True)
class HeadSplit:
    """How query and KV heads are laid out over a `model` axis of size `model_axis`."""

    num_heads: int
    num_kv_heads: int
    model_axis: int
    padded_kv_heads: (
        int  # KV heads after empty groups are added (num_kv_heads when none are)
    )
    kv_replicas: int  # copies of each KV head (1 when the axis divides the KV heads)
    padded_group: int  # query heads per KV head after padding

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def padded_heads(self) -> int:
        return self.padded_kv_heads * self.padded_group

    @property
    def stored_kv_heads(self) -> int:
        return self.padded_kv_heads * self.kv_replicas

    @property
    def pad_heads(self) -> int:
        return self.padded_heads - self.num_heads

    @property
    def query_heads_per_device(self) -> int:
        return self.padded_heads // self.model_axis

    @property
    def kv_heads_per_device(self) -> int:
        return self.stored_kv_heads // self.model_axis

    def query_sources(self) -> np.ndarray:
        """For each padded query head, the original head it holds, or -1 for a zero pad head."""
        slot = np.arange(self.padded_group)
        per_group = [
            np.where(
                (slot < self.group) & (k < self.num_kv_heads), k * self.group + slot, -1
            )
            for k in range(self.padded_kv_heads)
        ]
        return np.concatenate(per_group)

    def kv_sources(self) -> np.ndarray:
        """For each stored KV head, the original KV head it replicates, or -1 for an empty group's."""
        heads = np.arange(self.padded_kv_heads)
        real = np.where(heads < self.num_kv_heads, heads, -1)
        return np.repeat(real, self.kv_replicas)


def _layout(num_heads: int, num_kv_heads: int, model_axis: int, kv: int) -> HeadSplit:
    """The split with `kv` KV heads (>= num_kv_heads, a divisor or a multiple of the axis)."""
    replicas = max(1, model_axis // kv)
    padded_group = -(-num_heads // num_kv_heads // replicas) * replicas
    return HeadSplit(num_heads, num_kv_heads, model_axis, kv, replicas, padded_group)


def split_heads(num_heads: int, num_kv_heads: int, model_axis: int) -> HeadSplit:
    """The head layout for `model_axis` devices with the least padding (module docstring).

    Candidates: every divisor of the axis at least num_kv_heads (replicated), and the first
    multiple of the axis at least num_kv_heads (split; larger multiples only add empty groups).
    """
    divisors = [d for d in range(num_kv_heads, model_axis + 1) if model_axis % d == 0]
    multiple = -(-num_kv_heads // model_axis) * model_axis
    layouts = [
        _layout(num_heads, num_kv_heads, model_axis, kv) for kv in {*divisors, multiple}
    ]
    return min(
        layouts, key=lambda s: (s.padded_heads, s.stored_kv_heads, s.padded_kv_heads)
    )


def tensor_parallel_config(
    cfg: Qwen2Config, model_axis: int
) -> tuple[Qwen2Config, HeadSplit]:
    """The config of the padded model for `model_axis`, and its head split."""
    split = split_heads(cfg.num_heads, cfg.num_kv_heads, model_axis)
    for name in ("intermediate_size", "vocab_size"):
        if getattr(cfg, name) % model_axis:
            raise TensorParallelError(
                f"{name} {getattr(cfg, name)} is not divisible by the model axis {model_axis}: choose a model axis "
                f"that divides it"
            )
    return (
        cfg.replace(num_heads=split.padded_heads, num_kv_heads=split.stored_kv_heads),
        split,
    )


# Reads a region (a tuple of slices, in this package's layout) of an unpadded parameter.
RegionReader = Callable[[tuple[slice, ...]], np.ndarray]
# Opens one unpadded parameter, by path, for region reads while its shards are built.
ParamSource = Callable[[tuple], AbstractContextManager[RegionReader]]


def head_axis(path: tuple, split: HeadSplit) -> tuple[int, np.ndarray] | None:
    """For a parameter whose heads `split` rearranges: the head axis and, per padded head, the
    original head it holds (-1: zeros). None for every other parameter. Weights are (out, in):
    q/k/v hold heads on their output axis (as do their biases), o_proj on its input axis.
    """
    module, leaf = str(path[-2]), str(path[-1])
    if module == "q_proj":
        return 0, split.query_sources()
    if module in ("k_proj", "v_proj"):
        return 0, split.kv_sources()
    if module == "o_proj" and leaf == "weight":
        return 1, split.query_sources()
    return None


def padded_region(
    read: RegionReader,
    index: tuple[slice, ...],
    shape: tuple[int, ...],
    heads: tuple[int, np.ndarray] | None,
    head_dim: int,
    dtype: jnp.dtype,
) -> np.ndarray:
    """Region `index` of the padded parameter of `shape`, assembled from reads of the unpadded one.

    Only the region is ever materialized: one device's shard, never the whole tensor.
    """
    if heads is None:
        return read(index)
    axis, sources = heads
    extent = [
        len(range(*sl.indices(dim))) for sl, dim in zip(index, shape, strict=True)
    ]
    start, stop, _ = index[axis].indices(shape[axis])
    pieces = []
    for head in range(start // head_dim, -(-stop // head_dim)):
        lo, hi = (
            max(start, head * head_dim) - head * head_dim,
            min(stop, (head + 1) * head_dim) - head * head_dim,
        )
        if sources[head] < 0:
            pieces.append(
                np.zeros(
                    [hi - lo if i == axis else n for i, n in enumerate(extent)], dtype
                )
            )
        else:
            part = list(index)
            part[axis] = slice(
                sources[head] * head_dim + lo, sources[head] * head_dim + hi
            )
            pieces.append(read(tuple(part)))
    return np.concatenate(pieces, axis=axis)


def param_sharding(variable: nnx.Variable, mesh: Mesh) -> NamedSharding:
    """Where a parameter lives on `mesh`, from its logical axes."""
    return NamedSharding(mesh, logical_to_spec(variable.get_metadata()["axes"]))


def build_model(
    cfg: Qwen2Config,
    dtype: jnp.dtype,
    split: HeadSplit,
    source: ParamSource,
    placement: Callable[[nnx.Variable], jax.sharding.Sharding],
    *,
    kernels: Kernels = PLAIN,
    progress: bool = False,
) -> Qwen2ForCausalLM:
    """The model of `cfg` laid out by `split`, each weight built shard by shard where `placement`
    puts it, from region reads of the unpadded weight that `source(path)` opens.

    Every device's shard is read by the process that owns the device (make_array_from_callback),
    so no process materializes a tensor, or a padded copy, that it does not hold; a source is
    open only while its own weight is built.
    """
    tp_cfg = cfg.replace(
        num_heads=split.padded_heads, num_kv_heads=split.stored_kv_heads
    )
    graphdef, abstract = nnx.split(model_shapes(tp_cfg, kernels, dtype))
    flat = list(nnx.to_flat_state(abstract))
    built = []
    for path, variable in tqdm(
        flat, desc="loading weights", unit="tensor", disable=not progress
    ):
        shape, heads = tuple(value_of(variable).shape), head_axis(path, split)
        with source(path) as read:

            def region(
                index: tuple[slice, ...], shape=shape, heads=heads, read=read
            ) -> np.ndarray:
                return padded_region(read, index, shape, heads, cfg.head_dim, dtype)

            array = jax.make_array_from_callback(shape, placement(variable), region)
        built.append((path, variable.replace(array)))
    return nnx.merge(graphdef, nnx.from_flat_state(built))


def in_memory_source(model: Qwen2ForCausalLM) -> ParamSource:
    """Region reads of an in-memory model's (unpadded) parameters."""
    values = dict(nnx.to_flat_state(nnx.state(model)))
    return lambda path: nullcontext(
        lambda index: np.asarray(value_of(values[path])[index])
    )


@functools.lru_cache(maxsize=32)
def model_shapes(
    cfg: Qwen2Config, kernels: Kernels = PLAIN, dtype: jnp.dtype = jnp.float32
) -> Qwen2ForCausalLM:
    """The model of `cfg` with shape-only weights, nowhere yet. Tracing a model's construction
    takes seconds at 30 layers, and every load and shard needs one; none is mutated (split and
    merge build new modules), so one per config, kernels and dtype serves them all."""
    return nnx.eval_shape(
        lambda: Qwen2ForCausalLM(cfg, kernels=kernels, dtype=dtype, rngs=nnx.Rngs(0))
    )


def pad_model(model: Qwen2ForCausalLM, split: HeadSplit) -> Qwen2ForCausalLM:
    """`model` with its heads laid out by `split` (padded queries, replicated KV heads), on one device."""
    device = jax.sharding.SingleDeviceSharding(golden_device())
    dtype = model.model.norm.weight.dtype
    source, kernels = in_memory_source(model), model.kernels
    return build_model(
        model.cfg, dtype, split, source, lambda variable: device, kernels=kernels
    )


def shard_model(
    model: Qwen2ForCausalLM, mesh: Mesh, kernels: Kernels | None = None
) -> Qwen2ForCausalLM:
    """The padded, tensor-parallel copy of an in-memory `model`, every weight placed on `mesh`,
    computing with `kernels` (default: the model's own)."""
    _, split = tensor_parallel_config(model.cfg, mesh.shape[MODEL_AXIS])
    dtype = model.model.norm.weight.dtype
    return build_model(
        model.cfg,
        dtype,
        split,
        in_memory_source(model),
        lambda v: param_sharding(v, mesh),
        kernels=model.kernels if kernels is None else kernels,
    )


def abstract_model(
    cfg: Qwen2Config, dtype: jnp.dtype, mesh: Mesh | None, kernels: Kernels = PLAIN
) -> Qwen2ForCausalLM:
    """The model of `cfg` with shape-only weights (ShapeDtypeStructs) placed where loading it would
    put them: padded and sharded over `mesh`, or on the golden device. Enough to lower and compile
    (and to read a compiled step's memory) before any weight is read."""
    tp_cfg, _ = tensor_parallel_config(
        cfg, 1 if mesh is None else mesh.shape[MODEL_AXIS]
    )
    graphdef, abstract = nnx.split(model_shapes(tp_cfg, kernels, dtype))
    device = jax.sharding.SingleDeviceSharding(golden_device())
    shaped = [
        (
            path,
            variable.replace(
                jax.ShapeDtypeStruct(
                    value_of(variable).shape,
                    dtype,
                    sharding=device if mesh is None else param_sharding(variable, mesh),
                )
            ),
        )
        for path, variable in nnx.to_flat_state(abstract)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(shaped))


# All-reduces per piece of the model under this layout, on a model axis > 1: one per row-parallel
# product (its partial sums) and one for the embedding lookup (each device contributes the rows it
# owns). Column-parallel and vocab-parallel outputs stay split and need none; no weight is gathered.
ALL_REDUCES = {
    "column_parallel": 0,
    "row_parallel": 1,
    "embedding": 1,
    "attention": 1,
    "decoder_layer": 2,
}


def forward_all_reduces(cfg: Qwen2Config) -> int:
    """The whole forward: two per layer (attention, MLP) and one for the embedding."""
    return ALL_REDUCES["decoder_layer"] * cfg.num_layers + ALL_REDUCES["embedding"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(B, T) inputs: rows split over `batch`, replicated over `model`."""
    return NamedSharding(mesh, P("batch", None))
