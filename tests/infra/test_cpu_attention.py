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

from tests.infra.cpu_attention import (
    attend,
    attend_prefill,
    kernel_attention,
    prefill_runs_here,
    runs_here,
)
from tests.infra.devices import CPU, platform_devices
from tests.infra.mesh import make_mesh

pytestmark = [
    pytest.mark.push,
    pytest.mark.skipif(not runs_here(), reason="the kernel needs x86-64 with AVX2"),
]

Q_SPEC, KV_SPEC = P("batch", "model", None, None), P("batch", "model", None, None)
prefill_kernel = pytest.mark.skipif(
    not prefill_runs_here(),
    reason="this CPU (or XLA_FLAGS) has no AMX, which the prefill kernel needs",
)


def _reference(q, k, v, bias, scale):
    """The plain form's arithmetic and rounding points: q (B, Hq, T, H), k/v (B, K, S, H), bias
    (B, 1, T, S)."""
    b, hq, t, h = q.shape
    g = q.reshape(b, k.shape[1], hq // k.shape[1], t, h)  # (B, K, G, T, H)
    sums = jnp.einsum("bkgth,bksh->bkgts", g, k, preferred_element_type=jnp.float32)
    scores = sums.astype(q.dtype) * scale
    logits = scores.astype(jnp.float32) + bias[:, :, None].astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bksh->bkgth", probs, v, preferred_element_type=jnp.float32)
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
    probabilities add to 1), plus a few in the probabilities: (S + 8) 2^-24 max|v|. In bfloat16 a
    probability whose rounding that last bit flips moves by one bfloat16 step, at most 2^-7 of
    itself, so the output by at most 2^-7 max|v| over all of them; the result is then rounded
    (one step): every element within those bounds, and almost all equal."""
    got, expected = (np.asarray(x, np.float32) for x in (got, expected))
    largest = float(np.abs(np.asarray(v, np.float32)).max())
    bound = (v.shape[2] + 8) * 2.0**-24 * largest
    if dtype == jnp.float32:
        assert np.abs(got - expected).max() <= bound
        return
    # One bfloat16 step (8 significant bits) at each expected value's magnitude.
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(expected), 2.0**-126))) - 7)
    assert np.all(np.abs(got - expected) <= step + bound + 2.0**-7 * largest)
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


@pytest.mark.parametrize("kernel", [attend, attend_prefill])
def test_other_platforms_get_the_default(kernel):
    """Lowered for TT, the program holds the caller's default, not the CPU custom call."""
    attention = kernel_attention(
        _reference, Q_SPEC, KV_SPEC, lambda n: None, kernel=kernel
    )
    q, k, v, bias, scale = _case(jnp.bfloat16)
    step = jax.jit(functools.partial(attention, scale=scale))
    text = step.trace(q, k, v, bias).lower(lowering_platforms=("tt",)).as_text()
    assert "custom_call" not in text and "exponential" in text


def _prefill_case(
    queries=45, slots=45, width=64, q_heads=14, kv_heads=2, pads=(0, 7, 30), seed=0
):
    """bfloat16 operands of a prefill chunk: row b holds pads[b] pad tokens, then real ones, in
    slots 0..slots; its `queries` tokens are the last ones, each seeing the real slots up to its
    own (causal; slots == queries is a first chunk)."""
    rng = np.random.default_rng(seed)
    rows = len(pads)
    q = jnp.asarray(rng.standard_normal((rows, q_heads, queries, width)), jnp.bfloat16)
    kv = (rows, kv_heads, slots, width)
    k = jnp.asarray(rng.standard_normal(kv) * 2, jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal(kv), jnp.bfloat16)
    own = slots - queries + np.arange(queries)  # each query's slot
    real = np.arange(slots)[None] >= np.asarray(pads)[:, None]  # (B, S)
    visible = real[:, None, :] & (np.arange(slots)[None, None] <= own[None, :, None])
    lowest = jnp.finfo(jnp.bfloat16).min
    bias = jnp.where(jnp.asarray(visible), 0, lowest).astype(jnp.bfloat16)[:, None]
    return q, k, v, bias, width**-0.5


_prefill = jax.jit(attend_prefill, static_argnums=4)
_plain = jax.jit(_reference, static_argnums=4)


