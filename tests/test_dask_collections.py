"""quantum_partitioner.dask: Dask collections and raw Dask graphs run on the partitioner.

Dask's own conformance suite for ``get`` functions runs unchanged against ``get`` (THREAD)
and a SEQUENTIAL scheduler; the collections' results are compared with
``dask.threaded.get`` on the same collections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from operator import add

import pytest

dask = pytest.importorskip("dask")

import dask.bag as db  # noqa: E402 - only once dask is known to be installed
from dask._task_spec import Alias, DataNode, Task, TaskRef  # noqa: E402
from dask.utils_test import GetFunctionTestMixin  # noqa: E402

import quantum_partitioner.dask as qd  # noqa: E402
from quantum_partitioner import (  # noqa: E402
    CircularDependencyError,
    ExecutionMode,
    UnitCancelledError,
    UnitState,
)
from quantum_partitioner.observability._progress import unit_kind  # noqa: E402


def inc(x):
    return x + 1


class TestGetFunction(GetFunctionTestMixin):
    """Dask's expectations of every ``get`` function, THREAD mode."""

    get = staticmethod(qd.get)


class TestSequentialGetFunction(GetFunctionTestMixin):
    """Dask's expectations of every ``get`` function, SEQUENTIAL mode."""

    get = staticmethod(qd.Scheduler(execution_mode="sequential").get)


def test_array_reductions_match_dask_threaded():
    """dask.array sum, mean and a matrix product give what dask.threaded.get gives."""
    da = pytest.importorskip("dask.array")
    x = da.arange(10_000, chunks=100).reshape(100, 100).rechunk(25)
    exprs = (x.sum(), x.mean(axis=0), (x @ x.T).max(), x[::3].std())
    ours = dask.compute(*exprs, scheduler=qd.get)
    theirs = dask.compute(*exprs, scheduler="threads")
    np = pytest.importorskip("numpy")
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b)


def test_bag_reductions_match_dask_threaded():
    """dask.bag map/filter/fold, frequencies and foldby give what dask.threaded.get gives."""
    bag = db.from_sequence(range(1_000), npartitions=20)
    exprs = (
        bag.map(lambda v: v * 3).filter(lambda v: v % 2).fold(add),
        bag.map(lambda v: v % 7).frequencies(sort=True),
        bag.foldby(lambda v: v % 5, add, 0),
    )
    ours = dask.compute(*exprs, scheduler=qd.get)
    theirs = dask.compute(*exprs, scheduler="threads")
    assert ours[:2] == theirs[:2]
    assert sorted(ours[2]) == sorted(theirs[2])


def test_dataframe_reductions_match_dask_threaded():
    """dask.dataframe sum, groupby-mean and value_counts give what dask.threaded.get gives."""
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"k": [i % 4 for i in range(400)], "v": range(400)})
    df = dd.from_pandas(frame, npartitions=8)
    exprs = (df.v.sum(), df.groupby("k").v.mean(), df.k.value_counts(), df[df.v > 100].v.max())
    ours = dask.compute(*exprs, scheduler=qd.get)
    theirs = dask.compute(*exprs, scheduler="threads")
    assert ours[0] == theirs[0]
    pd.testing.assert_series_equal(ours[1], theirs[1])
    pd.testing.assert_series_equal(ours[2].sort_index(), theirs[2].sort_index())
    assert ours[3] == theirs[3] == 399


def test_config_set_scheduler_runs_delayed_on_the_partitioner():
    """dask.config.set(scheduler=sched.get) runs delayed calls as units of sched.last_run."""
    sched = qd.Scheduler()
    total = dask.delayed(sum)([dask.delayed(inc)(i) for i in range(10)])
    with dask.config.set(scheduler=sched.get):
        assert total.compute() == 55
    assert sched.last_run is not None
    states = {unit.state for unit in sched.last_run.units.values()}
    assert len(sched.last_run.units) == 11
    assert states == {UnitState.COMPLETED}


