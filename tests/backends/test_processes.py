"""PROCESS mode: real worker processes, crashes, kills, timeouts and pickling failures.

Unit functions here are closures or lambdas built inside the tests: cloudpickle sends them by
value, which is what users' lambdas rely on.
"""

from __future__ import annotations

import contextlib
import functools
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
    Instrument,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
    UnitTimeoutError,
    WorkerDiedError,
)
from quantum_partitioner._graph import Graph, QuantumUnit
from quantum_partitioner._process_worker import FrameReader, send_frame, send_frames
from quantum_partitioner._run import Run
from quantum_partitioner.backends import ProcessBackend, _processes
from quantum_partitioner.backends import _processes as processes
from quantum_partitioner.backends._processes import ProcessLane
from quantum_partitioner.observability._trace import chrome_trace, layout

sys.path.insert(0, str(Path(__file__).parent))
from _contract_units import InterruptOnFirstRunStart  # needs the sys.path entry above

PROCESS = ExecutionMode.PROCESS
FAST_RETRY = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); reap it if it is our child
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # another's child: a zombie waits for its reaper
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return stat.rpartition(")")[2].split()[0] != "Z"
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


def test_an_unpicklable_item_fails_that_item_naming_its_item():
    """A map item whose ctx.item cannot be sent (here from a fallback value in the caller)
    fails that item, saying it is its item; the message used to name the dependency '?'."""
    p = QuantumPartitioner(max_workers=1)

    def plan(ctx):
        raise ConnectionError("no plan")

    p.add_unit(plan, name="plan", metadata={"fallback_value": [1, threading.Lock()]})
    p.add_map(lambda ctx: ctx.item, over="plan", name="step")

    results = p.execute({}, execution_mode=PROCESS)

    assert results["step[0]"] == 1
    error = p.get_failed_units()["step[1]"]
    assert isinstance(error, TypeError)
    assert "unit 'step[1]': its item (ctx.item, lock) cannot be sent to a worker process" in str(
        error
    )


def test_a_result_only_cloudpickle_can_send_comes_back():
    """A result plain pickle refuses (a lambda, a class made at run time) travels by value."""

    def make(ctx):
        class Made:
            size = 3

        return (lambda n: n * 2), Made

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(make, name="make")
    double, made = p.execute({}, execution_mode=PROCESS)["make"]
    assert double(21) == 42
    assert made.size == 3


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


def test_workers_that_never_get_ready_are_killed_and_break_the_backend(tmp_path, monkeypatch):
    """Defect 4's sibling: a worker stuck while it starts (a site hook waiting for ever) is
    killed at its start-up deadline and counts as a failed start; the run does not hang."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, time\nsys.stderr.write('site check: waiting for the network\\n')\n"
        "sys.stderr.flush()\ntime.sleep(600)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(processes, "_START_TIMEOUT", 0.5)
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: 1, name="a")
    with pytest.raises(BrokenBackendError) as caught:
        p.execute({}, execution_mode=PROCESS)
    message = str(caught.value)
    assert "was not ready within 0.5 s and was killed" in message
    assert "waiting for the network" in message
    assert p.units["a"].state is UnitState.CANCELED


def test_what_a_worker_writes_while_it_starts_still_reaches_stderr(tmp_path, monkeypatch, capfd):
    """Start-up output (a site hook's warning) is collected until ready, then passed on."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.stderr.write('site says hello\\n')\n")
    monkeypatch.syspath_prepend(str(site))
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: 1, name="a")
    assert p.execute({}, execution_mode=PROCESS) == {"a": 1}
    assert "site says hello" in capfd.readouterr().err


def _boot_modules_as_imported(ctx):
    modules = [sys.modules[name] for name in processes._BOOT_MODULES]
    package = modules[0]
    return [
        [m.__name__, m.__file__, m.__spec__.origin, m.__cached__, m.__package__] for m in modules
    ] + [package.__path__, type(package.__loader__).__name__, package._context is modules[1]]


def test_workers_run_the_package_from_the_code_the_parent_sends(monkeypatch, capfd):
    """A worker starts from the code of the package's modules that the driver sends: it
    neither reads nor compiles them (a third of its start-up where no bytecode is kept),
    and they look as imported (their file, spec, package, the package's attributes)."""
    monkeypatch.setenv("PYTHONVERBOSE", "1")  # the worker says what it imports, and how
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(_boot_modules_as_imported, name="modules")
    in_worker = p.execute({}, execution_mode=PROCESS)["modules"]
    said = capfd.readouterr().err  # its start-up stderr is passed on once it is ready
    assert "import 'quantum_partitioner._process_worker'" not in said
    assert "import '_pickle'" in said  # what it does import is said
    boot_files = [sys.modules[name].__file__ for name in processes._BOOT_MODULES]
    loaded = [line for line in said.splitlines() if line.startswith("# code object from")]
    assert loaded  # its unit's module (this one) and what that imports
    assert not [line for line in loaded if any(line.endswith(f) for f in boot_files)]
    assert in_worker == _boot_modules_as_imported(None)


def test_a_worker_imports_the_package_when_its_code_cannot_be_sent(monkeypatch):
    """Where the pipe would not hold the package's code (or its size is unknown), the worker
    imports it, as any interpreter does."""
    monkeypatch.setattr(processes, "_pipe_capacity", lambda fd: 0)
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(_boot_modules_as_imported, name="modules")
    assert p.execute({}, execution_mode=PROCESS)["modules"] == _boot_modules_as_imported(None)


def test_a_workers_path_is_the_callers_without_the_working_directory(tmp_path, monkeypatch):
    """A module in the working directory that the caller cannot import (its path has no
    "" entry) is not importable in a worker either (``python -c`` would put it first)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry])
    (tmp_path / "only_in_the_working_directory.py").write_text("X = 1\n")

    def importable(ctx):
        import importlib.util  # noqa: PLC0415 - in the worker

        return importlib.util.find_spec("only_in_the_working_directory") is not None

    assert not importable(None)
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(importable, name="a")
    assert p.execute({}, execution_mode=PROCESS) == {"a": False}


@pytest.mark.parametrize("lanes", ["process", "mixed"])
def test_a_context_that_cannot_be_sent_fails_before_any_unit_and_stops_the_workers(
    monkeypatch, lanes
):
    """The workers start while the context is pickled (cloudpickle's first import overlaps
    their start-up): one that cannot be sent fails the run before any unit runs, naming
    the key, and the workers started for it are stopped; alone or beside a thread lane."""
    started = []
    real_worker = processes._Worker

    def recording_worker(process, *args):
        started.append(process.pid)
        return real_worker(process, *args)

    monkeypatch.setattr(processes, "_Worker", recording_worker)
    heard = _Heard()
    p = QuantumPartitioner(max_workers=2, instruments=[heard])
    cpu = {"resource_type": "cpu"}
    p.add_unit(lambda ctx: 1, name="a", metadata=cpu)
    p.add_unit(lambda ctx: 2, name="b", metadata=cpu)
    if lanes == "mixed":
        p.add_unit(lambda ctx: 3, name="c", metadata={"resource_type": "io"})
    run = {
        "process": functools.partial(p.execute, execution_mode=PROCESS),
        "mixed": functools.partial(p.execute_with_strategy, strategy="resource_balanced"),
    }[lanes]
    with pytest.raises(TypeError, match="context key 'lock' \\(lock\\) cannot be sent"):
        run({"lock": threading.Lock()})
    assert p.units["a"].state is not UnitState.COMPLETED
    assert heard.heard == []  # refused like bad input: no run began (none was cancelled)
    assert p.last_execution_metrics is None
    assert len(started) == 2
    assert all(_wait_gone(pid) for pid in started)


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


def _stop(pid: int) -> None:
    """Stop a process (SIGSTOP) and wait until it is stopped: it reads nothing more."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.001)


def _slow_replacements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started once QP_TEST_START_DELAY is set sleep that long as they start."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\ntime.sleep(float(os.environ.get('QP_TEST_START_DELAY', '0')))\n"
    )
    monkeypatch.syspath_prepend(str(site))


