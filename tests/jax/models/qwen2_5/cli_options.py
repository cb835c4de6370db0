# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The flags the generate and GSM8K command lines share, defined once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_options(
    parser: argparse.ArgumentParser, *, max_new_tokens: int, compare_help: str
) -> None:
    """--model-path, --mesh, --dtype, --chat, --max-new-tokens, --compare-single-device, --cpu-kernels."""
    parser.add_argument(
        "--model-path",
        type=Path,
        help="Hugging Face checkpoint directory (default: the demo, SmolLM2-135M-Instruct run as Qwen2)",
    )
    parser.add_argument(
        "--mesh", default="1x1", help="BATCHxMODEL device mesh; 1x1 is a single device"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt in the checkpoint's chat template",
    )
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument(
        "--compare-single-device", action="store_true", help=compare_help
    )
    parser.add_argument(
        "--cpu-kernels",
        action="store_true",
        help="run with the opt-in CPU acceleration (qwen2_5/cpu_acceleration: bfloat16 decode "
        "products by a C++ kernel built with the host's compiler); default: the plain golden",
    )
