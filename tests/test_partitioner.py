"""The original QuantumPartitioner API: building a graph, execute() and its variants, results.

Behaviour shared by every mode lives in tests/backends/test_contract.py; this file covers the
API surface, mostly in SEQUENTIAL mode (deterministic) or the default THREAD mode.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType

import pytest

from quantum_partitioner import (
    DuplicateUnitError,
    ExecutionMode,
    ExecutionPlan,
    ExponentialBackoff,
    Instrument,
    QuantumPartitioner,
    QuantumUnit,
    RetryPolicy,
    RunFinished,
    RunStarted,
    TaskError,
    UnitCancelledError,
    UnitFailed,
    UnitFinished,
    UnitSkipped,
    UnitStarted,
    UnitState,
    UnknownDependencyError,
)
from quantum_partitioner.backends import ExecutorBackend, SequentialBackend

SEQ = ExecutionMode.SEQUENTIAL
ORIGINAL_METRIC_KEYS = {
    "start_time",
    "end_time",
    "total_duration",
    "unit_times",
    "total_units",
    "completed_units",
    "failed_units",
    "execution_trace",
}


def exploding_unit(ctx):
    raise ValueError(f"{ctx.unit_id} exploded")


class CallLog:
    """Records which units ran, in order, from any thread."""

    def __init__(self):
        self.names = []
        self.lock = threading.Lock()

    def unit(self, value=None):
        def fn(ctx):
            with self.lock:
                self.names.append(ctx.unit_id)
            return ctx.unit_id if value is None else value

        return fn


# -- building the graph ----------------------------------------------------------------------


def test_add_unit_returns_the_unit():
    """add_unit(fn, deps, name, ...) returns a QuantumUnit with those fields."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")

    unit = p.add_unit(
        exploding_unit,
        ["a"],
        "b",
        timeout=2.5,
        retries=2,
        priority=3,
        metadata={"resource_type": "io"},
    )

    assert isinstance(unit, QuantumUnit)
    assert p.units["b"] is unit
    assert (unit.id, unit.function, unit.dependencies) == ("b", exploding_unit, ["a"])
    assert (unit.timeout, unit.retries, unit.priority) == (2.5, 2, 3)
    assert unit.metadata == {"resource_type": "io"}


def test_add_unit_as_decorator_names_the_unit_after_the_function():
    """@add_unit(...) adds the function under its __name__ and returns it unchanged."""
    p = QuantumPartitioner()

    @p.add_unit()
    def load(ctx):
        return [1, 2]

    @p.add_unit(dependencies=["load"])
    def total(ctx):
        return sum(ctx["load"])

    @p.add_unit(dependencies=["load"], name="custom_name")
    def renamed(ctx):
        return len(ctx["load"])

    assert list(p.units) == ["load", "total", "custom_name"]
    assert p.units["total"].function is total
    assert load([3]) == [1, 2]  # still a plain function
    assert p.execute({}, SEQ) == {"load": [1, 2], "total": 3, "custom_name": 2}
    assert renamed.__name__ == "renamed"


def test_add_unit_without_name_uses_unit_n():
    """Units added without a name are called unit_0, unit_1, ... (the original API's rule)."""
    p = QuantumPartitioner()

    first = p.add_unit(lambda ctx: 0)
    second = p.add_unit(lambda ctx: 1)
    p.add_unit(lambda ctx: 2, name="named")
    fourth = p.add_unit(lambda ctx: 3)

    assert (first.id, second.id, fourth.id) == ("unit_0", "unit_1", "unit_3")
    assert p.execute({}, SEQ) == {"unit_0": 0, "unit_1": 1, "named": 2, "unit_3": 3}


