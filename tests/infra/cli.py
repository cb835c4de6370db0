"""Running a command-line module (`python -m ...`) in a fresh process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def _environment(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment with `env` applied; a None value removes the variable."""
    merged = {**os.environ, **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


def start_cli(module: str, *args: str, env: Mapping[str, str | None] | None = None) -> subprocess.Popen:
    """Start `python -m module args...` with stdout and stderr captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(env),
    )


def run_cli(
    module: str, *args: str, env: Mapping[str, str | None] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `python -m module args...` to completion, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=_environment(env)
    )
