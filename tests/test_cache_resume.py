"""The SQLite store across processes: a run killed with SIGKILL resumes, and runs share.

Every run here is a real ``python tests/_cache_program.py`` process (see its docstring).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
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


def wait_for_entries(store, count, process):
    """Wait until ``store`` holds ``count`` committed entries (read as another process would).

    A result is committed within one transaction's time of its unit completing (the
    documented bound); on a loaded machine that can be longer than the poll of the log.
    """
    deadline = time.monotonic() + WAIT
    while True:
        with (
            contextlib.suppress(sqlite3.OperationalError),  # not created yet
            contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db,
        ):
            if db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] >= count:
                return
        if process.poll() is not None:
            pytest.fail(f"the program exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{count} entries were never committed to {store}")
        time.sleep(0.01)


@pytest.mark.parametrize("mode", ["sequential", "thread", "process"])
def test_a_killed_run_resumes_without_recomputing_finished_units(tmp_path, mode):
    """kill -9 while d runs; the next run recomputes d and e only, with the same results."""
    store, log, gate = tmp_path / "runs.sqlite", tmp_path / "log.txt", tmp_path / "gate"
    first = start("resume", store, log, gate, mode)
    try:
        wait_for_line(log, "d", first)
        wait_for_entries(store, 4, first)  # a, b1, b2, c: committed within the bound
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


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_resumed_run_recomputes_only_the_unfinished_items_of_a_map(tmp_path, mode):
    """tool[2] fails; the next run (a new process) recomputes it and what follows it only."""
    store, log = tmp_path / "runs.sqlite", tmp_path / "log.txt"
    first = finish(start("map", store, log, "c", mode))
    ran = [*(f"tool:{d}" for d in "abcd"), *(f"summary:tool({d})" for d in "abd")]
    assert sorted(log_lines(log)) == sorted(ran)
    assert "answer" not in first["results"]
    assert (first["hits"], first["misses"]) == (0, 8)  # plan, 4 tools, 3 summaries

    before = len(log_lines(log))
    outcome = finish(start("map", store, log, "-", mode))
    assert log_lines(log)[before:] == ["tool:c", "summary:tool(c)", "answer"]
    assert outcome["results"]["answer"] == " ".join(f"summary(tool({d}))" for d in "abcd")
    assert (outcome["hits"], outcome["misses"]) == (7, 3)


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


# -- issue 9, defect 10: helpers read through their module -------------------------------------

HELPER_PROGRAM = """
import json, sys
import helpers
import pkg.tools
from quantum_partitioner import CachingQuantumPartitioner

def through_module(ctx):
    return helpers.scale(ctx["x"])

def through_package(ctx):
    return pkg.tools.offset(ctx["x"])

def imported_in_body(ctx):
    import helpers as h
    return h.scale(ctx["x"]) + 1

def imported_late(ctx):
    import lazy  # nobody imported it when the unit is added: its source counts
    return lazy.VALUE

with CachingQuantumPartitioner(cache_path=sys.argv[1]) as p:
    for unit in (through_module, through_package, imported_in_body, imported_late):
        p.add_unit(unit, name=unit.__name__, metadata={"cacheable": True})
    results = p.execute({"x": 10}, execution_mode="sequential", raise_on_error=True)
    print(json.dumps({"results": results, "hits": p.cache_hits, "misses": p.cache_misses}))
"""


def run_helper_program(folder, store):
    """One fresh interpreter running HELPER_PROGRAM with ``folder`` first on its path."""
    done = subprocess.run(
        [sys.executable, str(folder / "program.py"), str(store)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=folder,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_defect_10_editing_a_helper_read_through_its_module_recomputes(tmp_path):
    """Issue 9 defect 10: ``helpers.scale`` after ``import helpers`` is fingerprinted.

    Each run is a new process on one SQLite file. Editing helpers.py (a global a helper
    reads, then the helper's code), pkg/tools.py or lazy.py recomputes exactly the units
    that use them (an edit to a function no unit uses counts for nothing).
    """
    (tmp_path / "program.py").write_text(HELPER_PROGRAM)
    helpers = tmp_path / "helpers.py"
    helpers.write_text(
        "FACTOR = 2\ndef scale(x):\n    return x * FACTOR\ndef unused():\n    pass\n"
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    tools = tmp_path / "pkg" / "tools.py"
    tools.write_text("def offset(x):\n    return x + 5\n")
    lazy = tmp_path / "lazy.py"
    lazy.write_text("VALUE = 'a'\n")
    store = tmp_path / "c.sqlite"

    first = run_helper_program(tmp_path, store)
    assert first["results"] == {
        "through_module": 20,
        "through_package": 15,
        "imported_in_body": 21,
        "imported_late": "a",
    }
    assert (first["hits"], first["misses"]) == (0, 4)

    edited = helpers.read_text().replace("FACTOR = 2", "FACTOR = 3")
    helpers.write_text(edited.replace("pass", "return None"))  # unused() is read by no unit
    second = run_helper_program(tmp_path, store)
    assert second["results"]["through_module"] == 30  # was a stale 20
    assert second["results"]["imported_in_body"] == 31
    assert (second["hits"], second["misses"]) == (2, 2)

    helpers.write_text(helpers.read_text().replace("x * FACTOR", "x * FACTOR + 1"))
    tools.write_text("def offset(x):\n    return x + 6\n")
    lazy.write_text("VALUE = 'b'\n")
    third = run_helper_program(tmp_path, store)
    assert third["results"] == {
        "through_module": 31,
        "through_package": 16,
        "imported_in_body": 32,
        "imported_late": "b",
    }
    assert (third["hits"], third["misses"]) == (0, 4)


# -- group commit: the bound of what a kill -9 can lose --------------------------------------

BURST_PROGRAM = """
import sys, time
from quantum_partitioner import SQLiteStore
store = SQLiteStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.put(i.to_bytes(32, "big"), f"u{i}", b"x" * 100)
print("handed over", flush=True)
time.sleep(60)  # no flush, no close: only the writer thread commits
"""


def test_results_handed_over_before_a_kill_are_committed_within_the_bound(tmp_path):
    """A burst of 3,000 writes, then kill -9 well after the bound: every entry is in the file.

    docs/caching.md promises a commit within a transaction's time (milliseconds); the test
    waits 0.5 s, generous for a loaded machine, and nothing flushes or closes the store.
    """
    store = tmp_path / "burst.sqlite"
    n = 3_000
    program = subprocess.Popen(
        [sys.executable, "-c", BURST_PROGRAM, str(store), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert program.stdout is not None
        assert program.stdout.readline().strip() == "handed over", program.stderr
        time.sleep(0.5)
    finally:
        program.kill()
        program.communicate(timeout=WAIT)
    assert program.returncode == -signal.SIGKILL
    from quantum_partitioner import SQLiteStore  # noqa: PLC0415

    with SQLiteStore(store) as reopened:
        assert len(reopened) == n
        assert reopened.get((n - 1).to_bytes(32, "big")) == b"x" * 100
