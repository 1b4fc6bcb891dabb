"""Layer 2: the sans-I/O Scheduler driven by hand with a FakeClock, no threads, no sleeps.

Like CPython's test_graphlib, each test plays the driver: it asks for the next unit
(``start_next``), reports outcomes (``complete``/``fail``), moves the clock and calls
``advance``, and checks the state machine's answers.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from quantum_partitioner import (
    ExponentialBackoff,
    QuantumUnit,
    RetryPolicy,
    Scheduler,
    Transition,
    UnitCancelledError,
    UnitSkippedError,
    UnitState,
    UnitTimeoutError,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner.testing import FakeClock

PENDING = UnitState.PENDING
RUNNING = UnitState.RUNNING
COMPLETED = UnitState.COMPLETED
FAILED = UnitState.FAILED
SKIPPED = UnitState.SKIPPED
CANCELED = UnitState.CANCELED
TIMEOUT = UnitState.TIMEOUT

EXACT = RetryPolicy(backoff=ExponentialBackoff(jitter=0))


def noop(ctx):
    return None


def scheduler_of(spec, *, retry_policy=EXACT, fail_fast=False, **options):
    """A Scheduler over ``{name: [dependencies]}``; ``options[name]`` are QuantumUnit kwargs."""
    units = [
        QuantumUnit(name, noop, list(deps), **options.get(name, {})) for name, deps in spec.items()
    ]
    return Scheduler(compile_graph(units), retry_policy=retry_policy, fail_fast=fail_fast)


def start(sched, now=0.0):
    """Start the next ready unit; return its name (None if nothing is ready)."""
    i = sched.start_next(now)
    return None if i < 0 else sched.names[i]


def start_all(sched, now=0.0):
    """Start every ready unit; return their names in the order the scheduler chose."""
    names = []
    while (name := start(sched, now)) is not None:
        names.append(name)
    return names


def idx(sched, name):
    return sched.graph.index[name]


def complete(sched, name, result=None, now=0.0):
    i = idx(sched, name)
    return sched.complete(i, sched.attempts[i], result, now)


def fail(sched, name, error=None, now=0.0):
    i = idx(sched, name)
    return sched.fail(i, sched.attempts[i], error or ValueError(name), now)


def states(sched):
    return dict(zip(sched.names, sched.state, strict=True))


def summary(transitions, sched):
    return [(sched.names[t.index], t.state) for t in transitions]


# -- ready order -------------------------------------------------------------------------------


def test_roots_are_ready_and_dependents_are_not():
    """Only units without dependencies are ready at first."""
    # a -> b
    # c
    sched = scheduler_of({"a": [], "b": ["a"], "c": []})
    assert sched.ready_count == 2
    assert sorted(start_all(sched)) == ["a", "c"]
    assert states(sched) == {"a": RUNNING, "b": PENDING, "c": RUNNING}


def test_higher_priority_runs_first():
    """Among ready units, a higher priority starts sooner, whatever the insertion order."""
    # a (0)   b (5)   c (1)   d (-1)
    sched = scheduler_of(
        {"a": [], "b": [], "c": [], "d": []},
        b={"priority": 5},
        c={"priority": 1},
        d={"priority": -1},
    )
    assert start_all(sched) == ["b", "c", "a", "d"]


def test_longer_remaining_critical_path_runs_first():
    """With equal priority, the unit with the longer path below it starts first."""
    # a           (rank 1)
    # b -> c -> d (rank 3)
    # x -> y      (rank 2)
    sched = scheduler_of({"a": [], "b": [], "c": ["b"], "d": ["c"], "x": [], "y": ["x"]})
    assert start_all(sched) == ["b", "x", "a"]


def test_remaining_critical_path_is_weighted_by_estimated_duration():
    """A root before one heavy unit outranks a root before a long light chain."""
    # p -> heavy (10 s)
    # q -> r -> s -> t  (1 s each; p weighs their mean)
    light = {"metadata": {"estimated_duration": 1}}
    sched = scheduler_of(
        {"q": [], "r": ["q"], "s": ["r"], "t": ["s"], "p": [], "heavy": ["p"]},
        heavy={"metadata": {"estimated_duration": 10}},
        q=light,
        r=light,
        s=light,
        t=light,
    )
    assert start_all(sched) == ["p", "q"]


def test_priority_beats_critical_path():
    """A higher priority wins over a longer remaining critical path."""
    # long -> l2 -> l3 -> l4
    # short (priority 1)
    sched = scheduler_of(
        {"long": [], "l2": ["long"], "l3": ["l2"], "l4": ["l3"], "short": []},
        short={"priority": 1},
    )
    assert start_all(sched) == ["short", "long"]


def test_ties_break_by_insertion_order():
    """Equal priority and equal remaining path: the unit added first starts first."""
    names = ["e", "b", "d", "a", "c"]
    sched = scheduler_of({name: [] for name in names})
    assert start_all(sched) == names


def test_newly_ready_units_are_ordered_with_those_already_waiting():
    """A unit released by a completion competes with the ready queue by the same order."""
    # a -> b (priority 3)
    # c, d   (priority 0)
    sched = scheduler_of({"a": [], "b": ["a"], "c": [], "d": []}, b={"priority": 3})
    assert start(sched) == "a"
    assert complete(sched, "a") == 1
    assert start_all(sched) == ["b", "c", "d"]


def test_unit_waits_for_every_dependency():
    """A unit becomes ready only when its last dependency completes."""
    #   a
    #  / \
    # b   c
    #  \ /
    #   d
    sched = scheduler_of({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    assert start_all(sched) == ["a"]
    assert complete(sched, "a") == 2
    assert start_all(sched) == ["b", "c"]
    assert complete(sched, "b") == 0
    assert start(sched) is None
    assert complete(sched, "c") == 1
    assert start_all(sched) == ["d"]
    assert complete(sched, "d") == 0
    assert not sched.is_active()


def test_start_records_attempt_and_start_time(clock):
    """start_next sets RUNNING, counts the attempt and records the start time."""
    sched = scheduler_of({"a": []})
    clock.set(3.5)
    i = sched.start_next(clock())
    assert sched.state[i] is RUNNING
    assert sched.attempts[i] == 1
    assert sched.started[i] == 3.5
    assert sched.running == 1
    clock.advance(1)
    assert sched.complete(i, 1, "out", clock()) == 0
    assert (sched.state[i], sched.results[i], sched.ended[i], sched.running) == (
        COMPLETED,
        "out",
        4.5,
        0,
    )


# -- retries -----------------------------------------------------------------------------------


def test_failed_attempt_with_retries_left_is_rescheduled_with_backoff(clock):
    """A failure with retries left returns a PENDING transition with retry_at = now + backoff."""
    sched = scheduler_of({"r": []}, r={"retries": 2})
    i = idx(sched, "r")
    clock.set(10.0)
    assert sched.start_next(clock()) == i
    error = ValueError("flaky")
    transitions = sched.fail(i, 1, error, clock())
    assert transitions == [Transition(i, PENDING, 1, error, retry_at=10.0 + 0.2)]
    assert sched.state[i] is PENDING
    assert sched.running == 0
    assert sched.is_active()


def test_retry_is_not_ready_before_retry_at(clock):
    """A retried unit is not ready before retry_at, and is after advance(retry_at)."""
    sched = scheduler_of({"r": []}, r={"retries": 1})
    i = sched.start_next(clock())
    (transition,) = sched.fail(i, 1, ValueError(), clock())
    retry_at = transition.retry_at
    assert retry_at == pytest.approx(0.2)
    assert sched.next_deadline() == retry_at
    assert sched.start_next(clock()) == -1
    clock.set(retry_at - 0.001)
    assert sched.advance(clock()) == []
    assert sched.start_next(clock()) == -1
    clock.set(retry_at)
    assert sched.advance(clock()) == []
    assert sched.next_deadline() is None
    assert sched.start_next(clock()) == i
    assert sched.attempts[i] == 2


def test_retry_backoff_follows_original_formula_exactly(clock):
    """With jitter=0 the n-th retry waits min(2**n * 0.1, 5) seconds after the n-th failure."""
    sched = scheduler_of({"r": []}, r={"retries": 7})
    i = idx(sched, "r")
    for attempt in range(1, 8):
        assert sched.start_next(clock()) == i
        assert sched.attempts[i] == attempt
        clock.advance(1.0)
        (transition,) = sched.fail(i, attempt, ValueError(), clock())
        assert transition.state is PENDING
        assert transition.attempt == attempt
        assert transition.retry_at == clock() + min(2**attempt * 0.1, 5)
        clock.set(transition.retry_at)
        sched.advance(clock())
    assert sched.start_next(clock()) == i
    (final,) = sched.fail(i, 8, KeyError("last"), clock())
    assert final.state is FAILED
    assert final.attempt == 8
    assert sched.state[i] is FAILED
    assert isinstance(sched.errors[i], KeyError)
    assert not sched.is_active()


def test_retries_n_allows_n_plus_one_attempts(clock):
    """retries=2 gives three attempts, then the unit fails for good."""
    sched = scheduler_of({"r": [], "after": ["r"]}, r={"retries": 2})
    i = idx(sched, "r")
    for attempt in (1, 2, 3):
        assert sched.start_next(clock()) == i
        transitions = sched.fail(i, attempt, ValueError(attempt), clock())
        if attempt < 3:
            assert summary(transitions, sched) == [("r", PENDING)]
            clock.set(transitions[0].retry_at)
            sched.advance(clock())
    assert summary(transitions, sched) == [("r", FAILED), ("after", SKIPPED)]
    assert sched.attempts[i] == 3


def test_retry_then_success_releases_dependents(clock):
    """A unit that succeeds on its second attempt completes and releases its dependents."""
    sched = scheduler_of({"r": [], "after": ["r"]}, r={"retries": 1})
    i = sched.start_next(clock())
    (t,) = sched.fail(i, 1, ValueError(), clock())
    clock.set(t.retry_at)
    sched.advance(clock())
    assert sched.start_next(clock()) == i
    assert sched.complete(i, 2, "ok", clock()) == 1
    assert start(sched) == "after"
    assert i not in sched.errors


def test_other_units_run_while_a_retry_waits(clock):
    """Waiting for a retry holds nothing: other ready units start meanwhile."""
    sched = scheduler_of({"r": [], "x": []}, r={"retries": 1, "priority": 1})
    assert start(sched, clock()) == "r"
    fail(sched, "r", now=clock())
    assert start(sched, clock()) == "x"
    assert sched.running == 1


def test_default_policy_adds_up_to_ten_percent_jitter(clock):
    """Without a policy, the wait is the original API's backoff plus at most 10% jitter."""
    units = [QuantumUnit(f"r{k}", noop, retries=1) for k in range(50)]
    sched = Scheduler(compile_graph(units))
    waits = set()
    for _ in range(50):
        i = sched.start_next(clock())
        (t,) = sched.fail(i, 1, ValueError(), clock())
        waits.add(t.retry_at - clock())
    assert all(0.2 <= wait <= 0.2 * 1.1 for wait in waits)
    assert len(waits) > 1