def _runs_on_the_slow_replacement(killed: list[int]) -> None:
    """Unit "a" (timeout 0.5 s) completes, in its first attempt, on a worker that took 0.8 s
    to start after the first was killed (its pid in ``killed``)."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: 42, name="a", timeout=0.5)
    started = time.perf_counter()
    assert p.execute({}, execution_mode=PROCESS) == {"a": 42}
    assert killed
    assert time.perf_counter() - started > 0.8  # it did wait for the slow replacement
    assert p.units["a"].attempt == 1


def test_an_attempt_held_for_a_replacement_worker_times_out_from_its_real_start(
    tmp_path, monkeypatch
):
    """Its timeout counts from when the replacement gets it, not from when it was handed over.

    The idle worker dies between has_room() and submit() (killed there: has_room() waits
    until it is buried), and its replacement takes longer to start than the unit's timeout
    (a slow site hook): the attempt waits in the driver, then runs well within it.
    """
    _slow_replacements(tmp_path, monkeypatch)
    real_has_room = ProcessLane.has_room
    killed = []

    def has_room_then_kill(lane):
        room = real_has_room(lane)
        if room and not killed:
            [worker] = lane._workers
            monkeypatch.setenv("QP_TEST_START_DELAY", "0.8")  # for its replacement
            os.kill(worker.process.pid, signal.SIGKILL)
            killed.append(worker.process.pid)
            deadline = time.monotonic() + 30
            while worker in lane._workers:  # the reader thread buries it
                assert time.monotonic() < deadline
                time.sleep(0.01)
        return room

    monkeypatch.setattr(ProcessLane, "has_room", has_room_then_kill)
    _runs_on_the_slow_replacement(killed)


def test_an_attempt_sent_to_a_worker_that_just_died_waits_for_its_replacement():
    """Defect 5, second case: the idle worker is dead but not yet buried when the attempt is
    sent; the attempt never started, so it is not failed: it runs on the replacement."""
    graph = Graph([QuantumUnit("a", lambda ctx: 42)])
    run = Run(graph, {}, mode="process", max_workers=1)
    outcomes = queue.SimpleQueue()
    lane = ProcessLane(1)
    lane.open(run, outcomes.put)
    gate = threading.Event()
    bury = lane._bury

    def bury_when_allowed(worker):
        gate.wait(30)
        bury(worker)

    lane._bury = bury_when_allowed  # the reader thread notices the death only when told
    try:
        while not lane.has_room():
            assert outcomes.get(timeout=30) is None
        [worker] = lane._workers
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)
        assert lane.has_room()  # still looks idle: nobody has buried it yet
        lane.submit(0, 1)  # its pipe is broken
        gate.set()
        item = None
        while item is None:
            lane.has_room()
            item = outcomes.get(timeout=30)
        assert item == (0, 1, True, 42, None)
    finally:
        gate.set()
        lane.close(cancel=True)


def test_an_attempt_whose_worker_is_buried_while_it_is_sent_waits_for_its_replacement(
    monkeypatch,
):
    """The idle worker dies as its attempt is written, and the reader buries it before the
    write fails: the attempt provably never started (the worker never had it), so it is not
    failed and keeps its attempt number: it runs on the replacement. (The reader failed it
    with WorkerDiedError, and the write went to a descriptor it had closed.)"""
    graph = Graph([QuantumUnit("a", lambda ctx: 42)])
    run = Run(graph, {}, mode="process", max_workers=1)
    outcomes = queue.SimpleQueue()
    lane = ProcessLane(1)
    real_send = processes.send_frames
    killed = []

    def die_then_send(fd, payloads):
        if not killed:
            [worker] = lane._workers
            killed.append(worker.process.pid)
            os.kill(worker.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while worker in lane._workers:  # the reader thread buries it meanwhile
                assert time.monotonic() < deadline
                time.sleep(0.01)
        return real_send(fd, payloads)

    monkeypatch.setattr(processes, "send_frames", die_then_send)
    lane.open(run, outcomes.put)
    try:
        while not lane.has_room():
            assert outcomes.get(timeout=30) is None
        lane.submit(0, 1)
        item = None
        while item is None:
            lane.has_room()
            item = outcomes.get(timeout=30)
        assert item == (0, 1, True, 42, None)
        assert killed
    finally:
        lane.close(cancel=True)


def test_an_attempt_its_worker_died_before_reading_waits_for_its_replacement():
    """The idle worker's attempt is written into its pipe, but it dies before it reads it
    (stopped, then killed): the bytes still in the pipe prove it never started, so it is
    not failed and keeps its attempt number: it runs on the replacement. (It failed with
    WorkerDiedError.)"""
    _, lane, outcomes = _lane_sending_ahead(Graph([QuantumUnit("a", lambda ctx: 42)]))
    try:
        [worker] = lane._workers
        _stop(worker.process.pid)  # it reads nothing more
        lane.submit(0, 1)  # into the pipe's buffer: the write succeeds
        os.kill(worker.process.pid, signal.SIGKILL)
        assert _next_outcome(lane, outcomes) == (0, 1, True, 42, None)
        assert lane._workers[0] is not worker
    finally:
        lane.close(cancel=True)


def test_an_attempt_found_unread_in_a_dead_worker_times_out_from_its_real_start(
    tmp_path, monkeypatch
):
    """Its timeout counts from when the replacement gets it: the worker died before it read
    the attempt, and the replacement takes longer to start than the unit's timeout (a slow
    site hook): the attempt waits in the driver, then runs well within it."""
    _slow_replacements(tmp_path, monkeypatch)
    real_submit = ProcessLane.submit
    killed = []

    def submit_to_a_worker_that_dies_unread(lane, i, attempt):
        [worker] = lane._workers
        if not killed:
            monkeypatch.setenv("QP_TEST_START_DELAY", "0.8")  # for its replacement
            _stop(worker.process.pid)
        real_submit(lane, i, attempt)
        if not killed:
            os.kill(worker.process.pid, signal.SIGKILL)
            killed.append(worker.process.pid)

    monkeypatch.setattr(ProcessLane, "submit", submit_to_a_worker_that_dies_unread)
    _runs_on_the_slow_replacement(killed)


# -- attempts sent ahead (queued in a busy worker) ---------------------------------------------


def _wait_for_file(path: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):  # noqa: PTH110 - runs in the worker, keep it plain
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)


def _lane_sending_ahead(
    graph: Graph, workers: int = 1, *, short: bool = True, reuse: bool = False
) -> tuple[Run, ProcessLane, queue.SimpleQueue]:
    """A lane on ``graph``, driven by hand, its workers ready; its attempts count as short
    (else as long: they are sent ahead only while nothing can become ready before them)."""
    run = Run(graph, {}, mode="process", max_workers=workers)
    outcomes: queue.SimpleQueue = queue.SimpleQueue()
    lane = ProcessLane(workers, reuse=reuse)
    lane.open(run, outcomes.put)
    while sum(w.ready for w in lane._workers) < workers:  # each posts a wake-up when ready
        assert outcomes.get(timeout=30) is None
    if short:
        lane._typical_seconds = 0.0  # as after a run of short attempts
    return run, lane, outcomes


def _start_and_submit(run: Run, lane: ProcessLane, *indices: int) -> None:
    """Start those units (in the scheduler's order) and hand each to the lane, as the driver."""
    for i in indices:
        assert run.scheduler.start_next(run.clock()) == i
        lane.submit(i, 1)


def _next_outcome(lane: ProcessLane, outcomes: queue.SimpleQueue) -> tuple:
    item = None
    while item is None:  # wake-ups until an outcome; the driver asks for room on each
        lane.has_room()
        item = outcomes.get(timeout=30)
    return item


@pytest.mark.parametrize("short", [True, False], ids=["short", "long"])
def test_an_attempt_recalled_while_it_waits_in_a_worker_never_starts(tmp_path, short):
    """A unit sent ahead, then abandoned (cancelled) before its turn, never runs: the driver
    takes its claim number back at once, without waiting for the busy worker."""
    gate, ran = str(tmp_path / "gate"), str(tmp_path / "ran")
    graph = Graph(
        [
            QuantumUnit("busy", lambda ctx: _wait_for_file(gate)),
            QuantumUnit("queued", lambda ctx: Path(ran).write_text("started")),
            QuantumUnit("after", lambda ctx: "ran"),
        ]
    )
    run, lane, outcomes = _lane_sending_ahead(graph, short=short)
    try:
        sched = run.scheduler
        assert sched.start_next(run.clock()) == 0
        lane.submit(0, 1)
        assert lane.has_room()  # the worker is busy, but "queued" may wait behind "busy"
        assert sched.start_next(run.clock()) == 1
        lane.submit(1, 1)
        [worker] = lane._workers
        assert list(worker.jobs) == [(0, 1), (1, 1)]
        lane.abandon(1, 1)  # taken back: the worker is not killed
        assert list(worker.jobs) == [(0, 1)]
        Path(gate).touch()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
        lane.submit(2, 1)  # the worker has passed over "queued" before it runs this
        assert _next_outcome(lane, outcomes) == (2, 1, True, "ran", None)
        assert worker in lane._workers
        assert not Path(ran).exists()
    finally:
        lane.close(cancel=True)


def test_an_attempt_sent_ahead_and_abandoned_once_it_started_is_stopped_for_real(tmp_path):
    """The worker took its claim number: it has started, so abandoning it kills its worker
    (the CPU is free at once) instead of letting it run on."""
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")

    def long_one(ctx):
        Path(started).touch()
        _wait_for_file(gate)

    graph = Graph([QuantumUnit("quick", lambda ctx: 1), QuantumUnit("long", long_one)])
    run, lane, _outcomes = _lane_sending_ahead(graph, short=False)
    try:
        _start_and_submit(run, lane, 0, 1)
        [worker] = lane._workers
        assert list(worker.jobs) == [(0, 1), (1, 1)]  # "long" waits behind "quick"
        _wait_for_file(started)  # "quick" ended, and the worker went straight on to "long"
        lane.abandon(1, 1)
        assert worker.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        Path(gate).touch()
        lane.close(cancel=True)


def test_abandoning_an_ended_attempt_whose_worker_went_on_stops_nothing(tmp_path):
    """An attempt abandoned just after it ended (its outcome on its way), when its worker
    has already started the one sent ahead: that one is not stopped (it runs once, to its
    end, on the same worker) and the abandoned one's late outcome is ignored."""
    starts, gate = tmp_path / "starts", str(tmp_path / "gate")

    def long_one(ctx):
        with starts.open("a") as out:
            out.write("start\n")
        _wait_for_file(gate)
        return "done"

    graph = Graph([QuantumUnit("quick", lambda ctx: 1), QuantumUnit("long", long_one)])
    run, lane, outcomes = _lane_sending_ahead(graph, short=False)
    delivered = threading.Event()
    receive = lane._receive

    def receive_late(worker, message):  # the outcome of "quick" is still on its way
        if message[:2] == ("ok", 0):
            delivered.wait(30)
        receive(worker, message)

    lane._receive = receive_late
    try:
        _start_and_submit(run, lane, 0, 1)
        [worker] = lane._workers
        _wait_for_file(str(starts))  # "quick" ended; the worker went on to "long"
        lane.abandon(0, 1)  # as a timeout would, with the outcome of "quick" on its way
        delivered.set()
        Path(gate).touch()
        assert _next_outcome(lane, outcomes) == (1, 1, True, "done", None)
        assert worker in lane._workers
        assert worker.process.poll() is None
        assert starts.read_text() == "start\n"
    finally:
        delivered.set()
        Path(gate).touch()
        lane.close(cancel=True)


def test_an_idle_worker_takes_over_an_attempt_waiting_in_a_busy_one_which_runs_once(tmp_path):
    """Work stealing: a long attempt waits in a busy worker; the other worker goes idle with
    nothing ready, takes it over and runs it; the busy worker drops it: it runs once."""
    gates = [str(tmp_path / "gate0"), str(tmp_path / "gate1")]
    log = tmp_path / "log"

    def queued(ctx):
        with log.open("a") as out:
            out.write("ran\n")
        return os.getpid()

    graph = Graph(
        [
            QuantumUnit("slow0", lambda ctx: _wait_for_file(gates[0])),
            QuantumUnit("slow1", lambda ctx: _wait_for_file(gates[1])),
            QuantumUnit("queued", queued),
            QuantumUnit("later", lambda ctx: os.getpid()),
        ]
    )
    run, lane, outcomes = _lane_sending_ahead(graph, 2, short=False)
    try:
        sched = run.scheduler
        for i in (0, 1, 2):
            assert lane.has_room()  # "queued" too: every unit left is ready or running
            assert sched.start_next(run.clock()) == i
            lane.submit(i, 1)
        [victim] = [w for w in lane._workers if len(w.jobs) == 2]
        [thief] = [w for w in lane._workers if w is not victim]
        (victims_own, _), queued_job = victim.jobs
        (thiefs_own, _) = thief.jobs[0]
        assert queued_job == (2, 1)
        Path(gates[thiefs_own]).touch()  # the thief's attempt ends: it goes idle
        assert _next_outcome(lane, outcomes)[:3] == (thiefs_own, 1, True)
        lane.settled(thiefs_own, 1)
        item = _next_outcome(lane, outcomes)  # has_room() gave "queued" to the idle thief
        assert item == (2, 1, True, thief.process.pid, None)
        assert list(victim.jobs) == [(victims_own, 1)]
        Path(gates[victims_own]).touch()
        assert _next_outcome(lane, outcomes)[:3] == (victims_own, 1, True)
        lane.submit(3, 1)  # after "queued" in the victim's pipe: it dropped that one first
        assert _next_outcome(lane, outcomes)[2] is True
        assert log.read_text() == "ran\n"
        assert victim in lane._workers
        assert thief in lane._workers
    finally:
        lane.close(cancel=True)


def test_long_attempts_wait_in_no_worker_while_a_unit_that_comes_first_may_get_ready(tmp_path):
    """A long attempt sent ahead would start before a unit that became ready behind it: so
    none is while some unit left is not ready; the order stays the scheduler's."""
    log = tmp_path / "order"

    def step(name, seconds=0.0):
        def unit(ctx):
            time.sleep(seconds)
            with open(ctx["log"], "a") as out:  # noqa: PTH123 - runs in the worker
                out.write(name + "\n")

        return unit

    def order(mode):
        p = QuantumPartitioner(max_workers=1)
        p.add_unit(step("first", 0.2), name="first")
        p.add_unit(step("urgent"), ["first"], name="urgent", priority=5)
        p.add_unit(step("low1"), name="low1")
        p.add_unit(step("low2"), name="low2")
        log.unlink(missing_ok=True)
        p.execute({"log": str(log)}, execution_mode=mode)
        return log.read_text().split()

    assert order(PROCESS) == order(ExecutionMode.SEQUENTIAL) == ["first", "urgent", "low1", "low2"]


def test_attempts_waiting_in_a_worker_that_dies_run_on_its_replacement(tmp_path):
    """Only the running attempt fails with the worker; those sent ahead never started."""
    gate = str(tmp_path / "gate")

    def die(ctx):
        _wait_for_file(gate)
        os._exit(3)

    graph = Graph([QuantumUnit("dies", die), QuantumUnit("after", lambda ctx: "ran")])
    _run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        lane.submit(0, 1)
        lane.submit(1, 1)
        assert len(lane._workers[0].jobs) == 2
        Path(gate).touch()
        died = _next_outcome(lane, outcomes)
        assert died[:3] == (0, 1, False)
        assert isinstance(died[3], WorkerDiedError)
        assert _next_outcome(lane, outcomes) == (1, 1, True, "ran", None)
    finally:
        lane.close(cancel=True)


@pytest.fixture
def descriptors_past_1024():
    """Take every descriptor number up to 1040, so that new pipes get numbers above 1024."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1100
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = []
    try:
        while not held or held[-1] < 1040:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_holding_attempts_reads_its_pipe_whatever_its_number(
    tmp_path, descriptors_past_1024
):
    """A caller with over 1024 open files: a worker with attempts sent ahead still runs them.

    (``select()`` refuses descriptor numbers past 1024; the worker's pipe has the caller's.)
    """
    gate = str(tmp_path / "gate")
    graph = Graph(
        [QuantumUnit("busy", lambda ctx: _wait_for_file(gate)), QuantumUnit("next", lambda ctx: 2)]
    )
    _run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        assert lane._workers[0].inbox > 1024
        lane.submit(0, 1)
        lane.submit(1, 1)
        assert len(lane._workers[0].jobs) == 2  # "next" waits in the worker
        Path(gate).touch()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
        assert _next_outcome(lane, outcomes) == (1, 1, True, 2, None)
    finally:
        lane.close(cancel=True)


@pytest.mark.parametrize("short", [True, False], ids=["short", "long"])
def test_an_attempt_too_large_to_wait_in_a_pipe_waits_for_an_idle_worker(tmp_path, short):
    """A busy worker reads its pipe only between attempts: writing it more than the pipe
    holds would block the driver (its timeouts, outcomes, cancel) until the attempt ahead
    ends. Such an attempt waits in the driver for an idle worker instead."""
    gate = str(tmp_path / "gate")
    payload = bytes(1 << 20)  # sent with the function: cloudpickle sends closures by value
    graph = Graph(
        [
            QuantumUnit("busy", lambda ctx: _wait_for_file(gate)),
            QuantumUnit("large", lambda ctx: len(payload)),
        ]
    )
    _run, lane, outcomes = _lane_sending_ahead(graph, short=short)
    sent = threading.Event()
    try:
        lane.submit(0, 1)
        assert lane.has_room()
        threading.Thread(target=lambda: (lane.submit(1, 1), sent.set()), daemon=True).start()
        assert sent.wait(10), "submit() waited for the worker to finish the attempt ahead"
        assert list(lane._workers[0].jobs) == [(0, 1)]
        assert not lane.has_room()  # nothing else goes ahead of it
        Path(gate).touch()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
        assert _next_outcome(lane, outcomes) == (1, 1, True, 1 << 20, None)
    finally:
        Path(gate).touch()
        lane.close(cancel=True)


def test_a_unit_with_a_timeout_or_a_limit_is_never_sent_ahead(tmp_path):
    """Their timeout and slots count from the real start: they wait for an idle worker."""
    gate = str(tmp_path / "gate")
    graph = Graph(
        [
            QuantumUnit("busy", lambda ctx: _wait_for_file(gate)),
            QuantumUnit("timed", lambda ctx: 1, timeout=30),
            QuantumUnit("limited", lambda ctx: 2, limits={"api": 1}),
            QuantumUnit("plain", lambda ctx: 3),
        ]
    )
    run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        sched = run.scheduler
        assert sched.start_next(run.clock()) == 0
        lane.submit(0, 1)
        assert sched.peek_next() == 1
        assert not lane.has_room()  # "timed" is next: it waits for the worker
        assert not lane._ahead_room(2)
        assert lane._ahead_room(3)
        Path(gate).touch()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
    finally:
        lane.close(cancel=True)


def test_nothing_is_sent_ahead_while_a_hook_listens_to_starts():
    """A start event must not come before the start: with a start hook, one attempt each."""

    class Starts(Instrument):
        def unit_started(self, event):
            pass

    graph = Graph([QuantumUnit("a", lambda ctx: 1), QuantumUnit("b", lambda ctx: 2)])
    run = Run(graph, {}, mode="process", max_workers=1, instruments=[Starts()])
    lane = ProcessLane(1)
    lane.open(run, queue.SimpleQueue().put)
    try:
        lane._typical_seconds = 0.0
        assert not lane._ahead_room(1)
    finally:
        lane.close(cancel=True)


def test_an_attempt_sent_ahead_records_its_real_start(tmp_path):
    """The recorded start of an attempt that waited in a worker is when it really began."""
    graph = Graph(
        [QuantumUnit("slow", lambda ctx: time.sleep(0.3)), QuantumUnit("next", lambda ctx: 1)]
    )
    run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        sched = run.scheduler
        for i in (0, 1):
            sched.start_next(run.clock())
            lane.submit(i, 1)
        sent = sched.started[1]
        for _ in range(2):
            i, attempt, ok, _, _ = _next_outcome(lane, outcomes)
            assert ok
            lane.settled(i, attempt)
        assert sched.started[1] >= sched.started[0] + 0.3 > sent + 0.2
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


def test_a_cpu_unit_of_a_mixed_run_raising_keyboardinterrupt_fails_only_itself():
    """Defect 8 in the process lane of resource_balanced: the unit is FAILED, the io and cpu
    units beside it complete (the KeyboardInterrupt happened in a worker, not here)."""

    def interrupted(ctx):
        raise KeyboardInterrupt("in a worker")

    p = QuantumPartitioner(max_workers=2)
    p.add_unit(interrupted, name="cpu_boom", metadata={"resource_type": "cpu"})
    p.add_unit(lambda ctx: "cpu", name="cpu_fine", metadata={"resource_type": "cpu"})
    p.add_unit(lambda ctx: "io", name="io_fine", metadata={"resource_type": "io"})
    results = p.execute_with_strategy({}, "resource_balanced")
    assert results == {"cpu_fine": "cpu", "io_fine": "io"}
    error = p.units["cpu_boom"].error
    assert type(error) is KeyboardInterrupt
    assert str(error) == "in a worker"


def test_a_worker_imports_little_before_it_is_ready():
    """The worker program leaves out the modules a worker's start-up need not pay for."""
    code = "import sys; from quantum_partitioner._process_worker import main; print(*sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    heavy = {"typing", "inspect", "multiprocessing", "cloudpickle", "threading", "re", "enum"}
    heavy |= {"asyncio", "traceback", "pickle", "runpy", "importlib.util"}
    assert heavy.isdisjoint(done.stdout.split())


def test_frames_split_or_bunched_in_the_pipe_come_out_whole():
    """One read may hold a frame's part or several frames, however they were written (one
    by one or several in one go): each comes out once, in order."""
    read_fd, write_fd = os.pipe()
    try:
        reader = FrameReader(read_fd)
        big = bytes(range(256)) * 1000  # longer than one read, and than the pipe holds
        payloads = [b"first", b"", big, b"last", b"together", big, b""]

        def write() -> None:
            for payload in payloads[:4]:
                send_frame(write_fd, payload)
            send_frames(write_fd, payloads[4:])  # one writev, which the pipe takes in parts

        writer = threading.Thread(target=write)
        writer.start()
        frames: list[bytes] = []
        while len(frames) < len(payloads):
            frames += reader.read()
        writer.join()
        assert frames == payloads
        os.close(write_fd)
        write_fd = -1
        with pytest.raises(EOFError):
            reader.read()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_missing_cloudpickle_names_the_package_to_install(monkeypatch):
    """Without cloudpickle, PROCESS says to install it (a dependency, not an extra)."""
    monkeypatch.setitem(sys.modules, "cloudpickle", None)
    with pytest.raises(ImportError, match=r"pip install cloudpickle$"):
        _processes._load_cloudpickle()


# -- traces: one track per slot, start-up as its own slice ----------------------------------


def test_trace_has_one_track_per_slot_and_start_up_as_its_own_slice(tmp_path):
    """2 workers, one of which dies: 2 tracks, the replacement on the dead one's slot.

    Workers import the units' module (0.6 s) while they start, so no unit pays for it.
    """
    here = str(Path(__file__).parent)
    if here not in sys.path:  # workers import the module by name, from the caller's path
        sys.path.insert(0, here)
    import _slow_import_units as slow  # noqa: PLC0415 - needs the sys.path entry

    qp = QuantumPartitioner(max_workers=2)
    for k in range(8):
        qp.add_unit(slow.nap, name=f"nap_{k}", priority=10 if k < 2 else 0)
    qp.add_unit(slow.die, ["nap_0"], name="die", priority=5)
    qp.execute(execution_mode=PROCESS, trace=True)
    assert qp.units["die"].state is UnitState.FAILED
    run = qp._last_run
    lay = layout(run, qp._last_recorder)
    assert set(lay.tracks) <= {"process slot 1", "process slot 2"}
    assert all(unit.execution_time < slow.IMPORT_SECONDS for unit in qp.units.values())
    # A start-up (cut short if the run ended first) never overlaps an attempt on its track.
    assert len(lay.startups) >= 2  # the first worker and the replacement at least
    assert max(ready - start for _, start, ready in lay.startups) >= slow.IMPORT_SECONDS
    for track, start, ready in lay.startups:
        for a, on in zip(lay.attempts, lay.track_of, strict=True):
            if on == track:
                assert a.end <= start + 1e-3 or a.start >= ready - 1e-3, (a, start, ready)
    died = next(a for a in lay.attempts if a.unit_id == "die")
    died_on = lay.track_of[lay.attempts.index(died)]
    assert any(t == died_on and start >= died.start for t, start, _ in lay.startups)
    trace = chrome_trace(run, qp._last_recorder)
    slices = [e for e in trace["traceEvents"] if e.get("cat") == "startup"]
    assert len(slices) == len(lay.startups)
    assert {e["name"] for e in slices} == {"worker start-up"}


def test_report_draws_worker_start_up(tmp_path):
    """The HTML report's timeline has a start-up bar for a PROCESS run's worker."""
    qp = QuantumPartitioner(max_workers=1)
    qp.add_unit(lambda ctx: 1, name="one")
    qp.execute(execution_mode=PROCESS)
    html = qp.write_report(tmp_path / "report.html").read_text()
    assert 'class="bar startup"' in html
    assert "worker start-up" in html


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
def test_an_exiting_worker_is_reaped_with_its_status_or_times_out(monkeypatch, pidfds):
    """_wait_exit returns a worker's exit status once it exits, again after it is reaped,
    and raises TimeoutExpired while it still runs; with or without pidfds."""
    if not pidfds:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here")
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read(); raise SystemExit(7)"],
        stdin=subprocess.PIPE,
    )
    worker = processes._Worker(process, -1, -1, -1, (-1, -1))
    try:
        assert (worker.exited >= 0) is pidfds
        with pytest.raises(subprocess.TimeoutExpired):
            processes._wait_exit(worker, 0.05)
        assert process.stdin is not None
        process.stdin.close()
        assert processes._wait_exit(worker, 30) == 7
        assert processes._wait_exit(worker, 0) == 7  # reaped already
    finally:
        process.kill()
        process.wait()
        processes._close_pidfd(worker)


