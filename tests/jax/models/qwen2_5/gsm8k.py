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
import hashlib
import json
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from tests.infra.mesh import MeshShape
from tests.infra.runs import (
    ResultLog,
    RunError,
    Stopped,
    StopSignals,
    available_host_bytes,
    check_writable,
    write_atomically,
)
from tests.jax.models.qwen2_5.audit import Generated, MeshAudit, SequenceAudit, mcnemar_p_value, oracle_of
from tests.jax.models.qwen2_5.generation import PREFILL_CHUNK, Generator
from tests.jax.models.qwen2_5.pipeline import EXPECTED_ERRORS, Checkpoint, configure_for, resolve_model_path
from tests.jax.models.qwen2_5.tensor_parallel import tensor_parallel_config

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
    tokens: list[int]  # the generated token ids, cut where generation stopped
    strict: str
    flexible: str
    gold: str
    strict_correct: bool
    flexible_correct: bool
    # Compare mode: per generated token, the top logits and ids of the step that chose it (the audit's evidence).
    top_logits: list[list[float]] | None = None
    top_ids: list[list[int]] | None = None

    def generated_run(self) -> Generated:
        return Generated.from_dict({"tokens": self.tokens, "top_logits": self.top_logits, "top_ids": self.top_ids})


def grade(index: int, tokens: Sequence[int], generated: str, problem: Problem, top=None) -> Graded:
    """`top`: the generation's (n, TOP_K, 2) record, kept when given."""
    strict, flexible = strict_extract(generated), flexible_extract(generated)
    gold = normalize(problem.answer)
    record = {} if top is None else Generated(list(tokens), top).to_dict()
    return Graded(
        index,
        generated,
        list(tokens),
        strict,
        flexible,
        gold,
        is_correct(strict, problem.answer),
        is_correct(flexible, problem.answer),
        record.get("top_logits"),
        record.get("top_ids"),
    )


METRICS = {"strict-match": "strict_correct", "flexible-extract": "flexible_correct"}


def scores(graded: Sequence[Graded]) -> dict[str, dict[str, float]]:
    return {metric: accuracy([getattr(g, flag) for g in graded]) for metric, flag in METRICS.items()}


def stops_at_sequences(tokenizer) -> Callable[[list[int]], bool]:
    """The generation stop rule: a stop sequence appeared in the text so far."""

    def hit_stop(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in text for s in STOP_SEQUENCES)

    return hit_stop


def complete(
    generator: Generator,
    checkpoint: Checkpoint,
    problems: Sequence[Problem],
    token_ids: Sequence[list[int]],
    batch: Sequence[int],
    max_new_tokens: int,
    between_steps: Callable[[], None] = lambda: None,
    keep_records: bool = False,
) -> list[Graded]:
    """Greedy completions of the problems `batch` (indices), graded, with each step's top logits
    when `keep_records`. `between_steps` runs after every decode step (where a run may stop)."""
    result = generator.generate(
        [token_ids[i] for i in batch],
        max_new_tokens,
        on_tokens=lambda _: between_steps(),
        stop=stops_at_sequences(checkpoint.tokenizer),
    )
    graded = []
    for index, tokens, top in zip(batch, result.generated_token_ids, result.top_logits, strict=True):
        text = truncate_at_stop(checkpoint.tokenizer.decode(tokens, skip_special_tokens=True))
        graded.append(grade(index, tokens, text, problems[index], top if keep_records else None))
    return graded


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Problem indices in batches of similar prompt length, longest first, as lm-evaluation-harness
    orders its requests: a long prompt pads only its neighbours, and the largest batch runs first.
    Results are keyed by problem index, so their order is restored whatever the batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def paired_scores(reference: Sequence[Graded], candidate: Sequence[Graded]) -> dict:
    """Both runs' scores with their standard errors, the difference, and the exact McNemar test on
    the discordant problems (right in one run, wrong in the other)."""
    report = {}
    for metric, flag in METRICS.items():
        single_only = sum(getattr(a, flag) and not getattr(b, flag) for a, b in zip(reference, candidate, strict=True))
        mesh_only = sum(getattr(b, flag) and not getattr(a, flag) for a, b in zip(reference, candidate, strict=True))
        single, mesh = accuracy([getattr(g, flag) for g in reference]), accuracy([getattr(g, flag) for g in candidate])
        report[metric] = {
            "single_device": single,
            "mesh": mesh,
            "difference": mesh["accuracy"] - single["accuracy"],
            "discordant": {"single_device_only": single_only, "mesh_only": mesh_only},
            "mcnemar_p_value": mcnemar_p_value(single_only, mesh_only),
        }
    return report


