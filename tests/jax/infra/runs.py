# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

"""Long runs that never lose finished work: checks made before the work starts, an append-only
results log a rerun resumes from, and signals that stop the work at a safe point."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any


class RunError(ValueError):
    """A run that cannot start or resume as asked; the message says why and what to do."""


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a file location that cannot be written: a directory, a path under
    a file, a read-only or missing parent that cannot be made."""
    if path.is_dir():
        raise RunError(f"{what} {path} is a directory: name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise RunError(
            f"{what} {path} cannot be written ({err.strerror or err}): choose a writable location"
        ) from err


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader finds the old file or the whole new one, never half."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def available_host_bytes() -> int:
    """Memory the kernel can still give this process without swapping (MemAvailable)."""
    with open("/proc/meminfo") as meminfo:
        return next(
            int(line.split()[1]) * 1024
            for line in meminfo
            if line.startswith("MemAvailable:")
        )


class ResultLog:
    """JSON lines: the run's settings, then one record per finished item, each appended and
    flushed to disk as it finishes. Reopened with the same settings it hands back what is done
    (a torn last line, from a crash mid-write, is dropped); with other settings it refuses.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path, self.settings = path, settings
        self._file = None

    def open(self) -> list[dict[str, Any]]:
        """The records already finished (none for a new log), and the log ready for appending."""
        records: list[dict[str, Any]] = []
        good_bytes = 0
        if self.path.is_file():
            with open(self.path, "rb") as existing:
                lines = existing.read().split(b"\n")
            for number, line in enumerate(lines):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if number < len(lines) - 1 and any(
                        rest.strip() for rest in lines[number + 1 :]
                    ):
                        raise RunError(
                            f"{self.path}:{number + 1} is not JSON: delete the file to start over"
                        ) from None
                    break  # a torn last line
                if number == 0:
                    self._check_settings(
                        entry.get("settings") if isinstance(entry, dict) else None
                    )
                else:
                    records.append(entry)
                good_bytes += len(line) + 1
        self._file = open(
            self.path, "ab" if good_bytes else "wb"
        )  # noqa: SIM115 (closed by close())
        self._file.truncate(good_bytes)
        if not good_bytes:
            self._write({"settings": self.settings})
        return records

    def _check_settings(self, previous: dict | None) -> None:
        if previous is None:
            raise RunError(
                f"{self.path} does not start with a run's settings: delete it to start over"
            )
        for key in sorted(set(previous) | set(self.settings)):
            if previous.get(key) != self.settings.get(key):
                raise RunError(
                    f"{self.path} holds a run with other settings ({key}: {previous.get(key)!r} there, "
                    f"{self.settings.get(key)!r} now): rerun with those settings to resume, or delete it to start over"
                )

    def _write(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        self._write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Stopped(Exception):
    """The run was asked to stop (SIGINT or SIGTERM) and stopped at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopSignals:
    """Within the block, SIGINT and SIGTERM only ask the work to stop: it calls `check()` at safe
    points (between steps, never in the middle of writing a record) and stops there with Stopped.
    A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise Stopped(signum)
        self.received = signum

    def check(self) -> None:
        if self.received is not None:
            raise Stopped(self.received)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def progress_path(output: Path) -> Path:
    """Where a run writing `output` logs its finished items: OUTPUT.progress.jsonl beside it."""
    return output.with_name(output.name + ".progress.jsonl")


class ResultStore:
    """A long run's finished items, keyed by an integer index. With an output file each item is
    appended to its progress log (`progress_path`) as it finishes, a rerun with the same settings
    resumes from there, and the whole result is written to the output at the end, atomically.
    Without one the items are kept in memory only."""

    def __init__(self, output: Path | None, settings: dict[str, Any]) -> None:
        self.output = output
        self.log = (
            None if output is None else ResultLog(progress_path(output), settings)
        )
        self.items: dict[int, dict[str, Any]] = {}

    @staticmethod
    def check_writable(output: Path | None) -> None:
        """Refuse, before any work, an output or progress file that cannot be written."""
        if output is not None:
            check_writable(output, "--output")
            check_writable(progress_path(output), "the progress file")

    def open(self) -> dict[int, dict[str, Any]]:
        """The items finished by an earlier run with the same settings (none without an output)."""
        if self.log is not None:
            self.items = {item["index"]: item for item in self.log.open()}
        return self.items

    def add(self, item: dict[str, Any]) -> None:
        """One finished item (a dict with its "index"), on disk before this returns."""
        self.items[item["index"]] = item
        if self.log is not None:
            self.log.append(item)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def write_result(self, result: dict[str, Any]) -> None:
        if self.output is not None:
            write_atomically(self.output, json.dumps(result, indent=2))

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
