# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.cpu_attention import attend, kernel_attention, runs_here
from tests.infra.devices import CPU, platform_devices
from tests.infra.mesh import make_mesh

pytestmark = [
    pytest.mark.push,
    pytest.mark.skipif(not runs_here(), reason="the kernel needs x86-64 with AVX2"),
]

Q_SPEC, KV_SPEC = P("batch", "model", None, None), P("batch", "model", None, None)


def _reference(q, k, v, bias, scale):
    """The plain form's arithmetic and rounding points: q (B, Hq, 1, H), k/v (B, K, S, H)."""
    b, hq, _, h = q.shape
    g = q.reshape(b, k.shape[1], hq // k.shape[1], h)  # (B, K, G, H)
    sums = jnp.einsum("bkgh,bksh->bkgs", g, k, preferred_element_type=jnp.float32)
    scores = sums.astype(q.dtype) * scale
    logits = scores.astype(jnp.float32) + bias.reshape(b, 1, 1, -1).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgs,bksh->bkgh", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).reshape(q.shape)


def _case(dtype, rows=4, q_heads=14, kv_heads=2, slots=45, width=64, seed=0):
    """Random operands; row 0 sees no slot (a pad row), the others slot 0 up to their own."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((rows, q_heads, 1, width)), dtype)
    kv = (rows, kv_heads, slots, width)
    k = jnp.asarray(rng.standard_normal(kv) * 2, dtype)
    v = jnp.asarray(rng.standard_normal(kv), dtype)
    seen = [0, slots, *rng.integers(1, slots, max(rows - 2, 0))][:rows]
    visible = np.arange(slots)[None] < np.asarray(seen)[:, None]
    lowest = jnp.finfo(dtype).min
    bias = jnp.where(jnp.asarray(visible), 0, lowest).astype(dtype)[:, None, None]
    return q, k, v, bias, width**-0.5


def _within_summation_order(got, expected, v, dtype):
    """Equal up to the summation order and exp's last bit. In float32: a sum of S products of
    probabilities and values moves by at most S units of roundoff of sum |p v| <= max |v| (the
    probabilities add to 1), plus a few in the probabilities: (S + 8) 2^-24 max|v|. In bfloat16 the
    float32 differences are far below one bfloat16 step: every element equal or one step apart,
    and almost all equal."""
    got, expected = (np.asarray(x, np.float32) for x in (got, expected))
    if dtype == jnp.float32:
        bound = (v.shape[2] + 8) * 2.0**-24 * float(np.abs(np.asarray(v)).max())
        assert np.abs(got - expected).max() <= bound
        return
    # One bfloat16 step (8 significant bits) at each expected value's magnitude.
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(expected), 2.0**-126))) - 7)
    assert np.all(np.abs(got - expected) <= step)
    assert np.mean(got != expected) < 0.01


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("width", [64, 12])
def test_equals_the_plain_form_up_to_summation_order(dtype, width):
    """Both head widths: whole vectors, and a scalar tail."""
    q, k, v, bias, scale = _case(dtype, width=width)
    got = jax.jit(attend, static_argnums=4)(q, k, v, bias, scale)
    expected = jax.jit(_reference, static_argnums=4)(q, k, v, bias, scale)
    assert got.dtype == dtype and got.shape == q.shape
    _within_summation_order(got, expected, v, dtype)


def test_a_hidden_slot_has_no_weight_and_a_visible_one_has():
    """Changing a hidden slot's key and value changes nothing; changing the last visible one
    changes the row's output."""
    q, k, v, bias, scale = _case(jnp.float32, rows=3)
    run = jax.jit(attend, static_argnums=4)
    base = np.asarray(run(q, k, v, bias, scale))
    last = int(np.asarray(bias[2, 0, 0] == 0).sum()) - 1  # row 2's last visible slot
    hidden = k.at[2, :, last + 1 :].set(50.0), v.at[2, :, last + 1 :].set(50.0)
    assert np.array_equal(np.asarray(run(q, *hidden, bias, scale)), base)
    moved = np.asarray(run(q, k, v.at[2, :, last].add(1.0), bias, scale))
    assert not np.array_equal(moved[2], base[2]) and np.array_equal(moved[1], base[1])


def test_a_row_that_sees_no_slot_gets_uniform_weights():
    """As the plain form: the bias hides every slot equally, so the output is the values' mean."""
    q, k, v, bias, scale = _case(jnp.float32)
    got = np.asarray(jax.jit(attend, static_argnums=4)(q, k, v, bias, scale))[0, :, 0]
    mean = np.asarray(v[0]).mean(axis=1)  # (K, H)
    groups = q.shape[1] // k.shape[1]
    np.testing.assert_allclose(got, np.repeat(mean, groups, axis=0), atol=1e-6)


def test_bad_operands_are_an_error():
    q, k, v, bias, scale = _case(jnp.bfloat16)
    with pytest.raises(Exception, match="decode_attention: q"):
        jax.block_until_ready(
            jax.jit(attend, static_argnums=4)(q, k, v[:, :, :-1], bias, scale)
        )


@pytest.mark.parametrize(
    "shape, rows, kv_heads", [("2x4", 4, 4), ("2x4", 1, 4), ("1x8", 2, 2)]
)
def test_under_a_mesh_each_device_attends_with_its_own_rows_and_heads(
    shape, rows, kv_heads
):
    """Bit for bit the single-device kernel (each (row, KV head) is computed alone); KV heads the
    `model` axis cannot split evenly (1x8, 2 heads) take the caller's default."""
    mesh = make_mesh(shape, platform_devices(CPU))
    q, k, v, bias, scale = _case(
        jnp.bfloat16, rows=rows, q_heads=7 * kv_heads, kv_heads=kv_heads
    )
    split = rows % mesh.shape["batch"] == 0
    attention = kernel_attention(
        _reference,
        Q_SPEC,
        KV_SPEC,
        lambda n: "batch" if split and n % mesh.shape["batch"] == 0 else None,
    )
    expected = np.asarray(jax.jit(attend, static_argnums=4)(q, k, v, bias, scale))
    even = kv_heads % mesh.shape["model"] == 0
    rows_spec = "batch" if split else None
    with jax.set_mesh(mesh):
        placed = [
            jax.device_put(
                x, NamedSharding(mesh, P(rows_spec, "model" if even else None))
            )
            for x in (q, k, v)
        ]
        step = jax.jit(functools.partial(attention, scale=scale))
        args = (*placed, jax.device_put(bias, NamedSharding(mesh, P(rows_spec))))
        hlo = step.lower(*args).as_text()
        got = np.asarray(step(*args))
    assert ("cpu_decode_attention" in hlo) == even
    if even:
        assert np.array_equal(got, expected)
    else:
        _within_summation_order(got, expected, v, jnp.bfloat16)


def test_other_platforms_get_the_default():
    """Lowered for TT, the program holds the caller's default, not the CPU custom call."""
    attention = kernel_attention(_reference, Q_SPEC, KV_SPEC, lambda n: None)
    q, k, v, bias, scale = _case(jnp.bfloat16)
    step = jax.jit(functools.partial(attention, scale=scale))
    text = step.trace(q, k, v, bias).lower(lowering_platforms=("tt",)).as_text()
    assert "cpu_decode_attention" not in text and "exponential" in text