def test_retry_on_filters_which_errors_are_retried(clock):
    """An error the policy does not retry fails the unit at once despite retries left."""
    policy = RetryPolicy(backoff=ExponentialBackoff(jitter=0), retry_on=KeyError)
    sched = scheduler_of({"r": []}, retry_policy=policy, r={"retries": 3})
    i = sched.start_next(clock())
    assert summary(sched.fail(i, 1, KeyError(), clock()), sched) == [("r", PENDING)]
    clock.advance(1)
    sched.advance(clock())
    assert sched.start_next(clock()) == i
    assert summary(sched.fail(i, 2, ValueError(), clock()), sched) == [("r", FAILED)]


def test_unit_retry_policy_overrides_the_default(clock):
    """A unit's own retry_policy wins over the scheduler's default policy."""
    slow = RetryPolicy(backoff=ExponentialBackoff(initial=1.0, multiplier=3, jitter=0))
    sched = scheduler_of(
        {"own": [], "default": []},
        own={"retries": 1, "retry_policy": slow},
        default={"retries": 1},
    )
    start_all(sched, clock())
    (own,) = fail(sched, "own", now=clock())
    (default,) = fail(sched, "default", now=clock())
    assert own.retry_at == 3.0
    assert default.retry_at == pytest.approx(0.2)


