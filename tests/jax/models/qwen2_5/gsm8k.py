"""GSM8K, as lm-evaluation-harness's `gsm8k` task evaluates it, on one device or a mesh.

    python -m tests.jax.models.qwen2_5.gsm8k --model-path DIR --mesh 1x8 [--limit N]
        [--num-fewshot K] [--data-file F] [--output out.json] [--compare-single-device] [--chat]

Prompt: K exemplars from the train split, each "Question: {q}\\nAnswer: {a}", joined by a
blank line, then "Question: {q}\\nAnswer:". Greedy decoding until "Question:", "</s>" or
"<|im_end|>" (or EOS, or 256 tokens). Scores: strict-match (the first "#### N") and
flexible-extract (the last number), both compared after dropping commas, "$", a trailing
period and everything up to "#### ", case-insensitively, with the gold answer treated the same.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tests.infra.mesh import MeshShape
from tests.jax.models.qwen2_5.pipeline import EXPECTED_ERRORS, Pipeline, configure_for, resolve_model_path

STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
INVALID = "[invalid]"
STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-evaluation-harness gsm8k's `regexes_to_ignore`, applied to prediction and gold alike.
IGNORED = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]
FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


class DataError(ValueError):
    """Problems or exemplars that cannot be read."""


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str


def read_jsonl(path: Path) -> list[Problem]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problems.append(Problem(record["question"], record["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{number} is not a JSON object with 'question' and 'answer' ({err})") from err
    return problems


def load_split(split: str, data_file: Path | None) -> list[Problem]:
    """A split from a local jsonl, or from the Hugging Face hub (openai/gsm8k, main)."""
    if data_file is not None:
        return read_jsonl(data_file)
    from datasets import load_dataset

    try:
        dataset = load_dataset("openai/gsm8k", "main", split=split)
    except Exception as err:  # the hub raises many types; the user needs only the fix
        raise DataError(f"cannot load openai/gsm8k ({err}); pass --data-file and --fewshot-file") from err
    return [Problem(r["question"], r["answer"]) for r in dataset]


def fewshot_exemplars(
    train: Sequence[Problem], num_problems: int, k: int, seed: int = FEWSHOT_SEED
) -> list[list[Problem]]:
    """Per problem, k exemplars drawn from one seeded generator in problem order, as the harness does."""
    if k > len(train):
        raise DataError(f"--num-fewshot {k} exceeds the {len(train)} available exemplars")
    rng = random.Random(seed)
    return [rng.sample(list(train), k) for _ in range(num_problems)]


def build_prompt(problem: Problem, exemplars: Sequence[Problem]) -> str:
    shots = [f"Question: {ex.question}\nAnswer: {ex.answer}" for ex in exemplars]
    return "\n\n".join([*shots, f"Question: {problem.question}\nAnswer:"])


def truncate_at_stop(text: str) -> str:
    cut = min((i for s in STOP_SEQUENCES if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def strict_extract(text: str) -> str:
    match = STRICT_RE.findall(text)
    return match[0].strip() if match else INVALID


def flexible_extract(text: str) -> str:
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return INVALID
    return next(group for group in matches[-1] if group).strip()


def normalize(answer: str) -> str:
    for pattern in IGNORED:
        answer = pattern.sub("", answer)
    return answer.lower()


def is_correct(extracted: str, gold_answer: str) -> bool:
    return normalize(extracted) == normalize(gold_answer)


def accuracy(flags: Sequence[bool]) -> dict[str, float]:
    """Mean and its standard error (sample variance, as the harness reports)."""
    n = len(flags)
    mean = sum(flags) / n
    stderr = math.sqrt(mean * (1 - mean) / (n - 1)) if n > 1 else float("nan")
    return {"accuracy": mean, "stderr": stderr}


@dataclass(frozen=True)
class Graded:
    index: int
    generated: str
    strict: str
    flexible: str
    gold: str
    strict_correct: bool
    flexible_correct: bool


def grade(index: int, generated: str, problem: Problem) -> Graded:
    strict, flexible = strict_extract(generated), flexible_extract(generated)
    gold = normalize(problem.answer)
    return Graded(
        index,
        generated,
        strict,
        flexible,
        gold,
        is_correct(strict, problem.answer),
        is_correct(flexible, problem.answer),
    )


def scores(graded: Sequence[Graded]) -> dict[str, dict[str, float]]:
    return {
        "strict-match": accuracy([g.strict_correct for g in graded]),
        "flexible-extract": accuracy([g.flexible_correct for g in graded]),
    }


def evaluate(
    pipeline: Pipeline,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    *,
    chat: bool,
    batch_size: int,
    max_new_tokens: int,
) -> list[Graded]:
    """Greedy completions for `prompts`, batched through the generator, graded against `problems`."""
    tokenizer = pipeline.tokenizer

    def hit_stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in text for s in STOP_SEQUENCES)

    graded = []
    with tqdm(total=len(prompts), desc=f"gsm8k {pipeline.mesh}", unit="problem", file=sys.stderr) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = [pipeline.encode(p, chat) for p in prompts[start : start + batch_size]]
            result = pipeline.generator.generate(batch, max_new_tokens, stop=hit_stop)
            for offset, tokens in enumerate(result.generated_token_ids):
                text = truncate_at_stop(tokenizer.decode(tokens, skip_special_tokens=True))
                graded.append(grade(start + offset, text, problems[start + offset]))
            bar.update(len(batch))
    return graded


def compare_runs(reference: Sequence[Graded], candidate: Sequence[Graded]) -> dict:
    """Per-problem agreement of a mesh run with the single-device run."""
    same_text = [a.generated == b.generated for a, b in zip(reference, candidate, strict=True)]
    same_answers = [(a.strict, a.flexible) == (b.strict, b.flexible) for a, b in zip(reference, candidate, strict=True)]
    return {
        "generated_text_agreement": sum(same_text) / len(same_text),
        "extracted_answer_agreement": sum(same_answers) / len(same_answers),
        "disagreeing_problems": [g.index for g, same in zip(reference, same_answers, strict=True) if not same],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.gsm8k", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-path", type=Path, help="Hugging Face checkpoint directory (default: embedded demo)")
    parser.add_argument("--mesh", default="1x1", help="BATCHxMODEL device mesh; 1x1 is a single device")
    parser.add_argument("--limit", type=int, help="evaluate the first N test problems (default: all 1319)")
    parser.add_argument("--num-fewshot", type=int, default=5, help="exemplars per prompt (Qwen reports 4-shot)")
    parser.add_argument("--data-file", type=Path, help="test problems as jsonl (question, answer); default: the hub")
    parser.add_argument("--fewshot-file", type=Path, help="exemplars as jsonl; default: train.jsonl beside --data-file")
    parser.add_argument("--output", type=Path, help="write settings, per-problem results and scores as JSON")
    parser.add_argument("--compare-single-device", action="store_true", help="also run one device and compare")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template (instruct models)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    return parser.parse_args(argv)


def load_problems(args: argparse.Namespace) -> tuple[list[Problem], list[str]]:
    for name in ("limit", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_fewshot < 0:
        raise DataError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    problems = load_split("test", args.data_file)[: args.limit]
    fewshot_file = args.fewshot_file
    if fewshot_file is None and args.data_file is not None:
        fewshot_file = args.data_file.parent / "train.jsonl"
    train = load_split("train", fewshot_file) if args.num_fewshot else []
    exemplars = fewshot_exemplars(train, len(problems), args.num_fewshot)
    return problems, [build_prompt(p, ex) for p, ex in zip(problems, exemplars, strict=True)]


def run(args: argparse.Namespace) -> int:
    problems, prompts = load_problems(args)
    mesh = configure_for(args.mesh)
    model_path = resolve_model_path(args.model_path)
    settings = {
        "model_path": str(model_path),
        "mesh": mesh.name,
        "dtype": args.dtype,
        "num_fewshot": args.num_fewshot,
        "fewshot_seed": FEWSHOT_SEED,
        "chat": args.chat,
        "limit": len(problems),
        "max_new_tokens": args.max_new_tokens,
        "stop_sequences": list(STOP_SEQUENCES),
        "batch_size": args.batch_size,
    }
    options = {"chat": args.chat, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    runs = {}
    meshes = [mesh] + ([MeshShape(1, 1)] if args.compare_single_device and mesh.size > 1 else [])
    for run_mesh in meshes:
        pipeline = Pipeline.load(model_path, run_mesh, args.dtype)
        runs[run_mesh.name] = evaluate(pipeline, problems, prompts, **options)
        del pipeline
    result = {"settings": settings, "scores": {name: scores(graded) for name, graded in runs.items()}}
    if len(runs) == 2:
        result["comparison"] = compare_runs(runs["1x1"], runs[mesh.name])
    result["problems"] = [
        {"prompt_id": i, "prompt": prompts[i], **{name: asdict(graded[i]) for name, graded in runs.items()}}
        for i in range(len(problems))
    ]
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(args.output.suffix + ".partial")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.output)  # never a half-written result file
    for name, score in result["scores"].items():
        strict, flexible = score["strict-match"], score["flexible-extract"]
        print(
            f"mesh {name}: strict-match {strict['accuracy']:.4f} ± {strict['stderr']:.4f}, "
            f"flexible-extract {flexible['accuracy']:.4f} ± {flexible['stderr']:.4f} ({len(problems)} problems)"
        )
    if "comparison" in result:
        comparison = result["comparison"]
        print(
            f"mesh {mesh.name} vs 1x1: extracted answers agree on {comparison['extracted_answer_agreement']:.2%}, "
            f"generated text on {comparison['generated_text_agreement']:.2%} of problems"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (*EXPECTED_ERRORS, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
