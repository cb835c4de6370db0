# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The audit of a mesh's generations against the single device's, judged by a float32 oracle.

A correct tensor-parallel model sums in another order than one device (split GEMMs, all-reduced
partial sums), so its bfloat16 logits round differently, and wherever two tokens are within a
rounding step the two runs may choose differently and their texts part. Whether such a
divergence is a rounding tie or a fault is decided against the exact answer, never against a
number measured on some host:

- **The oracle**: one device, the run's own weights (as loaded, in the run's dtype), every
  activation, norm, softmax and accumulation in float32 (`Engine(exact=True)`), teacher-forced
  over the single device's sequence: L*.
- **The single device's error scale** on a generation: E_s, the largest |Ls - L*| over the top-k
  tokens the single device recorded at the steps that chose (`generation.TOP_K`), over all its
  generated positions, each position's at least half an ulp of the dtype at those logits (its
  logits are values of that dtype: the exact value is known to within half a step at best).
- **A rounding tie**: where the single device chose `a` and the mesh `b`, the oracle's margin
  L*[a] - L*[b] is at most TIE_FACTOR x E_s: the single device's own logits, each moved by no
  more than its own largest error on this generation, could have ranked b first. Anything else
  is a real divergence. (One position's top-k maximum alone is too few errors for a scale: at 28
  layers a correct mesh's pair errors exceeded it on 1-2 of ~15 flips per mesh.)
- **As accurate as the single device**: over the positions it generated, the root mean square of
  the mesh's |Lm - L*| over its own recorded top-k (`rms_error`) is at most ACCURACY_FACTOR times
  the single device's, on each prompt whose tokens differ and over all prompts together, the same
  tokens included. A less accurate mesh is `different`, whatever its tokens: a fault can move
  every logit without flipping a greedy token (on SmolLM2, RMSNorm's epsilon 10x moves float32
  logits ~1000x as far as a correct mesh and changes none of 256 greedy tokens).

Where the two runs part, their prefixes are identical, so each run is judged by the logits of
the very step that chose its token (recorded in the generation, `GenerationResult.top_logits`);
only the positions after it are teacher-forced (the mesh's prefill path over the single device's
sequence). Both bounds come from the single device and the oracle alone: the mesh being judged
cannot widen them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from flax import nnx

from tests.jax.models.qwen2_5.engine import Engine
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.sampling import TOP_K
from tests.jax.models.qwen2_5.scoring import teacher_forced_logits
from tests.jax.models.qwen2_5.steps import CompiledSteps, widened

# A margin is the difference of two logits, each off by at most E_s: its error is at most 2 E_s.
TIE_FACTOR = 2.0
# A correct mesh rounds the same products at the same cast points in another summation order, so
# its errors are distributed as the single device's: their RMS over a generation agree within a
# few tens of percent. Twice the single device's is the most a mesh may be off and still count as
# as accurate; a fault that doubles the error of the logits is caught by this alone. In float32
# the oracle is the single device's own prefill path, so E_s is its decode path's reordering and a
# mesh adds a second, independent one: about sqrt(2) at most (SmolLM2 GSM8K, 64 problems: 1.05x
# median per problem, but 2.2x on one of a single token, hence the ratio over all prompts).
ACCURACY_FACTOR = 2.0
_MANTISSA_BITS = {"bfloat16": 7, "float32": 23}

IDENTICAL, EQUIVALENT, DIFFERENT = "identical", "equivalent", "different"


def ulp(magnitude: np.ndarray | float, dtype: str) -> np.ndarray:
    """The spacing of `dtype` values at `magnitude` (the step a rounding moves a value by)."""
    exponent = np.floor(
        np.log2(np.maximum(np.abs(magnitude), np.finfo(np.float32).tiny))
    )
    return np.exp2(exponent - _MANTISSA_BITS[dtype])


@dataclass(frozen=True)
class Generated:
    """One run's generation for one prompt: its tokens and, per token, the top logits and ids of
    the step that chose it ((n, TOP_K, 2), generation.top_logits)."""

    tokens: list[int]
    top: np.ndarray

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "top_logits": self.top[..., 0].tolist(),
            "top_ids": self.top[..., 1].tolist(),
        }

    @classmethod
    def from_dict(cls, record: dict) -> Generated:
        top = np.stack(
            [
                np.asarray(record["top_logits"], np.float32),
                np.asarray(record["top_ids"], np.float32),
            ],
            -1,
        )
        return cls(list(record["tokens"]), top.reshape(-1, TOP_K, 2))