def test_the_end_of_a_run_waits_for_its_workers_exit_without_polling(monkeypatch):
    """With pidfds, stopping the workers wakes the moment they exit: Popen.wait(timeout)
    would poll, sleeping up to 50 ms between looks, and every fresh-pool run would end late."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here")
    sleeps: list[float] = []

    class PollingClock:
        """subprocess's ``time``, recording the sleeps of a polling wait."""

        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(subprocess, "time", PollingClock())
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, name="b")
    assert p.execute(execution_mode=PROCESS) == {"a": 1, "b": 2}
    assert sleeps == []


class _FinalizedAtTeardown:
    """Writes a file when the interpreter's teardown frees it (a worker's global)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        with open(self.path, "w") as out:  # noqa: PTH123 - runs in a worker's teardown
            out.write("finalized")


def test_a_stopped_worker_runs_its_atexit_handlers_and_exits_without_teardown(tmp_path):
    """Told to stop, a worker exits at once: what units registered with atexit runs, but the
    interpreter's teardown (freeing modules and objects: most of a fresh pool's end) does
    not."""
    handled, finalized = str(tmp_path / "atexit"), str(tmp_path / "finalized")

    def register(ctx):
        import atexit  # noqa: PLC0415 - in the worker

        atexit.register(Path(handled).write_text, "ran")
        sys.modules["__main__"].kept_until_teardown = _FinalizedAtTeardown(finalized)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(register, name="register")
    p.execute(execution_mode=PROCESS)  # returns once its worker has exited
    assert Path(handled).read_text() == "ran"
    assert not Path(finalized).exists()


def test_a_stopped_worker_lets_the_threads_its_units_started_finish_first(tmp_path):
    """As an interpreter's exit does, a stopping worker waits for the threads (not daemons)
    and thread pools its units left working, before its atexit handlers: what they were
    doing (writing a result, an upload) is not cut off."""
    thread_done, pool_done = tmp_path / "thread", tmp_path / "pool"

    def leave_work_behind(ctx):
        import threading  # noqa: PLC0415 - in the worker
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        started = threading.Event()

        def later(path):
            started.set()
            time.sleep(0.2)  # still working when the run ends
            path.write_text("done")

        threading.Thread(target=later, args=(thread_done,)).start()
        sys.modules["__main__"].pool = pool = ThreadPoolExecutor(1)
        pool.submit(later, pool_done)
        started.wait(30)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(leave_work_behind, name="leave_work_behind")
    p.execute(execution_mode=PROCESS)  # returns once its worker has exited
    assert thread_done.read_text() == "done"
    assert pool_done.read_text() == "done"


def test_a_worker_still_dropping_an_attempt_taken_back_is_not_idle(tmp_path):
    """An attempt taken back from a busy worker is dropped there only when the worker gets
    to it: until then the worker is not idle. (Given an attempt as if it were, with one
    sent ahead behind it, the worker took the number of the one behind as it dropped the
    taken one: the first one then counted as ended, and abandoning it did not stop it.)"""
    gates = [str(tmp_path / f"gate{k}") for k in range(3)]
    started, ended = tmp_path / "started", tmp_path / "ended"

    class LoadedLate:  # its worker reads it only once the gate opens (a slow unpickling)
        def __call__(self, ctx):
            return "never runs: taken back"

        def __setstate__(self, state):
            _wait_for_file(gates[1])

    def abandoned(ctx):
        started.touch()
        _wait_for_file(gates[2])
        ended.touch()

    graph = Graph(
        [
            QuantumUnit("busy", lambda ctx: _wait_for_file(gates[0])),
            QuantumUnit("taken_back", LoadedLate()),
            QuantumUnit("abandoned", abandoned),
            QuantumUnit("behind", lambda ctx: "ran"),
        ]
    )
    run, lane, outcomes = _lane_sending_ahead(graph, short=False)
    try:
        _start_and_submit(run, lane, 0, 1)
        lane.abandon(1, 1)  # taken back: the busy worker has not read it yet
        Path(gates[0]).touch()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
        _start_and_submit(run, lane, 2, 3)  # the worker is still reading "taken_back"
        Path(gates[1]).touch()
        _wait_for_file(str(started))
        lane.abandon(2, 1)  # running: stopped for real
        Path(gates[2]).touch()
        assert _next_outcome(lane, outcomes) == (3, 1, True, "ran", None)
        assert not ended.exists()
    finally:
        for gate in gates:
            Path(gate).touch()
        lane.close(cancel=True)


def test_an_attempt_sent_ahead_whose_worker_dies_is_timed_from_its_real_start():
    """It started when the one ahead of it in its worker ended, not when it was sent: its
    time does not count the wait (it had no outcome to stamp its start)."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: time.sleep(1.0), name="ahead", priority=5)
    p.add_unit(lambda ctx: os._exit(3), name="dies")  # sent ahead behind "ahead"
    p.execute(execution_mode=PROCESS)
    assert isinstance(p.units["dies"].error, WorkerDiedError)
    assert p.units["dies"].execution_time < 0.5  # it waited 1 s behind "ahead"


