"""Property tests: random DAGs driven through the Scheduler by hand, in random outcome order.

Hypothesis draws a DAG (dependencies, insertion order, priorities, estimates, retries,
timeouts, fallbacks), then plays the driver step by step: start the next ready unit,
complete or fail a running one, let time pass, or act on the next deadline. A FakeClock
keeps it free of threads and sleeps. Every step is recorded, and each test checks one
property of the recording against facts computed here from the drawn DAG, not from the
scheduler's own graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from quantum_partitioner import (
    ExponentialBackoff,
    QuantumUnit,
    RetryPolicy,
    Scheduler,
    UnitSkippedError,
    UnitState,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner.testing import FakeClock

PENDING = UnitState.PENDING
RUNNING = UnitState.RUNNING
COMPLETED = UnitState.COMPLETED
FAILED = UnitState.FAILED
TIMEOUT = UnitState.TIMEOUT
SKIPPED = UnitState.SKIPPED
CANCELED = UnitState.CANCELED

EXACT = RetryPolicy(backoff=ExponentialBackoff(jitter=0))
MAX_STEPS = 400
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def noop(ctx):
    return None


@dataclass
class Dag:
    """A drawn DAG: units by name, in insertion order, with their options."""

    deps: dict[str, list[str]]
    priority: dict[str, int]
    weight: dict[str, int]
    retries: dict[str, int]
    timeout: dict[str, float | None]
    fallback: set[str]

    def units(self):
        return [
            QuantumUnit(
                name,
                noop,
                list(deps),
                timeout=self.timeout[name],
                retries=self.retries[name],
                priority=self.priority[name],
                metadata={
                    "estimated_duration": self.weight[name],
                    **({"fallback_value": f"fb-{name}"} if name in self.fallback else {}),
                },
            )
            for name, deps in self.deps.items()
        ]

    def dependents(self):
        out: dict[str, set[str]] = {name: set() for name in self.deps}
        for name, deps in self.deps.items():
            for dep in deps:
                out[dep].add(name)
        return out

    def downstream(self, name):
        """Every transitive dependent of ``name``."""
        dependents = self.dependents()
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return seen

    def rank(self):
        """Longest weighted path from the start of each unit to a sink."""
        dependents = self.dependents()
        memo: dict[str, float] = {}

        def of(name):
            if name not in memo:
                memo[name] = self.weight[name] + max(
                    (of(child) for child in dependents[name]), default=0
                )
            return memo[name]

        return {name: of(name) for name in self.deps}


@st.composite
def dags(draw):
    n = draw(st.integers(1, 9))
    topo = [f"u{k}" for k in range(n)]
    deps = {
        topo[k]: sorted(
            draw(st.sets(st.sampled_from(topo[:k]), max_size=3)) if k else set(),
        )
        for k in range(n)
    }
    # Insertion order is a random permutation: units often come before their dependencies.
    order = draw(st.permutations(topo))
    per_unit = st.fixed_dictionaries(
        {
            "priority": st.integers(0, 2),
            "weight": st.integers(0, 3),
            "retries": st.integers(0, 2),
            "timeout": st.none() | st.sampled_from([0.5, 1.0, 3.0]),
            "fallback": st.booleans(),
        }
    )
    options = {name: draw(per_unit) for name in order}
    return Dag(
        deps={name: deps[name] for name in order},
        priority={name: o["priority"] for name, o in options.items()},
        weight={name: o["weight"] for name, o in options.items()},
        retries={name: o["retries"] for name, o in options.items()},
        timeout={name: o["timeout"] for name, o in options.items()},
        fallback={name for name, o in options.items() if o["fallback"]},
    )


@dataclass
class Recording:
    """What happened while driving one scheduler."""

    starts: list[tuple[str, int, float, dict[str, UnitState], int]] = field(default_factory=list)
    # (name, attempt, time, states of every unit just before, step)
    ends: list[tuple[str, UnitState, int]] = field(default_factory=list)
    # (name, terminal state reached, step): completions and terminal transitions
    retries: list[tuple[str, int, float]] = field(default_factory=list)
    # (name, failed attempt, retry_at)
    skips: list[tuple[str, BaseException | None]] = field(default_factory=list)
    history: list[dict[str, UnitState]] = field(default_factory=list)
    expected_order_violations: list[Any] = field(default_factory=list)
    ready_count_mismatches: list[Any] = field(default_factory=list)
    first_failure_step: int | None = None
    final: dict[str, UnitState] = field(default_factory=dict)
    active_at_end: bool = True


def drive(dag, data, *, fail_fast=False):
    """Play a random driver over ``dag`` until the run ends; record everything."""
    clock = FakeClock()
    sched = Scheduler(compile_graph(dag.units()), retry_policy=EXACT, fail_fast=fail_fast)
    names = sched.names
    position = {name: k for k, name in enumerate(dag.deps)}
    rank = dag.rank()
    rec = Recording()
    waiting_retry: dict[str, float] = {}  # unit -> retry_at, until advance() releases it

    def snapshot():
        return dict(zip(names, sched.state, strict=True))

    def dep_ok(dep, states):
        return states[dep] is COMPLETED or (
            states[dep] in {FAILED, TIMEOUT} and dep in dag.fallback
        )

    def record(transitions, step):
        for t in transitions:
            name = names[t.index]
            if t.state is PENDING:
                rec.retries.append((name, t.attempt, t.retry_at))
                waiting_retry[name] = t.retry_at
            else:
                rec.ends.append((name, t.state, step))
                if t.state is SKIPPED:
                    rec.skips.append((name, t.error))
                if (
                    t.state in {FAILED, TIMEOUT}
                    and name not in dag.fallback
                    and rec.first_failure_step is None
                ):
                    rec.first_failure_step = step

    for step in range(MAX_STEPS):
        rec.history.append(snapshot())
        if not sched.is_active():
            break
        states = snapshot()
        ready = [
            name
            for name in dag.deps
            if states[name] is PENDING
            and name not in waiting_retry
            and all(dep_ok(dep, states) for dep in dag.deps[name])
        ]
        if sched.ready_count != len(ready):
            rec.ready_count_mismatches.append((step, sched.ready_count, ready))
        running = [name for name in names if states[name] is RUNNING]
        actions = []
        if ready:
            actions.append("start")
        if running:
            actions += ["complete", "fail"]
        if sched.next_deadline() is not None:
            actions.append("deadline")
        assert actions, f"scheduler stalled: {states}"
        if step < MAX_STEPS // 2:
            actions.append("tick")
        action = data.draw(st.sampled_from(actions))
        if action == "start":
            i = sched.start_next(clock())
            assert i >= 0
            name = names[i]
            best = min(ready, key=lambda n: (-dag.priority[n], -rank[n], position[n]))
            if name != best:
                rec.expected_order_violations.append((step, name, best, ready))
            rec.starts.append((name, sched.attempts[i], clock(), states, step))
        elif action in {"complete", "fail"}:
            name = data.draw(st.sampled_from(running))
            i = sched.graph.index[name]
            attempt = sched.attempts[i]
            if action == "complete":
                if sched.complete(i, attempt, f"r-{name}", clock()) >= 0:
                    rec.ends.append((name, COMPLETED, step))
            else:
                record(sched.fail(i, attempt, ValueError(name), clock()), step)
        elif action == "deadline":
            deadline = sched.next_deadline()
            assert deadline is not None
            clock.set(max(clock(), deadline))
            record(sched.advance(clock()), step)
            for name in [n for n, at in waiting_retry.items() if at <= clock()]:
                del waiting_retry[name]
        else:
            clock.advance(data.draw(st.sampled_from([0.1, 0.25, 0.5])))
    rec.final = snapshot()
    rec.active_at_end = sched.is_active()
    # Shown by --hypothesis-show-statistics: how often each path was exercised.
    for state in set(rec.final.values()):
        event(f"some unit ended {state.name}")
    if rec.retries:
        event("a retry was scheduled")
    if any(rec.final[n] in {FAILED, TIMEOUT} for n in dag.fallback):
        event("a fallback value was used")
    return rec


def allowed_to_start(dag, name, states):
    return all(
        states[dep] is COMPLETED or (states[dep] in {FAILED, TIMEOUT} and dep in dag.fallback)
        for dep in dag.deps[name]
    )


# -- properties ------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_no_unit_starts_before_its_dependencies_completed_or_fell_back(dag, data):
    """Every start finds each dependency COMPLETED, or failed with a fallback value."""
    rec = drive(dag, data)
    for name, _attempt, _time, states, _step in rec.starts:
        assert states[name] is PENDING
        assert allowed_to_start(dag, name, states), (name, states)


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_each_unit_starts_once_per_attempt(dag, data):
    """Attempts start once each, numbered 1..k with k <= retries + 1, never before retry_at."""
    rec = drive(dag, data)
    for name in dag.deps:
        attempts = [(a, t) for n, a, t, _, _ in rec.starts if n == name]
        numbers = [a for a, _ in attempts]
        assert numbers == list(range(1, len(numbers) + 1)), (name, numbers)
        assert len(numbers) <= dag.retries[name] + 1
        retry_at = {a: at for n, a, at in rec.retries if n == name}
        for number, started in attempts[1:]:
            # Attempt k+1 follows a retry scheduled when attempt k failed.
            assert number - 1 in retry_at, (name, number)
            assert started >= retry_at[number - 1]


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_every_unit_ends_in_exactly_one_terminal_state(dag, data):
    """The run ends with each unit terminal, reached once and never changed afterwards."""
    rec = drive(dag, data)
    assert not rec.active_at_end
    assert all(state.is_terminal for state in rec.final.values())
    ended = [name for name, _, _ in rec.ends]
    assert sorted(ended) == sorted(dag.deps), "each unit reaches a terminal state once"
    assert {name: state for name, state, _ in rec.ends} == rec.final
    for name in dag.deps:
        seen = [snap[name] for snap in rec.history]
        first = next((k for k, s in enumerate(seen) if s.is_terminal), None)
        assert first is not None
        assert set(seen[first:]) == {seen[first]}, (name, seen)


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_failures_skip_exactly_the_transitive_dependents(dag, data):
    """SKIPPED units are exactly the transitive dependents of units that failed without fallback."""
    rec = drive(dag, data)
    failed_for_good = {
        name
        for name, state in rec.final.items()
        if state in {FAILED, TIMEOUT} and name not in dag.fallback
    }
    expected = set().union(*(dag.downstream(name) for name in failed_for_good))
    skipped = {name for name, state in rec.final.items() if state is SKIPPED}
    assert skipped == expected
    for name, error in rec.skips:
        assert isinstance(error, UnitSkippedError)
        assert error.unit_id == name
        assert error.failed_dependency in failed_for_good
        assert name in dag.downstream(error.failed_dependency)


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_ready_units_start_by_priority_then_critical_path_then_insertion(dag, data):
    """Each start picks the best ready unit, and ready_count matches the ready set."""
    rec = drive(dag, data)
    assert rec.expected_order_violations == []
    assert rec.ready_count_mismatches == []


@PROPERTY_SETTINGS
@given(dag=dags(), data=st.data())
def test_fail_fast_starts_nothing_after_the_first_failure(dag, data):
    """With fail_fast, no unit starts after a failure without fallback; the rest is cancelled."""
    rec = drive(dag, data, fail_fast=True)
    assert not rec.active_at_end
    assert all(state.is_terminal for state in rec.final.values())
    if rec.first_failure_step is None:
        assert CANCELED not in rec.final.values()
        return
    step = rec.first_failure_step
    assert [start for start in rec.starts if start[4] > step] == []
    for name, state in rec.history[step].items():
        if state is PENDING:
            assert rec.final[name] in {SKIPPED, CANCELED}, name
    assert all(at >= step for _, state, at in rec.ends if state is CANCELED)