def test_task_spec_nodes_run_as_units():
    """Task, Alias and DataNode graphs (the installed Dask's own nodes) compute as Dask does."""
    graph = {
        "a": DataNode("a", 10),
        "b": Task("b", inc, TaskRef("a")),
        "c": Alias("c", "b"),
        "d": Task("d", add, TaskRef("c"), Task("inner", inc, TaskRef("a"))),
    }
    sched = qd.Scheduler()
    assert sched.get(graph, ["d", "c", "a"]) == (22, 11, 10) == dask.get(graph, ["d", "c", "a"])
    # The data node is a value, not a unit; every task is one unit.
    assert sched.last_run is not None
    assert sorted(sched.last_run.units) == ["b", "c", "d"]
    assert sched.last_run.units["d"].dependencies == ["c"]


def test_tuple_and_int_keys_map_to_unit_names_and_back():
    """Tuple and int keys become distinct unit names; results come back in Dask's nesting."""
    graph = {
        ("x", 0): 1,
        ("x", 1): (inc, ("x", 0)),
        "('x', 1)": (inc, 100),  # the string that a tuple key's name would be
        7: (add, ("x", 1), "('x', 1)"),
    }
    sched = qd.Scheduler()
    result = sched.get(graph, [[7, ("x", 1)], ["('x', 1)"]])
    assert result == ((103, 2), (101,))
    names = sched.last_names
    assert len(set(names.values())) == len(names) == 4
    assert names[("x", 1)] != names["('x', 1)"]
    assert sched.last_run is not None
    assert sched.last_run.units[names[7]].result == 103
    assert sorted(sched.last_run.units[names[7]].dependencies) == sorted(
        [names[("x", 1)], names["('x', 1)"]]
    )


def test_failing_task_reraises_its_exception_and_cancels_the_rest():
    """The first failure is raised as itself, with its traceback; nothing else starts."""
    started = []

    def boom(_):
        raise ZeroDivisionError("boom in task")

    def record(x):
        started.append(x)
        return x

    graph = {"a": 1, "bad": (boom, "a"), "after": (record, "bad")}
    graph |= {f"other{i}": (record, "a") for i in range(5)}  # independent of "bad"
    sched = qd.Scheduler(execution_mode="sequential")
    with pytest.raises(ZeroDivisionError, match="boom in task") as info:
        sched.get(graph, list(graph))
    assert any(entry.name == "boom" for entry in info.traceback)
    assert started == []
    assert sched.last_run is not None
    assert sched.last_run.units["bad"].state is UnitState.FAILED


def test_failure_in_thread_mode_reraises_original_exception_object():
    """THREAD mode raises the very exception object the task raised."""
    raised = []

    def boom():
        error = KeyError("not a missing key: a task's own KeyError")
        raised.append(error)
        raise error

    with pytest.raises(KeyError) as info:
        dask.compute(dask.delayed(boom)(), scheduler=qd.get)
    assert info.value is raised[0]


def test_cancelling_last_run_raises_unit_cancelled_error():
    """last_run.cancel() during a computation makes get raise UnitCancelledError."""
    sched = qd.Scheduler(execution_mode="sequential")

    def cancel(_):
        sched.last_run.cancel()
        return 1

    graph = {"first": (cancel, 0), "second": (inc, "first"), "third": (inc, "second")}
    with pytest.raises(UnitCancelledError, match="third"):
        sched.get(graph, ["first", "third"])


def test_progress_learns_costs_per_task_function():
    """With progress=True, each unit's kind (for the ETA) is its task's function."""
    sched = qd.Scheduler(progress=True)
    tasks = [dask.delayed(inc)(i) for i in range(3)]
    dask.compute(dask.delayed(sum)(tasks), scheduler=sched.get)
    assert sched.last_run is not None
    kinds = {unit_kind(unit) for unit in sched.last_run.units.values()}
    assert inc.__code__ in kinds  # the three inc tasks are one kind, the sum another
    assert len(kinds) == 2


def test_missing_key_raises_before_any_task_runs():
    """A requested key that is not in the graph raises KeyError naming it; nothing runs."""
    ran = []
    graph = {"x": (ran.append, 1)}
    with pytest.raises(KeyError, match="nope"):
        qd.get(graph, ["x", "nope"])
    assert ran == []


