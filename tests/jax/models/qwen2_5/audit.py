"""Tie-aware audit of a mesh's generations against the single device's: rounding tie or real fault.

A correct tensor-parallel model sums in another order than one device (split GEMMs,
all-reduced partial sums), so its logits differ from the single device's by a rounding step or
two. bfloat16 logits near 20 have a step of 0.125: wherever the two best tokens are that close,
greedy decoding may pick differently, and from there the texts part. That is not a fault.

For a generation whose tokens differ, the audit teacher-forces the single device's own sequence
(prompt + its generated tokens) through both models in one chunked prefill and looks at every
generated position where the mesh would choose another token than the single device chose (and
at the first position where the generations parted). Each is a *rounding tie* when both
margins are within the noise bound: the single device's preference for its token over the
mesh's (Ls[chosen] - Ls[other]) and the mesh's preference the other way (Lm[other] - Lm[chosen]);
otherwise a *real divergence*. The bound is fixed per dtype from measurements of the correct
model in this test suite (NOISE_ULPS), never from the run being judged: a fault would inflate
the very noise it is judged by. The teacher-forced logits must also meet the model tests'
logits tolerance (LOGITS_TOLERANCE), which a wrong mesh fails outright.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tests.infra.comparison import ComparisonConfig, compare
from tests.jax.models.qwen2_5.generation import Generator

# The noise bound, in units in the last place of the dtype at the larger |logit| of a margin.
# Measured (test_audit.py, the suite's teacher-forced tiny 28:4 checkpoint with 28 layers, every
# mesh, 1,182 positions): a correct mesh moves each of a row's top-5 logits by at most 6 ulps in
# bfloat16 and 48 in float32 (2 layers: 1 and 22), and the argmax flips it causes have margins of
# at most 3 (single device) and 6 (mesh) ulps. The suite asserts a per-logit bound of 8 and 64
# ulps (the measurement plus headroom for other hosts' summation orders); a margin involves two
# logits, so a correct mesh can flip margins up to twice that.
PER_LOGIT_ULPS = {"bfloat16": 8.0, "float32": 64.0}
NOISE_ULPS = {dtype: 2 * ulps for dtype, ulps in PER_LOGIT_ULPS.items()}
_MANTISSA_BITS = {"bfloat16": 7, "float32": 23}
# Teacher-forced logits a correct mesh must meet, whatever its ties: a wrong mesh misses them by
# far (appended head padding: PCC 0.52; KV heads shifted by a group: 0.15). float32: the model
# tests' 1e-4 (measured <= 8.6e-6 at 28 layers). bfloat16: the model tests' 0.999 against
# Hugging Face, not the 0.9999 of the 2-layer mesh tests: a correct mesh measures 0.999997 at 2
# layers but 0.99976 at 28 (rounding differences accumulate with depth, test_audit.py).
LOGITS_TOLERANCE = {"bfloat16": ComparisonConfig(pcc=0.999), "float32": ComparisonConfig(atol=1e-4)}

IDENTICAL, EQUIVALENT, DIFFERENT = "identical", "equivalent", "different"


def ulp(magnitude: np.ndarray | float, dtype: str) -> np.ndarray:
    """The spacing of `dtype` values at `magnitude` (the step a rounding moves a value by)."""
    exponent = np.floor(np.log2(np.maximum(np.abs(magnitude), np.finfo(np.float32).tiny)))
    return np.exp2(exponent - _MANTISSA_BITS[dtype])


def noise_bound(magnitude: np.ndarray | float, dtype: str) -> np.ndarray:
    """The largest margin a correct mesh can flip by rounding, at logits of `magnitude`."""
    return NOISE_ULPS[dtype] * ulp(magnitude, dtype)


@dataclass(frozen=True)
class Divergence:
    """A generated position where the mesh prefers another token than the single device chose."""

    position: int  # index among the generated tokens
    chosen: int  # the single device's token
    other: int  # the mesh's: its generated token where the generations parted, else its argmax
    single_margin: float  # Ls[chosen] - Ls[other]
    mesh_margin: float  # Lm[other] - Lm[chosen]
    bound: float
    rounding_tie: bool


@dataclass(frozen=True)
class SequenceAudit:
    """The audit of one generation whose tokens differ between the mesh and the single device."""

    first_divergence: int  # index among the generated tokens where the two generations part
    divergences: list[Divergence]
    logits_pcc: float
    logits_max_abs_diff: float
    logits_within_tolerance: bool

    @property
    def rounding_ties(self) -> int:
        return sum(d.rounding_tie for d in self.divergences)

    @property
    def real_divergences(self) -> int:
        return sum(not d.rounding_tie for d in self.divergences)

    @property
    def equivalent(self) -> bool:
        return self.logits_within_tolerance and self.real_divergences == 0

    def to_dict(self) -> dict:
        first = next((d for d in self.divergences if d.position == self.first_divergence), None)
        return {
            "first_divergence": self.first_divergence,
            "first_divergence_margins": None if first is None else asdict(first),
            "rounding_ties": self.rounding_ties,
            "real_divergences": self.real_divergences,
            "divergences": [asdict(d) for d in self.divergences],
            "logits_pcc": self.logits_pcc,
            "logits_max_abs_diff": self.logits_max_abs_diff,
            "logits_within_tolerance": self.logits_within_tolerance,
        }

    @classmethod
    def from_dict(cls, record: dict) -> SequenceAudit:
        """The inverse of to_dict (a resumed run reads its finished audits back)."""
        found = [Divergence(**d) for d in record["divergences"]]
        fields = ("logits_pcc", "logits_max_abs_diff", "logits_within_tolerance")
        return cls(record["first_divergence"], found, *(record[f] for f in fields))


def margins(
    golden: np.ndarray, actual: np.ndarray, chosen: np.ndarray, others: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of logits (n, V): the single device's margin for its token over the mesh's
    (Ls[chosen] - Ls[other]), the mesh's margin the other way, and the noise bound there."""
    rows = np.arange(len(chosen))
    gc, go, ac, ao = golden[rows, chosen], golden[rows, others], actual[rows, chosen], actual[rows, others]
    magnitude = np.max(np.abs([gc, go, ac, ao]), axis=0)
    return gc - go, ao - ac, noise_bound(magnitude, dtype)


