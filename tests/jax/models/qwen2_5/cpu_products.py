# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""XLA:CPU's own forms of the model's weight product, installed at start-up through model.py's one seam.

The model computes every product with a weight as one plain einsum (`model.weight_product`). On
XLA:CPU a decode step's products (few rows per device) are streams over the weights, and their
speed is the speed at which a weight is read. In the plain form XLA:CPU's matrix library (YNNPACK)
repacks the weight on every call; this module gives it the forms that read a weight in place
(README "Performance" has the measurements):

- `few-rows`: the weight as the dot's left operand, the small (out, rows) result transposed
  behind an optimization barrier, and a zero second row for a single bfloat16 row (`few_rows`);
- `streamed`: bfloat16 products by streaming_matmul's C++ kernel (`streamed`), for CPUs without
  bfloat16 instructions, where `few-rows` is compute-bound; float32 still takes `few-rows`. On
  those CPUs XLA's bfloat16 GEMMs (prefill chunks) are also slower than its float32 ones, so a
  bfloat16 GEMM runs on its operands widened to float32 (`widened`): exact widening, float32 sums
  rounded once, as the contract says;
- `streamed-native`: bfloat16 products by the kernel as in `streamed`, GEMMs native: for CPUs with
  AVX512_BF16 but no AMX (AMD Zen 4), whose bfloat16 GEMMs are faster than float32 ones, whose
  `few-rows` streams are compute-bound at few rows, and where the kernel multiplies bfloat16 pairs
  with the CPU's own dot instruction (streaming_matmul.native_bf16);
- `xla`: no substitution, the plain product everywhere;
- `auto` (the default): by the CPU's bfloat16 instructions (`auto_form`): `streamed` with none,
  `streamed-native` with AVX512_BF16 alone, `few-rows` with AMX (or without AVX2, where the
  kernel cannot run).

Every form but `xla` also writes a decode step's keys and values into the cache in place
(tests/infra/cpu_cache, through model.py's row-write seam, `row_write`): XLA:CPU's own forms of
that write pass over the whole bfloat16 cache every step. And it computes attention by
tests/infra/cpu_attention's kernels (through model.py's attention seam, `attention`): a decode
step's on CPUs with AVX2 and FMA, a bfloat16 prefill chunk's on CPUs with AMX.

Every form computes the same products with float32 sums as the plain one; only the summation
order differs, which the numerics contract allows. The choice is made once per process
(`install`). A substituted product is wrapped in `platform_dependent`, so a program lowered for
any other platform (the TT compiler) contains only the plain product.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from tests.infra import cpu_attention, cpu_cache
from tests.infra.cpu_class import bfloat16_instructions
from tests.jax.models.qwen2_5 import model, streaming_matmul
from tests.jax.models.qwen2_5.partitioning import (
    Axes,
    logical_to_spec,
    row_axis,
    rows_per_device,
)

AUTO, XLA, FEW_ROWS_FORM, STREAMED = "auto", "xla", "few-rows", "streamed"
STREAMED_NATIVE = "streamed-native"
CHOICES = (AUTO, XLA, FEW_ROWS_FORM, STREAMED, STREAMED_NATIVE)
# Rows (batch x tokens) per device up to which a product with a weight is a stream over the
# weight (a decode step) rather than a GEMM (a prefill chunk): only these are substituted.
FEW_ROWS = 16
# Per form: the rows per device up to which bfloat16 products take the kernel, and whether
# bfloat16 GEMMs run widened.
_KERNEL_ROWS_AND_WIDENING = {
    FEW_ROWS_FORM: (0, False),
    STREAMED: (FEW_ROWS, True),
    STREAMED_NATIVE: (FEW_ROWS, False),
}
KERNEL_FORMS = tuple(f for f, (rows, _) in _KERNEL_ROWS_AND_WIDENING.items() if rows)


class CpuProductsError(ValueError):
    """A CPU product form this host cannot run."""


def resolve(choice: str) -> str:
    """The concrete form `choice` names on this host ("auto" picks one); refuses one that cannot run here."""
    if choice not in CHOICES:
        raise CpuProductsError(
            f"--cpu-products must be one of {', '.join(CHOICES)}, got {choice!r}"
        )
    if choice == AUTO:
        return auto_form(*streaming_matmul.host_flags())
    if choice in KERNEL_FORMS and not streaming_matmul.runs_here():
        raise CpuProductsError(
            f"--cpu-products {choice} needs an x86-64 CPU with AVX2 and FMA: choose few-rows or xla"
        )
    return choice


