# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""GSM8K, as lm-evaluation-harness's `gsm8k` task evaluates it (gsm8k_task.py), on one device or a mesh.

    python -m tests.jax.models.qwen2_5.gsm8k --model-path DIR --mesh 1x8 [--limit N]
        [--num-fewshot K] [--data-file F] [--output out.json] [--compare-single-device] [--chat]

The command line builds one `Settings`; `run` checks everything up front (data, checkpoint, mesh,
context, output files, memory), then evaluates batch after batch, each problem's results on disk
as soon as its batch finishes (tests/infra/runs.ResultStore), so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from tests.infra.mesh import MeshShape
from tests.infra.runs import (
    ResultStore,
    RunError,
    Stopped,
    StopSignals,
    available_host_bytes,
)
from tests.jax.models.qwen2_5.audit import MeshAudit, SequenceAudit, oracle_of
from tests.jax.models.qwen2_5.batching import PREFILL_CHUNK, BatchLayout
from tests.jax.models.qwen2_5.cli_options import add_model_options
from tests.jax.models.qwen2_5.continuous import ContinuousRun
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.gsm8k_task import (
    FEWSHOT_SEED,
    STOP_SEQUENCES,
    DataError,
    Graded,
    Problem,
    build_prompt,
    fewshot_exemplars,
    grade,
    length_sorted_batches,
    load_split,
    paired_scores,
    scores,
    stops_at_sequences,
    truncate_at_stop,
)
from tests.jax.models.qwen2_5.model import Kernels
from tests.jax.models.qwen2_5.pipeline import (
    EXPECTED_ERRORS,
    Checkpoint,
    configure_for,
    resolve_model_path,
    run_kernels,
)
from tests.jax.models.qwen2_5.steps import (
    DECODE,
    DECODE_ROWS,
    FILL,
    INSERT,
    ONE_ROW_PREFILL,
    PREFILL,
    SCORE,
)
from tests.jax.models.qwen2_5.tensor_parallel import tensor_parallel_config

GIB = 2**30
CONTINUOUS, STATIC = "continuous", "static"
SCHEDULES = (CONTINUOUS, STATIC)
SINGLE = "1x1"
ORACLE = "oracle"  # the audit's float32 oracle: it runs on the single device's weights


@dataclass(frozen=True)
class Settings:
    """One GSM8K run as the command line asked for it, checked."""

    model_path: Path | None
    mesh: str
    dtype: str
    chat: bool
    max_new_tokens: int
    compare_single_device: bool
    cpu_kernels: bool
    limit: int | None
    num_fewshot: int
    data_file: Path | None
    fewshot_file: Path | None
    output: Path | None
    batch_size: int
    prefill_chunk: int
    memory_budget: float | None
    schedule: str

    def __post_init__(self) -> None:
        for name in ("limit", "batch_size", "max_new_tokens", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.num_fewshot < 0:
            raise DataError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.memory_budget is not None and not self.memory_budget > 0:
            raise DataError(
                f"--memory-budget must be a positive number of GiB, got {self.memory_budget}"
            )

    @property
    def exemplars_file(self) -> Path | None:
        """--fewshot-file, else train.jsonl beside --data-file, else None (the hub)."""
        if self.fewshot_file is None and self.data_file is not None:
            return self.data_file.parent / "train.jsonl"
        return self.fewshot_file

    def memory_fixes(self) -> str:
        fixes = f"lower --batch-size (now {self.batch_size}) or --prefill-chunk (now {self.prefill_chunk})"
        return fixes + (
            ", or run without --compare-single-device"
            if self.compare_single_device
            else ""
        )


# GSM8K's own flags beside the shared ones (cli_options): name -> argparse keywords.
OPTIONS = {
    "--limit": {
        "type": int,
        "help": "evaluate the first N test problems (default: all 1319)",
    },
    "--num-fewshot": {
        "type": int,
        "default": 5,
        "help": "exemplars per prompt (Qwen reports 4-shot)",
    },
    "--data-file": {
        "type": Path,
        "help": "test problems as jsonl (question, answer); default: the hub",
    },
    "--fewshot-file": {
        "type": Path,
        "help": "exemplars as jsonl; default: train.jsonl beside --data-file",
    },
    "--output": {
        "type": Path,
        "help": "write settings, per-problem results and scores as JSON; finished problems are appended "
        "to OUTPUT.progress.jsonl as they finish, and rerunning the same command resumes from it",
    },
    "--batch-size": {"type": int, "default": 8},
    "--prefill-chunk": {
        "type": int,
        "default": PREFILL_CHUNK,
        "help": "prompt tokens per prefill step: prefill memory grows with it (default %(default)s)",
    },
    "--schedule": {
        "choices": SCHEDULES,
        "default": CONTINUOUS,
        "help": "continuous: a row that finishes takes the next problem at once (continuous.py); static: "
        "batches of --batch-size problems, each decoding until its longest ends (default %(default)s)",
    },
    "--memory-budget": {
        "type": float,
        "help": "GiB of host memory the run may use (default: what the kernel reports available); a run "
        "estimated to need more is refused before it starts",
    },
}


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m tests.jax.models.qwen2_5.gsm8k",
        description=__doc__.split("\n")[0],
    )
    compare = "also run one device and audit every difference (audit.py)"
    add_model_options(parser, max_new_tokens=256, compare_help=compare)
    for name, options in OPTIONS.items():
        parser.add_argument(name, **options)
    return Settings(**vars(parser.parse_args(argv)))


