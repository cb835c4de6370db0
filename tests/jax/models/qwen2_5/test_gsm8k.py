"""GSM8K harness: extraction and scoring against the real test set, prompt format, the
pipeline on a mesh against one device, the CLI (up-front checks, resuming after a signal), and the
nightly audited comparison of a mesh with one device on real weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from flax import nnx

from tests.infra.cli import run_cli, start_cli
from tests.infra.mesh import MeshShape
from tests.jax.models.qwen2_5.checkpoint_writer import build_tokenizer, demo_checkpoint, write_checkpoint
from tests.jax.models.qwen2_5.config import TINY_PRESETS
from tests.jax.models.qwen2_5.gsm8k import (
    INVALID,
    DataError,
    Graded,
    Problem,
    accuracy,
    build_prompt,
    complete,
    fewshot_exemplars,
    flexible_extract,
    grade,
    length_sorted_batches,
    normalize,
    paired_scores,
    progress_path,
    read_jsonl,
    scores,
    strict_extract,
    truncate_at_stop,
)
from tests.jax.models.qwen2_5.model import Qwen2ForCausalLM
from tests.jax.models.qwen2_5.pipeline import Checkpoint

pytestmark = pytest.mark.push


@pytest.fixture(scope="session")
def test_set(gsm8k_dir) -> list[Problem]:
    return read_jsonl(gsm8k_dir / "test.jsonl")


def test_the_test_set_is_complete(test_set):
    assert len(test_set) == 1319


def test_both_extractors_recover_every_gold_answer(test_set):
    for problem in test_set:
        gold = normalize(problem.answer)
        assert normalize(strict_extract(problem.answer)) == gold, problem.answer
        assert normalize(flexible_extract(problem.answer)) == gold, problem.answer


def test_gold_oracle_scores_100_and_a_shifted_oracle_near_0(test_set):
    gold = scores([grade(i, [], p.answer, p) for i, p in enumerate(test_set)])
    assert gold["strict-match"]["accuracy"] == 1.0 and gold["flexible-extract"]["accuracy"] == 1.0
    shifted = [grade(i, [], test_set[(i + 1) % len(test_set)].answer, p) for i, p in enumerate(test_set)]
    for metric in scores(shifted).values():
        assert metric["accuracy"] < 0.05  # only coincidences: equal answers of neighbouring problems


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


def test_normalization_ignores_commas_dollars_trailing_period_and_the_solution():
    assert normalize("$1,234.") == "1234"
    assert normalize("Some work 2+2=4\n#### 1,000") == "1000"
    graded = grade(0, [], "so #### 1,000.", Problem("q", "x\n#### 1000"))
    assert graded.strict == "1,000." and graded.strict_correct
    # The reference's strict pattern wants the number right after "#### ": a "$" there is invalid.
    assert grade(0, [], "so #### $1,000.", Problem("q", "x\n#### 1000")).strict == INVALID


def test_prompt_matches_the_reference_format():
    exemplars = [Problem("What is 1+1?", "1+1=2\n#### 2"), Problem("What is 2*3?", "2*3=6\n#### 6")]
    prompt = build_prompt(Problem("What is 3-1?", "3-1=2\n#### 2"), exemplars)
    assert prompt == (
        "Question: What is 1+1?\nAnswer: 1+1=2\n#### 2\n\n"
        "Question: What is 2*3?\nAnswer: 2*3=6\n#### 6\n\n"
        "Question: What is 3-1?\nAnswer:"
    )
    assert build_prompt(Problem("Q?", "A"), []) == "Question: Q?\nAnswer:"


def test_fewshot_exemplars_are_seeded_and_drawn_per_problem(gsm8k_dir):
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    first, again = fewshot_exemplars(train, 3, 5), fewshot_exemplars(train, 3, 5)
    assert first == again and len(first[0]) == 5
    assert first[0] != first[1]  # one generator, drawn in problem order, as the harness does
    with pytest.raises(DataError, match="exceeds the 2 available exemplars"):
        fewshot_exemplars(train[:2], 1, 5)


def test_generation_is_cut_at_the_first_stop_sequence():
    assert truncate_at_stop(" 5 apples.\n#### 5\n\nQuestion: more") == " 5 apples.\n#### 5\n\n"
    assert truncate_at_stop(" 7<|im_end|>junk") == " 7"
    assert truncate_at_stop(" no stop") == " no stop"


def test_accuracy_and_its_standard_error():
    result = accuracy([True, False, True, True])
    assert result["accuracy"] == 0.75
    assert result["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not a JSON object with 'question' and 'answer'"):
        read_jsonl(path)


@pytest.mark.tensor_parallel
@pytest.mark.model_test
def test_mesh_completions_equal_single_device(test_set, gsm8k_dir, demo_cache):
    """The whole pipeline on the tiny random checkpoint: 1x8 against one device, a few problems."""
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    problems = test_set[:4]
    prompts = [build_prompt(p, ex) for p, ex in zip(problems, fewshot_exemplars(train, 4, 2), strict=True)]
    checkpoint = Checkpoint.open(demo_checkpoint(demo_cache))
    token_ids = [checkpoint.encode(p, chat=False) for p in prompts]
    batch = [0, 1, 2, 3]
    single = complete(checkpoint.load(MeshShape(1, 1), "float32"), checkpoint, problems, token_ids, batch, 24)
    sharded = complete(checkpoint.load(MeshShape(1, 8), "float32"), checkpoint, problems, token_ids, batch, 24)
    assert [g.tokens for g in sharded] == [g.tokens for g in single]
    assert all(g.generated for g in single)


def test_batches_are_sorted_by_length_and_cover_every_problem():
    lengths = [5, 9, 1, 9, 7, 3, 8]
    batches = length_sorted_batches(lengths, 3)
    assert batches == [[1, 3, 6], [4, 0, 5], [2]]  # longest first, ties in problem order
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_paired_scores_and_mcnemar():
    def graded(i, strict_correct):
        return Graded(i, "", [], "1", "1", "1", strict_correct, strict_correct)

    single = [graded(i, ok) for i, ok in enumerate([True, True, False, False, True])]
    mesh = [graded(i, ok) for i, ok in enumerate([True, False, False, True, True])]
    strict = paired_scores(single, mesh)["strict-match"]
    assert strict["difference"] == 0.0 and strict["discordant"] == {"single_device_only": 1, "mesh_only": 1}
    assert strict["mcnemar_p_value"] == 1.0
    assert strict["mesh"]["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 4))


def _gsm8k_cli(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {"QWEN2_5_DEMO_CACHE": str(cache)} if cache else None
    return run_cli("tests.jax.models.qwen2_5.gsm8k", *args, env=env)


def test_cli_on_the_embedded_default(gsm8k_dir, demo_cache, tmp_path):
    out = tmp_path / "out.json"
    data = ["--data-file", str(gsm8k_dir / "test.jsonl"), "--output", str(out)]
    done = _gsm8k_cli(*data, *"--limit 2 --num-fewshot 1 --max-new-tokens 8".split(), cache=demo_cache)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["mesh"] == "1x1" and result["settings"]["num_fewshot"] == 1
    assert set(result["scores"]["1x1"]) == {"strict-match", "flexible-extract"}
    problem = result["problems"][1]
    assert problem["prompt_id"] == 1 and problem["prompt"].endswith("Answer:")
    fields = {"index", "generated", "tokens", "strict", "flexible", "gold", "strict_correct", "flexible_correct"}
    assert set(problem["1x1"]) == fields
    assert "strict-match" in done.stdout and "memory: an estimated" in done.stderr


@pytest.mark.tensor_parallel
def test_cli_compare_mode_on_a_save_pretrained_checkpoint(gsm8k_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "compare.json"
    paths = ["--model-path", str(tiny_checkpoint("gqa14x2_tied")), "--data-file", str(gsm8k_dir / "test.jsonl")]
    # 0-shot: the tiny preset's context is 256 tokens.
    options = "--mesh 2x4 --compare-single-device --limit 3 --num-fewshot 0 --max-new-tokens 8 --chat --dtype float32"
    done = _gsm8k_cli(*paths, *options.split(), "--output", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    comparison = result["comparison"]
    assert comparison["verdict"] == "identical" and comparison["real_divergences"] == 0
    assert comparison["extracted_answer_agreement"] == 1.0 and comparison["mcnemar_p_value"] == 1.0
    assert result["scores"]["2x4"] == result["scores"]["1x1"]
    assert result["problems"][0]["prompt"].startswith("Question:") and result["problems"][0]["audit"] is None
    assert "mesh 2x4 vs 1x1: verdict identical" in done.stdout


@pytest.fixture(scope="module")
def context_checkpoint(tmp_path_factory) -> Path:
    """The 28:4 tiny model with a 4,096-token context and a 640-token vocabulary: 5-shot GSM8K
    prompts are 1,500-2,700 tokens, long enough that prefill memory matters."""
    cfg = TINY_PRESETS["gqa28x4"].replace(vocab_size=640, max_position_embeddings=4096)
    out = tmp_path_factory.mktemp("context_4096")
    return write_checkpoint(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(3)), build_tokenizer(640), out)


def test_cli_checks_everything_before_any_work(gsm8k_dir, context_checkpoint, tmp_path):
    """Each of these fails at once, with one error line and exit 2, before a weight is read."""
    data = ["--model-path", str(context_checkpoint), "--data-file", str(gsm8k_dir / "test.jsonl")]
    (tmp_path / "a_file").write_text("")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        (["--limit", "4", "--output", str(tmp_path)], "is a directory: name a file"),
        (["--limit", "4", "--output", str(tmp_path / "a_file" / "out.json")], "cannot be written"),
        (["--limit", "4", "--output", "/proc/gsm8k/out.json"], "cannot be written"),
        (["--limit", "4", "--max-new-tokens", "2000"], "do not fit the model's context of 4,096 tokens"),
        (["--limit", "4", "--memory-budget", "0.25"], "lower --batch-size (now 8) or --prefill-chunk (now 256)"),
        (["--limit", "4", "--prefill-chunk", "0"], "--prefill-chunk must be >= 1"),
    ]
    for args, message in cases:
        done = _gsm8k_cli(*data, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert "loading weights" not in done.stderr, args
    done = _gsm8k_cli("--model-path", str(context_checkpoint), "--data-file", str(empty))
    assert done.returncode == 2 and "holds no problems" in done.stderr


@pytest.mark.tensor_parallel
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(signum, gsm8k_dir, demo_cache, tmp_path):
    """Stopped after its first batch, a run exits without a traceback, prints the scores so far and
    keeps its finished problems; the same command then reuses them and ends with exactly the
    result of a run never interrupted."""
    args = ["--data-file", str(gsm8k_dir / "test.jsonl"), *"--limit 6 --batch-size 2 --num-fewshot 1".split()]
    args += ["--max-new-tokens", "48", "--mesh", "1x8", "--dtype", "float32"]
    env = {"QWEN2_5_DEMO_CACHE": str(demo_cache)}
    out = tmp_path / "resumed.json"
    progress = progress_path(out)
    process = start_cli("tests.jax.models.qwen2_5.gsm8k", *args, "--output", str(out), env=env)
    deadline = time.monotonic() + 300
    while not (progress.is_file() and len(progress.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name} after" in stderr and "Traceback" not in stderr
    assert "mesh 1x8: strict-match" in stdout and not out.exists()
    finished = len(progress.read_text().splitlines()) - 1
    assert 2 <= finished < 6

    resumed = _gsm8k_cli(*args, "--output", str(out), cache=demo_cache)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reusing {finished} finished problems" in resumed.stderr
    whole = tmp_path / "whole.json"
    assert _gsm8k_cli(*args, "--output", str(whole), cache=demo_cache).returncode == 0
    assert json.loads(out.read_text())["problems"] == json.loads(whole.read_text())["problems"]
    assert json.loads(out.read_text())["scores"] == json.loads(whole.read_text())["scores"]

    changed = _gsm8k_cli(*args, "--max-new-tokens", "8", "--output", str(out), cache=demo_cache)
    assert changed.returncode == 2 and "holds a run with other settings (max_new_tokens: 48 there, 8 now)" in (
        changed.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-file", "/nonexistent/test.jsonl"], "/nonexistent/test.jsonl does not exist"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
        (["--mesh", "1x3"], "model axis of 3 cannot split 4 KV heads"),
        (["--compare-single-device"], "compares a mesh with one device"),
    ],
)
def test_cli_bad_input(args, message, gsm8k_dir, demo_cache):
    base = [] if "--data-file" in args else ["--data-file", str(gsm8k_dir / "test.jsonl"), "--limit", "1"]
    done = _gsm8k_cli(*base, *args, cache=demo_cache)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def real_model_path() -> Path:
    model_path = os.environ.get("QWEN2_5_MODEL_PATH")
    if not model_path:
        pytest.skip("set QWEN2_5_MODEL_PATH to a Qwen2.5-7B(-Instruct) checkpoint directory to run GSM8K on it")
    return Path(model_path)


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.model_test
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gsm8k_score_on_mesh_equals_single_device(dtype, real_model_path, mesh, gsm8k_dir, tmp_path, record_property):
    """The full task (QWEN2_5_GSM8K_LIMIT shortens it) on a real checkpoint, the mesh audited
    against one device: float32 gives identical tokens; bfloat16 identical tokens or only rounding
    ties (never a real divergence), its score difference and McNemar p-value reported."""
    limit = os.environ.get("QWEN2_5_GSM8K_LIMIT")
    out = tmp_path / "gsm8k.json"
    args = ["--model-path", str(real_model_path), "--data-file", str(gsm8k_dir / "test.jsonl"), "--dtype", dtype]
    args += ["--mesh", f"{mesh.shape['batch']}x{mesh.shape['model']}", "--compare-single-device", "--output", str(out)]
    args += ["--limit", limit] if limit else []
    args += ["--chat"] if os.environ.get("QWEN2_5_GSM8K_CHAT") == "1" else []
    done = run_cli("tests.jax.models.qwen2_5.gsm8k", *args, timeout=7 * 24 * 3600)
    if done.returncode == 2 and "GiB of host memory" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])  # refused before starting: this host is too small
    assert done.returncode == 0, done.stderr[-3000:]
    comparison = json.loads(out.read_text())["comparison"]
    for metric, paired in comparison["scores"].items():
        record_property(f"{metric}_single_device", paired["single_device"]["accuracy"])
        record_property(f"{metric}_mesh", paired["mesh"]["accuracy"])
        record_property(f"{metric}_difference", paired["difference"])
        record_property(f"{metric}_mcnemar_p_value", paired["mcnemar_p_value"])
    record_property("verdict", comparison["verdict"])
    record_property("rounding_ties", comparison["rounding_ties"])
    if dtype == "float32":
        assert comparison["verdict"] == "identical", comparison
    else:
        assert comparison["verdict"] in ("identical", "equivalent") and comparison["real_divergences"] == 0, comparison
