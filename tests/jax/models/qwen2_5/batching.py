# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""How a batch of token sequences is laid out for the compiled steps, and which requests are refused.

Prompts are left-padded to a length bucket, so every row's last prompt token sits in the same
column and every row writes the same cache slot at each step: one scalar write index. Prefill runs
in chunks of at most `prefill_chunk` tokens, each attending to the cache, so its temporary memory
(a chunk's attention scores against the cache, B x heads x chunk x S) grows with the prompt, not
with its square. One compiled program per (batch, chunk, cache length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tests.jax.models.qwen2_5.model import positions_from_mask

MIN_PROMPT_BUCKET = 16
# Tokens per prefill chunk: large enough that a chunk's GEMMs run at full speed, small enough
# that its attention scores (B x heads x chunk x S float32) stay far below the weights.
PREFILL_CHUNK = 256
# Cache slots come in whole multiples of TT's 32-row tile: its decode attention kernel takes only
# whole tiles of slots (measured: 48 slots fall back to generic attention, 64 do not). Slots past
# the tokens are masked, so their number changes no result.
SLOT_MULTIPLE = 32


class GenerationError(ValueError):
    """A generation request that cannot be served (empty prompt, too long for the context, ...)."""


def bucket(length: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """The next power of two >= length (and >= minimum)."""
    return max(minimum, 1 << (max(length, 1) - 1).bit_length())


def prompt_bucket(length: int, chunk: int) -> int:
    """The padded prompt length: a power of two (>= 16) up to one chunk, then whole chunks, so a
    2,050-token prompt pads to 2,304 (chunk 256), not 4,096."""
    short = bucket(length)
    return short if short <= chunk else -(-length // chunk) * chunk


@dataclass(frozen=True)
class BatchLayout:
    """How a batch of token sequences is laid out for the model."""

    rows: int  # real rows
    batch: int  # rows, padded to a multiple of the batch axis
    prompt_len: int  # the padded prompt length (prompt_bucket)
    max_len: int  # cache slots: the prompt, room for the new tokens, a multiple of SLOT_MULTIPLE
    chunk: int  # prefill chunk width; whole chunks end at prompt_len (one_row: after a narrower one)
    groups: int = 1  # row groups: the mesh's batch axis, which splits the rows

    @property
    def chunk_spans(self) -> list[tuple[int, int]]:
        """(start, width) of each prefill chunk: whole chunks, after one narrower chunk where
        `chunk` does not divide prompt_len (one_row). The narrow one comes first, so it holds the
        left padding and the chunks after it are whole."""
        narrow = self.prompt_len % self.chunk
        whole = [
            (start, self.chunk) for start in range(narrow, self.prompt_len, self.chunk)
        ]
        return ([(0, narrow)] if narrow else []) + whole

    def chunk_of(self, width: int) -> BatchLayout:
        """This layout with chunks of `width`: the shapes of the program that runs one of its spans."""
        return replace(self, chunk=width)

    def holds(self, other: BatchLayout) -> bool:
        """Whether `other`'s sequences fit this layout's rows, prompt columns and slots."""
        return (
            self.batch >= other.batch
            and self.prompt_len >= other.prompt_len
            and self.max_len - self.prompt_len >= other.max_len - other.prompt_len
        )

    def one_row(self, length: int) -> BatchLayout:
        """One sequence of `length` tokens prefilled alone for this batch's cache (continuous
        batching): left-padded to a whole tile of SLOT_MULTIPLE only, not to whole chunks (a GSM8K
        prompt would compute far more pads). Its chunks hold as many rows per device as the batch's
        own chunks (a group's rows times their width), so they need the same memory; a GSM8K prompt
        is then one chunk. Its widths take at most chunk / SLOT_MULTIPLE shapes.
        """
        tiles = -(-length // SLOT_MULTIPLE) * SLOT_MULTIPLE
        prompt_len = min(tiles, self.prompt_len)
        chunk = min(prompt_len, self.chunk * (self.batch // self.groups))
        # One row is not split: every group computes it.
        return replace(
            self, rows=1, batch=1, prompt_len=prompt_len, chunk=chunk, groups=1
        )

    def host_inputs(
        self, sequences: Sequence[Sequence[int]], pad_token_id: int
    ) -> tuple[np.ndarray, ...]:
        """ids and positions (batch, prompt_len) and key validity (batch, max_len): the sequences
        left-padded, rows beyond `rows` repeating the first (their output is dropped).
        """
        padded = list(sequences) + [sequences[0]] * (self.batch - self.rows)
        ids = np.full((self.batch, self.prompt_len), pad_token_id, np.int32)
        key_valid = np.zeros((self.batch, self.max_len), bool)
        for row, tokens in enumerate(padded):
            ids[row, self.prompt_len - len(tokens) :] = tokens
            key_valid[row, self.prompt_len - len(tokens) : self.prompt_len] = True
        positions = np.asarray(positions_from_mask(key_valid[:, : self.prompt_len]))
        return ids, positions, key_valid


def layout_for(
    lengths: Sequence[int],
    max_new_tokens: int,
    *,
    context: int,
    chunk: int,
    batch_multiple: int,
    rows: int | None = None,
) -> BatchLayout:
    """The layout of sequences of `lengths` followed by `max_new_tokens`; refuses what a context of
    `context` tokens cannot hold. One row per sequence, or `rows` rows that the sequences take in
    turn (continuous batching); rows are padded to a multiple of `batch_multiple` (the mesh's
    batch axis).
    """
    if not lengths or min(lengths) < 1:
        raise GenerationError("every prompt needs at least one token")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    longest = max(lengths)
    if longest + max_new_tokens > context:
        raise GenerationError(
            f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's context of "
            f"{context} tokens: shorten the prompt or lower max_new_tokens"
        )
    prompt_len = prompt_bucket(longest, chunk)
    max_len = prompt_len + (bucket(max_new_tokens, minimum=1) if max_new_tokens else 0)
    max_len = -(-max_len // SLOT_MULTIPLE) * SLOT_MULTIPLE
    if rows is not None and rows < 1:
        raise GenerationError(f"rows must be >= 1, got {rows}")
    real = len(lengths) if rows is None else min(rows, len(lengths))
    batch = -(-real // batch_multiple) * batch_multiple
    return BatchLayout(
        real, batch, prompt_len, max_len, min(prompt_len, chunk), batch_multiple
    )
