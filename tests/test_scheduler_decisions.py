"""Layer 2: run-time decisions in the sans-I/O Scheduler, driven by hand (no threads).

Conditions (``to_decide`` / ``decide``), skips by decision (an attempt raising ``SkipUnit``)
and how skips propagate: a skip by decision counts as skipped, one caused by a failure as
failed, and the outcome never depends on the order in which dependencies finished.
"""

from __future__ import annotations

import itertools

import pytest

from quantum_partitioner import (
    QuantumUnit,
    Scheduler,
    SkipCause,
    SkipUnit,
    UnitState,
    at_least,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner._joins import ALL_DONE

PENDING = UnitState.PENDING
COMPLETED = UnitState.COMPLETED
SKIPPED = UnitState.SKIPPED
FAILED = UnitState.FAILED


def noop(ctx):
    return None


def yes(ctx):
    return True


def scheduler_of(spec, **options):
    """A Scheduler over ``{name: [dependencies]}``; ``options[name]`` are QuantumUnit kwargs."""
    units = [
        QuantumUnit(name, noop, list(deps), **options.get(name, {})) for name, deps in spec.items()
    ]
    return Scheduler(compile_graph(units))


def run(sched, name, outcome="ok", now=0.0):
    """Start ``name`` (it must be the next ready unit) and report ``outcome``."""
    i = sched.start_next(now)
    assert i >= 0, f"nothing ready, wanted {name}"
    assert sched.names[i] == name
    attempt = sched.attempts[i]
    if outcome == "ok":
        sched.complete(i, attempt, name, now)
        return []
    error = SkipUnit("not needed") if outcome == "skip" else ValueError(name)
    return sched.fail(i, attempt, error, now)


def state(sched, name):
    return sched.state[sched.graph.index[name]]


def cause(sched, name):
    return sched.errors[sched.graph.index[name]].cause


def test_a_conditioned_unit_waits_for_its_answer_instead_of_being_ready():
    """A ready unit with a condition goes to to_decide; decide(True) queues it."""
    sched = scheduler_of({"a": [], "b": ["a"]}, b={"condition": yes})
    run(sched, "a")
    b = sched.graph.index["b"]
    assert sched.to_decide == [b]
    assert sched.start_next(0.0) == -1
    sched.to_decide.clear()
    assert sched.decide(b, holds=True, now=0.0) == []
    run(sched, "b")
    assert not sched.is_active()


def test_a_false_condition_skips_the_unit_and_its_default_dependents_by_decision():
    """decide(False): SKIPPED (CONDITION); an all_success dependent is skipped (JOIN_RULE)."""
    sched = scheduler_of({"a": [], "b": [], "c": ["a", "b"]}, a={"condition": yes})
    a = sched.graph.index["a"]
    assert sched.to_decide == [a]  # a root: asked before anything runs
    sched.to_decide.clear()
    transitions = sched.decide(a, holds=False, now=1.0)
    assert [(sched.names[t.index], t.state) for t in transitions] == [("a", SKIPPED)]
    assert cause(sched, "a") is SkipCause.CONDITION
    assert sched.attempts[a] == 0
    assert state(sched, "c") is PENDING  # waits for b: a failure of b would change why
    run(sched, "b")
    assert state(sched, "c") is SKIPPED
    assert cause(sched, "c") is SkipCause.JOIN_RULE
    assert [(sched.names[t.index], t.state) for t in sched.outbox] == [("c", SKIPPED)]
    assert not sched.is_active()


def test_skip_unit_is_skipped_never_retried_and_turns_on_decisions_mid_run():
    """An attempt raising SkipUnit: SKIPPED (DECISION) at once, retries unused, no failure."""
    sched = scheduler_of({"a": [], "b": ["a"], "c": ["b"], "d": []}, a={"retries": 3})
    transitions = run(sched, "a", "skip")
    assert [(sched.names[t.index], t.state) for t in transitions] == [
        ("a", SKIPPED),
        ("b", SKIPPED),
        ("c", SKIPPED),
    ]
    assert cause(sched, "a") is SkipCause.DECISION
    assert sched.errors[0].reason == "not needed"
    assert cause(sched, "b") is SkipCause.JOIN_RULE
    assert cause(sched, "c") is SkipCause.JOIN_RULE
    run(sched, "d")
    assert not sched.is_active()
    assert not any(s is FAILED for s in sched.state)


def end_in_order(sched, order):
    """Start the units named in ``order``, then end each as its name says: ok, skip, fail."""
    running = {sched.names[i]: i for i in (sched.start_next(0.0) for _ in order)}
    for name in order:
        i = running[name]
        if name == "ok":
            sched.complete(i, 1, 1, 0.0)
        else:
            sched.fail(i, 1, SkipUnit() if name == "skip" else ValueError(), 0.0)


@pytest.mark.parametrize("order", list(itertools.permutations(["skip", "fail", "ok"])))
def test_why_a_join_is_skipped_does_not_depend_on_the_order_dependencies_end(order):
    """A failure among the dependencies makes the skip UPSTREAM_FAILED, in whatever order."""
    # skip  fail  ok
    #    \   |   /
    #      join        (all_success)
    sched = scheduler_of({"skip": [], "fail": [], "ok": [], "join": ["skip", "fail", "ok"]})
    end_in_order(sched, order)
    assert state(sched, "join") is SKIPPED
    assert cause(sched, "join") is SkipCause.UPSTREAM_FAILED
    assert sched.errors[sched.graph.index["join"]].failed_dependency == "fail"


@pytest.mark.parametrize("rule", [None, at_least(2)])
@pytest.mark.parametrize("order", [("skip", "ok"), ("ok", "skip"), ("fail", "ok"), ("ok", "fail")])
def test_a_skip_names_the_dependency_that_decided_it_not_the_last_one_to_end(order, rule):
    """The skip names the skipped or failed input, even when the other one ended last."""
    # skip|fail  ok
    #        \  /
    #        join     (all_success, or at_least(2))
    spec = {order[0]: [], order[1]: [], "join": sorted(order)}
    sched = scheduler_of(spec, join={} if rule is None else {"run_if": rule})
    end_in_order(sched, order)
    error = sched.errors[sched.graph.index["join"]]
    decider = "skip" if "skip" in order else "fail"
    assert error.dependency == decider
    assert f"dependency {decider!r} {'was skipped' if decider == 'skip' else 'failed'}" in str(
        error
    )


def test_a_quorum_over_too_few_items_says_so_and_names_no_dependency():
    """at_least(3) over a map of 2 completed items: skipped, "only 2 of its inputs completed"."""
    units = [
        QuantumUnit("plan", noop, []),
        QuantumUnit("ask", noop, [], over="plan"),
        QuantumUnit("quorum", noop, ["ask"], run_if=at_least(3)),
    ]
    sched = Scheduler(compile_graph(units))
    run(sched, "plan")
    ask = sched.graph.index["ask"]
    assert sched.to_decide == [ask]
    sched.to_decide.clear()
    sched.expand(ask, 2, 0.0)
    run(sched, "ask[0]")
    run(sched, "ask[1]")
    error = sched.errors[sched.graph.index["quorum"]]
    assert error.cause is SkipCause.JOIN_RULE
    assert error.dependency is None
    assert "at_least(3) was not met (only 2 of its inputs completed)" in str(error)


def test_a_quorum_over_a_map_that_never_expanded_names_the_map():
    """at_least(2) over a map skipped before it had items, and a unit that completes last."""
    units = [
        QuantumUnit("plan", noop, []),
        QuantumUnit("ask", noop, [], over="plan"),
        QuantumUnit("other", noop, [], priority=-1),
        QuantumUnit("quorum", noop, ["ask", "other"], run_if=at_least(2)),
    ]
    sched = Scheduler(compile_graph(units))
    run(sched, "plan", outcome="fail")  # ask is skipped: it never gets items
    run(sched, "other")
    error = sched.errors[sched.graph.index["quorum"]]
    assert error.cause is SkipCause.UPSTREAM_FAILED
    assert error.dependency == "ask"


def test_cancel_rest_keeps_a_map_whose_items_an_item_wise_map_still_needs():
    """A quorum over ``ask`` cancels nothing an item-wise ``summary`` needs, nor ``ask``
    itself: it ends when its items do, instead of CANCELED while they still run."""
    # plan -> ask (map) -> summary (item-wise map over ask)
    #           \-> quorum (at_least(1), cancel_rest)
    units = [
        QuantumUnit("plan", noop, []),
        QuantumUnit("ask", noop, [], over="plan"),
        QuantumUnit("summary", noop, [], over="ask"),
        QuantumUnit("quorum", noop, ["ask"], run_if=at_least(1), cancel_rest=True),
    ]
    sched = Scheduler(compile_graph(units))
    run(sched, "plan")
    index = sched.graph.index
    sched.to_decide.clear()
    sched.expand(index["ask"], 2, 0.0)
    assert sched.to_decide == [index["summary"]]  # the driver expands it at once
    sched.to_decide.clear()
    sched.expand(index["summary"], 2, 0.0)
    ask0, ask1 = sched.start_next(0.0), sched.start_next(0.0)
    sched.complete(ask0, 1, "a", 0.0)  # the quorum is met while ask[1] runs
    assert sched.outbox == []
    for _ in range(2):  # quorum and summary[0]
        i = sched.start_next(0.0)
        sched.complete(i, 1, sched.names[i], 0.0)
    sched.complete(ask1, 1, "b", 0.0)
    run(sched, "summary[1]")
    assert not sched.is_active()
    assert state(sched, "ask") is COMPLETED
    assert sched.results[index["summary"]] == ["summary[0]", "summary[1]"]


def test_cancel_rest_keeps_a_map_whose_items_another_quorum_still_counts():
    """Two quorums over one map: the first (cancel_rest) leaves the items the second needs."""
    units = [
        QuantumUnit("plan", noop, []),
        QuantumUnit("ask", noop, [], over="plan"),
        QuantumUnit("first", noop, ["ask"], run_if=at_least(1), cancel_rest=True),
        QuantumUnit("both", noop, ["ask"], run_if=at_least(2)),
    ]
    sched = Scheduler(compile_graph(units))
    run(sched, "plan")
    sched.to_decide.clear()
    sched.expand(sched.graph.index["ask"], 2, 0.0)
    ask0, ask1 = sched.start_next(0.0), sched.start_next(0.0)
    sched.complete(ask0, 1, "a", 0.0)
    assert sched.outbox == []
    run(sched, "first")
    sched.complete(ask1, 1, "b", 0.0)
    run(sched, "both")
    assert not sched.is_active()
    assert state(sched, "ask") is COMPLETED


def test_cancelled_dependencies_never_trigger_a_unit():
    """cancel(): an all_done unit whose dependencies are cancelled is cancelled, never run."""
    sched = scheduler_of(
        {"a": [], "b": [], "report": ["a", "b"]},
        report={"run_if": ALL_DONE},
    )
    a = sched.start_next(0.0)
    sched.fail(a, 1, ValueError("a"), 0.0)
    assert state(sched, "report") is PENDING  # waits for b
    transitions = sched.cancel(1.0, "cancel() was called")
    assert {sched.names[t.index] for t in transitions} == {"b", "report"}
    assert state(sched, "report") is UnitState.CANCELED
    assert sched.ready_count == 0
    assert not sched.is_active()


def test_fail_fast_cancels_a_join_that_a_failure_released():
    """fail_fast wins over all_done: what has not started is cancelled, rules or not."""
    units = [
        QuantumUnit("a", noop, []),
        QuantumUnit("report", noop, ["a"], run_if=ALL_DONE),
    ]
    sched = Scheduler(compile_graph(units), fail_fast=True)
    a = sched.start_next(0.0)
    sched.fail(a, 1, ValueError("a"), 0.0)
    assert state(sched, "report") is UnitState.CANCELED
    assert sched.start_next(0.0) == -1
