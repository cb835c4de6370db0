# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The checkpoint loader and config parser: what loads, and every way a checkpoint is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from tests.jax.infra.cli import run_cli
from tests.jax.infra.compat import value_of
from tests.jax.infra.equivalence import COMPILE_ONLY_PROPERTY
from tests.jax.models.qwen2_5.checkpoint_writer import write_weights
from tests.jax.models.qwen2_5.config import (
    QWEN2_5_7B,
    TINY_PRESETS,
    ConfigError,
    Qwen2Config,
)
from tests.jax.models.qwen2_5.hf_golden import build_checkpoint
from tests.jax.models.qwen2_5.loader import INDEX_FILE, CheckpointError, load_model
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.tensor_parallel import shard_model
from tests.jax.models.qwen2_5.workloads import left_padded_batch

pytestmark = [pytest.mark.single_device, pytest.mark.model_test]

# The config.json published with Qwen2.5-7B-Instruct.
QWEN2_5_7B_INSTRUCT_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """A private, editable copy of the sharded gqa28x4 checkpoint."""
    return Path(shutil.copytree(tiny_checkpoint("gqa28x4"), tmp_path / "ckpt"))


def _shard_of(ckpt: Path, name: str) -> Path:
    return ckpt / json.loads((ckpt / INDEX_FILE).read_text())["weight_map"][name]


def _rewrite(
    ckpt: Path, name: str, value: np.ndarray | None, *, new_name: str | None = None
) -> None:
    """Replace (or drop, with None) tensor `name`; with `new_name`, add `value` under that name."""
    shard = _shard_of(ckpt, name)
    tensors = load_file(shard)
    index = json.loads((ckpt / INDEX_FILE).read_text())
    if new_name:
        tensors[new_name] = value
        index["weight_map"][new_name] = shard.name
    elif value is None:
        del tensors[name]
        del index["weight_map"][name]
    else:
        tensors[name] = value
    save_file(tensors, shard, metadata={"format": "pt"})
    (ckpt / INDEX_FILE).write_text(json.dumps(index))


def _logits(model, cfg):
    batch = left_padded_batch(cfg.vocab_size, [9, 6], 9)
    return np.asarray(
        jax.jit(lambda i, p, m: model(i, p, m))(
            batch.input_ids, batch.positions, batch.attention_mask
        )
    )


@pytest.mark.push
def test_single_file_and_sharded_checkpoints_load_the_same_weights(
    tiny_checkpoint, tmp_path
):
    cfg = TINY_PRESETS["gqa28x4"]
    single = build_checkpoint(cfg, tmp_path / "single", max_shard_size="1GB")
    assert (single / "model.safetensors").is_file() and not (
        single / INDEX_FILE
    ).exists()
    sharded = tiny_checkpoint("gqa28x4")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    np.testing.assert_array_equal(
        _logits(load_model(single), cfg), _logits(load_model(sharded), cfg)
    )


@pytest.mark.push
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_loads_in_the_target_dtype(tiny_checkpoint, dtype):
    model = load_model(tiny_checkpoint("gqa14x2_tied"), dtype)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model))}
    assert dtypes == {jnp.dtype(dtype)}
    assert model.lm_head is None  # tied: logits come from the embedding table


@pytest.mark.push
def test_missing_tensor_is_named(checkpoint):
    _rewrite(checkpoint, "model.layers.1.self_attn.k_proj.bias", None)
    with pytest.raises(
        CheckpointError,
        match=r"missing tensors .*model\.layers\.1\.self_attn\.k_proj\.bias",
    ):
        load_model(checkpoint)


@pytest.mark.push
def test_unexpected_tensor_is_named(checkpoint):
    extra = np.zeros(4, np.float32)
    _rewrite(
        checkpoint,
        "model.norm.weight",
        extra,
        new_name="model.layers.0.self_attn.rotary_emb.inv_freq",
    )
    with pytest.raises(
        CheckpointError,
        match=r"does not use: model\.layers\.0\.self_attn\.rotary_emb\.inv_freq",
    ):
        load_model(checkpoint)


@pytest.mark.push
def test_shape_mismatch_is_named_with_both_shapes(checkpoint):
    _rewrite(
        checkpoint,
        "model.layers.0.mlp.up_proj.weight",
        np.zeros((1184, 200), np.float32),
    )
    with pytest.raises(
        CheckpointError,
        match=r"up_proj\.weight has shape \(1184, 200\), expected \(1184, 224\)",
    ):
        load_model(checkpoint)


