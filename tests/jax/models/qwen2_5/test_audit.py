# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The audit against the float32 oracle: its rules on constructed logits, its verdicts on correct
meshes (float32 identical, bfloat16 identical or equivalent: every divergence a rounding tie) and
on the fault catalog (different).

The checkpoint is the tiny 28:4 preset with 8 layers (28, Qwen2.5-7B's depth, in the nightly) and
biases drawn large, as Qwen2.5's own q/k biases are: rounding differences between a mesh and one
device grow with depth, and its random weights put many logits within a rounding step of each
other, so bfloat16 near-ties are frequent and the tie rule is exercised on every run.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from tests.jax.infra.mesh import make_mesh
from tests.jax.models.qwen2_5.audit import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    TIE_FACTOR,
    Generated,
    MeshAudit,
    SequenceAudit,
    errors,
    judge,
    mcnemar_p_value,
    oracle_of,
    top_of,
    ulp,
)
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.faults import CATALOG, WEIGHTS_ONLY, bfloat16_softmax
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.model import attention_bias
from tests.jax.models.qwen2_5.sampling import TOP_K
from tests.jax.models.qwen2_5.scoring import teacher_forced_logits

pytestmark = [pytest.mark.model_test]
PUSH = pytest.mark.push

PROMPT_LENGTHS = (5, 39, 12, 27, 8, 33, 20, 16)
NEW_TOKENS = 32
NEEDS_DATA = "measures outputs: a compile-only device holds none (its steps are compiled in test_generation)"
# Faults whose effect on this checkpoint's logits is below bfloat16's resolution (the mesh's error
# against the oracle within ~1.4x the single device's, README "What the audit catches"): the
# float32 audit catches them; the bfloat16 one cannot tell them from rounding.
BELOW_BFLOAT16 = (
    "q_bias_dropped_on_one_device",
    "bfloat16_softmax",
    "rms_norm_eps_changed",
)


