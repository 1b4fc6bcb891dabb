"""CUSTOM mode: units run on the caller's ``concurrent.futures`` executor.

Process-pool units come from ``_pool_units`` (this directory, put on ``sys.path``): this test
module is imported with ``--import-mode=importlib`` as ``tests.backends.test_executor``, a name
a worker process can import only when the repository root is on its ``sys.path`` or when it
was forked from this process. ``test_function_of_this_test_module_runs_on_a_fork_pool`` shows
the fork case.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitSkippedError,
    UnitState,
)

sys.path.insert(0, str(Path(__file__).parent))
import _pool_units as units  # needs the sys.path entry above

CUSTOM = ExecutionMode.CUSTOM
FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))


def module_level_double(ctx):
    return ctx["x"] * 2


@pytest.fixture(scope="module")
def process_pool():
    """One pool of two worker processes for the whole module (default start method)."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        yield pool


@pytest.fixture
def thread_pool():
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="callers-pool") as pool:
        yield pool


def pipeline():
    # load -> square -> total (async)
    p = QuantumPartitioner()
    p.add_unit(units.load, name="load")
    p.add_unit(units.square, ["load"], name="square")
    p.add_unit(units.total, ["square"], name="total")
    return p


# -- thread pools ----------------------------------------------------------------------------


def test_thread_pool_executor_runs_the_graph(thread_pool):
    """Units run on the caller's ThreadPoolExecutor, on its threads, with their results."""
    p = pipeline()
    p.add_unit(lambda ctx: threading.current_thread().name, name="thread_name")

    results = p.execute({"numbers": [1, 2, 3]}, CUSTOM, custom_executor=thread_pool)

    assert results["total"] == 14
    assert results["square"] == [1, 4, 9]
    assert results["thread_name"].startswith("callers-pool")


def test_thread_pool_is_not_shut_down_by_the_run(thread_pool):
    """After a run, the caller's executor still accepts work."""
    p = pipeline()
    p.execute({"numbers": [1]}, CUSTOM, custom_executor=thread_pool)

    assert thread_pool.submit(sum, [1, 2]).result(timeout=10) == 3


