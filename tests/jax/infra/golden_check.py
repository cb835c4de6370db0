# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Comparing a device-under-test output with its golden: PCC, atol, allclose, top-1, KL, and
accuracy against an exact answer.

Every metric is computed on every call and reported, so a failure message (and a passing
test's recorded properties) show all the numbers, not only the one that was checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# (golden rows, actual rows, golden's argmax, actual's argmax) -> which rows' disagreement is a tie.
TieRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Oracle:
    """An exact answer for the compared rows (after masking): the output under test is as accurate
    as the golden when the root mean square of its error against `values` is at most `factor`
    times the golden's. A bound that comes from the golden's own error on this input, not from a
    number measured on some host."""

    values: np.ndarray
    factor: float


class GoldenMismatch(AssertionError):
    """The output under test is not equivalent to the golden; the message gives the numbers."""


@dataclass(frozen=True)
class Thresholds:
    """Thresholds; a metric set to None is reported but not checked.

    atol:     maximum of |golden - actual|.
    pcc:      minimum Pearson correlation of the flattened tensors.
    allclose: (rtol, atol) as in numpy.allclose.
    top1:     minimum fraction of rows (last axis = classes) whose argmax agrees. An exact tie in
              the golden (argmax would break it by index) counts as agreement, and so does any
              disagreement `top1_tie` accepts (e.g. one within a rounding step on both sides).
              `top1_strict` is the plain argmax match.
    kl:       maximum mean KL(softmax(golden) || softmax(actual)) over rows, in nats.
    oracle:   the accuracy bound against an exact answer (Oracle); `accuracy_ratio` reports the
              output under test's RMS error against it over the golden's.
    """

    atol: float | None = None
    pcc: float | None = None
    allclose: tuple[float, float] | None = None
    top1: float | None = None
    top1_tie: TieRule | None = None
    kl: float | None = None
    oracle: Oracle | None = None


@dataclass(frozen=True)
class CheckResult:
    max_abs_diff: float
    pcc: float
    allclose: bool
    top1: float  # within ties, as configured
    top1_strict: float
    kl: float
    accuracy_ratio: float | None = None
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    def metrics(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "pcc": self.pcc,
            "allclose": float(self.allclose),
            "top1": self.top1,
            "top1_strict": self.top1_strict,
            "kl": self.kl,
            **(
                {}
                if self.accuracy_ratio is None
                else {"accuracy_ratio": self.accuracy_ratio}
            ),
        }

    def __str__(self) -> str:
        numbers = (
            f"max_abs_diff={self.max_abs_diff:.3e} pcc={self.pcc:.7f} allclose={self.allclose} "
            f"top1={self.top1:.4f} (strict {self.top1_strict:.4f}) kl={self.kl:.3e}"
        )
        if self.accuracy_ratio is not None:
            numbers += f" accuracy_ratio={self.accuracy_ratio:.3f}"
        return (
            numbers if self.passed else f"{numbers}; failed: {'; '.join(self.failures)}"
        )


def pearson(golden: np.ndarray, actual: np.ndarray) -> float:
    """Pearson correlation in float64; two equal constant tensors correlate perfectly."""
    g = np.asarray(golden, np.float64).ravel()
    a = np.asarray(actual, np.float64).ravel()
    if np.array_equal(g, a):
        return 1.0
    g = g - g.mean()
    a = a - a.mean()
    denom = np.sqrt((g * g).sum() * (a * a).sum())
    if denom == 0.0:
        return 0.0
    return float((g * a).sum() / denom)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def accuracy_ratio(golden: np.ndarray, actual: np.ndarray, exact: np.ndarray) -> float:
    """RMS |actual - exact| over RMS |golden - exact| (a golden equal to the exact answer counts as
    off by the smallest float32 normal, so the ratio stays finite)."""

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x - exact) ** 2)))

    return rms(actual) / max(rms(golden), float(np.finfo(np.float32).tiny))