# -- timeouts ----------------------------------------------------------------------------------


def test_timeout_is_a_deadline(clock):
    """A running unit's deadline is start + timeout; before it, advance does nothing."""
    sched = scheduler_of({"t": []}, t={"timeout": 2.0})
    clock.set(1.0)
    i = sched.start_next(clock())
    assert sched.next_deadline() == 3.0
    clock.set(2.999)
    assert sched.advance(clock()) == []
    assert sched.state[i] is RUNNING


def test_advance_past_deadline_times_the_unit_out(clock):
    """Past its deadline a running unit becomes TIMEOUT with was_running=True."""
    sched = scheduler_of({"t": [], "after": ["t"]}, t={"timeout": 2.0})
    i = sched.start_next(clock())
    clock.set(2.5)
    transitions = sched.advance(clock())
    assert summary(transitions, sched) == [("t", TIMEOUT), ("after", SKIPPED)]
    timed_out = transitions[0]
    assert timed_out.was_running
    assert timed_out.attempt == 1
    assert isinstance(timed_out.error, UnitTimeoutError)
    assert timed_out.error.unit_id == "t"
    assert timed_out.error.timeout == 2.0
    assert sched.errors[i] is timed_out.error
    assert sched.running == 0
    assert sched.ended[i] == 2.5
    assert sched.next_deadline() is None
    assert not sched.is_active()