def test_add_unit_without_name_after_remove_picks_a_free_name():
    """An unnamed unit added after a removal gets a name no unit has; nothing is replaced."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 0)  # unit_0
    p.add_unit(lambda ctx: 1)  # unit_1
    p.remove_unit("unit_0")

    third = p.add_unit(lambda ctx: 2)  # len(units) == 1, but unit_1 is taken

    assert third.id.startswith("unit_")
    assert third.id != "unit_1"
    assert p.execute({}, SEQ) == {"unit_1": 1, third.id: 2}


def test_decorated_lambda_falls_back_to_unit_n():
    """A lambda given to the decorator form has no usable __name__: it becomes unit_<n>."""
    p = QuantumPartitioner()

    p.add_unit()(lambda ctx: 1)

    assert list(p.units) == ["unit_0"]


def test_original_unit_helpers_can_execute_and_execution_time():
    """QuantumUnit.can_execute(completed) and .execution_time behave as in the original API."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    b = p.add_unit(lambda ctx: 2, ["a"], name="b")

    assert not b.can_execute(set())
    assert b.can_execute({"a"})
    assert b.can_execute(["a", "other"])
    assert b.execution_time is None
    p.execute({}, SEQ)
    assert b.execution_time == b.get_execution_time()
    assert b.execution_time >= 0


def test_duplicate_name_raises_unless_replace():
    """Adding a second unit under a taken name raises DuplicateUnitError naming it."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "old", name="a")

    with pytest.raises(DuplicateUnitError, match="'a'"):
        p.add_unit(lambda ctx: "new", name="a")

    assert p.execute({}, SEQ) == {"a": "old"}


def test_replace_true_replaces_the_unit():
    """replace=True swaps the unit of that name; the next run uses the new function."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "old", name="a")
    p.add_unit(lambda ctx: ctx["a"] + "!", ["a"], name="b")
    assert p.execute({}, SEQ) == {"a": "old", "b": "old!"}

    p.add_unit(lambda ctx: "new", name="a", replace=True)

    assert list(p.units) == ["a", "b"]
    assert p.execute({}, SEQ) == {"a": "new", "b": "new!"}


def test_remove_unit_returns_it_and_drops_it_from_runs():
    """remove_unit(name) returns the unit; later runs no longer include it."""
    p = QuantumPartitioner()
    a = p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, name="b")
    p.execute({}, SEQ)

    removed = p.remove_unit("a")

    assert removed is a
    assert list(p.units) == ["b"]
    assert p.execute({}, SEQ) == {"b": 2}
    assert p.build_execution_plan().levels == [["b"]]


def test_remove_unknown_unit_raises_key_error():
    """remove_unit of a name that is no unit raises KeyError naming it."""
    p = QuantumPartitioner()

    with pytest.raises(KeyError, match="nope"):
        p.remove_unit("nope")


def test_build_execution_plan_is_cached_until_units_change():
    """build_execution_plan() returns the same plan until add_unit/remove_unit."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, ["a"], name="b")

    plan = p.build_execution_plan()

    assert isinstance(plan, ExecutionPlan)
    assert p.build_execution_plan() is plan
    assert plan.levels == [["a"], ["b"]]

    p.add_unit(lambda ctx: 3, ["b"], name="c")
    new_plan = p.build_execution_plan()

    assert new_plan is not plan
    assert new_plan.levels == [["a"], ["b"], ["c"]]
    assert new_plan.critical_path == ["a", "b", "c"]

    p.remove_unit("c")

    assert p.build_execution_plan() is not new_plan
    assert p.build_execution_plan().levels == [["a"], ["b"]]


def test_execute_uses_the_current_units_after_a_change():
    """execute() after add_unit runs the new unit too (the cached plan is not reused)."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.build_execution_plan()
    p.execute({}, SEQ)

    p.add_unit(lambda ctx: ctx["a"] + 1, ["a"], name="b")

    assert p.execute({}, SEQ) == {"a": 1, "b": 2}


def test_a_unit_changed_after_a_run_or_a_plan_orders_the_next_ones():
    """priority, metadata and dependencies assigned after a run: the next plan and run see them."""
    order: list[str] = []
    p = QuantumPartitioner()
    for name in "xyz":
        p.add_unit(lambda ctx, name=name: order.append(name), name=name)
    p.execute({}, SEQ)
    assert order == ["x", "y", "z"]
    assert p.build_execution_plan().critical_path == ["x"]

    p.units["z"].priority = 1
    order.clear()
    p.execute({}, SEQ)
    assert order == ["z", "x", "y"]

    p.units["x"].metadata = {"estimated_duration": 1.0}
    p.units["y"].metadata = {"estimated_duration": 5.0}
    assert p.build_execution_plan().critical_path == ["y"]
    p.units["z"].dependencies = ["x"]
    assert p.build_execution_plan().levels == [["x", "y"], ["z"]]
    p.units["z"].dependencies = ["nowhere"]
    for _ in range(2):  # not once, then the graph compiled before the change
        with pytest.raises(UnknownDependencyError, match="nowhere"):
            p.execute({}, SEQ)


