# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""GSM8K harness: extraction and scoring against the real test set, prompt format, the
pipeline on a mesh against one device, the CLI (up-front checks, resuming after a signal), and the
nightly audited comparison of a mesh with one device on real weights."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.jax.infra.cli import run_cli, run_cli_calls, start_cli
from tests.jax.infra.mesh import MeshShape
from tests.jax.infra.runs import progress_path
from tests.jax.models.qwen2_5 import gsm8k_run
from tests.jax.models.qwen2_5.audit import TIE_FACTOR, errors, first_difference, top_of
from tests.jax.models.qwen2_5.checkpoint_writer import (
    build_tokenizer,
    tiny_random_checkpoint,
    write_checkpoint,
)
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.gsm8k_task import (
    INVALID,
    DataError,
    Graded,
    Problem,
    accuracy,
    build_prompt,
    fewshot_exemplars,
    flexible_extract,
    grade,
    length_sorted_batches,
    normalize,
    paired_scores,
    read_jsonl,
    scores,
    stops_at_sequences,
    strict_extract,
    truncate_at_stop,
)
from tests.jax.models.qwen2_5.hf_golden import (
    exact_logits,
    hf_greedy_until,
    load_hf,
    to_numpy,
)
from tests.jax.models.qwen2_5.loader import load_model
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.pipeline import Checkpoint


@pytest.fixture(scope="session")
def test_set(gsm8k_dir) -> list[Problem]:
    return read_jsonl(gsm8k_dir / "test.jsonl")


@pytest.mark.push
def test_the_test_set_is_complete(test_set):
    assert len(test_set) == 1319


@pytest.mark.push
def test_both_extractors_recover_every_gold_answer(test_set):
    for problem in test_set:
        gold = normalize(problem.answer)
        assert normalize(strict_extract(problem.answer)) == gold, problem.answer
        assert normalize(flexible_extract(problem.answer)) == gold, problem.answer


@pytest.mark.push
def test_gold_oracle_scores_100_and_a_shifted_oracle_near_0(test_set):
    gold = scores([grade(i, [], p.answer, p) for i, p in enumerate(test_set)])
    assert (
        gold["strict-match"]["accuracy"] == 1.0
        and gold["flexible-extract"]["accuracy"] == 1.0
    )
    shifted = [
        grade(i, [], test_set[(i + 1) % len(test_set)].answer, p)
        for i, p in enumerate(test_set)
    ]
    for metric in scores(shifted).values():
        # only coincidences: equal answers of neighbouring problems
        assert metric["accuracy"] < 0.05


@pytest.mark.push
@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18", "18"),
        ("#### 1,234.\nQuestion: next", "1,234.", "1,234."),
        ("It costs $70,000 and then -5 more", INVALID, "-5"),
        ("The answer is $1,000.", INVALID, "$1,000."),
        ("no digits at all", INVALID, INVALID),
        ("#### 5 and later #### 6", "5", "6"),
    ],
)
def test_extractors(text, strict, flexible):
    assert strict_extract(text) == strict
    assert flexible_extract(text) == flexible


@pytest.mark.push
def test_normalization_ignores_commas_dollars_trailing_period_and_the_solution():
    assert normalize("$1,234.") == "1234"
    assert normalize("Some work 2+2=4\n#### 1,000") == "1000"
    graded = grade(0, [], "so #### 1,000.", Problem("q", "x\n#### 1000"))
    assert graded.strict == "1,000." and graded.strict_correct
    # The reference's strict pattern wants the number right after "#### ": a "$" there is invalid.
    assert (
        grade(0, [], "so #### $1,000.", Problem("q", "x\n#### 1000")).strict == INVALID
    )


@pytest.mark.push
def test_prompt_matches_the_reference_format():
    exemplars = [
        Problem("What is 1+1?", "1+1=2\n#### 2"),
        Problem("What is 2*3?", "2*3=6\n#### 6"),
    ]
    prompt = build_prompt(Problem("What is 3-1?", "3-1=2\n#### 2"), exemplars)
    assert prompt == (
        "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\n"
        "Question: What is 2*3?\nAnswer: 2*3=6\n#### 6\n\n"
        "Question: What is 3-1?\nAnswer:"
    )
    assert build_prompt(Problem("Q?", "A"), []) == "Question: Q?\nAnswer:"