def test_late_result_of_timed_out_attempt_is_ignored(clock):
    """complete() of an attempt that already timed out returns -1 and changes nothing."""
    sched = scheduler_of({"t": [], "after": ["t"]}, t={"timeout": 1.0})
    i = sched.start_next(clock())
    clock.set(1.0)
    sched.advance(clock())
    clock.set(5.0)
    assert sched.complete(i, 1, "too late", clock()) == -1
    assert sched.state[i] is TIMEOUT
    assert sched.results[i] is None
    assert sched.state[idx(sched, "after")] is SKIPPED
    assert sched.fail(i, 1, ValueError(), clock()) == []
    assert sched.state[i] is TIMEOUT


def test_timed_out_attempt_is_retried(clock):
    """A timeout with retries left schedules a retry; the old attempt's result is discarded."""
    sched = scheduler_of({"t": [], "after": ["t"]}, t={"timeout": 1.0, "retries": 1})
    i = sched.start_next(clock())
    clock.set(1.0)
    (t,) = sched.advance(clock())
    assert (t.state, t.attempt, t.was_running) == (PENDING, 1, True)
    assert isinstance(t.error, UnitTimeoutError)
    assert t.retry_at == pytest.approx(1.2)
    assert sched.complete(i, 1, "stale", clock()) == -1
    assert sched.state[i] is PENDING
    clock.set(t.retry_at)
    sched.advance(clock())
    assert sched.start_next(clock()) == i
    assert sched.next_deadline() == pytest.approx(2.2)
    assert sched.complete(i, 1, "still stale", clock()) == -1
    assert sched.complete(i, 2, "fresh", clock()) == 1
    assert sched.results[i] == "fresh"
    assert start(sched, clock()) == "after"


def test_a_held_attempt_times_out_from_when_it_begins(clock):
    """An attempt a lane holds (its worker died as it was sent) has no deadline while held;
    it counts from begin(), as the unit's start does, and the deadline it had is stale."""
    sched = scheduler_of({"t": [], "after": ["t"]}, t={"timeout": 1.0})
    i = sched.start_next(clock())
    sched.hold(i, 1)
    assert sched.next_deadline() is None
    clock.set(5.0)
    assert sched.advance(clock()) == []
    sched.begin(i, 1, clock())
    assert sched.started[i] == 5.0
    assert sched.next_deadline() == 6.0
    clock.set(5.999)
    assert sched.advance(clock()) == []
    clock.set(6.0)
    assert summary(sched.advance(clock()), sched) == [("t", TIMEOUT), ("after", SKIPPED)]
    assert sched.next_deadline() is None


