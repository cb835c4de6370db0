# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""The Tenstorrent PJRT plugin and compiling for it without a card: the registry's
(`jax-tt-plugin`) or the one a tt-xla checkout builds and installs (`pjrt-plugin-tt`).

The plugin registers the JAX platform `tt` and compiles StableHLO -> TTIR -> TTNN for the chips a
system descriptor (.ttsys) describes. With TT_COMPILE_ONLY_SYSTEM_DESC naming one, it needs no
card: every program goes through the whole TT-MLIR pipeline and executing returns zero-filled
buffers. A descriptor is made by opening the plugin against a mock cluster
(TT_METAL_MOCK_CLUSTER_DESC_PATH): while that process lives the plugin keeps the descriptor at
$TMPDIR/tt_pjrt_system_descriptor and deletes it at exit, so the process copies it out itself.
It embeds the plugin's schema hash, so it is made once per plugin version and cached. The mock
cluster, `tt_cluster/blackhole_galaxy.yaml`, is an unmodified copy of tt-umd's
`tests/cluster_descriptor_examples/blackhole_galaxy.yaml` (Apache-2.0): 32 Blackhole chips.

    python -m tests.jax.infra.tt_plugin OUT   # (internal) open the mock cluster, copy the descriptor to OUT
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

# The plugin's distributions: the registry's, and the one a tt-xla checkout builds.
PACKAGES = ("jax-tt-plugin", "pjrt-plugin-tt")
MODULE = "jax_plugins.libtt"  # what JAX's plugin discovery imports, and whose initialize() loads libtt.so
INSTALL = "pip install -r requirements-tt.txt (or build tt-xla's pjrt-plugin-tt)"
COMPILE_ONLY_ENV = "TT_COMPILE_ONLY_SYSTEM_DESC"
MOCK_CLUSTER_ENV = "TT_METAL_MOCK_CLUSTER_DESC_PATH"
# 32 Blackhole chips: every mesh of the suite (1x32 and 8x4 use all of them, 2x4 and 1x8 eight).
# Wormhole mock clusters fail to build their firmware on a host without a card; Blackhole works.
MOCK_CLUSTER = Path(__file__).with_name("tt_cluster") / "blackhole_galaxy.yaml"
_PLUGIN_DESCRIPTOR = "tt_pjrt_system_descriptor"
_PROGRESS_EVERY = 15.0  # seconds between progress lines while a descriptor is made
# Level 1 makes the compiler check each op against the chip's constraints, so it keeps the fused
# ops that fit (scaled_dot_product_attention(_decode), rotary_embedding, fused norms and QKV) where
# level 0 decomposes them unchecked; what a bring-up engineer runs. Every TT compile here uses it.
COMPILE_OPTIONS = {"optimization_level": "1"}


class TTPluginError(RuntimeError):
    """The TT plugin cannot be used as asked; the message says what to install or set."""


def installed_plugin() -> str | None:
    """The installed plugin as NAME-VERSION (the first of PACKAGES found), or None."""
    for package in PACKAGES:
        try:
            return f"{package}-{metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def has_card() -> bool:
    """Whether this machine has a Tenstorrent card (the kernel driver's device nodes)."""
    try:
        return any(entry.name.isdigit() for entry in Path("/dev/tenstorrent").iterdir())
    except OSError:
        return False


def keep_out_of_this_process() -> None:
    """Keep the plugin from loading into a process that will not use it.

    JAX imports every installed plugin when its first backend starts, whatever `jax_platforms`
    says, and loading libtt.so unpacks the plugin's ~417 MB runtime into $TMPDIR: seconds per
    process, and two processes starting together race on the same directory (one of them then
    fails or hangs: seen with the two processes of a multi-process mesh). Discovery finds this
    stand-in already imported instead; it registers nothing. Must run before JAX's first backend.
    """
    stand_in = types.ModuleType(MODULE, "the TT plugin, kept out of a CPU-only process")
    stand_in.initialize = lambda: None
    sys.modules.setdefault(MODULE, stand_in)


def start_backend() -> None:
    """Start the `tt` backend in this process, one process at a time: the first start unpacks the
    plugin's runtime into $TMPDIR, which concurrent starts (pytest-xdist workers) would race on.
    """
    import jax

    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "backend-start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        jax.devices("tt")


