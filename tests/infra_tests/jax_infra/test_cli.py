# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import pytest

from tests.jax.infra.cli import run_cli, start_cli

pytestmark = pytest.mark.push


def test_environment_overrides_and_removals(monkeypatch):
    monkeypatch.setenv("CLI_TEST_KEEP", "kept")
    monkeypatch.setenv("CLI_TEST_DROP", "dropped")
    code = "import os; print(os.environ.get('CLI_TEST_KEEP'), os.environ.get('CLI_TEST_DROP'), os.environ['CLI_TEST_NEW'])"
    done = run_cli(
        "timeit",
        "-n",
        "1",
        "-s",
        code,
        "pass",
        env={"CLI_TEST_DROP": None, "CLI_TEST_NEW": "new"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "kept None new"


def test_failures_come_back_as_exit_codes():
    assert run_cli("no_such_module_here").returncode == 1
    process = start_cli("no_such_module_here")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "No module named no_such_module_here" in err
