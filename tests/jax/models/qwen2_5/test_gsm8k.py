"""GSM8K harness: extraction and scoring against the real test set, prompt format, the
pipeline on a mesh against one device, the CLI, and the nightly score equality on real weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.infra.cli import run_cli
from tests.infra.mesh import MeshShape
from tests.jax.models.qwen2_5.checkpoint_writer import demo_checkpoint
from tests.jax.models.qwen2_5.gsm8k import (
    INVALID,
    DataError,
    Problem,
    accuracy,
    build_prompt,
    compare_runs,
    evaluate,
    fewshot_exemplars,
    flexible_extract,
    grade,
    normalize,
    read_jsonl,
    scores,
    strict_extract,
    truncate_at_stop,
)
from tests.jax.models.qwen2_5.pipeline import Pipeline

pytestmark = pytest.mark.push


@pytest.fixture(scope="session")
def gsm8k_dir(pytestconfig: pytest.Config) -> Path:
    """The GSM8K jsonl files (openai/grade-school-math, MIT) beside the project: ../shared/data/gsm8k."""
    path = Path(os.environ.get("GSM8K_DATA_DIR") or pytestconfig.rootpath.parent / "shared" / "data" / "gsm8k")
    if not (path / "test.jsonl").is_file():
        pytest.skip(
            f"GSM8K data not found at {path}: set GSM8K_DATA_DIR to a directory with test.jsonl and train.jsonl"
        )
    return path


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
    gold = scores([grade(i, p.answer, p) for i, p in enumerate(test_set)])
    assert gold["strict-match"]["accuracy"] == 1.0 and gold["flexible-extract"]["accuracy"] == 1.0
    shifted = [grade(i, test_set[(i + 1) % len(test_set)].answer, p) for i, p in enumerate(test_set)]
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
    graded = grade(0, "so #### 1,000.", Problem("q", "x\n#### 1000"))
    assert graded.strict == "1,000." and graded.strict_correct
    # The reference's strict pattern wants the number right after "#### ": a "$" there is invalid.
    assert grade(0, "so #### $1,000.", Problem("q", "x\n#### 1000")).strict == INVALID


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
def test_mesh_generations_equal_single_device(test_set, gsm8k_dir, demo_cache):
    """The whole pipeline on the tiny random checkpoint: 1x8 against one device, a few problems."""
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    problems = test_set[:4]
    prompts = [build_prompt(p, ex) for p, ex in zip(problems, fewshot_exemplars(train, 4, 2), strict=True)]
    path = demo_checkpoint(demo_cache)
    options = {"chat": False, "batch_size": 4, "max_new_tokens": 24}
    single = evaluate(Pipeline.load(path, MeshShape(1, 1), "float32"), problems, prompts, **options)
    sharded = evaluate(Pipeline.load(path, MeshShape(1, 8), "float32"), problems, prompts, **options)
    comparison = compare_runs(single, sharded)
    assert comparison["generated_text_agreement"] == 1.0 and comparison["disagreeing_problems"] == []
    assert all(g.generated for g in single)


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
    fields = {"index", "generated", "strict", "flexible", "gold", "strict_correct", "flexible_correct"}
    assert set(problem["1x1"]) == fields
    assert "strict-match" in done.stdout


@pytest.mark.tensor_parallel
def test_cli_compare_mode_on_a_save_pretrained_checkpoint(gsm8k_dir, tiny_checkpoint, tmp_path):
    out = tmp_path / "compare.json"
    paths = ["--model-path", str(tiny_checkpoint("gqa14x2_tied")), "--data-file", str(gsm8k_dir / "test.jsonl")]
    # 0-shot: the tiny preset's context is 256 tokens.
    options = "--mesh 2x4 --compare-single-device --limit 3 --num-fewshot 0 --max-new-tokens 8 --chat --dtype float32"
    done = _gsm8k_cli(*paths, *options.split(), "--output", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["comparison"]["extracted_answer_agreement"] == 1.0
    assert result["scores"]["2x4"] == result["scores"]["1x1"]
    assert result["problems"][0]["prompt"].startswith("Question:")
    assert "vs 1x1: extracted answers agree on 100.00%" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-file", "/nonexistent/test.jsonl"], "/nonexistent/test.jsonl does not exist"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
        (["--mesh", "1x3"], "model axis of 3 cannot split 4 KV heads"),
    ],
)
def test_cli_bad_input(args, message, gsm8k_dir, demo_cache):
    base = [] if "--data-file" in args else ["--data-file", str(gsm8k_dir / "test.jsonl"), "--limit", "1"]
    done = _gsm8k_cli(*base, *args, cache=demo_cache)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def real_model_run(gsm8k_dir, test_set):
    """The single-device GSM8K run of a real Qwen2.5-7B(-Instruct), once for every mesh to match."""
    model_path = os.environ.get("QWEN2_5_MODEL_PATH")
    if not model_path:
        pytest.skip("set QWEN2_5_MODEL_PATH to a Qwen2.5-7B(-Instruct) checkpoint directory to run GSM8K on it")
    limit = int(os.environ.get("QWEN2_5_GSM8K_LIMIT", len(test_set)))
    problems = test_set[:limit]
    train = read_jsonl(gsm8k_dir / "train.jsonl")
    prompts = [build_prompt(p, ex) for p, ex in zip(problems, fewshot_exemplars(train, len(problems), 5), strict=True)]
    options = {"chat": os.environ.get("QWEN2_5_GSM8K_CHAT") == "1", "batch_size": 8, "max_new_tokens": 256}
    single = evaluate(Pipeline.load(Path(model_path), MeshShape(1, 1), "bfloat16"), problems, prompts, **options)
    return Path(model_path), problems, prompts, options, single


@pytest.mark.nightly
@pytest.mark.tensor_parallel
@pytest.mark.model_test
def test_gsm8k_score_on_mesh_equals_single_device(real_model_run, mesh, record_property):
    model_path, problems, prompts, options, single = real_model_run
    sharded = evaluate(
        Pipeline.load(model_path, MeshShape(mesh.shape["batch"], mesh.shape["model"]), "bfloat16"),
        problems,
        prompts,
        **options,
    )
    comparison = compare_runs(single, sharded)
    for name, metric in scores(sharded).items():
        record_property(f"{name}_mesh", metric["accuracy"])
        record_property(f"{name}_single", scores(single)[name]["accuracy"])
    assert comparison["disagreeing_problems"] == []
    assert scores(sharded) == scores(single)
