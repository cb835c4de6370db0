# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Generation: the KV cache against full recompute, greedy tokens against Hugging Face and
across meshes, compilation per shape bucket, sampling, stopping, and the CLI."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding

from tests.jax.infra.cli import run_cli, run_cli_calls
from tests.jax.infra.collectives import check_collectives
from tests.jax.infra.equivalence import COMPILE_ONLY_PROPERTY
from tests.jax.models.qwen2_5.batching import GenerationError, layout_for
from tests.jax.models.qwen2_5.checkpoint_writer import tiny_random_checkpoint
from tests.jax.models.qwen2_5.continuous import ContinuousRun
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.hf_golden import hf_greedy, load_hf
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.model import KV_AXES, PLAIN, Kernels, init_cache
from tests.jax.models.qwen2_5.partitioning import logical_to_spec
from tests.jax.models.qwen2_5.sampling import SamplingConfig, SamplingParams, sample
from tests.jax.models.qwen2_5.smollm2 import NAME as SMOLLM2
from tests.jax.models.qwen2_5.step_checks import compiles_as_planned
from tests.jax.models.qwen2_5.tensor_parallel import (
    batch_sharding,
    forward_all_reduces,
    shard_model,
)
from tests.jax.models.qwen2_5.tt_forms import kernels_for
from tests.jax.models.qwen2_5.workloads import left_padded_batch

pytestmark = [pytest.mark.model_test]

# Three prompts (divides neither batch axis 2 nor 8: padded rows are exercised) of mixed length.
PROMPTS = [
    [5, 17, 300, 42, 8, 99, 123, 7, 64, 11, 2 + 300],
    [77, 3, 250],
    [401, 19, 88, 6, 150, 33],
]
NEW_TOKENS = 32
# <|im_end|>, <|endoftext|> of the local tokenizer, as in its generation_config.json
EOS = (
    2,
    0,
)


@pytest.fixture(scope="module")
def model_for(tiny_checkpoint):
    @functools.cache
    def get(preset: str = "gqa28x4", dtype: str = "float32"):
        return load_model(tiny_checkpoint(preset), getattr(jnp, dtype))

    return get


@pytest.fixture(scope="module")
def hf_tokens(tiny_checkpoint):
    """Hugging Face `generate` (greedy) on the same checkpoint: the reference token ids per prompt."""
    hf = load_hf(tiny_checkpoint("gqa28x4"), "float32")
    return hf_greedy(hf, PROMPTS, NEW_TOKENS, list(EOS), 0)


def generator(model, mesh=None, kernels: Kernels = PLAIN) -> Generator:
    """On `mesh` (a sharded copy with `kernels`), or on one device."""
    sharded = model if mesh is None else shard_model(model, mesh, kernels)
    return Generator(sharded, EOS, 0, mesh)


@pytest.mark.push
def test_greedy_matches_hugging_face_single_device(model_for, hf_tokens):
    result = generator(model_for()).generate(PROMPTS, NEW_TOKENS)
    assert result.generated_token_ids == hf_tokens
    # at least one row ran the full 32 tokens
    assert max(map(len, hf_tokens)) == NEW_TOKENS


@pytest.mark.push_where(mesh="1x8")
# 1x32 and 8x4: their caches in test_cached_decode
@pytest.mark.nightly_unless(mesh=("1x8", "2x4"))
@pytest.mark.tensor_parallel
def test_greedy_on_mesh_matches_single_device_and_hugging_face(
    mesh, dut, model_for, hf_tokens, record_property
):
    gen = generator(model_for(), mesh, kernels_for(dut.platform))
    if compiles_as_planned(
        gen, PROMPTS, NEW_TOKENS, SamplingConfig(), mesh, dut, record_property
    ):
        assert gen.generate(PROMPTS, NEW_TOKENS).generated_token_ids == hf_tokens


# Seven prompts of 3 to 40 tokens (two chunk widths with prefill_chunk 16) for 3 rows: every row
# takes several prompts in turn.
STREAM = [
    [(7 * i + 3 * j) % 500 + 1 for j in range(n)]
    for i, n in enumerate((11, 3, 130, 6, 25, 17, 9))
]


