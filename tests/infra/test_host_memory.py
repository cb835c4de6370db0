# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The allocator setting of a CPU process (host_memory): in this very process, set up by
configure_jax as every entry point sets it up, a large intermediate is not faulted in afresh on
every call."""

from __future__ import annotations

import resource

import jax
import jax.numpy as jnp
import pytest

from tests.infra import host_memory

PAGE = resource.getpagesize()


def _faults_per_call(fn, *args, warm: int = 3, calls: int = 5) -> float:
    # The first calls grow the heap to what a call and the freeing of the last one's output hold.
    for _ in range(warm):
        jax.block_until_ready(fn(*args))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def test_a_large_intermediate_is_reused_not_faulted_in_again():
    """Attention scores of one prefill layer of Qwen2.5-0.5B (14 heads x 1,024 tokens x 1,280
    slots, float32: 70 MiB, over every glibc mapping threshold), a new buffer per call. glibc's
    default maps each call's afresh and faults in every one of its pages; kept memory, once the
    heap has grown, faults in none, so a tenth of the pages is a bound the default cannot meet.
    """
    if not host_memory.keep_freed_memory():
        pytest.skip(
            "the C library is not glibc, or the environment configures its malloc"
        )
    q, k = jnp.ones((14 * 1024, 64)), jnp.ones((1280, 64))
    scores_pages = q.shape[0] * k.shape[0] * 4 / PAGE
    faults = _faults_per_call(jax.jit(lambda q, k: q @ k.T), q, k)
    assert faults < scores_pages / 10, (faults, scores_pages)


def test_an_allocator_setting_in_the_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not host_memory.keep_freed_memory()