def load_problems(settings: Settings) -> tuple[list[Problem], list[str]]:
    """The test problems (the first --limit) and their prompts with their exemplars."""
    problems = load_split("test", settings.data_file)[: settings.limit]
    if not problems:
        raise DataError(f"{settings.data_file or 'the test split'} holds no problems")
    train = load_split("train", settings.exemplars_file) if settings.num_fewshot else []
    exemplars = fewshot_exemplars(train, len(problems), settings.num_fewshot)
    return problems, [
        build_prompt(p, ex) for p, ex in zip(problems, exemplars, strict=True)
    ]


def check_context(
    token_ids: Sequence[list[int]], max_new_tokens: int, context: int
) -> None:
    """Every prompt and its new tokens fit the model's context, or one error naming the worst."""
    too_long = [
        i for i, ids in enumerate(token_ids) if len(ids) + max_new_tokens > context
    ]
    if too_long:
        worst = max(too_long, key=lambda i: len(token_ids[i]))
        raise DataError(
            f"{len(too_long)} of {len(token_ids)} prompts do not fit the model's context of {context:,} tokens with "
            f"--max-new-tokens {max_new_tokens} (problem {worst}: {len(token_ids[worst]):,} prompt tokens): "
            "lower --num-fewshot or --max-new-tokens"
        )


@dataclass(frozen=True)
class Job:
    """A checked run: everything it needs but the weights."""

    settings: Settings
    mesh: MeshShape
    checkpoint: Checkpoint
    problems: list[Problem]
    prompts: list[str]
    token_ids: list[list[int]]
    kernels: Kernels

    @property
    def meshes(self) -> list[MeshShape]:
        """The mesh, then one device when compared."""
        return [self.mesh] + (
            [MeshShape(1, 1)] if self.settings.compare_single_device else []
        )

    def record_settings(self) -> dict:
        """What a resumed run must share with the one it resumes."""
        s = self.settings
        return {
            "model_path": str(self.checkpoint.path),
            "mesh": self.mesh.name,
            "dtype": s.dtype,
            "num_fewshot": s.num_fewshot,
            "fewshot_seed": FEWSHOT_SEED,
            "chat": s.chat,
            "limit": len(self.problems),
            "prompts_sha256": hashlib.sha256(
                "\0".join(self.prompts).encode()
            ).hexdigest(),
            "max_new_tokens": s.max_new_tokens,
            "stop_sequences": list(STOP_SEQUENCES),
            "batch_size": s.batch_size,
            "prefill_chunk": s.prefill_chunk,
            "schedule": s.schedule,
            "compare_single_device": s.compare_single_device,
            "cpu_kernels": s.cpu_kernels,
        }