def test_a_unit_changed_during_a_run_is_seen_by_the_next_run_not_this_one():
    """A callback assigning an option and asking for the plan mid-run: the run's graph and
    its units' states stay; the next run uses the new value."""
    order: list[str] = []
    p = QuantumPartitioner()
    for name in "xyz":
        p.add_unit(lambda ctx, name=name: order.append(name), name=name)
    plans = []

    def change(unit_id, result):
        if unit_id == "x":
            p.units["z"].priority = 1
            plans.append(p.build_execution_plan())

    p.on_unit_complete = change
    p.execute({}, SEQ)
    assert order == ["x", "y", "z"]
    assert all(unit.state is UnitState.COMPLETED for unit in p.units.values())
    order.clear()
    p.execute({}, SEQ)
    assert order == ["z", "x", "y"]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("timeout", -1, ValueError),
        ("retries", -2, ValueError),
        ("priority", "high", TypeError),
        ("metadata", [1], TypeError),
        ("dependencies", "a", TypeError),
        ("condition", 5, TypeError),
        ("limits", {"db": 0}, ValueError),
        ("limits", "db", TypeError),
    ],
)
def test_a_bad_value_assigned_between_runs_is_refused_before_any_unit_runs(field, value, error):
    """Checked as add_unit checks it, naming the unit, when the next run or plan starts."""
    ran: list[str] = []
    p = QuantumPartitioner()
    p.add_limit("db", concurrency=1)
    p.add_unit(lambda ctx: ran.append("a"), name="a")
    unit = p.add_unit(lambda ctx: ran.append("b"), ["a"], name="b")
    p.execute({}, SEQ)
    ran.clear()

    setattr(unit, field, value)
    with pytest.raises(error, match="'b'"):
        p.execute({}, SEQ)
    with pytest.raises(error, match="'b'"):
        p.build_execution_plan()
    assert ran == []


def test_a_unit_put_into_or_deleted_from_the_units_dict_is_seen_by_the_next_run():
    """The original API's ``units`` dict given a new unit or losing one after a run: the
    next run (and plan) has the units it holds now, checked as add_unit checks one."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, name="gone")
    assert p.execute({}, SEQ) == {"a": 1, "gone": 2}

    del p.units["gone"]
    assert p.execute({}, SEQ) == {"a": 1}
    p.units["b"] = QuantumUnit("b", lambda ctx: ctx["a"] + 1, ["a"])
    assert p.execute({}, SEQ) == {"a": 1, "b": 2}
    assert p.build_execution_plan().levels == [["a"], ["b"]]
    p.units["bad"] = QuantumUnit("bad", lambda ctx: 3, timeout=-1)
    with pytest.raises(ValueError, match="'bad'"):
        p.execute({}, SEQ)


def test_a_unit_deleted_and_another_put_in_or_one_put_in_a_units_place_is_seen():
    """As many units as before, but other ones (one deleted, one put in; one put under the
    key of another): the next run runs those the dict holds, not the ones it held."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, name="gone")
    assert p.execute({}, SEQ) == {"a": 1, "gone": 2}

    del p.units["gone"]
    p.units["b"] = QuantumUnit("b", lambda ctx: 3)
    assert p.execute({}, SEQ) == {"a": 1, "b": 3}
    assert {name: unit.state for name, unit in p.units.items()} == {
        "a": UnitState.COMPLETED,
        "b": UnitState.COMPLETED,
    }
    p.units["a"] = QuantumUnit("a", lambda ctx: 4)
    assert p.execute({}, SEQ) == {"a": 4, "b": 3}


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (None, TypeError, r"units\['c'\] must be a QuantumUnit, got None"),
        (QuantumUnit("other", exploding_unit), ValueError, r"units\['c'\] holds the unit 'other'"),
    ],
)
def test_what_is_put_into_the_units_dict_is_a_unit_under_its_name(value, error, message):
    """Something that is no unit, or a unit under another name's key: a clear error."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.execute({}, SEQ)
    p.units["c"] = value
    with pytest.raises(error, match=message):
        p.execute({}, SEQ)


def test_a_join_rule_assigned_by_name_counts_as_run_if_does():
    """``unit.run_if = "all_done"`` between runs: the rule of that name, as ``run_if=``."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1 / 0, name="broken")
    after = p.add_unit(lambda ctx: "ran", ["broken"], name="after")
    p.execute({}, SEQ)
    after.run_if = "all_done"
    assert p.execute({}, SEQ) == {"after": "ran"}
    after.run_if = "sometimes"
    with pytest.raises(ValueError, match="'after'"):
        p.execute({}, SEQ)


