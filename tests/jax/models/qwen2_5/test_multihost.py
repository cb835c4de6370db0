# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Multi-process meshes: JAX's multi-controller runtime with gloo CPU collectives on loopback.

Two processes join one mesh (2 x 4 devices for 2x4, 2 x 16 for 8x4), each loading only its
own devices' slices; the greedy tokens must equal a single process running the same mesh.
"""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.jax.infra.cli import start_cli
from tests.jax.models.qwen2_5.checkpoint_writer import tiny_random_checkpoint

pytestmark = [pytest.mark.multihost, pytest.mark.tensor_parallel, pytest.mark.nightly]

REQUEST = ["--prompt", "Hello", "--prompt", "The capital of France", "--prompt", "x"]
REQUEST += "--max-new-tokens 8 --json --dtype float32".split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generate(*args: str, model) -> subprocess.Popen:
    # JAX_NUM_CPU_DEVICES removed: each process asks for its own share of the mesh.
    env = {"JAX_NUM_CPU_DEVICES": None}
    command = ("tests.jax.models.qwen2_5.generate", "--model-path", str(model), *args)
    return start_cli(*command, env=env)


@pytest.fixture(scope="module")
def demo(demo_cache):
    """The tiny random checkpoint, built once before several processes read it."""
    return tiny_random_checkpoint(demo_cache)


@pytest.mark.parametrize("mesh_arg", ["2x4", "8x4"], ids=lambda m: f"mesh_{m}")
def test_two_processes_generate_what_one_process_does(mesh_arg, demo):
    cluster = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    processes = [
        _generate(
            "--mesh", mesh_arg, *REQUEST, *cluster, "--process-id", str(i), model=demo
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    assert outputs[1][0] == ""  # only process 0 prints
    together = json.loads(outputs[0][0])
    alone_out, alone_err = _generate(
        "--mesh", mesh_arg, *REQUEST, model=demo
    ).communicate(timeout=300)
    alone = json.loads(alone_out)
    assert together["mesh"] == mesh_arg
    assert together["generated_token_ids"] == alone["generated_token_ids"]
    assert together["prompt_token_ids"] == alone["prompt_token_ids"]


def test_mesh_must_split_evenly_over_processes(demo):
    args = [
        "--mesh",
        "1x3",
        *REQUEST,
        "--coordinator",
        "127.0.0.1:1",
        "--num-processes",
        "2",
        "--process-id",
        "0",
    ]
    process = _generate(*args, model=demo)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "does not split evenly over 2 processes" in err and "Traceback" not in err