def prepare(settings: Settings) -> Job:
    """Data, mesh, checkpoint and context checked, in that order, before anything heavy."""
    problems, prompts = load_problems(settings)
    ResultStore.check_writable(settings.output)
    mesh = configure_for(settings.mesh)
    kernels = run_kernels(settings.cpu_kernels)
    if settings.compare_single_device and mesh.size == 1:
        raise DataError(
            "--compare-single-device compares a mesh with one device: choose a --mesh like 1x8"
        )
    checkpoint = Checkpoint.open(resolve_model_path(settings.model_path))
    # a mesh that cannot split this model fails here
    tensor_parallel_config(checkpoint.cfg, mesh.model)
    token_ids = [checkpoint.encode(p, settings.chat) for p in prompts]
    check_context(
        token_ids, settings.max_new_tokens, checkpoint.cfg.max_position_embeddings
    )
    return Job(settings, mesh, checkpoint, problems, prompts, token_ids, kernels)


class MemoryRefused(RunError):
    """The run's estimated peak host memory exceeds the budget."""

    def __init__(self, need: str, fixes: str) -> None:
        super().__init__(f"this run needs {need}: {fixes}")
        self.need = need


def check_memory(
    shape_only: dict[str, Generator],
    layouts: dict[str, list],
    budget: int,
    fixes: str,
    resident: dict[str, int],
) -> str:
    """Refuse a run whose estimated peak host memory exceeds `budget`: every model's weights and
    `resident` bytes (caches of runs that advance in lockstep) all held at once (the oracle holds
    none of its own), plus the largest compiled step of any of them beyond the weights and cache
    it runs on. Weights alone over the budget are refused before any step compiles. Returns the
    estimate in words."""
    owner = {name: SINGLE if name == ORACLE else name for name in shape_only}
    weights = {
        name: gen.weight_bytes + resident.get(name, 0)
        for name, gen in shape_only.items()
        if name != ORACLE
    }
    held = " + ".join(f"{w / GIB:.2f} GiB ({name})" for name, w in weights.items())
    if sum(weights.values()) > budget:
        need = f"more than the {budget / GIB:.2f} GiB of host memory available for its weights alone ({held})"
        raise MemoryRefused(need, fixes)
    steps = {
        name: max(
            gen.steps.peak_bytes(layout, kinds) for layout, kinds in layouts[name]
        )
        for name, gen in shape_only.items()
    }
    # The oracle runs on the single device's weights, while that run's cache stays resident.
    beside = {name: resident.get(SINGLE, 0) if name == ORACLE else 0 for name in steps}
    need = max(
        steps[name]
        + beside[name]
        + sum(w for other, w in weights.items() if other != owner[name])
        for name in shape_only
    )
    step = max(s - weights[owner[n]] for n, s in steps.items())
    estimate = (
        f"an estimated {need / GIB:.2f} GiB of host memory (weights {held}, the largest step {step / GIB:.2f} GiB "
        f"more) of {budget / GIB:.2f} GiB available"
    )
    if need > budget:
        raise MemoryRefused(estimate, fixes)
    return estimate


def job_layout(job: Job, generator: Generator) -> BatchLayout:
    """The continuous schedule's layout: the whole job's, whichever problems are left, so a resumed
    run computes every row with the shapes (and so the arithmetic) of an uninterrupted one.
    """
    s = job.settings
    lengths = [len(ids) for ids in job.token_ids]
    return generator.layout(lengths, s.max_new_tokens, s.batch_size)


def step_layouts(
    job: Job, name: str, generator: Generator, todo: list[list[int]]
) -> list[tuple]:
    """(layout, lowered-step names) of every compiled step model `name` runs for `todo`: static
    batches, or with the continuous schedule, streams of problems through --batch-size rows.
    """
    s, lengths = job.settings, [
        [len(job.token_ids[i]) for i in batch] for batch in todo
    ]
    continuous = s.schedule == CONTINUOUS
    if name == ORACLE:
        steps = []
    elif continuous:
        steps = [(job_layout(job, generator), (DECODE_ROWS, ONE_ROW_PREFILL, INSERT))]
    else:
        steps = [
            (generator.layout(b, s.max_new_tokens), (PREFILL, DECODE)) for b in lengths
        ]
    if s.compare_single_device:
        # Differing problems are teacher-forced together (a batch's, or a group of --batch-size
        # of a stream's), rows padded to a power of two (the audit).
        most = (
            min(max(map(len, todo)), s.batch_size)
            if continuous
            else max(map(len, todo))
        )
        longest = max(map(max, lengths)) + s.max_new_tokens
        steps.append(
            (
                generator.layout([longest] * (1 << (most - 1).bit_length()), 0),
                (FILL, SCORE),
            )
        )
    return list(dict.fromkeys(steps))


