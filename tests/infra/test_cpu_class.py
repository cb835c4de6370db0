# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The host class and the AVX2-only emulation, each emulation in its own process (it changes
process-wide state that cannot be undone). The processes run JAX on the CPU only: a TT plugin
loaded into them would share, and at exit delete, the compile-only descriptor the plugin keeps
in $TMPDIR for the test processes that use it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.infra.cpu_class import (
    AVX2_ONLY,
    BF16_NATIVE,
    ISA_FLAGS,
    bfloat16_instructions,
    host_class,
)

# Emulate, then report what jaxlib's kernels will see and compute a bfloat16 product that YNNPACK
# runs (two rows, weight as the left operand), to compare with the native result.
_EMULATED = """
import json, sys
import numpy as np
emulate = sys.argv[1] == "avx2"
if emulate:
    from tests.infra import cpu_class
    cpu_class.emulate_avx2_only()
from tests.infra.devices import configure_jax
configure_jax(cpu_devices=1)  # CPU only: an installed TT plugin stays out of this process
import jax, jax.numpy as jnp
w = jnp.asarray(np.random.default_rng(0).standard_normal((512, 256)), jnp.bfloat16)
x = jnp.asarray(np.random.default_rng(1).standard_normal((256, 2)), jnp.bfloat16)
y = jax.jit(lambda w, x: jnp.dot(w, x, preferred_element_type=jnp.float32))(w, x)
report = {"y": np.asarray(y).ravel().tolist()}
if emulate:
    table = cpu_class._jaxlib_isa_table()
    fields = {"avx2": cpu_class._ISA_AVX2, "avx512f": cpu_class._ISA_AVX512F, "amx_bf16": cpu_class._ISA_AMX_BF16}
    report |= {name: table[field] for name, field in fields.items()} | {"class": cpu_class.host_class()["class"]}
print(json.dumps(report))
"""


def _run(cpu: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _EMULATED, cpu],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_host_class_names_the_flags_and_a_class():
    host = host_class()
    assert set(host["flags"]) == set(ISA_FLAGS)
    assert host["class"] in (AVX2_ONLY, BF16_NATIVE) and host["emulated"] is False
    assert (host["class"] == BF16_NATIVE) == (
        host["flags"]["avx512_bf16"] or host["flags"]["amx_bf16"]
    )


@pytest.mark.nightly  # the benchmarks' emulation, checked in a process of its own
@pytest.mark.skipif(
    not host_class()["flags"]["avx2"],
    reason="the host has no AVX2 to emulate an AVX2 CPU with",
)
def test_avx2_emulation_hides_avx512_and_amx_and_keeps_results():
    emulated, native = _run("avx2"), _run("native")
    assert (emulated["avx2"], emulated["avx512f"], emulated["amx_bf16"]) == (1, 0, 0)
    assert emulated["class"] == AVX2_ONLY
    # Other kernels sum in another order; float32 sums of 256 exact bfloat16 products agree to
    # float32 rounding.
    assert emulated["y"] == pytest.approx(native["y"], rel=1e-5, abs=1e-5)


def test_bfloat16_instructions_are_those_xla_may_use():
    amx = frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
    assert bfloat16_instructions(amx, "") == {"avx512_bf16", "amx_bf16"}
    assert bfloat16_instructions(amx - {"amx_bf16"}, "") == {"avx512_bf16"}
    assert bfloat16_instructions(frozenset({"avx2", "fma"}), "") == frozenset()
    capped = "--xla_cpu_enable_fast_math=false --xla_cpu_max_isa=AVX2"
    assert bfloat16_instructions(amx, capped) == frozenset()
    # the last flag wins
    assert bfloat16_instructions(amx, f"{capped} --xla_cpu_max_isa=AVX512") == {
        "avx512_bf16",
        "amx_bf16",
    }
