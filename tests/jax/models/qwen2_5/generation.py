"""Batched autoregressive generation with a static-shape KV cache, on one device or a mesh.

Prompts are left-padded to a length bucket, so every row's last prompt token sits in the
same column and every row writes the same cache slot at each step: one scalar write index,
one compiled prefill per (batch, prompt bucket, cache length) and one compiled decode step
per (batch, cache length). The cache is split like the KV heads (`KV_AXES`): a device holds
the keys and values of exactly the heads it computes, rows split over `batch`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tests.infra.mesh import BATCH_AXIS
from tests.jax.models.qwen2_5.model import KV_AXES, Qwen2ForCausalLM, init_cache, positions_from_mask
from tests.jax.models.qwen2_5.partitioning import constrain, logical_to_spec

MIN_PROMPT_BUCKET = 16


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
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")

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


def _replicated(tokens: jax.Array) -> jax.Array:
    """The chosen tokens on every device, so that every process can read all of them."""
    return constrain(tokens, (None,))


def next_token(logits: jax.Array, greedy: bool, key: jax.Array, sampling: tuple) -> jax.Array:
    """(B, V) logits of the model dtype -> (B,) int32."""
    logits = logits.astype(jnp.float32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32) if greedy else sample(logits, key, *sampling)


@dataclass
class GenerationResult:
    prompt_token_ids: list[list[int]]
    generated_token_ids: list[list[int]]
    prefill_seconds: float
    decode_seconds: float
    compile_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return sum(map(len, self.prompt_token_ids)) / self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens produced by decode steps (all but each row's first) per second of decoding."""
        decoded = sum(max(len(g) - 1, 0) for g in self.generated_token_ids)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


def bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The next power of two >= length (and >= minimum): the shapes prompts are padded to."""
    return max(minimum, 1 << (max(length, 1) - 1).bit_length())


@dataclass
class Generator:
    """Generation for a (possibly sharded) model. `mesh` is None for a single device."""

    model: Qwen2ForCausalLM
    eos_token_ids: Sequence[int]
    pad_token_id: int
    mesh: Mesh | None = None
    compiled: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.graphdef, self.state = nnx.split(self.model)
        self.dtype = self.model.model.norm.weight.dtype

    @property
    def batch_multiple(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[BATCH_AXIS]

    def _replicated_sharding(self) -> jax.sharding.Sharding:
        if self.mesh is None:
            return jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return NamedSharding(self.mesh, P())

    def _rows(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        """Host arrays (every process holds the same) placed with rows split over `batch`; each
        process contributes only its own devices' rows, so this also works across processes."""
        if self.mesh is None:
            return tuple(jax.device_put(x) for x in arrays)
        sharding = NamedSharding(self.mesh, P(BATCH_AXIS, None))
        return tuple(jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index]) for x in arrays)

    def _compile(self, kind: str, fn: Callable, args: tuple, donate: tuple[int, ...], static: tuple[int, ...] = ()):
        """AOT-compile `fn` once per argument shapes; `compiled` counts exactly what was built."""
        shapes = tuple(
            (x.shape, str(x.dtype)) if hasattr(x, "shape") else x for x in jax.tree.leaves(args[len(static) :])
        )
        key = (kind, args[: len(static)], shapes)
        if key not in self.compiled:
            jitted = jax.jit(fn, donate_argnums=donate, static_argnums=static)
            self.compiled[key] = self._in_mesh(lambda: jitted.lower(*args).compile())
        return self.compiled[key]

    def _in_mesh(self, thunk: Callable):
        if self.mesh is None:
            return thunk()
        with jax.set_mesh(self.mesh):
            return thunk()

    def _prefill(self, greedy, state, ids, positions, key_valid, cache, key, sampling):
        model = nnx.merge(self.graphdef, state)
        logits, cache = model.step(ids, positions, key_valid, cache, 0)
        return _replicated(next_token(logits[:, -1], greedy, key, sampling)), cache

    def _decode(self, greedy, state, tokens, positions, key_valid, cache, start, key, sampling):
        model = nnx.merge(self.graphdef, state)
        key_valid = key_valid.at[:, start].set(True)
        logits, cache = model.step(tokens[:, None], positions[:, None], key_valid, cache, start)
        return _replicated(next_token(logits[:, 0], greedy, key, sampling)), positions + 1, key_valid, cache

    def _empty_cache(self, batch: int, max_len: int):
        cfg = self.model.cfg
        sharding = None if self.mesh is None else NamedSharding(self.mesh, logical_to_spec(KV_AXES))
        make = jax.jit(lambda: init_cache(cfg, batch, max_len, self.dtype), out_shardings=sharding)
        return self._in_mesh(make)

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
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GenerationError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        longest = max(map(len, prompts))
        context = self.model.cfg.max_position_embeddings
        if longest + max_new_tokens > context:
            raise GenerationError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's context of "
                f"{context} tokens: shorten the prompt or lower max_new_tokens"
            )
        rows = len(prompts)
        batch = -(-rows // self.batch_multiple) * self.batch_multiple
        # Rows that only fill the batch axis repeat the first prompt; their output is dropped.
        padded = list(prompts) + [prompts[0]] * (batch - rows)
        prompt_len = bucket(longest)
        max_len = prompt_len + bucket(max_new_tokens, minimum=1)

        ids = np.full((batch, prompt_len), self.pad_token_id, np.int32)
        key_valid = np.zeros((batch, max_len), bool)
        for row, prompt in enumerate(padded):
            ids[row, prompt_len - len(prompt) :] = prompt
            key_valid[row, prompt_len - len(prompt) : prompt_len] = True
        positions = np.asarray(positions_from_mask(key_valid[:, :prompt_len]))
        ids, positions, key_valid = self._rows(ids, positions, key_valid)
        seed_key = jax.random.key(sampling.seed)
        params = (jnp.float32(sampling.temperature or 1.0), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
        greedy = sampling.greedy

        started = time.perf_counter()
        cache = self._empty_cache(batch, max_len)
        prefill_args = (greedy, self.state, ids, positions, key_valid, cache, jax.random.fold_in(seed_key, 0), params)
        prefill = self._compile("prefill", self._prefill, prefill_args, donate=(5,), static=(0,))
        # The decode step takes the tokens as prefill returns them: on every device.
        tokens_like = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=self._replicated_sharding())
        decode_args = (
            greedy,
            self.state,
            tokens_like,
            positions[:, -1],
            key_valid,
            cache,
            jnp.int32(prompt_len),
            seed_key,
            params,
        )
        decode = self._compile("decode", self._decode, decode_args, donate=(4, 5), static=(0,))
        compile_seconds = time.perf_counter() - started

        started = time.perf_counter()
        tokens, cache = prefill(*prefill_args[1:])
        tokens_host = np.asarray(tokens)
        prefill_seconds = time.perf_counter() - started

        generated: list[list[int]] = [[] for _ in range(rows)]
        finished = [False] * rows
        eos = set(self.eos_token_ids)
        positions = positions[:, -1] + 1
        started = time.perf_counter()
        for step in range(max_new_tokens):
            if step:
                tokens, positions, key_valid, cache = decode(
                    self.state,
                    tokens,
                    positions,
                    key_valid,
                    cache,
                    jnp.int32(prompt_len + step - 1),
                    jax.random.fold_in(seed_key, step),
                    params,
                )
                tokens_host = np.asarray(tokens)
            emitted: list[int | None] = []
            for row in range(rows):
                if finished[row]:
                    emitted.append(None)
                    continue
                token = int(tokens_host[row])
                generated[row].append(token)
                finished[row] = token in eos or (stop is not None and stop(generated[row]))
                emitted.append(token)
            if on_tokens is not None:
                on_tokens(emitted)
            if all(finished):
                break
        decode_seconds = time.perf_counter() - started
        return GenerationResult([list(p) for p in prompts], generated, prefill_seconds, decode_seconds, compile_seconds)
