"""Property tests: random DAGs with random named limits, driven through the Scheduler by hand.

Hypothesis draws a DAG, a few limits (concurrency, rate, burst), which units name which
limits with how many slots, each attempt's duration and whether it fails (with retries and
timeouts). A virtual-clock driver with ``workers`` workers plays the run: it starts what the
scheduler returns, jumps to the next completion or deadline, and records every attempt's
start and end. Each test checks one property of that record.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner import ExponentialBackoff, Limit, QuantumUnit, RetryPolicy, Scheduler
from quantum_partitioner._graph import compile_graph
from quantum_partitioner._limits import LimitPlan

EXACT = RetryPolicy(backoff=ExponentialBackoff(initial=0.5, jitter=0))
SETTINGS = settings(max_examples=60, deadline=None)


def noop(ctx):
    return None


@dataclass
class Case:
    """A drawn run: the units, the limits, and each attempt's fate."""

    deps: list[list[int]]
    retries: list[int]
    timeout: list[float | None]
    knobs: list[tuple[int | None, float | None, int]]
    needs: list[dict[int, int]]
    durations: list[list[float]]  # per unit, per attempt
    fails: list[list[bool]]
    workers: int

    def limits(self, *, unsaturated: bool = False):
        if unsaturated:
            room = 3 * len(self.deps)  # more than every unit's slots together
            return [Limit(f"l{k}", concurrency=room) for k in range(len(self.knobs))]
        return [Limit(f"l{k}", c, r, b) for k, (c, r, b) in enumerate(self.knobs)]


@st.composite
def cases(draw):
    n = draw(st.integers(1, 10))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else [] for i in range(n)]
    knobs = []
    for _ in range(draw(st.integers(1, 3))):
        concurrency = draw(st.one_of(st.none(), st.integers(1, 3)))
        rate = draw(st.one_of(st.none(), st.sampled_from([0.5, 1.0, 4.0])))
        if concurrency is None and rate is None:
            concurrency = 1
        knobs.append((concurrency, rate, draw(st.integers(1, 3))))
    needs = []
    for _ in range(n):
        wanted = {}
        for k, (concurrency, rate, burst) in enumerate(knobs):
            if draw(st.booleans()):
                cap = min(concurrency or 3, burst if rate is not None else 3)
                wanted[k] = draw(st.integers(1, cap))
        needs.append(wanted)
    retries = [draw(st.integers(0, 2)) for _ in range(n)]
    timeout = [draw(st.sampled_from([None, None, 1.5])) for _ in range(n)]
    durations = [[draw(st.sampled_from([0.25, 1.0, 2.0])) for _ in range(3)] for _ in range(n)]
    fails = [[draw(st.booleans()) and draw(st.booleans()) for _ in range(3)] for _ in range(n)]
    return Case(deps, retries, timeout, knobs, needs, durations, fails, draw(st.integers(1, 4)))


@dataclass
class Record:
    attempts: list[tuple[int, float, float]]  # (unit, start, end) of every attempt
    terminal: list[int]  # how many times each unit reached a terminal state
    held_ok: bool
    names: list[str]
    sched: Scheduler


def play(case: Case, limits: list[Limit] | None) -> Record:
    """Drive one run on a virtual clock; record attempts and check held slots at each start."""
    names = [f"u{i}" for i in range(len(case.deps))]
    units = [
        QuantumUnit(
            names[i],
            noop,
            [names[j] for j in case.deps[i]],
            timeout=case.timeout[i],
            retries=case.retries[i],
        )
        for i in range(len(names))
    ]
    graph = compile_graph(units)
    needs = None
    if limits is not None:
        needs = {i: {limits[k]: s for k, s in want.items()} for i, want in enumerate(case.needs)}
        needs = {i: want for i, want in needs.items() if want} or None
    sched = Scheduler(graph, retry_policy=EXACT, limits=LimitPlan.compile(needs or {}))
    running: list[tuple[float, int, int]] = []  # (end, unit, attempt)
    started: dict[tuple[int, int], float] = {}
    attempts: list[tuple[int, float, float]] = []
    terminal = [0] * len(names)
    held_ok = True
    now = 0.0

    def note(transitions):
        for t in transitions:
            if t.state.is_terminal:
                terminal[t.index] += 1
            key = (t.index, t.attempt)
            if t.was_running and key in started:
                attempts.append((t.index, started.pop(key), now))

    for _ in range(2000):
        if not sched.is_active():
            break
        if sched.has_deadlines:
            note(sched.advance(now))
        while sched.running < case.workers:
            i = sched.start_next(now)
            if i < 0:
                break
            attempt = sched.attempts[i]
            started[i, attempt] = now
            duration = case.durations[i][min(attempt, 3) - 1]
            heapq.heappush(running, (now + duration, i, attempt))
            if limits is not None:
                held_ok &= all(
                    lim.concurrency is None or lim.held <= lim.concurrency for lim in limits
                )
        deadline = sched.next_deadline()
        end = running[0][0] if running else math.inf
        if deadline is not None and deadline <= end:
            now = max(now, deadline)
            continue
        assert running, "the run stalled"
        now, i, attempt = heapq.heappop(running)
        key = (i, attempt)
        if key not in started:
            continue  # timed out already
        attempts.append((i, started.pop(key), now))
        if case.fails[i][min(attempt, 3) - 1]:
            note(sched.fail(i, attempt, ValueError("drawn"), now))
        elif sched.complete(i, attempt, None, now) >= 0:
            terminal[i] += 1
    assert not sched.is_active()
    return Record(attempts, terminal, held_ok, names, sched)


@SETTINGS
@given(cases())
def test_slots_held_never_exceed_concurrency(case):
    """At no moment do running attempts hold more slots of a limit than its concurrency."""
    limits = case.limits()
    record = play(case, limits)
    assert record.held_ok
    for k, limit in enumerate(limits):
        if limit.concurrency is None:
            continue
        events = []
        for i, start, end in record.attempts:
            slots = case.needs[i].get(k, 0)
            if slots:
                events += [(start, slots), (end, -slots)]
        events.sort(key=lambda e: (e[0], e[1]))  # a release before a start at the same time
        held = 0
        for _, step in events:
            held += step
            assert held <= limit.concurrency
    assert all(limit.held == 0 for limit in limits)


@SETTINGS
@given(cases())
def test_starts_per_window_stay_within_the_bucket(case):
    """In any window of w seconds, a rate limit admits at most burst + rate * w slots."""
    limits = case.limits()
    record = play(case, limits)
    for k, limit in enumerate(limits):
        if limit.per_second is None:
            continue
        starts = sorted(
            (start, case.needs[i][k]) for i, start, _ in record.attempts if case.needs[i].get(k)
        )
        for a in range(len(starts)):
            taken = 0
            for b in range(a, len(starts)):
                taken += starts[b][1]
                window = starts[b][0] - starts[a][0]
                assert taken <= limit.burst + limit.per_second * window + 1e-9


@SETTINGS
@given(cases())
def test_every_unit_ends_in_exactly_one_terminal_state(case):
    """With limits, retries, timeouts and failures, each unit is terminal exactly once."""
    record = play(case, case.limits())
    assert all(state.is_terminal for state in record.sched.state)
    assert record.terminal == [1] * len(record.names)
    assert record.sched.waiting_on_limits == 0


@SETTINGS
@given(cases())
def test_unsaturated_limits_change_nothing(case):
    """Limits that never lack room give exactly the run without limits."""
    plain = play(case, None)
    limited = play(case, case.limits(unsaturated=True))
    assert limited.attempts == plain.attempts
    assert limited.sched.state == plain.sched.state
