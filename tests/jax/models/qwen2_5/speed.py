# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""One speed measurement in a fresh process: ours or Hugging Face, decode, prefill or GSM8K.

    python -m tests.jax.models.qwen2_5.speed --side ours|hf --phase decode|prefill|gsm8k
        --model-path DIR --dtype float32|bfloat16 --batch B
        [--data-file GSM8K/test.jsonl] [--problems N] [--cpu-kernels]

Prints {"tokens_per_second": ...} (gsm8k: {"problems_per_minute": ..., "utilisation": ...}). One process per
measurement: PyTorch's OpenMP threads keep spinning after its work and XLA's pool does the
same, so two runtimes in one process on two cores slow each other down and neither figure
would be fair.

decode: greedy tokens/s as extra tokens over extra time between 8 and 40 new tokens after a
32-token prompt (prefill and compilation excluded). prefill: tokens/s of a 512-token prompt, the
median of 3, the last position's logits only on both sides.
gsm8k: problems per minute of the GSM8K job's shape, each side scheduling it as it does for real:
N fixed prompts of 700-1,000 tokens (5-shot GSM8K prompts under Qwen's tokenizer; N = --problems,
16 by default: the more problems, the smaller the share of the last rows' drain), problem i
generating exactly the length of test problem i's gold answer in tokens (gsm8k_lengths) and no
EOS, so both sides do the same work. Ours: continuous batching through B rows (continuous.py).
Hugging Face: lm-evaluation-harness's HF backend's schedule, longest prompt first in batches of
B, left-padded, one `generate` per batch that runs until its longest completion ends (finished
rows computing on), with generate's own last-position-only prefill logits. Set-up excluded, as the
GSM8K run sets up: ours compiles its programs and runs each once (XLA:CPU's matrix library builds
a program's pipelines on its first run; the real job's 1,319 problems amortize it, 16 would not),
Hugging Face runs one batch before the clock starts.
"utilisation": kept tokens over computed decode row-steps; "setup_seconds": ours' set-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tests.jax.infra.cli import run_cli

SHORT, LONG, PROMPT_LEN, PREFILL_LEN = 8, 40, 32, 512
PREFILL_RUNS = 3  # each side's prefill figure is the median of these
GSM8K_PROBLEMS = 16  # the default; the job's own 1,319 would take hours per side


# Qwen2's pre-tokenizer: each piece is at least one token, and in its 152k vocabulary nearly every
# piece of a GSM8K answer (common English words, single digits, calculator brackets) is exactly one.
QWEN2_PIECES = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
MAX_GEN_TOKS = 256  # lm-evaluation-harness's gsm8k max_gen_toks


def gsm8k_lengths(data_file: Path, count: int) -> list[int]:
    """The first `count` test problems' completion lengths in tokens: the gold answer as the model
    writes it, then the stop sequence "\n\nQuestion:", in Qwen2 pre-tokenizer pieces, at most
    MAX_GEN_TOKS (the 1,319 answers: mean 124, median 115, 29 to 408)."""
    import regex

    pieces = regex.compile(QWEN2_PIECES)
    with data_file.open() as f:
        answers = [
            json.loads(line)["answer"] for line, _ in zip(f, range(count), strict=False)
        ]
    return [
        min(len(pieces.findall(f" {a}\n\nQuestion:")), MAX_GEN_TOKS) for a in answers
    ]


def gsm8k_prompts(count: int) -> list[list[int]]:
    """`count` fixed prompts with the lengths of 5-shot GSM8K prompts, in problem order (the
    first n of the same lengths for every count)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        rng.integers(100, 50_000, n).tolist() for n in rng.integers(700, 1_001, count)
    ]


def gsm8k_job(data_file: Path, count: int) -> tuple[list[list[int]], list[int]]:
    """The job of `count` problems both sides run: its prompts and completion lengths."""
    return gsm8k_prompts(count), gsm8k_lengths(data_file, count)


def harness_batches(prompts: list[list[int]], batch: int) -> list[list[int]]:
    """Problem indices longest prompt first in batches of `batch`, as lm-evaluation-harness orders them."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def _timed(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def _ours_gsm8k(gen, batch: int, data_file: Path, problems: int) -> dict[str, float]:
    from tests.jax.models.qwen2_5.continuous import ContinuousRun

    prompts, lengths = gsm8k_job(data_file, problems)
    started = time.perf_counter()
    # Set up as the GSM8K run is (compiled, each program run once), then the first rows prefilled.
    run = ContinuousRun(gen, prompts, lengths, batch, warm=True)
    run.run()
    seconds = time.perf_counter() - started - run.compile_seconds
    return {
        "problems_per_minute": 60 * len(prompts) / seconds,
        "utilisation": run.utilisation,
        "setup_seconds": run.compile_seconds,
    }


class Request(NamedTuple):
    """One measurement, the same for either side."""

    model_path: Path
    dtype: str
    batch: int
    phase: str
    data_file: Path | None  # gsm8k: the test problems
    problems: int  # gsm8k: how many


def ours(request: Request, cpu_kernels: bool = False) -> float | dict[str, float]:
    model_path, dtype, batch, phase, data_file, problems = request
    from tests.jax.infra.devices import configure_jax

    configure_jax(cpu_devices=1)
    import jax.numpy as jnp

    from tests.jax.models.qwen2_5.generation import Generator
    from tests.jax.models.qwen2_5.loader import load_model
    from tests.jax.models.qwen2_5.pipeline import run_kernels

    kernels = run_kernels(cpu_kernels)
    gen = Generator(load_model(model_path, getattr(jnp, dtype), kernels=kernels), (), 0)
    if phase == "gsm8k":
        return _ours_gsm8k(gen, batch, data_file, problems)
    if phase == "prefill":
        prompts = [[100 + i % 1000 for i in range(PREFILL_LEN)]] * batch
        gen.generate(prompts, 1)
        seconds = [
            gen.generate(prompts, 1).prefill_seconds for _ in range(PREFILL_RUNS)
        ]
        return batch * PREFILL_LEN / statistics.median(seconds)
    prompts = [list(range(100, 100 + PROMPT_LEN))] * batch
    for n in (SHORT, LONG):  # compile and warm both
        gen.generate(prompts, n)
    short, long = (
        _timed(lambda n=n: gen.generate(prompts, n), 2) for n in (SHORT, LONG)
    )
    return batch * (LONG - SHORT) / (long - short)


def _hf_gsm8k(model, batch: int, data_file: Path, problems: int) -> dict[str, float]:
    """As lm-evaluation-harness's HF backend: left-padded batches, one generate call each, running
    until the batch's longest completion ends."""
    import torch

    prompts, lengths = gsm8k_job(data_file, problems)
    calls = []
    for batch_indices in harness_batches(prompts, batch):
        rows = [prompts[i] for i in batch_indices]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in rows])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
        calls.append((ids, mask, max(lengths[i] for i in batch_indices)))

    def run(ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> None:
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    run(calls[0][0], calls[0][1], 2)  # warm-up
    seconds = _timed(lambda: [run(*call) for call in calls])
    computed = sum(len(ids) * (new - 1) for ids, _, new in calls)
    return {
        "problems_per_minute": 60 * len(prompts) / seconds,
        "utilisation": sum(n - 1 for n in lengths) / computed,
    }


def hugging_face(request: Request) -> float | dict[str, float]:
    model_path, dtype, batch, phase, data_file, problems = request
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, dtype)
    ).eval()
    with torch.no_grad():
        if phase == "gsm8k":
            return _hf_gsm8k(model, batch, data_file, problems)
        if phase == "prefill":
            ids = torch.tensor([[100 + i % 1000 for i in range(PREFILL_LEN)]] * batch)
            model(ids, logits_to_keep=1)  # the logits a prefill needs, as ours computes
            seconds = [
                _timed(lambda: model(ids, logits_to_keep=1))
                for _ in range(PREFILL_RUNS)
            ]
            return batch * PREFILL_LEN / statistics.median(seconds)
        ids = torch.tensor([list(range(100, 100 + PROMPT_LEN))] * batch)

        def generate(n: int) -> None:
            model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )

        generate(4)
        short, long = _timed(lambda: generate(SHORT), 2), _timed(
            lambda: generate(LONG), 2
        )
    return batch * (LONG - SHORT) / (long - short)