def test_limits_assigned_as_a_list_count_as_add_unit_counts_them():
    """``unit.limits = ["db", "db"]`` between runs takes two slots, as ``limits=`` would."""
    p = QuantumPartitioner()
    p.add_limit("db", concurrency=2)
    unit = p.add_unit(lambda ctx: 1, name="a")
    p.execute({}, SEQ)
    unit.limits = ["db", "db"]
    assert p.execute({}, SEQ) == {"a": 1}
    assert unit.limits == {"db": 2}
    unit.limits = ["db", "db", "db"]
    with pytest.raises(ValueError, match="'a'"):
        p.execute({}, SEQ)


def test_setting_an_option_on_one_unit_leaves_every_other_as_it_was():
    """Units share their default options record: writing one gives that unit its own."""
    p = QuantumPartitioner()
    a = p.add_unit(lambda ctx: 1, name="a")
    b = p.add_unit(lambda ctx: 2, name="b")
    plain = QuantumUnit("plain", len)
    limited = p.add_unit(lambda ctx: 3, name="limited", limits={"db": 1})
    a.timeout, a.retries, a.priority, a.limits = 1.0, 2, 3, {"api": 1}
    limited.limits["db"] = 2

    assert (b.timeout, b.retries, b.priority, b.limits) == (None, 0, 0, None)
    assert (plain.timeout, plain.retries, plain.priority, plain.limits) == (None, 0, 0, None)
    assert (a.timeout, a.retries, a.priority, a.limits) == (1.0, 2, 3, {"api": 1})
    assert p.add_unit(lambda ctx: 4, name="later", limits={"db": 1}).limits == {"db": 1}


# -- execute() argument validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        pytest.param({"context": [("x", 1)]}, TypeError, id="context-list"),
        pytest.param({"context": "x=1"}, TypeError, id="context-str"),
        pytest.param({"context": {}, "max_workers": 0}, ValueError, id="max-workers-0"),
        pytest.param({"context": {}, "max_workers": -2}, ValueError, id="max-workers-negative"),
        pytest.param({"context": {}, "max_workers": 2.5}, TypeError, id="max-workers-float"),
        pytest.param({"context": {}, "max_workers": "4"}, TypeError, id="max-workers-str"),
        pytest.param({"context": {}, "max_workers": True}, TypeError, id="max-workers-bool"),
        pytest.param({"context": {}, "execution_mode": "bogus"}, ValueError, id="mode-unknown"),
        pytest.param({"context": {}, "execution_mode": 3}, ValueError, id="mode-int"),
    ],
)
def test_execute_validates_arguments_before_any_unit_runs(arguments, error):
    """Bad execute() arguments raise before any unit runs and leave no run behind."""
    log = CallLog()
    p = QuantumPartitioner()
    p.add_unit(log.unit(), name="a")
    p.add_unit(log.unit(), ["a"], name="b")

    with pytest.raises(error):
        p.execute(**arguments)

    assert log.names == []
    assert p.units["a"].state is UnitState.PENDING
    assert p.last_execution_metrics is None
    assert p.execute({}, SEQ) == {"a": "a", "b": "b"}  # the partitioner is still usable


