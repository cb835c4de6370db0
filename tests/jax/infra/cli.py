# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Running a command-line module (`python -m ...`) in a fresh process, as a user would; or many
calls of its `main(argv)` in one fresh process, for tests of what each call prints and returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO


def _environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment with `env` applied; a None value removes the variable."""
    merged = {**os.environ, **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


def start_cli(
    module: str, *args: str, env: Mapping[str, str | None] | None = None
) -> subprocess.Popen:
    """Start `python -m module args...` with stdout and stderr captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(env),
    )


def run_cli(
    module: str,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `python -m module args...` to completion, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(env),
    )


# Runs each call of a module's main(argv) with its environment changes, stdout and stderr captured;
# an exception escaping main is a traceback on stderr and exit 1, as `python -m` would show it.
_CALLS = """
import contextlib, importlib, io, json, os, sys, traceback
module_name, calls = json.loads(sys.stdin.read())
module = importlib.import_module(module_name)
fds = os.dup(1), os.dup(2)  # a call may move file descriptors 1 and 2 (a CLI quieting gloo does)
results = []
for argv, env in calls:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
os.write(fds[0], ("\\n" + json.dumps(results) + "\\n").encode())
"""


@dataclass(frozen=True)
class Call:
    """One call's outcome, as `subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def run_cli_calls(
    module: str,
    calls: Sequence[tuple[Sequence[str], Mapping[str, str]]],
    env: Mapping[str, str | None] | None = None,
    timeout: float = 600,
) -> list[Call]:
    """Call `module.main(argv)` for each (argv, environment changes) in one fresh process, in order:
    one interpreter and one JAX start-up for all of them. The calls share the process, so they
    must not need different JAX start-up settings (the simulated device count comes from `env`).
    """
    payload = json.dumps(
        [module, [[list(argv), dict(changes)] for argv, changes in calls]]
    )
    done = subprocess.run(
        [sys.executable, "-c", _CALLS],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(env),
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the calls of {module} did not complete: {done.stderr[-3000:]}"
        )
    return [
        Call(**result) for result in json.loads(done.stdout.strip().splitlines()[-1])
    ]


def own_stdout() -> TextIO:
    """A stream to this program's real standard output, with file descriptor 1 sent to stderr from
    now on: native libraries that print on descriptor 1 (gloo's connection notices, the TT
    plugin's device logs) no longer mix into a --json result."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out