def _rows(
    golden: np.ndarray, actual: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Both outputs in float64, the rows that count (`mask` over leading axes)."""
    golden = np.asarray(golden, np.float64)
    actual = np.asarray(actual, np.float64)
    if golden.shape != actual.shape:
        raise GoldenMismatch(
            f"shape mismatch: golden {golden.shape} vs actual {actual.shape}"
        )
    if mask is not None:
        mask = np.asarray(mask, bool)
        golden, actual = golden[mask], actual[mask]
    if golden.size == 0:
        raise GoldenMismatch(
            "nothing to compare: the tensors (after masking) are empty"
        )
    return golden, actual


def _top1(
    golden: np.ndarray, actual: np.ndarray, tie: TieRule | None
) -> tuple[float, float]:
    """Top-1 agreement over rows (last axis the classes): within ties, and strict."""
    rows_g = golden.reshape(-1, golden.shape[-1])
    rows_a = actual.reshape(-1, actual.shape[-1])
    expected, picked = rows_g.argmax(-1), rows_a.argmax(-1)
    agree = expected == picked
    strict = float(np.mean(agree))
    agree |= rows_g.max(-1) == np.take_along_axis(rows_g, picked[:, None], -1)[:, 0]
    if tie is not None:
        agree |= tie(rows_g, rows_a, expected, picked)
    return float(np.mean(agree)), strict


def _kl(golden: np.ndarray, actual: np.ndarray) -> float:
    log_p = _log_softmax(golden.reshape(-1, golden.shape[-1]))
    log_q = _log_softmax(actual.reshape(-1, actual.shape[-1]))
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def _failures(result: CheckResult, config: Thresholds, non_finite: int) -> list[str]:
    """What `result` misses of `config`'s thresholds, in words."""
    rtol, atol = config.allclose or (1e-5, 1e-8)
    checks = [
        (non_finite == 0, f"{non_finite} non-finite values in the output under test"),
        (
            config.atol is None or result.max_abs_diff <= config.atol,
            f"max_abs_diff {result.max_abs_diff:.3e} > atol {config.atol or 0:.1e}",
        ),
        (
            config.pcc is None or result.pcc >= config.pcc,
            f"pcc {result.pcc:.7f} < {config.pcc}",
        ),
        (
            config.allclose is None or result.allclose,
            f"not allclose(rtol={rtol}, atol={atol})",
        ),
        (
            config.top1 is None or result.top1 >= config.top1,
            f"top1 agreement {result.top1:.4f} < {config.top1}",
        ),
        (
            config.kl is None or result.kl <= config.kl,
            f"kl {result.kl:.3e} > {config.kl or 0:.1e}",
        ),
    ]
    if config.oracle is not None:
        ratio, factor = result.accuracy_ratio, config.oracle.factor
        message = (
            f"error against the exact answer {ratio:.3f}x the golden's > {factor:g}x"
        )
        checks.append((ratio <= factor, message))
    return [message for ok, message in checks if not ok]


def compare(
    golden: np.ndarray,
    actual: np.ndarray,
    config: Thresholds,
    mask: np.ndarray | None = None,
) -> CheckResult:
    """All metrics of `actual` against `golden`; `mask` (over leading axes) keeps the rows that count."""
    golden, actual = _rows(golden, actual, mask)
    rtol, atol = config.allclose or (1e-5, 1e-8)
    top1, strict = _top1(golden, actual, config.top1_tie)
    ratio = None
    if config.oracle is not None:
        exact = np.asarray(config.oracle.values, np.float64)
        ratio = accuracy_ratio(golden, actual, exact)
    result = CheckResult(
        float(np.max(np.abs(golden - actual))),
        pearson(golden, actual),
        bool(np.allclose(actual, golden, rtol=rtol, atol=atol)),
        top1,
        strict,
        _kl(golden, actual),
        ratio,
    )
    non_finite = int((~np.isfinite(actual)).sum())
    failures = tuple(_failures(result, config, non_finite))
    return dataclasses.replace(result, failures=failures)


def assert_equivalent(
    golden: np.ndarray,
    actual: np.ndarray,
    config: Thresholds,
    mask: np.ndarray | None = None,
) -> CheckResult:
    """`compare`, raising GoldenMismatch with every number when a threshold is not met."""
    result = compare(golden, actual, config, mask)
    if not result.passed:
        raise GoldenMismatch(str(result))
    return result