def test_invalid_graph_raises_before_any_unit_runs():
    """An unknown dependency is reported by execute() before any unit runs."""
    log = CallLog()
    p = QuantumPartitioner()
    p.add_unit(log.unit(), name="a")
    p.add_unit(log.unit(), ["missing"], name="b")

    with pytest.raises(ValueError, match="missing"):
        p.execute({})

    assert log.names == []


def test_execution_mode_may_be_given_by_name():
    """execute() accepts a mode's value ("sequential") as well as the enum member."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx.environment["execution_mode"], name="mode")

    assert p.execute({}, "sequential") == {"mode": "sequential"}
    assert p.execute({}, "THREAD") == {"mode": "thread"}


def test_context_may_be_any_mapping():
    """A read-only mapping (not a dict) is a valid context."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"] + 1, name="a")

    assert p.execute(MappingProxyType({"x": 1}), SEQ) == {"a": 2}


def test_context_none_means_empty_context():
    """execute() without a context gives units an empty one."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: {**ctx}, name="a")

    assert p.execute() == {"a": {}}


def test_constructor_rejects_bad_max_workers():
    """QuantumPartitioner(max_workers=0) raises ValueError at once."""
    with pytest.raises(ValueError, match="max_workers"):
        QuantumPartitioner(max_workers=0)


# -- metrics and the original API's execute variants -----------------------------------------


def test_last_execution_metrics_has_the_original_keys_after_execute():
    """A plain execute() fills last_execution_metrics with the original API's keys and counts."""
    p = QuantumPartitioner()
    assert p.last_execution_metrics is None
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: 2, ["a"], name="b")
    p.add_unit(exploding_unit, name="boom")

    p.execute({})

    metrics = p.last_execution_metrics
    assert set(metrics) >= ORIGINAL_METRIC_KEYS
    assert metrics["total_units"] == 3
    assert metrics["completed_units"] == 2
    assert metrics["failed_units"] == 1
    assert metrics["end_time"] >= metrics["start_time"]
    duration = metrics["end_time"] - metrics["start_time"]
    assert metrics["total_duration"] == pytest.approx(duration, abs=1e-3)
    assert set(metrics["unit_times"]) == {"a", "b", "boom"}
    assert metrics["unit_times"]["a"]["duration"] >= 0
    assert "error" in metrics["unit_times"]["boom"]
    events = {(e["event"], e["unit"]) for e in metrics["execution_trace"]}
    assert {("start", "a"), ("complete", "a"), ("complete", "b"), ("error", "boom")} <= events
    times = [e["time"] for e in metrics["execution_trace"]]
    assert times == sorted(times)


def test_execution_trace_records_every_attempt_in_order():
    """execution_trace lists each attempt's start, each retry, and the outcome, in time order."""

    def flaky(ctx):
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return "ok"

    fast = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
    p = QuantumPartitioner(retry_policy=fast)
    p.add_unit(flaky, name="flaky", retries=2)

    p.execute({}, SEQ)

    trace = [(e["event"], e.get("attempt")) for e in p.last_execution_metrics["execution_trace"]]
    assert trace == [
        ("start", 1),
        ("retry", 1),
        ("start", 2),
        ("retry", 2),
        ("start", 3),
        ("complete", None),
    ]
    assert p.last_execution_metrics["unit_times"]["flaky"]["attempts"] == 3


