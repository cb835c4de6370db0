# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""XLA:CPU's kernels for the model: opt-in (`--cpu-kernels` in pytest and the command lines),
never the golden's.

One form is kept, because it was measured to pay: a decode step's bfloat16 products by
streaming_matmul's C++ kernel, 2.0-2.2x the plain golden's batch-1 decode tokens/s on an
AVX2-only host (docs/cpu_acceleration.md). Every other product, and every other platform, is the
plain one. The same products with float32 sums as the plain form; only the summation order
differs, which the numerics contract allows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from tests.jax.infra.cpu_class import class_of, x86_flags
from tests.jax.models.qwen2_5.cpu_acceleration import streaming_matmul
from tests.jax.models.qwen2_5.model import Kernels, weight_product
from tests.jax.models.qwen2_5.partitioning import (
    Axes,
    logical_to_spec,
    row_axis,
    rows_per_device,
)

# Rows (batch x tokens) per device up to which a product with a weight is a stream over the
# weight (a decode step) rather than a GEMM (a prefill chunk): only these take the kernel.
FEW_ROWS = 16


class CpuAccelerationError(ValueError):
    """CPU kernels asked for where they cannot run, or would not run faster."""


def product(x: jax.Array, w: jax.Array, axes: Axes) -> jax.Array:
    """model.weight_product's contract: a bfloat16 product of few rows per device by the kernel on
    XLA:CPU; every other product, and every other platform, the plain one."""
    plain = functools.partial(weight_product, axes=axes)
    if x.dtype != jnp.bfloat16 or w.dtype != x.dtype or rows_per_device(x) > FEW_ROWS:
        return plain(x, w)
    streamed = functools.partial(_streamed, axes=tuple(axes))
    return jax.lax.platform_dependent(x, w, cpu=streamed, default=plain)


def _streamed(x: jax.Array, w: jax.Array, *, axes: Axes) -> jax.Array:
    """The product by the kernel on each device's blocks: a custom call has no partitioning rule,
    and the partitioner would gather the whole weight onto every device. A weight split on its
    input axis (row-parallel) yields float32 partial sums, all-reduced here before the caller's
    single rounding, as the partitioner does for the plain product."""

    def per_device(x: jax.Array, w: jax.Array, split_axis: str | None) -> jax.Array:
        y = streaming_matmul.streamed_product(x.reshape(-1, x.shape[-1]), w)
        y = y.reshape(*x.shape[:-1], w.shape[0])  # (M, out) -> (..., out)
        return y if split_axis is None else jax.lax.psum(y, split_axis)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return per_device(x, w, None)
    out_axis, in_axis = weight_spec = logical_to_spec(axes)
    # A batch the mesh's batch axis does not divide (one sequence on 2x4) is computed whole by
    # every group, as the partitioner replicates it.
    rows, inner = row_axis(x.shape[0]), [None] * (x.ndim - 2)
    return jax.shard_map(
        functools.partial(per_device, split_axis=in_axis),
        in_specs=(P(rows, *inner, in_axis), weight_spec),
        out_specs=P(rows, *inner, out_axis),
    )(x, w)


CPU_KERNELS = Kernels(weight_product=product)


def cpu_kernels() -> Kernels:
    """The CPU kernels for this host, the kernel built now (a missing compiler is named before any
    work); refused where the kernel cannot run or would not run faster than XLA's own.
    """
    if not streaming_matmul.runs_faster_here():
        raise CpuAccelerationError(
            f"--cpu-kernels: this CPU ({class_of(x86_flags())}) has no use for the CPU kernels "
            "(they need AVX2 and FMA, and with AMX XLA's own bfloat16 products are faster): drop "
            "--cpu-kernels"
        )
    streaming_matmul.prepare_kernel()
    return CPU_KERNELS
