# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""What the CPU kernels buy, against the plain golden in the same run: batch-1 decode of the
trained demo model, medians of alternating fresh-process runs (speed.py), host class recorded.

    pytest --cpu-kernels -m benchmark tests/jax/models/qwen2_5/cpu_acceleration
"""

from __future__ import annotations

import pytest

from tests.jax.infra.cpu_class import host_class
from tests.jax.models.qwen2_5.cpu_acceleration.streaming_matmul import runs_faster_here
from tests.jax.models.qwen2_5.speed import alternating, each

pytestmark = [
    pytest.mark.benchmark,
    pytest.mark.skipif(
        not runs_faster_here(), reason="the CPU kernels are not used on this CPU"
    ),
]
# The least a kernel must buy to be kept (issue 42): 20% of batch-1 decode or of the GSM8K job.
KEEP = 1.2


def test_bfloat16_batch_1_decode_against_the_plain_golden(
    smollm2, benchmark, record_property
):
    key = "tokens_per_second"
    sides = {"plain": (), "cpu_kernels": ("--cpu-kernels",)}
    request = ("decode", smollm2, "bfloat16", 1)
    rate, runs = benchmark.pedantic(lambda: alternating(key, sides, *request), rounds=1)
    ratio = rate["cpu_kernels"] / rate["plain"]
    host = host_class()
    notes = {label: each(r, key) for label, r in runs.items()}
    benchmark.extra_info.update({"ratio": ratio, "runs": notes, "host": host})
    record_property("host_class", f"{host['class']} ({host['cpu']})")
    record_property("ratio", ratio)
    assert ratio >= KEEP, (rate, notes)