def test_completion_before_advance_beats_the_deadline(clock):
    """A result reported before advance() is called keeps the unit COMPLETED."""
    sched = scheduler_of({"t": []}, t={"timeout": 1.0})
    i = sched.start_next(clock())
    clock.set(1.5)
    assert sched.complete(i, 1, "ok", clock()) == 0
    assert sched.advance(clock()) == []
    assert sched.state[i] is COMPLETED


def test_next_deadline_is_the_earliest_of_timeouts_and_retries(clock):
    """next_deadline returns the soonest timeout or retry, and None when there is none."""
    sched = scheduler_of({"t": [], "r": []}, t={"timeout": 5.0}, r={"retries": 1})
    assert sched.next_deadline() is None
    start_all(sched, clock())
    assert sched.next_deadline() == 5.0
    fail(sched, "r", now=clock())
    assert sched.next_deadline() == pytest.approx(0.2)
    clock.set(0.2)
    sched.advance(clock())
    assert sched.next_deadline() == 5.0
    complete(sched, "t", now=clock())
    assert sched.next_deadline() is None


# -- failure: skip downstream, fallback, fail_fast ---------------------------------------------


def test_failure_skips_exactly_the_transitive_dependents():
    """A failed unit skips all its transitive dependents and nothing else."""
    #     a       x
    #    / \      |
    #   b   c     y
    #    \ / \
    #     d   z
    #     |
    #     e
    spec = {
        "a": [],
        "b": ["a"],
        "c": ["a"],
        "d": ["b", "c"],
        "e": ["d"],
        "z": ["c"],
        "x": [],
        "y": ["x"],
    }
    sched = scheduler_of(spec)
    start_all(sched)
    complete(sched, "a")
    assert start_all(sched) == ["b", "c"]
    error = RuntimeError("boom")
    transitions = fail(sched, "b", error)
    assert summary(transitions, sched) == [("b", FAILED), ("d", SKIPPED), ("e", SKIPPED)]
    assert transitions[0].error is error
    assert sched.errors[idx(sched, "b")] is error
    for t in transitions[1:]:
        assert isinstance(t.error, UnitSkippedError)
        assert t.error.failed_dependency == "b"
        assert t.error.unit_id == sched.names[t.index]
        assert "'b'" in str(t.error)
    assert states(sched) == {
        "a": COMPLETED,
        "b": FAILED,
        "c": RUNNING,
        "d": SKIPPED,
        "e": SKIPPED,
        "z": PENDING,
        "x": RUNNING,
        "y": PENDING,
    }
    complete(sched, "c")
    complete(sched, "x")
    assert sorted(start_all(sched)) == ["y", "z"]


def test_failure_of_a_root_skips_the_whole_downstream_once():
    """Skips reached along two paths are reported once each."""
    #   a
    #  / \
    # b   c
    #  \ /
    #   d
    sched = scheduler_of({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})
    start(sched)
    transitions = fail(sched, "a")
    assert summary(transitions, sched) == [
        ("a", FAILED),
        ("b", SKIPPED),
        ("c", SKIPPED),
        ("d", SKIPPED),
    ]
    assert not sched.is_active()


def test_fallback_value_feeds_dependents_and_unit_stays_failed():
    """A unit with a fallback_value that fails is FAILED, and dependents run with the value."""
    # a (fallback 42) -> b -> c
    sched = scheduler_of({"a": [], "b": ["a"], "c": ["b"]}, a={"metadata": {"fallback_value": 42}})
    i = idx(sched, "a")
    start(sched)
    transitions = fail(sched, "a")
    assert summary(transitions, sched) == [("a", FAILED)]
    assert sched.state[i] is FAILED
    assert sched.results[i] == 42
    assert isinstance(sched.errors[i], ValueError)
    assert start(sched) == "b"
    complete(sched, "b")
    assert start(sched) == "c"


def test_fallback_value_none_is_still_a_fallback():
    """fallback_value=None counts: dependents run and receive None."""
    sched = scheduler_of({"a": [], "b": ["a"]}, a={"metadata": {"fallback_value": None}})
    start(sched)
    assert summary(fail(sched, "a"), sched) == [("a", FAILED)]
    assert start(sched) == "b"


