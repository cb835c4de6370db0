# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The Hugging Face PyTorch golden: random Qwen2 checkpoints and helpers to run their modules.

Test-only (imports torch). Checkpoints are written by `transformers` itself with
`save_pretrained`, so the loader is tested against the real on-disk format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM

from tests.jax.models.qwen2_5.config import Qwen2Config

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_checkpoint(
    cfg: Qwen2Config,
    out_dir: Path,
    *,
    seed: int = 0,
    max_shard_size: str = "100KB",
    bias_scale: float = 0.1,
) -> Path:
    """Save a random `Qwen2ForCausalLM` for `cfg` to `out_dir` (sharded safetensors) and return it.

    Hugging Face initializes biases to 0 and norm weights to 1, which would let a loader that
    drops them pass; every parameter is therefore drawn at random here (biases with standard
    deviation `bias_scale`).
    """
    torch.manual_seed(seed)
    model = HFQwen2ForCausalLM(HFQwen2Config(**cfg.to_hf_dict()))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(bias_scale * torch.randn_like(param))
            else:
                # 0.05, larger than the 0.02 init, so logits spread enough that argmax is meaningful.
                param.copy_(0.05 * torch.randn_like(param))
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    return Path(out_dir)


def load_hf(model_dir: Path, dtype: str) -> HFQwen2ForCausalLM:
    """The checkpoint in Hugging Face, in `dtype`, with the eager (reference) attention."""
    model = HFQwen2ForCausalLM.from_pretrained(
        model_dir, dtype=TORCH_DTYPES[dtype], attn_implementation="eager"
    )
    return model.eval()


def to_torch(x: np.ndarray, dtype: str | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.array(x))
    return t.to(TORCH_DTYPES[dtype]) if dtype else t


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy()


def additive_mask(mask: np.ndarray, dtype: str) -> torch.Tensor:
    """(B, T, S) bool -> the (B, 1, T, S) additive mask Hugging Face's eager attention takes."""
    torch_dtype = TORCH_DTYPES[dtype]
    allowed = to_torch(mask)[:, None]
    return torch.zeros(allowed.shape, dtype=torch_dtype).masked_fill(
        ~allowed, torch.finfo(torch_dtype).min
    )
