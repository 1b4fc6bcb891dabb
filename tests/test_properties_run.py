"""Property tests: random DAGs of up to 25 units, run in every execution mode.

Each unit computes a number from its index and its dependencies' results, and each of its
attempts appends "start" and "end" lines to a log file: units may run in other processes,
and the order of the file's lines is the order in which those events happened, whichever
process wrote them. Expectations (results, the skipped set) are computed here from the
drawn graph, independently of the library.

Units come from ``tests/backends/_contract_units.py`` (put on ``sys.path``), so they pickle by
name for a plain ProcessPoolExecutor. Modes running units in other processes draw fewer
graphs, which keeps this file fast. A PROCESS run starts its worker processes, which costs
more than the rest of a small run: in that mode one drawn graph in FRESH_PROCESS_RUN_EVERY
runs as the mode runs it, starting its own workers, and the others run on one
``ProcessBackend(reuse=True)`` whose workers serve run after run (as a user's executor is
reused, below), so both ways of running in worker processes are checked on random graphs.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
)
from quantum_partitioner.backends import ProcessBackend

sys.path.insert(0, str(Path(__file__).parent / "backends"))
import _contract_units as units  # needs the sys.path entry above

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
EXAMPLES = 50
EXAMPLES_IN_PROCESSES = 20
FRESH_PROCESS_RUN_EVERY = 4


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
            values[i] = units.value_of(i, [values[j] for j in row])
        return values


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
    """A file units append ``start|end <unit> <attempt>`` lines to, from any process."""

    def __init__(self, path):
        self.path = path

    @property
    def events(self):
        """(event, unit, attempt) tuples in the order they happened."""
        if not self.path.exists():
            return []
        rows = (line.split() for line in self.path.read_text().splitlines())
        return [(kind, unit, int(attempt)) for kind, unit, attempt in rows]


def name(i):
    return f"u{i}"


def build(dag, log=None):
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    for i in dag.order:
        dependencies = [name(j) for j in dag.deps[i]]
        function = units.dag_unit(
            None if log is None else str(log.path),
            i,
            dependencies,
            fails=i in dag.failing,
            flakes=i in dag.flaky,
        )
        p.add_unit(function, dependencies, name=name(i), retries=1 if i in dag.flaky else 0)
    return p


def property_test(strategy):
    """Turn ``check(mode, dag, log)`` into a test of it on ``strategy``'s DAGs in each mode.

    The test takes the ``mode`` and ``tmp_path`` fixtures; each drawn DAG gets a new Log.
    Hypothesis runs inside the test, so the number of examples can depend on the mode.
    """

    def decorate(check):
        def test(mode, tmp_path):
            examples = EXAMPLES_IN_PROCESSES if mode.in_processes else EXAMPLES
            logs = (Log(tmp_path / f"log-{n}") for n in itertools.count())
            with ExitStack() as stack:
                modes = itertools.repeat(mode)
                if mode.kwargs["execution_mode"] is ExecutionMode.PROCESS:
                    backend = stack.enter_context(ProcessBackend(2, reuse=True))
                    reusing = dataclasses.replace(mode, kwargs={**mode.kwargs, "backend": backend})
                    modes = itertools.cycle([mode] + [reusing] * (FRESH_PROCESS_RUN_EVERY - 1))

                @settings(max_examples=examples, deadline=None, database=None)
                @given(dag=strategy)
                def run(dag):
                    check(next(modes), dag, next(logs))

                run()

        # pytest must see test(mode, tmp_path): no functools.wraps, whose __wrapped__ it reads.
        test.__name__ = test.__qualname__ = check.__name__
        test.__doc__ = check.__doc__
        test.__module__ = check.__module__
        return test

    return decorate


# -- properties ------------------------------------------------------------------------------
# The `mode` fixture's executor is reused across examples, which is what a user does too.


@property_test(dags())
def test_results_equal_the_sequential_run(mode, dag, log):
    """Every mode returns what a SEQUENTIAL run returns, which is the expected value of each."""
    results = mode.execute(build(dag, log))
    sequential = build(dag).execute(None, ExecutionMode.SEQUENTIAL)

    assert results == sequential
    assert results == {name(i): v for i, v in dag.expected_values().items()}


@property_test(dags(retries=True))
def test_no_unit_starts_before_its_dependencies_completed(mode, dag, log):
    """Each unit's first start comes after the last (successful) attempt of each dependency."""
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


@property_test(dags(retries=True))
def test_each_unit_runs_once_per_attempt(mode, dag, log):
    """A unit's function is called exactly once per attempt: once, or twice if it flaked."""
    p = build(dag, log)
    mode.execute(p)

    events = log.events
    for i in range(dag.n):
        unit = p.units[name(i)]
        calls = sorted(a for kind, u, a in events if kind == "start" and u == unit.id)
        expected_attempts = 2 if i in dag.flaky else 1
        assert unit.attempt == expected_attempts
        assert calls == list(range(1, expected_attempts + 1))
        assert unit.state is UnitState.COMPLETED


@property_test(dags(failures=True, retries=True))
def test_every_unit_ends_in_exactly_one_terminal_state(mode, dag, log):
    """With failures and retries, each unit is terminal and counted in exactly one state."""
    p = build(dag, log)
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


@property_test(dags(failures=True))
def test_skipped_set_is_exactly_the_transitive_dependents_of_failures(mode, dag, log):
    """Units downstream of a failing unit are SKIPPED, failing ones FAILED, the rest COMPLETED."""
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
