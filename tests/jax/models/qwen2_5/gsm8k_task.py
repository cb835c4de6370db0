# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""GSM8K as lm-evaluation-harness's `gsm8k` task defines it: prompts, answer extraction, scores.

Prompt: K exemplars from the train split, each "Question: {q}\\nAnswer: {a}", joined by a blank
line, then "Question: {q}\\nAnswer:". Greedy decoding until "Question:", "</s>" or "<|im_end|>"
(or EOS, or 256 tokens). Scores: strict-match (the first "#### N") and flexible-extract (the last
number), both compared after dropping commas, "$", a trailing period and everything up to "#### ",
case-insensitively, with the gold answer treated the same. Pure: no model, no files but the data.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.jax.models.qwen2_5.audit import Generated, mcnemar_p_value

STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
INVALID = "[invalid]"
STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-evaluation-harness gsm8k's `regexes_to_ignore`, applied to prediction and gold alike.
IGNORED = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]
FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


class DataError(ValueError):
    """Problems or exemplars that cannot be read."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str


def read_jsonl(path: Path) -> list[Problem]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problems.append(Problem(record["question"], record["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{path}:{number} is not a JSON object with 'question' and 'answer' ({err})"
            ) from err
    return problems


def load_split(split: str, data_file: Path | None) -> list[Problem]:
    """A split from a local jsonl, or from the Hugging Face hub (openai/gsm8k, main)."""
    if data_file is not None:
        return read_jsonl(data_file)
    from datasets import load_dataset

    try:
        dataset = load_dataset("openai/gsm8k", "main", split=split)
    except Exception as err:  # the hub raises many types; the user needs only the fix
        raise DataError(
            f"cannot load openai/gsm8k ({err}); pass --data-file and --fewshot-file"
        ) from err
    return [Problem(r["question"], r["answer"]) for r in dataset]


def fewshot_exemplars(
    train: Sequence[Problem], num_problems: int, k: int, seed: int = FEWSHOT_SEED
) -> list[list[Problem]]:
    """Per problem, k exemplars drawn from one seeded generator in problem order, as the harness does."""
    if k > len(train):
        raise DataError(
            f"--num-fewshot {k} exceeds the {len(train)} available exemplars"
        )
    rng = random.Random(seed)
    return [rng.sample(list(train), k) for _ in range(num_problems)]


def build_prompt(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = [f"Question: {ex.question}\nAnswer: {ex.answer}" for ex in exemplars]
    return "\n\n".join([*shots, f"Question: {problem.question}\nAnswer:"])


def truncate_at_stop(text: str) -> str:
    cut = min(
        (i for s in STOP_SEQUENCES if (i := text.find(s)) >= 0), default=len(text)
    )
    return text[:cut]


def strict_extract(text: str) -> str:
    match = STRICT_RE.findall(text)
    return match[0].strip() if match else INVALID


def flexible_extract(text: str) -> str:
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return INVALID
    return next(group for group in matches[-1] if group).strip()


def normalize(answer: str) -> str:
    for pattern in IGNORED:
        answer = pattern.sub("", answer)
    return answer.lower()


def is_correct(extracted: str, gold_answer: str) -> bool:
    return normalize(extracted) == normalize(gold_answer)


def accuracy(flags: Sequence[bool]) -> dict[str, float]:
    """Mean and its standard error (sample variance, as the harness reports)."""
    n = len(flags)
    mean = sum(flags) / n
    stderr = math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else float("nan")
    return {"accuracy": mean, "stderr": stderr}


@dataclass(frozen=True)
class Graded:
    index: int
    generated: str
    tokens: list[int]  # the generated token ids, cut where generation stopped
    strict: str
    flexible: str
    gold: str
    strict_correct: bool
    flexible_correct: bool
    # Compare mode: per generated token, the top logits and ids of the step that chose it (the audit's evidence).
    top_logits: list[list[float]] | None = None
    top_ids: list[list[int]] | None = None

    def generated_run(self) -> Generated:
        return Generated.from_dict(
            {
                "tokens": self.tokens,
                "top_logits": self.top_logits,
                "top_ids": self.top_ids,
            }
        )


def grade(
    index: int, tokens: Sequence[int], generated: str, problem: Problem, top=None
) -> Graded:
    """`top`: the generation's (n, TOP_K, 2) record, kept when given."""
    strict, flexible = strict_extract(generated), flexible_extract(generated)
    gold = normalize(problem.answer)
    record = {} if top is None else Generated(list(tokens), top).to_dict()
    return Graded(
        index,
        generated,
        list(tokens),
        strict,
        flexible,
        gold,
        is_correct(strict, problem.answer),
        is_correct(flexible, problem.answer),
        record.get("top_logits"),
        record.get("top_ids"),
    )


METRICS = {"strict-match": "strict_correct", "flexible-extract": "flexible_correct"}


def scores(graded: Sequence[Graded]) -> dict[str, dict[str, float]]:
    return {
        metric: accuracy([getattr(g, flag) for g in graded])
        for metric, flag in METRICS.items()
    }


def stops_at_sequences(tokenizer) -> Callable[[list[int]], bool]:
    """The generation stop rule: a stop sequence appeared in the text so far."""

    def hit_stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in text for s in STOP_SEQUENCES)

    return hit_stop


def harness_order(lengths: Sequence[int]) -> list[int]:
    """Problem indices longest prompt first (ties in problem order), as lm-evaluation-harness
    orders its requests. Results are keyed by problem index, so their order is restored.
    """
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Problem indices in batches of `batch_size` in the harness's order: a long prompt pads only
    its neighbours, and the largest batch runs first."""
    order = harness_order(lengths)
    return [
        order[start : start + batch_size] for start in range(0, len(order), batch_size)
    ]


def paired_scores(reference: Sequence[Graded], candidate: Sequence[Graded]) -> dict:
    """Both runs' scores with their standard errors, the difference, and the exact McNemar test on
    the discordant problems (right in one run, wrong in the other)."""
    report = {}
    for metric, flag in METRICS.items():
        single_only = sum(
            getattr(a, flag) and not getattr(b, flag)
            for a, b in zip(reference, candidate, strict=True)
        )
        mesh_only = sum(
            getattr(b, flag) and not getattr(a, flag)
            for a, b in zip(reference, candidate, strict=True)
        )
        single, mesh = accuracy([getattr(g, flag) for g in reference]), accuracy(
            [getattr(g, flag) for g in candidate]
        )
        report[metric] = {
            "single_device": single,
            "mesh": mesh,
            "difference": mesh["accuracy"] - single["accuracy"],
            "discordant": {"single_device_only": single_only, "mesh_only": mesh_only},
            "mcnemar_p_value": mcnemar_p_value(single_only, mesh_only),
        }
    return report
