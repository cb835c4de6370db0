# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Writing Hugging Face checkpoint directories without PyTorch: weights, config, tokenizer.

Used for the unit tests' tiny random-weight Qwen2.5-architecture checkpoints, for tests that
need a tokenizer, and for the demo cache (where smollm2.py converts the trained demo model).
The tokenizer is a byte-level BPE, like Qwen2's, trained here on a fixed text, with Qwen2's
special tokens and chat template.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tests.jax.infra.compat import value_of
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.loader import (
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    hf_name,
)
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen2.5-Instruct's template: ChatML with a default system message.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = """\
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? Answer: Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May. #### 72
The quick brown fox jumps over the lazy dog. Tensor parallelism splits every layer over many devices;
each device holds whole attention heads and a slice of the feed-forward network, and the partial
results are summed with an all-reduce. You are a helpful assistant. What is the capital of France?
The capital of France is Paris. Hello, world! 0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = $ % . , ; : ? !
"""


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` tokens (specials first: ids 0, 1, 2) with the chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
    )


def write_generation_config(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """EOS ids as Qwen2.5-Instruct declares them: <|im_end|> and <|endoftext|>."""
    ids = tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    config = {"eos_token_id": ids, "pad_token_id": ids[1], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(config, indent=2))


def write_tensors(
    tensors: dict[str, np.ndarray], out_dir: Path, max_shard_bytes: int = 2**30
) -> None:
    """Named tensors as safetensors, sharded with an index past `max_shard_bytes`."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = np.ascontiguousarray(array)
        size += array.nbytes
    if len(shards) == 1:
        save_file(shards[0], out_dir / SINGLE_FILE, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    (out_dir / INDEX_FILE).write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )


def write_weights(model: Qwen2ForCausalLM, out_dir: Path, max_shard_bytes: int) -> None:
    """The model's weights under Hugging Face names (write_tensors)."""
    tensors = {
        hf_name(path): np.asarray(jax.device_get(value_of(variable)))
        for path, variable in nnx.to_flat_state(nnx.state(model))
    }
    write_tensors(tensors, out_dir, max_shard_bytes)


def write_checkpoint(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    max_shard_bytes: int = 2**30,
) -> Path:
    """A complete checkpoint directory: config, generation config, weights and tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        **model.cfg.to_hf_dict(),
        "torch_dtype": str(model.model.norm.weight.dtype),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    write_generation_config(out_dir, tokenizer)
    write_weights(model, out_dir, max_shard_bytes)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# The unit tests' command-line checkpoint: the 28:4-head tiny preset (so every mesh pads and
# replicates as 7B does) with room for a chat prompt and a few-shot GSM8K prompt.
TINY_RANDOM_CONFIG = TINY_PRESETS["gqa28x4"].replace(max_position_embeddings=2048)
TINY_RANDOM_NAME = "qwen2_5-tiny-random-v1"


def demo_cache_dir() -> Path:
    """Where checkpoints made on the fly are kept: QWEN2_5_DEMO_CACHE, else the user's cache."""
    root = os.environ.get("QWEN2_5_DEMO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwen2_5_tt"
    )
    return Path(root)


def cached_checkpoint(
    name: str, build: Callable[[Path], None], cache_dir: Path | None = None
) -> Path:
    """The checkpoint directory `name` in the demo cache, made by `build(dir)` once and reused.

    Built in a temporary directory and renamed into place, so a crash never leaves a
    half-written checkpoint where the next run would find it.
    """
    target = (cache_dir or demo_cache_dir()) / name
    if (target / "config.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            build(staging)
            try:
                staging.rename(target)
            except OSError:  # another process finished first; theirs is as good as ours
                shutil.rmtree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    except OSError as err:
        raise CheckpointError(
            f"cannot create the checkpoint {name} in {target.parent} ({err.strerror or err}): set "
            "QWEN2_5_DEMO_CACHE to a writable directory, or pass --model-path"
        ) from err
    return target


def tiny_random_checkpoint(cache_dir: Path | None = None) -> Path:
    """The tiny random-weight checkpoint of the unit tests, created once and reused."""

    def build(out_dir: Path) -> None:
        model = Qwen2ForCausalLM(TINY_RANDOM_CONFIG, rngs=nnx.Rngs(0))
        write_checkpoint(model, build_tokenizer(TINY_RANDOM_CONFIG.vocab_size), out_dir)

    return cached_checkpoint(TINY_RANDOM_NAME, build, cache_dir)
