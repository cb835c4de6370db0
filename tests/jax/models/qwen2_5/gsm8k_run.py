# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""A GSM8K run's loop: the models compiled within the memory budget, then loaded; the problems
streamed through --batch-size rows of every mesh (continuous.py), meshes in lockstep; each problem
graded, audited when compared, and stored as it finishes (tests/jax/infra/runs.ResultStore).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from tests.jax.infra.runs import ResultStore, Stopped, StopSignals, available_host_bytes
from tests.jax.models.qwen2_5.audit import MeshAudit, SequenceAudit, oracle_of
from tests.jax.models.qwen2_5.batching import BatchLayout
from tests.jax.models.qwen2_5.continuous import ContinuousRun
from tests.jax.models.qwen2_5.generation import Generator
from tests.jax.models.qwen2_5.gsm8k_job import Job
from tests.jax.models.qwen2_5.gsm8k_task import (
    Graded,
    Problem,
    grade,
    paired_scores,
    scores,
    stops_at_sequences,
    truncate_at_stop,
)
from tests.jax.models.qwen2_5.pipeline import Checkpoint
from tests.jax.models.qwen2_5.step_memory import GIB, ORACLE, SINGLE, check_memory
from tests.jax.models.qwen2_5.steps import (
    DECODE_ROWS,
    FILL,
    INSERT,
    ONE_ROW_PREFILL,
    SCORE,
)


def job_layout(job: Job, generator: Generator) -> BatchLayout:
    """The continuous schedule's layout: the whole job's, whichever problems are left, so a resumed
    run computes every row with the shapes (and so the arithmetic) of an uninterrupted one.
    """
    s = job.settings
    lengths = [len(ids) for ids in job.token_ids]
    return generator.layout(lengths, s.max_new_tokens, s.batch_size)


def step_layouts(
    job: Job, name: str, generator: Generator, todo: list[int]
) -> list[tuple]:
    """(layout, lowered-step names) of every compiled step model `name` runs for the problems
    `todo`, streamed through --batch-size rows; compared, the audit's teacher forcing of groups of
    up to --batch-size problems, rows padded to a power of two."""
    s = job.settings
    steps = []
    if name != ORACLE:
        steps.append(
            (job_layout(job, generator), (DECODE_ROWS, ONE_ROW_PREFILL, INSERT))
        )
    if s.compare_single_device:
        group = 1 << (min(len(todo), s.batch_size) - 1).bit_length()
        longest = max(len(job.token_ids[i]) for i in todo) + s.max_new_tokens
        steps.append((generator.layout([longest] * group, 0), (FILL, SCORE)))
    return steps


def lockstep_caches(job: Job, shape_only: dict[str, Generator]) -> dict[str, int]:
    """The cache bytes each model holds while the others step: in compare mode every mesh's stream
    advances in lockstep, so all their caches are resident.
    """
    if not job.settings.compare_single_device:
        return {}
    return {
        name: gen.steps.cache_bytes(job_layout(job, gen))
        for name, gen in shape_only.items()
        if name != ORACLE
    }


def compiled_within(
    job: Job, todo: list[int], budget: int
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


def shape_only_within_memory(job: Job, todo: list[int]) -> dict[str, Generator]:
    """compiled_within the run's budget (--memory-budget, else what the kernel reports available),
    the estimate said on stderr."""
    s = job.settings
    budget = int(s.memory_budget * GIB) if s.memory_budget else available_host_bytes()
    shape_only, estimate = compiled_within(job, todo, budget)
    print(f"memory: {estimate}", file=sys.stderr)
    return shape_only


def load_within_memory(job: Job, todo: list[int]) -> dict[str, Generator]:
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
    job: Job, todo: list[int], evaluation: Evaluation, store: ResultStore
) -> int:
    """The problems `todo` as one stream, each stored as it finishes; a signal stops between steps,
    with what finished saved. Returns the exit code."""
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
            for records in evaluate_stream(job, generators, todo, signals.check):
                for record in records:
                    evaluation.records[record.index] = record
                    store.add(record.to_dict())
                bar.update(len(records))
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