def test_custom_executor_without_a_mode_selects_custom(thread_pool):
    """Passing custom_executor alone runs the units on it (CUSTOM mode)."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx.environment["execution_mode"], name="mode")

    assert p.execute({}, custom_executor=thread_pool) == {"mode": "custom"}


def test_a_worker_stuck_in_a_timed_out_unit_counts_as_busy(thread_pool):
    """The next units wait for a free worker here, not in the executor's queue.

    Both workers are stuck past their units' timeouts; the quick units, sent to the
    executor then, would wait in its queue behind them until their own timeouts passed.
    """
    release = threading.Event()

    def stuck(ctx):
        release.wait(0.8)

    p = QuantumPartitioner()
    for k in range(2):
        p.add_unit(stuck, name=f"stuck{k}", timeout=0.1, priority=1)
    for k in range(2):
        p.add_unit(lambda ctx: "quick", name=f"quick{k}", timeout=0.5)
    results = p.execute({}, CUSTOM, custom_executor=thread_pool)
    assert results == {"quick0": "quick", "quick1": "quick"}
    assert {p.units[f"stuck{k}"].state for k in range(2)} == {UnitState.TIMEOUT}


def test_a_worker_stuck_since_an_earlier_run_counts_as_busy_in_the_next(bounded):
    """The next run on the executor waits for that worker too, then runs its unit.

    Each run started with no stuck worker: the next run's unit waited in the executor's
    queue behind the stuck one and timed out there without ever starting.
    """
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = QuantumPartitioner()
        first.add_unit(lambda ctx: release.wait(0.8), name="stuck", timeout=0.1)
        first.execute({}, CUSTOM, custom_executor=pool)
        assert first.units["stuck"].state is UnitState.TIMEOUT
        second = QuantumPartitioner()
        second.add_unit(lambda ctx: "quick", name="quick", timeout=0.3)
        results = bounded(lambda: second.execute({}, CUSTOM, custom_executor=pool), 30)
        assert results == {"quick": "quick"}


def test_shut_down_executor_fails_the_units_without_hanging():
    """An executor that refuses work fails the units (RuntimeError); dependents are skipped."""
    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, ["a"], name="b")

    assert p.execute({}, CUSTOM, custom_executor=pool) == {}
    assert p.units["a"].state is UnitState.FAILED
    assert isinstance(p.units["a"].error, RuntimeError)
    assert p.units["b"].state is UnitState.SKIPPED


class InlineExecutor(Executor):
    """The smallest Executor: runs each call in submit(), says nothing about its size."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def test_any_executor_subclass_works():
    """A minimal Executor subclass (no pool, no _max_workers) runs the graph."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"], name="a")
    p.add_unit(lambda ctx: ctx["a"] + 1, ["a"], name="b")
    p.add_unit(lambda ctx: threading.get_ident(), name="where")
    p.add_unit(units.remote_failure, name="fails")

    results = p.execute({"x": 1}, CUSTOM, custom_executor=InlineExecutor())

    assert (results["a"], results["b"]) == (1, 2)
    assert results["where"] == threading.get_ident()
    assert p.units["fails"].state is UnitState.FAILED


def _stopping_graph(how):
    """Units the run must stop partway through, ``how`` being what stops it."""
    p = QuantumPartitioner()
    if how == "fail_fast":
        p.add_unit(units.remote_failure, name="boom", priority=1)
    if how == "cancel":
        p.on_unit_complete = lambda unit_id, result: p.cancel()
    for k in range(4):
        p.add_unit(
            lambda ctx: time.sleep(0.15), name=f"u{k}", timeout=0.1 if how == "timeout" else None
        )
    return p


@pytest.mark.parametrize("how", ["deadline", "cancel", "fail_fast", "timeout"])
def test_an_executor_that_runs_calls_inside_submit_stops_as_sequential_does(how):
    """The run's deadline, cancel(), fail_fast and timeouts hold between inline calls.

    The driver handed every ready unit over in one pass: with an executor that calls the
    function inside submit(), all four ran (0.6 s) whatever stopped the run, and each ran
    past its timeout was COMPLETED.
    """
    options = {"deadline": 0.2} if how == "deadline" else {"fail_fast": how == "fail_fast"}
    reference = _stopping_graph(how)
    reference.execute({}, ExecutionMode.SEQUENTIAL, **options)
    p = _stopping_graph(how)
    p.execute({}, CUSTOM, custom_executor=InlineExecutor(), **options)
    assert {n: unit.state for n, unit in p.units.items()} == {
        n: unit.state for n, unit in reference.units.items()
    }
    if how != "timeout":
        assert p.units["u3"].state is UnitState.CANCELED


@pytest.mark.parametrize("stopped_by", ["timeout", "deadline"])
def test_ctx_cancelled_turns_true_inside_a_call_run_in_submit(stopped_by):
    """A unit watching ctx.cancelled stops at its timeout or the deadline, as in SEQUENTIAL.

    Nothing acts while submit() runs the call: ctx.cancelled stayed false, and a unit that
    waits for it never returned (here it gives up after 10 s).
    """

    def waits_for_cancel(ctx):
        began = time.monotonic()
        while not ctx.cancelled:
            if time.monotonic() - began > 10:
                return "never cancelled"
            time.sleep(0.01)
        return "cancelled"

    p = QuantumPartitioner()
    p.add_unit(waits_for_cancel, name="waits", timeout=0.2 if stopped_by == "timeout" else None)
    options = {"deadline": 0.2} if stopped_by == "deadline" else {}
    began = time.monotonic()
    assert p.execute({}, CUSTOM, custom_executor=InlineExecutor(), **options) == {}
    assert time.monotonic() - began < 5
    expected = UnitState.TIMEOUT if stopped_by == "timeout" else UnitState.CANCELED
    assert p.units["waits"].state is expected


# -- process pools ---------------------------------------------------------------------------


def test_process_pool_runs_module_level_units(process_pool):
    """Module-level functions run in worker processes; async ones are awaited there."""
    p = pipeline()
    p.add_unit(units.pid, name="pid")

    results = p.execute({"numbers": [1, 2, 3]}, CUSTOM, custom_executor=process_pool)

    assert results["load"] == [1, 2, 3]
    assert results["square"] == [1, 4, 9]
    assert results["total"] == 14
    assert results["pid"] != os.getpid()
    assert p.last_execution_metrics["unit_metrics"] == {"square": {"count": 3}}


def test_process_pool_unit_sees_context_and_declared_dependencies_only(process_pool):
    """In a worker process ctx holds the context and declared results, nothing else."""
    p = QuantumPartitioner()
    p.add_unit(units.load, name="load")
    p.add_unit(units.pid, name="pid")
    p.add_unit(units.what_i_see, ["load"], name="what_i_see")

    results = p.execute({"numbers": [7]}, CUSTOM, custom_executor=process_pool)

    assert results["what_i_see"] == {"keys": ["load", "numbers"], "load": [7], "pid_hidden": True}


def test_process_pool_is_not_shut_down_by_the_run(process_pool):
    """After a run, the caller's process pool still accepts work."""
    p = pipeline()
    p.execute({"numbers": [2]}, CUSTOM, custom_executor=process_pool)

    assert process_pool.submit(os.getpid).result(timeout=10) != os.getpid()