def lockstep_caches(job: Job, shape_only: dict[str, Generator]) -> dict[str, int]:
    """The cache bytes each model holds while the others step: with the continuous schedule in
    compare mode every mesh's stream advances in lockstep, so all their caches are resident.
    """
    s = job.settings
    if s.schedule != CONTINUOUS or not s.compare_single_device:
        return {}
    return {
        name: gen.steps.cache_bytes(job_layout(job, gen))
        for name, gen in shape_only.items()
        if name != ORACLE
    }


def compiled_within(
    job: Job, todo: list[list[int]], budget: int
) -> tuple[dict[str, Generator], str]:
    """Shape-only generators of every model (with compare mode, also the oracle, ORACLE), every
    step compiled, within `budget` (check_memory) -> them and the estimate in words."""
    s, kernels = job.settings, job.kernels
    shape_only = {
        m.name: job.checkpoint.shape_only(m, s.dtype, s.prefill_chunk, kernels)
        for m in job.meshes
    }
    if s.compare_single_device:
        shape_only[ORACLE] = oracle_of(shape_only[SINGLE])
    layouts = {
        name: step_layouts(job, name, gen, todo) for name, gen in shape_only.items()
    }
    resident = lockstep_caches(job, shape_only)
    estimate = check_memory(shape_only, layouts, budget, s.memory_fixes(), resident)
    return shape_only, estimate


def shape_only_within_memory(job: Job, todo: list[list[int]]) -> dict[str, Generator]:
    """compiled_within the run's budget (--memory-budget, else what the kernel reports available),
    the estimate said on stderr."""
    s = job.settings
    budget = int(s.memory_budget * GIB) if s.memory_budget else available_host_bytes()
    shape_only, estimate = compiled_within(job, todo, budget)
    print(f"memory: {estimate}", file=sys.stderr)
    return shape_only


def load_within_memory(job: Job, todo: list[list[int]]) -> dict[str, Generator]:
    """Shape-only generators compile every step and bound the run's memory; then the weights load,
    reusing those programs. With compare mode, also the oracle (ORACLE)."""
    s = job.settings
    shape_only = shape_only_within_memory(job, todo)
    generators = {
        m.name: job.checkpoint.load(m, s.dtype, shape_only[m.name]) for m in job.meshes
    }
    if s.compare_single_device:
        generators[ORACLE] = oracle_of(generators[SINGLE], shape_only[ORACLE].steps)
    return generators


def graded(
    checkpoint: Checkpoint, problem: Problem, index: int, tokens: list[int], top
) -> Graded:
    """Problem `index`'s completion `tokens`, its text cut at a stop sequence, graded; with the
    step records `top` when given."""
    text = checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)
    return grade(index, tokens, truncate_at_stop(text), problem, top)


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
    """Greedy completions of the problems `batch` (indices) as one static batch, graded, with each
    step's top logits when `keep_records`. `between_steps` runs after every decode step (where a
    run may stop)."""
    result = generator.generate(
        [token_ids[i] for i in batch],
        max_new_tokens,
        on_tokens=lambda _: between_steps(),
        stop=stops_at_sequences(checkpoint.tokenizer),
    )
    completions = zip(batch, result.generated_token_ids, result.top_logits, strict=True)
    return [
        graded(checkpoint, problems[i], i, tokens, top if keep_records else None)
        for i, tokens, top in completions
    ]


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
        audit = (
            None if entry["audit"] is None else SequenceAudit.from_dict(entry["audit"])
        )
        return cls(
            entry["index"],
            {name: Graded(**g) for name, g in entry["runs"].items()},
            audit,
        )


def audited(
    job: Job, generators: dict[str, Generator], records: list[Record]
) -> list[Record]:
    """`records` with the audit of the mesh against one device, when compared."""
    if ORACLE not in generators:
        return records
    mesh, fresh = job.mesh.name, {r.index: r for r in records}
    audits = MeshAudit(job.settings.dtype).audit(
        generators[ORACLE],
        generators[mesh],
        {i: job.token_ids[i] for i in fresh},
        {i: r.runs[SINGLE].generated_run() for i, r in fresh.items()},
        {i: r.runs[mesh].generated_run() for i, r in fresh.items()},
    )
    for index, audit in audits.items():
        fresh[index].audit = audit
    return records


