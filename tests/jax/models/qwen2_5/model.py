# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Qwen2.5 in Flax NNX, with the numerics of Hugging Face `modeling_qwen2`.

Shapes: B batch, T query tokens, S key tokens, D hidden, K KV heads, G queries per KV head,
H head_dim, F MLP width, V vocabulary. Weights are stored (out, in), as PyTorch and the
checkpoints store them: loading transposes nothing.

Numerics follow the PyTorch reference so that float32 matches to rounding and bfloat16 to
the same cast points: matmuls accumulate in float32 and round once (as PyTorch's CPU GEMM
does), RMSNorm normalizes in float32 and casts back before the weight multiply, RoPE angles
are float32, attention softmax is float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.jax.infra.compat import ModuleList
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.partitioning import Axes, batch_of, batch_split, constrain

_INIT = jax.nn.initializers.normal(0.02)
# Inside the decoder the residual stream is 2-D, (N, D) with N = B x T token rows in (row, token)
# order: matrix products then take it as it is (a 3-D activation is reshaped to 2-D and back
# around every product on TT). Rows are split over `batch` with their sequence's tokens.
RESIDUAL = ("batch", "embed")
KV_AXES = ("batch", "kv_heads", None, None)


def _matmul(x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
    """`einsum(spec)` accumulated in float32; the caller rounds once."""
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


# A product with a weight: x (..., in) times w stored (out, in), with the weight's logical axes
# -> (..., out) float32, rounded once by the caller.
WeightProduct = Callable[[jax.Array, jax.Array, Axes], jax.Array]


def weight_product(x: jax.Array, w: jax.Array, axes: Axes) -> jax.Array:
    """The model's product with a weight: one einsum (`axes` serve forms that place it per device)."""
    return _matmul(x, w, "...i,oi->...o")  # (..., in) x (out, in) -> (..., out)


# A decode token per row into the cache at each row's own slot: cache (B, K, S, H), new
# (B, K, 1, H), slots (B,) -> the cache written.
RowWrite = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def write_rows(cache: jax.Array, new: jax.Array, slots: jax.Array) -> jax.Array:
    """Row b's token at slot slots[b], in place in the donated buffer and split like it. Both forms
    write the same values; XLA:CPU updates only one of them in place per dtype (README
    "Performance"): in bfloat16 a select over the cache (an update slice per row is copied), in
    float32 an update slice per row (the select's loop over the cache fuses the key's RoPE).
    """
    if cache.dtype == jnp.float32:

        def put(row: jax.Array, token: jax.Array, slot: jax.Array) -> jax.Array:
            return jax.lax.dynamic_update_slice_in_dim(row, token, slot, axis=1)

        return jax.vmap(put)(cache, new, slots)
    hit = jnp.arange(cache.shape[2]) == slots[:, None]  # (B, S)
    return jnp.where(hit[:, None, :, None], new, cache)


class Linear(nnx.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: Axes,
        use_bias: bool,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
        product: WeightProduct = weight_product,
    ):
        """`axes`: the logical axes of the weight, (out, in); `product`: Kernels.weight_product."""
        self.weight = nnx.Param(
            _INIT(rngs.params(), (out_features, in_features), dtype), axes=tuple(axes)
        )
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), dtype), axes=(axes[0],))
            if use_bias
            else None
        )
        self.axes, self.product = tuple(axes), product

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., in) -> (..., out): (N, in) tokens, or (B, T, in) for the lm_head."""
        y = self.product(x, self.weight[...], self.axes)
        # A row-parallel layer's partial sums are all-reduced here, still in float32, so a mesh
        # rounds the full sum once, exactly where the single device does.
        y = constrain(y, ("batch", *[None] * (y.ndim - 2), self.axes[0]))
        if self.bias is not None:
            # The bias joins the float32 accumulator before the single rounding, as addmm does.
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)  # the single rounding


class Embedding(nnx.Module):
    def __init__(
        self,
        vocab_size: int,
        features: int,
        *,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
        product: WeightProduct = weight_product,
    ):
        self.weight = nnx.Param(
            _INIT(rngs.params(), (vocab_size, features), dtype), axes=("vocab", "embed")
        )
        self.product = product

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)  # (...) -> (..., D)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table, for tied lm_heads: (B, T, D) -> (B, T, V)."""
        table = self.weight[...]  # (V, D): already a weight stored (out, in)
        return constrain(
            self.product(x, table, ("vocab", "embed")).astype(table.dtype),
            ("batch", None, "vocab"),
        )