def rounding_ties(dtype: str):
    """The audit's rule as a comparison tie rule (ComparisonConfig.top1_tie): which rows' argmax
    disagreements are rounding ties."""

    def rule(golden: np.ndarray, actual: np.ndarray, expected: np.ndarray, picked: np.ndarray) -> np.ndarray:
        single, mesh, bound = margins(golden, actual, expected, picked, dtype)
        return (single <= bound) & (mesh <= bound)

    return rule


def divergences(
    golden: np.ndarray, actual: np.ndarray, chosen: np.ndarray, others: np.ndarray, dtype: str
) -> list[Divergence]:
    """Classify every row where `others` (the mesh's choices) differ from `chosen` (the single
    device's), given both sides' logits (n, V) at those rows."""
    single, mesh, bound = margins(golden, actual, chosen, others, dtype)
    return [
        Divergence(
            int(i),
            int(chosen[i]),
            int(others[i]),
            float(single[i]),
            float(mesh[i]),
            float(bound[i]),
            bool(single[i] <= bound[i] and mesh[i] <= bound[i]),
        )
        for i in np.flatnonzero(others != chosen)
    ]


def audit_sequence(
    single: Generator,
    mesh: Generator,
    prompt: Sequence[int],
    single_tokens: Sequence[int],
    mesh_tokens: Sequence[int],
    dtype: str,
) -> SequenceAudit:
    """Audit one prompt whose generated tokens differ (see the module docstring)."""
    parted = next(
        (i for i, (a, b) in enumerate(zip(single_tokens, mesh_tokens, strict=False)) if a != b),
        min(len(single_tokens), len(mesh_tokens)),
    )
    if parted >= len(single_tokens):
        raise ValueError("the single device's generation is a prefix of the mesh's: nothing to audit")
    sequence = [*prompt, *single_tokens]
    (golden,) = (x.astype(np.float64) for x in single.score([sequence], [len(prompt)]))  # (n, V)
    (actual,) = (x.astype(np.float64) for x in mesh.score([sequence], [len(prompt)]))
    chosen = np.asarray(single_tokens)
    others = actual.argmax(axis=-1)
    if parted < len(mesh_tokens):
        others[parted] = mesh_tokens[parted]  # where the generations parted: what the mesh generated
    logits = compare(golden, actual, LOGITS_TOLERANCE[dtype])
    found = divergences(golden, actual, chosen, others, dtype)
    return SequenceAudit(parted, found, logits.pcc, logits.max_abs_diff, logits.passed)


