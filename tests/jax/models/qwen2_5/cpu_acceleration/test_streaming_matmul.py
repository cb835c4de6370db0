# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""streaming_matmul's CPU decode kernel: against a float64 reference, on every mesh against the
single device, where it is used, and how a failed build is reported. Runs on any x86-64 CPU with
AVX2 and FMA (a whole model through it: test_cpu_kernels.py); its AVX512_BF16 path where the CPU
has that.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from tests.jax.infra.cli import run_cli
from tests.jax.infra.devices import CPU
from tests.jax.models.qwen2_5.checkpoint_writer import tiny_random_checkpoint
from tests.jax.models.qwen2_5.cpu_acceleration import kernels, streaming_matmul
from tests.jax.models.qwen2_5.cpu_acceleration.streaming_matmul import (
    runs_faster_here,
    streamed_product,
)
from tests.jax.models.qwen2_5.partitioning import logical_to_spec

NO_AVX512_BF16 = "this CPU has no AVX512_BF16"
pytestmark = [
    pytest.mark.model_test,
    pytest.mark.skipif(
        not streaming_matmul.runs_here(),
        reason="the kernel needs an x86-64 CPU with AVX2 and FMA",
    ),
]


@pytest.fixture(params=["avx2", "avx512_bf16"])
def kernel_path(request, monkeypatch) -> str:
    """Each of the kernel's paths, forced: the AVX2 one runs on every such CPU, the AVX512_BF16 one
    where the CPU has the instruction."""
    native = request.param == "avx512_bf16"
    if native and not streaming_matmul.native_bf16():
        pytest.skip(NO_AVX512_BF16)
    monkeypatch.setattr(streaming_matmul, "native_bf16", lambda: native)
    return request.param


def _bf16(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)


def _summation_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The classic bound on float32 recursive summation of exact products, K * 2^-24 * sum |x w|:
    any correct summation order meets it; a dropped tail or a wrong row misses it by far.
    """
    k = x.shape[-1]
    return k * 2.0**-24 * (np.abs(x) @ np.abs(w).T) + 1e-30


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (1, 896, 4864),
        (2, 37, 13),
        (3, 100, 1001),
        (5, 264, 70),
        (16, 8, 4),
        (8, 96, 11),
        (13, 45, 9),
        (1, 7, 3),
        (1, 4864, 896),
    ],
    ids=lambda v: str(v),
)
def test_matches_a_float64_reference(m, k, n, kernel_path):
    """Covers each path's weight-row blockings (AVX2: 1-2 rows of x, 3+; AVX512_BF16: blocks of 4
    rows of x), every row remainder, K tails shorter than a vector or none, and rows longer than a
    page (the other prefetch distance)."""
    rng = np.random.default_rng(m * 1000 + k + n)
    x, w = _bf16(rng, m, k), _bf16(rng, n, k)
    y = np.asarray(jax.jit(streamed_product)(x, w))
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    assert y.dtype == np.float32 and y.shape == (m, n)
    assert np.all(np.abs(y - x64 @ w64.T) <= _summation_bound(x64, w64))


@pytest.mark.parametrize(
    ("axes", "width"),
    [(("mlp", "embed"), (256, 64)), (("embed", "mlp"), (64, 256))],
    ids=["column", "row"],
)
@pytest.mark.parametrize("batch", [1, 8])
def test_on_every_mesh_equals_the_single_device(
    mesh, dut, axes, width, batch, kernel_path
):
    """The kernel on each device's blocks (kernels._streamed). A column-parallel weight gives every output from one
    device with the single device's summation order: bit-equal. A row-parallel one sums float32
    partial sums once more: within the summation bound. No weight is gathered; the only
    collective is the row-parallel all-reduce."""
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's; other platforms get the plain product")
    rng = np.random.default_rng(batch)
    x, w = _bf16(rng, batch, 1, width[1]), _bf16(rng, *width)
    single = np.asarray(jax.jit(lambda x, w: kernels._streamed(x, w, axes=axes))(x, w))
    with jax.set_mesh(mesh):
        w_sharded = jax.device_put(w, NamedSharding(mesh, logical_to_spec(axes)))
        step = jax.jit(lambda x, w: kernels._streamed(x, w, axes=axes))
        hlo = step.lower(x, w_sharded).compile().as_text()
        sharded = np.asarray(step(x, w_sharded))
    assert hlo.count("all-gather(") == 0
    assert hlo.count("all-reduce(") == (1 if axes[1] == "mlp" else 0)
    if axes[1] == "embed":
        np.testing.assert_array_equal(sharded, single)
    else:
        x64, w64 = np.asarray(x, np.float64)[:, 0], np.asarray(w, np.float64)
        assert np.all(
            np.abs(sharded[:, 0] - single[:, 0]) <= 2 * _summation_bound(x64, w64)
        )


@pytest.mark.parametrize(
    ("flags", "faster"),
    [
        (
            {"avx2", "fma"},
            True,
        ),  # AVX2-only: measured 2.0-2.2x (docs/cpu_acceleration.md)
        ({"avx2", "fma", "avx512f", "avx512_bf16"}, True),  # Zen 4: the dot path
        (
            {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"},
            False,
        ),  # YNNPACK faster
        ({"avx", "sse4_2"}, False),  # cannot run it
    ],
    ids=["avx2_only", "avx512_bf16", "amx", "no_avx2"],
)
def test_used_only_where_it_runs_faster(flags, faster, monkeypatch):
    monkeypatch.setattr(streaming_matmul, "x86_flags", lambda: frozenset(flags))
    assert runs_faster_here() == faster


@pytest.mark.parametrize(
    ("compiler", "message"),
    [
        (
            "/nonexistent/c++",
            "'/nonexistent/c++' was not found: install g++ or set CXX",
        ),
        ("false", "failed"),
    ],
)
def test_a_failed_build_is_one_line_and_exit_2(compiler, message, tmp_path, demo_cache):
    """Where the CPU kernels are asked for and cannot be built, the generate CLI says why and how
    to fix it before loading anything, in one line with exit 2; nothing is left in the kernel
    cache. (On a host they do not speed up, it refuses them instead.)"""
    env = {"CXX": compiler, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    args = [*tiny, "--prompt", "Hello", "--cpu-kernels"]
    done = run_cli("tests.jax.models.qwen2_5.generate", *args, env=env)
    assert done.returncode == 2, done.stderr
    expected = message if runs_faster_here() else "drop --cpu-kernels"
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not any((tmp_path / "cache").rglob("*.so"))