def ends_unevenly(tokens: list[int]) -> bool:
    """A stop rule that ends the stream's completions after different numbers of tokens."""
    return tokens[-1] % 5 == 0


@pytest.mark.nightly_unless(mesh=("1x8", "2x4"))
@pytest.mark.tensor_parallel
def test_continuous_batching_gives_the_static_batches_tokens(
    mesh, dut, model_for, record_property
):
    """The same prompts in 3 rows taken in turn (each prompt prefilled alone into a finished
    row's cache, rows decoding at their own slots) and in one static batch: float32 tokens are
    equal, on every mesh and against one device; no prompt's tokens depend on its schedule.
    Chunks of 32: the static batch prefills five whole chunks; alone, the 130-token prompt
    takes a narrow chunk then whole ones of 32 times a batch group's rows (96 on one group of 3
    rows, 64 on 2x4, 32 on 8x4), the others one chunk.
    """
    sharded = shard_model(model_for(), mesh, kernels_for(dut.platform))
    gen = Generator(sharded, EOS, 0, mesh, prefill_chunk=32)
    if dut.compile_only:
        record_property(*COMPILE_ONLY_PROPERTY)
        return
    static = gen.generate(STREAM, NEW_TOKENS, stop=ends_unevenly)
    continuous = gen.generate_continuous(STREAM, NEW_TOKENS, 3, stop=ends_unevenly)
    lengths = sorted({len(t) for t in static.generated_token_ids})
    record_property("completion_lengths", str(lengths))
    record_property(
        "utilisation",
        f"static {static.utilisation:.2f}, continuous {continuous.utilisation:.2f}",
    )
    assert len(lengths) >= 3  # the rows do end at different steps
    assert continuous.generated_token_ids == static.generated_token_ids
    single = Generator(model_for(), EOS, 0, prefill_chunk=32)
    alone = single.generate_continuous(STREAM, NEW_TOKENS, 3, stop=ends_unevenly)
    assert alone.generated_token_ids == static.generated_token_ids
    for a, b in zip(continuous.top_logits, static.top_logits, strict=True):
        np.testing.assert_array_equal(
            a[..., 1], b[..., 1]
        )  # the same candidates each step
    assert continuous.utilisation > static.utilisation


