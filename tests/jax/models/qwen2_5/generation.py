"""Batched autoregressive generation with a static-shape KV cache, on one device or a mesh.

Prompts are left-padded to a length bucket, so every row's last prompt token sits in the
same column and every row writes the same cache slot at each step: one scalar write index.
Prefill runs in chunks of at most `prefill_chunk` tokens, each attending to the cache, so its
temporary memory (a chunk's attention scores against the cache, B x heads x chunk x S) grows
with the prompt, not with its square. One compiled prefill chunk and one decode step per
(batch, chunk, cache length). The cache is split like the KV heads (`KV_AXES`): a device holds
the keys and values of exactly the heads it computes, rows split over `batch`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.mesh import BATCH_AXIS, MODEL_AXIS
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.model import KV_AXES, Qwen2ForCausalLM, init_cache, positions_from_mask
from tests.jax.models.qwen2_5.partitioning import LOGICAL_RULES, batch_split, constrain, logical_to_spec
from tests.jax.models.qwen2_5.tensor_parallel import forward_all_reduces

MIN_PROMPT_BUCKET = 16
# Tokens per prefill chunk: large enough that a chunk's GEMMs run at full speed, small enough
# that its attention scores (B x heads x chunk x S float32) stay far below the weights.
PREFILL_CHUNK = 256
# Logits every step records with the token it chose (the audit judges a divergence by them):
# B x 8 values and ids per step, so a long run keeps them all.
TOP_K = 8


class GenerationError(ValueError):
    """A generation request that cannot be served (empty prompt, too long for the context, ...)."""


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise GenerationError(f"seed must be an integer in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """(B, V) float32 logits -> (B,) token ids: temperature, then top-k, then top-p, as Hugging Face."""
    logits = logits / temperature
    ordered = -jnp.sort(-logits, axis=-1)  # (B, V), descending
    vocab = logits.shape[-1]
    kth = jnp.take(ordered, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)[:, None]
    ordered = jnp.where((top_k > 0) & (ordered < kth), -jnp.inf, ordered)
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
    keep = ((jnp.cumsum(probs, axis=-1) - probs) < top_p) & jnp.isfinite(ordered)
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    return jax.random.categorical(key, jnp.where(logits >= threshold, logits, -jnp.inf)).astype(jnp.int32)


def top_logits(logits: jax.Array, k: int = TOP_K, vocab_split: bool = True) -> jax.Array:
    """(B, V) float32 logits -> (B, k, 2): the k largest values ([..., 0]) and their token ids
    ([..., 1], exact in float32 below 2**24), descending, equal values in id order (as argmax).

    Under a mesh, logits split over `model` by vocabulary (`vocab_split`): each device takes the
    top k of its own slice and one all-gather of B x model-axis x k pairs brings them together, so
    no logit leaves its device. Each device computes its own rows: XLA's partitioner would gather
    the whole (B, V) to sort it."""

    def best(values: jax.Array, ids: jax.Array) -> jax.Array:
        top, where = jax.lax.top_k(values, k)  # stable: the first of equal values wins
        return jnp.stack([top, jnp.take_along_axis(ids, where, axis=-1).astype(jnp.float32)], axis=-1)

    if logits.shape[-1] >= 2**24:
        raise GenerationError(f"a vocabulary of {logits.shape[-1]} ids is not exact in float32")
    mesh = jax.sharding.get_abstract_mesh()
    vocab_axis = LOGICAL_RULES["vocab"] if vocab_split else None

    def per_device(x: jax.Array) -> jax.Array:  # (b, V / model) -> (b, k, 2)
        offset = 0 if vocab_axis is None else jax.lax.axis_index(vocab_axis) * x.shape[-1]
        local = best(x, jnp.broadcast_to(jnp.arange(x.shape[-1]) + offset, x.shape))
        if vocab_axis is None:
            return local
        # In device order, so equal values still come in id order.
        candidates = jax.lax.all_gather(local, vocab_axis, axis=1, tiled=True)  # (b, model * k, 2)
        return best(candidates[..., 0], candidates[..., 1])

    if mesh.empty:
        return best(logits, jnp.broadcast_to(jnp.arange(logits.shape[-1]), logits.shape))
    batch = LOGICAL_RULES["batch"] if logits.shape[0] % batch_split() == 0 else None
    # The candidates are the same on every device of a `model` group, so is their best k (a
    # replication shard_map cannot infer through top_k).
    spec = {"in_specs": P(batch, vocab_axis), "out_specs": P(batch, None, None), "check_vma": False}
    return jax.shard_map(per_device, **spec)(logits)


def next_token(logits: jax.Array, greedy: bool, key: jax.Array, sampling: tuple) -> tuple[jax.Array, jax.Array]:
    """(B, V) logits of the model dtype, split over `model` by vocabulary -> (B,) int32 tokens and
    the step's record (B, TOP_K, 2) (top_logits), both on every device.

    Greedy: the record's first id. Sampling sorts the whole distribution, so the logits are
    gathered over `model` first (one all-gather of B x V): a sort over a split axis would be
    partitioned into many collectives that differ between compilers. With a split batch, the
    record (and a sampled step's tokens) are then gathered over `batch`.
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        record = constrain(top_logits(logits), (None, None, None))
        return record[:, 0, 1].astype(jnp.int32), record
    logits = constrain(logits, ("batch", None))
    tokens, record = sample(logits, key, *sampling), top_logits(logits, vocab_split=False)
    # Every device (and so every process) can read all the chosen tokens.
    return constrain(tokens, (None,)), constrain(record, (None, None, None))


def step_collectives(cfg: Qwen2Config, mesh: Mesh, kind: str, greedy: bool = True) -> dict[str, int]:
    """The collectives of a compiled step on `mesh` (XLA:CPU and the TT compiler alike): the
    forward's all-reduces, then, for a prefill chunk or a decode step, `next_token`'s all-gathers.
    A scoring chunk has only the forward's: its logits stay split."""
    split_model, split_batch = mesh.shape[MODEL_AXIS] > 1, mesh.shape[BATCH_AXIS] > 1
    gathers = 0 if kind == "score" else split_model + (1 if greedy else 2) * split_batch
    return {"all_reduce": forward_all_reduces(cfg) if split_model else 0, "all_gather": gathers}


@dataclass
class GenerationResult:
    prompt_token_ids: list[list[int]]
    generated_token_ids: list[list[int]]
    prefill_seconds: float
    decode_seconds: float
    compile_seconds: float
    # Per row, (generated, TOP_K, 2) float32: the top logits and ids of the step that chose each token.
    top_logits: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def prefill_tokens_per_second(self) -> float:
        return sum(map(len, self.prompt_token_ids)) / self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens produced by decode steps (all but each row's first) per second of decoding."""
        decoded = sum(max(len(g) - 1, 0) for g in self.generated_token_ids)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


def bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The next power of two >= length (and >= minimum)."""
    return max(minimum, 1 << (max(length, 1) - 1).bit_length())


def prompt_bucket(length: int, chunk: int) -> int:
    """The padded prompt length: a power of two (>= 16) up to one chunk, then whole chunks, so a
    2,050-token prompt pads to 2,304 (chunk 256), not 4,096."""
    short = bucket(length)
    return short if short <= chunk else -(-length // chunk) * chunk


@dataclass(frozen=True)
class Layout:
    """How a batch of token sequences is laid out for the model."""

    rows: int  # real rows
    batch: int  # rows, padded to a multiple of the batch axis
    prompt_len: int  # the padded prompt length (prompt_bucket)
    max_len: int  # cache slots: the prompt, then room for the new tokens
    chunk: int  # prefill chunk width; divides prompt_len

    def host_inputs(self, sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, ...]:
        """ids and positions (batch, prompt_len) and key validity (batch, max_len): the sequences
        left-padded, rows beyond `rows` repeating the first (their output is dropped)."""
        padded = list(sequences) + [sequences[0]] * (self.batch - self.rows)
        ids = np.full((self.batch, self.prompt_len), pad_token_id, np.int32)
        key_valid = np.zeros((self.batch, self.max_len), bool)
        for row, tokens in enumerate(padded):
            ids[row, self.prompt_len - len(tokens) :] = tokens
            key_valid[row, self.prompt_len - len(tokens) : self.prompt_len] = True
        positions = np.asarray(positions_from_mask(key_valid[:, : self.prompt_len]))
        return ids, positions, key_valid


def widened(state):
    """Model state with its floating-point arrays in float32 (exactly: bfloat16 widens without rounding)."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)


def _abstract(x):
    """The shape, dtype and placement of an argument: all a compile needs."""
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


@dataclass
class Generator:
    """Generation for a (possibly sharded) model. `mesh` is None for a single device.

    `exact`: every step computes in float32 on the model's own weights (cast inside the compiled
    step, so no float32 copy stays resident): the audit's oracle of a bfloat16 run."""

    model: Qwen2ForCausalLM
    eos_token_ids: Sequence[int]
    pad_token_id: int
    mesh: Mesh | None = None
    prefill_chunk: int = PREFILL_CHUNK
    exact: bool = False
    compiled: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.prefill_chunk < MIN_PROMPT_BUCKET:
            raise GenerationError(f"the prefill chunk must be >= {MIN_PROMPT_BUCKET} tokens, got {self.prefill_chunk}")
        self.graphdef, self.state = nnx.split(self.model)
        self.dtype = self.model.model.norm.weight.dtype

    @property
    def batch_multiple(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[BATCH_AXIS]

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights over all devices (padding and replicas included)."""
        leaves = jax.tree.leaves(self.state)
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves) * self.devices

    def peak_bytes(self, layout: Layout, kinds: Sequence[str] = ("prefill", "decode")) -> int:
        """The most memory one of the steps `kinds` of `layout` holds at once, over all devices:
        arguments (weights, cache, inputs), outputs that do not reuse a donated buffer, and the
        compiler's temporaries, from the compiled programs' own memory analysis (compiling them
        needs no weights: a generator of `abstract_model` answers before anything is loaded)."""
        peak = 0
        for kind in kinds:
            memory = self._compiled(kind, layout).memory_analysis()
            step = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes
            )
            peak = max(peak, step)
        return peak * self.devices

    def layout(self, lengths: Sequence[int], max_new_tokens: int) -> Layout:
        """The layout of sequences of `lengths` followed by `max_new_tokens`; refuses what the
        model's context cannot hold."""
        if not lengths or min(lengths) < 1:
            raise GenerationError("every prompt needs at least one token")
        if max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        longest, context = max(lengths), self.model.cfg.max_position_embeddings
        if longest + max_new_tokens > context:
            raise GenerationError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's context of "
                f"{context} tokens: shorten the prompt or lower max_new_tokens"
            )
        prompt_len = prompt_bucket(longest, self.prefill_chunk)
        max_len = prompt_len + (bucket(max_new_tokens, minimum=1) if max_new_tokens else 0)
        batch = -(-len(lengths) // self.batch_multiple) * self.batch_multiple
        return Layout(len(lengths), batch, prompt_len, max_len, min(prompt_len, self.prefill_chunk))

    # --- placement -------------------------------------------------------------------------

    def _sharding(self, spec: P) -> jax.sharding.Sharding:
        if self.mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return NamedSharding(self.mesh, spec)

    def _rows(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Host arrays (every process holds the same) placed with rows split over `batch`; each
        process contributes only its own devices' rows, so this also works across processes."""
        placed = []
        for x in arrays:
            sharding = self._sharding(P(BATCH_AXIS, *[None] * (x.ndim - 1)))
            placed.append(jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index]))
        return tuple(placed)

    def _row_spec(self, shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self._sharding(P(BATCH_AXIS, *[None] * (len(shape) - 1))))

    def _in_mesh(self, thunk: Callable):
        if self.mesh is None:
            return thunk()
        with jax.set_mesh(self.mesh):
            return thunk()

    def _cache_maker(self, layout: Layout) -> Callable:
        cfg, dtype = self.model.cfg, jnp.float32 if self.exact else self.dtype
        sharding = None if self.mesh is None else NamedSharding(self.mesh, logical_to_spec(KV_AXES))
        return jax.jit(lambda: init_cache(cfg, layout.batch, layout.max_len, dtype), out_shardings=sharding)

    def _empty_cache(self, layout: Layout):
        return self._in_mesh(self._cache_maker(layout))

    # --- the compiled steps ----------------------------------------------------------------

    def _merge(self, state) -> Qwen2ForCausalLM:
        return nnx.merge(self.graphdef, widened(state) if self.exact else state)

    def _prefill(self, greedy, state, ids, positions, key_valid, cache, start, key, sampling):
        """One chunk of the prompt into the cache; the next token from the chunk's last column,
        sampled (when not greedy) with the seed's key folded with 0, and its record."""
        model = self._merge(state)
        hidden, cache = model.model(ids, positions, key_valid, cache, start)
        logits = model.logits(hidden[:, -1:])[:, 0]  # (B, V): only the column that predicts
        return *next_token(logits, greedy, jax.random.fold_in(key, 0), sampling), cache

    def _decode(self, greedy, state, tokens, positions, key_valid, cache, start, key, sampling):
        """One token per row at cache slot `start` (after the prompt, so never 0: the key folded
        with it differs from prefill's), and its record."""
        model = self._merge(state)
        key_valid = key_valid.at[:, start].set(True)
        hidden, cache = model.model(tokens[:, None], positions[:, None], key_valid, cache, start)
        logits = model.logits(hidden)[:, 0]
        tokens, record = next_token(logits, greedy, jax.random.fold_in(key, start), sampling)
        return tokens, record, positions + 1, key_valid, cache

    def _score(self, state, ids, positions, key_valid, cache, start):
        """One chunk of a teacher-forced sequence into the cache, with the logits of every column."""
        model = self._merge(state)
        hidden, cache = model.model(ids, positions, key_valid, cache, start)
        return model.logits(hidden), cache  # (B, chunk, V)

    def _steps(self, layout: Layout, greedy: bool) -> dict[str, tuple]:
        """For each step: its function, abstract arguments, donated and static argument numbers."""
        batch, chunk = layout.batch, layout.chunk
        state = jax.tree.map(_abstract, self.state)
        cache = jax.eval_shape(self._cache_maker(layout))
        key_valid = self._row_spec((batch, layout.max_len), jnp.bool_)
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        sampling = (jax.ShapeDtypeStruct((), jnp.float32), scalar, jax.ShapeDtypeStruct((), jnp.float32))
        ids = self._row_spec((batch, chunk), jnp.int32)
        tokens = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=self._sharding(P()))
        positions = self._row_spec((batch,), jnp.int32)
        return {
            "prefill": (self._prefill, (greedy, state, ids, ids, key_valid, cache, scalar, key, sampling), (5,), (0,)),
            "decode": (
                self._decode,
                (greedy, state, tokens, positions, key_valid, cache, scalar, key, sampling),
                (4, 5),
                (0,),
            ),
            "score": (self._score, (state, ids, ids, key_valid, cache, scalar), (4,), ()),
        }

    def _lower(self, fn: Callable, args: tuple, donate: tuple[int, ...], static: tuple[int, ...]):
        jitted = jax.jit(fn, donate_argnums=donate, static_argnums=static)
        return self._in_mesh(lambda: jitted.lower(*args))

    def _compiled(self, kind: str, layout: Layout, greedy: bool = True):
        """The step `kind` for `layout`, compiled once per shapes; `compiled` counts what was built."""
        key = (kind, greedy if kind != "score" else None, layout.batch, layout.chunk, layout.max_len)
        if key not in self.compiled:
            self.compiled[key] = self._lower(*self._steps(layout, greedy)[kind]).compile()
        return self.compiled[key]

    def lower(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingConfig = SamplingConfig()):
        """The steps a request runs, lowered but not compiled (what a compile-only device is
        checked with): {"prefill": ..., "decode": ...}, and "score", the teacher-forcing chunk of
        the same prompts."""
        layout = self.layout([len(p) for p in prompts], max_new_tokens)
        steps = self._steps(layout, sampling.greedy)
        lowered = {kind: self._lower(*steps[kind]) for kind in ("prefill", "decode")}
        lowered["score"] = self._lower(*self._steps(self.layout([len(p) for p in prompts], 0), True)["score"])
        return lowered

    # --- requests --------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = SamplingConfig(),
        on_tokens: Callable[[list[int | None]], None] | None = None,
        stop: Callable[[list[int]], bool] | None = None,
    ) -> GenerationResult:
        """Generate for each prompt until it emits an EOS id, `stop(its tokens so far)` is true
        (e.g. a stop string appeared in its text), or it has `max_new_tokens` tokens.

        `on_tokens` receives, after every step, each row's new token (None for finished rows).
        """
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        layout = self.layout([len(p) for p in prompts], max_new_tokens)
        ids, positions, key_valid = layout.host_inputs(prompts, self.pad_token_id)
        seed_key = jax.random.key(sampling.seed)
        params = (jnp.float32(sampling.temperature or 1.0), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))

        started = time.perf_counter()
        prefill = self._compiled("prefill", layout, sampling.greedy)
        decode = self._compiled("decode", layout, sampling.greedy)
        compile_seconds = time.perf_counter() - started

        started = time.perf_counter()
        cache = self._empty_cache(layout)
        (valid,) = self._rows(key_valid)
        for start in range(0, layout.prompt_len, layout.chunk):
            window = slice(start, start + layout.chunk)
            chunk_ids, chunk_positions = self._rows(ids[:, window], positions[:, window])
            tokens, record, cache = prefill(
                self.state, chunk_ids, chunk_positions, valid, cache, np.int32(start), seed_key, params
            )
        tokens.block_until_ready()
        prefill_seconds = time.perf_counter() - started

        generated: list[list[int]] = [[] for _ in range(layout.rows)]
        records: list[list[np.ndarray]] = [[] for _ in range(layout.rows)]
        finished = [False] * layout.rows
        eos = set(self.eos_token_ids)
        (next_positions,) = self._rows(positions[:, -1] + 1)
        started = time.perf_counter()
        for step in range(max_new_tokens):
            # The next step is dispatched before this one's tokens are read: the device computes
            # while the host checks EOS and stop strings (one step is wasted when all rows end).
            following = None
            if step + 1 < max_new_tokens:
                slot = np.int32(layout.prompt_len + step)
                following = decode(self.state, tokens, next_positions, valid, cache, slot, seed_key, params)
                _, _, next_positions, valid, cache = following
            tokens_host, record_host = np.asarray(tokens), np.asarray(record)
            emitted: list[int | None] = []
            for row in range(layout.rows):
                if finished[row]:
                    emitted.append(None)
                    continue
                token = int(tokens_host[row])
                generated[row].append(token)
                records[row].append(record_host[row])
                finished[row] = token in eos or (stop is not None and stop(generated[row]))
                emitted.append(token)
            if on_tokens is not None:
                on_tokens(emitted)
            if all(finished) or following is None:
                break
            tokens, record = following[:2]
        decode_seconds = time.perf_counter() - started
        top = [np.stack(r) if r else np.zeros((0, TOP_K, 2), np.float32) for r in records]
        prompt_ids = [list(p) for p in prompts]
        return GenerationResult(prompt_ids, generated, prefill_seconds, decode_seconds, compile_seconds, top)

    def score(self, sequences: Sequence[Sequence[int]], first: Sequence[int]) -> list[np.ndarray]:
        """Teacher forcing: each whole sequence through the model at once (a chunked prefill), and
        for row i the logits that predict its tokens first[i] .. len-1, as (len - first[i], V)
        arrays of the model dtype. Chunks holding none of those columns compute no logits."""
        if any(not 1 <= f < len(s) for s, f in zip(sequences, first, strict=True)):
            raise GenerationError("score needs 1 <= first < len(sequence) for every sequence")
        layout = self.layout([len(s) for s in sequences], 0)
        ids, positions, key_valid = layout.host_inputs(sequences, self.pad_token_id)
        # Column c of the padded row predicts token c + 1; row i's token j sits at column offset_i + j.
        offsets = [layout.prompt_len - len(s) for s in sequences]
        wanted_from = min(o + f - 1 for o, f in zip(offsets, first, strict=True))
        prefill = self._compiled("prefill", layout)
        score = self._compiled("score", layout)
        cache = self._empty_cache(layout)
        (valid,) = self._rows(key_valid)
        columns = []
        for start in range(0, layout.prompt_len, layout.chunk):
            window = slice(start, start + layout.chunk)
            chunk = (*self._rows(ids[:, window], positions[:, window]), valid, cache, jnp.int32(start))
            if start + layout.chunk <= wanted_from:
                _, _, cache = prefill(
                    self.state, *chunk, jax.random.key(0), (jnp.float32(1), jnp.int32(0), jnp.float32(1))
                )
            else:
                logits, cache = score(self.state, *chunk)
                columns.append((start, np.asarray(logits)))
        stacked = np.concatenate([logits for _, logits in columns], axis=1)
        base = columns[0][0]
        return [
            stacked[i, o + f - 1 - base : o + len(s) - 1 - base]
            for i, (s, f, o) in enumerate(zip(sequences, first, offsets, strict=True))
        ]