def mcnemar_p_value(single_only: int, mesh_only: int) -> float:
    """Exact two-sided McNemar test on the discordant pairs: problems one run gets right and the
    other wrong. Under 'the mesh scores what the single device scores' either kind is a fair coin."""
    n = single_only + mesh_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(single_only, mesh_only) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass
class Comparison:
    """A mesh's generations against the single device's, prompt by prompt."""

    dtype: str
    # Every compared prompt's audit, None where the two generated the same tokens.
    audits: dict[int, SequenceAudit | None] = field(default_factory=dict)

    @property
    def differing(self) -> dict[int, SequenceAudit]:
        return {i: a for i, a in sorted(self.audits.items()) if a is not None}

    @property
    def verdict(self) -> str:
        if not self.differing:
            return IDENTICAL
        return EQUIVALENT if all(a.equivalent for a in self.differing.values()) else DIFFERENT

    def audit(
        self,
        index: int,
        single: Generator,
        mesh: Generator,
        prompt: Sequence[int],
        single_tokens: Sequence[int],
        mesh_tokens: Sequence[int],
    ) -> SequenceAudit | None:
        """Compare one prompt's generations, auditing them when their tokens differ."""
        same = list(single_tokens) == list(mesh_tokens)
        self.audits[index] = (
            None if same else audit_sequence(single, mesh, prompt, single_tokens, mesh_tokens, self.dtype)
        )
        return self.audits[index]

    def summary(self) -> dict:
        differing = self.differing
        return {
            "verdict": self.verdict,
            "prompts_compared": len(self.audits),
            "prompts_with_different_tokens": list(differing),
            "rounding_ties": sum(a.rounding_ties for a in differing.values()),
            "real_divergences": sum(a.real_divergences for a in differing.values()),
            "logits_out_of_tolerance": [i for i, a in differing.items() if not a.logits_within_tolerance],
            "noise_bound": {
                "dtype": self.dtype,
                "ulps": NOISE_ULPS[self.dtype],
                "rule": "a rounding tie when Ls[chosen]-Ls[other] and Lm[other]-Lm[chosen] are both <= ulps x the "
                "dtype's spacing at the larger |logit|; the ulps are twice the per-logit difference of a correct mesh "
                "that the test suite measures and enforces",
            },
            "logits_tolerance": {k: v for k, v in asdict(LOGITS_TOLERANCE[self.dtype]).items() if v},
        }

    def describe(self) -> str:
        """One line for a person: the verdict and what it rests on."""
        s = self.summary()
        if self.verdict == IDENTICAL:
            return f"verdict identical: the same tokens for all {s['prompts_compared']} prompts"
        line = (
            f"verdict {self.verdict}: {len(s['prompts_with_different_tokens'])} of {s['prompts_compared']} prompts "
            f"differ in tokens; {s['rounding_ties']} rounding ties, {s['real_divergences']} real divergences"
        )
        if s["logits_out_of_tolerance"]:
            line += f", teacher-forced logits out of tolerance on {len(s['logits_out_of_tolerance'])}"
        return line + f" (tie bound {NOISE_ULPS[self.dtype]:g} {self.dtype} ulps)"