def test_warming_a_run_changes_no_token(model_for, monkeypatch):
    """A run set up with `warm` runs each prefill program once on padding, into the cache it then
    serves from, and one decode step over idle rows; its tokens and step records equal an unwarmed
    run's exactly, since a row taking a prompt is replaced whole."""
    gen = Generator(model_for(), EOS, 0, prefill_chunk=32)
    prefills = []
    prefill = gen.prefill
    monkeypatch.setattr(
        gen,
        "prefill",
        lambda layout, *a: prefills.append(layout) or prefill(layout, *a),
    )
    cold = ContinuousRun(gen, STREAM, NEW_TOKENS, 3, stop=ends_unevenly)
    admitted, prefills[:] = list(prefills), []
    warmed = ContinuousRun(gen, STREAM, NEW_TOKENS, 3, stop=ends_unevenly, warm=True)
    widths = {warmed.layout.one_row(len(p)) for p in STREAM}
    # Each width once on padding, then the prompts the first rows took, as unwarmed.
    order = sorted(widths, key=lambda r: r.prompt_len)
    assert len(widths) >= 2 and prefills == order + admitted
    assert warmed.steps == 0 and warmed.decode_seconds == 0
    for a, b in zip(warmed.run(), cold.run(), strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_array_equal(a.records, b.records)


@pytest.mark.nightly_unless(mesh="1x8")
@pytest.mark.tensor_parallel
def test_sampling_on_mesh_matches_single_device(mesh, dut, model_for, record_property):
    """Random bits do not depend on the sharding (partitionable threefry), so a seed draws the
    same tokens on a mesh as on one device (float32: no logit is near enough to flip a draw).
    """
    config = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    gen = generator(model_for(), mesh, kernels_for(dut.platform))
    if compiles_as_planned(
        gen, PROMPTS, NEW_TOKENS, config, mesh, dut, record_property
    ):
        single = (
            generator(model_for()).generate(PROMPTS, 12, config).generated_token_ids
        )
        assert gen.generate(PROMPTS, 12, config).generated_token_ids == single


@pytest.mark.nightly_unless(preset="gqa28x4", mesh="1x8")
@pytest.mark.tensor_parallel
@pytest.mark.parametrize("preset", ["gqa28x4", "gqa14x2_tied", "mha8"])
def test_cached_decode_equals_full_recompute(
    preset, mesh, dut, model_for, record_property
):
    """Prefill 8 rows, then decode 6 tokens one at a time through the sharded cache; each step's
    logits must equal a full forward over the whole sequence so far. The cached step compiles to
    the forward's all-reduces and nothing else."""
    model = model_for(preset)
    sharded = shard_model(model, mesh, kernels_for(dut.platform))
    prompt_len, steps = 10, 6
    full = left_padded_batch(
        model.cfg.vocab_size,
        [16, 13, 11, 16, 12, 14, 11, 15],
        prompt_len + steps,
        seed=5,
    )
    # Left-padded prompts of the first `prompt_len` columns; the rest are the "decoded" tokens.
    rows = batch_sharding(mesh)
    max_len = prompt_len + steps
    with jax.set_mesh(mesh):
        cache = jax.jit(
            lambda: init_cache(sharded.cfg, 8, max_len, jnp.float32),
            out_shardings=NamedSharding(mesh, logical_to_spec(KV_AXES)),
        )()
        step = jax.jit(lambda m, *a: m.step(*a), donate_argnums=(4,))
        key_valid = np.zeros((8, max_len), bool)
        key_valid[:, :prompt_len] = full.attention_mask[:, :prompt_len]
        args = jax.device_put(
            (full.input_ids[:, :prompt_len], full.positions[:, :prompt_len], key_valid),
            rows,
        )
        _, check = check_collectives(
            step.lower(sharded, *args, cache, 0),
            dut.platform,
            {"all_reduce": forward_all_reduces(model.cfg)},
        )
        record_property("collectives", str(check))
        if dut.compile_only:
            record_property(*COMPILE_ONLY_PROPERTY)
            return
        logits, cache = step(sharded, *args, cache, 0)
        cached = [np.asarray(logits[:, -1])]
        for t in range(prompt_len, max_len - 1):
            key_valid[:, t] = True
            args = jax.device_put(
                (full.input_ids[:, t : t + 1], full.positions[:, t : t + 1], key_valid),
                rows,
            )
            logits, cache = step(sharded, *args, cache, t)
            cached.append(np.asarray(logits[:, 0]))
    recomputed = np.asarray(model(full.input_ids, full.positions, full.attention_mask))
    for i, logits in enumerate(cached):
        np.testing.assert_allclose(
            logits, recomputed[:, prompt_len - 1 + i], atol=1e-5, rtol=0
        )


def test_compiles_once_per_shape_bucket(model_for):
    gen = generator(model_for())
    gen.generate(PROMPTS, 8)
    # one prefill, one decode step, for every decode step
    assert len(gen.steps.programs) == 2
    # same bucket (16), same batch
    gen.generate([[9, 9, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [4]], 8)
    assert len(gen.steps.programs) == 2
    gen.generate([list(range(1, 20))] * 3, 8)  # 19 tokens: the 32 bucket
    assert len(gen.steps.programs) == 4


def test_a_layouts_empty_cache_is_compiled_once(model_for, caplog):
    """Continuous batching makes an empty one-row cache for every prompt: only the first is
    compiled (a new jitted maker per call compiled each again)."""
    gen = generator(model_for())
    layout = gen.layout([3, 5], 4).one_row(5)
    gen.steps.empty_cache(layout)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        jax.block_until_ready(gen.steps.empty_cache(layout))
    assert not [r for r in caplog.records if "Compiling jit(make)" in r.getMessage()]


def test_one_row_prefill_pads_to_tiles_with_the_narrow_chunk_first():
    """A prompt prefilled alone is left-padded to a whole tile of 32, not to whole chunks: the
    padding and the remainder go in one narrower chunk first, whole chunks follow. Its chunks hold
    a batch chunk's rows per device: the width times the rows of one batch group."""
    layout = layout_for([956, 700], 256, context=4096, chunk=256, batch_multiple=1)
    assert (layout.prompt_len, layout.chunk_spans) == (
        1024,
        [(0, 256), (256, 256), (512, 256), (768, 256)],
    )
    assert layout.one_row(700).chunk_spans == [(0, 192), (192, 512)]
    assert layout.one_row(1000).chunk_spans == [(0, 512), (512, 512)]
    assert layout.one_row(5).chunk_spans == [(0, 32)]
    # Two rows over a batch axis of 2: one row per group, so chunks of the batch's width.
    split = layout_for([956, 700], 256, context=4096, chunk=256, batch_multiple=2)
    assert split.one_row(700).chunk_spans == [(0, 192), (192, 256), (448, 256)]
    eight = layout_for([956] * 8, 256, context=4096, chunk=256, batch_multiple=1)
    assert eight.one_row(956).chunk_spans == [(0, 960)]  # a GSM8K prompt: one chunk
    short = layout_for([5], 8, context=4096, chunk=256, batch_multiple=1)
    assert short.one_row(5).chunk_spans == [
        (0, 16)
    ]  # never past the batch's own columns


def test_sampling_is_reproducible_for_a_seed(model_for):
    gen = generator(model_for())
    config = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    first = gen.generate(PROMPTS, 12, config).generated_token_ids
    assert gen.generate(PROMPTS, 12, config).generated_token_ids == first
    other = gen.generate(
        PROMPTS, 12, SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=8)
    )
    assert other.generated_token_ids != first


def test_a_sampled_completion_does_not_depend_on_its_schedule(model_for):
    """A draw is keyed by its prompt and its token's index (sampling.row_keys), not by the row
    or the step: the stream sampled through 3 rows in turn gives one static batch's tokens.
    """
    gen = Generator(model_for(), EOS, 0, prefill_chunk=64)
    config = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9, seed=11)
    static = gen.generate(STREAM, 12, config).generated_token_ids
    assert gen.generate_continuous(STREAM, 12, 3, config).generated_token_ids == static
    greedy = gen.generate(STREAM, 12).generated_token_ids
    assert static != greedy  # the draws did sample


