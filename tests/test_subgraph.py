"""``add_subgraph``: bad input refused before any unit runs, options and limits kept, and
inner units visible one by one wherever a run is observed.

Every mode's behaviour is in ``tests/backends/test_contract_subgraph.py``; these run in
SEQUENTIAL or THREAD mode only.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from quantum_partitioner import (
    CachingQuantumPartitioner,
    DuplicateUnitError,
    ExecutionMode,
    ExponentialBackoff,
    Limit,
    ProgressBar,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
    UnknownDependencyError,
    at_least,
)
from quantum_partitioner._graph import QuantumUnit, validate_unit

SEQ = ExecutionMode.SEQUENTIAL


def two_step():
    """``load`` -> ``clean``: a small inner partitioner."""
    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: 1, name="load")
    inner.add_unit(lambda ctx: ctx["load"] + 1, ["load"], name="clean")
    return inner


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "taken", ["ingest", "ingest.load", "ingest.clean"], ids=["its-name", "root", "sink"]
)
def test_a_name_clash_is_refused_and_adds_nothing(taken):
    """A unit already named like the subgraph or one of its units: DuplicateUnitError."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 0, name=taken)
    with pytest.raises(DuplicateUnitError, match=re.escape(taken)):
        p.add_subgraph(two_step(), "ingest")
    assert list(p.units) == [taken]


@pytest.mark.parametrize("name", ["ingest", "ingest.load"])
def test_a_unit_added_later_under_a_subgraph_name_is_refused(name):
    """The clash the other way: add_unit under the subgraph's or an inner unit's name."""
    p = QuantumPartitioner()
    p.add_subgraph(two_step(), "ingest")
    with pytest.raises(DuplicateUnitError):
        p.add_unit(lambda ctx: 0, name=name)


def test_a_partitioner_cannot_be_its_own_subgraph():
    """other is self: ValueError."""
    p = two_step()
    with pytest.raises(ValueError, match="cannot be a subgraph of itself"):
        p.add_subgraph(p, "again")


@pytest.mark.parametrize(
    ("other", "name", "deps", "error", "match"),
    [
        ({"load": "x"}, "ingest", None, TypeError, "must be a QuantumPartitioner"),
        (None, 3, None, TypeError, "unit name must be a non-empty string"),
        (None, "", None, ValueError, "unit name must be a non-empty string"),
        (None, "ingest", "config", TypeError, "dependencies must be a list"),
        (QuantumPartitioner(), "ingest", None, ValueError, "has no units"),
        (None, "ingest", ["ingest.load"], ValueError, "cannot depend on itself"),
        (None, "ingest", ["ingest"], ValueError, "cannot depend on itself"),
    ],
    ids=["not-a-partitioner", "name-type", "empty-name", "deps-string", "empty", "own", "self"],
)
def test_bad_arguments_are_refused(other, name, deps, error, match):
    """Wrong types and values raise naming the problem; nothing is added."""
    p = QuantumPartitioner()
    with pytest.raises(error, match=match):
        p.add_subgraph(two_step() if other is None else other, name, deps)
    assert p.units == {}


def test_an_invalid_inner_graph_is_refused_by_its_inner_names():
    """An inner unit depending on a missing inner name: refused at add_subgraph."""
    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: 0, ["nowhere"], name="load")
    p = QuantumPartitioner()
    with pytest.raises(UnknownDependencyError, match=r"'load'.*'nowhere'"):
        p.add_subgraph(inner, "ingest")
    assert p.units == {}


def test_an_unknown_outer_dependency_is_refused_before_any_unit_runs():
    """As for add_unit: accepted when added, UnknownDependencyError before the run starts."""
    ran = []
    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: ran.append("load"), name="load")
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append("first"), name="first")
    p.add_subgraph(inner, "ingest", ["config"])
    with pytest.raises(UnknownDependencyError, match=r"'ingest\.load'.*'config'"):
        p.execute(execution_mode=SEQ)
    assert ran == []
    p.add_unit(lambda ctx: 1, name="config")
    p.execute(execution_mode=SEQ)
    assert sorted(ran) == ["first", "load"]