def test_fallback_applies_after_retries_and_to_timeouts(clock):
    """A unit that times out on its last attempt is TIMEOUT and hands on its fallback."""
    sched = scheduler_of(
        {"a": [], "b": ["a"]},
        a={"timeout": 1.0, "retries": 1, "metadata": {"fallback_value": "fb"}},
    )
    i = sched.start_next(clock())
    assert summary(sched.fail(i, 1, ValueError(), clock()), sched) == [("a", PENDING)]
    clock.advance(0.2)
    sched.advance(clock())
    assert sched.start_next(clock()) == i
    clock.advance(1.0)
    assert summary(sched.advance(clock()), sched) == [("a", TIMEOUT)]
    assert sched.results[i] == "fb"
    assert start(sched, clock()) == "b"


def test_fail_fast_cancels_everything_not_started():
    """With fail_fast, a failure cancels every unit that has not started; running ones go on."""
    # a -> a2
    # x -> x2
    # y
    sched = scheduler_of(
        {"a": [], "a2": ["a"], "x": [], "x2": ["x"], "y": []},
        fail_fast=True,
        a={"priority": 2},
        x={"priority": 1},
    )
    assert start(sched) == "a"
    assert start(sched) == "x"
    transitions = fail(sched, "a")
    assert summary(transitions, sched) == [
        ("a", FAILED),
        ("a2", SKIPPED),
        ("x2", CANCELED),
        ("y", CANCELED),
    ]
    for t in transitions[2:]:
        assert isinstance(t.error, UnitCancelledError)
        assert "'a'" in t.error.reason
        assert not t.was_running
    assert sched.state[idx(sched, "x")] is RUNNING
    assert sched.is_active()
    assert start(sched) is None
    assert complete(sched, "x", "done") == 0
    assert sched.state[idx(sched, "x")] is COMPLETED
    assert sched.state[idx(sched, "x2")] is CANCELED
    assert not sched.is_active()


def test_fail_fast_stops_retries_of_running_units(clock):
    """After fail_fast triggered, a running unit that fails is not retried."""
    sched = scheduler_of({"a": [], "x": []}, fail_fast=True, x={"retries": 3})
    start_all(sched, clock())
    fail(sched, "a", now=clock())
    assert summary(fail(sched, "x", now=clock()), sched) == [("x", FAILED)]
    assert not sched.is_active()


def test_fail_fast_cancels_a_waiting_retry(clock):
    """A unit waiting for its retry is cancelled by fail_fast and never becomes ready."""
    sched = scheduler_of({"r": [], "a": []}, fail_fast=True, r={"retries": 1})
    start_all(sched, clock())
    (retry,) = fail(sched, "r", now=clock())
    assert retry.state is PENDING
    transitions = fail(sched, "a", now=clock())
    assert summary(transitions, sched) == [("a", FAILED), ("r", CANCELED)]
    clock.set(retry.retry_at + 1)
    assert sched.advance(clock()) == []
    assert sched.start_next(clock()) == -1
    assert sched.next_deadline() is None
    assert not sched.is_active()


def test_fallback_does_not_trigger_fail_fast():
    """A failure absorbed by a fallback value cancels nothing under fail_fast."""
    sched = scheduler_of(
        {"a": [], "b": ["a"], "x": []}, fail_fast=True, a={"metadata": {"fallback_value": 0}}
    )
    start(sched)
    assert summary(fail(sched, "a"), sched) == [("a", FAILED)]
    assert sorted(start_all(sched)) == ["b", "x"]


# -- cancellation and stale outcomes -----------------------------------------------------------


