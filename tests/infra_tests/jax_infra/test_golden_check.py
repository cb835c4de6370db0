# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import numpy as np
import pytest

from tests.jax.infra.golden_check import (
    GoldenMismatch,
    Oracle,
    Thresholds,
    assert_equivalent,
    compare,
    pearson,
)

pytestmark = pytest.mark.push

RNG = np.random.default_rng(0)
LOGITS = RNG.standard_normal((4, 6, 50)).astype(np.float32)


def test_identical_outputs_pass_every_check():
    config = Thresholds(atol=0.0, pcc=1.0, allclose=(0.0, 0.0), top1=1.0, kl=0.0)
    result = assert_equivalent(LOGITS, LOGITS.copy(), config)
    assert result.passed and result.max_abs_diff == 0.0 and result.top1 == 1.0


def test_small_noise_passes_loose_and_fails_tight_atol():
    noisy = LOGITS + 1e-5 * RNG.standard_normal(LOGITS.shape).astype(np.float32)
    assert compare(LOGITS, noisy, Thresholds(atol=1e-3)).passed
    with pytest.raises(GoldenMismatch, match=r"max_abs_diff .* > atol 1.0e-07"):
        assert_equivalent(LOGITS, noisy, Thresholds(atol=1e-7))


def test_wrong_data_fails_pcc_and_reports_the_number():
    wrong = RNG.standard_normal(LOGITS.shape).astype(np.float32)
    result = compare(LOGITS, wrong, Thresholds(pcc=0.99))
    assert not result.passed
    assert abs(result.pcc) < 0.1
    assert "pcc" in result.failures[0] and f"{result.pcc:.7f}" in result.failures[0]


def test_swapped_rows_fail_top1_but_keep_the_value_distribution():
    swapped = LOGITS[::-1].copy()
    result = compare(LOGITS, swapped, Thresholds(top1=0.99, kl=1e-3))
    assert result.top1 < 0.5
    assert len(result.failures) == 2


def test_allclose_uses_rtol_and_atol():
    scaled = LOGITS * (1 + 1e-4)
    assert compare(LOGITS, scaled, Thresholds(allclose=(1e-3, 0.0))).passed
    assert not compare(LOGITS, scaled, Thresholds(allclose=(1e-6, 0.0))).passed


def test_mask_ignores_rows_that_do_not_count():
    garbage_in_pads = LOGITS.copy()
    garbage_in_pads[:, :2] = 1e6
    valid = np.ones(LOGITS.shape[:2], bool)
    valid[:, :2] = False
    assert compare(LOGITS, garbage_in_pads, Thresholds(atol=0.0), mask=valid).passed
    assert not compare(LOGITS, garbage_in_pads, Thresholds(atol=0.0)).passed


def test_non_finite_output_fails():
    nan = LOGITS.copy()
    nan[0, 0, 0] = np.nan
    assert "non-finite" in compare(LOGITS, nan, Thresholds()).failures[0]


def test_shape_mismatch_is_an_error():
    with pytest.raises(
        GoldenMismatch,
        match=r"shape mismatch: golden \(4, 6, 50\) vs actual \(4, 6, 49\)",
    ):
        compare(LOGITS, LOGITS[..., :49], Thresholds())


def test_pearson_edge_cases():
    assert pearson(np.ones(5), np.ones(5)) == 1.0
    assert pearson(np.ones(5), np.zeros(5)) == 0.0
    assert pearson(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_top1_counts_exact_golden_ties_and_what_the_tie_rule_accepts():
    golden = np.array([[1.0, 2.0, 2.0, 0.5], [3.0, 1.0, 0.0, 2.99]])
    actual = np.array([[1.0, 2.0, 2.01, 0.5], [2.98, 1.0, 0.0, 2.99]])
    exact_ties_only = compare(golden, actual, Thresholds(top1=1.0))
    assert (
        exact_ties_only.top1 == 0.5
        and exact_ties_only.top1_strict == 0.0
        and not exact_ties_only.passed
    )

    def within_a_hundredth(rows_g, rows_a, expected, picked):
        index = np.arange(len(rows_g))
        return rows_g[index, expected] - rows_g[index, picked] <= 0.01

    tied = compare(golden, actual, Thresholds(top1=1.0, top1_tie=within_a_hundredth))
    assert tied.passed and tied.top1 == 1.0 and tied.top1_strict == 0.0
    far = np.array([[5.0, 2.0, 2.0, 0.5], [0.0, 1.0, 0.0, 9.0]])
    assert compare(golden, far, Thresholds(top1_tie=within_a_hundredth)).top1 == 0.5


@pytest.mark.parametrize(("scale", "passes"), [(0.9, True), (1.1, False)])
def test_an_output_is_as_accurate_as_the_golden_within_the_oracle_factor(scale, passes):
    """Errors against the exact answer at 0.9 and 1.1 times the allowed multiple of the golden's."""
    exact = LOGITS.astype(np.float64)
    noise = RNG.standard_normal((2, *LOGITS.shape))
    noise /= np.sqrt(np.mean(noise**2, axis=(1, 2, 3), keepdims=True))
    golden, factor = exact + 1e-4 * noise[0], 3.0
    actual = exact + scale * factor * 1e-4 * noise[1]
    result = compare(golden, actual, Thresholds(oracle=Oracle(exact, factor)))
    assert result.accuracy_ratio == pytest.approx(scale * factor)
    assert result.passed == passes
    assert passes or "error against the exact answer" in result.failures[0]
