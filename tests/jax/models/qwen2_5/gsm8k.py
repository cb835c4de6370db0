# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""GSM8K, as lm-evaluation-harness's `gsm8k` task evaluates it (gsm8k_task.py), on one device or a mesh.

    python -m tests.jax.models.qwen2_5.gsm8k --model-path DIR --mesh 1x8 [--limit N]
        [--num-fewshot K] [--data-file F] [--output out.json] [--compare-single-device] [--chat]

The command line builds one `Settings` (gsm8k_job.py); `run` checks everything up front (data,
checkpoint, mesh, context, output files, memory), then streams the problems (gsm8k_run.py), each
problem's results on disk as soon as it finishes (tests/jax/infra/runs.ResultStore), so a stopped run
resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.jax.infra.runs import ResultStore, RunError
from tests.jax.models.qwen2_5.batching import PREFILL_CHUNK
from tests.jax.models.qwen2_5.cli_options import add_model_options
from tests.jax.models.qwen2_5.gsm8k_job import Settings, prepare
from tests.jax.models.qwen2_5.gsm8k_run import Evaluation, Record, evaluate
from tests.jax.models.qwen2_5.gsm8k_task import DataError, harness_order
from tests.jax.models.qwen2_5.pipeline import EXPECTED_ERRORS

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
    "--batch-size": {
        "type": int,
        "default": 8,
        "help": "cache rows: a row that finishes takes the next problem at once (continuous.py)",
    },
    "--prefill-chunk": {
        "type": int,
        "default": PREFILL_CHUNK,
        "help": "prompt tokens per prefill step: prefill memory grows with it (default %(default)s)",
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
        order = harness_order([len(ids) for ids in job.token_ids])
        todo = [i for i in order if i not in evaluation.records]
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
