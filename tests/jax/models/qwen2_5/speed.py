# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""One speed measurement in a fresh process: ours or Hugging Face, decode, prefill or GSM8K.

    python -m tests.jax.models.qwen2_5.speed --side ours|hf --phase decode|prefill|gsm8k
        --model-path DIR --dtype float32|bfloat16 --batch B [--cpu-class native|avx2]

Prints {"tokens_per_second": ...} (gsm8k: {"problems_per_minute": ...}). One process per
measurement: PyTorch's OpenMP threads keep spinning after its work and XLA's pool does the
same, so two runtimes in one process on two cores slow each other down and neither figure
would be fair.

decode: greedy tokens/s as extra tokens over extra time between 8 and 40 new tokens after a
32-token prompt (prefill and compilation excluded). prefill: tokens/s of a 512-token prompt.
gsm8k: problems per minute of GSM8K-shaped work, batched as each harness batches it: 16 fixed
prompts of 700-1,000 tokens (5-shot GSM8K prompts under Qwen's tokenizer), longest first in
batches of B, left-padded, GSM8K_NEW_TOKENS greedy tokens each (no early stop, so both sides do
the same work); compilation excluded (a warm-up pass over the same batches).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tests.infra.cpu_class import emulate_avx2_only

SHORT, LONG, PROMPT_LEN, PREFILL_LEN = 8, 40, 32, 512
GSM8K_PROBLEMS, GSM8K_NEW_TOKENS = 16, 64


def gsm8k_prompts() -> list[list[int]]:
    """Fixed prompts with the lengths of 5-shot GSM8K prompts, in problem order."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [
        rng.integers(100, 50_000, n).tolist()
        for n in rng.integers(700, 1_001, GSM8K_PROBLEMS)
    ]


def gsm8k_batches(batch: int) -> list[list[list[int]]]:
    """The prompts longest first in batches of `batch`, as lm-evaluation-harness and our GSM8K run order them."""
    prompts = sorted(gsm8k_prompts(), key=len, reverse=True)
    return [prompts[i : i + batch] for i in range(0, len(prompts), batch)]


def _timed(fn, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def ours(model_path: Path, dtype: str, batch: int, phase: str) -> float:
    from tests.infra.devices import configure_jax

    configure_jax(cpu_devices=1)
    import jax.numpy as jnp

    from tests.jax.models.qwen2_5 import cpu_products

    cpu_products.install()

    from tests.jax.models.qwen2_5.generation import Generator
    from tests.jax.models.qwen2_5.loader import load_model

    gen = Generator(load_model(model_path, getattr(jnp, dtype)), (), 0)
    if phase == "gsm8k":
        batches = gsm8k_batches(batch)
        for prompts in batches:  # compile every layout once
            gen.generate(prompts, GSM8K_NEW_TOKENS)
        seconds = _timed(
            lambda: [gen.generate(prompts, GSM8K_NEW_TOKENS) for prompts in batches]
        )
        return 60 * GSM8K_PROBLEMS / seconds
    if phase == "prefill":
        prompts = [[100 + i % 1000 for i in range(PREFILL_LEN)]] * batch
        gen.generate(prompts, 1)
        return (
            batch
            * PREFILL_LEN
            / min(gen.generate(prompts, 1).prefill_seconds for _ in range(3))
        )
    prompts = [list(range(100, 100 + PROMPT_LEN))] * batch
    for n in (SHORT, LONG):  # compile and warm both
        gen.generate(prompts, n)
    short, long = (
        _timed(lambda n=n: gen.generate(prompts, n), 2) for n in (SHORT, LONG)
    )
    return batch * (LONG - SHORT) / (long - short)


def hugging_face(model_path: Path, dtype: str, batch: int, phase: str) -> float:
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, dtype)
    ).eval()
    with torch.no_grad():
        if phase == "gsm8k":
            # As lm-evaluation-harness's HF backend: left-padded batches, one generate call each.
            padded = []
            for prompts in gsm8k_batches(batch):
                width = max(map(len, prompts))
                ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
                mask = torch.tensor(
                    [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
                )
                padded.append((ids, mask))

            def run_all() -> None:
                for ids, mask in padded:
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=GSM8K_NEW_TOKENS,
                        min_new_tokens=GSM8K_NEW_TOKENS,
                        do_sample=False,
                        pad_token_id=0,
                    )

            run_all()
            return 60 * GSM8K_PROBLEMS / _timed(run_all)
        if phase == "prefill":
            ids = torch.tensor([[100 + i % 1000 for i in range(PREFILL_LEN)]] * batch)
            model(ids)
            return batch * PREFILL_LEN / _timed(lambda: model(ids), 3)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.jax.models.qwen2_5.speed")
    parser.add_argument("--side", choices=["ours", "hf"], required=True)
    parser.add_argument(
        "--phase", choices=["decode", "prefill", "gsm8k"], required=True
    )
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--cpu-class",
        choices=["native", "avx2"],
        default="native",
        help="avx2: pick kernels as an AVX2-only CPU would (tests/infra/cpu_class.py)",
    )
    args = parser.parse_args(argv)
    if args.cpu_class == "avx2":
        emulate_avx2_only()
    measure = ours if args.side == "ours" else hugging_face
    unit = "problems_per_minute" if args.phase == "gsm8k" else "tokens_per_second"
    print(
        json.dumps({unit: measure(args.model_path, args.dtype, args.batch, args.phase)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