def _long_one_and_one_sent_ahead(tmp_path: Path) -> tuple[QuantumPartitioner, str]:
    """One worker: "long" runs (it touches the file returned when it starts), "waits" is
    sent ahead behind it."""
    started = str(tmp_path / "started")

    def long_one(ctx):
        Path(started).touch()
        time.sleep(30)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(long_one, name="long", priority=5)
    p.add_unit(lambda ctx: 1, name="waits")
    return p, started


def test_an_attempt_cancelled_while_it_waits_in_a_worker_reads_as_never_started(tmp_path):
    """Sent ahead behind a long one and cancelled before its turn, it never ran: no time,
    no attempt (as a unit cancelled before it started), and the report does not draw it
    running on the slot where the long one ran."""
    p, started = _long_one_and_one_sent_ahead(tmp_path)
    canceller = threading.Thread(target=lambda: (_wait_for_file(started), p.cancel()))
    canceller.start()
    p.execute(execution_mode=PROCESS)
    canceller.join()
    waits = p.units["waits"]
    assert waits.state is UnitState.CANCELED
    assert (waits.attempt, waits.execution_time) == (0, None)
    assert p.units["long"].execution_time > 0
    assert [a.unit_id for a in layout(p._last_run).attempts] == ["long"]


def test_an_attempt_waiting_in_a_worker_when_the_run_is_interrupted_never_started(tmp_path):
    """Ctrl-C while one waits in a worker behind a long one: it reads as never started."""
    p, started = _long_one_and_one_sent_ahead(tmp_path)
    interrupter = threading.Thread(
        target=lambda: (_wait_for_file(started), os.kill(os.getpid(), signal.SIGINT))
    )
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        p.execute(execution_mode=PROCESS)
    interrupter.join()
    waits = p.units["waits"]
    assert waits.state is UnitState.CANCELED
    assert (waits.attempt, waits.execution_time) == (0, None)


