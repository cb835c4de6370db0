# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Batched autoregressive generation with a static-shape KV cache, on one device or a mesh: the
host loop over the compiled steps (steps.py), with prompts laid out as batching.py says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from tests.jax.models.qwen2_5.batching import (
    MIN_PROMPT_BUCKET,
    PREFILL_CHUNK,
    BatchLayout,
    GenerationError,
    layout_for,
)
from tests.jax.models.qwen2_5.continuous import ContinuousRun
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.placement import Placement
from tests.jax.models.qwen2_5.sampling import GREEDY, TOP_K, SamplingConfig, draws
from tests.jax.models.qwen2_5.steps import (
    DECODE,
    DECODE_ROWS,
    INSERT,
    NEXT_PREFILL,
    ONE_ROW_PREFILL,
    PREFILL,
    SCORE,
    CompiledSteps,
)


@dataclass
class GenerationResult:
    prompt_token_ids: list[list[int]]
    generated_token_ids: list[list[int]]
    prefill_seconds: float
    decode_seconds: float
    compile_seconds: float
    # Per row, (generated, TOP_K, 2) float32: the top logits and ids of the step that chose each token.
    top_logits: list[np.ndarray] = field(default_factory=list, repr=False)
    decode_row_steps: int = 0  # rows computed by decode steps, kept or not

    @property
    def utilisation(self) -> float:
        """Tokens kept from decode steps over the row-steps computed (finished and pad rows waste them)."""
        decoded = sum(max(len(g) - 1, 0) for g in self.generated_token_ids)
        return decoded / self.decode_row_steps if self.decode_row_steps else 1.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return sum(map(len, self.prompt_token_ids)) / self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens produced by decode steps (all but each row's first) per second of decoding."""
        decoded = sum(max(len(g) - 1, 0) for g in self.generated_token_ids)
        return decoded / self.decode_seconds if self.decode_seconds > 0 else 0.0


class _Rows:
    """Each real row's tokens and step records so far, and whether it has finished."""

    def __init__(
        self, rows: int, eos: set[int], stop: Callable[[list[int]], bool] | None
    ) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.records: list[list[np.ndarray]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.eos, self.stop = eos, stop

    def take(self, tokens: np.ndarray, record: np.ndarray) -> list[int | None]:
        """One step's tokens (B,) and records (B, TOP_K, 2): each unfinished row's new token, None for finished rows."""
        emitted: list[int | None] = []
        for row, done in enumerate(self.finished):
            token = None if done else int(tokens[row])
            if token is not None:
                self.tokens[row].append(token)
                self.records[row].append(record[row])
                self.finished[row] = token in self.eos or (
                    self.stop is not None and self.stop(self.tokens[row])
                )
            emitted.append(token)
        return emitted

    def stacked_records(self) -> list[np.ndarray]:
        return [
            np.stack(r) if r else np.zeros((0, TOP_K, 2), np.float32)
            for r in self.records
        ]


@dataclass
class Generator:
    """Generation for a (possibly sharded) model. `mesh` is None for a single device. `exact`: the
    steps compute in float32 (CompiledSteps); `steps`: compiled steps to reuse, e.g. those of a
    generator of the same model's shape-only weights."""

    model: Qwen2ForCausalLM
    eos_token_ids: Sequence[int]
    pad_token_id: int
    mesh: Mesh | None = None
    prefill_chunk: int = PREFILL_CHUNK
    exact: bool = False
    steps: CompiledSteps | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.prefill_chunk < MIN_PROMPT_BUCKET:
            raise GenerationError(
                f"the prefill chunk must be >= {MIN_PROMPT_BUCKET} tokens, got {self.prefill_chunk}"
            )
        self.placement = Placement(self.mesh)
        self.state = nnx.state(self.model)
        if self.steps is None:
            self.steps = CompiledSteps(self.model, self.placement, self.exact)
        elif (self.steps.exact, self.steps.placement) != (self.exact, self.placement):
            raise ValueError(
                "reused steps were compiled for another placement or precision"
            )

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights over all devices (padding and replicas included), copies too."""
        return self.steps.weight_bytes

    def layout(
        self, lengths: Sequence[int], max_new_tokens: int, rows: int | None = None
    ) -> BatchLayout:
        """The layout of sequences of `lengths` followed by `max_new_tokens`, one row each or
        `rows` rows taken in turn (batching.layout_for)."""
        context, multiple = (
            self.model.cfg.max_position_embeddings,
            self.placement.batch_multiple,
        )
        return layout_for(
            lengths,
            max_new_tokens,
            context=context,
            chunk=self.prefill_chunk,
            batch_multiple=multiple,
            rows=rows,
        )

    def lower(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
    ) -> dict[str, jax.stages.Lowered]:
        """The steps a request runs, lowered but not compiled (what a compile-only device is checked
        with): prefill (a prompt's first chunk, and a chunk after it, which a longer prompt runs)
        and decode; the same prompts' continuous-batching steps (the decode step with rows at
        their own slots, one prompt's prefill and its insert into the batch's cache); and score,
        the teacher-forcing chunk of the same prompts.
        """
        lengths, greedy = [len(p) for p in prompts], sampling.greedy
        layout = self.layout(lengths, max_new_tokens)
        lowered = {
            PREFILL: self.steps.lower(PREFILL, layout, greedy, first=True),
            NEXT_PREFILL: self.steps.lower(PREFILL, layout, greedy),
            DECODE: self.steps.lower(DECODE, layout, greedy),
        }
        lowered[DECODE_ROWS] = self.steps.lower(DECODE, layout, greedy, row_slots=True)
        lowered[ONE_ROW_PREFILL] = self.steps.lower(
            PREFILL, layout.one_row(max(lengths)), greedy, first=True
        )
        lowered[INSERT] = self.steps.lower(INSERT, layout)
        lowered[SCORE] = self.steps.lower(SCORE, self.layout(lengths, 0))
        return lowered

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
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
        started = time.perf_counter()
        self.steps.prefill_chunks(layout, sampling.greedy)
        self.steps.compiled(DECODE, layout, sampling.greedy)
        compile_seconds = time.perf_counter() - started

        started = time.perf_counter()
        decoding = self.prefill(layout, prompts, sampling)
        decoding[0].block_until_ready()
        prefill_seconds = time.perf_counter() - started

        rows = _Rows(layout.rows, set(self.eos_token_ids), stop)
        started = time.perf_counter()
        steps = self._decode(
            layout, decoding, max_new_tokens, sampling, rows, on_tokens
        )
        decode_seconds = time.perf_counter() - started
        prompt_ids = [list(p) for p in prompts]
        timings = (prefill_seconds, decode_seconds, compile_seconds)
        return GenerationResult(
            prompt_ids,
            rows.tokens,
            *timings,
            rows.stacked_records(),
            steps * layout.batch,
        )

    def generate_continuous(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        rows: int,
        sampling: SamplingConfig = GREEDY,
        on_step: Callable[[], None] = lambda: None,
        stop: Callable[[list[int]], bool] | None = None,
    ) -> GenerationResult:
        """As `generate`, with the prompts taking `rows` rows in turn (continuous.py): a row that
        finishes takes the next prompt while the others decode on. `on_step` runs after every
        decode step."""
        run = ContinuousRun(self, prompts, max_new_tokens, rows, sampling, stop)
        done = run.run(on_step)
        return GenerationResult(
            [list(p) for p in prompts],
            [f.tokens for f in done],
            run.prefill_seconds,
            run.decode_seconds,
            run.compile_seconds,
            [f.records for f in done],
            run.steps * run.layout.batch,
        )

    def prefill(
        self,
        layout: BatchLayout,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        indices: Sequence[int] | None = None,
    ) -> tuple:
        """The prompts chunk by chunk into a new cache -> the decode loop's first inputs: (tokens,
        record, next positions, key validity, cache). `indices`: the prompts' places in their
        request, which key a sampled draw (by default 0, 1, ...)."""
        ids, positions, key_valid = layout.host_inputs(prompts, self.pad_token_id)
        key, params = jax.random.key(sampling.seed), sampling.params()
        indices = range(len(prompts)) if indices is None else indices
        first = draws(indices, [0] * len(prompts), layout.batch)
        cache = self.steps.empty_cache(layout)
        (valid,) = self.placement.rows(key_valid)
        for start, width, prefill in self.steps.prefill_chunks(layout, sampling.greedy):
            chunk = self.placement.rows(
                ids[:, start : start + width], positions[:, start : start + width]
            )
            tokens, record, cache = prefill(
                self.state,
                *chunk,
                valid,
                cache,
                np.int32(start),
                key,
                first,
                params,
            )
        (next_positions,) = self.placement.rows(positions[:, -1] + 1)
        return tokens, record, next_positions, valid, cache

    def _decode(
        self,
        layout: BatchLayout,
        decoding: tuple,
        max_new_tokens: int,
        sampling: SamplingConfig,
        rows: _Rows,
        on_tokens: Callable[[list[int | None]], None] | None,
    ) -> int:
        """Decode steps until every row finished or has `max_new_tokens` -> the steps run. The next
        step is dispatched before this one's tokens are read: the device computes while the host
        checks EOS and stop strings (one step is wasted when all rows end)."""
        decode = self.steps.compiled(DECODE, layout, sampling.greedy)
        key, params = jax.random.key(sampling.seed), sampling.params()
        tokens, record, positions, valid, cache = decoding
        prompts = range(layout.rows)
        ran = 0
        for step in range(max_new_tokens):
            following = None
            if step + 1 < max_new_tokens:
                ran += 1
                slot = np.int32(layout.prompt_len + step)
                drawn = draws(prompts, [step + 1] * layout.rows, layout.batch)
                following = decode(
                    self.state,
                    tokens,
                    positions,
                    valid,
                    cache,
                    slot,
                    key,
                    drawn,
                    params,
                )
                _, _, positions, valid, cache = following
            emitted = rows.take(np.asarray(tokens), np.asarray(record))
            if on_tokens is not None:
                on_tokens(emitted)
            if all(rows.finished) or following is None:
                return ran
            tokens, record = following[:2]