class RMSNorm(nnx.Module):
    def __init__(self, features: int, *, eps: float, dtype: jnp.dtype):
        self.weight = nnx.Param(jnp.ones((features,), dtype), axes=("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        # Back to the input dtype *before* the weight multiply, exactly as Qwen2RMSNorm.
        return self.weight[...] * h.astype(x.dtype)


def rope_cos_sin(
    positions: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
    """float32 cos and sin of the rotary angles, (B, T) -> (B, T, H)."""
    # Bit-for-bit Hugging Face's float32 recipe: float32 exponents, a correctly rounded float32
    # power (as PyTorch's is, measured), then a float32 reciprocal. At position 1e5 one ulp of
    # an inverse frequency moves the angle by ~1e-3 rad, so the recipe matters, not just the value.
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    inv_freq = np.float32(1.0) / powers
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, H/2)
    angles = jnp.concatenate([angles, angles], axis=-1)  # (B, T, H)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x` (..., H) by angles already broadcast to its shape; in x's dtype, as Hugging Face."""
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# One layer's keys and values, each (B, K, S, H): the tokens of this call, or the whole cache.
# Heads before slots, as TT's cache ops and fused attention take them.
KV = tuple[jax.Array, jax.Array]
# The name under which the TT compiler recognizes attention (scaled_dot_product_attention, or its
# decode kernel for one query per row); any other compiler runs the composite's decomposition.
SDPA = "tenstorrent.scaled_dot_product_attention"


def attention_mask(
    key_valid: jax.Array, start: int | jax.Array, num_queries: int
) -> jax.Array:
    """(B, S) key validity -> (B, T, S) bool: query t sits at slot start + t (start a scalar, or
    (B,) per row) and sees the valid keys at slots up to its own. Without a cache, start is 0 and
    S = T (plain causal mask).
    """
    query_slots = jnp.reshape(start, (-1, 1)) + jnp.arange(num_queries)  # (1 or B, T)
    slots = jnp.arange(key_valid.shape[-1])
    causal = slots[None, None, :] <= query_slots[:, :, None]  # (1 or B, T, S)
    return causal & key_valid.astype(bool)[:, None, :]


def attention_bias(visible: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """(B, T, S) bool -> (B, 1, T, S) additive bias of `dtype`: 0 where visible, the most negative
    finite value elsewhere. Added to float32 scores it leaves a visible score exactly as it is and
    gives a hidden one a weight of exactly 0, as masking does (finite, so a query that sees no key,
    a pad, gets uniform weights rather than NaN)."""
    return jnp.where(visible, 0, jnp.finfo(dtype).min).astype(dtype)[:, None]


def init_cache(
    cfg: Qwen2Config, batch: int, max_len: int, dtype: jnp.dtype
) -> tuple[KV, ...]:
    """An empty static-shape KV cache: per layer, keys and values (B, K, max_len, H)."""
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return tuple(
        (
            constrain(jnp.zeros(shape, dtype), KV_AXES),
            constrain(jnp.zeros(shape, dtype), KV_AXES),
        )
        for _ in range(cfg.num_layers)
    )


class Attention(nnx.Module):
    """Grouped-query attention: q/k/v with bias, o_proj without."""

    def __init__(
        self, cfg: Qwen2Config, kernels: Kernels, *, dtype: jnp.dtype, rngs: nnx.Rngs
    ):
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim, self.kernels = cfg.head_dim, kernels
        q_width, kv_width = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        )
        # Column-parallel q/k/v and row-parallel o_proj: each device computes whole heads.
        common = {"dtype": dtype, "rngs": rngs, "product": kernels.weight_product}
        column = {"use_bias": True, **common}
        self.q_proj = Linear(
            cfg.hidden_size, q_width, axes=("q_heads", "embed"), **column
        )
        self.k_proj = Linear(
            cfg.hidden_size, kv_width, axes=("kv_heads", "embed"), **column
        )
        self.v_proj = Linear(
            cfg.hidden_size, kv_width, axes=("kv_heads", "embed"), **column
        )
        row = {"use_bias": False, **common}
        self.o_proj = Linear(q_width, cfg.hidden_size, axes=("embed", "q_heads"), **row)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        bias: jax.Array,
        cache: KV | None = None,
        start: int | jax.Array = 0,
    ) -> tuple[jax.Array, KV]:
        """x (N, D) for N = B x T tokens, cos/sin (B, 1, T, H) of x's dtype, bias (B, 1, T, S)
        -> (N, D) and the keys/values attended.

        With `cache`, this call's keys and values are written at slots start..start+T-1 and
        attention runs over all S cache slots; without, over the T tokens of this call, query t
        seeing keys up to t (`bias` causal).
        """
        batch, _, seq, _ = cos.shape
        rows = (batch, seq)
        q = self._heads(
            self.q_proj(x), rows, self.num_heads, "q_heads"
        )  # (B, Hq, T, H)
        k = self._heads(
            self.k_proj(x), rows, self.num_kv_heads, "kv_heads"
        )  # (B, K, T, H)
        v = self._heads(
            self.v_proj(x), rows, self.num_kv_heads, "kv_heads"
        )  # (B, K, T, H)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        if cache is not None:
            # (B, K, S, H)
            k, v = self.write(cache[0], k, start), self.write(cache[1], v, start)
        out = self._attend(q, k, v, bias, causal=cache is None)  # (B, Hq, T, H)
        out = jnp.swapaxes(out, 1, 2).reshape(
            batch * seq, self.num_heads * self.head_dim
        )
        return self.o_proj(out), (k, v)

    def _heads(
        self, x: jax.Array, rows: tuple[int, int], heads: int, axis: str
    ) -> jax.Array:
        """(N, heads * H) -> (B, heads, T, H) for rows (B, T), heads split over `model`."""
        x = x.reshape(*rows, heads, self.head_dim)
        return constrain(jnp.swapaxes(x, 1, 2), ("batch", axis, None, None))

    def _attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array, causal: bool
    ) -> jax.Array:
        """Kernels.attention, as the named composite TT fuses where the kernels name it."""
        scale, attention = self.head_dim**-0.5, self.kernels.attention
        if not self.kernels.named_attention:
            return attention(q, k, v, bias, scale, causal)

        def decomposition(q, k, v, bias, *, scale: float, is_causal: bool):
            del is_causal  # always False: the bias holds causality
            return attention(q, k, v, bias, scale, causal)

        # What TT sees is its SDPA on these operands; other compilers run the decomposition.
        attend = jax.lax.composite(decomposition, SDPA)
        return attend(q, k, v, bias, scale=scale, is_causal=False)

    def _rotate(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        """RoPE of x (B, heads, T, H). Where the kernels ask for it and a device holds several rows
        of one token each (a decode step), they are rotated in the (T, B, heads, H) view: the
        layout in which TT's compiler fuses a batch of decode tokens into its rotary kernel (it
        fuses one row, and prefill chunks, in this layout). The same elementwise arithmetic
        either way, and for T = 1 the same memory order."""
        rows_view = x.shape[2] == 1 and x.shape[0] // batch_split() > 1
        if not (self.kernels.rotary_rows_view and rows_view):
            return apply_rope(x, cos, sin)
        view = (2, 0, 1, 3)
        rotated = apply_rope(
            x.transpose(view), cos.transpose(view), sin.transpose(view)
        )
        return rotated.transpose(1, 2, 0, 3)

    def write(
        self, cache: jax.Array, new: jax.Array, start: int | jax.Array
    ) -> jax.Array:
        """This call's keys or values (B, K, T, H) into the cache (B, K, S, H) at slots
        start..start+T-1. One token per row (a decode step) goes to each row's own slot, `start`
        (B,) (continuous batching: rows are at different points of their sequences), or one slot
        for all, by Kernels.row_write (TT's: its in-place paged_update_cache). A chunk is written
        as an update slice (write_chunk). The cache is split like the KV heads, so each device
        writes and reads only its own.
        """
        if new.shape[2] != 1:
            return write_chunk(cache, new, start)
        slots = jnp.broadcast_to(start, (new.shape[0],)).astype(jnp.int32)
        return constrain(self.kernels.row_write(cache, new, slots), KV_AXES)


def write_chunk(cache: jax.Array, new: jax.Array, start: int | jax.Array) -> jax.Array:
    """A chunk's keys or values (B, K, T, H) into the cache (B, K, S, H) at start..start+T-1, as
    an update slice: TT's in-place fill (fill_cache) always writes from slot 0, right for a
    prompt's first chunk only (docs/tt_graph.md)."""
    written = jax.lax.dynamic_update_slice_in_dim(cache, new, start, axis=2)
    return constrain(written, KV_AXES)


def softmax(scores: jax.Array, bias: jax.Array) -> jax.Array:
    """Attention probabilities of the scores' dtype from a float32 softmax of scores + bias."""
    logits = scores.astype(jnp.float32) + bias.astype(jnp.float32)
    return jax.nn.softmax(logits, axis=-1).astype(scores.dtype)


def plain_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    scale: float,
    causal: bool = False,
) -> jax.Array:
    """grouped_attention with the model's softmax: q (B, Hq, T, H), k/v (B, K, S, H), bias
    (B, 1, T, S) -> (B, Hq, T, H); `causal` as there."""
    return grouped_attention(
        q, k, v, bias, scale=scale, is_causal=False, softmax=softmax, causal=causal
    )