def test_an_attempt_sent_ahead_cancelled_once_it_started_is_timed_from_its_real_start(tmp_path):
    """Cancelled while it runs, it is timed from when its worker began it, not from when it
    was sent (it waited 1 s behind the one ahead of it)."""
    started = str(tmp_path / "started")

    def second(ctx):
        Path(started).touch()
        time.sleep(30)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: time.sleep(1.0), name="ahead", priority=5)
    p.add_unit(second, name="second")  # sent ahead behind "ahead"
    canceller = threading.Thread(target=lambda: (_wait_for_file(started), p.cancel()))
    canceller.start()
    p.execute(execution_mode=PROCESS)
    canceller.join()
    assert p.units["second"].state is UnitState.CANCELED
    assert p.units["second"].execution_time < 0.5


def _ahead_then_second(tmp_path: Path) -> tuple[Graph, str]:
    """Units "ahead" (1 s) and "second" (30 s, which touches the file returned first)."""
    started = str(tmp_path / "started")

    def second(ctx):
        Path(started).touch()
        time.sleep(30)

    graph = Graph(
        [QuantumUnit("ahead", lambda ctx: time.sleep(1.0)), QuantumUnit("second", second)]
    )
    return graph, started


def _stopped_once_begun(
    tmp_path: Path, *, reuse: bool
) -> tuple[Run, ProcessLane, queue.SimpleQueue, threading.Event]:
    """Unit "second" sent ahead behind "ahead" (1 s), then stopped once it began, while the
    reader holds back the outcome of "ahead" (until the event returned is set)."""
    graph, started = _ahead_then_second(tmp_path)
    run, lane, outcomes = _lane_sending_ahead(graph, short=False, reuse=reuse)
    reading = threading.Event()
    pass_on = lane._pass_on

    def read_after_the_stop(worker):
        reading.wait(60)
        return pass_on(worker)

    lane._pass_on = read_after_the_stop  # the reader takes no outcome until it is set
    try:
        _start_and_submit(run, lane, 0, 1)
        [worker] = lane._workers
        assert list(worker.jobs) == [(0, 1), (1, 1)]  # "second" waits behind "ahead"
        _wait_for_file(started)  # "ahead" ended, its outcome unread, and "second" began
        lane.abandon(1, 1)
    except BaseException:
        reading.set()
        lane.close(cancel=True)
        raise
    return run, lane, outcomes, reading


