"""PROCESS mode: real worker processes, crashes, kills, timeouts and pickling failures.

Unit functions here are closures or lambdas built inside the tests: cloudpickle sends them by
value, which is what users' lambdas rely on.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from quantum_partitioner import (
    BrokenBackendError,
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
    UnitTimeoutError,
    WorkerDiedError,
)
from quantum_partitioner._graph import Graph, QuantumUnit
from quantum_partitioner._run import Run
from quantum_partitioner.backends import ProcessBackend
from quantum_partitioner.backends._processes import ProcessLane

PROCESS = ExecutionMode.PROCESS
FAST_RETRY = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); reap it if it is our child
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def test_lambdas_and_closures_run_in_other_processes():
    """Lambdas and closures travel to workers, and units run outside the caller's process."""
    offset = 10
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: (os.getpid(), ctx["x"] + offset), name="a")
    p.add_unit(lambda ctx: ctx["a"][1] * 2, ["a"], name="b")
    results = p.execute({"x": 1}, execution_mode=PROCESS)
    assert results["a"][0] != os.getpid()
    assert results["a"][1] == 11
    assert results["b"] == 22


def test_worker_that_exits_fails_only_its_unit():
    """os._exit in a unit fails that unit with WorkerDiedError; the run goes on."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: os._exit(3), name="dies")
    p.add_unit(lambda ctx: "after", ["dies"], name="downstream")
    for k in range(6):
        p.add_unit(lambda ctx, k=k: k * k, name=f"ok{k}")
    results = p.execute({}, execution_mode=PROCESS)
    assert {f"ok{k}": k * k for k in range(6)} == results
    error = p.units["dies"].error
    assert isinstance(error, WorkerDiedError)
    assert "exited with status 3" in str(error)
    assert "dies" in str(error)
    assert p.units["downstream"].state is UnitState.SKIPPED


def test_worker_killed_by_a_signal_is_retried_on_a_new_worker(tmp_path):
    """A worker killed by SIGKILL fails its attempt; the retry runs on a replacement."""
    p = QuantumPartitioner(max_workers=1, retry_policy=FAST_RETRY)

    def crash_once(ctx):
        marker = ctx["marker"]
        if not marker.exists():
            marker.write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    p.add_unit(crash_once, name="flaky", retries=1)
    p.add_unit(lambda ctx: os.getpid(), name="other")
    results = p.execute({"marker": tmp_path / "marker"}, execution_mode=PROCESS)
    assert p.units["flaky"].state is UnitState.COMPLETED
    assert p.units["flaky"].attempt == 2
    assert "flaky" in results
    assert "other" in results


def test_timeout_kills_the_worker_and_frees_the_cpu(tmp_path):
    """A unit looping forever is TIMEOUT at its deadline and its process is gone."""
    p = QuantumPartitioner(max_workers=2)

    def spin(ctx):
        ctx["pidfile"].write_text(str(os.getpid()))
        while True:
            pass

    pidfile = tmp_path / "spin.pid"
    p.add_unit(spin, name="spin", timeout=1.0)
    p.add_unit(lambda ctx: "fine", name="fine")
    start = time.monotonic()
    results = p.execute({"pidfile": pidfile}, execution_mode=PROCESS)
    elapsed = time.monotonic() - start
    spinner = int(pidfile.read_text())
    assert results == {"fine": "fine"}
    assert p.units["spin"].state is UnitState.TIMEOUT
    assert isinstance(p.units["spin"].error, UnitTimeoutError)
    assert elapsed < 30
    assert _wait_gone(spinner), "the timed-out worker process is still running"


def test_unpicklable_function_fails_that_unit_and_names_it():
    """A unit whose function cannot be pickled fails with an error naming it and the object."""
    lock = threading.Lock()
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: lock is not None, name="holds_lock")
    p.add_unit(lambda ctx: 1, name="fine")
    results = p.execute({}, execution_mode=PROCESS)
    assert results == {"fine": 1}
    error = p.units["holds_lock"].error
    assert isinstance(error, TypeError)
    assert "holds_lock" in str(error)
    assert "lock" in str(error)


def test_unpicklable_result_fails_that_unit_and_names_it():
    """A result that cannot travel back fails its unit, naming the unit; workers go on."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: threading.Lock(), name="returns_lock")
    p.add_unit(lambda ctx: 2, name="fine")
    results = p.execute({}, execution_mode=PROCESS)
    assert results == {"fine": 2}
    error = p.units["returns_lock"].error
    assert "returns_lock" in str(error)
    assert "cannot be sent back" in str(error)