def test_only_the_tasks_the_keys_need_run():
    """Tasks no requested key depends on are not units and do not run."""

    def fail():
        raise AssertionError("must not run")

    sched = qd.Scheduler()
    assert sched.get({"x": (inc, 1), "y": (fail,), "z": (inc, "x")}, "z") == 3
    assert sched.last_run is not None
    assert sorted(sched.last_run.units) == ["x", "z"]


def test_cycle_and_missing_dependency_are_reported_before_running():
    """A cyclic graph raises CircularDependencyError; a dangling reference a ValueError."""
    with pytest.raises(CircularDependencyError, match="'a'"):
        qd.get({"a": (inc, "b"), "b": (inc, "a")}, "a")
    with pytest.raises(ValueError, match="'ghost'"):
        qd.get({"a": Task("a", inc, TaskRef("ghost"))}, "a")


def test_execution_mode_and_worker_options_are_forwarded():
    """execution_mode=, max_workers= and Dask's num_workers= reach the partitioner."""
    threads: set[str] = set()

    def where(i):
        threads.add(threading.current_thread().name)
        return i

    tasks = [dask.delayed(where)(i) for i in range(20)]
    assert dask.compute(*tasks, scheduler=qd.get, execution_mode="sequential") == tuple(range(20))
    assert threads == {threading.current_thread().name}
    threads.clear()
    dask.compute(*tasks, scheduler=qd.get, max_workers=1)
    assert len(threads) == 1
    assert threads != {threading.current_thread().name}
    threads.clear()
    dask.compute(*tasks, scheduler=qd.get, num_workers=1)
    assert len(threads) == 1
    threads.clear()
    sched = qd.Scheduler(max_workers=1)
    dask.compute(*tasks, scheduler=sched.get, execution_mode="sequential")  # per computation
    assert threads == {threading.current_thread().name}
    with pytest.raises(ValueError, match="max_workers"):
        qd.Scheduler(max_workers=0)
    with pytest.raises(ValueError, match="CUSTOM"):
        qd.Scheduler(execution_mode=ExecutionMode.CUSTOM)


@pytest.mark.parametrize("mode", ["sequential", "thread", "process", "async"])
def test_every_mode_runs_a_collection(mode):
    """Each mode runs a bag of lambdas (PROCESS sends them to worker processes)."""
    bag = db.from_sequence(range(10), npartitions=2).map(lambda v: v * v)
    assert dask.compute(bag.sum(), scheduler=qd.get, execution_mode=mode, max_workers=2) == (285,)


def reciprocal(x):
    return 1 / x


@pytest.mark.parametrize("mode", ["sequential", "thread", "process", "async"])
def test_every_mode_raises_the_tasks_own_exception(mode):
    """In each mode a failing task's exception comes back as itself, traceback included."""
    with pytest.raises(ZeroDivisionError) as info:
        dask.compute(dask.delayed(reciprocal)(0), scheduler=qd.get, execution_mode=mode)
    assert info.traceback[-1].name == "reciprocal"


def test_last_run_exports_trace_report_and_timings(tmp_path):
    """Scheduler(trace=True) keeps the run: Chrome trace, HTML report, per-task timings."""
    sched = qd.Scheduler(trace=True, max_workers=2)
    bag = db.from_sequence(range(100), npartitions=4).map(inc)
    assert dask.compute(bag.sum(), scheduler=sched.get) == (5050,)
    run = sched.last_run
    assert run is not None
    trace = json.loads(run.export_trace(tmp_path / "trace.json").read_text())
    sliced = {event["name"] for event in trace["traceEvents"] if event.get("ph") == "X"}
    assert set(run.units) <= sliced
    assert run.write_report(tmp_path / "report.html").stat().st_size > 0
    metrics = run.last_execution_metrics
    assert metrics is not None
    assert set(metrics["unit_times"]) == set(run.units)


def test_import_without_dask_names_the_extra():
    """Importing quantum_partitioner.dask without Dask raises ImportError naming the extra."""
    code = textwrap.dedent(
        """
        import sys

        class NoDask:
            def find_spec(self, name, path=None, target=None):
                if name == "dask" or name.startswith("dask."):
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoDask())
        import quantum_partitioner  # the package itself needs no Dask
        try:
            import quantum_partitioner.dask
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("imported without dask")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'quantum-partitioner[dask]'" in result.stdout