def _rounding_points(q, k, v, bias, scale):
    """The model's rounding points with sums in float64 (numpy): the reference for the prefill
    kernel. Not XLA's plain form: for narrow heads (8) XLA:CPU fuses the scores' rounding away
    (measured: 63% of outputs differ from this), where the kernel, like Hugging Face's eager
    path, rounds them."""
    f64 = lambda x: np.asarray(x, np.float32).astype(np.float64)
    to_bf16 = (
        lambda x: np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float64)
    )
    b, hq, t, h = q.shape
    g = f64(q).reshape(b, k.shape[1], hq // k.shape[1], t, h)  # (B, K, G, T, H)
    sums = np.einsum("bkgth,bksh->bkgts", g, f64(k))
    logits = to_bf16(to_bf16(sums) * to_bf16(scale)) + f64(bias)[:, :, None]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    probs = to_bf16(weights / weights.sum(-1, keepdims=True))
    return to_bf16(np.einsum("bkgts,bksh->bkgth", probs, f64(v))).reshape(q.shape)


@prefill_kernel
@pytest.mark.parametrize(
    "queries, slots, width, q_heads, kv_heads",
    [
        (45, 45, 64, 14, 2),  # a first chunk, 0.5B's heads
        (300, 300, 128, 7, 1),  # 7B's head width, more queries than one task takes
        (20, 70, 8, 28, 4),  # a later chunk over a longer cache, the tiny models' width
        (33, 33, 12, 4, 4),  # one query head per KV head, a width with a partial vector
    ],
)
def test_prefill_kernel_keeps_the_rounding_points_up_to_summation_order(
    queries, slots, width, q_heads, kv_heads
):
    q, k, v, bias, scale = _prefill_case(queries, slots, width, q_heads, kv_heads)
    got = _prefill(q, k, v, bias, scale)
    assert got.dtype == jnp.bfloat16 and got.shape == q.shape
    expected = _rounding_points(q, k, v, bias, scale)
    _within_summation_order(got, expected, v, jnp.bfloat16)


@prefill_kernel
def test_prefill_kernel_gives_no_weight_to_a_later_or_pad_slot():
    """Changing the last slot's key and value changes the last query's output and no other real
    query's; changing a pad slot's changes no real query's; a pad query sees no slot and gets
    uniform weights over all of them, as the plain form gives it."""
    pads = (0, 7, 30)
    q, k, v, bias, scale = _prefill_case(pads=pads)
    base = np.asarray(_prefill(q, k, v, bias, scale), np.float32)
    last = k.at[:, :, -1].set(50.0), v.at[:, :, -1].set(50.0)
    moved = np.asarray(_prefill(q, *last, bias, scale), np.float32)
    for row, first in enumerate(pads):
        real = slice(first, -1)
        assert np.array_equal(moved[row, :, real], base[row, :, real])
        assert not np.array_equal(moved[row, :, -1], base[row, :, -1])
    pad = k.at[2, :, :30].set(50.0), v.at[2, :, :30].add(1.0)
    moved = np.asarray(_prefill(q, *pad, bias, scale), np.float32)
    assert np.array_equal(moved[2, :, 30:], base[2, :, 30:])
    # The reference's softmax over logits the bias hides equally: 1/S each.
    expected = _rounding_points(q, k, v, bias, scale)[2, :, :30]
    _within_summation_order(base[2, :, :30], expected, v, jnp.bfloat16)


@prefill_kernel
def test_prefill_kernel_refuses_other_operands():
    q, k, v, bias, scale = _prefill_case()
    with pytest.raises(Exception, match="prefill_attention: q"):
        jax.block_until_ready(
            _prefill(q.astype(jnp.float32), k, v, bias.astype(jnp.float32), scale)
        )


@prefill_kernel
@pytest.mark.parametrize("shape, kv_heads", [("2x4", 4), ("1x8", 2)])
def test_prefill_kernel_under_a_mesh(shape, kv_heads):
    """Bit for bit the single-device kernel where the `model` axis splits the KV heads; the
    caller's default (the plain form) where it cannot."""
    mesh = make_mesh(shape, platform_devices(CPU))
    q, k, v, bias, scale = _prefill_case(
        queries=40, slots=40, q_heads=7 * kv_heads, kv_heads=kv_heads, pads=(0, 5)
    )
    attention = kernel_attention(
        _reference, Q_SPEC, KV_SPEC, lambda n: None, kernel=attend_prefill
    )
    even = kv_heads % mesh.shape["model"] == 0
    with jax.set_mesh(mesh):
        heads = NamedSharding(mesh, P(None, "model" if even else None))
        placed = [jax.device_put(x, heads) for x in (q, k, v)]
        step = jax.jit(functools.partial(attention, scale=scale))
        args = (*placed, jax.device_put(bias, NamedSharding(mesh, P())))
        assert ("cpu_prefill_attention" in step.lower(*args).as_text()) == even
        got = np.asarray(step(*args))
    if even:
        assert np.array_equal(got, np.asarray(_prefill(q, k, v, bias, scale)))
    else:
        expected = _rounding_points(q, k, v, bias, scale)
        _within_summation_order(got, expected, v, jnp.bfloat16)