def auto_form(cpu_flags: frozenset[str], xla_flags: str) -> str:
    """The fastest form for a CPU with `cpu_flags` under `xla_flags` (measured per host class,
    README "Performance"): the kernel where it streams faster than YNNPACK, bfloat16 GEMMs widened
    where XLA may use no bfloat16 instructions."""
    if not streaming_matmul.streams_faster(cpu_flags, xla_flags):
        return FEW_ROWS_FORM
    if bfloat16_instructions(cpu_flags, xla_flags):
        return STREAMED_NATIVE
    return STREAMED


def product_for(form: str) -> model.WeightProduct:
    """The weight product of a concrete form (resolve)."""
    if form == XLA:
        return model.weight_product
    kernel_rows, widen = _KERNEL_ROWS_AND_WIDENING[form]
    return functools.partial(_dense, kernel_rows=kernel_rows, widen=widen)


def install(choice: str = AUTO) -> str:
    """Make `choice` this process's weight product; returns the concrete form. The streaming kernel
    is built here when chosen, so a missing compiler is reported before any work."""
    form = resolve(choice)
    if form in KERNEL_FORMS:
        streaming_matmul.prepare_kernel()
    if form != XLA:
        cpu_cache.prepare()
        if cpu_attention.runs_here():
            cpu_attention.prepare()
        if cpu_attention.prefill_runs_here():
            cpu_attention.prepare_prefill()
    global _installed
    if form != _installed:
        # A traced program keeps the form it was traced with, and JAX reuses traces of the same
        # function and shapes (the jitted steps): none may outlive the form it holds.
        jax.clear_caches()
    model.use_weight_product(product_for(form))
    _installed = form
    return form


_installed = XLA


def installed() -> str:
    """The form `install` last chose (xla before any install)."""
    return _installed


def widens_gemms(dtype: str) -> bool:
    """Whether this process's `dtype` GEMMs run on weights widened to float32 (`widened`): bfloat16
    on XLA:CPU with the `streamed` form. There a resident float32 copy of those weights saves the
    widening in every prefill chunk."""
    _, widen = _KERNEL_ROWS_AND_WIDENING.get(_installed, (0, False))
    return dtype == "bfloat16" and widen and jax.default_backend() == "cpu"


# The cache's split under a mesh; rows split where the batch axis divides them (row_axis).
_in_place = cpu_cache.in_place_rows(
    model.write_rows, logical_to_spec(model.KV_AXES), row_axis
)


def row_write(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """model.write_rows' contract: on XLA:CPU in place (cpu_cache) in every form but `xla`."""
    if _installed == XLA:
        return model.write_rows(cache, new, slots)
    return _in_place(cache, new, slots)


# Attention by the kernels on XLA:CPU, split like the queries and the cache under a mesh.
_kernel_specs = (
    logical_to_spec(("batch", "q_heads", None, None)),
    logical_to_spec(model.KV_AXES),
    row_axis,
)
_decode_kernel = cpu_attention.kernel_attention(model.plain_attention, *_kernel_specs)
_prefill_kernels = {
    causal: cpu_attention.kernel_attention(
        functools.partial(model.plain_attention, causal=causal),
        *_kernel_specs,
        kernel=cpu_attention.attend_prefill,
    )
    for causal in (False, True)
}


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    scale: float,
    causal: bool = False,
) -> jax.Array:
    """model.plain_attention's contract, by cpu_attention's kernels on XLA:CPU in every form but
    `xla`: a decode step's on CPUs with AVX2 and FMA, a bfloat16 prefill chunk's where XLA may
    use AMX."""
    if _installed != XLA:
        if q.shape[2] == 1 and cpu_attention.runs_here():
            return _decode_kernel(q, k, v, bias, scale)
        if q.dtype == jnp.bfloat16 and cpu_attention.prefill_runs_here():
            return _prefill_kernels[causal](q, k, v, bias, scale)
    return model.plain_attention(q, k, v, bias, scale, causal)


model.use_attention(attention)


@contextmanager
def forced(form: str) -> Iterator[None]:
    """`form` for the duration (tests force each form on every host), then the previous one again.
    Programs must be traced inside: a compiled program keeps the form it was traced with.
    """
    before = installed()
    install(form)
    try:
        yield
    finally:
        install(before)


