# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""cpu_products, the one seam for XLA:CPU's forms of the weight product: each form forced on every
host against the plain product inside a whole model, the choice `auto` makes, and refusals.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.infra.devices import CPU
from tests.infra.mesh import make_mesh
from tests.jax.models.qwen2_5 import cpu_products, streaming_matmul
from tests.jax.models.qwen2_5.cpu_products import (
    FEW_ROWS,
    FEW_ROWS_FORM,
    KERNEL_FORMS,
    STREAMED,
    STREAMED_NATIVE,
    XLA,
    CpuProductsError,
)
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.model import weight_product as model_product
from tests.jax.models.qwen2_5.tensor_parallel import shard_model

pytestmark = pytest.mark.model_test
AXES = ("mlp", "embed")


def _one_token_logits(model: nnx.Module, mesh, form: str) -> np.ndarray:
    """A one-token forward (every product on the few-rows path) traced with `form` installed."""
    ids, positions, mask = (
        jnp.array([[5], [77]]),
        jnp.array([[3], [9]]),
        jnp.ones((2, 1), bool),
    )
    graph, state = nnx.split(model)
    with cpu_products.forced(form):
        forward = jax.jit(lambda state, *a: nnx.merge(graph, state)(*a))
        if mesh is None:
            return np.asarray(forward(state, ids, positions, mask), np.float32)
        with jax.set_mesh(mesh):
            text = forward.lower(state, ids, positions, mask).as_text()
            # two rows, one per device on 2x4: within every kernel form's rows
            assert (streaming_matmul.TARGET in text) == (form in KERNEL_FORMS)
            assert ("optimization_barrier" in text) == (form == FEW_ROWS_FORM)
            return np.asarray(forward(state, ids, positions, mask), np.float32)


@pytest.mark.parametrize("form", [FEW_ROWS_FORM, STREAMED, STREAMED_NATIVE])
@pytest.mark.parametrize("mesh_shape", [None, "2x4"])
def test_each_form_matches_the_plain_product(tiny_checkpoint, mesh_shape, form, dut):
    """A whole bfloat16 model's one-token forward through `form`, against the plain product: the
    logits agree to the model tests' bfloat16 tolerance (PCC 0.999), as two float32 summation
    orders rounded to bfloat16 at every layer do; a wrong product would not."""
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's")
    if form in KERNEL_FORMS and not streaming_matmul.runs_here():
        pytest.skip("the kernel needs an x86-64 CPU with AVX2 and FMA")
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16)
    mesh = None if mesh_shape is None else make_mesh(mesh_shape, dut.devices)
    model = shard_model(model, mesh) if mesh is not None else model
    ours, plain = _one_token_logits(model, mesh, form), _one_token_logits(
        model, mesh, XLA
    )
    assert np.corrcoef(ours.ravel(), plain.ravel())[0, 1] >= 0.999
    assert (ours.argmax(-1) == plain.argmax(-1)).mean() >= 0.5


@pytest.mark.push
def test_a_bfloat16_gemm_under_streamed_runs_on_widened_operands(dut):
    """More than FEW_ROWS rows of bfloat16 under `streamed` (AVX2-only hosts' form): the product
    is one float32 dot of the widened operands, and differs from the plain product by no more
    than two float32 summation orders can: 2 K eps32 sum|x w| per output (K = 64 terms).
    """
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's")
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], (2, 16, 64)).astype(jnp.bfloat16)  # 32 rows
    w = jax.random.normal(keys[1], (48, 64)).astype(jnp.bfloat16)
    product = jax.jit(lambda x, w: cpu_products.product_for(STREAMED)(x, w, AXES))
    text = product.lower(x, w).as_text()
    assert "tensor<2x16x64xf32>, tensor<48x64xf32>) -> tensor<2x16x48xf32>" in text
    assert "xbf16>) -> tensor<2x16x48xf32>" not in text  # no bfloat16 dot left
    ours, plain = np.asarray(product(x, w)), np.asarray(model_product(x, w, AXES))
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    bound = 2 * 64 * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(w64).T)
    assert np.all(np.abs(ours - plain) <= bound)


def test_auto_picks_each_host_class_its_fastest_form():
    avx2 = frozenset({"avx2", "fma"})
    zen4 = avx2 | {"avx512f", "avx512_bf16"}
    amx = zen4 | {"amx_bf16"}
    assert cpu_products.auto_form(avx2, "") == STREAMED
    assert cpu_products.auto_form(zen4, "") == STREAMED_NATIVE
    assert cpu_products.auto_form(amx, "") == FEW_ROWS_FORM
    # as tests/infra/cpu_class emulates an AVX2-only CPU
    assert cpu_products.auto_form(amx, "--xla_cpu_max_isa=AVX2") == STREAMED
    assert cpu_products.auto_form(frozenset({"avx", "sse4_2"}), "") == FEW_ROWS_FORM
    assert cpu_products.resolve(XLA) == XLA


@pytest.mark.parametrize(("rows", "kernel"), [(FEW_ROWS, True), (FEW_ROWS + 1, False)])
def test_the_native_form_streams_few_rows_and_keeps_gemms_bfloat16(rows, kernel, dut):
    """`streamed-native`: up to FEW_ROWS bfloat16 rows per device the kernel, a GEMM the plain
    bfloat16 dot (not widened, no barrier).
    """
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's")
    x = jnp.ones((rows, 64), jnp.bfloat16)
    w = jnp.ones((48, 64), jnp.bfloat16)
    product = jax.jit(
        lambda x, w: cpu_products.product_for(STREAMED_NATIVE)(x, w, AXES)
    )
    text = product.lower(x, w).as_text()
    assert (streaming_matmul.TARGET in text) == kernel
    assert ("stablehlo.dot_general" in text) == (not kernel)
    assert "tensor<48x64xf32>" not in text  # the weight is never widened
    assert "optimization_barrier" not in text


