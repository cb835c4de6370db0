# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A decode step's bfloat16 product on x86-64 CPUs without AMX, at memory speed.

With few rows per device a product with a weight is a stream over the weight, and its speed is
the speed at which the weight is read. On CPUs without bfloat16 instructions (AVX2 only) XLA:CPU's
matrix library (YNNPACK) reads a bfloat16 weight compute-bound: its kernels vectorize over 8
columns and a decode step fills 1 or 2. `streaming_matmul.cc` widens each bfloat16 with a shift,
accumulates in float32 with FMA, splits the weight's rows over XLA's intra-op threads and
prefetches ahead of each row. Where the CPU has AVX512_BF16 (AMD Zen 4) it multiplies bfloat16
pairs with the CPU's dot instruction instead: the same exact products and float32 sums. With AMX,
YNNPACK's own kernels read faster than this one, so it is not used there (`runs_faster_here`).

Built with the host's C++ compiler on first use (native_build). Registered for XLA:CPU only.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax
import jax.numpy as jnp

from tests.jax.infra.cpu_class import x86_flags
from tests.jax.models.qwen2_5.cpu_acceleration.native_build import build

_SOURCE = Path(__file__).with_suffix(".cc")
TARGET = "qwen2_5_streaming_matmul"
_FLAGS = ("-mavx2", "-mfma")


def runs_here() -> bool:
    """The kernel's instructions, AVX2 and FMA, are on this CPU."""
    return {"avx2", "fma"} <= x86_flags()


def runs_faster_here() -> bool:
    """The kernel runs here and reads bfloat16 weights faster than XLA:CPU's own kernels: on every
    x86-64 CPU with AVX2 and FMA but AMX."""
    return runs_here() and "amx_bf16" not in x86_flags()


@functools.cache
def _library() -> Path:
    return build(
        _SOURCE,
        _FLAGS,
        "CPU decode kernel",
        "a C++17 compiler with AVX2 and AVX512_BF16 targets (g++ >= 10)",
    )


@functools.cache
def _register() -> None:
    kernel = ctypes.CDLL(str(_library()))
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(kernel.qwen2_5_streaming_matmul), platform="cpu"
    )


def prepare_kernel() -> None:
    """Build and register the kernel now, so that a missing compiler is reported before a long run
    starts rather than at its first decode step."""
    _register()


def streamed_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (M, in) times a weight stored (out, in) -> (M, out) float32, both bfloat16, on the arrays
    this device holds."""
    _register()
    result = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(TARGET, result)(x, w, native=native_bf16())


def native_bf16() -> bool:
    """Whether the kernel multiplies bfloat16 pairs with the CPU's AVX512_BF16 dot instruction."""
    return "avx512_bf16" in x86_flags()