# An attention: q (B, Hq, T, H), k/v (B, K, S, H), bias (B, 1, T, S), scale, causal -> (B, Hq, T, H).
Attend = Callable[..., jax.Array]


@dataclass(frozen=True)
class Kernels:
    """How the model computes what its mathematics says: one value per model, never a process
    setting. Frozen and hashable, it is a static attribute of the model, so part of jit's cache
    key: a model with other kernels compiles programs of its own.

    PLAIN is the golden's: every form the model's own JAX. tt_forms.TT names the forms TT's
    compiler fuses; an opt-in CPU package (cpu_acceleration) gives XLA:CPU's. Each computes the
    same products with float32 sums as the plain form, another summation order at most.
    """

    weight_product: WeightProduct = weight_product
    row_write: RowWrite = write_rows  # a decode token per row at its own slot
    attention: Attend = plain_attention
    named_attention: bool = (
        False  # attention as the SDPA composite (its decomposition: `attention`)
    )
    rotary_rows_view: bool = False  # decode rows rotated in the (T, B, heads, H) view
    marked_parameters: bool = (
        False  # weights marked as parameters for TT's const-eval (steps.py)
    )


PLAIN = Kernels()


# The most bytes of float32 scores (over all devices) one block of queries may hold: attention
# runs over blocks of queries small enough that no intermediate grows with a whole chunk times
# the cache (a prefill chunk of 256 queries over 4,096 slots at batch 8 would hold 470 MB of
# scores per layer, and the matrix library keeps its own copies outside the compiler's buffers).
# Each query's softmax and products are the same in any block, so the blocks change no result.
SCORE_BLOCK_BYTES = 32 * 2**20
# Queries per block of causal attention over a call's own tokens (`_causal_blocks`): each block
# reads only the keys up to its last query. Smaller blocks skip more of the hidden half but each
# is a program of its own: 128 ran an 864-token prefill 3% faster on XLA:CPU (README
# "Performance"), which is not worth a change to every prefill graph, TT's included.
CAUSAL_BLOCK = 256