# Measurements per side of every comparison, alternating sides in fresh processes so that a drift
# of the host hits both; each side's figure is the median.
ROUNDS = 3


def measured(side: str, extra: Sequence[str], *request: Any) -> dict:
    """One measurement in a fresh process (`request`: phase, model path, dtype, batch; `extra`
    more flags): its JSON line."""
    phase, path, dtype, batch = request
    args = ["--side", side, "--phase", phase, "--model-path", str(path)]
    args += ["--dtype", dtype, "--batch", str(batch), *extra]
    done = run_cli("tests.jax.models.qwen2_5.speed", *args, timeout=3600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternating(
    key: str, sides: dict[str, Sequence[str]], *request: Any
) -> tuple[dict[str, float], dict[str, list[dict]]]:
    """ROUNDS alternating measurements of `request` per side ({label: flags}, a label starting
    with "hf" Hugging Face's, any other ours) -> each side's median of `key`, and every run.
    """
    runs: dict[str, list[dict]] = {label: [] for label in sides}
    for _ in range(ROUNDS):
        for label, flags in sides.items():
            side = "hf" if label.startswith("hf") else "ours"
            runs[label].append(measured(side, flags, *request))
    median = {
        label: statistics.median(r[key] for r in rs) for label, rs in runs.items()
    }
    return median, runs


def each(runs: list[dict], key: str, digits: int = 1) -> str:
    """One side's runs as "a / b / c" (a note shows every run behind a median)."""
    return " / ".join(f"{r[key]:.{digits}f}" for r in runs)


def _lines(path: Path) -> int:
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.jax.models.qwen2_5.speed")
    parser.add_argument("--side", choices=["ours", "hf"], required=True)
    parser.add_argument(
        "--phase", choices=["decode", "prefill", "gsm8k"], required=True
    )
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--cpu-kernels",
        action="store_true",
        help="ours: with the opt-in CPU acceleration (qwen2_5/cpu_acceleration)",
    )
    parser.add_argument(
        "--data-file",
        type=Path,
        help="GSM8K test.jsonl (gsm8k: the completion lengths)",
    )
    parser.add_argument(
        "--problems",
        type=int,
        default=GSM8K_PROBLEMS,
        help=f"gsm8k: the first N test problems' lengths (default {GSM8K_PROBLEMS})",
    )
    return parser.parse_args(argv)


def refusal(args: argparse.Namespace) -> str | None:
    """What is wrong with a GSM8K request, before any model is loaded (None: nothing)."""
    if args.phase != "gsm8k":
        return None
    if args.data_file is None or not args.data_file.is_file():
        return f"--phase gsm8k needs --data-file GSM8K/test.jsonl, got {args.data_file}"
    held = _lines(args.data_file)
    if not 1 <= args.problems <= held:
        return (
            f"--problems must be between 1 and the {held} problems of "
            f"{args.data_file}, got {args.problems}"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refused = refusal(args)
    if refused is not None:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    request = Request(
        args.model_path,
        args.dtype,
        args.batch,
        args.phase,
        args.data_file,
        args.problems,
    )
    if args.side == "ours":
        value = ours(request, cpu_kernels=args.cpu_kernels)
    else:
        value = hugging_face(request)
    print(
        json.dumps(value if isinstance(value, dict) else {"tokens_per_second": value})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
