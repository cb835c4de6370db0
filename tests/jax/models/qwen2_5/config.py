# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The static configuration of a Qwen2.5 model, read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a model this package can run."""


_MISSING = object()


def _field(hf: dict, name: str, default: Any) -> Any:
    value = hf.get(name, default)
    if value is _MISSING or value is None and default is _MISSING:
        raise ConfigError(f"lacks the field {name!r}")
    return default if value is None else value


def _integer(hf: dict, name: str, default: Any = _MISSING) -> int:
    """A field that must be a JSON integer >= 1 (a string "2" or a boolean is refused)."""
    value = _field(hf, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _positive_number(hf: dict, name: str, default: Any = _MISSING) -> float:
    """A field that must be a finite JSON number > 0."""
    value = _field(hf, name, default)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _boolean(hf: dict, name: str, default: Any = _MISSING) -> bool:
    """A field that must be JSON true or false (the string "false" is refused: it would read as true)."""
    value = _field(hf, name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _refuse_what_would_be_ignored(hf: dict) -> dict:
    """Refuse another model type or activation, sliding windows, RoPE scaling and layer kinds other
    than full attention; returns the RoPE parameters (rope_theta may be there)."""
    if hf.get("model_type") != "qwen2":
        raise ConfigError(
            f"model_type is {hf.get('model_type')!r}, not 'qwen2': this is not a Qwen2/Qwen2.5 checkpoint"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(
            f"hidden_act {hf['hidden_act']!r} is not supported (Qwen2 uses silu)"
        )
    if _boolean(hf, "use_sliding_window", False):
        raise ConfigError(
            "use_sliding_window=true is not supported: Qwen2.5 checkpoints use full attention"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"rope_scaling must be a JSON object or null, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(
            f"RoPE scaling {rope_type!r} is not supported; remove rope_scaling to use plain RoPE"
        )
    # transformers' bookkeeping of each layer's attention; only its kinds matter here (its length
    # is transformers' concern: the weights decide how many layers there are).
    layer_types = hf.get("layer_types") or []
    if not isinstance(layer_types, list) or set(layer_types) - {"full_attention"}:
        raise ConfigError(
            f"layer_types other than 'full_attention' are not supported, got {layer_types!r}"
        )
    return rope


def _head_dim(hf: dict, hidden: int, heads: int) -> int:
    """head_dim, or (null is Hugging Face's "not set") hidden / heads."""
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}: set head_dim"
            )
        head_dim = hidden // heads
    return _integer({"head_dim": head_dim}, "head_dim")


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    # Explicit, not hidden_size // num_heads: the tensor-parallel plan pads query heads and
    # replicates KV heads, which changes the head counts but never the head width.
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ConfigError(
                f"head_dim must be a positive even number (RoPE rotates pairs), got {self.head_dim}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads} (GQA groups)"
            )

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_dict(cls, hf: Any) -> Qwen2Config:
        """From the fields of a Hugging Face Qwen2 `config.json`: every field the model uses is
        checked for its JSON type and range (named in the error), and features it would
        otherwise ignore are refused."""
        if not isinstance(hf, dict):
            raise ConfigError(
                f"must hold a JSON object of fields, not a JSON {type(hf).__name__}"
            )
        rope = _refuse_what_would_be_ignored(hf)
        hidden, heads = _integer(hf, "hidden_size"), _integer(hf, "num_attention_heads")
        return cls(
            vocab_size=_integer(hf, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_integer(hf, "intermediate_size"),
            num_layers=_integer(hf, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=_integer(hf, "num_key_value_heads", heads),
            head_dim=_head_dim(hf, hidden, heads),
            rope_theta=_positive_number(
                rope, "rope_theta", _positive_number(hf, "rope_theta", 10000.0)
            ),
            rms_norm_eps=_positive_number(hf, "rms_norm_eps", 1e-6),
            tie_word_embeddings=_boolean(hf, "tie_word_embeddings", False),
            max_position_embeddings=_integer(hf, "max_position_embeddings", 32768),
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Qwen2Config:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist: point at a Hugging Face checkpoint directory"
            )
        try:
            fields = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_hf_dict(fields)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `Qwen2Config` fields that describe the same model."""
        return {
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
        }

    def replace(self, **changes: Any) -> Qwen2Config:
        return Qwen2Config(**{**asdict(self), **changes})


QWEN2_5_7B = Qwen2Config(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    max_position_embeddings=32768,
)

# Qwen2.5-0.5B's shapes: the benchmark model (tied embeddings, 14:2 heads of 64).
QWEN2_5_0_5B = Qwen2Config(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
)


def _qwen2_5(
    hidden: int,
    mlp: int,
    layers: int,
    heads: int,
    kv_heads: int,
    tied: bool,
    eps: float,
) -> Qwen2Config:
    """A Qwen2.5 size from its public config.json (head_dim 128, RoPE theta 1e6; the Instruct
    models' 32,768-token context)."""
    return Qwen2Config(
        vocab_size=151936 if tied else 152064,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=128,
        rope_theta=1_000_000.0,
        rms_norm_eps=eps,
        tie_word_embeddings=tied,
        max_position_embeddings=32768,
    )


# Every size of the family, by the name `plan --model` takes.
QWEN2_5_FAMILY: dict[str, Qwen2Config] = {
    "0.5B": QWEN2_5_0_5B,
    "1.5B": _qwen2_5(1536, 8960, 28, 12, 2, tied=True, eps=1e-6),
    "3B": _qwen2_5(2048, 11008, 36, 16, 2, tied=True, eps=1e-6),
    "7B": QWEN2_5_7B,
    "14B": _qwen2_5(5120, 13824, 48, 40, 8, tied=False, eps=1e-5),
    "32B": _qwen2_5(5120, 27648, 64, 40, 8, tied=False, eps=1e-5),
    "72B": _qwen2_5(8192, 29568, 80, 64, 8, tied=False, eps=1e-5),
}

# Tiny test presets keep the head ratios that make tensor parallelism hard, at sizes a
# 2-core machine runs in milliseconds. Widths are multiples of 32 so every mesh up to 1x32
# divides the MLP and the vocabulary.
TINY_PRESETS: dict[str, Qwen2Config] = {
    # 7B's 28:4 query:KV heads (7 queries per KV head), untied lm_head.
    "gqa28x4": Qwen2Config(
        vocab_size=512,
        hidden_size=224,
        intermediate_size=1184,
        num_layers=2,
        num_heads=28,
        num_kv_heads=4,
        head_dim=8,
        max_position_embeddings=256,
    ),
    # 0.5B's 14:2 heads with tied embeddings.
    "gqa14x2_tied": Qwen2Config(
        vocab_size=512,
        hidden_size=112,
        intermediate_size=608,
        num_layers=2,
        num_heads=14,
        num_kv_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    ),
    # Plain multi-head attention (one query per KV head).
    "mha8": Qwen2Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=352,
        num_layers=2,
        num_heads=8,
        num_kv_heads=8,
        head_dim=16,
        max_position_embeddings=256,
    ),
}
