# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Time and peak host memory of loading a checkpoint onto a mesh (and of a prefill), in this process.

    python -m tests.jax.models.qwen2_5.load_stats --model-path DIR --mesh 1x8 [--dtype float32] [--naive]
        [--prefill-tokens N [--batch B] [--prefill-chunk C]]

Prints one JSON object. The peak is the growth of the resident set over its size once JAX
is up (the kernel's high-water mark is reset then), so it is the loader's own footprint:
device buffers plus whatever the loader held at its worst moment. --naive measures the
straightforward path instead: the whole model on one device, then sharded. --prefill-tokens
then resets the mark again and prefills B prompts of N tokens: the growth is the prefill's own
footprint (cache, activations, temporaries), reported beside the compiled steps' estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from tests.jax.infra.mesh import make_mesh
from tests.jax.models.qwen2_5.batching import PREFILL_CHUNK
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.loader import load_model, tensor_files
from tests.jax.models.qwen2_5.pipeline import EXPECTED_ERRORS, configure_for
from tests.jax.models.qwen2_5.tensor_parallel import shard_model


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the kernel's high-water mark of this process's resident set; the current size in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.load_stats"
    )
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--mesh", default="1x8")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--naive", action="store_true", help="load on one device, then shard"
    )
    parser.add_argument(
        "--prefill-tokens",
        type=int,
        help="then prefill prompts this long and measure that too",
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="prompts in the prefill batch"
    )
    parser.add_argument("--prefill-chunk", type=int, default=PREFILL_CHUNK)
    return parser.parse_args(argv)


def measure_load(args: argparse.Namespace, mesh, checkpoint_bytes: int) -> tuple:
    """The model loaded (or, --naive, loaded whole and sharded) -> it, and its time and peak RSS."""
    # the backend is up and counted in the baseline
    jax.block_until_ready(jnp.zeros(1) + 1)
    baseline = _reset_peak()
    started = time.perf_counter()
    dtype = getattr(jnp, args.dtype)
    if args.naive:
        model = shard_model(load_model(args.model_path, dtype), mesh)
    else:
        model = load_model(args.model_path, dtype, mesh=mesh)
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
    seconds = time.perf_counter() - started
    peak = (_status_kib("VmHWM") - baseline) * 1024
    stats = {"naive": args.naive, "checkpoint_bytes": checkpoint_bytes}
    stats |= {"load_seconds": seconds, "peak_rss_growth_bytes": peak}
    return model, {**stats, "peak_over_checkpoint": peak / checkpoint_bytes}


def measure_prefill(
    args: argparse.Namespace, model, mesh, checkpoint_bytes: int
) -> dict:
    """Prefill --batch prompts of --prefill-tokens: peak RSS growth against the compiled steps'
    own estimate."""
    generator = Generator(model, (), 0, mesh, args.prefill_chunk)
    prompts = [[100 + i % 1000 for i in range(args.prefill_tokens)]] * args.batch
    layout = generator.layout([args.prefill_tokens] * args.batch, 1)
    # compiles the steps
    estimate = generator.steps.peak_bytes(layout) - generator.weight_bytes
    baseline = _reset_peak()
    generator.generate(prompts, 1)
    grown = (_status_kib("VmHWM") - baseline) * 1024
    return {
        "tokens": args.prefill_tokens,
        "batch": args.batch,
        "chunk": args.prefill_chunk,
        "peak_rss_growth_bytes": grown,
        "over_checkpoint": grown / checkpoint_bytes,
        "estimated_bytes": estimate,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        shape = configure_for(args.mesh)
        mesh = make_mesh(shape, jax.devices())
        files = set(tensor_files(args.model_path).values())
        checkpoint_bytes = sum(f.stat().st_size for f in files)
        model, stats = measure_load(args, mesh, checkpoint_bytes)
        stats["mesh"] = shape.name
        if args.prefill_tokens:
            stats["prefill"] = measure_prefill(args, model, mesh, checkpoint_bytes)
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