def test_process_pool_failure_keeps_the_remote_traceback(process_pool):
    """A unit failing in a worker process keeps its exception and the worker's traceback."""
    p = QuantumPartitioner()
    p.add_unit(units.remote_failure, name="remote")
    p.add_unit(units.pid, ["remote"], name="after")
    p.add_unit(units.pid, name="independent")

    results = p.execute({}, CUSTOM, custom_executor=process_pool)

    unit = p.units["remote"]
    assert set(results) == {"independent"}
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, ValueError)
    assert str(unit.error) == "remote failure in remote"
    # The worker's traceback travels as the exception's cause and shows in the formatted one.
    assert "remote_failure" in str(unit.error.__cause__)
    assert "remote_failure" in unit.traceback
    assert "_pool_units.py" in unit.traceback
    assert isinstance(p.units["after"].error, UnitSkippedError)


def test_process_pool_callbacks_run_in_the_callers_process(process_pool):
    """Callbacks for units running in worker processes are called in the caller's process."""
    seen = []
    p = pipeline()
    p.add_unit(units.remote_failure, name="remote")
    p.on_unit_start = lambda unit_id: seen.append(("start", unit_id, os.getpid()))
    p.on_unit_complete = lambda unit_id, result: seen.append(("complete", unit_id, os.getpid()))
    p.on_unit_error = lambda unit_id, error: seen.append(("error", unit_id, os.getpid()))

    p.execute({"numbers": [1]}, CUSTOM, custom_executor=process_pool)

    assert {pid for _, _, pid in seen} == {os.getpid()}
    assert sorted((kind, unit_id) for kind, unit_id, _ in seen) == [
        ("complete", "load"),
        ("complete", "square"),
        ("complete", "total"),
        ("error", "remote"),
        ("start", "load"),
        ("start", "remote"),
        ("start", "square"),
        ("start", "total"),
    ]


def test_process_pool_retries_a_failing_unit(process_pool):
    """Retries work across processes: each attempt is a new call with its attempt number."""
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(units.flaky, name="flaky", retries=2)

    assert p.execute({}, CUSTOM, custom_executor=process_pool) == {"flaky": "ok on 3"}
    assert p.units["flaky"].attempt == 3