def grouped_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    *,
    scale: float,
    is_causal: bool,
    softmax: Callable[[jax.Array, jax.Array], jax.Array],
    causal: bool = False,
) -> jax.Array:
    """softmax(q k^T scale + bias) v over grouped queries: q (B, Hq, T, H), k/v (B, K, S, H),
    bias (B, 1, T, S) -> (B, Hq, T, H). Query head k*G + g reads KV head k; the KV-head axis is
    split over `model`, so a device's queries and the KV head they read live on the same device
    and attention needs no communication. `is_causal` is always False: the bias holds causality.
    `causal`: the keys are the queries' own tokens (S = T) and the bias hides every key after a
    query's own (`_causal_blocks`).
    """
    del is_causal
    batch, heads, seq, hd = q.shape
    kv = k.shape[1]
    q = q.reshape(batch, kv, heads // kv, seq, hd)  # (B, K, G, T, H)
    bias = bias[:, :, None]  # (B, 1, 1, T, S)
    attend = functools.partial(_attend, scale=scale, softmax=softmax)
    block = _query_block(q.shape, k.shape[2])
    if causal and seq > CAUSAL_BLOCK:
        out = _causal_blocks(attend, q, k, v, bias, min(block, CAUSAL_BLOCK))
    elif block == seq:
        out = attend(q, bias, k, v)
    else:
        blocks = -(-seq // block)
        q, bias = _query_blocks(q, blocks, block), _query_blocks(bias, blocks, block)
        # (n, B, K, G, block, H)
        out = jax.lax.map(lambda qb: attend(*qb, k, v), (q, bias))
        out = jnp.moveaxis(out, 0, 3).reshape(*out.shape[1:4], -1, hd)[..., :seq, :]
    return out.reshape(batch, heads, seq, hd)


def _causal_blocks(
    attend: Callable[..., jax.Array],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    block: int,
) -> jax.Array:
    """Causal attention over blocks of `block` queries, each against the keys up to its last
    query's own: q (B, K, G, T, H), k/v (B, K, T, H), bias (B, 1, 1, T, T) -> (B, K, G, T, H).
    The keys a block skips are hidden from all its queries (weight exactly 0), so a query that sees
    a key gets the softmax it gets over all T, in another summation order."""
    seq = q.shape[3]
    outs = []
    for first in range(0, seq, block):
        last = min(seq, first + block)
        keys, values = k[:, :, :last], v[:, :, :last]  # (B, K, last, H)
        rows = bias[..., first:last, :last]  # (B, 1, 1, last - first, last)
        outs.append(attend(q[..., first:last, :], rows, keys, values))
    return jnp.concatenate(outs, axis=3)


def _attend(
    q: jax.Array,
    bias: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float,
    softmax: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """q (B, K, G, T, H), bias (B, 1, 1, T, S), k/v (B, K, S, H) -> (B, K, G, T, H)."""
    # Scores are rounded to the model dtype before scaling, as Hugging Face's eager path.
    # (B, K, G, T, S)
    scores = _matmul(q, k, "bkgth,bksh->bkgts").astype(q.dtype) * scale
    probs = softmax(scores, bias)
    return _matmul(probs, v, "bkgts,bksh->bkgth").astype(q.dtype)


def _query_block(q_shape: tuple[int, ...], slots: int) -> int:
    """Queries per block: all of them where their float32 scores fit SCORE_BLOCK_BYTES (every
    decode step), else the largest power of two that fits."""
    *rows, seq, _ = q_shape
    per_query = 4 * slots * int(np.prod(rows))
    if seq * per_query <= SCORE_BLOCK_BYTES:
        return seq
    return 1 << max(0, (SCORE_BLOCK_BYTES // per_query).bit_length() - 1)


def _query_blocks(x: jax.Array, blocks: int, block: int) -> jax.Array:
    """(..., T, X) -> (blocks, ..., block, X): the queries padded with zeros to whole blocks (a
    padded query's output is dropped), block index first for `lax.map`."""
    pad = [(0, 0)] * x.ndim
    pad[-2] = (0, blocks * block - x.shape[-2])
    x = jnp.pad(x, pad).reshape(*x.shape[:-2], blocks, block, x.shape[-1])
    return jnp.moveaxis(x, -3, 0)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(
        self, cfg: Qwen2Config, kernels: Kernels, *, dtype: jnp.dtype, rngs: nnx.Rngs
    ):
        # Column-parallel gate/up and row-parallel down: the MLP width never leaves its device.
        common = {"use_bias": False, "dtype": dtype, "rngs": rngs}
        common["product"] = kernels.weight_product
        self.gate_proj = Linear(
            cfg.hidden_size, cfg.intermediate_size, axes=("mlp", "embed"), **common
        )
        self.up_proj = Linear(
            cfg.hidden_size, cfg.intermediate_size, axes=("mlp", "embed"), **common
        )
        self.down_proj = Linear(
            cfg.intermediate_size, cfg.hidden_size, axes=("embed", "mlp"), **common
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = self.gate_proj(x)  # (N, F)
        # SiLU in float32 with one rounding, as PyTorch's bfloat16 kernel computes it.
        act = jax.nn.silu(gate.astype(jnp.float32)).astype(gate.dtype)
        hidden = constrain(act * self.up_proj(x), ("batch", "mlp"))
        return self.down_proj(hidden)  # (N, D)


class DecoderLayer(nnx.Module):
    def __init__(
        self, cfg: Qwen2Config, kernels: Kernels, *, dtype: jnp.dtype, rngs: nnx.Rngs
    ):
        self.input_layernorm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype
        )
        self.self_attn = Attention(cfg, kernels, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(
            cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype
        )
        self.mlp = MLP(cfg, kernels, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        bias: jax.Array,
        cache: KV | None = None,
        start: int | jax.Array = 0,
    ) -> tuple[jax.Array, KV]:
        """(N, D) -> (N, D) tokens, and the layer's keys/values (see Attention)."""
        attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, bias, cache, start)
        # The residual stream is replicated over `model`: each row-parallel output is completed
        # by one all-reduce right here, twice per layer.
        x = constrain(x + attn, RESIDUAL)
        return constrain(x + self.mlp(self.post_attention_layernorm(x)), RESIDUAL), kv


class Qwen2Model(nnx.Module):
    """Embedding, decoder stack and final norm: token ids -> final hidden states."""

    def __init__(
        self, cfg: Qwen2Config, kernels: Kernels, *, dtype: jnp.dtype, rngs: nnx.Rngs
    ):
        self.cfg = cfg
        self.embed_tokens = Embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            rngs=rngs,
            product=kernels.weight_product,
        )
        layers = range(cfg.num_layers)
        self.layers = ModuleList(
            [DecoderLayer(cfg, kernels, dtype=dtype, rngs=rngs) for _ in layers]
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        key_valid: jax.Array,
        cache: tuple[KV, ...] | None = None,
        start: int | jax.Array = 0,
    ) -> tuple[jax.Array, tuple[KV, ...]]:
        """input_ids, positions (B, T); key_valid (B, S) -> hidden states (B, T, D) and keys/values.

        `start` the static 0 (a Python int) with a cache: a first chunk, which attends over its own
        tokens as a forward without a cache does (no query sees a slot after the chunk) and fills
        the cache from slot 0."""
        with batch_of(input_ids.shape[0]):
            return self._forward(input_ids, positions, key_valid, cache, start)

    def _forward(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        key_valid: jax.Array,
        cache: tuple[KV, ...] | None,
        start: int | jax.Array,
    ) -> tuple[jax.Array, tuple[KV, ...]]:
        batch, seq = input_ids.shape
        x = constrain(self.embed_tokens(input_ids.reshape(-1)), RESIDUAL)  # (N, D)
        angles = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        # (B, 1, T, H) in the model dtype, once for every layer (apply_rope's own cast).
        cos, sin = (t.astype(x.dtype)[:, None] for t in angles)
        fills = cache is not None and isinstance(start, int) and start == 0
        if fills:  # a first chunk: its own T slots, causal attention over them alone
            key_valid = key_valid[:, :seq]
        visible = attention_mask(key_valid, start, seq)
        bias = attention_bias(visible, x.dtype)  # (B, 1, T, S), shared by every layer
        layers_kv = []
        for i, layer in enumerate(self.layers):
            reads = None if cache is None or fills else cache[i]
            x, kv = layer(x, cos, sin, bias, reads, start)
            if fills:  # (B, K, T, H) each -> the cache (B, K, S, H) from slot 0
                pairs = zip(cache[i], kv, strict=True)
                kv = tuple(write_chunk(c, new, 0) for c, new in pairs)
            layers_kv.append(kv)
        return self.norm(x).reshape(batch, seq, -1), tuple(layers_kv)


class Qwen2ForCausalLM(nnx.Module):
    """The causal LM: token ids -> logits (B, T, V), with an untied or a tied lm_head; `kernels`
    how it computes (Kernels)."""

    def __init__(
        self,
        cfg: Qwen2Config,
        *,
        kernels: Kernels = PLAIN,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg, self.kernels = cfg, kernels
        self.model = Qwen2Model(cfg, kernels, dtype=dtype, rngs=rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.hidden_size,
                cfg.vocab_size,
                axes=("vocab", "embed"),
                use_bias=False,
                dtype=dtype,
                rngs=rngs,
                product=kernels.weight_product,
            )
        )

    def __call__(
        self, input_ids: jax.Array, positions: jax.Array, attention_mask: jax.Array
    ) -> jax.Array:
        """input_ids, positions, attention_mask (B, T) -> logits (B, T, V)."""
        hidden, _ = self.model(input_ids, positions, attention_mask)
        return self.logits(hidden)

    def step(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        key_valid: jax.Array,
        cache: tuple[KV, ...],
        start: int | jax.Array,
    ) -> tuple[jax.Array, tuple[KV, ...]]:
        """T new tokens against a KV cache of S slots, written at slots start..start+T-1.

        input_ids, positions (B, T); key_valid (B, S) marks the slots holding real tokens,
        including the new ones. Returns logits (B, T, V) and the updated cache.
        """
        hidden, cache = self.model(input_ids, positions, key_valid, cache, start)
        return self.logits(hidden), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """(B, T, D) -> (B, T, V)."""
        if self.lm_head is None:
            return self.model.embed_tokens.attend(hidden)
        # Vocab-parallel logits stay split over `model`; whoever needs them whole gathers them.
        return constrain(self.lm_head(hidden), ("batch", None, "vocab"))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions of a left-padded batch: 0 at each row's first real token (pads get 0)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)