def evaluate_batch(
    job: Job,
    generators: dict[str, Generator],
    batch: list[int],
    done: set[int],
    between_steps: Callable[[], None],
) -> list[Record]:
    """The batch's problems not in `done` on every mesh as one static batch, audited when compared."""
    keep = ORACLE in generators
    work = (job.checkpoint, job.problems, job.token_ids, batch)
    runs = {
        name: complete(gen, *work, job.settings.max_new_tokens, between_steps, keep)
        for name, gen in generators.items()
        if name != ORACLE
    }
    fresh = [
        Record(i, {name: graded[k] for name, graded in runs.items()})
        for k, i in enumerate(batch)
        if i not in done
    ]
    return audited(job, generators, fresh)


def evaluate_stream(
    job: Job,
    generators: dict[str, Generator],
    stream: list[int],
    between_steps: Callable[[], None],
) -> Iterator[list[Record]]:
    """The problems `stream` through --batch-size rows of every mesh (continuous.py), the meshes'
    runs stepping in lockstep -> records as problems finish on every mesh; compared, they are
    audited in groups of up to --batch-size."""
    s, keep = job.settings, ORACLE in generators
    names = [name for name in generators if name != ORACLE]
    prompts, stop = [job.token_ids[i] for i in stream], stops_at_sequences(
        job.checkpoint.tokenizer
    )
    runs = {
        name: ContinuousRun(
            generators[name],
            prompts,
            s.max_new_tokens,
            s.batch_size,
            stop=stop,
            layout=job_layout(job, generators[name]),
            warm=True,
        )
        for name in names
    }
    finished: dict[str, dict[int, Graded]] = {name: {} for name in names}
    while True:
        for name, run in runs.items():
            for f in run.collect():
                index = stream[f.index]
                finished[name][index] = graded(
                    job.checkpoint,
                    job.problems[index],
                    index,
                    f.tokens,
                    f.records if keep else None,
                )
        ready = [i for i in finished[names[0]] if all(i in finished[n] for n in names)]
        last = all(run.finished for run in runs.values())
        while ready and (len(ready) >= s.batch_size or last or not keep):
            group, ready = ready[: s.batch_size], ready[s.batch_size :]
            records = [Record(i, {n: finished[n].pop(i) for n in names}) for i in group]
            yield audited(job, generators, records)
        if last:
            return
        for run in runs.values():
            if not run.finished:
                run.step()
        between_steps()


def compare_runs(
    reference: Sequence[Graded], candidate: Sequence[Graded], audit: MeshAudit
) -> dict:
    """The mesh run against the single-device run: the audit's verdict and counts, agreement of
    text and extracted answers, and the paired scores."""
    pairs = list(zip(reference, candidate, strict=True))
    same_answers = [(a.strict, a.flexible) == (b.strict, b.flexible) for a, b in pairs]
    paired = paired_scores(reference, candidate)
    return {
        **audit.summary(),
        "generated_text_agreement": sum(a.generated == b.generated for a, b in pairs)
        / len(pairs),
        "extracted_answer_agreement": sum(same_answers) / len(pairs),
        "disagreeing_problems": [
            a.index for a, same in zip(reference, same_answers, strict=True) if not same
        ],
        "scores": paired,
        "mcnemar_p_value": paired["strict-match"]["mcnemar_p_value"],
    }