def compare_runs(reference: Sequence[Graded], candidate: Sequence[Graded], comparison: MeshAudit) -> dict:
    """The mesh run against the single-device run: the audit's verdict and counts, agreement of
    text and extracted answers, and the paired scores."""
    pairs = list(zip(reference, candidate, strict=True))
    same_answers = [(a.strict, a.flexible) == (b.strict, b.flexible) for a, b in pairs]
    paired = paired_scores(reference, candidate)
    return {
        **comparison.summary(),
        "generated_text_agreement": sum(a.generated == b.generated for a, b in pairs) / len(pairs),
        "extracted_answer_agreement": sum(same_answers) / len(pairs),
        "disagreeing_problems": [a.index for a, same in zip(reference, same_answers, strict=True) if not same],
        "scores": paired,
        "mcnemar_p_value": paired["strict-match"]["mcnemar_p_value"],
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
    parser.add_argument(
        "--output",
        type=Path,
        help="write settings, per-problem results and scores as JSON; finished problems are appended to "
        "OUTPUT.progress.jsonl as they finish, and rerunning the same command resumes from it",
    )
    parser.add_argument(
        "--compare-single-device", action="store_true", help="also run one device and audit every difference"
    )
    parser.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template (instruct models)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=PREFILL_CHUNK,
        help="prompt tokens per prefill step: prefill memory grows with it (default %(default)s)",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        help="GiB of host memory the run may use (default: what the kernel reports available); a run estimated "
        "to need more is refused before it starts",
    )
    return parser.parse_args(argv)


def load_problems(args: argparse.Namespace) -> tuple[list[Problem], list[str]]:
    for name in ("limit", "batch_size", "max_new_tokens", "prefill_chunk"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_fewshot < 0:
        raise DataError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise DataError(f"--memory-budget must be a positive number of GiB, got {args.memory_budget}")
    problems = load_split("test", args.data_file)[: args.limit]
    if not problems:
        raise DataError(f"{args.data_file or 'the test split'} holds no problems")
    fewshot_file = args.fewshot_file
    if fewshot_file is None and args.data_file is not None:
        fewshot_file = args.data_file.parent / "train.jsonl"
    train = load_split("train", fewshot_file) if args.num_fewshot else []
    exemplars = fewshot_exemplars(train, len(problems), args.num_fewshot)
    return problems, [build_prompt(p, ex) for p, ex in zip(problems, exemplars, strict=True)]


def check_context(token_ids: Sequence[list[int]], max_new_tokens: int, context: int) -> None:
    """Every prompt and its new tokens fit the model's context, or one error naming the worst."""
    too_long = [i for i, ids in enumerate(token_ids) if len(ids) + max_new_tokens > context]
    if too_long:
        worst = max(too_long, key=lambda i: len(token_ids[i]))
        raise DataError(
            f"{len(too_long)} of {len(token_ids)} prompts do not fit the model's context of {context:,} tokens with "
            f"--max-new-tokens {max_new_tokens} (problem {worst}: {len(token_ids[worst]):,} prompt tokens): "
            "lower --num-fewshot or --max-new-tokens"
        )


GIB = 2**30


ORACLE = "oracle"  # the audit's float32 oracle: it runs on the single device's weights


def check_memory(plans: dict[str, Generator], layouts: dict[str, list], budget: int, fixes: str) -> str:
    """Refuse a run whose estimated peak host memory exceeds `budget`: every model's weights (all
    resident at once; the oracle holds none of its own), plus the largest compiled step of any of
    them beyond the weights it runs on. Returns the estimate in words."""
    owner = {name: "1x1" if name == ORACLE else name for name in plans}
    weights = {name: plan.weight_bytes for name, plan in plans.items() if name != ORACLE}
    steps = {name: max(plans[name].peak_bytes(layout, kinds) for layout, kinds in layouts[name]) for name in plans}
    need = max(steps[name] + sum(w for other, w in weights.items() if other != owner[name]) for name in plans)
    held = " + ".join(f"{w / GIB:.2f} GiB ({name})" for name, w in weights.items())
    step = max(s - weights[owner[n]] for n, s in steps.items())
    estimate = (
        f"an estimated {need / GIB:.2f} GiB of host memory (weights {held}, the largest step {step / GIB:.2f} GiB "
        f"more) of {budget / GIB:.2f} GiB available"
    )
    if need > budget:
        raise RunError(f"this run needs {estimate}: {fixes}")
    return estimate


@dataclass
class Record:
    """One finished problem: each run's graded completion, and the audit when compared."""

    index: int
    runs: dict[str, Graded]
    audit: SequenceAudit | None = None

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "runs": {name: asdict(g) for name, g in self.runs.items()},
            "audit": None if self.audit is None else self.audit.to_dict(),
        }

    @classmethod
    def from_dict(cls, entry: dict) -> Record:
        audit = None if entry["audit"] is None else SequenceAudit.from_dict(entry["audit"])
        return cls(entry["index"], {name: Graded(**g) for name, g in entry["runs"].items()}, audit)