def test_an_attempt_stopped_before_the_outcome_ahead_of_it_is_read_is_timed_from_its_start(
    tmp_path,
):
    """The worker sends the outcome of the attempt ahead, then begins the next one. A stop
    that comes before the driver has read that outcome times the stopped one from when it
    began, once the outcome is read (it kept when it was sent: 1 s too early here)."""
    run, lane, outcomes, reading = _stopped_once_begun(tmp_path, reuse=False)
    try:
        reading.set()
        assert _next_outcome(lane, outcomes)[:3] == (0, 1, True)
        assert run.scheduler.started[1] - run.scheduler.started[0] > 0.9  # after "ahead"
    finally:
        reading.set()
        lane.close(cancel=True)


def test_a_run_on_kept_workers_ends_once_the_start_of_a_stopped_attempt_is_final(tmp_path):
    """Reused workers: the run's end waits for the reader to bury the worker killed to stop
    an attempt sent ahead, so the outcome ahead of it, still unread then, has corrected that
    attempt's start before execute returns (it was corrected after, once the metrics were
    taken)."""
    run, lane, _, reading = _stopped_once_begun(tmp_path, reuse=True)
    try:
        threading.Timer(0.3, reading.set).start()
        lane.close(cancel=False)  # the run ends
        assert reading.is_set()
        assert run.scheduler.started[1] - run.scheduler.started[0] > 0.9  # after "ahead"
    finally:
        reading.set()
        lane.shutdown()


def test_a_run_that_stops_its_workers_ends_once_their_last_answers_are_read(tmp_path, monkeypatch):
    """Workers stopped at the run's end: the reader reads what each sent before it exited
    before it ends, even what it had not got to (here: it wakes for nothing but the driver
    once the attempts are sent), so the start of an attempt stopped in one is final when
    the run ends. (It ended as soon as every worker had exited, reading nothing more: the
    outcome ahead of the stopped attempt was never read.)"""
    graph, started = _ahead_then_second(tmp_path)
    run, lane, _ = _lane_sending_ahead(graph, short=False)
    real_readable = processes._readable

    def only_the_driver_wakes_the_reader(fds, timeout):
        ready = real_readable(fds, timeout)
        if threading.current_thread() is not lane._reader:
            return ready
        time.sleep(0.01)  # what it ignores stays readable
        return [fd for fd in ready if fd == lane._wake_r]

    monkeypatch.setattr(processes, "_readable", only_the_driver_wakes_the_reader)
    lane._wake_reader()  # it waits in the real _readable: from its next wait on, it ignores
    try:
        _start_and_submit(run, lane, 0, 1)
        _wait_for_file(started)  # "ahead" ended, its outcome unread, and "second" began
        lane.abandon(1, 1)
    finally:
        lane.close(cancel=False)  # the run ends: its workers are stopped
    assert run.scheduler.started[1] - run.scheduler.started[0] > 0.9  # after "ahead"'s 1 s


def test_attempts_taken_back_count_against_what_may_wait_in_a_busy_worker(tmp_path):
    """A busy worker reads its pipe only between attempts, so the messages of attempts taken
    back from it (stolen, cancelled) stay there until it drops them: they count against
    what may wait in it. (Sending it more, each taken back in turn, filled its pipe: the
    driver blocked on it until the attempt ahead ended, its timeouts and outcomes too.)"""
    gate = str(tmp_path / "gate")
    graph = Graph(
        [
            QuantumUnit("inputs", lambda ctx: bytes(7000)),  # each attempt's message: 7 KB
            QuantumUnit("busy", lambda ctx: _wait_for_file(gate)),
            *(QuantumUnit(f"s{k}", lambda ctx: 1, ["inputs"]) for k in range(12)),
        ]
    )
    run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        sched = run.scheduler
        _start_and_submit(run, lane, 0)
        item = _next_outcome(lane, outcomes)
        lane.settled(0, 1)
        sched.complete(0, 1, item[3], run.clock())
        _start_and_submit(run, lane, 1)
        taken_back = 0
        while lane.has_room() and taken_back < 12:
            i = sched.start_next(run.clock())
            sent = threading.Thread(target=lane.submit, args=(i, 1), daemon=True)
            sent.start()
            sent.join(10)
            assert not sent.is_alive(), f"submit() waited for the busy worker ({taken_back})"
            lane.abandon(i, 1)  # taken back: its message stays in the worker's pipe
            taken_back += 1
        assert taken_back <= processes._SEND_AHEAD
        Path(gate).touch()
        assert _next_outcome(lane, outcomes)[:3] == (1, 1, True)
    finally:
        Path(gate).touch()
        lane.close(cancel=True)


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "no-pidfd"])
def test_a_worker_that_dies_leaving_a_forked_child_fails_its_unit_at_once(
    tmp_path, monkeypatch, pidfds
):
    """A unit's forked child (``os.fork``, a ``fork`` multiprocessing helper) holds the
    worker's pipe to the driver: the worker's death is still noticed at once, not when that
    child exits; and the child goes with the worker (its process group)."""
    if not pidfds:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfds here")
    child = tmp_path / "child"

    def leave_a_child(ctx):
        pid = os.fork()
        if pid == 0:  # the child: outlives its parent, holding what it inherited
            time.sleep(60)
            os._exit(0)
        child.write_text(str(pid))

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(leave_a_child, name="leave_a_child", priority=5)
    p.add_unit(lambda ctx: os._exit(3), ["leave_a_child"], name="dies")
    started = time.monotonic()
    try:
        p.execute(execution_mode=PROCESS)
        assert time.monotonic() - started < 30  # the child sleeps for 60 s
        # The worker's process group died with it, as on a timeout (the child lived on).
        assert _wait_gone(int(child.read_text()))
    finally:
        if child.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child.read_text()), signal.SIGKILL)
    assert isinstance(p.units["dies"].error, WorkerDiedError)