def test_unpicklable_context_is_refused_before_any_unit_runs():
    """A context value that cannot be pickled raises TypeError naming the key, nothing runs."""
    ran = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append(1), name="a")
    with pytest.raises(TypeError, match="'bad'"):
        p.execute({"bad": threading.Lock(), "good": 1}, execution_mode=PROCESS)
    assert ran == []


def test_worker_traceback_reaches_the_caller():
    """The worker's traceback is kept as the error's cause and in unit.traceback."""

    def explode(ctx):
        msg = "deep inside"
        raise ValueError(msg)

    p = QuantumPartitioner()
    p.add_unit(explode, name="explode")
    p.execute({}, execution_mode=PROCESS)
    unit = p.units["explode"]
    assert isinstance(unit.error, ValueError)
    assert unit.traceback is not None
    assert "explode" in unit.traceback
    assert "deep inside" in unit.traceback


def test_metrics_and_callbacks_work_across_processes():
    """record_metric in a worker reaches the run's metrics; callbacks run in the caller."""
    seen = []
    p = QuantumPartitioner(max_workers=2)
    p.on_unit_complete = lambda uid, result: seen.append((uid, os.getpid()))

    def measured(ctx):
        ctx.record_metric("items", 3)
        return 1

    p.add_unit(measured, name="m")
    p.execute({}, execution_mode=PROCESS)
    assert seen == [("m", os.getpid())]
    metrics = p.last_execution_metrics
    assert metrics is not None
    assert metrics["unit_metrics"]["m"] == {"items": 3}


def test_only_declared_results_travel():
    """A worker sees the context and its declared dependencies, not other results."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: "a", name="a")
    p.add_unit(lambda ctx: "b", name="b")
    p.add_unit(lambda ctx: sorted(ctx), ["a"], name="c")  # noqa: PLW0108 - a unit is fn(ctx)
    results = p.execute({"k": 1}, execution_mode=PROCESS)
    assert results["c"] == ["a", "k"]


def test_no_worker_outlives_the_run():
    """After a run, none of its worker processes is left."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: os.getpid(), name="a")
    p.add_unit(lambda ctx: os.getpid(), name="b")
    results = p.execute({}, execution_mode=PROCESS)
    for pid in set(results.values()):
        assert _wait_gone(pid)


def test_reused_backend_keeps_its_workers_between_runs():
    """ProcessBackend(reuse=True) runs later runs on the same workers; close() stops them."""
    p = QuantumPartitioner()
    for k in range(4):
        p.add_unit(lambda ctx, k=k: (os.getpid(), ctx["run"] * k), name=f"u{k}")
    with ProcessBackend(2, reuse=True) as backend:
        first = p.execute({"run": 1}, backend=backend)
        pool = {worker.process.pid for worker in backend.lane._workers}
        second = p.execute({"run": 2}, backend=backend)
        assert {worker.process.pid for worker in backend.lane._workers} == pool
    assert {v[1] for v in first.values()} == {0, 1, 2, 3}
    assert {v[1] for v in second.values()} == {0, 2, 4, 6}
    assert len(pool) == 2
    assert {v[0] for v in first.values()} | {v[0] for v in second.values()} <= pool
    for pid in pool:
        assert _wait_gone(pid)