@pytest.mark.push
def test_fewshot_exemplars_are_seeded_and_drawn_per_problem(gsm8k_dir):
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    first, again = fewshot_exemplars(train, 3, 5), fewshot_exemplars(train, 3, 5)
    assert first == again and len(first[0]) == 5
    # one generator, drawn in problem order, as the harness does
    assert first[0] != first[1]
    with pytest.raises(DataError, match="exceeds the 2 available exemplars"):
        fewshot_exemplars(train[:2], 1, 5)


@pytest.mark.push
def test_generation_is_cut_at_the_first_stop_sequence():
    assert (
        truncate_at_stop(" 5 apples.\n#### 5\n\nQuestion: more")
        == " 5 apples.\n#### 5\n\n"
    )
    assert truncate_at_stop(" 7<|im_end|>junk") == " 7"
    assert truncate_at_stop(" no stop") == " no stop"


@pytest.mark.push
def test_accuracy_and_its_standard_error():
    result = accuracy([True, False, True, True])
    assert result["accuracy"] == 0.75
    assert result["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))


@pytest.mark.push
def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    with pytest.raises(
        DataError,
        match=r"bad.jsonl:2 is not a JSON object with 'question' and 'answer'",
    ):
        read_jsonl(path)


@pytest.mark.tensor_parallel
@pytest.mark.model_test
def test_mesh_completions_equal_single_device(test_set, gsm8k_dir, demo_cache):
    """The whole pipeline on the tiny random checkpoint: 1x8 against one device, a few problems."""
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    problems = test_set[:4]
    prompts = [
        build_prompt(p, ex)
        for p, ex in zip(problems, fewshot_exemplars(train, 4, 2), strict=True)
    ]
    checkpoint = Checkpoint.open(tiny_random_checkpoint(demo_cache))
    token_ids = [checkpoint.encode(p, chat=False) for p in prompts]
    stop = stops_at_sequences(checkpoint.tokenizer)
    single, sharded = (
        checkpoint.load(mesh, "float32").generate_continuous(
            token_ids, 24, 2, stop=stop
        )
        for mesh in (MeshShape(1, 1), MeshShape(1, 8))
    )
    assert sharded.generated_token_ids == single.generated_token_ids
    assert all(single.generated_token_ids)


@pytest.mark.push
def test_batches_are_sorted_by_length_and_cover_every_problem():
    lengths = [5, 9, 1, 9, 7, 3, 8]
    batches = length_sorted_batches(lengths, 3)
    # longest first, ties in problem order
    assert batches == [
        [1, 3, 6],
        [4, 0, 5],
        [2],
    ]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


@pytest.mark.push
def test_paired_scores_and_mcnemar():
    def graded(i, strict_correct):
        return Graded(i, "", [], "1", "1", "1", strict_correct, strict_correct)

    single = [graded(i, ok) for i, ok in enumerate([True, True, False, False, True])]
    mesh = [graded(i, ok) for i, ok in enumerate([True, False, False, True, True])]
    strict = paired_scores(single, mesh)["strict-match"]
    assert strict["difference"] == 0.0 and strict["discordant"] == {
        "single_device_only": 1,
        "mesh_only": 1,
    }
    assert strict["mcnemar_p_value"] == 1.0
    assert strict["mesh"]["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 4))


GSM8K = "tests.jax.models.qwen2_5.gsm8k"


@pytest.fixture(scope="module")
def context_checkpoint(tmp_path_factory) -> Path:
    """The 28:4 tiny model with a 4,096-token context and a 640-token vocabulary: 5-shot GSM8K
    prompts are 1,500-2,700 tokens, long enough that prefill memory matters."""
    cfg = TINY_PRESETS["gqa28x4"].replace(vocab_size=640, max_position_embeddings=4096)
    out = tmp_path_factory.mktemp("context_4096")
    return write_checkpoint(
        Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(3)), build_tokenizer(640), out
    )


# Each fails at once, with one error line and exit 2, before a weight is read.
UP_FRONT = [
    (["--limit", "4", "--output", "{tmp}"], "is a directory: name a file"),
    (["--limit", "4", "--output", "{tmp}/a_file/out.json"], "cannot be written"),
    (["--limit", "4", "--output", "/proc/gsm8k/out.json"], "cannot be written"),
    (
        ["--limit", "4", "--max-new-tokens", "2000"],
        "do not fit the model's context of 4,096 tokens",
    ),
    (
        ["--limit", "4", "--memory-budget", "0.02"],
        "lower --batch-size (now 8) or --prefill-chunk (now 256)",
    ),
    (["--limit", "4", "--prefill-chunk", "0"], "--prefill-chunk must be >= 1"),
    (["--data-file", "{tmp}/empty.jsonl"], "holds no problems"),
]
BAD_INPUT = [
    (
        ["--data-file", "/nonexistent/test.jsonl"],
        "/nonexistent/test.jsonl does not exist",
    ),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
    (["--mesh", "1x3"], "is not divisible by the model axis 3"),
    (["--compare-single-device"], "compares a mesh with one device"),
]
RESUMABLE = [
    *"--limit 6 --batch-size 2 --num-fewshot 1 --max-new-tokens 24 --mesh 1x8 --dtype float32".split()
]


@pytest.fixture(scope="module")
def cli(gsm8k_dir, demo_cache, tiny_checkpoint, context_checkpoint, tmp_path_factory):
    """The gsm8k command's cases that need no signal, all run in one fresh process (one JAX start-up):
    name -> (outcome, output file)."""
    tmp = tmp_path_factory.mktemp("gsm8k_cli")
    (tmp / "a_file").write_text("")
    (tmp / "empty.jsonl").write_text("")
    test_file = ["--data-file", str(gsm8k_dir / "test.jsonl")]
    calls, outputs = {}, {}
    for i, (args, _) in enumerate(UP_FRONT):
        args = [a.format(tmp=tmp) for a in args]
        calls[f"up_front_{i}"] = [
            "--model-path",
            str(context_checkpoint),
            *([] if "--data-file" in args else test_file),
            *args,
        ]
    for i, (args, _) in enumerate(BAD_INPUT):
        calls[f"bad_{i}"] = (
            [] if "--data-file" in args else [*test_file, "--limit", "1"]
        ) + args
    outputs["one_device"] = tmp / "out.json"
    calls["one_device"] = [
        *test_file,
        "--output",
        str(outputs["one_device"]),
        *"--limit 2 --num-fewshot 1 --max-new-tokens 8".split(),
    ]
    # 0-shot: the tiny preset's context is 256 tokens.
    outputs["compare"] = tmp / "compare.json"
    calls["compare"] = [
        "--model-path",
        str(tiny_checkpoint("gqa14x2_tied")),
        *test_file,
        "--output",
        str(outputs["compare"]),
        *"--mesh 2x4 --compare-single-device --limit 3 --num-fewshot 0 --max-new-tokens 8 --chat".split(),
        *"--dtype float32".split(),
    ]
    outputs["whole"] = tmp / "whole.json"
    calls["whole"] = [*test_file, *RESUMABLE, "--output", str(outputs["whole"])]
    # After it, the same output with other settings: refused, the finished run kept.
    calls["changed"] = [*calls["whole"], "--max-new-tokens", "8"]
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    calls = {k: a if "--model-path" in a else [*tiny, *a] for k, a in calls.items()}
    env = {"JAX_NUM_CPU_DEVICES": "8"}
    done = run_cli_calls(GSM8K, [(argv, {}) for argv in calls.values()], env)
    return {
        name: (outcome, outputs.get(name))
        for name, outcome in zip(calls, done, strict=True)
    }


def test_cli_writes_settings_scores_and_each_problem(cli):
    done, out = cli["one_device"]
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert (
        result["settings"]["mesh"] == "1x1" and result["settings"]["num_fewshot"] == 1
    )
    assert set(result["scores"]["1x1"]) == {"strict-match", "flexible-extract"}
    problem = result["problems"][1]
    assert problem["prompt_id"] == 1 and problem["prompt"].endswith("Answer:")
    fields = {
        "index",
        "generated",
        "tokens",
        "strict",
        "flexible",
        "gold",
        "strict_correct",
        "flexible_correct",
    }
    assert {k for k, v in problem["1x1"].items() if v is not None} == fields
    assert "strict-match" in done.stdout and "memory: an estimated" in done.stderr


@pytest.mark.tensor_parallel
def test_cli_compare_mode_on_a_save_pretrained_checkpoint(cli):
    done, out = cli["compare"]
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    comparison = result["comparison"]
    assert comparison["verdict"] == "identical" and comparison["real_divergences"] == 0
    assert (
        comparison["extracted_answer_agreement"] == 1.0
        and comparison["mcnemar_p_value"] == 1.0
    )
    assert result["scores"]["2x4"] == result["scores"]["1x1"]
    assert (
        result["problems"][0]["prompt"].startswith("Question:")
        and result["problems"][0]["audit"]["first_divergence"] is None
    )
    # Compare mode keeps each run's step records: the audit's evidence, per generated token.
    record = result["problems"][0]["2x4"]
    assert len(record["top_ids"]) == len(record["tokens"]) and all(
        ids[0] == t for ids, t in zip(record["top_ids"], record["tokens"], strict=True)
    )
    assert "mesh 2x4 vs 1x1: verdict identical" in done.stdout


@pytest.mark.parametrize("case", range(len(UP_FRONT)), ids=[m for _, m in UP_FRONT])
def test_cli_checks_everything_before_any_work(case, cli):
    done, _ = cli[f"up_front_{case}"]
    assert done.returncode == 2, done.stderr
    assert (
        UP_FRONT[case][1] in done.stderr and "Traceback" not in done.stderr
    ), done.stderr
    assert "loading weights" not in done.stderr


@pytest.mark.nightly_unless(signum=signal.SIGINT)
@pytest.mark.tensor_parallel
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"]
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    signum, gsm8k_dir, demo_cache, tmp_path, cli
):
    """Stopped after its first batch, a run exits without a traceback, prints the scores so far and
    keeps its finished problems; the same command then reuses them and ends with exactly the
    result of a run never interrupted."""
    tiny = ["--model-path", str(tiny_random_checkpoint(demo_cache))]
    args = [*tiny, "--data-file", str(gsm8k_dir / "test.jsonl"), *RESUMABLE]
    out = tmp_path / "resumed.json"
    progress = progress_path(out)
    process = start_cli(GSM8K, *args, "--output", str(out))
    deadline = time.monotonic() + 300
    while (
        not (progress.is_file() and len(progress.read_text().splitlines()) >= 3)
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert (
        f"stopped by {signal.Signals(signum).name} after" in stderr
        and "Traceback" not in stderr
    )
    assert "mesh 1x8: strict-match" in stdout and not out.exists()
    finished = len(progress.read_text().splitlines()) - 1
    assert 2 <= finished < 6

    resumed = run_cli(GSM8K, *args, "--output", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"reusing {finished} finished problems" in resumed.stderr
    whole_done, whole = cli["whole"]
    assert whole_done.returncode == 0, whole_done.stderr
    assert (
        json.loads(out.read_text())["problems"]
        == json.loads(whole.read_text())["problems"]
    )
    assert (
        json.loads(out.read_text())["scores"] == json.loads(whole.read_text())["scores"]
    )


def test_a_run_with_other_settings_is_refused(cli):
    done, _ = cli["changed"]
    assert done.returncode == 2
    assert (
        "holds a run with other settings (max_new_tokens: 24 there, 8 now)"
        in done.stderr
    )


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[m for _, m in BAD_INPUT])
def test_cli_bad_input(case, cli):
    done, _ = cli[f"bad_{case}"]
    assert done.returncode == 2, done.stderr
    assert BAD_INPUT[case][1] in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def real_model_path(smollm2) -> Path:
    """QWEN2_5_MODEL_PATH (e.g. a Qwen2.5-7B checkpoint), else the trained demo model."""
    return Path(os.environ.get("QWEN2_5_MODEL_PATH") or smollm2)


def run_compare_mode(model: Path, mesh_arg: str, dtype: str, data: Path, out: Path):
    """The gsm8k command in compare mode over QWEN2_5_GSM8K_LIMIT problems (default 64)."""
    args = ["--model-path", str(model), "--data-file", str(data), "--dtype", dtype]
    args += ["--mesh", mesh_arg, "--compare-single-device", "--output", str(out)]
    args += ["--limit", os.environ.get("QWEN2_5_GSM8K_LIMIT", "64")]
    args += ["--chat"] if os.environ.get("QWEN2_5_GSM8K_CHAT") == "1" else []
    done = run_cli("tests.jax.models.qwen2_5.gsm8k", *args, timeout=7 * 24 * 3600)
    if done.returncode == 2 and "GiB of host memory" in done.stderr:
        # refused before starting: this host is too small
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.model_test
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("mesh_arg", ["1x8", "2x4"], ids=lambda m: f"mesh_{m}")
def test_gsm8k_score_on_mesh_equals_single_device(
    dtype, mesh_arg, real_model_path, gsm8k_dir, tmp_path, record_property
):
    """Compare mode on a trained model, the mesh audited against one device: float32 gives
    identical tokens; bfloat16 identical tokens or only rounding ties (never a real divergence),
    its score difference and McNemar p-value reported. In float32 one device also equals Hugging
    Face problem by problem (hugging_face_on_the_same_problems)."""
    data = gsm8k_dir / "test.jsonl"
    result = run_compare_mode(
        real_model_path, mesh_arg, dtype, data, tmp_path / "g.json"
    )
    comparison = result["comparison"]
    for metric, paired in comparison["scores"].items():
        record_property(f"{metric}_single_device", paired["single_device"]["accuracy"])
        record_property(f"{metric}_mesh", paired["mesh"]["accuracy"])
        record_property(f"{metric}_difference", paired["difference"])
        record_property(f"{metric}_mcnemar_p_value", paired["mcnemar_p_value"])
    record_property("verdict", comparison["verdict"])
    record_property("rounding_ties", comparison["rounding_ties"])
    record_property("accuracy_ratio", comparison["accuracy_ratio"])
    if dtype == "float32":
        assert comparison["verdict"] == "identical", comparison
        hugging_face_on_the_same_problems(real_model_path, result, record_property)
    else:
        assert (
            comparison["verdict"] in ("identical", "equivalent")
            and comparison["real_divergences"] == 0
        ), comparison


def hugging_face_on_the_same_problems(model: Path, result: dict, record_property):
    """Hugging Face's greedy float32 completions of the run's prompts, one at a time, graded as ours:
    the same tokens, texts and extractions as one device of ours, problem by problem, except
    where the two part at a float32 rounding tie (float32_tie); its scores recorded."""
    checkpoint, hf = Checkpoint.open(model), load_hf(model, "float32")
    settings = result["settings"]
    stop, problems = stops_at_sequences(checkpoint.tokenizer), []
    for entry in result["problems"]:
        ours = entry["1x1"]
        prompt = checkpoint.encode(entry["prompt"], settings["chat"])
        tokens = hf_greedy_until(
            hf, prompt, settings["max_new_tokens"], checkpoint.eos_token_ids, stop
        )
        problem = Problem("", f"#### {ours['gold']}")
        theirs = gsm8k_run.graded(checkpoint, problem, entry["prompt_id"], tokens, None)
        problems.append(theirs)
        if tokens != ours["tokens"]:
            tie = float32_tie(model, hf, prompt, ours["tokens"], tokens)
            assert tie["rounding_tie"], (entry["prompt_id"], tie)
            record_property(f"hugging_face_tie_{entry['prompt_id']}", str(tie))
            continue
        assert (theirs.generated, theirs.strict, theirs.flexible) == (
            ours["generated"],
            ours["strict"],
            ours["flexible"],
        )
    for metric, score in scores(problems).items():
        record_property(f"{metric}_hugging_face", score["accuracy"])


def float32_tie(model: Path, hf, prompt: list[int], ours: list[int], theirs: list[int]):
    """Where one device of ours and Hugging Face part, the float64 logits of the common prefix
    decide: a rounding tie when their margin between the two tokens is within twice the larger of
    the two sides' errors over their top 8 there (the audit's rule)."""
    at = first_difference(ours, theirs)
    sequence = prompt + ours[:at]
    exact = np.asarray(exact_logits(model, [sequence])[0][-1:], np.float64)
    with torch.no_grad():
        hf_row = to_numpy(hf(input_ids=torch.tensor([sequence])).logits[0, -1:])
    ids = np.asarray([sequence], np.int32)
    positions, mask = np.arange(len(sequence), dtype=np.int32)[None], np.ones_like(ids)
    logits = load_model(model, jnp.float32)(ids, positions, mask)
    ours_row = np.asarray(logits[0, -1:], np.float64)
    scale = max(
        float(errors(top_of(r), exact, "float32")[0]) for r in (hf_row, ours_row)
    )
    margin = float(exact[0, ours[at]] - exact[0, theirs[at]])
    tie = abs(margin) <= TIE_FACTOR * scale
    return {"position": at, "margin": margin, "scale": scale, "rounding_tie": tie}
