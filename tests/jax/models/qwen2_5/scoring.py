# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Teacher forcing: whole sequences through the model at once, and the logits that predict their tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tests.jax.models.qwen2_5.batching import GenerationError
from tests.jax.models.qwen2_5.engine import Engine
from tests.jax.models.qwen2_5.steps import FILL, SCORE


def teacher_forced_logits(
    generator: Engine, sequences: Sequence[Sequence[int]], first: Sequence[int]
) -> list[np.ndarray]:
    """Each whole sequence through the model at once (a chunked prefill), and for row i the logits
    that predict its tokens first[i] .. len-1, as (len - first[i], V) arrays of the model dtype
    (float32 for an exact generator). Chunks holding none of those columns compute no logits.
    """
    if any(not 1 <= f < len(s) for s, f in zip(sequences, first, strict=True)):
        raise GenerationError(
            "score needs 1 <= first < len(sequence) for every sequence"
        )
    layout = generator.layout([len(s) for s in sequences], 0)
    ids, positions, key_valid = layout.host_inputs(sequences, generator.pad_token_id)
    # Column c of the padded row predicts token c + 1; row i's token j sits at column offset_i + j.
    offsets = [layout.prompt_len - len(s) for s in sequences]
    wanted_from = min(o + f - 1 for o, f in zip(offsets, first, strict=True))
    steps, place = generator.steps, generator.placement
    fill, score = steps.compiled(FILL, layout), steps.compiled(SCORE, layout)
    cache = steps.empty_cache(layout)
    (valid,) = place.rows(key_valid)
    columns = []
    for start, width in layout.chunk_spans:  # whole chunks: the batch's own layout
        window = slice(start, start + width)
        chunk = (
            *place.rows(ids[:, window], positions[:, window]),
            valid,
            cache,
            np.int32(start),
        )
        if start + width <= wanted_from:
            cache = fill(generator.state, *chunk)
        else:
            logits, cache = score(generator.state, *chunk)
            columns.append((start, np.asarray(logits)))
    stacked = np.concatenate([logits for _, logits in columns], axis=1)
    base = columns[0][0]
    return [
        stacked[i, o + f - 1 - base : o + len(s) - 1 - base]
        for i, (s, f, o) in enumerate(zip(sequences, first, offsets, strict=True))
    ]