def test_reused_backend_picks_up_new_functions():
    """A unit replaced between runs on a reused pool runs its new function."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "old", name="a")
    with ProcessBackend(1, reuse=True) as backend:
        assert p.execute({}, backend=backend) == {"a": "old"}
        p.add_unit(lambda ctx: "new", name="a", replace=True)
        assert p.execute({}, backend=backend) == {"a": "new"}


# -- workers that cannot start, die at the wrong moment, or lose their parent ------------------

#: A site hook that refuses to let an interpreter start (as a licence or policy check might).
REFUSING_SITECUSTOMIZE = (
    "import sys\nsys.stderr.write('site check: licence server unreachable\\n')\nsys.exit(3)\n"
)


def test_workers_that_cannot_start_break_the_backend_saying_why(tmp_path, monkeypatch):
    """Defect 4: workers exiting before they are ready end the run with BrokenBackendError.

    The error gives the exit status and the end of the worker's stderr; completed results are
    kept. (The environment breaks mid-run: unit "b" installs a refusing sitecustomize.py on
    the workers' path, then kills its worker; every replacement then exits at start-up.)
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # workers get the caller's sys.path

    def break_the_environment(ctx):
        (Path(ctx["site"]) / "sitecustomize.py").write_text(REFUSING_SITECUSTOMIZE)
        os._exit(9)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(break_the_environment, ["a"], name="b", priority=1)
    p.add_unit(lambda ctx: 3, ["a"], name="c")
    with pytest.raises(BrokenBackendError) as caught:
        p.execute({"site": str(site)}, execution_mode=PROCESS)
    message = str(caught.value)
    assert "cannot start" in message
    assert "exited with status 1" in message  # site.py turns its SystemExit into a fatal error
    assert "licence server unreachable" in message
    assert p.get_partial_results() == {"a": 1}
    assert isinstance(p.units["b"].error, WorkerDiedError)
    assert p.units["c"].state is UnitState.CANCELED


def test_an_idle_worker_dying_before_submit_loses_no_attempt():
    """Defect 5: an idle worker that dies between has_room() and submit() costs nothing.

    The lane is driven by hand, as the driver does, so the death falls exactly in between:
    the attempt waits for the replacement worker and runs there.
    """
    graph = Graph([QuantumUnit("a", lambda ctx: 42)])
    run = Run(graph, {}, mode="process", max_workers=1)
    outcomes = queue.SimpleQueue()
    lane = ProcessLane(1)
    lane.open(run, outcomes.put)
    try:
        while not lane.has_room():  # the worker posts a wake-up once it is ready
            assert outcomes.get(timeout=30) is None
        [worker] = lane._workers
        os.kill(worker.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker in lane._workers:  # the reader thread buries it, starts another
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lane.submit(0, 1)
        item = None
        while item is None:  # wake-ups until the outcome; the driver asks for room on each
            lane.has_room()
            item = outcomes.get(timeout=30)
        assert item == (0, 1, True, 42, None)
    finally:
        lane.close(cancel=True)


ORPHANED_WORKER_PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from quantum_partitioner import ExecutionMode, QuantumPartitioner

    def outlive_the_parent(ctx):
        parent = os.getppid()
        Path(ctx["flag"]).write_text(str(os.getpid()))
        while os.getppid() == parent:
            time.sleep(0.005)
        return "an answer nobody reads"

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(outlive_the_parent, name="orphan")
    p.execute({"flag": sys.argv[1]}, execution_mode=ExecutionMode.PROCESS)
    """
)


def test_a_worker_whose_parent_is_killed_exits_quietly(tmp_path):
    """After kill -9 of the parent, its worker exits with no traceback on the terminal."""
    flag = tmp_path / "running"
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANED_WORKER_PROGRAM, str(flag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not flag.exists() or not flag.read_text():
            assert parent.poll() is None, parent.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker = int(flag.read_text())
        parent.kill()
        # The worker writes on the parent's stderr: it is closed once the worker has exited.
        _, stderr = parent.communicate(timeout=30)
    finally:
        parent.kill()
    assert _wait_gone(worker)
    assert b"Traceback" not in stderr, stderr.decode()
