# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Continuous batching: a stream of prompts through a fixed number of cache rows.

Static batches decode until their longest row ends while finished rows compute padding. Here a
row that finishes takes the next prompt at once: the prompt is prefilled alone (a one-row
prefill against a one-row cache), inserted into that row of the batch's cache, and the batch's
decode step goes on with every row at its own position and cache slot. So two compiled programs
serve the whole stream, whatever its lengths: the one-row prefill chunk and the decode step,
plus the insert. Each row's computation is its own (rows share no arithmetic, and the programs'
shapes are the stream's), so a prompt's tokens do not depend on which rows it ran beside or when.

A run advances one decode step per `step()`, so a caller can drive two runs in lockstep (GSM8K's
compare mode) and keep what finished as it finishes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import numpy as np

from tests.jax.models.qwen2_5.batching import BatchLayout, GenerationError
from tests.jax.models.qwen2_5.engine import Engine, utilisation
from tests.jax.models.qwen2_5.sampling import GREEDY, SamplingConfig, draws
from tests.jax.models.qwen2_5.steps import DECODE, INSERT


@dataclass
class Finished:
    """One prompt's completion: its index in the stream, tokens and step records."""

    index: int
    tokens: list[int]
    # (len(tokens), TOP_K, 2): the top logits of the step that chose each
    records: np.ndarray


@dataclass
class _Row:
    index: int  # the prompt this row serves
    slot: int  # the cache slot its next input token is written at
    position: int  # that token's position
    tokens: list[int] = field(default_factory=list)
    records: list[np.ndarray] = field(default_factory=list)


