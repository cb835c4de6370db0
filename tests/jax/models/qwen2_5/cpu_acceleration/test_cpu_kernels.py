# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A model on the CPU kernels against the plain golden: the kernel is in its decode step and nowhere
else, and its bfloat16 generations are the golden's up to rounding ties (the audit's verdict).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.jax.infra.mesh import make_mesh
from tests.jax.models.qwen2_5.audit import (
    EQUIVALENT,
    IDENTICAL,
    Generated,
    MeshAudit,
    oracle_of,
)
from tests.jax.models.qwen2_5.batching import layout_for
from tests.jax.models.qwen2_5.cpu_acceleration.kernels import cpu_kernels, product
from tests.jax.models.qwen2_5.cpu_acceleration.streaming_matmul import (
    TARGET,
    runs_faster_here,
)
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.steps import DECODE

pytestmark = [
    pytest.mark.model_test,
    pytest.mark.skipif(
        not runs_faster_here(), reason="the CPU kernels are not used on this CPU"
    ),
]
PROMPT_LENGTHS, NEW_TOKENS = (5, 39, 12, 27, 8, 33, 20, 16), 32


def _generated(result) -> dict[int, Generated]:
    pairs = zip(result.generated_token_ids, result.top_logits, strict=True)
    return {i: Generated(tokens, top) for i, (tokens, top) in enumerate(pairs)}


def test_the_kernel_is_in_the_decode_step(tiny_checkpoint):
    """A bfloat16 decode step's products (few rows) take the kernel."""
    model = load_model(tiny_checkpoint("gqa28x4"), jnp.bfloat16, kernels=cpu_kernels())
    layout = layout_for([40, 33], 8, context=256, chunk=256, batch_multiple=1)
    assert TARGET in Generator(model, (), 0).steps.lower(DECODE, layout).as_text()


@pytest.mark.parametrize(
    ("rows", "dtype", "kernel"),
    [(1, jnp.bfloat16, True), (16, jnp.bfloat16, True), (17, jnp.bfloat16, False)]
    + [(1, jnp.float32, False)],
)
def test_only_few_bfloat16_rows_take_the_kernel(rows, dtype, kernel):
    """Up to FEW_ROWS rows (a decode step) of bfloat16; a GEMM (a prefill chunk) or float32 stays
    XLA's."""
    x, w = jnp.ones((rows, 64), dtype), jnp.ones((32, 64), dtype)
    text = jax.jit(lambda x, w: product(x, w, ("mlp", "embed"))).lower(x, w).as_text()
    assert (TARGET in text) == kernel


@pytest.mark.parametrize("mesh_name", ["1x1", "2x4"])
def test_generations_are_the_plain_goldens_up_to_rounding_ties(
    mesh_name, tiny_checkpoint, dut, record_property
):
    """Greedy bfloat16 generations with the CPU kernels, on one device and on 2x4, audited against
    the plain golden: identical, or parting only at rounding ties of the float32 oracle.
    """
    path = tiny_checkpoint("gqa28x4")
    plain = Generator(load_model(path, jnp.bfloat16), (), 0)
    mesh = None if mesh_name == "1x1" else make_mesh(mesh_name, dut.devices)
    model = load_model(path, jnp.bfloat16, mesh=mesh, kernels=cpu_kernels())
    fast = Generator(model, (), 0, mesh)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 500, n).tolist() for n in PROMPT_LENGTHS]
    runs = [_generated(g.generate(prompts, NEW_TOKENS)) for g in (plain, fast)]
    audit = MeshAudit("bfloat16")
    audit.audit(oracle_of(plain), fast, dict(enumerate(prompts)), *runs)
    record_property("audit", audit.describe())
    assert audit.verdict in (IDENTICAL, EQUIVALENT), audit.describe()
    assert audit.summary()["real_divergences"] == 0