@dataclass
class Evaluation:
    """A GSM8K run in progress: its settings, what is finished, and where it is written."""

    settings: dict
    problems: list[Problem]
    prompts: list[str]
    meshes: list[MeshShape]
    compare: bool
    records: dict[int, Record] = field(default_factory=dict)

    def scores(self) -> dict[str, dict]:
        done = [self.records[i] for i in sorted(self.records)]
        return {m.name: scores([r.runs[m.name] for r in done]) for m in self.meshes} if done else {}

    def comparison(self) -> dict | None:
        if not self.compare or not self.records:
            return None
        done = [self.records[i] for i in sorted(self.records)]
        mesh, single = (m.name for m in self.meshes)
        audits = MeshAudit(self.settings["dtype"], {r.index: r.audit for r in done})
        return compare_runs([r.runs[single] for r in done], [r.runs[mesh] for r in done], audits)

    def print_scores(self) -> None:
        for name, score in self.scores().items():
            strict, flexible = score["strict-match"], score["flexible-extract"]
            print(
                f"mesh {name}: strict-match {strict['accuracy']:.4f} ± {strict['stderr']:.4f}, "
                f"flexible-extract {flexible['accuracy']:.4f} ± {flexible['stderr']:.4f} ({len(self.records)} problems)"
            )
        comparison = self.comparison()
        if comparison is not None:
            mesh = self.meshes[0].name
            strict = comparison["scores"]["strict-match"]
            audits = MeshAudit(self.settings["dtype"], {i: r.audit for i, r in self.records.items()})
            print(f"mesh {mesh} vs 1x1: {audits.describe()}")
            print(
                f"  strict-match {strict['mesh']['accuracy']:.4f} vs {strict['single_device']['accuracy']:.4f} "
                f"(difference {strict['difference']:+.4f}, exact McNemar p = {strict['mcnemar_p_value']:.3f}); "
                f"extracted answers agree on {comparison['extracted_answer_agreement']:.2%}, "
                f"generated text on {comparison['generated_text_agreement']:.2%} of problems"
            )

    def result(self) -> dict:
        result = {"settings": self.settings, "scores": self.scores()}
        comparison = self.comparison()
        if comparison is not None:
            result["comparison"] = comparison
        result["problems"] = [
            {
                "prompt_id": i,
                "prompt": self.prompts[i],
                **{name: asdict(g) for name, g in self.records[i].runs.items()},
                **({"audit": self.records[i].to_dict()["audit"]} if self.compare else {}),
            }
            for i in sorted(self.records)
        ]
        return result


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".progress.jsonl")


