"""ExecutionPlan.simulate: the plan replayed on the real scheduler with a virtual clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner import QuantumPartitioner


def _partitioner(spec):
    p = QuantumPartitioner()
    for name, duration, deps in spec:
        p.add_unit(lambda ctx: None, deps, name=name, metadata={"estimated_duration": duration})
    return p


def test_simulation_packs_two_workers():
    """Two workers, the critical path first.

    a(2) --> b(3) --> e(1)
      \\--> c(1) --/
    d(4)
    Critical path a-b-e = 6 = the best possible makespan.
    """
    p = _partitioner(
        [("a", 2, []), ("b", 3, ["a"]), ("c", 1, ["a"]), ("d", 4, []), ("e", 1, ["b", "c"])]
    )
    sim = p.build_execution_plan().simulate(workers=2)
    assert sim.makespan == 6
    assert sim.critical_path_length == 6
    assert sim.starts == {"a": 0, "b": 2, "c": 4, "d": 0, "e": 5}
    assert sim.starts["b"] < sim.starts["c"]  # longer remaining path first


def test_priority_wins_over_the_critical_path():
    """A higher-priority unit starts first even on a shorter path."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: None, name="long", metadata={"estimated_duration": 5})
    p.add_unit(lambda ctx: None, name="urgent", priority=10, metadata={"estimated_duration": 1})
    sim = p.build_execution_plan().simulate(workers=1)
    assert sim.starts == {"urgent": 0, "long": 1}


def test_one_worker_runs_everything_back_to_back():
    """With one worker the makespan is the total work and utilisation is 1."""
    p = _partitioner([("a", 1, []), ("b", 2, []), ("c", 3, ["a"])])
    sim = p.build_execution_plan().simulate(workers=1)
    assert sim.makespan == 6
    assert sim.utilisation == pytest.approx(1.0)


def test_bad_worker_counts_are_refused():
    """workers must be a positive int."""
    plan = _partitioner([("a", 1, [])]).build_execution_plan()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            plan.simulate(workers=bad)


@st.composite
def weighted_dags(draw):
    n = draw(st.integers(1, 25))
    spec = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        spec.append((f"u{i}", draw(st.integers(1, 9)), [f"u{j}" for j in deps]))
    return spec


@settings(max_examples=60, deadline=None)
@given(weighted_dags(), st.integers(1, 4))
def test_simulated_schedules_are_valid_and_bounded(spec, workers):
    """Every unit starts after its dependencies end; at most `workers` overlap; bounds hold."""
    sim = _partitioner(spec).build_execution_plan().simulate(workers=workers)
    durations = {name: d for name, d, _ in spec}
    for name, duration, deps in spec:
        assert sim.ends[name] - sim.starts[name] == duration
        for dep in deps:
            assert sim.starts[name] >= sim.ends[dep]
    events = sorted([(t, 1) for t in sim.starts.values()] + [(t, -1) for t in sim.ends.values()])
    running = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        assert running <= workers
    total = sum(durations.values())
    assert sim.makespan >= max(sim.critical_path_length, total / workers) - 1e-9
    # Graham's bound for list scheduling: never worse than total/workers + critical path.
    assert sim.makespan <= total / workers + sim.critical_path_length + 1e-9