def test_a_form_this_host_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(streaming_matmul, "runs_here", lambda: False)
    with pytest.raises(
        CpuProductsError,
        match="needs an x86-64 CPU with AVX2 and FMA: choose few-rows or xla",
    ):
        cpu_products.resolve(STREAMED)
    with pytest.raises(CpuProductsError, match="must be one of"):
        cpu_products.resolve("fast")


def test_forced_restores_the_installed_form():
    before = cpu_products.installed()
    with cpu_products.forced(XLA):
        assert cpu_products.installed() == XLA
    assert cpu_products.installed() == before


def test_the_model_imports_no_host_code():
    """model.py, and what it imports, knows nothing of hosts or of the test infrastructure."""
    probe = (
        "import sys, tests.jax.models.qwen2_5.model; "
        "print(' '.join(m for m in sys.modules if m.startswith('tests')))"
    )
    root = Path(__file__).parents[4]
    run = [sys.executable, "-c", probe]
    done = subprocess.run(run, capture_output=True, text=True, check=True, cwd=root)
    loaded = set(done.stdout.split())
    assert "tests.jax.models.qwen2_5.model" in loaded
    assert not {m for m in loaded if m.startswith("tests.infra")}
    assert not loaded & {
        "tests.jax.models.qwen2_5.cpu_products",
        "tests.jax.models.qwen2_5.streaming_matmul",
    }


def test_a_new_form_is_not_served_a_trace_of_the_old_one(tiny_checkpoint):
    """The jitted steps are module-level functions that JAX caches by shapes: after the form
    changes, lowering the same step again must trace the new form."""
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16)
    generator = Generator(model, (), 0)
    layout = generator.layout([3, 5], 4)
    texts = {}
    for form in (FEW_ROWS_FORM, XLA):
        with cpu_products.forced(form):
            texts[form] = generator.steps.lower("decode", layout).as_text()
    assert "optimization_barrier" in texts[FEW_ROWS_FORM]
    assert "optimization_barrier" not in texts[XLA]


def _layer_matrix_bytes(model: nnx.Module) -> int:
    """Bytes of the decoder layers' matrices (the weights a chunk step's GEMMs widen)."""
    return sum(
        layer.nbytes
        for path, layer in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
        if layer.ndim == 2 and jax.tree_util.DictKey("layers") in path
    )


@pytest.mark.parametrize("mesh_shape", [None, "2x4"])
def test_a_float32_copy_of_the_gemm_weights_changes_no_bit(
    tiny_checkpoint, mesh_shape, dut
):
    """bfloat16 under `streamed`: chunk steps on the resident float32 copy
    (Generator(widened_gemm_weights)) compute what they compute widening each weight inside the
    step, bit for bit (the same float32 GEMMs of the same values), in static and continuous
    schedules, with prompts of 16-row chunks (FEW_ROWS, where a bfloat16 weight would stream)
    and wider ones. Measured on the AVX2-only EPYC host class."""
    if dut.platform != CPU:
        pytest.skip("the kernel is XLA:CPU's")
    if not streaming_matmul.runs_here():
        pytest.skip("the kernel needs an x86-64 CPU with AVX2 and FMA")
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16)
    mesh = None if mesh_shape is None else make_mesh(mesh_shape, dut.devices)
    model = shard_model(model, mesh) if mesh is not None else model
    prompts = [
        [(7 * i + j) % 500 + 1 for j in range(n)] for i, n in enumerate((3, 40, 90))
    ]
    runs = []
    with cpu_products.forced(STREAMED):
        for copy in (False, True):
            gen = Generator(model, (), 0, mesh, 32, widened_gemm_weights=copy)
            runs.append(
                (gen.generate(prompts, 6), gen.generate_continuous(prompts, 6, rows=2))
            )
    for widening, copied in zip(*runs, strict=True):
        assert widening.generated_token_ids == copied.generated_token_ids
        for a, b in zip(widening.top_logits, copied.top_logits, strict=True):
            np.testing.assert_array_equal(a, b)


def test_the_copy_is_counted_in_the_memory_it_adds(tiny_checkpoint):
    """The copy is twice the bfloat16 matrices' bytes, in the weights and in every step's peak:
    exactly in a decode step's (the same program), at most in a prefill's (whose widened
    temporaries it replaces)."""
    if not streaming_matmul.runs_here():
        pytest.skip("the kernel needs an x86-64 CPU with AVX2 and FMA")
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16)
    copy_bytes = 2 * _layer_matrix_bytes(model)
    with cpu_products.forced(STREAMED):
        plain, copied = (
            Generator(model, (), 0, widened_gemm_weights=copy) for copy in (False, True)
        )
        layout = plain.layout([40, 90], 8)
        assert copied.weight_bytes == plain.weight_bytes + copy_bytes
        for kind in ("decode", "prefill"):
            without = plain.steps.peak_bytes(layout, (kind,))
            held = copied.steps.peak_bytes(layout, (kind,))
            if kind == "decode":
                assert held == without + copy_bytes
            else:
                assert without < held <= without + copy_bytes


def test_a_copy_that_saves_no_widening_is_refused(tiny_checkpoint):
    if not streaming_matmul.runs_here():
        pytest.skip("the kernel needs an x86-64 CPU with AVX2 and FMA")
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.float32)
    with cpu_products.forced(STREAMED), pytest.raises(
        ValueError, match="a float32 copy of float32 weights would save no widening"
    ):
        Generator(model, (), 0, widened_gemm_weights=True)
