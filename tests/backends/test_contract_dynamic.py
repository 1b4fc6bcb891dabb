"""The contract suite for workflows that decide at run time, run on every execution mode.

Same rules as ``test_contract.py`` (the ``mode`` fixture, unit functions from
``_contract_units`` so a plain process pool can import them): conditions, skips by decision,
join rules, and changes to the graph during a run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from quantum_partitioner import (
    CachingQuantumPartitioner,
    ExecutionMode,
    QuantumPartitioner,
    SkipCause,
    UnitState,
    at_least,
)

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
        for change in (
            lambda: p.add_unit(u.const(0), name="late"),
            lambda: p.add_units({"late": u.const(0)}),
            lambda: p.remove_unit("b"),
        ):
            try:
                change()
            except RuntimeError as error:
                refused.append((unit_id, str(error)))

    p.on_unit_complete = on_complete

    results = mode.execute(p)

    assert results == {"a": 1, "b": 2}
    assert [unit_id for unit_id, _ in refused] == ["a", "a", "a", "b", "b", "b"]
    assert "add_unit() was called while the partitioner is executing" in refused[0][1]
    assert "add_units() was called while the partitioner is executing" in refused[1][1]
    assert "remove_unit() was called while the partitioner is executing" in refused[2][1]
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


def test_a_run_whose_last_unit_ends_by_a_decision_ends(mode):
    """The run ends when its last unit is skipped by its condition, with nothing running."""
    lone = QuantumPartitioner()
    lone.add_unit(u.const(1), name="only", when=lambda ctx: False)
    assert mode.execute(lone) == {}
    assert lone.units["only"].error.cause is SkipCause.CONDITION
    chain = QuantumPartitioner()
    chain.add_unit(u.const(1), name="first")
    chain.add_unit(u.const(2), ["first"], name="last", when=lambda ctx: False)
    assert mode.execute(chain) == {"first": 1}


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


# -- join rules -------------------------------------------------------------------------------


def test_none_failed_joins_the_branch_that_ran(mode):
    """A none_failed join after a branch runs on the branch taken; the other is skipped."""
    #        route
    #       /     \
    #  search      calc      (when= picks one)
    #       \     /
    #       answer           (none_failed)
    p = QuantumPartitioner()
    p.add_unit(u.const("calc"), name="route")
    p.add_unit(u.const("found"), ["route"], name="search", when=lambda c: c["route"] == "search")
    p.add_unit(u.const(42), ["route"], name="calc", when=lambda c: c["route"] == "calc")
    p.add_unit(u.seen, ["search", "calc"], name="answer", run_if="none_failed")

    results = mode.execute(p)

    assert results["answer"] == {"results": {"calc": 42}, "upstream_errors": ["search"]}
    assert p.units["search"].error.cause is SkipCause.CONDITION


def test_all_done_runs_on_partial_results_and_sees_why_the_rest_is_missing(mode):
    """all_done runs after a failure and a skip: ctx has what exists, upstream_errors why."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="ok")
    p.add_unit(u.fail_with("down"), name="broken")
    p.add_unit(u.skip_with("not today"), name="lazy")
    p.add_unit(u.fail_with("down"), name="saved", metadata={"fallback_value": 0})
    p.add_unit(u.seen, ["ok", "broken", "lazy", "saved"], name="report", run_if="all_done")
    p.add_unit(u.seen, ["ok", "saved"], name="plain")  # all_success: a fallback counts as ok

    results = mode.execute(p)

    assert results["report"] == {
        "results": {"ok": 1, "saved": 0},
        "upstream_errors": ["broken", "lazy", "saved"],
    }
    assert results["plain"] == {"results": {"ok": 1, "saved": 0}, "upstream_errors": ["saved"]}
    assert set(p.get_failed_units()) == {"broken", "saved"}


def test_any_success_and_none_failed_skip_with_the_cause_that_decided(mode):
    """any_success needs one ok; none_failed skips on a failure; causes name what decided."""
    p = QuantumPartitioner()
    p.add_unit(u.fail_with("a"), name="fail_a")
    p.add_unit(u.fail_with("b"), name="fail_b")
    p.add_unit(u.const(1), name="ok")
    p.add_unit(u.skip_with("no"), name="skip")
    p.add_unit(u.seen, ["fail_a", "ok"], name="one_ok", run_if="any_success")
    p.add_unit(u.seen, ["fail_a", "fail_b"], name="none_ok", run_if="any_success")
    p.add_unit(u.seen, ["skip", "ok"], name="joined", run_if="none_failed")
    p.add_unit(u.seen, ["skip", "fail_a"], name="not_joined", run_if="none_failed")
    p.add_unit(u.seen, ["skip"], name="all_skipped", run_if="none_failed")
    p.add_unit(u.seen, ["none_ok", "ok"], name="after_none_ok", run_if="none_failed")

    results = mode.execute(p)

    assert results["one_ok"] == {"results": {"ok": 1}, "upstream_errors": ["fail_a"]}
    assert results["joined"] == {"results": {"ok": 1}, "upstream_errors": ["skip"]}
    assert p.units["none_ok"].error.cause is SkipCause.UPSTREAM_FAILED
    assert "its join rule any_success was not met" in str(p.units["none_ok"].error)
    assert p.units["not_joined"].error.cause is SkipCause.UPSTREAM_FAILED
    assert p.units["all_skipped"].error.cause is SkipCause.JOIN_RULE
    # A skip caused by a failure counts as a failure for the next rule.
    assert p.units["after_none_ok"].error.cause is SkipCause.UPSTREAM_FAILED


