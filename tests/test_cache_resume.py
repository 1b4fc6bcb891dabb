"""The SQLite store across processes: a run killed with SIGKILL resumes, and runs share.

Every run here is a real ``python tests/_cache_program.py`` process (see its docstring).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAM = Path(__file__).with_name("_cache_program.py")
WAIT = 30.0


def start(*args):
    """Start the program in a session of its own (so the whole process group can be killed)."""
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process):
    """Wait for the program and return its JSON line."""
    out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def log_lines(log):
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def wait_for_line(log, line, process):
    """Wait until ``line`` is in the log (the program got that far), failing if it died."""
    deadline = time.monotonic() + WAIT
    while line not in log_lines(log):
        if process.poll() is not None:
            pytest.fail(f"the program exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{line!r} never reached the log: {log_lines(log)}")
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["sequential", "thread", "process"])
def test_a_killed_run_resumes_without_recomputing_finished_units(tmp_path, mode):
    """kill -9 while d runs; the next run recomputes d and e only, with the same results."""
    store, log, gate = tmp_path / "runs.sqlite", tmp_path / "log.txt", tmp_path / "gate"
    first = start("resume", store, log, gate, mode)
    try:
        wait_for_line(log, "d", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=WAIT)
    assert first.returncode == -signal.SIGKILL
    before = log_lines(log)
    assert sorted(before) == ["a", "b1", "b2", "c", "d"]

    gate.touch()
    outcome = finish(start("resume", store, log, gate, mode))
    assert log_lines(log)[len(before) :] == ["d", "e"]
    assert (outcome["hits"], outcome["misses"]) == (4, 2)
    a = ["a", 7, []]
    b1, b2 = ["b1", 7, [a]], ["b2", 7, [a]]
    c = ["c", 7, [b1, b2]]
    d = ["d", 7, [c]]
    assert outcome["results"] == {"a": a, "b1": b1, "b2": b2, "c": c, "d": d, "e": ["e", 7, [d]]}

    again = finish(start("resume", store, log, gate, mode))
    assert (again["hits"], again["misses"]) == (6, 0)
    assert again["results"] == outcome["results"]


def test_two_processes_share_one_store(tmp_path):
    """Two runs writing the same store at the same time both succeed; a third hits them all."""
    store, barrier = tmp_path / "shared.sqlite", tmp_path / "barrier"
    barrier.mkdir()
    n = 300
    runs = [start("share", store, n, barrier, 2) for _ in range(2)]
    outcomes = [finish(run) for run in runs]
    expected = {f"u{i}": i * i for i in range(n)}
    for outcome in outcomes:
        assert outcome["results"] == expected
        assert outcome["errors"] == 0
        assert outcome["hits"] + outcome["misses"] == n

    third = finish(start("share", store, n, barrier, 1))
    assert third["results"] == expected
    assert (third["hits"], third["misses"]) == (n, 0)
