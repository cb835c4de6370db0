# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The engine of generation, for one model on one device or a mesh: its compiled steps
(steps.py), where its arrays live (placement.py), prompts laid out as batching.py says and
prefilled chunk by chunk, and the rule that ends a row. The schedules run over it: static batches
(generation.py) and continuous batching (continuous.py).
"""

from __future__ import annotations

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
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.placement import Placement
from tests.jax.models.qwen2_5.sampling import GREEDY, SamplingConfig, draws
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


def decoded(generated: Sequence[Sequence[int]]) -> int:
    """Tokens that decode steps produced: all but each completion's first (its prefill's)."""
    return sum(max(len(g) - 1, 0) for g in generated)


def utilisation(generated: Sequence[Sequence[int]], row_steps: int) -> float:
    """Tokens kept from decode steps over the row-steps computed (finished and pad rows waste them)."""
    return decoded(generated) / row_steps if row_steps else 1.0


@dataclass(frozen=True)
class RowEnd:
    """When a row's completion ends: at an EOS id, when `stop(its tokens)` holds (a stop string in
    its text), or at its `limit` of new tokens."""

    eos: frozenset[int]
    stop: Callable[[list[int]], bool] | None
    limit: int

    def __call__(self, tokens: list[int], limit: int | None = None) -> bool:
        """Whether `tokens` (the completion so far) ends here; `limit` overrides the row's."""
        full = len(tokens) >= (self.limit if limit is None else limit)
        return full or tokens[-1] in self.eos or bool(self.stop and self.stop(tokens))


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
        return utilisation(self.generated_token_ids, self.decode_row_steps)

    @property
    def prefill_tokens_per_second(self) -> float:
        return sum(map(len, self.prompt_token_ids)) / self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens produced by decode steps (all but each row's first) per second of decoding."""
        tokens = decoded(self.generated_token_ids)
        return tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class Engine:
    """What every schedule of generation runs on, for a (possibly sharded) model: its state, compiled
    steps, placement, and prefill. `mesh` is None for a single device. `exact`: the
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

    def row_end(
        self, limit: int, stop: Callable[[list[int]], bool] | None = None
    ) -> RowEnd:
        """The end of a row of this model's completions: its EOS ids, `stop`, `limit` new tokens."""
        return RowEnd(frozenset(self.eos_token_ids), stop, limit)

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