def cache_dir() -> Path:
    """Where descriptors are kept between runs: $TT_XLA_TESTS_CACHE, else the user's cache."""
    root = os.environ.get("TT_XLA_TESTS_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "tt-xla-tests"
    )
    return Path(root)


def _write_descriptor(
    target: Path, plugin: str, progress: Callable[[str], None]
) -> None:
    """Open the plugin against the mock cluster in a child process that copies the descriptor to
    `target`; the child runs in a scratch directory (the runtime unpacks ~417 MB into $TMPDIR and
    writes a `generated/` folder into its working directory)."""
    with tempfile.TemporaryDirectory(prefix="tt-descriptor-") as scratch:
        env = {
            **os.environ,
            "JAX_PLATFORMS": "tt",
            MOCK_CLUSTER_ENV: str(MOCK_CLUSTER),
            "TMPDIR": scratch,
        }
        env.pop(COMPILE_ONLY_ENV, None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parents[3]), env.get("PYTHONPATH", "")]
        ).strip(os.pathsep)
        staging = Path(scratch) / "descriptor.ttsys"
        log_path = Path(scratch) / "plugin.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.jax.infra.tt_plugin", str(staging)],
                cwd=scratch,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            while child.poll() is None:
                try:
                    child.wait(timeout=_PROGRESS_EVERY)
                except subprocess.TimeoutExpired:
                    progress(
                        f"  ... still making it: {time.monotonic() - started:.0f} s"
                    )
        if child.returncode != 0 or not staging.is_file():
            tail = "".join(
                log_path.read_text(errors="replace").splitlines(keepends=True)[-15:]
            )
            raise TTPluginError(
                f"making a mock system descriptor with {plugin} failed (exit {child.returncode}); "
                f"the plugin's last output:\n{tail}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staging, target.with_suffix(".partial"))
        # never a half-written descriptor in the cache
        os.replace(target.with_suffix(".partial"), target)
        progress(f"  made {target} in {time.monotonic() - started:.0f} s")


def system_descriptor(progress: Callable[[str], None]) -> Path:
    """The mock-cluster system descriptor of the installed plugin, made on first use and cached.

    Concurrent callers (pytest-xdist workers) wait for the one that makes it.
    """
    plugin = installed_plugin()
    if plugin is None:
        raise TTPluginError(f"the TT PJRT plugin is not installed: {INSTALL}")
    target = cache_dir() / plugin / f"{MOCK_CLUSTER.stem}.ttsys"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            progress(
                f"making a mock TT system descriptor for {plugin} ({MOCK_CLUSTER.name}, 32 chips): "
                f"once per plugin version, cached at {target}; ~2-5 minutes on 2 cores"
            )
            _write_descriptor(target, plugin, progress)
    return target


def enable_compile_only(progress: Callable[[str], None]) -> Path:
    """Point the plugin at a system descriptor (the one already set, else the cached mock one) so
    that it compiles without a card; must run before JAX starts the `tt` backend."""
    given = os.environ.get(COMPILE_ONLY_ENV)
    if given:
        if not Path(given).is_file():
            raise TTPluginError(
                f"{COMPILE_ONLY_ENV}={given} is not a file: unset it to use the mock descriptor"
            )
        return Path(given)
    path = system_descriptor(progress)
    os.environ[COMPILE_ONLY_ENV] = str(path)
    _private_plugin_tmpdir()
    return path


def _private_plugin_tmpdir() -> None:
    """The plugin copies the descriptor to $TMPDIR/tt_pjrt_system_descriptor, reads it at every
    compile and deletes it at exit: with a shared TMPDIR, one process ending (an xdist worker, a
    second run) breaks the compiles of every other. Each process gets a directory of its own.
    """
    private = tempfile.mkdtemp(prefix="tt-plugin-")
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    os.environ["TMPDIR"] = private


def _copy_descriptor_from_a_live_plugin(out: Path) -> None:
    """In the child: start the plugin (the mock cluster is in the environment) and copy the
    descriptor it wrote before the process ends and the plugin deletes it."""
    import jax

    jax.devices("tt")
    shutil.copyfile(Path(tempfile.gettempdir()) / _PLUGIN_DESCRIPTOR, out)


if __name__ == "__main__":
    _copy_descriptor_from_a_live_plugin(Path(sys.argv[1]))