def _dense(
    x: jax.Array, w: jax.Array, axes: Axes, *, kernel_rows: int, widen: bool
) -> jax.Array:
    """model.weight_product's contract: x (..., in) times w (out, in) -> (..., out) float32. On
    XLA:CPU few rows take this module's stream forms (bfloat16 up to `kernel_rows` per device the
    kernel's), and a bfloat16 GEMM where `widen` its widened form; everything else, and every
    other platform, the plain one.
    """
    bfloat16 = x.dtype == jnp.bfloat16
    rows = rows_per_device(x)
    # A weight held widened (steps.widen_gemm_weights) takes the widened form at any row count.
    if rows > FEW_ROWS or w.dtype != x.dtype:
        if not (bfloat16 and widen):
            return model.weight_product(x, w, axes)
        cpu = functools.partial(widened, axes=tuple(axes))
    elif bfloat16 and rows <= kernel_rows:
        cpu = functools.partial(streamed, axes=tuple(axes))
    else:
        cpu = few_rows
    return jax.lax.platform_dependent(
        x, w, cpu=cpu, default=lambda x, w: model.weight_product(x, w, axes)
    )


def widened(x: jax.Array, w: jax.Array, *, axes: Axes) -> jax.Array:
    """A bfloat16 GEMM on its operands widened to float32 (exactly: every bfloat16 is a float32),
    where XLA:CPU's float32 GEMM is the faster (README "Performance"): the same products and
    float32 sums, the weight's widened copy a temporary of the step."""
    return model.weight_product(x.astype(jnp.float32), w.astype(jnp.float32), axes)


def few_rows(x: jax.Array, w: jax.Array) -> jax.Array:
    """A decode step's product in the one form YNNPACK reads the weight in place (measured on 2-core
    hosts, README "Performance"):

    - the weight is the dot's left operand, contracted on its contiguous axis, and the small
      (out, rows) result reaches its transpose through an optimization barrier: otherwise XLA
      folds the transpose into the dot, YNNPACK repacks the weight on every call and reads
      bfloat16 at 6-9 GB/s instead of 18-32 with AMX (float32 at batch 8: 7-9 instead of 14-21);
    - YNNPACK takes no matrix-vector products: with one bfloat16 row per device XLA's own kernel
      converts the whole weight to float32 on every call (1.7 GB/s, and a float32 copy of the
      weights), so a zero second row is added; the real row is unchanged.
    """
    one_row = x.dtype == jnp.bfloat16 and rows_per_device(x) == 1
    if one_row:
        # Each row gets its zero beside it, so rows stay on the devices that hold them.
        x = jnp.stack([x, jnp.zeros_like(x)], axis=-2)  # (..., 2, in)
    contract = (((1,), (x.ndim - 1,)), ((), ()))
    y = jax.lax.dot_general(
        w, x, contract, preferred_element_type=jnp.float32
    )  # (out, ...)
    y = jnp.moveaxis(jax.lax.optimization_barrier(y), 0, -1)  # (..., out)
    return y[..., 0, :] if one_row else y


def streamed(x: jax.Array, w: jax.Array, *, axes: Axes) -> jax.Array:
    """The product by streaming_matmul's kernel (7.5-9 GB/s for `few_rows` on AVX2-only CPUs, 19-27
    for the kernel), on each device's blocks: a custom call has no partitioning rule, and the
    partitioner would gather the whole weight onto every device. A weight split on its input axis
    (row-parallel) yields float32 partial sums, all-reduced here before the caller's single
    rounding, as the partitioner does for the plain product."""

    def per_device(
        x: jax.Array, w: jax.Array, split_axis: str | None = None
    ) -> jax.Array:
        # (M, out) for the M rows of x (..., in)
        y = streaming_matmul.streamed_product(x.reshape(-1, x.shape[-1]), w)
        y = y.reshape(*x.shape[:-1], w.shape[0])  # (..., out)
        return y if split_axis is None else jax.lax.psum(y, split_axis)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return per_device(x, w)
    weight_spec = logical_to_spec(axes)
    out_axis, in_axis = weight_spec
    # A batch the mesh's batch axis does not divide (one sequence on 2x4) is computed whole by
    # every group, as the partitioner replicates it.
    batch = row_axis(x.shape[0])
    inner = [None] * (x.ndim - 2)
    return jax.shard_map(
        functools.partial(per_device, split_axis=in_axis),
        in_specs=(P(batch, *inner, in_axis), weight_spec),
        out_specs=P(batch, *inner, out_axis),
    )(x, w)