class ContinuousRun:
    """`prompts` through `rows` rows of one cache (rows padded to the mesh's batch axis), greedy or
    sampled; a prompt ends at an EOS id, when `stop(its tokens)` is true, or at `max_new_tokens`
    (one for all, or one per prompt). `layout`: the batch's layout when it must not depend on
    which prompts this run holds (a resumed job keeps the shapes, and so the arithmetic, of the
    whole job's); by default the prompts' own. `warm`: run every program once before the first
    prompt (`_warm`), for a long job. `generator`: the engine (engine.py) it runs on."""

    def __init__(
        self,
        generator: Engine,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        rows: int,
        sampling: SamplingConfig = GREEDY,
        stop: Callable[[list[int]], bool] | None = None,
        layout: BatchLayout | None = None,
        warm: bool = False,
    ) -> None:
        limits = (
            [max_new_tokens] * len(prompts)
            if isinstance(max_new_tokens, int)
            else list(max_new_tokens)
        )
        if len(limits) != len(prompts) or min(limits, default=1) < 1:
            raise GenerationError(
                f"max_new_tokens must be >= 1 for each of the {len(prompts)} prompts, got {max_new_tokens}"
            )
        self.gen, self.prompts, self.limits = generator, prompts, limits
        own = generator.layout([len(p) for p in prompts], max(limits), rows)
        if layout is not None and not layout.holds(own):
            raise GenerationError(
                f"the layout {layout} cannot hold these prompts ({own})"
            )
        self.layout = own if layout is None else layout
        self.sampling = sampling
        self.ends = generator.row_end(max(limits), stop)
        self.key, self.params = jax.random.key(sampling.seed), sampling.params()
        self.prefill_seconds = self.decode_seconds = 0.0
        self.steps = 0  # decode steps run, each computing layout.batch rows
        self.queue = deque(range(len(prompts)))
        self.rows: list[_Row | None] = [None] * self.layout.batch
        self.done: list[Finished] = []
        self.reported = 0  # how many of `done` collect() has returned
        self.cache = generator.steps.empty_cache(self.layout)
        (self.valid,) = generator.placement.rows(
            np.zeros((self.layout.batch, self.layout.max_len), bool)
        )
        # Set-up: compiling, and with `warm` every program's first run (not counted as work).
        self.compile_seconds = self._compile(warm)
        for row in range(self.layout.batch):
            self._admit(row)

    def _compile(self, warm: bool) -> float:
        started = time.perf_counter()
        steps, greedy = self.gen.steps, self.sampling.greedy
        # What Generator.prefill runs for the prompts: one program per chunk width and place.
        one_rows = {self.layout.one_row(len(p)) for p in self.prompts}
        for row in one_rows:
            steps.prefill_chunks(row, greedy)
        self.decode = steps.compiled(DECODE, self.layout, greedy, row_slots=True)
        self.insert = steps.compiled(INSERT, self.layout)
        if warm:
            self._warm(one_rows)
        return time.perf_counter() - started

    def _warm(self, one_rows: set[BatchLayout]) -> None:
        """Every program run once on padding before any prompt (each one-row prefill layout in
        `one_rows`, the insert, the decode step), its output dropped. XLA:CPU's matrix
        library (YNNPACK) builds each of a program's pipelines on the program's first run, a cost
        of set-up like compiling (README "Performance"); a long job pays it here, not inside its
        first problems. The padding goes into the empty cache's row 0 and a decode step writes
        every row's last slot: each row is replaced whole when it takes a prompt (`insert`), and
        idle rows' outputs are dropped."""
        for one_row in sorted(one_rows, key=lambda r: r.prompt_len):
            pad = [self.gen.pad_token_id] * one_row.prompt_len
            *_, valid, cache = self.gen.prefill(one_row, [pad], self.sampling)
            self.cache, self.valid = self.insert(
                self.cache, self.valid, cache, valid, np.int32(0)
            )
        self.step()  # every row idle: no token kept, no prompt admitted
        self.steps, self.decode_seconds = 0, 0.0

    @property
    def finished(self) -> bool:
        return not self.queue and all(r is None for r in self.rows)

    def _admit(self, row: int) -> None:
        """The next prompts into `row` until one does not end with its first token (or none is left)."""
        self.rows[row] = None
        while self.queue:
            index = self.queue.popleft()
            started = time.perf_counter()
            token, record, prompt_len = self._prefill(row, index)
            self.prefill_seconds += time.perf_counter() - started
            state = _Row(index, slot=prompt_len, position=len(self.prompts[index]))
            if not self._take(state, token, record):
                self.rows[row] = state
                return

    def _prefill(self, row: int, index: int) -> tuple[int, np.ndarray, int]:
        """Prompt `index` alone into a one-row cache (Generator.prefill), then into row `row` of the
        batch's -> its first token, that step's record, and its padded length (its first decode slot).
        """
        layout = self.layout.one_row(len(self.prompts[index]))
        tokens, record, _, valid, cache = self.gen.prefill(
            layout, [self.prompts[index]], self.sampling, [index]
        )
        self.cache, self.valid = self.insert(
            self.cache, self.valid, cache, valid, np.int32(row)
        )
        return int(np.asarray(tokens)[0]), np.asarray(record)[0], layout.prompt_len

    def _take(self, state: _Row, token: int, record: np.ndarray) -> bool:
        """`token` onto the row's completion; True (and the prompt finished) when it ends there."""
        state.tokens.append(token)
        state.records.append(record)
        ended = self.ends(state.tokens, self.limits[state.index])
        if ended:
            self.done.append(
                Finished(state.index, state.tokens, np.stack(state.records))
            )
        return ended

    def _inputs(self) -> tuple[jax.Array, ...]:
        """The decode step's tokens, positions, write slots and draws of every row (an idle row repeats
        its last slot of the cache: it is overwritten when the row takes a prompt)."""
        rows, idle_slot = self.rows, self.layout.max_len - 1
        tokens = np.array([r.tokens[-1] if r else 0 for r in rows], np.int32)
        positions = np.array([r.position if r else 0 for r in rows], np.int32)
        slots = np.array([r.slot if r else idle_slot for r in rows], np.int32)
        drawn = draws(
            [r.index if r else 0 for r in rows],
            [len(r.tokens) if r else 0 for r in rows],
            self.layout.batch,
        )
        place = self.gen.placement
        tokens = jax.device_put(tokens, place.sharding(jax.sharding.PartitionSpec()))
        return (tokens, *place.rows(positions, slots), drawn)

    def step(self) -> None:
        """One decode step of every row, then a new prompt into each row that finished."""
        started = time.perf_counter()
        tokens, positions, slots, drawn = self._inputs()
        out, record, _, self.valid, self.cache = self.decode(
            self.gen.state,
            tokens,
            positions,
            self.valid,
            self.cache,
            slots,
            self.key,
            drawn,
            self.params,
        )
        out, record = np.asarray(out), np.asarray(record)
        self.decode_seconds += time.perf_counter() - started
        self.steps += 1
        for row, state in enumerate(self.rows):
            if state is None:
                continue
            state.slot, state.position = state.slot + 1, state.position + 1
            if self._take(state, int(out[row]), record[row]):
                self._admit(row)

    def collect(self) -> list[Finished]:
        """The prompts finished since the last call (one can end at its prefill's token)."""
        finished, self.reported = self.done[self.reported :], len(self.done)
        return finished

    def run(self, on_step: Callable[[], None] = lambda: None) -> list[Finished]:
        """Every prompt to its end -> their completions in prompt order."""
        while not self.finished:
            self.step()
            on_step()
        return sorted(self.done, key=lambda f: f.index)

    @property
    def utilisation(self) -> float:
        """Tokens kept from decode steps over the row-steps they computed."""
        return utilisation(
            [f.tokens for f in self.done], self.steps * self.layout.batch
        )