def test_execute_with_monitoring_returns_results_and_metrics():
    """execute_with_monitoring(ctx) runs the graph and leaves the original API's metrics."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: ctx["n"], name="a")
    p.add_unit(lambda ctx: ctx["a"] * 2, ["a"], name="b")

    results = p.execute_with_monitoring({"n": 4})

    assert results == {"a": 4, "b": 8}
    metrics = p.last_execution_metrics
    assert set(metrics) >= ORIGINAL_METRIC_KEYS
    assert metrics["completed_units"] == 2
    assert metrics["execution_mode"] == "thread"


def test_execute_with_recovery_uses_fallbacks_and_returns_partial_results():
    """execute_with_recovery(ctx) does not raise; fallbacks feed dependents, others skip."""
    p = QuantumPartitioner()
    p.add_unit(exploding_unit, name="fetch", metadata={"fallback_value": []})
    p.add_unit(lambda ctx: len(ctx["fetch"]), ["fetch"], name="count")
    p.add_unit(exploding_unit, name="hard")
    p.add_unit(lambda ctx: 1, ["hard"], name="after_hard")

    results = p.execute_with_recovery({})

    assert results == {"fetch": [], "count": 0}
    assert p.units["after_hard"].state is UnitState.SKIPPED
    assert set(p.get_failed_units()) == {"fetch", "hard"}


def test_execute_with_strategy_priority_runs_higher_priority_first():
    """execute_with_strategy(ctx, "priority") starts ready units by descending priority."""
    log = CallLog()
    p = QuantumPartitioner()
    p.add_unit(log.unit(), name="low", priority=1)
    p.add_unit(log.unit(), name="high", priority=9)
    p.add_unit(log.unit(), name="mid", priority=5)

    results = p.execute_with_strategy({}, "priority", execution_mode=SEQ)

    assert results == {"low": "low", "high": "high", "mid": "mid"}
    assert log.names == ["high", "mid", "low"]


def test_execute_with_strategy_priority_on_one_thread():
    """With one worker thread, "priority" starts ready units by descending priority too."""
    log = CallLog()
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(log.unit(), name="low", priority=-1)
    p.add_unit(log.unit(), name="default")
    p.add_unit(log.unit(), name="high", priority=7)

    p.execute_with_strategy({}, "priority", execution_mode=ExecutionMode.THREAD)

    assert log.names == ["high", "default", "low"]


def test_execute_with_strategy_priority_in_default_mode():
    """The "priority" strategy runs every unit in the default mode too."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: 1, name="a", priority=2)
    p.add_unit(lambda ctx: ctx["a"] + 1, ["a"], name="b")

    assert p.execute_with_strategy({}, "priority") == {"a": 1, "b": 2}


def test_execute_with_unknown_strategy_raises_value_error():
    """An unknown strategy name raises ValueError listing the known ones; nothing runs."""
    log = CallLog()
    p = QuantumPartitioner()
    p.add_unit(log.unit(), name="a")

    with pytest.raises(ValueError, match="priority"):
        p.execute_with_strategy({}, "fastest")

    assert log.names == []


# -- results of the last run -----------------------------------------------------------------


def test_partial_and_failed_units_before_any_run_are_empty():
    """Before a run, get_partial_results() and get_failed_units() are empty."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")

    assert p.get_partial_results() == {}
    assert p.get_failed_units() == {}


def test_get_partial_results_and_get_failed_units_after_a_run():
    """After a run with failures, the partitioner reports what completed and what failed."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "ok", name="ok")
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: 1, ["boom"], name="skipped")

    with pytest.raises(TaskError):
        p.execute({}, SEQ, raise_on_error=True)

    assert p.get_partial_results() == {"ok": "ok"}
    failed = p.get_failed_units()
    assert list(failed) == ["boom"]
    assert isinstance(failed["boom"], ValueError)
    assert p.completed_units == {"ok"}
    assert p.failed_units == {"boom"}


def test_completed_and_failed_units_describe_the_last_finished_run():
    """During a run they still name the previous run's units; after it, this run's."""
    p = QuantumPartitioner()
    assert (p.completed_units, p.failed_units) == (set(), set())
    p.add_unit(lambda ctx: "ok", name="ok")
    p.add_unit(exploding_unit, name="boom")
    p.execute({}, SEQ)
    p.add_unit(lambda ctx: "late", ["ok"], name="late")
    seen = []
    p.on_unit_start = lambda unit_id: seen.append((set(p.completed_units), set(p.failed_units)))
    p.execute({}, SEQ)
    assert seen[0] == ({"ok"}, {"boom"})
    assert (p.completed_units, p.failed_units) == ({"ok", "late"}, {"boom"})


def test_concurrent_execute_on_one_partitioner_raises_runtime_error():
    """A second execute() while one runs raises RuntimeError; the first run is unaffected."""
    started = threading.Event()
    release = threading.Event()

    def blocking(ctx):
        started.set()
        release.wait(30)
        return "first"

    p = QuantumPartitioner()
    p.add_unit(blocking, name="blocking")
    outcome = {}

    def first_run():
        outcome["results"] = p.execute({}, ExecutionMode.THREAD)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert started.wait(10)
        with pytest.raises(RuntimeError, match="already executing"):
            p.execute({}, SEQ)
    finally:
        release.set()
        thread.join(10)

    assert outcome["results"] == {"blocking": "first"}
    assert p.execute({}, SEQ) == {"blocking": "first"}  # usable again afterwards


