"""Tensor parallelism over the `model` mesh axis, including head counts it does not divide.

Megatron layout (see partitioning.LOGICAL_RULES): q/k/v and gate/up are column-parallel,
o_proj and down_proj row-parallel, embedding and lm_head vocab-parallel. Each device must
hold whole query heads *and* the KV head those queries read. Qwen2.5-7B has 28 query heads
in 4 GQA groups of 7; 28 does not divide 8 or 32. So, per mesh:

- KV heads: split when the model axis divides their count; when the axis is larger, each KV
  head is replicated r = axis / kv_heads times, so every device holds exactly one.
- Query heads: each GQA group is padded with all-zero heads to a multiple of r (7 -> 8 for
  7B on 8 or 32 devices), *inside the group*. The pad heads get zero q weights and bias, and
  zero rows in o_proj, so whatever they attend to is multiplied by zero: the result is the
  unpadded model's, up to float summation order.

Padding at the end instead (28 -> 32 as heads 28..31) would be wrong: attention maps query
head h to KV head h // (heads per KV head), and with 8 instead of 7 per group every real
head from the second group on would read the wrong KV head (test_tensor_parallel shows it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.mesh import MODEL_AXIS
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.partitioning import logical_to_spec


class TensorParallelError(ValueError):
    """A model that this mesh's `model` axis cannot split exactly."""


@dataclass(frozen=True)
class HeadPlan:
    """How query and KV heads are laid out over a `model` axis of size `model_axis`."""

    num_heads: int
    num_kv_heads: int
    model_axis: int
    kv_replicas: int  # copies of each KV head (1 when the axis divides the KV heads)
    padded_group: int  # query heads per KV head after padding

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def padded_heads(self) -> int:
        return self.num_kv_heads * self.padded_group

    @property
    def stored_kv_heads(self) -> int:
        return self.num_kv_heads * self.kv_replicas

    @property
    def pad_heads(self) -> int:
        return self.padded_heads - self.num_heads

    @property
    def query_heads_per_device(self) -> int:
        return self.padded_heads // self.model_axis

    def query_sources(self) -> np.ndarray:
        """For each padded query head, the original head it holds, or -1 for a zero pad head."""
        slot = np.arange(self.padded_group)
        per_group = [np.where(slot < self.group, k * self.group + slot, -1) for k in range(self.num_kv_heads)]
        return np.concatenate(per_group)

    def kv_sources(self) -> np.ndarray:
        """For each stored KV head, the original KV head it replicates."""
        return np.repeat(np.arange(self.num_kv_heads), self.kv_replicas)


