"""Property tests: random DAGs of up to 25 units, run in every execution mode.

Each unit computes a number from its index and its dependencies' results and logs, under a
lock, when each of its attempts starts and ends. Expectations (results, the skipped set) are
computed here from the drawn graph, independently of the library.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
)

FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
TERMINAL = frozenset(
    {
        UnitState.COMPLETED,
        UnitState.FAILED,
        UnitState.SKIPPED,
        UnitState.CANCELED,
        UnitState.TIMEOUT,
    }
)
# The `mode` fixture's executor is reused across examples, which is what a user does too.
RUN_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Dag:
    """deps[i]: indices unit i depends on (all < i); units are added in ``order``."""

    deps: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]
    failing: frozenset[int] = frozenset()
    flaky: frozenset[int] = frozenset()

    @property
    def n(self):
        return len(self.deps)

    def descendants(self, roots):
        """Every unit downstream of ``roots`` (not the roots themselves, unless downstream)."""
        dependents = {i: [] for i in range(self.n)}
        for i, row in enumerate(self.deps):
            for j in row:
                dependents[j].append(i)
        seen = set()
        stack = list(roots)
        while stack:
            for j in dependents[stack.pop()]:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    def expected_values(self):
        values = {}
        for i, row in enumerate(self.deps):  # deps point backwards: index order is topological
            values[i] = value_of(i, [values[j] for j in row])
        return values


def value_of(i, dependency_values):
    return (i + 3 * sum(dependency_values)) % 1_000_003


@st.composite
def dags(draw, *, max_units=25, failures=False, retries=False):
    n = draw(st.integers(min_value=1, max_value=max_units))
    deps = []
    for i in range(n):
        if i == 0:
            deps.append(())
            continue
        row = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=min(i, 4)))
        deps.append(tuple(sorted(row)))
    order = tuple(draw(st.permutations(range(n))))
    some_units = st.frozensets(st.integers(min_value=0, max_value=n - 1), max_size=3)
    failing = draw(some_units) if failures else frozenset()
    flaky = draw(some_units) - failing if retries else frozenset()
    return Dag(tuple(deps), order, failing, flaky)


class Log:
    """(event, unit, attempt) tuples in the order they happened, from any thread."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def add(self, *event):
        with self.lock:
            self.events.append(event)


def name(i):
    return f"u{i}"


def build(dag, log):
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    for i in dag.order:
        p.add_unit(
            make_unit(i, dag, log),
            [name(j) for j in dag.deps[i]],
            name=name(i),
            retries=1 if i in dag.flaky else 0,
        )
    return p


def make_unit(i, dag, log):
    dep_names = [name(j) for j in dag.deps[i]]

    def unit(ctx):
        log.add("start", ctx.unit_id, ctx.attempt)
        try:
            if i in dag.failing:
                raise ValueError(f"{ctx.unit_id} fails")
            if i in dag.flaky and ctx.attempt == 1:
                raise ConnectionError(f"{ctx.unit_id} flakes")
            return value_of(i, [ctx[d] for d in dep_names])
        finally:
            log.add("end", ctx.unit_id, ctx.attempt)

    return unit


# -- properties ------------------------------------------------------------------------------


@RUN_SETTINGS
@given(dag=dags())
def test_results_equal_the_sequential_run(mode, dag):
    """Every mode returns what a SEQUENTIAL run returns, which is the expected value of each."""
    results = mode.execute(build(dag, Log()))
    sequential = build(dag, Log()).execute(None, ExecutionMode.SEQUENTIAL)

    assert results == sequential
    assert results == {name(i): v for i, v in dag.expected_values().items()}


@RUN_SETTINGS
@given(dag=dags(retries=True))
def test_no_unit_starts_before_its_dependencies_completed(mode, dag):
    """Each unit's first start comes after the last (successful) attempt of each dependency."""
    log = Log()
    mode.execute(build(dag, log))

    events = log.events
    first_start = {}
    last_end = {}
    for position, (kind, unit, _) in enumerate(events):
        if kind == "start":
            first_start.setdefault(unit, position)
        else:
            last_end[unit] = position
    assert set(first_start) == {name(i) for i in range(dag.n)}
    for i, row in enumerate(dag.deps):
        for j in row:
            assert last_end[name(j)] < first_start[name(i)], (name(j), name(i), events)


@RUN_SETTINGS
@given(dag=dags(retries=True))
def test_each_unit_runs_once_per_attempt(mode, dag):
    """A unit's function is called exactly once per attempt: once, or twice if it flaked."""
    log = Log()
    p = build(dag, log)
    mode.execute(p)

    for i in range(dag.n):
        unit = p.units[name(i)]
        calls = sorted(a for kind, u, a in log.events if kind == "start" and u == unit.id)
        expected_attempts = 2 if i in dag.flaky else 1
        assert unit.attempt == expected_attempts
        assert calls == list(range(1, expected_attempts + 1))
        assert unit.state is UnitState.COMPLETED


@RUN_SETTINGS
@given(dag=dags(failures=True, retries=True))
def test_every_unit_ends_in_exactly_one_terminal_state(mode, dag):
    """With failures and retries, each unit is terminal and counted in exactly one state."""
    p = build(dag, Log())
    results = mode.execute(p)

    final = {unit_id: unit.state for unit_id, unit in p.units.items()}
    assert set(final) == {name(i) for i in range(dag.n)}
    assert set(final.values()) <= TERMINAL
    metrics = p.last_execution_metrics
    by_state = [
        metrics["completed_units"],
        metrics["failed_units"],
        metrics["skipped_units"],
        metrics["canceled_units"],
    ]
    assert sum(by_state) == dag.n
    assert set(results) == {u for u, s in final.items() if s is UnitState.COMPLETED}
    assert p.completed_units.isdisjoint(p.failed_units)


@RUN_SETTINGS
@given(dag=dags(failures=True))
def test_skipped_set_is_exactly_the_transitive_dependents_of_failures(mode, dag):
    """Units downstream of a failing unit are SKIPPED, failing ones FAILED, the rest COMPLETED."""
    log = Log()
    p = build(dag, log)
    mode.execute(p)

    downstream = dag.descendants(dag.failing)
    expected = {}
    for i in range(dag.n):
        if i in downstream:
            expected[name(i)] = UnitState.SKIPPED
        elif i in dag.failing:
            expected[name(i)] = UnitState.FAILED
        else:
            expected[name(i)] = UnitState.COMPLETED
    assert {unit_id: unit.state for unit_id, unit in p.units.items()} == expected
    started = {u for kind, u, _ in log.events if kind == "start"}
    assert started.isdisjoint({name(i) for i in downstream})
