"""The contract suite for workflows that decide at run time, run on every execution mode.

Same rules as ``test_contract.py`` (the ``mode`` fixture, unit functions from
``_contract_units`` so a plain process pool can import them): conditions, skips by decision,
join rules, and changes to the graph during a run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from quantum_partitioner import QuantumPartitioner, SkipCause, UnitState

sys.path.insert(0, str(Path(__file__).parent))
import _contract_units as u  # needs the sys.path entry above


def lines(path):
    """The lines units appended to ``path`` (none if they never wrote)."""
    return path.read_text().splitlines() if path.exists() else []


# -- changes during a run ---------------------------------------------------------------------


def test_changing_the_graph_during_a_run_raises_runtime_error(mode):
    """add_unit and remove_unit from a callback mid-run raise RuntimeError; the run goes on."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="a")
    p.add_unit(u.plus("a", 1), ["a"], name="b")
    refused = []

    def on_complete(unit_id, result):
        del result
        for change in (lambda: p.add_unit(u.const(0), name="late"), lambda: p.remove_unit("b")):
            try:
                change()
            except RuntimeError as error:
                refused.append((unit_id, str(error)))

    p.on_unit_complete = on_complete

    results = mode.execute(p)

    assert results == {"a": 1, "b": 2}
    assert [unit_id for unit_id, _ in refused] == ["a", "a", "b", "b"]
    assert "add_unit() was called while the partitioner is executing" in refused[0][1]
    assert "remove_unit() was called while the partitioner is executing" in refused[1][1]
    assert set(p.units) == {"a", "b"}
    p.add_unit(u.const(0), name="late")  # allowed again once the run is over
    assert p.units["late"].state is UnitState.PENDING


# -- conditions and skips by decision ---------------------------------------------------------


def test_when_routes_to_one_branch_and_skips_the_other_without_running_it(mode, tmp_path):
    """when= is asked in the caller's process; false skips the unit (cause CONDITION) unrun."""
    #        route
    #       /     \
    #  search      calc      (when= picks one)
    #       \     /
    #       answer           (none_failed is slice 3; here each branch has its own sink)
    log = str(tmp_path / "ran")
    asked = []

    def goes_to(branch):
        def predicate(ctx):
            asked.append((ctx.unit_id, ctx["route"], os.getpid()))
            return ctx["route"] == branch

        return predicate

    p = QuantumPartitioner()
    p.add_unit(u.const("search"), name="route")
    p.add_unit(u.logged(log, "found"), ["route"], name="search", when=goes_to("search"))
    p.add_unit(u.logged(log, 42), ["route"], name="calc", when=goes_to("calc"))
    p.add_unit(u.logged(log, "shown"), ["calc"], name="show_calc")
    skips = []
    p.on_unit_skip = lambda unit_id, error: skips.append((unit_id, error.cause))

    results = mode.execute(p)

    assert results == {"route": "search", "search": "found"}
    assert sorted(lines(tmp_path / "ran")) == ["search"]
    assert sorted(asked) == [("calc", "search", os.getpid()), ("search", "search", os.getpid())]
    calc = p.units["calc"]
    assert calc.state is UnitState.SKIPPED
    assert calc.error.cause is SkipCause.CONDITION
    assert calc.attempt == 0
    shown = p.units["show_calc"]
    assert shown.state is UnitState.SKIPPED
    assert shown.error.cause is SkipCause.JOIN_RULE  # a decision upstream, not a failure
    assert shown.error.dependency == "calc"
    assert sorted(skips) == [("calc", SkipCause.CONDITION), ("show_calc", SkipCause.JOIN_RULE)]
    assert p.get_failed_units() == {}
    metrics = p.last_execution_metrics
    assert metrics["skipped_units"] == 2
    assert metrics["failed_units"] == 0


def test_a_condition_on_a_root_unit_and_one_that_raises(mode):
    """A root's condition is asked before it starts; a raising condition fails its unit."""

    def broken(ctx):
        raise LookupError("no such route")

    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="yes", when=lambda ctx: ctx["go"])
    p.add_unit(u.const(2), name="no", when=lambda ctx: not ctx["go"])
    p.add_unit(u.const(3), name="broken", when=broken)
    p.add_unit(u.const(4), ["broken"], name="after_broken")

    results = mode.execute(p, {"go": True})

    assert results == {"yes": 1}
    assert p.units["no"].state is UnitState.SKIPPED
    assert p.units["broken"].state is UnitState.FAILED
    assert isinstance(p.units["broken"].error, LookupError)
    after = p.units["after_broken"]
    assert after.state is UnitState.SKIPPED
    assert after.error.cause is SkipCause.UPSTREAM_FAILED
    assert list(p.get_failed_units()) == ["broken"]


def test_ctx_skip_ends_the_unit_skipped_never_retried_nor_failed(mode, tmp_path):
    """ctx.skip(reason) is SKIPPED with that reason, runs once despite retries, is no failure."""
    log = str(tmp_path / "ran")
    p = QuantumPartitioner()
    p.add_unit(u.skip_with("nothing new", log), name="fetch", retries=2)
    p.add_unit(u.const("parsed"), ["fetch"], name="parse")
    p.add_unit(u.const("other"), name="other")
    skips = []
    p.on_unit_skip = lambda unit_id, error: skips.append((unit_id, error.cause, error.reason))

    results = mode.execute(p, raise_on_error=True)  # nothing failed: no TaskError

    assert results == {"other": "other"}
    assert lines(tmp_path / "ran") == ["fetch 1"]
    fetch = p.units["fetch"]
    assert fetch.state is UnitState.SKIPPED
    assert fetch.error.cause is SkipCause.DECISION
    assert fetch.error.reason == "nothing new"
    assert "nothing new" in str(fetch.error)
    assert fetch.attempt == 1
    assert p.units["parse"].state is UnitState.SKIPPED
    assert p.units["parse"].error.cause is SkipCause.JOIN_RULE
    assert p.get_failed_units() == {}
    assert p.failed_units == set()
    assert sorted(skips) == [
        ("fetch", SkipCause.DECISION, "nothing new"),
        ("parse", SkipCause.JOIN_RULE, "dependency 'fetch' was skipped"),
    ]


def test_conditions_and_skips_in_a_mixed_lane_run():
    """resource_balanced: a condition and ctx.skip decide the same way on every lane."""
    p = QuantumPartitioner()
    p.add_unit(u.const("cpu"), name="route", metadata={"resource_type": "io"})
    for lane in ("cpu", "io", "async"):
        p.add_unit(
            u.const(lane),
            ["route"],
            name=f"on_{lane}",
            metadata={"resource_type": lane},
            when=lambda ctx, lane=lane: ctx["route"] == lane,
        )
    p.add_unit(u.skip_with("later"), name="skipper", metadata={"resource_type": "cpu"})
    p.add_unit(u.const(1), ["skipper"], name="after", metadata={"resource_type": "async"})

    results = p.execute_with_strategy({}, "resource_balanced", max_workers=2)

    assert results == {"route": "cpu", "on_cpu": "cpu"}
    assert p.units["on_io"].error.cause is SkipCause.CONDITION
    assert p.units["on_async"].error.cause is SkipCause.CONDITION
    assert p.units["skipper"].error.cause is SkipCause.DECISION
    assert p.units["after"].error.cause is SkipCause.JOIN_RULE
    assert p.get_failed_units() == {}