def test_workers_that_do_not_stop_are_all_killed_once_the_same_wait_is_over(tmp_path, monkeypatch):
    """Each worker left a thread that never ends: they are killed together once the wait
    for a stopped worker is over, not one such wait after the other."""
    monkeypatch.setattr(processes, "_STOP_SECONDS", 1.5)
    workers = 4

    def never_ends(ctx):
        import threading  # noqa: PLC0415 - in the worker

        threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon
        (tmp_path / str(os.getpid())).touch()
        deadline = time.monotonic() + 30  # until each worker has one: they all get one
        while len(os.listdir(tmp_path)) < workers and time.monotonic() < deadline:  # noqa: PTH208
            time.sleep(0.005)
        return os.getpid()

    p = QuantumPartitioner()
    for k in range(workers):
        p.add_unit(never_ends, name=f"u{k}")
    backend = ProcessBackend(workers, reuse=True)
    try:
        assert len(set(p.execute({}, backend=backend).values())) == workers
    finally:
        started = time.monotonic()
        backend.close()
        stopping = time.monotonic() - started
    assert 1.5 <= stopping < 4.5  # one wait of 1.5 s; one after the other took 6 s


class _Heard(Instrument):
    """Keeps the name of each event it hears, run and unit events alike."""

    def __init__(self):
        self.heard = []

    def _keep(self, event):
        self.heard.append(type(event).__name__)

    run_started = unit_started = unit_finished = unit_failed = _keep
    unit_skipped = unit_cancelled = run_finished = _keep


@pytest.mark.parametrize("kind", ["process", "executor"])
def test_a_backend_running_a_run_refuses_another_before_any_unit_runs(tmp_path, kind):
    """A backend whose lanes follow one run (a reused ProcessBackend, an ExecutorBackend)
    shared by two partitioners: the second run at once is refused, saying so, before any of
    its units runs, like bad input: no hook hears of it and the partitioner keeps the record
    of its last run; the first goes on unharmed. (Both ran on the lanes: one hung, the
    other got results of the first's units; then the refused run fired run_started and
    run_finished, and replaced the last run's record with units left PENDING.)"""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from quantum_partitioner.backends import ExecutorBackend  # noqa: PLC0415

    started, gate, ran = tmp_path / "started", str(tmp_path / "gate"), tmp_path / "ran"

    def first(ctx):
        Path(started).touch()
        _wait_for_file(gate)
        return "first"

    heard = _Heard()
    one, other = QuantumPartitioner(), QuantumPartitioner(instruments=[heard])
    one.add_unit(first, name="a")
    other.add_unit(lambda ctx: ctx.get("before") or ran.touch(), name="a")
    assert other.execute({"before": "earlier"}) == {"a": "earlier"}
    heard.heard.clear()
    with contextlib.ExitStack() as stack:
        if kind == "process":
            backend = stack.enter_context(ProcessBackend(1, reuse=True))
        else:
            backend = ExecutorBackend(stack.enter_context(ThreadPoolExecutor(2)))
        results: dict[str, object] = {}
        running = threading.Thread(target=lambda: results.update(one.execute(backend=backend)))
        running.start()
        try:
            _wait_for_file(str(started))
            with pytest.raises(RuntimeError, match="already running a run"):
                other.execute(backend=backend)
        finally:
            Path(gate).touch()
            running.join(30)
        assert results == {"a": "first"}
        assert not ran.exists()
        assert heard.heard == []
        assert other.get_partial_results() == {"a": "earlier"}
        assert other.last_execution_metrics["execution_mode"] == "thread"
        assert other.units["a"].state is UnitState.COMPLETED
        assert other.execute(backend=backend) == {"a": None}  # once it is free again
        assert heard.heard == ["RunStarted", "UnitStarted", "UnitFinished", "RunFinished"]


def _rebuild_raising(error: BaseException) -> None:
    raise error


class _LoadsRaising:
    """Pickles, but raises ``error`` when a worker unpickles it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, ctx):
        return "never runs: it cannot be loaded"

    def __reduce__(self):
        return (_rebuild_raising, (self.error,))


@pytest.mark.parametrize("error", [ValueError("no such class here"), SystemExit(4)])
def test_a_function_a_worker_cannot_load_fails_its_unit_and_the_worker_goes_on(error):
    """Whatever loading the function raises in the worker (SystemExit too, as a unit's own
    SystemExit does), its unit fails saying so and the worker runs the next one. (The
    worker died: WorkerDiedError for that unit, or for another whose attempt it held.)"""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: os.getpid(), name="before", priority=2)
    p.add_unit(_LoadsRaising(error), name="unloadable", priority=1)
    p.add_unit(lambda ctx: os.getpid(), name="after")
    results = p.execute(execution_mode=PROCESS)
    assert results["before"] == results["after"]  # one worker throughout
    failure = p.units["unloadable"].error
    assert isinstance(failure, RuntimeError)
    assert "unit 'unloadable': its function could not be loaded in the worker" in str(failure)
    assert type(error).__name__ in failure.__cause__.text


def test_a_context_a_worker_cannot_load_fails_each_unit_saying_so():
    """The run's context pickles here but cannot be loaded in the worker: each unit fails
    with that reason, not as if its worker had died."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, name="b")
    assert p.execute({"key": _LoadsRaising(ValueError("not here"))}, execution_mode=PROCESS) == {}
    for name in ("a", "b"):
        failure = p.units[name].error
        assert isinstance(failure, RuntimeError)
        assert f"unit {name!r}: the run's context could not be loaded in the worker" in str(failure)
        assert "not here" in failure.__cause__.text


def test_an_attempt_whose_worker_died_ends_before_its_replacement_starts():
    """Its end is when the reader found the worker dead, before the replacement could
    start: the driver may start that one (has_room) before it takes the failure, whose
    end was then its own later clock, and the trace drew the attempt over the
    replacement's start-up on their slot."""
    graph = Graph([QuantumUnit("dies", lambda ctx: os._exit(3)), QuantumUnit("b", lambda ctx: 1)])
    run, lane, outcomes = _lane_sending_ahead(graph)
    try:
        _start_and_submit(run, lane, 0)
        [worker] = lane._workers
        item = None
        while item is None:  # its failure is posted once the worker is buried
            item = outcomes.get(timeout=30)
        assert item[:3] == (0, 1, False)
        assert worker not in lane._workers
        lane.has_room()  # the replacement starts before the driver takes the failure
        [replacement] = lane._workers
        spawned = [start for slot, start, _ in run.worker_startups if slot == worker.slot]
        started = replacement.spawned_at if replacement.spawned_at is not None else spawned[-1]
        lane.settled(0, 1)
        assert 0 <= lane.ended_at(0, 1) <= started
    finally:
        lane.close(cancel=True)


