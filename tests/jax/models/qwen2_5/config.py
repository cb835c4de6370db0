"""The static configuration of a Qwen2.5 model, read from a Hugging Face `config.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a model this package can run."""


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
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ConfigError(f"head_dim must be a positive even number (RoPE rotates pairs), got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads} (GQA groups)"
            )

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> Qwen2Config:
        """From the fields of a Hugging Face Qwen2 `config.json`; refuses features it would ignore."""
        if hf.get("model_type") != "qwen2":
            raise ConfigError(
                f"model_type is {hf.get('model_type')!r}, not 'qwen2': this is not a Qwen2/Qwen2.5 checkpoint"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported (Qwen2 uses silu)")
        if hf.get("use_sliding_window", False):
            raise ConfigError("use_sliding_window=true is not supported: Qwen2.5 checkpoints use full attention")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"RoPE scaling {rope_type!r} is not supported; remove rope_scaling to use plain RoPE")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        try:
            return cls(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"],
                num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                rope_theta=float(theta),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                max_position_embeddings=hf.get("max_position_embeddings", 32768),
            )
        except KeyError as err:
            raise ConfigError(f"config.json lacks the field {err.args[0]!r}") from err

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> Qwen2Config:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: point at a Hugging Face checkpoint directory")
        try:
            return cls.from_hf_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from err

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