# -- instruments and interrupts --------------------------------------------------------------


class Recording(Instrument):
    """Keeps every event it receives."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def _keep(self, event):
        with self.lock:
            self.events.append(event)

    run_started = _keep
    unit_started = _keep
    unit_finished = _keep
    unit_failed = _keep
    unit_skipped = _keep
    unit_cancelled = _keep
    run_finished = _keep

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_instrument_subclass_receives_events():
    """An Instrument passed to the partitioner receives run and unit events with their data."""
    recording = Recording()
    p = QuantumPartitioner(instruments=[recording])
    p.add_unit(lambda ctx: 10, name="a")
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: 1, ["boom"], name="skipped")

    p.execute({}, SEQ)

    [started] = recording.of(RunStarted)
    assert (started.total_units, started.execution_mode) == (3, "sequential")
    assert {e.unit_id for e in recording.of(UnitStarted)} == {"a", "boom"}
    [finished] = recording.of(UnitFinished)
    assert (finished.unit_id, finished.result, finished.attempt) == ("a", 10, 1)
    assert finished.duration >= 0
    [failed] = recording.of(UnitFailed)
    assert (failed.unit_id, failed.state, failed.has_fallback) == ("boom", UnitState.FAILED, False)
    assert isinstance(failed.error, ValueError)
    [skipped] = recording.of(UnitSkipped)
    assert skipped.unit_id == "skipped"
    [done] = recording.of(RunFinished)
    assert (done.total_units, done.completed, done.failed, done.skipped) == (3, 1, 1, 1)
    assert recording.events[0] is started
    assert recording.events[-1] is done


def test_instrument_rejects_non_instruments():
    """instruments= accepts only Instrument objects."""
    with pytest.raises(TypeError, match="Instrument"):
        QuantumPartitioner(instruments=[object()])


def test_keyboard_interrupt_in_a_unit_cancels_the_rest_and_propagates():
    """Ctrl-C inside a unit (SEQUENTIAL): the rest is CANCELED, results kept, it propagates."""
    log = CallLog()

    def interrupted(ctx):
        raise KeyboardInterrupt

    p = QuantumPartitioner()
    p.add_unit(log.unit("first"), name="first", priority=3)
    p.add_unit(interrupted, name="interrupted", priority=2)
    p.add_unit(log.unit(), name="never", priority=1)
    p.add_unit(log.unit(), ["first"], name="never_either")

    with pytest.raises(KeyboardInterrupt):
        p.execute({}, SEQ)

    assert log.names == ["first"]
    assert p.get_partial_results() == {"first": "first"}
    assert p.units["first"].state is UnitState.COMPLETED
    for name in ("interrupted", "never", "never_either"):
        assert p.units[name].state is UnitState.CANCELED
        assert isinstance(p.units[name].error, UnitCancelledError)
    p.add_unit(lambda ctx: "calm", name="interrupted", replace=True)
    assert p.execute({}, SEQ)["interrupted"] == "calm"  # the partitioner can run again


class _InterruptOnce(Instrument):
    """Raises KeyboardInterrupt from one run hook, the first time only."""

    def __init__(self, hook):
        self.hook = hook
        self.armed = True

    def _maybe_interrupt(self, hook):
        if hook == self.hook and self.armed:
            self.armed = False
            raise KeyboardInterrupt

    def run_started(self, event):
        self._maybe_interrupt("run_started")

    def run_finished(self, event):
        self._maybe_interrupt("run_finished")


@pytest.mark.parametrize("runner", ["execute", "aexecute"])
@pytest.mark.parametrize("hook", ["run_started", "run_finished"])
def test_interrupt_in_a_run_hook_leaves_the_partitioner_usable(hook, runner):
    """Issue 9 #6: a run hook's KeyboardInterrupt is re-raised; no unit is left PENDING."""
    p = QuantumPartitioner(instruments=[_InterruptOnce(hook)])
    p.add_unit(lambda ctx: 1, name="a")

    def run():
        if runner == "execute":
            return p.execute({}, SEQ)
        return asyncio.run(p.aexecute({}))

    with pytest.raises(KeyboardInterrupt):
        run()
    expected = UnitState.CANCELED if hook == "run_started" else UnitState.COMPLETED
    assert p.units["a"].state is expected
    assert run() == {"a": 1}  # no longer "already executing"