def test_cancel_with_running_cancels_running_attempts(clock):
    """cancel(running=True) cancels pending and running units; their late outcomes are ignored."""
    sched = scheduler_of({"a": [], "b": ["a"], "c": []}, c={"timeout": 10})
    done = sched.start_next(clock())
    sched.complete(done, 1, "kept", clock())
    assert start_all(sched, clock()) == ["b", "c"]
    clock.advance(1)
    transitions = sched.cancel(clock(), "user asked")
    assert sorted((sched.names[t.index], t.state, t.was_running) for t in transitions) == [
        ("b", CANCELED, True),
        ("c", CANCELED, True),
    ]
    for t in transitions:
        assert isinstance(t.error, UnitCancelledError)
        assert t.error.reason == "user asked"
    assert sched.running == 0
    assert not sched.is_active()
    assert complete(sched, "b", "late", clock()) == -1
    assert fail(sched, "c", now=clock()) == []
    assert sched.results[done] == "kept"
    assert sched.state[done] is COMPLETED
    assert sched.next_deadline() is None
    clock.advance(100)
    assert sched.advance(clock()) == []


def test_cancel_without_running_lets_running_units_finish(clock):
    """cancel(running=False) cancels pending units only; running ones may still complete."""
    # a -> b
    # c
    sched = scheduler_of({"a": [], "b": ["a"], "c": []})
    start(sched, clock())
    transitions = sched.cancel(clock(), "stop", running=False)
    assert summary(transitions, sched) == [("b", CANCELED), ("c", CANCELED)]
    assert sched.is_active()
    assert sched.start_next(clock()) == -1
    assert complete(sched, "a", 1, clock()) == 0
    assert states(sched) == {"a": COMPLETED, "b": CANCELED, "c": CANCELED}
    assert not sched.is_active()


def test_cancel_is_idempotent(clock):
    """A second cancel() finds nothing left to cancel."""
    sched = scheduler_of({"a": [], "b": []})
    assert len(sched.cancel(clock(), "first")) == 2
    assert sched.cancel(clock(), "second") == []
    assert sched.terminal == 2


def test_stale_outcomes_are_ignored():
    """Outcomes for never-started, finished or wrong-attempt units return -1 / []."""
    sched = scheduler_of({"a": [], "b": ["a"]})
    a, b = idx(sched, "a"), idx(sched, "b")
    assert sched.complete(b, 1, "not started", 0.0) == -1
    assert sched.fail(b, 1, ValueError(), 0.0) == []
    assert sched.start_next(0.0) == a
    assert sched.complete(a, 2, "wrong attempt", 0.0) == -1
    assert sched.fail(a, 0, ValueError(), 0.0) == []
    assert sched.complete(a, 1, "right", 0.0) == 1
    assert sched.complete(a, 1, "twice", 0.0) == -1
    assert sched.fail(a, 1, ValueError(), 0.0) == []
    assert sched.results[a] == "right"
    assert sched.state[a] is COMPLETED
    assert sched.terminal == 1


# -- terminal states and is_active ----------------------------------------------------------


def test_every_unit_ends_in_exactly_one_terminal_state(clock):
    """A mixed run leaves each unit in one terminal state, counted once."""
    # ok -> ok2           (complete)
    # bad -> skipped      (fail, skip)
    # slow                (timeout)
    # fb -> after_fb      (fail with fallback, dependent completes)
    # last                (cancelled at the end)
    sched = scheduler_of(
        {
            "ok": [],
            "ok2": ["ok"],
            "bad": [],
            "skipped": ["bad"],
            "slow": [],
            "fb": [],
            "after_fb": ["fb"],
            "last": ["ok2", "after_fb"],
        },
        slow={"timeout": 1.0},
        fb={"metadata": {"fallback_value": 0}},
    )
    start_all(sched, clock())
    complete(sched, "ok", now=clock())
    fail(sched, "bad", now=clock())
    fail(sched, "fb", now=clock())
    clock.set(1.0)
    sched.advance(clock())
    start_all(sched, clock())
    complete(sched, "after_fb", now=clock())
    sched.cancel(clock(), "done", running=True)
    assert states(sched) == {
        "ok": COMPLETED,
        "ok2": CANCELED,
        "bad": FAILED,
        "skipped": SKIPPED,
        "slow": TIMEOUT,
        "fb": FAILED,
        "after_fb": COMPLETED,
        "last": CANCELED,
    }
    assert all(state.is_terminal for state in sched.state)
    assert sched.terminal == len(sched.state) == 8
    assert sched.running == 0
    assert sched.unfinished() == []
    assert not sched.is_active()
    sched.check_finished()
    assert set(sched.errors) == {i for i, state in enumerate(sched.state) if state is not COMPLETED}