def test_each_attempt_starts_when_the_driver_hands_it_to_its_lane():
    """Several attempts handed over in one pass of the driver each start when handed over,
    not when the pass began: handing one over takes time (a process lane pickles and
    writes it), and a worker that became ready meanwhile was drawn running the next
    attempt before its own start-up ended."""
    from quantum_partitioner.backends import Lane, LaneBackend  # noqa: PLC0415
    from quantum_partitioner.testing import FakeClock  # noqa: PLC0415

    clock = FakeClock()

    class SlowHandOver(Lane):
        """Room for every attempt; handing one over takes 1 s of the run's clock."""

        def open(self, run, post):
            self._post = post

        def has_room(self):
            return True

        def submit(self, i, attempt):
            clock.advance(1.0)
            self._post((i, attempt, True, i, None))

    graph = Graph([QuantumUnit(name, lambda ctx: 1) for name in ("a", "b", "c")])
    run = Run(graph, {}, mode="lanes", max_workers=3)
    run.clock = clock
    LaneBackend([SlowHandOver()]).run(run)
    assert sorted(run.scheduler.started) == [0.0, 1.0, 2.0]


def test_ctrl_c_while_the_run_waits_for_its_workers_to_stop_kills_them(monkeypatch):
    """A worker still finishing what its unit left (a thread) when the run ends: Ctrl-C
    while the run waits for it kills it, and the run ends with KeyboardInterrupt. (The
    wait was cut short, and the worker lived on, with its pipes open.)"""
    waiting = threading.Event()
    wait_exit = processes._wait_exit

    def wait_exit_observed(worker, timeout):
        waiting.set()
        return wait_exit(worker, timeout)

    monkeypatch.setattr(processes, "_wait_exit", wait_exit_observed)

    def leave_a_thread(ctx):
        import threading  # noqa: PLC0415 - in the worker

        threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon
        return os.getpid()

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(leave_a_thread, name="leave_a_thread")
    interrupter = threading.Thread(
        target=lambda: waiting.wait(30) and os.kill(os.getpid(), signal.SIGINT)
    )
    interrupter.start()
    backend = ProcessBackend(1)  # held here: nothing stops its workers later
    with pytest.raises(KeyboardInterrupt):
        p.execute(backend=backend)
    interrupter.join()
    assert _wait_gone(p.units["leave_a_thread"].result, 2)
    assert backend.lane._reader is None  # its pipes closed, its reader gone


def _exit_when_loaded() -> None:
    raise SystemExit(3)


class _ExitsWhenLoaded:
    """A result whose unpickling raises SystemExit (in the caller's process)."""

    def __reduce__(self):
        return (_exit_when_loaded, ())


def test_a_result_whose_loading_raises_systemexit_fails_its_unit_and_the_run_goes_on(bounded):
    """Loading a result raises SystemExit in the caller's process: its unit fails saying
    so, and the run goes on. (It ended the thread that reads every worker's outcomes:
    the run waited for ever.)"""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(lambda ctx: _ExitsWhenLoaded(), name="result", priority=1)
    p.add_unit(lambda ctx: 2, name="other")
    assert bounded(lambda: p.execute(execution_mode=PROCESS), 30) == {"other": 2}
    failure = p.units["result"].error
    assert isinstance(failure, RuntimeError)
    assert "unit 'result': loading its result raised SystemExit(3)" in str(failure)


class _ExitsWhenLoadedError(Exception):
    """An error whose unpickling raises SystemExit."""

    def __reduce__(self):
        return (_exit_when_loaded, ())


def test_an_error_whose_loading_raises_systemexit_still_fails_only_its_unit(bounded):
    """The worker checks that a unit's error survives the trip; loading it raises
    SystemExit: the unit fails with its description, and the worker goes on. (The worker
    died of it: WorkerDiedError.)"""

    def fails(ctx):
        raise _ExitsWhenLoadedError("the unit's own error")

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(fails, name="fails", priority=1)
    p.add_unit(lambda ctx: os.getpid(), name="other")
    assert "other" in bounded(lambda: p.execute(execution_mode=PROCESS), 30)
    failure = p.units["fails"].error
    assert isinstance(failure, _processes.RemoteUnitError)
    assert "the unit's own error" in str(failure)


@pytest.mark.parametrize(
    ("scribbled", "reason"),
    [
        ((20).to_bytes(8, "big") + b"not a pickle at all!", "a message that cannot be loaded"),
        ((1 << 62).to_bytes(8, "big") + b"never the rest", f"a frame header claims {1 << 62}"),
    ],
    ids=["not-a-message", "a-header-claiming-too-much"],
)
def test_a_unit_writing_into_its_workers_pipe_to_the_driver_fails_only_itself(
    bounded, scribbled, reason
):
    """A unit writes bytes that are no message into the worker's pipe to the driver (a
    descriptor it does not own): that worker is replaced, its unit fails saying why, and the
    run goes on. (The thread reading every worker's outcomes died of it: the run waited for
    ever; a header claiming more than any message can hold made it wait for the rest for
    ever; the reason was only logged.)"""

    def scribble(ctx):
        out = int(sys.argv[2])  # the worker's pipe to the driver
        os.write(out, scribbled)
        time.sleep(30)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(scribble, name="scribble", priority=1)
    p.add_unit(lambda ctx: 2, name="other")
    assert bounded(lambda: p.execute(execution_mode=PROCESS), 20) == {"other": 2}
    error = p.units["scribble"].error
    assert isinstance(error, WorkerDiedError)
    assert reason in str(error)
    assert reason in error.reason


def test_a_worker_whose_pipe_to_the_driver_closes_while_it_lives_is_replaced_at_once():
    """A unit closes the worker's pipe to the driver (a descriptor it does not own) and goes
    on: the worker cannot answer any more, so it is killed and replaced at once, and its unit
    fails saying why. (The reader waited 5 s for it to exit, reading no other worker.)"""

    def close_the_pipe(ctx):
        os.close(int(sys.argv[2]))  # the worker's pipe to the driver
        time.sleep(30)

    p = QuantumPartitioner(max_workers=1)
    p.add_unit(close_the_pipe, name="closes", priority=1)
    p.add_unit(lambda ctx: 2, name="other")
    assert p.execute(execution_mode=PROCESS) == {"other": 2}
    error = p.units["closes"].error
    assert isinstance(error, WorkerDiedError)
    assert "its pipe to the driver closed while it ran" in error.reason
    assert p.units["closes"].execution_time < 2.5  # it took 5 s and more


def test_a_reused_backend_run_again_after_close_stops_its_new_workers_on_close():
    """close() stops the kept workers each time: a run after close() starts new ones,
    which the next close() stops too. (Only the first close() did: the workers of later
    runs lived as long as the program.)"""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: os.getpid(), name="a")
    backend = ProcessBackend(1, reuse=True)
    first = p.execute(backend=backend)["a"]
    backend.close()
    assert _wait_gone(first)
    second = p.execute(backend=backend)["a"]
    backend.close()
    assert _wait_gone(second, 5)


def test_an_interrupt_as_one_lane_closes_still_closes_the_lanes_after_it():
    """Ctrl-C as a run's first lane closes (a thread lane's, after its units): the process
    lane after it is closed too, its worker stopped, and the interrupt is raised. (The lanes
    after the interrupted one were left open, their workers running.)"""
    from quantum_partitioner.backends import LaneBackend  # noqa: PLC0415
    from quantum_partitioner.backends._thread_lane import ThreadLane  # noqa: PLC0415

    class InterruptedClose(ThreadLane):
        def close(self, *, cancel):
            super().close(cancel=cancel)
            raise KeyboardInterrupt

    backend = LaneBackend([InterruptedClose(1), ProcessLane(1)], lane_for=lambda unit: 1)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: os.getpid(), name="pid")
    with pytest.raises(KeyboardInterrupt):
        p.execute(backend=backend)
    pid = p.get_partial_results()["pid"]
    assert pid != os.getpid()
    assert _wait_gone(pid)


def test_a_run_interrupted_before_it_is_driven_keeps_a_reused_backends_workers():
    """A run_started hook's Ctrl-C (the run claimed, not driven: nothing ran) lets go of a
    reused backend's workers as a run that ended does: the next run has the same worker.
    (They were killed, and the next run started new ones.)"""

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: os.getpid(), name="a")
    with ProcessBackend(1, reuse=True) as backend:
        first = p.execute(backend=backend)["a"]
        p.instruments.append(InterruptOnFirstRunStart())
        with pytest.raises(KeyboardInterrupt):
            p.execute(backend=backend)
        assert p.units["a"].state is UnitState.CANCELED
        assert p.execute(backend=backend)["a"] == first
