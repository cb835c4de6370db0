# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The host allocator of a CPU process: freed memory is kept and reused, not returned to the OS.

XLA:CPU's matrix library (YNNPACK) allocates each large intermediate with malloc on every call: a
prefill chunk's attention scores and probabilities (heads x chunk x cache slots, float32) are tens
of MiB per layer. glibc maps an allocation that large freshly (over its 32 MiB mapping threshold,
or over 64 MiB in a worker thread's own arena) and unmaps it when freed, so every call faults in
every page again: the kernel zeroes gigabytes per prompt. With one arena (the main one, which
grows without mappings), no mappings and no trimming, a freed intermediate is reused by the next.

The cost is that the process keeps its high-water mark: memory it freed stays resident for its
own reuse, and one arena may fragment: small allocations carve into a freed intermediate, so the
heap grows by a whole one now and then before it settles (the loader's peak memory test bounds
what that costs for loading). The steps' memory check (steps.CompiledSteps.peak_bytes) counts
XLA's buffers, not these intermediates, so a model keeps each one small (attention over blocks
of queries, say): where they are hundreds of MiB, the process outgrows that estimate, with
glibc's default too and more so with this setting (README "Performance"). The setting is
process-wide and reaches threads started after it: an entry point makes it in a fresh process
(configure_jax), before XLA starts its threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Where glibc's malloc is configured in the environment, that wins.
ENVIRONMENT = (
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)
# mallopt takes an int: the largest trim threshold it can be given (2 GiB of free top of heap).
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (one arena, no mappings, no trimming) ->
    whether it now does. False where the C library is not glibc or the environment configures
    glibc's malloc itself. Call it before the threads that allocate (XLA's pool) start: a thread
    keeps the arena it first allocated from."""
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(
        libc.mallopt(option, value)
        for option, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _NEVER_TRIM),
        )
    )
