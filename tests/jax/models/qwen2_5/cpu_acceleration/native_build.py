# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Building a C++ XLA FFI kernel with the host's compiler, once per source, flags and jaxlib.

A kernel is built on first use (a few seconds) into the user's cache directory, named by the hash
of its source, compiler command and jaxlib version, so an upgrade rebuilds it and concurrent
builds (pytest-xdist workers) never load a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax
import jaxlib

BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
# The kernels' shared headers (ffi_chunks.h), on every build's include path and in its hash.
HEADERS = Path(__file__).parent


class KernelBuildError(RuntimeError):
    """The host cannot build a CPU kernel."""


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "jax-ffi-kernels"


def build(source: Path, flags: Sequence[str], what: str, needs: str) -> Path:
    """The shared library of `source` built with `flags` (built now unless cached). `what` names the
    kernel and `needs` the compiler it needs, in the one-line error a failed build raises.
    """
    compiler = os.environ.get("CXX", "g++")
    command = [compiler, *BASE_FLAGS, *flags, "-I", str(HEADERS)]
    command += ["-isystem", jax.ffi.include_dir()]
    headers = b"".join(h.read_bytes() for h in sorted(HEADERS.glob("*.h")))
    key = hashlib.sha256(
        source.read_bytes()
        + headers
        + " ".join(command).encode()
        + jaxlib.__version__.encode()
    )
    library = _cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if library.is_file():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: a process loads a whole library or none.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [*command, str(source), "-o", partial], capture_output=True, text=True
        )
    except FileNotFoundError:
        os.unlink(partial)
        raise KernelBuildError(
            f"building the {what} needs a C++17 compiler and {compiler!r} was not found: "
            "install g++ or set CXX to one"
        ) from None
    if result.returncode != 0:
        os.unlink(partial)
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KernelBuildError(
            f"building the {what} with {compiler!r} failed: {last}; it needs {needs}, set CXX to one"
        )
    os.replace(partial, library)
    return library