@dataclass
class Evaluation:
    """A GSM8K run in progress: its settings, and the problems finished so far."""

    job: Job
    records: dict[int, Record] = field(default_factory=dict)

    def _done(self) -> list[Record]:
        return [self.records[i] for i in sorted(self.records)]

    def scores(self) -> dict[str, dict]:
        done = self._done()
        return (
            {m.name: scores([r.runs[m.name] for r in done]) for m in self.job.meshes}
            if done
            else {}
        )

    def audit(self) -> MeshAudit:
        return MeshAudit(
            self.job.settings.dtype, {r.index: r.audit for r in self._done()}
        )

    def comparison(self) -> dict | None:
        if not self.job.settings.compare_single_device or not self.records:
            return None
        done, mesh = self._done(), self.job.mesh.name
        return compare_runs(
            [r.runs[SINGLE] for r in done], [r.runs[mesh] for r in done], self.audit()
        )

    def print_scores(self) -> None:
        for name, score in self.scores().items():
            strict, flexible = score["strict-match"], score["flexible-extract"]
            print(
                f"mesh {name}: strict-match {strict['accuracy']:.4f} ± {strict['stderr']:.4f}, "
                f"flexible-extract {flexible['accuracy']:.4f} ± {flexible['stderr']:.4f} ({len(self.records)} problems)"
            )
        comparison = self.comparison()
        if comparison is not None:
            strict = comparison["scores"]["strict-match"]
            print(f"mesh {self.job.mesh.name} vs 1x1: {self.audit().describe()}")
            print(
                f"  strict-match {strict['mesh']['accuracy']:.4f} vs {strict['single_device']['accuracy']:.4f} "
                f"(difference {strict['difference']:+.4f}, exact McNemar p = {strict['mcnemar_p_value']:.3f}); "
                f"extracted answers agree on {comparison['extracted_answer_agreement']:.2%}, "
                f"generated text on {comparison['generated_text_agreement']:.2%} of problems"
            )

    def result(self) -> dict:
        result = {"settings": self.job.record_settings(), "scores": self.scores()}
        comparison = self.comparison()
        if comparison is not None:
            result["comparison"] = comparison
        compared = self.job.settings.compare_single_device
        result["problems"] = [
            {
                "prompt_id": r.index,
                "prompt": self.job.prompts[r.index],
                **{name: asdict(g) for name, g in r.runs.items()},
                **({"audit": r.to_dict()["audit"]} if compared else {}),
            }
            for r in self._done()
        ]
        return result


def evaluate(
    job: Job, todo: list[list[int]], evaluation: Evaluation, store: ResultStore
) -> int:
    """`todo`: static batches, each problem stored as its batch finishes, or (continuous) one
    stream, each problem stored as it finishes; a signal stops between steps, with what finished
    saved. Returns the exit code."""
    generators = load_within_memory(job, todo)
    try:
        progress = {
            "total": len(job.problems),
            "initial": len(evaluation.records),
            "unit": "problem",
        }
        with StopSignals() as signals, tqdm(
            desc=f"gsm8k {job.mesh}", file=sys.stderr, **progress
        ) as bar:
            for work in todo:
                if job.settings.schedule == CONTINUOUS:
                    finished = evaluate_stream(job, generators, work, signals.check)
                else:
                    done = set(evaluation.records)
                    finished = [
                        evaluate_batch(job, generators, work, done, signals.check)
                    ]
                for records in finished:
                    for record in records:
                        evaluation.records[record.index] = record
                        store.add(record.to_dict())
                    bar.update(len(records))
                signals.check()
    except Stopped as stop:
        saved = (
            f"; they are saved in {store.log.path}: rerun the same command to resume"
            if store.log
            else ""
        )
        finished = f"{len(evaluation.records)} of {len(job.problems)} problems"
        print(f"stopped by {stop} after {finished}{saved}", file=sys.stderr)
        evaluation.print_scores()
        return stop.exit_code
    return 0


def run(settings: Settings) -> int:
    job = prepare(settings)
    evaluation = Evaluation(job)
    with ResultStore(settings.output, job.record_settings()) as store:
        evaluation.records = {
            i: Record.from_dict(entry) for i, entry in store.open().items()
        }
        if evaluation.records:
            print(
                f"resuming from {store.log.path}: reusing {len(evaluation.records)} finished problems",
                file=sys.stderr,
            )
        elif settings.output is None:
            print(
                "no --output: results are not saved as they finish and the run cannot resume",
                file=sys.stderr,
            )
        batches = length_sorted_batches(
            [len(ids) for ids in job.token_ids], settings.batch_size
        )
        todo = [
            batch
            for batch in batches
            if not all(i in evaluation.records for i in batch)
        ]
        if settings.schedule == CONTINUOUS:  # one stream, in the harness's order
            stream = [i for b in batches for i in b if i not in evaluation.records]
            todo = [stream] if stream else []
        code = evaluate(job, todo, evaluation, store) if todo else 0
        if code:
            return code
        # The scores on stdout first, then the result file, written whole or not at all.
        evaluation.print_scores()
        store.write_result(evaluation.result())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except (*EXPECTED_ERRORS, DataError, RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