def top_of(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """(n, V) logits -> (n, k, 2) as a step records them: values, ids, ties in id order."""
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return np.stack([np.take_along_axis(logits, ids, -1), ids], axis=-1).astype(
        np.float32
    )


def _off(top: np.ndarray, oracle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|L - L*| over a run's recorded top-k tokens, and the oracle's values there: (n, k) each."""
    exact = np.take_along_axis(oracle, top[..., 1].astype(np.int64), axis=-1)
    return np.abs(top[..., 0].astype(np.float64) - exact), exact


def errors(top: np.ndarray, oracle: np.ndarray, dtype: str) -> np.ndarray:
    """Per position, a run's error scale against the oracle: the largest |L - L*| over its recorded
    top-k tokens, at least half an ulp of `dtype` there. top (n, k, 2), oracle (n, V) -> (n,).
    """
    off, exact = _off(top, oracle)
    return np.maximum(off.max(axis=-1), ulp(np.abs(exact).max(axis=-1), dtype) / 2)


def rms_error(top: np.ndarray, oracle: np.ndarray, dtype: str) -> float:
    """A run's accuracy over its generated positions: the root mean square of |L - L*| over every
    recorded top-k logit, at least that of a correctly rounded result (half an ulp / sqrt 3).
    """
    off, exact = _off(top, oracle)
    return float(
        max(
            np.sqrt(np.mean(off**2)),
            np.mean(ulp(np.abs(exact), dtype)) / 2 / np.sqrt(3),
        )
    )


@dataclass(frozen=True)
class Divergence:
    """A generated position where the mesh chose (or, teacher-forced, would choose) another token."""

    position: int  # index among the generated tokens
    chosen: int  # the single device's token
    other: int  # the mesh's token
    oracle_margin: float  # L*[chosen] - L*[other]
    single_error: float  # the single device's largest top-k error at this position
    mesh_error: float  # the mesh's error there, by the same measure
    bound: float  # TIE_FACTOR x E_s (the largest over the generation)
    rounding_tie: bool


@dataclass(frozen=True)
class SequenceAudit:
    """The audit of one prompt: where the mesh's generated tokens part from the single device's
    (if they do), each divergence, and both runs' accuracy."""

    # The index among the generated tokens where the two part; None: the same tokens.
    first_divergence: int | None
    divergences: list[Divergence]
    single_error: float  # rms_error of the single device over its generated positions
    mesh_error: float  # the mesh's, over the same positions (its own steps up to the first divergence)
    positions: int  # generated positions the two errors are taken over

    @property
    def accuracy_ratio(self) -> float:
        return self.mesh_error / self.single_error

    @property
    def as_accurate(self) -> bool:
        return self.accuracy_ratio <= ACCURACY_FACTOR

    @property
    def rounding_ties(self) -> int:
        return sum(d.rounding_tie for d in self.divergences)

    @property
    def real_divergences(self) -> int:
        return sum(not d.rounding_tie for d in self.divergences)

    @property
    def equivalent(self) -> bool:
        return self.as_accurate and self.real_divergences == 0

    @property
    def differs(self) -> bool:
        return self.first_divergence is not None

    def to_dict(self) -> dict:
        return {
            "first_divergence": self.first_divergence,
            "rounding_ties": self.rounding_ties,
            "real_divergences": self.real_divergences,
            "divergences": [asdict(d) for d in self.divergences],
            "single_error": self.single_error,
            "mesh_error": self.mesh_error,
            "positions": self.positions,
            "accuracy_ratio": self.accuracy_ratio,
            "as_accurate": self.as_accurate,
        }

    @classmethod
    def from_dict(cls, record: dict) -> SequenceAudit:
        """The inverse of to_dict (a resumed run reads its finished audits back)."""
        found = [Divergence(**d) for d in record["divergences"]]
        return cls(
            record["first_divergence"],
            found,
            record["single_error"],
            record["mesh_error"],
            record["positions"],
        )


def first_difference(single: Sequence[int], mesh: Sequence[int]) -> int | None:
    """Where two generations part; None when they are the same tokens."""
    parted = next(
        (i for i, (a, b) in enumerate(zip(single, mesh, strict=False)) if a != b), None
    )
    if parted is None and len(single) != len(mesh):
        raise ValueError("one generation is a prefix of the other: nothing to audit")
    return parted


def judge(
    single: Generated,
    mesh: Generated,
    oracle: np.ndarray,
    mesh_forced: np.ndarray | None,
    dtype: str,
) -> SequenceAudit:
    """The audit of one prompt from the oracle's and, where the tokens differ, the mesh's
    teacher-forced logits over the single device's sequence, (n, V) each for its n generated
    positions."""
    parted = first_difference(single.tokens, mesh.tokens)
    # The mesh's own steps up to where it parted (same prefix), teacher-forced after it.
    mesh_top = (
        mesh.top
        if parted is None
        else np.concatenate([mesh.top[: parted + 1], top_of(mesh_forced[parted + 1 :])])
    )
    single_error, mesh_error = errors(single.top, oracle, dtype), errors(
        mesh_top, oracle, dtype
    )
    others = mesh_top[:, 0, 1].astype(np.int64)
    chosen = np.asarray(single.tokens)
    # The single device's error scale on this generation: its largest error at any of its positions
    # (one position's top-k maximum is too few errors to bound a pair's at 28 layers).
    bound = TIE_FACTOR * float(single_error.max())
    found = []
    for t in np.flatnonzero(others != chosen):
        margin = float(oracle[t, chosen[t]] - oracle[t, others[t]])
        found.append(
            Divergence(
                int(t),
                int(chosen[t]),
                int(others[t]),
                margin,
                float(single_error[t]),
                float(mesh_error[t]),
                bound,
                margin <= bound,
            )
        )
    return SequenceAudit(
        parted,
        found,
        rms_error(single.top, oracle, dtype),
        rms_error(mesh_top, oracle, dtype),
        len(single.tokens),
    )


def _forced(
    engine: Engine, prompts: Sequence[Sequence[int]], runs: Sequence[Generated]
) -> list[np.ndarray]:
    """`engine` teacher-forced over each prompt and its run's tokens, in one batch: (n, V) per
    prompt in float64, for its n generated positions."""
    if not prompts:
        return []
    sequences = [[*p, *r.tokens] for p, r in zip(prompts, runs, strict=True)]
    first = [len(p) for p in prompts]
    # Rows padded to a power of two (repeating the first): a few compiled scoring steps serve any count.
    pad = (1 << (len(sequences) - 1).bit_length()) - len(sequences)
    logits = teacher_forced_logits(
        engine, sequences + sequences[:1] * pad, first + first[:1] * pad
    )
    return [x.astype(np.float64) for x in logits[: len(prompts)]]


def audit_sequences(
    oracle: Engine,
    mesh: Engine,
    prompts: Sequence[Sequence[int]],
    single_runs: Sequence[Generated],
    mesh_runs: Sequence[Generated],
    dtype: str,
) -> list[SequenceAudit]:
    """Audit every prompt (see the module docstring): the oracle teacher-forced over the single
    device's sequences, the mesh over those whose tokens differ, then `judge`."""
    pairs = list(zip(single_runs, mesh_runs, strict=True))
    differ = {i for i, (s, m) in enumerate(pairs) if s.tokens != m.tokens}
    exact = _forced(oracle, prompts, single_runs)
    forced = iter(
        _forced(
            mesh,
            [prompts[i] for i in sorted(differ)],
            [single_runs[i] for i in sorted(differ)],
        )
    )
    return [
        judge(single, theirs, exact[i], next(forced) if i in differ else None, dtype)
        for i, (single, theirs) in enumerate(pairs)
    ]


def oracle_of(single: Engine, steps: CompiledSteps | None = None) -> Engine:
    """The float32 oracle of a single-device generator: its model and weights (no copy), computed
    exactly; with `steps`, an earlier oracle's of the same shapes (e.g. one of shape-only weights).
    """
    if single.mesh is not None:
        raise ValueError("the oracle runs on one device")
    return dataclasses.replace(single, exact=True, steps=steps)


def exact_model(model: Qwen2ForCausalLM) -> Qwen2ForCausalLM:
    """The oracle of a (small) in-memory model: a copy with its own weights in float32, so every
    activation is float32 (Engine(exact=True) does the same inside its compiled steps).
    """
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, widened(state))


def oracle_tie_rule(oracle_rows: np.ndarray, dtype: str):
    """The audit's tie rule as a comparison tie rule (Thresholds.top1_tie) for rows of logits
    whose oracle rows (n, V) are known: an argmax disagreement is a rounding tie when the oracle's
    margin between the golden's token and the other is within TIE_FACTOR x the golden's error.
    """

    def rule(
        golden: np.ndarray, actual: np.ndarray, expected: np.ndarray, picked: np.ndarray
    ) -> np.ndarray:
        scale = errors(top_of(golden), oracle_rows, dtype)
        rows = np.arange(len(expected))
        return (
            oracle_rows[rows, expected] - oracle_rows[rows, picked]
            <= TIE_FACTOR * scale
        )

    return rule


def mcnemar_p_value(single_only: int, mesh_only: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs: problems one run gets right and the
    other wrong. Under 'the mesh scores what the single device scores' either kind is a fair coin.
    """
    n = single_only + mesh_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(single_only, mesh_only) + 1))
    return min(1.0, 2 * tail / 2**n)


RULE = (
    "a divergence (single device chose a, mesh b) is a rounding tie when the float32 oracle's margin "
    f"L*[a]-L*[b] <= {TIE_FACTOR:g} x E_s, the single device's largest |Ls-L*| over its recorded top-{TOP_K} at its "
    "generated positions (each at least half an ulp); the mesh is as accurate when the RMS of its |Lm-L*| over "
    f"its own recorded top-{TOP_K} at the generated positions is <= {ACCURACY_FACTOR:g} x the single device's, on each "
    "prompt whose tokens differ and over all prompts together"
)


@dataclass
class MeshAudit:
    """A mesh's generations against the single device's, prompt by prompt."""

    dtype: str
    # Every compared prompt's audit.
    audits: dict[int, SequenceAudit] = field(default_factory=dict)

    @property
    def differing(self) -> dict[int, SequenceAudit]:
        return {i: a for i, a in sorted(self.audits.items()) if a.differs}

    @property
    def accuracy_ratio(self) -> float | None:
        """The mesh's RMS error over every compared prompt's generated positions, over the single
        device's. Pooled: one prompt of one token is too few errors for a ratio of its own (in
        float32 a correct mesh measured 2.2x on such a prompt, 1.05x median over 64)."""
        audits = self.audits.values()
        if not audits:
            return None
        mesh = sum(a.positions * a.mesh_error**2 for a in audits)
        return math.sqrt(mesh / sum(a.positions * a.single_error**2 for a in audits))

    @property
    def verdict(self) -> str:
        as_accurate = (self.accuracy_ratio or 0) <= ACCURACY_FACTOR
        if not (as_accurate and all(a.equivalent for a in self.differing.values())):
            return DIFFERENT
        return EQUIVALENT if self.differing else IDENTICAL

    def audit(
        self,
        oracle: Engine,
        mesh: Engine,
        prompts: dict[int, Sequence[int]],
        single_runs: dict[int, Generated],
        mesh_runs: dict[int, Generated],
    ) -> dict[int, SequenceAudit]:
        """Audit each prompt's generations (keyed by prompt index), all in one teacher-forced
        batch; returns this call's audits."""
        found = dict(
            zip(
                prompts,
                audit_sequences(
                    oracle,
                    mesh,
                    list(prompts.values()),
                    [single_runs[i] for i in prompts],
                    [mesh_runs[i] for i in prompts],
                    self.dtype,
                ),
                strict=True,
            )
        )
        self.audits.update(found)
        return found

    def summary(self) -> dict:
        differing, audits = self.differing, self.audits
        return {
            "verdict": self.verdict,
            "prompts_compared": len(audits),
            "prompts_with_different_tokens": list(differing),
            "rounding_ties": sum(a.rounding_ties for a in differing.values()),
            "real_divergences": sum(a.real_divergences for a in differing.values()),
            "less_accurate": [i for i, a in differing.items() if not a.as_accurate],
            "worst_accuracy_ratio": max(
                (a.accuracy_ratio for a in differing.values()), default=None
            ),
            "accuracy_ratio": self.accuracy_ratio,
            "criterion": {
                "dtype": self.dtype,
                "tie_factor": TIE_FACTOR,
                "accuracy_factor": ACCURACY_FACTOR,
                "top_k": TOP_K,
                "rule": RULE,
            },
        }

    def describe(self) -> str:
        """One line for a person: the verdict and what it rests on."""
        s = self.summary()
        differ = len(s["prompts_with_different_tokens"])
        tokens = (
            f"{differ} of {s['prompts_compared']} prompts differ in tokens; {s['rounding_ties']} "
            f"rounding ties, {s['real_divergences']} real divergences"
            if differ
            else f"the same tokens for all {s['prompts_compared']} prompts"
        )
        line = f"verdict {self.verdict}: {tokens}; mesh error {s['accuracy_ratio']:.2f}x the single device's over all"
        if differ:
            line += f", up to {s['worst_accuracy_ratio']:.2f}x on a differing prompt"
        if s["less_accurate"]:
            line += f" (less accurate on {len(s['less_accurate'])})"
        return line + " (judged against the float32 oracle)"
