# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0
"""Read a pytest run's log and fail (exit 1) when it proves less than it seems to.

    python .ci/check_run.py LOG [--allow-skip REASON ...] [--compiled]

- no closing summary line, or no test passed: fail;
- a skipped test whose reason matches none of the --allow-skip substrings (a case that should
  have run here, e.g. a fixture that found no plugin, descriptor or data): fail, naming it;
- --compiled (the TT compile-only run): the run's own "TT compile-only: N of M passed tests
  compiled ..., K checked the host side only" line must say that every passed test compiled its
  workloads or checks the host side by design (N > 0, N + K == M).
"""

import argparse
import re
import sys
from pathlib import Path

SUMMARY = re.compile(
    r"^=+ (?P<counts>.*\d+ (passed|failed|skipped|error).*) in [\d.]+s.*=+$"
)
SKIPPED = re.compile(
    r"^SKIPPED \[(?P<count>\d+)\] (?P<where>[^:]+:\d+): (?P<reason>.*)$"
)
COMPILED = re.compile(
    r"TT compile-only: (?P<compiled>\d+) of (?P<passed>\d+) passed tests compiled .*?, "
    r"(?P<host>\d+) checked the host side"
)


def problems(log: str, allowed: list[str], compiled: bool) -> list[str]:
    lines = log.splitlines()
    summary = next(
        (m for line in reversed(lines) if (m := SUMMARY.match(line.strip()))), None
    )
    if summary is None:
        return ["no pytest summary line"]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary["counts"])}
    passed = counts.get("passed", 0)
    found = [] if passed else [f"no test passed ({summary['counts']})"]
    for line in lines:
        if (m := SKIPPED.match(line.strip())) and not any(
            a in m["reason"] for a in allowed
        ):
            found.append(
                f"{m['count']} skipped that should run here: {m['where']}: {m['reason']}"
            )
    if compiled:
        m = next(
            (COMPILED.search(line) for line in lines if COMPILED.search(line)), None
        )
        if m is None:
            found.append("no TT compile-only line: the TT run compiled nothing")
        elif not (
            0 < int(m["compiled"])
            and int(m["compiled"]) + int(m["host"]) == int(m["passed"]) == passed
        ):
            found.append(
                f"only {m['compiled']} of {m['passed']} passed tests compiled their workloads with TT"
            )
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("log", type=Path)
    parser.add_argument(
        "--allow-skip",
        action="append",
        default=[],
        help="a skip reason (substring) expected here",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="every passed test must have compiled with TT",
    )
    args = parser.parse_args()
    found = problems(
        args.log.read_text(errors="replace"), args.allow_skip, args.compiled
    )
    for problem in found:
        print(f"CI: {args.log.name}: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