def test_at_least_runs_on_a_quorum_and_cancels_the_rest(mode, tmp_path):
    """at_least(2) with cancel_rest runs once 2 answered; the straggler is CANCELED."""
    gate = str(tmp_path / "never")
    p = QuantumPartitioner(max_workers=4)
    p.add_unit(u.const("a"), name="fast_a")
    p.add_unit(u.const("b"), name="fast_b")
    p.add_unit(u.wait_for_file(gate, "slow"), name="slow")
    p.add_unit(
        u.seen, ["fast_a", "fast_b", "slow"], name="quorum", run_if=at_least(2), cancel_rest=True
    )

    results = mode.execute(p)
    Path(gate).touch()  # a plain process pool cannot stop its worker: let it return

    # cancel_rest cancels before the quorum starts, so it sees why "slow" has no result.
    assert results["quorum"] == {
        "results": {"fast_a": "a", "fast_b": "b"},
        "upstream_errors": ["slow"],
    }
    assert p.units["slow"].state is UnitState.CANCELED
    assert "cancel_rest" in str(p.units["slow"].error)
    assert p.get_failed_units() == {}


def test_a_unit_that_ran_on_incomplete_inputs_is_not_cached(tmp_path):
    """Under a non-default rule a unit that ran without every input completed is not cached."""
    store = tmp_path / "cache.db"
    for _ in range(2):
        with CachingQuantumPartitioner(cache_path=store) as p:
            p.add_unit(u.fail_with("down"), name="broken")
            p.add_unit(u.const(1), name="ok")
            p.add_unit(
                u.logged(str(tmp_path / "ran"), "r"),
                ["broken", "ok"],
                name="report",
                run_if="all_done",
                metadata={"cacheable": True},
            )
            p.add_unit(
                u.logged(str(tmp_path / "ran"), "c"),
                ["ok"],
                name="clean",
                run_if="all_done",
                metadata={"cacheable": True},
            )
            p.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    assert lines(tmp_path / "ran") == ["report", "clean", "report"]  # clean came from cache


def test_bad_join_rules_are_refused_when_the_unit_is_added():
    """An unknown rule, a quorum larger than the dependencies, cancel_rest alone: errors."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="a")
    with pytest.raises(ValueError, match="unknown join rule 'most_success'"):
        p.add_unit(u.const(1), ["a"], name="b", run_if="most_success")
    with pytest.raises(ValueError, match=r"unit 'b': run_if=at_least\(2\) needs at least 2"):
        p.add_unit(u.const(1), ["a"], name="b", run_if=at_least(2))
    with pytest.raises(ValueError, match="unit 'b': cancel_rest=True needs run_if=at_least"):
        p.add_unit(u.const(1), ["a"], name="b", cancel_rest=True)
    with pytest.raises(TypeError, match="unit 'b': when= must be callable"):
        p.add_unit(u.const(1), ["a"], name="b", when=True)
    assert list(p.units) == ["a"]


def test_join_rules_in_a_mixed_lane_run():
    """resource_balanced: all_done and at_least judge the same way across lanes."""
    p = QuantumPartitioner()
    p.add_unit(u.fail_with("down"), name="cpu_fails", metadata={"resource_type": "cpu"})
    p.add_unit(u.const(1), name="io_ok", metadata={"resource_type": "io"})
    p.add_unit(u.const(2), name="async_ok", metadata={"resource_type": "async"})
    p.add_unit(
        u.seen,
        ["cpu_fails", "io_ok", "async_ok"],
        name="report",
        run_if="all_done",
        metadata={"resource_type": "cpu"},
    )
    p.add_unit(
        u.seen,
        ["io_ok", "async_ok"],
        name="quorum",
        run_if=at_least(1),
        metadata={"resource_type": "io"},
    )

    results = p.execute_with_strategy({}, "resource_balanced", max_workers=2)

    assert results["report"] == {
        "results": {"io_ok": 1, "async_ok": 2},
        "upstream_errors": ["cpu_fails"],
    }
    assert len(results["quorum"]["results"]) >= 1


def test_skips_by_decision_give_back_their_limit_slots(mode):
    """A unit that skips itself frees its named limit's slot; a false condition takes none."""
    p = QuantumPartitioner()
    p.add_limit("api", concurrency=1)
    p.add_unit(u.skip_with("cached"), name="first", limits=["api"])
    p.add_unit(u.const(2), name="off", limits=["api"], when=lambda ctx: False)
    p.add_unit(u.const(3), name="last", limits=["api"])

    results = mode.execute(p)

    assert results == {"last": 3}
    assert p.units["first"].error.cause is SkipCause.DECISION
    assert p.units["off"].error.cause is SkipCause.CONDITION