def test_is_active_until_the_last_unit_is_terminal():
    """is_active is True while any unit is pending or running, then False."""
    sched = scheduler_of({"a": [], "b": ["a"]})
    assert sched.is_active()
    start(sched)
    assert sched.is_active()
    complete(sched, "a")
    assert sched.is_active()
    start(sched)
    assert sched.is_active()
    complete(sched, "b")
    assert not sched.is_active()
    assert sched.unfinished() == []


def test_empty_graph_is_never_active():
    """A scheduler over no units is inactive from the start and has nothing ready."""
    sched = Scheduler(compile_graph([]))
    assert not sched.is_active()
    assert sched.start_next(0.0) == -1
    assert sched.next_deadline() is None
    assert sched.advance(1.0) == []


def test_transition_is_frozen():
    """Transitions are immutable records."""
    t = Transition(0, FAILED, 1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.state = COMPLETED  # type: ignore[misc]


def test_lane_of_must_cover_every_unit():
    """A lane_of with the wrong length is rejected."""
    graph = compile_graph([QuantumUnit("a", noop), QuantumUnit("b", noop)])
    with pytest.raises(ValueError, match="lane_of"):
        Scheduler(graph, lane_of=[0])


def test_duplicate_dependency_is_waited_for_once():
    """A dependency listed twice releases its dependent on its one completion."""
    graph = compile_graph([QuantumUnit("a", noop), QuantumUnit("b", noop, ["a", "a"])])
    sched = Scheduler(graph, retry_policy=EXACT)
    assert start(sched) == "a"
    assert complete(sched, "a") == 1
    assert start(sched) == "b"


# -- FakeClock (quantum_partitioner.testing) ----------------------------------------------------


def test_fake_clock_moves_only_when_told():
    """FakeClock reads its start time until advanced or set, and returns floats."""
    clock = FakeClock(5)
    assert clock() == 5.0
    assert isinstance(clock(), float)
    assert clock.now == 5.0
    assert clock.advance(1.5) == 6.5
    assert clock() == 6.5
    clock.set(10)
    assert clock() == 10.0
    clock.set(10)
    assert clock.advance(0) == 10.0
    assert repr(clock) == "FakeClock(10.0)"


def test_fake_clock_is_monotonic():
    """FakeClock refuses to go back: negative advance or an earlier set raises ValueError."""
    clock = FakeClock(3.0)
    with pytest.raises(ValueError, match="back"):
        clock.advance(-0.1)
    with pytest.raises(ValueError, match="back"):
        clock.set(2.9)
    assert clock() == 3.0


@pytest.mark.parametrize(
    ("value", "error"), [(math.nan, ValueError), ("1", TypeError), (True, TypeError)]
)
def test_fake_clock_rejects_bad_times(value, error):
    """FakeClock rejects NaN and non-numbers in its constructor, advance and set."""
    clock = FakeClock()
    with pytest.raises(error):
        FakeClock(value)
    with pytest.raises(error):
        clock.advance(value)
    with pytest.raises(error):
        clock.set(value)
    assert clock() == 0.0


def test_start_first_keeps_priority_order_across_lanes(clock):
    """Two lanes under one limit: the best ready unit of either lane starts first.

    lane 0: low (priority 0)     lane 1: high (priority 5), mid (priority 2)
    """
    graph = compile_graph(
        [
            QuantumUnit("low", noop, priority=0),
            QuantumUnit("high", noop, priority=5),
            QuantumUnit("mid", noop, priority=2),
        ]
    )
    sched = Scheduler(graph, lane_of=[0, 1, 1])
    both = [True, True]
    assert sched.best_lane(both) == 1
    assert sched.best_lane([True, False]) == 0  # lane 1 may not start now
    order = [sched.names[sched.start_first(clock(), both)] for _ in range(3)]
    assert order == ["high", "mid", "low"]
    assert sched.start_first(clock(), both) == -1
    assert sched.best_lane(both) == -1