def test_top_k_1_and_tiny_top_p_are_greedy(model_for):
    gen = generator(model_for())
    greedy = gen.generate(PROMPTS, 10).generated_token_ids
    assert (
        gen.generate(
            PROMPTS, 10, SamplingConfig(temperature=0.7, top_k=1, seed=3)
        ).generated_token_ids
        == greedy
    )
    assert (
        gen.generate(
            PROMPTS, 10, SamplingConfig(temperature=0.7, top_p=1e-6, seed=3)
        ).generated_token_ids
        == greedy
    )


def test_sample_filters_keep_only_allowed_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)
    top2 = np.asarray(
        sample(
            logits,
            keys,
            SamplingParams(jnp.float32(1.0), jnp.int32(2), jnp.float32(1.0)),
        )
    )
    assert set(top2.tolist()) == {0, 1}
    assert 0.55 < (top2 == 0).mean() < 0.70  # 0.5 / 0.8 = 0.625 after renormalizing
    nucleus = np.asarray(
        sample(
            logits,
            keys,
            SamplingParams(jnp.float32(1.0), jnp.int32(0), jnp.float32(0.7)),
        )
    )
    assert set(nucleus.tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    everything = np.asarray(
        sample(
            logits,
            keys,
            SamplingParams(jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0)),
        )
    )
    assert set(everything.tolist()) == {0, 1, 2, 3}


