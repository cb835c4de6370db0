# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The Hugging Face PyTorch golden: random Qwen2 checkpoints, a GGUF read by transformers, exact
float64 logits, greedy generation, and helpers to run modules.

Test-only (imports torch). Checkpoints are written by `transformers` itself with
`save_pretrained`, so the loader is tested against the real on-disk format.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2ForCausalLM as HFQwen2ForCausalLM
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

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


def load_hf_gguf(gguf: Path, dtype: str):
    """transformers' own reading of a llama.cpp GGUF file (its dequantization, its q/k row order)
    as its Llama model, with eager attention. Built as from_pretrained(gguf_file=...) builds it but
    without accelerate, which that call wants and which imports torch_xla's data loader wherever
    torch_xla is installed (tt-xla's venv)."""
    config = load_gguf_checkpoint(str(gguf))["config"]
    model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="eager"))
    read = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    missing, unexpected = model.load_state_dict(read["tensors"], strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.to(TORCH_DTYPES[dtype]).eval()


def exact_logits(model_dir: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    """Each prompt's logits (T, V) computed by Hugging Face in float64: an exact answer for a
    float32 run. Each prompt alone: in float64 a pad query's attention weights are NaN (its mask
    sums to -inf), which a padded batch carries into the real rows."""
    model = HFQwen2ForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([p])).logits[0].numpy() for p in prompts]


def hf_greedy(
    model, prompts: list[list[int]], new_tokens: int, eos: list[int], pad: int
) -> list[list[int]]:
    """Hugging Face `generate` (greedy) over the left-padded prompts: each row's tokens up to and
    including its first EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=pad,
        )
    generated = []
    for row in out[:, width:].tolist():
        stop = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        generated.append(row[:stop])
    return generated


class _StopRule(StoppingCriteria):
    """A batch-of-one generation ends when `stop(its tokens so far)` holds."""

    def __init__(self, stop: Callable[[list[int]], bool], prompt_len: int) -> None:
        self.stop, self.prompt_len = stop, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = self.stop(input_ids[0, self.prompt_len :].tolist())
        return torch.tensor([done])


def hf_greedy_until(
    model,
    prompt: list[int],
    new_tokens: int,
    eos: list[int],
    stop: Callable[[list[int]], bool],
) -> list[int]:
    """Hugging Face's greedy completion of one prompt (no padding), ended as a run of ours ends:
    at EOS (kept), when `stop(tokens)` holds, or after `new_tokens`."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=eos[0],
            stopping_criteria=StoppingCriteriaList([_StopRule(stop, len(prompt))]),
        )
    return out[0, len(prompt) :].tolist()