def test_add_subgraph_during_a_run_raises_and_the_run_goes_on():
    """Called from a callback while the partitioner executes: RuntimeError, graph unchanged."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    refused = []

    def on_complete(unit_id, result):
        try:
            p.add_subgraph(two_step(), "late")
        except RuntimeError as error:
            refused.append(str(error))

    p.on_unit_complete = on_complete
    assert p.execute(execution_mode=SEQ) == {"a": 1}
    assert len(refused) == 1
    assert refused[0].startswith("add_subgraph() was called while the partitioner is executing")
    assert list(p.units) == ["a"]


# -- what the copies keep ----------------------------------------------------------------------


def test_inner_units_keep_every_option_and_are_copies():
    """Timeout, retries, priority, metadata, limits, when, run_if, cancel_rest, retry_policy."""
    fast = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
    inner = QuantumPartitioner(retry_policy=fast)
    inner.add_limit("api", concurrency=2)
    inner.add_unit(lambda ctx: 1, name="a")
    inner.add_unit(lambda ctx: 2, name="b")

    def condition(ctx):
        return True

    own_policy = RetryPolicy()
    inner.add_unit(
        lambda ctx: 3,
        ["a", "b"],
        name="c",
        timeout=5,
        retries=2,
        priority=7,
        metadata={"estimated_duration": 0.5},
        limits={"api": 2},
        when=condition,
        run_if=at_least(1),
        cancel_rest=True,
        retry_policy=own_policy,
    )
    p = QuantumPartitioner()
    p.add_subgraph(inner, "sub")
    inner.units["c"].metadata["estimated_duration"] = 9  # later changes stay in `inner`
    inner.units["c"].limits["api"] = 1

    c = p.units["sub.c"]
    assert (c.timeout, c.retries, c.priority) == (5, 2, 7)
    assert c.metadata == {"estimated_duration": 0.5}
    assert c.limits == {"api": 2}
    assert c.condition is condition
    assert c.run_if == at_least(1)
    assert c.cancel_rest is True
    assert c.retry_policy is own_policy
    assert p.units["sub.a"].retry_policy is fast  # the inner partitioner's default
    assert c.state is UnitState.PENDING
    assert p.limits["api"] is inner.limits["api"]
    assert p.execute(execution_mode=SEQ)["sub"] == {"c": 3}


def test_inner_limits_must_be_the_same_object_as_limits_of_the_same_name():
    """A shared Limit object is fine; a different limit under the same name is refused."""
    shared = Limit("api", concurrency=1)
    inner = two_step()
    inner.add_limit(shared)
    p = QuantumPartitioner()
    p.add_limit(shared)
    p.add_subgraph(inner, "one")
    assert p.limits["api"] is shared
    other = two_step()
    other.add_limit("api", concurrency=1)
    with pytest.raises(ValueError, match="its limit 'api' is not the limit of that name here"):
        p.add_subgraph(other, "two")
    assert "two" not in p.units
    assert p.limits["api"] is shared


def test_a_caching_partitioner_caches_inner_units_by_their_full_names():
    """Inlined cacheable units are fingerprinted and served from the cache on a second run."""
    calls = []
    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: calls.append("load") or 1, name="load", metadata={"cacheable": True})
    p = CachingQuantumPartitioner()
    p.add_subgraph(inner, "ingest")
    assert p.execute(execution_mode=SEQ) == {"ingest.load": 1, "ingest": {"load": 1}}
    assert p.execute(execution_mode=SEQ) == {"ingest.load": 1, "ingest": {"load": 1}}
    assert calls == ["load"]


# -- seen unit by unit -------------------------------------------------------------------------


def test_inner_units_appear_one_by_one_in_plan_metrics_trace_report_and_progress(tmp_path):
    """Plans, metrics, hooks, the Chrome trace, the report, the bar: each inner unit by name."""
    bar = ProgressBar(file=io.StringIO(), force_terminal=True)
    p = QuantumPartitioner(instruments=[bar])
    completed = []
    p.on_unit_complete = lambda unit_id, result: completed.append(unit_id)
    p.add_unit(lambda ctx: 0, name="config")
    p.add_subgraph(two_step(), "ingest", ["config"])

    plan = p.build_execution_plan()
    assert plan.execution_order == [["config"], ["ingest.load"], ["ingest.clean"], ["ingest"]]
    assert '"ingest.load" -> "ingest.clean"' in plan.visualize()

    p.execute(trace=True)

    names = ["config", "ingest.load", "ingest.clean", "ingest"]
    assert list(p.get_partial_results()) == names
    metrics = p.last_execution_metrics
    assert list(metrics["unit_times"]) == names
    assert [e["unit"] for e in metrics["execution_trace"] if e["event"] == "complete"] == names
    assert completed == names
    assert (bar.total, bar.done) == (4, 4)
    trace = json.loads(p.export_trace(tmp_path / "run.json").read_text())
    slices = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"}
    assert set(names) <= slices
    report = p.write_report(tmp_path / "run.html").read_text()
    assert all(name in report for name in names)


def test_view_keys_must_map_names_to_distinct_keys():
    """A unit reading two dependencies under one key, or keys that are not strings: refused."""

    def noop(ctx):
        return None

    validate_unit(QuantumUnit("u", noop, ["s.a", "b"], view_keys={"s.a": "a"}))
    with pytest.raises(ValueError, match="reads two dependencies under one key"):
        validate_unit(QuantumUnit("u", noop, ["s.a", "a"], view_keys={"s.a": "a"}))
    with pytest.raises(TypeError, match="view_keys must be a dict"):
        validate_unit(QuantumUnit("u", noop, ["a"], view_keys=["a"]))  # type: ignore[arg-type]
