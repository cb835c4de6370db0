# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The compiled steps of generation and teacher forcing: prefill, decode, fill and score.

Each step is a plain function of the model state and arrays, jitted once here with its cache
argument donated (the cache is updated in place). `CompiledSteps` lowers and compiles them for one
model on one mesh, once per shapes, and reports their memory before any weight is loaded: it
needs only the state's shapes and placements, so a generator of shape-only weights compiles what
the loaded one runs. The KV cache is split like the KV heads (`KV_AXES`): a device holds the keys
and values of exactly the heads it computes, rows split over `batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.jax.infra.mesh import BATCH_AXIS, MODEL_AXIS
from tests.jax.infra.tt_parameters import mark_parameters
from tests.jax.models.qwen2_5.batching import BatchLayout
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import KV, KV_AXES, Qwen2ForCausalLM, init_cache
from tests.jax.models.qwen2_5.partitioning import logical_to_spec
from tests.jax.models.qwen2_5.placement import Placement
from tests.jax.models.qwen2_5.sampling import SamplingParams, next_token, row_keys
from tests.jax.models.qwen2_5.tensor_parallel import forward_all_reduces

PREFILL, DECODE, FILL, SCORE = "prefill", "decode", "fill", "score"
INSERT = "insert"
# Lowered-step names: a decode step whose rows write at their own slots (continuous batching).
DECODE_ROWS, ONE_ROW_PREFILL = "decode_rows", "one_row_prefill"
# A prompt's prefill chunk after its first (Generator.lower's name; the first is PREFILL's).
NEXT_PREFILL = "next_prefill"
Cache = tuple[KV, ...]  # per layer, keys and values (B, K, S, H)


def widened(state: Any) -> Any:
    """Model state with its floating-point arrays in float32 (exactly: bfloat16 widens without rounding)."""
    return jax.tree.map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        state,
    )


def _model(graphdef: nnx.GraphDef, state: Any, exact: bool) -> Qwen2ForCausalLM:
    model = nnx.merge(graphdef, widened(state) if exact else state)
    if model.kernels.marked_parameters:
        # The weights are the same at every step: the TT compiler converts their layout once.
        model = nnx.merge(graphdef, mark_parameters(nnx.state(model)))
    return model


def _keys(greedy: bool, key: jax.Array, draws: jax.Array) -> jax.Array | None:
    # A greedy step traces no random bits, so its graph holds nothing it does not use.
    return None if greedy else row_keys(key, draws)


def prefill(
    state: Any,
    ids: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    cache: Cache,
    start: jax.Array,
    key: jax.Array,
    draws: jax.Array,
    sampling: SamplingParams,
    *,
    graphdef: nnx.GraphDef,
    exact: bool,
    greedy: bool,
    first: bool,
) -> tuple[jax.Array, jax.Array, Cache]:
    """One chunk of the prompt (B, chunk) into the cache; the next token from the chunk's last
    column, sampled (when not greedy) with each row's key (sampling.row_keys of `draws`), and its
    record. `first`: the prompt's first chunk (`start` is 0), which attends over its own tokens
    only (model.Qwen2Model) rather than over the whole cache.
    """
    model = _model(graphdef, state, exact)
    hidden, cache = model.model(ids, positions, key_valid, cache, 0 if first else start)
    logits = model.logits(hidden[:, -1:])[:, 0]  # (B, V): only the column that predicts
    return *next_token(logits, greedy, _keys(greedy, key, draws), sampling), cache


def decode(
    state: Any,
    tokens: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    cache: Cache,
    start: jax.Array,
    key: jax.Array,
    draws: jax.Array,
    sampling: SamplingParams,
    *,
    graphdef: nnx.GraphDef,
    exact: bool,
    greedy: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, Cache]:
    """One token per row (B,) at cache slot `start`, or at each row's own slot with `start` (B,)
    (continuous batching), sampled as prefill's, and its record; positions and key validity
    advance.
    """
    model = _model(graphdef, state, exact)
    # Each row's slot becomes visible: elementwise, not a scatter (a generic one on TT).
    written = jnp.arange(key_valid.shape[1])[None] == jnp.reshape(start, (-1, 1))
    key_valid = key_valid | written
    hidden, cache = model.model(
        tokens[:, None], positions[:, None], key_valid, cache, start
    )
    logits = model.logits(hidden)[:, 0]  # (B, V)
    tokens, record = next_token(logits, greedy, _keys(greedy, key, draws), sampling)
    return tokens, record, positions + 1, key_valid, cache


def insert(
    cache: Cache,
    key_valid: jax.Array,
    row_cache: Cache,
    row_valid: jax.Array,
    row: jax.Array,
) -> tuple[Cache, jax.Array]:
    """A sequence prefilled alone (its cache (1, K, S, H) and key validity (1, S)) into row `row`
    of a batch's cache and key validity, replacing whatever that row held."""

    def put(whole: jax.Array, part: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice_in_dim(whole, part, row, axis=0)

    return jax.tree.map(put, cache, row_cache), put(key_valid, row_valid)


def fill(
    state: Any,
    ids: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    cache: Cache,
    start: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    exact: bool,
) -> Cache:
    """One chunk of a teacher-forced sequence into the cache, computing no logits."""
    return _model(graphdef, state, exact).model(
        ids, positions, key_valid, cache, start
    )[1]


def score(
    state: Any,
    ids: jax.Array,
    positions: jax.Array,
    key_valid: jax.Array,
    cache: Cache,
    start: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    exact: bool,
) -> tuple[jax.Array, Cache]:
    """One chunk of a teacher-forced sequence into the cache, with the logits of every column (B, chunk, V)."""
    model = _model(graphdef, state, exact)
    hidden, cache = model.model(ids, positions, key_valid, cache, start)
    return model.logits(hidden), cache


_STATIC = ("graphdef", "exact")
JITTED = {
    PREFILL: jax.jit(
        prefill,
        static_argnames=(*_STATIC, "greedy", "first"),
        donate_argnames=("cache",),
    ),
    DECODE: jax.jit(
        decode, static_argnames=(*_STATIC, "greedy"), donate_argnames=("cache",)
    ),
    FILL: jax.jit(fill, static_argnames=_STATIC, donate_argnames=("cache",)),
    SCORE: jax.jit(score, static_argnames=_STATIC, donate_argnames=("cache",)),
    INSERT: jax.jit(insert, donate_argnames=("cache", "key_valid")),
}


def step_collectives(
    cfg: Qwen2Config, mesh: Mesh, kind: str, greedy: bool = True
) -> dict[str, int]:
    """The collectives of a compiled step on `mesh` (XLA:CPU and the TT compiler alike): the
    forward's all-reduces, then, for a step that chooses tokens, `next_token`'s all-gathers (over
    `batch` only where rows are split: one prompt's prefill is replicated over it). Fill and score
    chunks have only the forward's: their logits stay split. An insert moves no data between
    devices: each keeps its part of the row."""
    split_model, split_batch = mesh.shape[MODEL_AXIS] > 1, mesh.shape[BATCH_AXIS] > 1
    if kind == INSERT:
        return {"all_reduce": 0, "all_gather": 0}
    rows_split = split_batch and kind != ONE_ROW_PREFILL
    chooses = kind in (PREFILL, NEXT_PREFILL, DECODE, DECODE_ROWS, ONE_ROW_PREFILL)
    gathers = split_model + (1 if greedy else 2) * rows_split if chooses else 0
    return {
        "all_reduce": forward_all_reduces(cfg) if split_model else 0,
        "all_gather": gathers,
    }


class StepKey(NamedTuple):
    kind: str
    greedy: bool | None  # None for fill, score and insert, which choose no token
    batch: int
    chunk: int
    max_len: int
    row_slots: bool  # a decode step writing each row at its own slot
    first: bool  # a prompt's first prefill chunk


_SCALAR = jax.ShapeDtypeStruct((), jnp.int32)  # a cache slot or row index


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """The shape, dtype and placement of an argument: all a compile needs."""
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


class CompiledSteps:
    """The steps of one model on one placement, compiled once per shapes (`programs`).

    `exact`: every step computes in float32 on the model's own weights (cast inside the compiled
    step, so no float32 copy stays resident): the audit's oracle of a bfloat16 run."""

    def __init__(
        self, model: Qwen2ForCausalLM, placement: Placement, exact: bool = False
    ) -> None:
        dtype = jnp.dtype(model.model.norm.weight.dtype)
        self.graphdef, state = nnx.split(model)
        self.abstract_state = jax.tree.map(_abstract, state)
        self.cfg, self.placement, self.exact = model.cfg, placement, exact
        self.cache_dtype = jnp.float32 if exact else dtype
        self.programs: dict[StepKey, jax.stages.Compiled] = {}
        # One jitted maker per layout: a new one per call would trace and compile again, and
        # every continuous-batching prefill makes a cache.
        self._cache_makers: dict[BatchLayout, Callable[[], Any]] = {}

    def _cache_maker(self, layout: BatchLayout) -> Callable[[], Any]:
        if layout not in self._cache_makers:
            self._cache_makers[layout] = self._new_cache_maker(layout)
        return self._cache_makers[layout]

    def _new_cache_maker(self, layout: BatchLayout) -> Callable[[], Any]:
        mesh, rows = self.placement.mesh, self.placement.row_axis(layout.batch)
        spec = P(rows, *logical_to_spec(KV_AXES)[1:])
        sharding = None if mesh is None else NamedSharding(mesh, spec)

        def make() -> Cache:
            return init_cache(self.cfg, layout.batch, layout.max_len, self.cache_dtype)

        return jax.jit(make, out_shardings=sharding)

    def empty_cache(self, layout: BatchLayout) -> Any:
        return self.placement.within(self._cache_maker(layout))

    def _arguments(self, kind: str, layout: BatchLayout, row_slots: bool) -> tuple:
        """The abstract dynamic arguments of step `kind` for `layout`, in the step's order."""
        place = self.placement
        cache = jax.eval_shape(self._cache_maker(layout))
        key_valid = place.row_spec((layout.batch, layout.max_len), jnp.bool_)
        if kind == INSERT:
            row = replace(layout, rows=1, batch=1)
            row_valid = place.row_spec((1, layout.max_len), jnp.bool_)
            row_cache = jax.eval_shape(self._cache_maker(row))
            return (cache, key_valid, row_cache, row_valid, _SCALAR)
        ids = place.row_spec((layout.batch, layout.chunk), jnp.int32)
        if kind in (FILL, SCORE):
            return (self.abstract_state, ids, ids, key_valid, cache, _SCALAR)
        sampling = (
            jax.ShapeDtypeStruct((), jax.random.key(0).dtype),
            jax.ShapeDtypeStruct(
                (layout.batch, 2), jnp.int32, sharding=place.sharding(P())
            ),
            SamplingParams.abstract(),
        )
        if kind == PREFILL:
            return (
                self.abstract_state,
                ids,
                ids,
                key_valid,
                cache,
                _SCALAR,
                *sampling,
            )
        tokens = jax.ShapeDtypeStruct(
            (layout.batch,), jnp.int32, sharding=place.sharding(P())
        )
        positions = place.row_spec((layout.batch,), jnp.int32)
        start = positions if row_slots else _SCALAR
        return (
            self.abstract_state,
            tokens,
            positions,
            key_valid,
            cache,
            start,
            *sampling,
        )

    def lower(
        self,
        kind: str,
        layout: BatchLayout,
        greedy: bool = True,
        row_slots: bool = False,
        first: bool = False,
    ) -> jax.stages.Lowered:
        static = (
            {} if kind == INSERT else {"graphdef": self.graphdef, "exact": self.exact}
        )
        if kind in (PREFILL, DECODE):
            static["greedy"] = greedy
        if kind == PREFILL:
            static["first"] = first
        arguments = self._arguments(kind, layout, row_slots)
        return self.placement.within(lambda: JITTED[kind].lower(*arguments, **static))

    def compiled(
        self,
        kind: str,
        layout: BatchLayout,
        greedy: bool = True,
        row_slots: bool = False,
        first: bool = False,
    ) -> jax.stages.Compiled:
        """Step `kind` for `layout`, compiled on first use; called with its dynamic arguments only.
        `row_slots`: a decode step whose rows write at their own slots (continuous batching);
        `first`: a prompt's first prefill chunk.
        """
        key = StepKey(
            kind,
            greedy if kind in (PREFILL, DECODE) else None,
            layout.batch,
            layout.chunk,
            layout.max_len,
            row_slots,
            first,
        )
        if key not in self.programs:
            lowered = self.lower(kind, layout, greedy, row_slots, first)
            self.programs[key] = lowered.compile()
        return self.programs[key]

    def prefill_chunks(
        self, layout: BatchLayout, greedy: bool = True
    ) -> list[tuple[int, int, jax.stages.Compiled]]:
        """(start, width, program) of each prefill chunk of `layout`, compiled on first use: the
        first chunk's program fills the cache from slot 0, the later ones' read what it holds.
        """
        return [
            (
                start,
                width,
                self.compiled(
                    PREFILL, layout.chunk_of(width), greedy, first=start == 0
                ),
            )
            for start, width in layout.chunk_spans
        ]

    def cache_bytes(self, layout: BatchLayout) -> int:
        """The KV cache of `layout` over all devices (replicas included)."""
        return self._bytes(jax.tree.leaves(jax.eval_shape(self._cache_maker(layout))))

    @property
    def weight_bytes(self) -> int:
        """The weights over all devices (padding and replicas included)."""
        return self._bytes(jax.tree.leaves(self.abstract_state))

    def _bytes(self, arrays: list) -> int:
        per_device = sum(
            (
                math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                if x.sharding is not None
                else x.size * x.dtype.itemsize
            )
            for x in arrays
        )
        return per_device * self.placement.devices

    def _programs(self, kind: str, layout: BatchLayout) -> list[jax.stages.Compiled]:
        """The programs a lowered-step name runs for `layout` (Generator.lower's names)."""
        if kind == DECODE_ROWS:
            return [self.compiled(DECODE, layout, row_slots=True)]
        if kind == NEXT_PREFILL:
            return [self.compiled(PREFILL, layout)]
        if kind in (PREFILL, ONE_ROW_PREFILL):
            chunked = layout if kind == PREFILL else layout.one_row(layout.prompt_len)
            return [program for _, _, program in self.prefill_chunks(chunked)]
        return [self.compiled(kind, layout)]

    def peak_bytes(
        self, layout: BatchLayout, kinds: Sequence[str] = (PREFILL, DECODE)
    ) -> int:
        """The most memory one of the steps `kinds` of `layout` holds at once, over all devices:
        arguments (weights, cache, inputs), outputs that do not reuse a donated buffer, and the
        compiler's temporaries, from the compiled programs' own memory analysis, and the resident
        weights a step does not take. One prompt's prefill also holds the batch's cache it is
        inserted into."""
        peak = 0
        for kind in kinds:
            for program in self._programs(kind, layout):
                memory = program.memory_analysis()
                held = (
                    memory.argument_size_in_bytes
                    + memory.output_size_in_bytes
                    - memory.alias_size_in_bytes
                )
                held = (held + memory.temp_size_in_bytes) * self.placement.devices
                # An insert takes no weights as arguments; they stay resident beside it.
                held += self.weight_bytes if kind == INSERT else 0
                if kind == ONE_ROW_PREFILL:
                    held += self.cache_bytes(layout)
                peak = max(peak, held)
        return peak