def test_each_sequence_stops_on_its_own(model_for):
    model = model_for()
    free = Generator(model, (), 0).generate(PROMPTS, 12).generated_token_ids
    stop = free[0][3]  # row 0's fourth token becomes the EOS
    result = Generator(model, (stop,), 0).generate(PROMPTS, 12).generated_token_ids
    assert result[0] == free[0][: free[0].index(stop) + 1]
    for row, tokens in zip(result[1:], free[1:], strict=True):
        assert row == (tokens[: tokens.index(stop) + 1] if stop in tokens else tokens)


def test_bad_requests(model_for):
    gen = generator(model_for())
    with pytest.raises(
        GenerationError, match="exceeds the model's context of 256 tokens"
    ):
        gen.generate([[1] * 250], 10)
    with pytest.raises(GenerationError, match="max_new_tokens must be >= 1"):
        gen.generate(PROMPTS, 0)
    with pytest.raises(GenerationError, match="at least one token"):
        gen.generate([[1], []], 4)
    with pytest.raises(GenerationError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)


GENERATE = "tests.jax.models.qwen2_5.generate"
# The README's first command.
DEMO = ["--mesh", "1x8", "--prompt", "What is the capital of France?", "--chat"]
CLI_MESHES = ["1x1", "2x4", "1x8", "1x32", "8x4"]
BATCH = [
    "--prompt",
    "Hello",
    "--prompt",
    "The capital of France",
    *"--max-new-tokens 6 --json --dtype float32".split(),
]
BAD_INPUT = [
    (["--model-path", "/nonexistent/qwen"], "is not a directory"),
    (["--mesh", "8by4"], "malformed mesh"),
    (["--mesh", "1x3"], "is not divisible by the model axis 3"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--rows", "0"], "--rows must be >= 1"),
    (["--prompt", "word " * 2100], "exceeds the model's context of 2048 tokens"),
]


@pytest.fixture(scope="module")
def cli(tiny_checkpoint, tmp_path_factory, demo_cache, smollm2):
    """The generate command's cases, all run in one fresh process (one JAX start-up; every mesh
    up to 32 devices exists there): name -> outcome. Every case names the tiny random checkpoint
    but the demo's, which runs the default: the trained model (its cache the session's).
    """
    llama = Path(
        shutil.copytree(
            tiny_checkpoint("mha8"), tmp_path_factory.mktemp("llama") / "llama"
        )
    )
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    saved = "--mesh 1x8 --chat --max-new-tokens 12 --json --dtype float32".split()
    calls = {f"tiny_{m}": ["--mesh", m, *BATCH] for m in CLI_MESHES}
    calls["save_pretrained"] = [
        "--model-path",
        str(tiny_checkpoint("gqa28x4")),
        "--prompt",
        "Natalia sold clips",
        *saved,
    ]
    calls["streams"] = ["--prompt", "Hello", "--max-new-tokens", "5"]
    more = [arg for p in ("One", "Two", "Three") for arg in ("--prompt", p)]
    calls["rows_static"] = ["--mesh", "2x4", *BATCH, *more]
    calls["rows_continuous"] = [*calls["rows_static"], "--rows", "2"]
    calls["compare"] = [*calls["rows_static"], "--compare-single-device"]
    calls["not_qwen2"] = ["--model-path", str(llama), "--prompt", "Hello"]
    for i, (args, _) in enumerate(BAD_INPUT):
        calls[f"bad_{i}"] = (
            ["--prompt", "Hello"] if "--prompt" not in args else []
        ) + args
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    calls = {k: a if "--model-path" in a else [*tiny, *a] for k, a in calls.items()}
    calls["demo"] = [*DEMO, "--max-new-tokens", "8", "--json"]
    env = {"QWEN2_5_DEMO_CACHE": str(smollm2.parent), "JAX_NUM_CPU_DEVICES": "32"}
    done = run_cli_calls(GENERATE, [(argv, {}) for argv in calls.values()], env)
    return dict(zip(calls, done, strict=True))


def test_cli_demo_answers_in_words(cli):
    """The README's first command: the trained model, no --model-path, on 1x8."""
    done = cli["demo"]
    assert done.returncode == 0, done.stderr
    assert f"no --model-path: using {SMOLLM2}" in done.stderr
    assert "Paris" in json.loads(done.stdout)["text"][0]


@pytest.mark.tensor_parallel
@pytest.mark.parametrize("mesh_arg", CLI_MESHES, ids=lambda m: f"mesh_{m}")
def test_cli_on_every_mesh(mesh_arg, cli):
    done = cli[f"tiny_{mesh_arg}"]
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (
        out["mesh"] == mesh_arg
        and out["dtype"] == "float32"
        and len(out["generated_token_ids"]) == 2
    )
    assert all(1 <= len(g) <= 6 for g in out["generated_token_ids"])
    assert out["prefill_tokens_per_second"] > 0 and out["decode_tokens_per_second"] >= 0
    # One checkpoint: every mesh generates the same greedy tokens.
    assert (
        out["generated_token_ids"]
        == json.loads(cli["tiny_1x1"].stdout)["generated_token_ids"]
    )


@pytest.mark.tensor_parallel
def test_cli_continuous_rows_give_the_batch_tokens(cli):
    """`--rows 2`: five prompts through two rows taken in turn, the same tokens as one batch."""
    static, continuous = cli["rows_static"], cli["rows_continuous"]
    assert static.returncode == 0 and continuous.returncode == 0, continuous.stderr
    batch, rows = json.loads(static.stdout), json.loads(continuous.stdout)
    assert rows["generated_token_ids"] == batch["generated_token_ids"]
    assert len(rows["generated_token_ids"]) == 5
    assert 0 < rows["decode_row_utilisation"] <= 1


@pytest.mark.tensor_parallel
def test_cli_compare_mode_audits_every_prompt(cli):
    """`--compare-single-device` in float32: the single device's tokens, and an audit for every
    prompt, the same tokens included (their accuracy counts in the run's)."""
    done = cli["compare"]
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    comparison = out["comparison"]
    assert comparison["verdict"] == "identical" and comparison["accuracy_ratio"] <= 2
    audits = comparison["audits"]
    assert sorted(audits, key=int) == [str(i) for i in range(5)]
    assert all(a["first_divergence"] is None for a in audits.values())
    tokens = json.loads(cli["rows_static"].stdout)["generated_token_ids"]
    assert out["generated_token_ids"] == tokens


@pytest.mark.tensor_parallel
def test_cli_on_save_pretrained_checkpoint_matches_hugging_face(tiny_checkpoint, cli):
    path = tiny_checkpoint("gqa28x4")
    done = cli["save_pretrained"]
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Natalia sold clips"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert out["prompt_token_ids"] == [prompt]
    hf = load_hf(path, "float32")
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[
            0, len(prompt) :
        ].tolist()
    stop = next((i + 1 for i, t in enumerate(ref) if t in EOS), len(ref))
    assert out["generated_token_ids"] == [ref[:stop]]


def test_cli_streams_text_and_reports_rates(cli):
    done = cli["streams"]
    assert done.returncode == 0, done.stderr
    assert (
        "1 prompt(s)" in done.stdout
        and "tok/s" in done.stdout
        and "loading weights" in done.stderr
    )


def assert_one_error_line(done, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[m for _, m in BAD_INPUT])
def test_cli_bad_input_is_one_line_and_exit_2(case, cli):
    assert_one_error_line(cli[f"bad_{case}"], BAD_INPUT[case][1])


def test_cli_with_too_few_devices_is_one_line_and_exit_2(demo_cache):
    """The device count is fixed when JAX starts: this case needs a process of its own."""
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    args = [*tiny, "--prompt", "Hello", "--mesh", "1x8"]
    done = run_cli(GENERATE, *args, env={"JAX_NUM_CPU_DEVICES": "4"})
    assert_one_error_line(done, "needs 8 devices but 4 cpu devices exist")


def test_cli_refuses_a_checkpoint_that_is_not_qwen2(cli):
    done = cli["not_qwen2"]
    assert (
        done.returncode == 2
        and "not a Qwen2/Qwen2.5 checkpoint" in done.stderr
        and "Traceback" not in done.stderr
    )
