# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Generation for a batch of prompts: `Generator`, the engine (engine.py) with its two schedules,
one static batch (here: every row decodes until the longest ends) or continuous batching
(continuous.py: a finished row takes the next prompt at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from tests.jax.models.qwen2_5.batching import BatchLayout, GenerationError
from tests.jax.models.qwen2_5.continuous import ContinuousRun
from tests.jax.models.qwen2_5.engine import Engine, GenerationResult, RowEnd
from tests.jax.models.qwen2_5.sampling import GREEDY, TOP_K, SamplingConfig, draws
from tests.jax.models.qwen2_5.steps import DECODE


class _Rows:
    """Each real row's tokens and step records so far, and whether it has finished."""

    def __init__(self, rows: int, ends: RowEnd) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.records: list[list[np.ndarray]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.ends = ends

    def take(self, tokens: np.ndarray, record: np.ndarray) -> list[int | None]:
        """One step's tokens (B,) and records (B, TOP_K, 2): each unfinished row's new token, None for finished rows."""
        emitted: list[int | None] = []
        for row, done in enumerate(self.finished):
            token = None if done else int(tokens[row])
            if token is not None:
                self.tokens[row].append(token)
                self.records[row].append(record[row])
                self.finished[row] = self.ends(self.tokens[row])
            emitted.append(token)
        return emitted

    def stacked_records(self) -> list[np.ndarray]:
        return [
            np.stack(r) if r else np.zeros((0, TOP_K, 2), np.float32)
            for r in self.records
        ]


class Generator(Engine):
    """The engine and its schedules: `generate` (one static batch) and `generate_continuous`."""

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

        rows = _Rows(layout.rows, self.row_end(max_new_tokens, stop))
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
