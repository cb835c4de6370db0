# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The allocator setting of a CPU process (host_memory): in a fresh process set up by
configure_jax, as every entry point sets it up, a large intermediate is not faulted in afresh on
every call; with glibc's default it is. A fresh process, because a thread keeps the arena it
first allocated from: a pytest process that has run other work may hold arenas made before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.infra import host_memory

# Attention scores of one prefill layer of Qwen2.5-0.5B (14 heads x 1,024 tokens x 1,280 slots,
# float32: 70 MiB, over every glibc mapping threshold), a new buffer per call. Each call's faults
# are counted on its own: one arena fragments, so a kept heap still grows by a whole buffer on a
# few calls before it settles (on a Zen 4 EPYC 0-5 of 40 calls after warm-up, at most 6 of 300;
# on CI's Zen 2 one of 5), while the default faults in the buffer on every call. The median of
# 31 calls parts the two unless 16 of them grow the heap.
_MEASURE = """
import json, resource, statistics
from tests.infra import host_memory
from tests.infra.devices import configure_jax
configure_jax(cpu_devices=1)
kept = host_memory.keep_freed_memory()  # as configure_jax's call: False only off glibc
import jax, jax.numpy as jnp
q, k = jnp.ones((14 * 1024, 64)), jnp.ones((1280, 64))
scores = jax.jit(lambda q, k: q @ k.T)
for _ in range(3):
    jax.block_until_ready(scores(q, k))
faults = []
for _ in range(31):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(scores(q, k))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
pages = q.shape[0] * k.shape[0] * 4 / resource.getpagesize()
print(json.dumps({"kept": kept, "median_faults": statistics.median(faults), "pages": pages}))
"""


def _faults_per_call(environment: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_a_large_intermediate_is_reused_not_faulted_in_again():
    """Kept memory faults in almost none of the buffer's pages on a typical call; glibc's default
    (its arena limit set in the environment, which configure_jax leaves alone) faults in every one
    of them on every call. A tenth and a half of the pages part the two medians."""
    env = {k: v for k, v in os.environ.items() if k not in host_memory.ENVIRONMENT}
    kept = _faults_per_call(env)
    if not kept["kept"]:
        pytest.skip("the C library is not glibc")
    default = _faults_per_call({**env, "MALLOC_ARENA_MAX": "16"})
    assert kept["median_faults"] < kept["pages"] / 10, kept
    assert default["median_faults"] > default["pages"] / 2, default


def test_an_allocator_setting_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not host_memory.keep_freed_memory()
