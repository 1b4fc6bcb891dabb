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


def _agent(estimated_items=None):
    """plan(1) -> tool (a map, 2 per item) -> summary (item-wise, 1 per item) -> answer(1)."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: [], name="plan", metadata={"estimated_duration": 1})
    meta = {"estimated_duration": 2}
    if estimated_items is not None:
        meta["estimated_items"] = estimated_items
    p.add_map(lambda ctx: None, over="plan", name="tool", metadata=meta)
    p.add_map(lambda ctx: None, over="tool", name="summary", metadata={"estimated_duration": 1})
    p.add_unit(lambda ctx: None, ["summary"], name="answer", metadata={"estimated_duration": 1})
    return p


def test_a_map_expands_to_its_estimated_items_and_a_map_over_it_item_by_item():
    """4 tool items on 2 workers; depth first, each item's summary runs before the next tools."""
    sim = _agent(estimated_items=4).build_execution_plan().simulate(workers=2)
    tools = [f"tool[{i}]" for i in range(4)]
    summaries = [f"summary[{i}]" for i in range(4)]
    assert set(sim.worker_of) == {"plan", "answer", *tools, *summaries}  # maps run nowhere
    # summary[0] and [1] start as tool[0] and [1] end, before tool[2] and [3].
    assert [sim.starts[t] for t in tools] == [1, 1, 4, 4]
    assert [sim.starts[s] for s in summaries] == [3, 3, 6, 6]
    assert (sim.starts["tool"], sim.ends["tool"]) == (1, 6)
    assert sim.ends["summary"] == 7
    assert sim.starts["answer"] == 7
    assert sim.makespan == 8
    assert sim.utilisation == pytest.approx((1 + 4 * 2 + 4 * 1 + 1) / (2 * 8))


def test_a_map_without_an_estimate_has_one_item_and_zero_items_end_at_once():
    """By default a map simulates one item; estimated_items=0 completes it at once."""
    one = _agent().build_execution_plan().simulate(workers=2)
    assert [name for name in one.starts if "[" in name] == ["tool[0]", "summary[0]"]
    assert one.makespan == 1 + 2 + 1 + 1
    none = _agent(estimated_items=0).build_execution_plan().simulate(workers=2)
    assert (none.ends["tool"], none.starts["answer"], none.makespan) == (1, 1, 2)


@pytest.mark.parametrize(("bad", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_estimated_items_is_refused_naming_the_map(bad, error):
    """estimated_items must be an int >= 0, checked by add_map."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: [], name="plan")
    with pytest.raises(error, match=r"'tool'.*estimated_items"):
        p.add_map(lambda ctx: None, over="plan", name="tool", metadata={"estimated_items": bad})