def test_an_interrupt_as_a_run_begins_before_its_backend_claims_it_frees_the_partitioner(
    monkeypatch,
):
    """A KeyboardInterrupt as the run's clock starts (before its backend is claimed and any
    event): the run is refused like one its backend refused, and the next one runs."""
    from quantum_partitioner._run import Run  # noqa: PLC0415 - the method interrupted

    begin = Run.begin

    def interrupted(run):
        monkeypatch.setattr(Run, "begin", begin)
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "begin", interrupted)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    with pytest.raises(KeyboardInterrupt):
        p.execute({}, SEQ)
    assert p.execute({}, SEQ) == {"a": 1}  # not "already executing"


@pytest.mark.parametrize("runner", ["execute", "aexecute"])
def test_an_interrupt_at_the_first_call_after_the_backend_claimed_the_run_frees_both(runner):
    """Python raises a pending KeyboardInterrupt as a function is entered: at the first call
    after the backend claimed the run, cleanup must already be armed (else the partitioner
    stays "already executing", and a backend that takes one run at a time stays taken)."""
    pool = ThreadPoolExecutor(2)
    backend = ExecutorBackend(pool, 2)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    state = {"claimed": False, "fired": False}

    def in_claim(frame, event, arg):
        if event == "return":
            state["claimed"] = True
        return in_claim

    def tracer(frame, event, arg):
        if event != "call":
            return None
        if frame.f_code.co_name == "claim" and "backends" in frame.f_code.co_filename:
            return in_claim
        if state["claimed"] and not state["fired"]:
            state["fired"] = True
            raise KeyboardInterrupt
        return None

    def run():
        if runner == "execute":
            return p.execute({}, backend=backend)
        return asyncio.run(p.aexecute({}))

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        sys.settrace(None)
    try:
        assert state["fired"]
        assert run() == {"a": 1}  # neither the partitioner nor the backend is still taken
    finally:
        pool.shutdown()


class _UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


class _NotIterable:
    def __iter__(self):
        raise _UnprintableError


class _BreaksWhileRead:
    def __iter__(self):
        yield 1
        raise _UnprintableError


def test_a_map_over_a_result_whose_iteration_raises_an_unprintable_error_says_so():
    """The map's error names the map and says that the error's ``str()`` raised."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: _NotIterable(), name="opaque")
    p.add_unit(lambda ctx: _BreaksWhileRead(), name="breaks")
    p.add_map(lambda ctx: ctx.item, over="opaque", name="first")
    p.add_map(lambda ctx: ctx.item, over="breaks", name="second")
    p.execute({}, SEQ)
    failed = p.get_failed_units()
    unprintable = "<str() of _UnprintableError raised RuntimeError>"
    assert str(failed["first"]).endswith(f"is not iterable (_NotIterable): {unprintable}")
    assert str(failed["second"]).endswith(f"raised _UnprintableError: {unprintable}")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("execution_mode", "process", "not in execution_mode='process'"),
        ("custom_executor", ThreadPoolExecutor(1), "not on custom_executor="),
    ],
)
def test_a_backend_and_another_mode_or_an_executor_are_refused(option, value, message):
    """``backend=`` decides where units run: a mode or an executor beside it that is not its
    own (ignored until now, so the run went elsewhere than asked) is a ValueError, before
    any unit runs; the backend's own mode beside it is fine."""
    ran = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append(1), name="a")
    with pytest.raises(ValueError, match=f"backend= runs units in 'sequential' mode, {message}"):
        p.execute({}, backend=SequentialBackend(), **{option: value})
    assert ran == []
    assert p.execute({}, SEQ, backend=SequentialBackend()) == {"a": None}
