"""The tie-aware audit: its noise bound measured on the correct mesh, its verdicts on correct
meshes (float32 identical, bfloat16 equivalent: every divergence a rounding tie), and on meshes
with an injected fault (different: real divergences at large margins, logits out of tolerance).

The checkpoint is the tiny 28:4 preset with Qwen2.5-7B's depth (28 layers): rounding
differences between a mesh and one device accumulate with depth, and its random weights put
many logits within a rounding step of each other, so bfloat16 near-ties are frequent.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from tests.infra.comparison import compare
from tests.jax.models.qwen2_5.audit import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    LOGITS_TOLERANCE,
    NOISE_ULPS,
    PER_LOGIT_ULPS,
    Comparison,
    SequenceAudit,
    divergences,
    mcnemar_p_value,
    ulp,
)
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.faults import AppendedPadding, ShiftedKVHeads, shard_with_fault
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint
from tests.jax.models.qwen2_5.loader import load_model

pytestmark = [pytest.mark.model_test, pytest.mark.push]

DEEP = TINY_PRESETS["gqa28x4"].replace(num_layers=28)
RNG = np.random.default_rng(1)
PROMPTS = [RNG.integers(3, DEEP.vocab_size, n).tolist() for n in (5, 39, 12, 27, 8, 33, 20, 16)]
NEW_TOKENS = 32
SEQUENCES = [RNG.integers(3, DEEP.vocab_size, n).tolist() for n in (64, 50, 37, 64, 20, 55, 41, 60)]
NEEDS_DATA = "measures outputs: a compile-only device holds none (its steps are compiled in test_generation)"


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory):
    return build_checkpoint(DEEP, tmp_path_factory.mktemp("deep_28x4"))


@pytest.fixture(scope="module")
def generators(deep_checkpoint):
    """(dtype, mesh or None) -> a generator of the deep checkpoint, on one device or the mesh."""

    @functools.cache
    def get(dtype: str, mesh=None) -> Generator:
        return Generator(load_model(deep_checkpoint, getattr(jnp, dtype), mesh=mesh), (), 0, mesh)

    return get


def compare_generations(single: Generator, mesh: Generator, dtype: str) -> Comparison:
    reference = single.generate(PROMPTS, NEW_TOKENS).generated_token_ids
    candidate = mesh.generate(PROMPTS, NEW_TOKENS).generated_token_ids
    comparison = Comparison(dtype)
    for i, prompt in enumerate(PROMPTS):
        comparison.audit(i, single, mesh, prompt, reference[i], candidate[i])
    return comparison


@pytest.mark.tensor_parallel
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_noise_bound_covers_the_correct_mesh(dtype, mesh, dut, generators, record_property):
    """The measurement behind NOISE_ULPS: teacher-forced, the correct mesh moves each of a row's
    top-5 logits by at most PER_LOGIT_ULPS (in ulps at the row's largest of them), every argmax it
    flips is a rounding tie, and its logits meet LOGITS_TOLERANCE."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    first = [len(s) // 2 for s in SEQUENCES]
    golden = np.concatenate(generators(dtype).score(SEQUENCES, first)).astype(np.float64)
    actual = np.concatenate(generators(dtype, mesh).score(SEQUENCES, first)).astype(np.float64)
    top = np.argsort(-golden, axis=-1)[:, :5]
    golden_top, actual_top = np.take_along_axis(golden, top, -1), np.take_along_axis(actual, top, -1)
    moved = np.abs(golden_top - actual_top) / ulp(np.abs(golden_top).max(-1, keepdims=True), dtype)
    flips = divergences(golden, actual, golden.argmax(-1), actual.argmax(-1), dtype)
    logits = compare(golden, actual, LOGITS_TOLERANCE[dtype])
    record_property("max_ulps_moved", float(moved.max()))
    record_property("flips", len(flips))
    record_property("logits", str(logits))
    assert moved.max() <= PER_LOGIT_ULPS[dtype]
    assert all(d.rounding_tie for d in flips), [d for d in flips if not d.rounding_tie]
    assert logits.passed, str(logits)


@pytest.mark.tensor_parallel
@pytest.mark.parametrize(("dtype", "verdict"), [("float32", IDENTICAL), ("bfloat16", EQUIVALENT)])
def test_correct_mesh_is_identical_in_float32_and_equivalent_in_bfloat16(
    dtype, verdict, mesh, dut, generators, record_property
):
    """Greedy generations on the mesh against one device. float32: the same tokens. bfloat16:
    several prompts part at near-ties (their margins are a rounding step or two), and the audit
    finds every divergence a rounding tie and the teacher-forced logits within tolerance."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    comparison = compare_generations(generators(dtype), generators(dtype, mesh), dtype)
    record_property("comparison", comparison.describe())
    assert comparison.verdict == verdict, comparison.describe()
    assert comparison.summary()["real_divergences"] == 0


@pytest.mark.tensor_parallel
@pytest.mark.parametrize("fault", [AppendedPadding, ShiftedKVHeads], ids=["appended_padding", "shifted_kv_heads"])
def test_an_injected_fault_is_different_with_real_divergences(fault, dut, generators, record_property):
    """A query head reading the wrong KV head, on 1x8 in bfloat16: real divergences at margins many
    times the noise bound, and teacher-forced logits far out of tolerance."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    from tests.infra.mesh import make_mesh

    mesh = make_mesh("1x8", dut.devices)
    single = generators("bfloat16")
    faulty = Generator(shard_with_fault(single.model, mesh, fault), (), 0, mesh)
    comparison = compare_generations(single, faulty, "bfloat16")
    summary = comparison.summary()
    record_property("comparison", comparison.describe())
    assert comparison.verdict == DIFFERENT
    assert summary["real_divergences"] > summary["rounding_ties"]
    assert summary["logits_out_of_tolerance"] == summary["prompts_with_different_tokens"]
    real = [d for a in comparison.differing.values() for d in a.divergences if not d.rounding_tie]
    assert max(d.single_margin / d.bound for d in real) > 4


def test_ulp_is_the_spacing_of_the_dtype():
    assert ulp(20.0, "bfloat16") == 0.125  # the step of bfloat16 logits near 20
    assert ulp(1.0, "bfloat16") == 2**-7 and ulp(-1.5, "bfloat16") == 2**-7
    assert ulp(1.0, "float32") == 2**-23
    assert NOISE_ULPS == {"bfloat16": 16.0, "float32": 128.0}


def test_divergences_are_ties_only_within_the_bound_on_both_sides():
    step = 2**-7  # bfloat16 spacing between 1 and 2
    golden = np.array([[1.5, 1.5 - step, 0.0], [1.5, 1.5 - 20 * step, 0.0], [1.5, 1.5 - step, 0.0]])
    actual = np.array([[1.5 - step, 1.5, 0.0], [1.5 - step, 1.5, 0.0], [1.0, 1.5, 0.0]])
    chosen, others = golden.argmax(-1), actual.argmax(-1)
    tie, single_side, mesh_side = divergences(golden, actual, chosen, others, "bfloat16")
    assert tie.rounding_tie and tie.single_margin == step and tie.mesh_margin == step
    assert not single_side.rounding_tie  # the single device preferred its token by 20 steps
    assert not mesh_side.rounding_tie and mesh_side.mesh_margin == 0.5  # the mesh moved its logit by 64 steps
    assert divergences(golden, golden, chosen, chosen, "bfloat16") == []


def test_mcnemar_exact_p_values():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p_value(9, 1) == pytest.approx(2 * 11 / 1024)


def test_verdicts_and_a_resumed_audit():
    tie = {
        "position": 3,
        "chosen": 7,
        "other": 9,
        "single_margin": 0.0078125,
        "mesh_margin": 0.0,
        "bound": 0.125,
        "rounding_tie": True,
    }
    record = {
        "first_divergence": 3,
        "divergences": [tie],
        "logits_pcc": 0.99998,
        "logits_max_abs_diff": 0.03,
        "logits_within_tolerance": True,
    }
    comparison = Comparison("bfloat16", {0: None, 1: None})
    assert comparison.verdict == IDENTICAL
    comparison.audits[2] = SequenceAudit.from_dict(record)
    assert comparison.verdict == EQUIVALENT and comparison.audits[2].to_dict()["rounding_ties"] == 1
    assert SequenceAudit.from_dict(comparison.audits[2].to_dict()) == comparison.audits[2]
    comparison.audits[3] = SequenceAudit.from_dict({**record, "logits_within_tolerance": False})
    assert comparison.verdict == DIFFERENT
    summary = comparison.summary()
    assert summary["prompts_with_different_tokens"] == [2, 3] and summary["logits_out_of_tolerance"] == [3]
    assert "2 of 4 prompts differ in tokens; 2 rounding ties, 0 real divergences" in comparison.describe()