def test_process_pool_unpicklable_unit_fails_only_that_unit(process_pool):
    """A lambda cannot reach a plain process pool: that unit fails naming itself, others run."""
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(lambda ctx: 1, name="lambda", retries=1)
    p.add_unit(units.pid, name="pid")

    results = p.execute({}, CUSTOM, custom_executor=process_pool)

    assert set(results) == {"pid"}
    unit = p.units["lambda"]
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, TypeError)
    assert str(unit.error).startswith("unit 'lambda': its function <function ")
    assert "cannot be pickled for the ProcessPoolExecutor" in str(unit.error)
    assert unit.attempt == 2  # retried as any failure is


def test_process_pool_unpicklable_result_fails_that_unit(process_pool):
    """A result that cannot travel back fails its unit instead of hanging the run."""
    p = QuantumPartitioner()
    p.add_unit(units.returns_unpicklable, name="bad_result")
    p.add_unit(units.pid, ["bad_result"], name="after")

    assert p.execute({}, CUSTOM, custom_executor=process_pool) == {}
    assert p.units["bad_result"].state is UnitState.FAILED
    assert p.units["after"].state is UnitState.SKIPPED
    # Named, as in PROCESS mode and on Dask (issue 9, defect 12 in CUSTOM mode).
    error = p.units["bad_result"].error
    assert isinstance(error, TypeError)
    assert "unit 'bad_result': its result" in str(error)
    assert "cannot be sent" in str(error)


def test_process_pool_broken_by_a_dying_worker_ends_the_run():
    """A unit killing its worker breaks the pool: its unit fails, dependents skip, no hang."""
    with ProcessPoolExecutor(max_workers=1) as pool:  # its own pool: this one breaks
        p = QuantumPartitioner()
        p.add_unit(units.dies, name="dies")
        p.add_unit(units.one, ["dies"], name="after")
        p.add_unit(units.one, name="other")

        p.execute({}, CUSTOM, custom_executor=pool)

    assert p.units["dies"].state is UnitState.FAILED
    assert isinstance(p.units["dies"].error, BrokenProcessPool)
    assert p.units["after"].state is UnitState.SKIPPED
    # 'other' completed before the pool broke, or failed with it: either way it ended.
    assert p.units["other"].state in {UnitState.COMPLETED, UnitState.FAILED}


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")
def test_function_of_this_test_module_runs_on_a_fork_pool():
    """A function defined in this importlib-imported test module pickles by reference (fork)."""
    assert module_level_double.__module__ in sys.modules
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        p = QuantumPartitioner()
        p.add_unit(module_level_double, name="double")

        assert p.execute({"x": 21}, CUSTOM, custom_executor=pool) == {"double": 42}


# -- argument checks -------------------------------------------------------------------------


def test_custom_mode_without_an_executor_raises_value_error():
    """ExecutionMode.CUSTOM without custom_executor raises ValueError before any unit runs."""
    ran = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append(1), name="a")

    with pytest.raises(ValueError, match="custom_executor"):
        p.execute({}, CUSTOM)

    assert ran == []
    assert p.units["a"].state is UnitState.PENDING


def test_default_custom_mode_without_an_executor_raises_value_error():
    """A partitioner whose default mode is CUSTOM needs custom_executor on execute()."""
    p = QuantumPartitioner(default_execution_mode=CUSTOM)
    p.add_unit(lambda ctx: 1, name="a")

    with pytest.raises(ValueError, match="custom_executor"):
        p.execute({})


@pytest.mark.parametrize("other", [m for m in ExecutionMode if m is not CUSTOM], ids=str)
def test_custom_executor_with_another_explicit_mode_raises_value_error(other, thread_pool):
    """custom_executor together with a mode other than CUSTOM raises ValueError; nothing runs."""
    ran = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append(1), name="a")

    with pytest.raises(ValueError, match="custom_executor"):
        p.execute({}, other, custom_executor=thread_pool)

    assert ran == []
    assert p.units["a"].state is UnitState.PENDING