class Audited:
    """A checkpoint, its single-device generations, oracle and correct mesh generators per dtype,
    each made once."""

    def __init__(self, path, cfg, prompts: list[list[int]] | None = None):
        """`prompts` default to random token ids of PROMPT_LENGTHS (a random checkpoint's)."""
        self.path, self.cfg = path, cfg
        rng = np.random.default_rng(1)
        random = [rng.integers(3, cfg.vocab_size, n).tolist() for n in PROMPT_LENGTHS]
        self.prompts = random if prompts is None else prompts
        self._made: dict = {}

    def _once(self, key: tuple, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def single(self, dtype: str) -> Generator:
        return self._once(
            ("single", dtype),
            lambda: Generator(load_model(self.path, getattr(jnp, dtype)), (), 0),
        )

    def oracle(self, dtype: str) -> Generator:
        return self._once(("oracle", dtype), lambda: oracle_of(self.single(dtype)))

    def reference(self, dtype: str) -> list[Generated]:
        def make() -> list[Generated]:
            result = self.single(dtype).generate(self.prompts, NEW_TOKENS)
            return [
                Generated(t, top)
                for t, top in zip(
                    result.generated_token_ids, result.top_logits, strict=True
                )
            ]

        return self._once(("reference", dtype), make)

    def correct(self, dtype: str, mesh: Mesh) -> Generator:
        def make() -> Generator:
            return Generator(
                load_model(self.path, getattr(jnp, dtype), mesh=mesh), (), 0, mesh
            )

        return self._once(("correct", dtype, mesh), make)

    def faulty(self, dtype: str, mesh: Mesh, fault: str) -> Generator:
        """The faulty mesh model; one that changes only weights runs the correct one's programs."""
        steps = self.correct(dtype, mesh).steps if fault in WEIGHTS_ONLY else None
        return Generator(
            CATALOG[fault](self.single(dtype).model, mesh), (), 0, mesh, steps=steps
        )

    def audit(self, mesh_generator: Generator, dtype: str) -> MeshAudit:
        result = mesh_generator.generate(self.prompts, NEW_TOKENS)
        theirs = [
            Generated(t, top)
            for t, top in zip(
                result.generated_token_ids, result.top_logits, strict=True
            )
        ]
        audit = MeshAudit(dtype)
        runs = dict(enumerate(self.reference(dtype))), dict(enumerate(theirs))
        audit.audit(
            self.oracle(dtype), mesh_generator, dict(enumerate(self.prompts)), *runs
        )
        return audit


def audited_checkpoint(tmp_path_factory, layers: int) -> Audited:
    cfg = TINY_PRESETS["gqa28x4"].replace(num_layers=layers)
    return Audited(
        build_checkpoint(
            cfg, tmp_path_factory.mktemp(f"audit_{layers}"), bias_scale=1.0
        ),
        cfg,
    )


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Audited:
    return audited_checkpoint(tmp_path_factory, 8)


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> Audited:
    """Qwen2.5-7B's depth: 28 layers."""
    return audited_checkpoint(tmp_path_factory, 28)


def check_correct(
    audited: Audited, mesh: Mesh, dtype: str, record_property
) -> MeshAudit:
    audit = audited.audit(audited.correct(dtype, mesh), dtype)
    record_property("audit", audit.describe())
    assert audit.verdict in (
        (IDENTICAL,) if dtype == "float32" else (IDENTICAL, EQUIVALENT)
    ), audit.describe()
    assert audit.summary()["real_divergences"] == 0
    return audit


def effect_size(audited: Audited, faulty: Generator, dtype: str) -> dict[str, float]:
    """A fault's teacher-forced effect on the logits against the single device: PCC and the
    largest move of a top-5 logit, in ulps of the dtype."""
    sequences = [
        p + r.tokens
        for p, r in zip(audited.prompts, audited.reference(dtype), strict=True)
    ]
    first = [len(p) for p in audited.prompts]
    golden = np.concatenate(
        teacher_forced_logits(audited.single(dtype), sequences, first)
    ).astype(np.float64)
    actual = np.concatenate(teacher_forced_logits(faulty, sequences, first)).astype(
        np.float64
    )
    top = np.argsort(-golden, axis=-1)[:, :5]
    g, a = np.take_along_axis(golden, top, -1), np.take_along_axis(actual, top, -1)
    return {
        "logits_pcc": float(np.corrcoef(golden.ravel(), actual.ravel())[0, 1]),
        "max_ulps_moved": float(
            (np.abs(g - a) / ulp(np.abs(g).max(-1, keepdims=True), dtype)).max()
        ),
    }


def check_fault(
    audited: Audited, dut, dtype: str, fault: str, record_property, with_effect: bool
) -> None:
    mesh = make_mesh("1x8", dut.devices)
    faulty = audited.faulty(dtype, mesh, fault)
    audit = audited.audit(faulty, dtype)
    record_property("audit", audit.describe())
    if with_effect:
        for name, value in effect_size(audited, faulty, dtype).items():
            record_property(name, value)
    assert audit.verdict == DIFFERENT, audit.describe()


@pytest.mark.tensor_parallel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_correct_mesh_is_identical_in_float32_and_equivalent_in_bfloat16(
    dtype, dut, audited, record_property
):
    """Greedy generations on 1x8 against one device. float32: the same tokens. bfloat16: prompts
    part at near-ties, and every divergence is a rounding tie against the oracle."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    check_correct(audited, make_mesh("1x8", dut.devices), dtype, record_property)


@pytest.mark.nightly_unless(fault=("appended_padding", "late_cache_slot_on_one_device"))
@pytest.mark.tensor_parallel
@pytest.mark.parametrize(
    ("dtype", "fault"),
    [("float32", f) for f in CATALOG]
    + [("bfloat16", f) for f in CATALOG if f not in BELOW_BFLOAT16],
)
def test_a_catalog_fault_is_different(dtype, fault, dut, audited, record_property):
    """Each fault of the catalog on 1x8: verdict `different` (real divergences, or a mesh less
    accurate than the single device). The default run has every fault in float32 and the
    decode-path faults in bfloat16 too (the ones only the step records see); the nightly all.
    """
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    check_fault(audited, dut, dtype, fault, record_property, with_effect=False)


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_correct_mesh_at_7b_depth(dtype, mesh, dut, deep, record_property):
    """The same at 28 layers, on every mesh."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    check_correct(deep, mesh, dtype, record_property)


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.parametrize(
    ("dtype", "fault"),
    [("float32", f) for f in CATALOG]
    + [("bfloat16", f) for f in CATALOG if f not in BELOW_BFLOAT16],
)
def test_a_catalog_fault_is_different_at_7b_depth(
    dtype, fault, dut, deep, record_property
):
    """The catalog at 28 layers, each fault's effect size (logits PCC, max ulps moved) recorded."""
    if dut.compile_only:
        pytest.skip(NEEDS_DATA)
    check_fault(deep, dut, dtype, fault, record_property, with_effect=True)


# --- the rules, on constructed logits ------------------------------------------------------------


def run_of(tokens: list[int], logits: np.ndarray) -> Generated:
    return Generated(tokens, top_of(logits))


@PUSH
def test_ulp_is_the_spacing_of_the_dtype():
    assert ulp(20.0, "bfloat16") == 0.125  # the step of bfloat16 logits near 20
    assert ulp(1.0, "bfloat16") == 2**-7 and ulp(-1.5, "bfloat16") == 2**-7
    assert ulp(1.0, "float32") == 2**-23


@PUSH
def test_top_of_orders_equal_values_by_id_as_argmax():
    logits = np.array([[0.0, 2.0, 1.0, 2.0] + [-1.0] * 8])
    top = top_of(logits)
    assert top.shape == (1, TOP_K, 2) and top[0, :3, 1].tolist() == [1, 3, 2]


@PUSH
def test_error_scale_is_the_largest_top_k_error_and_at_least_half_an_ulp():
    oracle = np.zeros((2, 16))
    oracle[:, 0] = 1.5
    exact = top_of(oracle)
    off = exact.copy()
    off[0, 3, 0] += 0.25
    assert errors(off, oracle, "bfloat16")[0] == 0.25
    # exact: the half-ulp floor
    assert errors(exact, oracle, "bfloat16")[1] == 2**-7 / 2


@PUSH
def test_a_divergence_is_a_tie_only_within_twice_the_single_devices_error():
    """Position 0: both runs pick at a near-tie the oracle cannot separate beyond the single
    device's error: a tie. Position 1 (teacher-forced): the mesh prefers a token the oracle puts
    far below: real. A mesh whose logits are off by 8x more than the single device's: less accurate.
    """
    vocab, step = 16, 2**-7
    oracle = np.zeros((2, vocab))
    # the exact answer prefers 1, by one step
    oracle[:, 1], oracle[:, 2] = (
        1.5,
        1.5 - step,
    )
    single_logits = oracle.copy()
    # the single device is off by 2 steps somewhere in its top-k
    single_logits[:, 5] += 2 * step
    mesh_logits = oracle.copy()
    # the mesh ranks 2 first at position 0 (within 2 x E_s of the oracle)
    mesh_logits[0, 2] += 2 * step
    mesh_forced = oracle.copy()
    # and, teacher-forced, 9 at position 1 (oracle: 1.5 below)
    mesh_forced[1, 9] = 1.5 + step
    single, mesh = run_of([1, 1], single_logits), run_of([2, 3], mesh_logits)
    audit = judge(single, mesh, oracle, mesh_forced, "bfloat16")
    tie, real = audit.divergences
    assert (tie.position, tie.chosen, tie.other, tie.rounding_tie) == (0, 1, 2, True)
    assert tie.oracle_margin == step and tie.bound == TIE_FACTOR * 2 * step
    assert (real.position, real.other, real.rounding_tie) == (
        1,
        9,
        False,
    ) and real.oracle_margin == 1.5
    assert audit.first_divergence == 0 and not audit.equivalent

    noisy = mesh_logits + 16 * step * np.sign(
        np.random.default_rng(0).standard_normal(mesh_logits.shape)
    )
    less_accurate = judge(single, run_of([2, 3], noisy), oracle, oracle, "bfloat16")
    assert less_accurate.real_divergences == 0 and not less_accurate.as_accurate


@PUSH
def test_the_bfloat16_softmax_fault_is_rounding_alone():
    """Under the fault a pad query (no visible key) gets uniform weights, as under the model's
    float32 softmax, not NaN: the mask stays finite in bfloat16 and the fault is only rounding.
    """
    visible = jnp.array([[[True, True, False, False], [False] * 4]])  # (1, T=2, S=4)
    bias = attention_bias(visible, jnp.float32)  # (1, 1, 2, 4)
    scores = jnp.asarray(
        np.random.default_rng(0).standard_normal((1, 1, 2, 4)), jnp.float32
    )
    faulty = np.asarray(bfloat16_softmax(scores, bias))
    exact = np.asarray(jax.nn.softmax(scores + bias, axis=-1))
    assert np.isfinite(faulty).all() and (faulty[0, 0, 1] == 0.25).all()
    # A few bfloat16 roundings (2^-8 relative each) on weights of at most 1.
    np.testing.assert_allclose(faulty, exact, atol=2**-5)


@PUSH
def test_mcnemar_exact_p_values():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(3, 3) == 1.0
    assert mcnemar_p_value(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p_value(9, 1) == pytest.approx(2 * 11 / 1024)


@PUSH
def test_verdicts_and_a_resumed_audit():
    tie = {
        "position": 3,
        "chosen": 7,
        "other": 9,
        "oracle_margin": 0.0078125,
        "single_error": 0.03,
        "mesh_error": 0.03,
        "bound": 0.06,
        "rounding_tie": True,
    }
    record = {
        "first_divergence": 3,
        "divergences": [tie],
        "single_error": 0.02,
        "mesh_error": 0.021,
        "positions": 32,
    }
    same = SequenceAudit(None, [], 0.02, 0.03, 32)
    audit = MeshAudit("bfloat16", {0: same, 1: same})
    assert audit.verdict == IDENTICAL
    # The same tokens, logits 3x as far from the oracle: a fault that flipped no token yet.
    far = dataclasses.replace(same, mesh_error=0.06)
    assert MeshAudit("bfloat16", {0: far, 1: far}).verdict == DIFFERENT
    # One token is too few errors for a ratio: judged with the rest, the run is as accurate.
    short = dataclasses.replace(same, mesh_error=0.05, positions=1)
    assert MeshAudit("bfloat16", {0: same, 1: short}).verdict == IDENTICAL
    audit.audits[2] = SequenceAudit.from_dict(record)
    assert (
        audit.verdict == EQUIVALENT and audit.audits[2].to_dict()["rounding_ties"] == 1
    )
    assert SequenceAudit.from_dict(audit.audits[2].to_dict()) == audit.audits[2]
    # 2.5x the single device's
    audit.audits[3] = SequenceAudit.from_dict({**record, "mesh_error": 0.05})
    assert audit.verdict == DIFFERENT
    summary = audit.summary()
    assert summary["prompts_with_different_tokens"] == [2, 3] and summary[
        "less_accurate"
    ] == [3]
    assert (
        "2 of 4 prompts differ in tokens; 2 rounding ties, 0 real divergences"
        in audit.describe()
    )


@PUSH
def test_a_generation_record_survives_the_results_log():
    run = run_of(
        [4, 2], np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    )
    back = Generated.from_dict(run.to_dict())
    assert back.tokens == run.tokens and np.array_equal(back.top, run.top)