@pytest.mark.push
def test_config_that_disagrees_with_the_weights(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensors .*model\.layers\.2\."):
        load_model(checkpoint)


@pytest.mark.push
def test_missing_shard_file(checkpoint):
    shard = _shard_of(checkpoint, "lm_head.weight")
    shard.unlink()
    with pytest.raises(
        CheckpointError, match=f"shard files that do not exist: {shard.name}"
    ):
        load_model(checkpoint)


@pytest.mark.push
def test_pickle_weights_are_refused(checkpoint):
    for f in checkpoint.glob("*.safetensors*"):
        f.unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle weights, which are never loaded"):
        load_model(checkpoint)


@pytest.mark.push
def test_no_weights(checkpoint):
    for f in checkpoint.glob("*.safetensors*"):
        f.unlink()
    with pytest.raises(
        CheckpointError,
        match="has neither model.safetensors nor model.safetensors.index.json",
    ):
        load_model(checkpoint)


@pytest.mark.push
def test_not_a_directory(tmp_path):
    with pytest.raises(
        ConfigError,
        match="does not exist: point at a Hugging Face checkpoint directory",
    ):
        load_model(tmp_path / "nowhere")


@pytest.mark.push
def test_config_json_must_be_qwen2(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(
        json.dumps({**config, "model_type": "llama"})
    )
    with pytest.raises(ConfigError, match="not a Qwen2/Qwen2.5 checkpoint"):
        load_model(checkpoint)


@pytest.mark.push
def test_config_json_must_be_json(checkpoint):
    (checkpoint / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_model(checkpoint)


@pytest.mark.push
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"rope_scaling": {"type": "yarn", "factor": 4.0}},
            "RoPE scaling 'yarn' is not supported",
        ),
        ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_key_value_heads": 5}, "not a multiple of num_kv_heads 5"),
        ({"vocab_size": None}, "lacks the field 'vocab_size'"),
    ],
)
def test_config_refuses_what_it_would_ignore(change, message):
    hf = {
        k: v
        for k, v in {**QWEN2_5_7B_INSTRUCT_CONFIG, **change}.items()
        if v is not None or k == "rope_scaling"
    }
    with pytest.raises(ConfigError, match=message):
        Qwen2Config.from_hf_dict(hf)


@pytest.mark.push
def test_published_7b_config_is_the_7b_preset():
    assert Qwen2Config.from_hf_dict(QWEN2_5_7B_INSTRUCT_CONFIG) == QWEN2_5_7B


@pytest.mark.push
@pytest.mark.parametrize("preset", list(TINY_PRESETS))
def test_config_round_trips_through_transformers(preset):
    from transformers import Qwen2Config as HFQwen2Config

    cfg = TINY_PRESETS[preset]
    assert Qwen2Config.from_hf_dict(HFQwen2Config(**cfg.to_hf_dict()).to_dict()) == cfg


@pytest.mark.push
@pytest.mark.tensor_parallel
@pytest.mark.parametrize("preset", list(TINY_PRESETS))
def test_loading_onto_the_mesh_equals_sharding_in_memory(
    preset, mesh, dut, tiny_checkpoint, record_property
):
    """Per-device slices read from the files (padding and transposes per slice) give exactly the
    arrays, and the placements, of loading whole and then sharding (placements only on a
    compile-only device, whose buffers hold no data)."""
    path = tiny_checkpoint(preset)
    direct = nnx.to_flat_state(nnx.state(load_model(path, mesh=mesh)))
    reference = dict(nnx.to_flat_state(nnx.state(shard_model(load_model(path), mesh))))
    for key, variable in direct:
        expected = value_of(reference[key])
        assert value_of(variable).sharding.is_equivalent_to(
            expected.sharding, expected.ndim
        ), key
        if not dut.compile_only:
            np.testing.assert_array_equal(
                np.asarray(value_of(variable)), np.asarray(expected), err_msg=str(key)
            )
    if dut.compile_only:
        record_property(*COMPILE_ONLY_PROPERTY)


@pytest.fixture(scope="module")
def sizeable_checkpoint(tmp_path_factory) -> Path:
    """~0.5 GB float32 in 64 MB shards, 7B's 28:4 heads: large enough that the interpreter and
    JAX do not dominate the measurement, small enough for CI; the largest tensor is 3% of it.
    """
    cfg = Qwen2Config(
        vocab_size=8192,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=8,
        num_heads=28,
        num_kv_heads=4,
        head_dim=32,
        max_position_embeddings=512,
    )
    out = tmp_path_factory.mktemp("sizeable")
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    write_weights(
        Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)), out, max_shard_bytes=64 * 2**20
    )
    return out


def _load_stats(path: Path, *flags: str) -> dict:
    done = run_cli(
        "tests.jax.models.qwen2_5.load_stats", "--model-path", str(path), *flags
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.nightly  # a memory measurement of a 0.5 GB load
@pytest.mark.tensor_parallel
def test_loading_onto_1x8_holds_little_more_than_the_checkpoint(
    sizeable_checkpoint, record_property
):
    """Peak RSS growth <= 1.15x the checkpoint's bytes: the shards themselves (1.03x here: zero pad
    heads and KV copies) plus one tensor's pages at a time; the naive path holds the whole model,
    then its sharded copy (measured ~2.1x)."""
    bounded = _load_stats(sizeable_checkpoint, "--mesh", "1x8")
    naive = _load_stats(sizeable_checkpoint, "--mesh", "1x8", "--naive")
    record_property("peak_over_checkpoint", bounded["peak_over_checkpoint"])
    record_property("naive_peak_over_checkpoint", naive["peak_over_checkpoint"])
    assert bounded["peak_over_checkpoint"] <= 1.15
    assert naive["peak_over_checkpoint"] > bounded["peak_over_checkpoint"] + 0.5
