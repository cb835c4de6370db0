# SPDX-FileCopyrightText: (c) 2026 Tenstorrent AI ULC
#
# SPDX-License-Identifier: Apache-2.0

import json
import os
import signal

import pytest

from tests.jax.infra.runs import (
    ResultLog,
    RunError,
    Stopped,
    StopSignals,
    check_writable,
    write_atomically,
)

pytestmark = pytest.mark.push

SETTINGS = {"model": "m", "limit": 4}


def test_a_log_hands_back_what_is_finished_and_keeps_appending(tmp_path):
    path = tmp_path / "run.progress.jsonl"
    log = ResultLog(path, SETTINGS)
    assert log.open() == []
    log.append({"index": 0})
    log.append({"index": 1})
    log.close()
    again = ResultLog(path, SETTINGS)
    assert again.open() == [{"index": 0}, {"index": 1}]
    again.append({"index": 2})
    again.close()
    assert [json.loads(line) for line in path.read_text().splitlines()][1:] == [
        {"index": i} for i in range(3)
    ]


def test_a_torn_last_line_is_dropped_and_overwritten(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"settings": SETTINGS}) + "\n" + '{"index": 0}\n{"ind')
    log = ResultLog(path, SETTINGS)
    assert log.open() == [{"index": 0}]
    log.append({"index": 1})
    log.close()
    assert path.read_text().splitlines()[1:] == ['{"index": 0}', '{"index": 1}']


def test_other_settings_or_a_corrupt_log_are_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"settings": SETTINGS}) + "\n")
    with pytest.raises(
        RunError,
        match=r"other settings \(limit: 4 there, 8 now\): rerun with those settings",
    ):
        ResultLog(path, {**SETTINGS, "limit": 8}).open()
    path.write_text(json.dumps({"settings": SETTINGS}) + "\nnot json\n{}\n")
    with pytest.raises(RunError, match=r"run.jsonl:2 is not JSON"):
        ResultLog(path, SETTINGS).open()
    path.write_text('{"index": 0}\n')
    with pytest.raises(RunError, match="does not start with a run's settings"):
        ResultLog(path, SETTINGS).open()


def test_unwritable_locations_are_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="is a directory"):
        check_writable(tmp_path, "--output")
    with pytest.raises(RunError, match="cannot be written"):
        check_writable(tmp_path / "file" / "out.json", "--output")
    check_writable(tmp_path / "new" / "out.json", "--output")
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.json"
    write_atomically(path, "{}")
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == [
        "out.json"
    ]


def test_a_signal_stops_the_work_at_the_next_safe_point():
    # What the process had before (the default, or ignored when started in the background).
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as signals:
        signals.check()
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Stopped) as stopped:
            signals.check()
        assert stopped.value.exit_code == 143 and str(stopped.value) == "SIGTERM"
        with pytest.raises(Stopped):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before