def plan_heads(num_heads: int, num_kv_heads: int, model_axis: int) -> HeadPlan:
    """The head layout for `model_axis` devices, or an error saying which axis sizes work."""
    if model_axis <= num_kv_heads:
        if num_kv_heads % model_axis:
            raise TensorParallelError(_axis_hint(num_kv_heads, model_axis))
        return HeadPlan(num_heads, num_kv_heads, model_axis, 1, num_heads // num_kv_heads)
    if model_axis % num_kv_heads:
        raise TensorParallelError(_axis_hint(num_kv_heads, model_axis))
    replicas = model_axis // num_kv_heads
    padded_group = math.ceil(num_heads // num_kv_heads / replicas) * replicas
    return HeadPlan(num_heads, num_kv_heads, model_axis, replicas, padded_group)


def _axis_hint(num_kv_heads: int, model_axis: int) -> str:
    divisors = [d for d in range(1, num_kv_heads + 1) if num_kv_heads % d == 0]
    serving = divisors + [num_kv_heads * k for k in (2, 4, 8)]
    return (
        f"a model axis of {model_axis} cannot split {num_kv_heads} KV heads exactly: it must divide them or be a "
        f"multiple of them (e.g. {', '.join(map(str, serving))})"
    )


def tensor_parallel_config(cfg: Qwen2Config, model_axis: int) -> tuple[Qwen2Config, HeadPlan]:
    """The config of the padded model for `model_axis`, and its head plan."""
    plan = plan_heads(cfg.num_heads, cfg.num_kv_heads, model_axis)
    for name in ("intermediate_size", "vocab_size"):
        if getattr(cfg, name) % model_axis:
            raise TensorParallelError(
                f"{name} {getattr(cfg, name)} is not divisible by the model axis {model_axis}: choose a model axis "
                f"that divides it"
            )
    return cfg.replace(num_heads=plan.padded_heads, num_kv_heads=plan.stored_kv_heads), plan


def _take_heads(weight: jax.Array, sources: np.ndarray, head_dim: int, axis: int) -> jax.Array:
    """Rebuild `weight`'s head axis (heads x head_dim, at `axis`) from `sources`; -1 gives zeros."""
    shape = weight.shape
    heads = weight.reshape(*shape[:axis], -1, head_dim, *shape[axis + 1 :])
    taken = jnp.take(heads, np.maximum(sources, 0), axis=axis)
    keep = (sources >= 0).reshape([-1 if i == axis else 1 for i in range(taken.ndim)])
    taken = jnp.where(keep, taken, jnp.zeros((), taken.dtype))
    return taken.reshape(*shape[:axis], -1, *shape[axis + 1 :])


def pad_heads(path: tuple, value: jax.Array, plan: HeadPlan, head_dim: int) -> jax.Array:
    """A parameter of the original model, rearranged for the padded head layout."""
    module, leaf = str(path[-2]), str(path[-1])
    if module == "q_proj":
        return _take_heads(value, plan.query_sources(), head_dim, axis=value.ndim - 1)
    if module in ("k_proj", "v_proj"):
        return _take_heads(value, plan.kv_sources(), head_dim, axis=value.ndim - 1)
    if module == "o_proj" and leaf == "kernel":
        return _take_heads(value, plan.query_sources(), head_dim, axis=0)
    return value


def param_sharding(variable: nnx.Variable, mesh: Mesh) -> NamedSharding:
    """Where a parameter lives on `mesh`, from its logical axes."""
    return NamedSharding(mesh, logical_to_spec(variable.get_metadata()["axes"]))


def _rebuild(model: Qwen2ForCausalLM, plan: HeadPlan, place: Callable[[nnx.Variable, jax.Array], jax.Array]):
    """`model` rebuilt for `plan`'s head layout, each weight padded then handed to `place` in
    turn, so that at most one padded weight exists beside its placed copy at any time."""
    cfg = model.cfg
    tp_cfg = cfg.replace(num_heads=plan.padded_heads, num_kv_heads=plan.stored_kv_heads)
    dtype = model.model.norm.weight.dtype
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(tp_cfg, dtype=dtype, rngs=nnx.Rngs(0))))
    values = dict(nnx.to_flat_state(nnx.state(model)))
    rebuilt = [
        (path, variable.replace(place(variable, pad_heads(path, values[path][...], plan, cfg.head_dim))))
        for path, variable in nnx.to_flat_state(abstract)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(rebuilt))


def pad_model(model: Qwen2ForCausalLM, plan: HeadPlan) -> Qwen2ForCausalLM:
    """`model` with its heads laid out by `plan` (padded queries, replicated KV heads), unplaced."""
    return _rebuild(model, plan, lambda variable, value: value)


def shard_model(model: Qwen2ForCausalLM, mesh: Mesh) -> Qwen2ForCausalLM:
    """The padded, tensor-parallel copy of `model` with every weight placed on `mesh`."""
    _, plan = tensor_parallel_config(model.cfg, mesh.shape[MODEL_AXIS])
    return _rebuild(model, plan, lambda variable, value: jax.device_put(value, param_sharding(variable, mesh)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """(B, T) inputs: rows split over `batch`, replicated over `model`."""
    return NamedSharding(mesh, P("batch", None))
