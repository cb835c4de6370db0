"""streaming_matmul's CPU decode kernel: against a float64 reference, on every mesh against the
single device, inside a whole bfloat16 model against XLA's own product, where it is chosen, and
how a failed build is reported. Runs on any x86-64 CPU with AVX2, whichever path the model takes
there by default."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from tests.infra.cli import run_cli
from tests.infra.devices import CPU
from tests.infra.mesh import make_mesh
from tests.jax.models.qwen2_5 import model as model_module
from tests.jax.models.qwen2_5 import streaming_matmul
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.partitioning import logical_to_spec
from tests.jax.models.qwen2_5.streaming_matmul import streamed_product, streams_faster
from tests.jax.models.qwen2_5.tensor_parallel import shard_model

pytestmark = [
    pytest.mark.model_test,
    pytest.mark.skipif(not streaming_matmul.runs_here(), reason="the kernel needs an x86-64 CPU with AVX2 and FMA"),
]


def _bf16(rng: np.random.Generator, *shape: int) -> jax.Array:
    return jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)


def _summation_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The classic bound on float32 recursive summation of exact products, K * 2^-24 * sum |x w|:
    any correct summation order meets it; a dropped tail or a wrong row misses it by far."""
    k = x.shape[-1]
    return k * 2.0**-24 * (np.abs(x) @ np.abs(w).T) + 1e-30


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 896, 4864), (2, 37, 13), (3, 100, 1001), (5, 264, 70), (16, 8, 4), (1, 7, 3), (1, 4864, 896)],
    ids=lambda v: str(v),
)
def test_matches_a_float64_reference(m, k, n):
    """Covers both weight-row blockings (1-2 rows of x, 3+), every row remainder, K tails shorter
    than a vector and rows longer than a page (the other prefetch distance)."""
    rng = np.random.default_rng(m * 1000 + k + n)
    x, w = _bf16(rng, m, k), _bf16(rng, n, k)
    y = np.asarray(jax.jit(streamed_product)(x, w))
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    assert y.dtype == np.float32 and y.shape == (m, n)
    assert np.all(np.abs(y - x64 @ w64.T) <= _summation_bound(x64, w64))


@pytest.mark.parametrize(
    ("axes", "width"), [(("mlp", "embed"), (256, 64)), (("embed", "mlp"), (64, 256))], ids=["column", "row"]
)
@pytest.mark.parametrize("batch", [1, 8])
def test_on_every_mesh_equals_the_single_device(mesh, dut, axes, width, batch):
    """model._streamed on each device's blocks. A column-parallel weight gives every output from one
    device with the single device's summation order: bit-equal. A row-parallel one sums float32
    partial sums once more: within the summation bound. No weight is gathered; the only
    collective is the row-parallel all-reduce."""
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's; other platforms get the plain product")
    rng = np.random.default_rng(batch)
    x, w = _bf16(rng, batch, 1, width[1]), _bf16(rng, *width)
    single = np.asarray(jax.jit(lambda x, w: model_module._streamed(x, w, axes=axes))(x, w))
    with jax.set_mesh(mesh):
        w_sharded = jax.device_put(w, NamedSharding(mesh, logical_to_spec(axes)))
        step = jax.jit(lambda x, w: model_module._streamed(x, w, axes=axes))
        hlo = step.lower(x, w_sharded).compile().as_text()
        sharded = np.asarray(step(x, w_sharded))
    assert hlo.count("all-gather(") == 0
    assert hlo.count("all-reduce(") == (1 if axes[1] == "mlp" else 0)
    if axes[1] == "embed":
        np.testing.assert_array_equal(sharded, single)
    else:
        x64, w64 = np.asarray(x, np.float64)[:, 0], np.asarray(w, np.float64)
        assert np.all(np.abs(sharded[:, 0] - single[:, 0]) <= 2 * _summation_bound(x64, w64))


@pytest.mark.parametrize("mesh_shape", [None, "2x4"])
def test_a_bfloat16_decode_step_through_the_kernel_matches_xla(tiny_checkpoint, monkeypatch, mesh_shape, dut):
    """A whole model's one-token forward (every product on the few-rows path) with the kernel
    forced on, against the same forward with XLA's own product: the logits agree to the model
    tests' bfloat16 tolerance (PCC 0.999), as two float32 summation orders rounded to bfloat16 at
    every layer do; a wrong product would not."""
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's")
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16)
    mesh = None if mesh_shape is None else make_mesh(mesh_shape, dut.devices)
    model = shard_model(model, mesh) if mesh is not None else model
    ids, positions, mask = jnp.array([[5], [77]]), jnp.array([[3], [9]]), jnp.ones((2, 1), bool)

    def logits(kernel: bool) -> np.ndarray:
        monkeypatch.setattr(streaming_matmul, "faster_here", lambda: kernel)
        graph, state = nnx.split(model)
        forward = jax.jit(lambda state, *a: nnx.merge(graph, state)(*a))
        if mesh is None:
            return np.asarray(forward(state, ids, positions, mask), np.float32)
        with jax.set_mesh(mesh):
            text = forward.lower(state, ids, positions, mask).as_text()
            assert (streaming_matmul.TARGET in text) == kernel
            return np.asarray(forward(state, ids, positions, mask), np.float32)

    ours, xla = logits(True), logits(False)
    assert np.corrcoef(ours.ravel(), xla.ravel())[0, 1] >= 0.999
    assert (ours.argmax(-1) == xla.argmax(-1)).mean() >= 0.5


def test_chosen_only_where_it_streams_faster():
    avx2 = frozenset({"avx2", "fma"})
    amx = avx2 | {"avx512f", "avx512_bf16", "amx_bf16"}
    assert streams_faster(avx2, "")  # AVX2-only: YNNPACK 7.5-10 GB/s, the kernel 19-27
    assert not streams_faster(amx, "")  # AMX: YNNPACK's own kernels are faster
    assert streams_faster(amx, "--xla_cpu_enable_fast_math=false --xla_cpu_max_isa=AVX2")  # capped below AVX-512
    assert not streams_faster(amx, "--xla_cpu_max_isa=AVX2 --xla_cpu_max_isa=AVX512")  # the last flag wins
    assert not streams_faster(frozenset({"avx", "sse4_2"}), "")  # no AVX2: cannot run it


@pytest.mark.parametrize(
    ("compiler", "message"),
    [("/nonexistent/c++", "'/nonexistent/c++' was not found: install g++ or set CXX"), ("false", "failed")],
)
def test_a_failed_build_is_one_line_and_exit_2(compiler, message, tmp_path, demo_cache):
    """Where the kernel is used (forced here by capping XLA at AVX2) and cannot be built, the
    generate CLI says why and how to fix it before loading anything, in one line with exit 2;
    nothing is left in the kernel cache."""
    env = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "CXX": compiler, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env["QWEN2_5_DEMO_CACHE"] = str(demo_cache)
    done = run_cli("tests.jax.models.qwen2_5.generate", "--prompt", "Hello", env=env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not any((tmp_path / "cache").rglob("*.so"))