def run(args: argparse.Namespace) -> int:
    problems, prompts = load_problems(args)
    if args.output is not None:
        check_writable(args.output, "--output")
        check_writable(progress_path(args.output), "the progress file")
    mesh = configure_for(args.mesh)
    if args.compare_single_device and mesh.size == 1:
        raise DataError("--compare-single-device compares a mesh with one device: choose a --mesh like 1x8")
    checkpoint = Checkpoint.open(resolve_model_path(args.model_path))
    tensor_parallel_config(checkpoint.cfg, mesh.model)  # a mesh that cannot split this model fails here
    token_ids = [checkpoint.encode(p, args.chat) for p in prompts]
    check_context(token_ids, args.max_new_tokens, checkpoint.cfg.max_position_embeddings)
    meshes = [mesh] + ([MeshShape(1, 1)] if args.compare_single_device else [])
    settings = {
        "model_path": str(checkpoint.path),
        "mesh": mesh.name,
        "dtype": args.dtype,
        "num_fewshot": args.num_fewshot,
        "fewshot_seed": FEWSHOT_SEED,
        "chat": args.chat,
        "limit": len(problems),
        "prompts_sha256": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
        "max_new_tokens": args.max_new_tokens,
        "stop_sequences": list(STOP_SEQUENCES),
        "batch_size": args.batch_size,
        "prefill_chunk": args.prefill_chunk,
        "compare_single_device": args.compare_single_device,
    }
    evaluation = Evaluation(settings, problems, prompts, meshes, args.compare_single_device)
    log = None
    if args.output is not None:
        log = ResultLog(progress_path(args.output), settings)
        evaluation.records = {r.index: r for r in map(Record.from_dict, log.open())}
        if evaluation.records:
            print(f"resuming from {log.path}: reusing {len(evaluation.records)} finished problems", file=sys.stderr)
    else:
        print("no --output: results are not saved as they finish and the run cannot resume", file=sys.stderr)
    batches = length_sorted_batches([len(ids) for ids in token_ids], args.batch_size)
    todo = [batch for batch in batches if not all(i in evaluation.records for i in batch)]

    if not todo:
        return finish(evaluation, args.output)
    plans = {m.name: checkpoint.plan(m, args.dtype, args.prefill_chunk) for m in meshes}
    if args.compare_single_device:
        plans[ORACLE] = oracle_of(plans["1x1"])
    layouts = {}
    for name, plan in plans.items():
        needed = {plan.layout([len(token_ids[i]) for i in batch], args.max_new_tokens) for batch in todo}
        steps = [] if name == ORACLE else [(layout, ("prefill", "decode")) for layout in needed]
        if args.compare_single_device:
            longest = max(len(token_ids[i]) for batch in todo for i in batch)
            # A batch's differing problems are teacher-forced together, rows padded to a power of two (the audit).
            rows = 1 << (max(len(batch) for batch in todo) - 1).bit_length()
            steps.append((plan.layout([longest + args.max_new_tokens] * rows, 0), ("prefill", "score")))
        layouts[name] = steps
    budget = int(args.memory_budget * GIB) if args.memory_budget else available_host_bytes()
    fixes = f"lower --batch-size (now {args.batch_size}) or --prefill-chunk (now {args.prefill_chunk})"
    if args.compare_single_device:
        fixes += ", or run without --compare-single-device"
    print(f"memory: {check_memory(plans, layouts, budget, fixes)}", file=sys.stderr)

    generators = {m.name: checkpoint.load(m, args.dtype, plans[m.name]) for m in meshes}
    oracle = oracle_of(generators["1x1"], plans[ORACLE].compiled) if args.compare_single_device else None
    try:
        with (
            StopSignals() as signals,
            tqdm(
                total=len(problems),
                initial=len(evaluation.records),
                desc=f"gsm8k {mesh}",
                unit="problem",
                file=sys.stderr,
            ) as bar,
        ):
            for batch in todo:
                runs = {
                    name: complete(
                        gen,
                        checkpoint,
                        problems,
                        token_ids,
                        batch,
                        args.max_new_tokens,
                        signals.check,
                        oracle is not None,
                    )
                    for name, gen in generators.items()
                }
                fresh = {
                    index: Record(index, {name: graded[position] for name, graded in runs.items()})
                    for position, index in enumerate(batch)
                    if index not in evaluation.records
                }
                if oracle is not None:
                    audits = MeshAudit(args.dtype).audit(
                        oracle,
                        generators[mesh.name],
                        {i: token_ids[i] for i in fresh},
                        {i: r.runs["1x1"].generated_run() for i, r in fresh.items()},
                        {i: r.runs[mesh.name].generated_run() for i, r in fresh.items()},
                    )
                    for index, audit in audits.items():
                        fresh[index].audit = audit
                for index, record in fresh.items():
                    evaluation.records[index] = record
                    if log is not None:
                        log.append(record.to_dict())
                bar.update(len(batch))
                signals.check()
    except Stopped as stop:
        saved = f"; they are saved in {log.path}: rerun the same command to resume" if log else ""
        print(f"stopped by {stop} after {len(evaluation.records)} of {len(problems)} problems{saved}", file=sys.stderr)
        evaluation.print_scores()
        return stop.exit_code
    finally:
        if log is not None:
            log.close()
    return finish(evaluation, args.output)


def finish(evaluation: Evaluation, output: Path | None) -> int:
    """The scores on stdout first, then the result file, written whole or not at all."""
    evaluation.print_scores()
    if output is not None:
        write_atomically(output, json.dumps(evaluation.result(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (*EXPECTED_ERRORS, DataError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
