# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The golden's path is plain XLA: the default tier, in a fresh process, imports nothing of the
opt-in CPU acceleration package and builds no native code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A fresh process collects the package's tests (importing every test module and conftest) and runs
# a generation through the command line's own entry point, then lists what it imported.
_PROBE = """
import json, sys
import pytest
folders = ["tests/jax/models/qwen2_5", "tests/infra_tests/jax_infra"]
collected = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *folders])
from tests.jax.models.qwen2_5 import generate
ran = generate.main(["--model-path", sys.argv[1], "--prompt", "Hello", "--max-new-tokens", "2"])
names = sorted(m for m in sys.modules if "cpu_acceleration" in m)
print(json.dumps({"collected": int(collected), "ran": ran, "acceleration": names}))
"""


@pytest.mark.push
def test_the_default_tier_imports_no_acceleration_and_builds_nothing(
    tmp_path, tiny_checkpoint, pytestconfig
):
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache), "PATH": ""}  # no compiler could run either
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tiny_checkpoint("gqa28x4"))],
        capture_output=True,
        text=True,
        cwd=pytestconfig.rootpath,
        env={**os.environ, **env},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"collected": 0, "ran": 0, "acceleration": []}
    assert not list(Path(cache).rglob("*.so"))
