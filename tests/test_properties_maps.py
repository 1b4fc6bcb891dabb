"""Property tests: random graphs with maps (random item counts, 0 included), join rules and
conditions, driven in random order through the sans-I/O scheduler, then run for real.

Hypothesis draws a DAG whose nodes are units or maps (over an earlier unit, or item-wise over
an earlier map), each with a join rule and maybe a condition, and an outcome per unit and
per item (complete, fail, or ``ctx.skip``). Checked:

* every unit, map and item ends in exactly one terminal state and the run ends;
* nothing starts before what it needs is terminal: a unit's dependencies (its rule's), an
  item-wise item's parent item (completed), and a map ends only after all of its items;
* the final states do not depend on the order: a random order ends as the first-ready order
  does (which is SEQUENTIAL's);
* real runs in THREAD and ASYNC mode end with the states and results of SEQUENTIAL;
* with ``at_least(k)`` and ``cancel_rest`` (order-dependent by design): the run ends, and
  a map is never CANCELED while items of it go on to complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner import (
    ExecutionMode,
    QuantumPartitioner,
    QuantumUnit,
    Scheduler,
    SkipUnit,
    UnitState,
    at_least,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner._joins import join_rule

RUNNING = UnitState.RUNNING
COMPLETED = UnitState.COMPLETED
RULES = ["all_success", "none_failed", "all_done", "any_success"]


def noop(ctx):
    return None


@dataclass
class Drawn:
    over: list[int | None]  # None: an ordinary unit
    deps: list[list[int]]
    rule: list[str]
    condition: list[bool | None]
    outcome: list[str]  # of a unit
    items: list[int]  # of a unit: how many elements its result has
    item_outcome: dict[tuple[int, int], str]  # (map, index) -> outcome of that item
    quorum: dict[int, tuple[int, bool]] = field(default_factory=dict)  # at_least(k), cancel_rest

    def is_map(self, i):
        return self.over[i] is not None

    def units(self):
        return [
            QuantumUnit(
                f"n{i}",
                noop,
                [f"n{j}" for j in self.deps[i]],
                condition=None if self.condition[i] is None else noop,
                run_if=at_least(self.quorum[i][0]) if i in self.quorum else join_rule(self.rule[i]),
                cancel_rest=i in self.quorum and self.quorum[i][1],
                over=None if self.over[i] is None else f"n{self.over[i]}",
            )
            for i in range(len(self.deps))
        ]

    def count(self, m):
        """How many items map ``m`` has: its input's element count, through item-wise maps."""
        source = self.over[m]
        while self.is_map(source):
            source = self.over[source]
        return self.items[source]


OUTCOMES = ["ok", "ok", "ok", "fail", "skip"]


@st.composite
def drawn_graphs(draw):
    n = draw(st.integers(1, 8))
    over, deps, rules = [], [], []
    for i in range(n):
        maps_over = i and draw(st.booleans())
        over.append(draw(st.integers(0, i - 1)) if maps_over else None)
        others = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 2)))) if i else []
        others = [j for j in others if j != over[i]]
        deps.append(others)
        has_inputs = bool(others) or over[i] is not None
        rules.append(draw(st.sampled_from(RULES)) if has_inputs else "all_success")
    condition = draw(
        st.lists(st.sampled_from([None, None, None, True, False]), min_size=n, max_size=n)
    )
    outcome = draw(st.lists(st.sampled_from(OUTCOMES), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    dag = Drawn(over, deps, rules, condition, outcome, items, {})
    for m in range(n):
        if dag.is_map(m):
            for k in range(dag.count(m)):
                dag.item_outcome[m, k] = draw(st.sampled_from(OUTCOMES))
    return dag


@st.composite
def drawn_graphs_with_quorums(draw):
    """``drawn_graphs``, where some units with dependencies take ``at_least(k)`` (over a map
    it counts its items), half of them with ``cancel_rest``."""
    dag = draw(drawn_graphs())
    for i, inputs in enumerate(dag.deps):
        if inputs and not dag.is_map(i) and draw(st.integers(0, 2)) == 0:
            k = draw(st.integers(1, 3))
            if not any(dag.is_map(j) for j in inputs):
                k = min(k, len(inputs))
            dag.quorum[i] = (k, draw(st.booleans()))
    return dag


def drive(dag, pick):
    """Drive the scheduler, choosing each step with ``pick(number_of_choices)``; check it."""
    sched = Scheduler(compile_graph(dag.units()))
    running: list[int] = []
    now = 0.0
    for _ in range(2000):
        now += 1.0
        sched.outbox.clear()
        running = [i for i in running if sched.state[i] is RUNNING]
        steps = []
        if sched.to_decide:
            steps.append("decide")
        if sched.ready_count:
            steps.append("start")
        if running:
            steps.append("finish")
        if not steps:
            break
        step = steps[pick(len(steps))]
        if step == "decide":
            i = sched.to_decide.pop(pick(len(sched.to_decide)))
            if dag.condition[i] is False:
                sched.decide(i, holds=False, now=now)
            elif dag.is_map(i):
                over = dag.over[i]
                if dag.is_map(over):  # item-wise: it expands once the map it follows did
                    assert over in sched.items_of, f"n{i} expands before n{over}"
                    count = len(sched.items_of[over])
                else:
                    assert sched.state[over] is COMPLETED, f"n{i} expands over unfinished n{over}"
                    count = dag.count(i)
                assert count == dag.count(i)
                sched.expand(i, count, now)
            else:
                sched.decide(i, holds=True, now=now)
        elif step == "start":
            i = sched.start_next(now)
            parent = sched.item_parent.get(i)
            if parent is not None:
                assert sched.state[parent] is COMPLETED, f"{sched.names[i]} started early"
            elif i < len(dag.deps) and i not in dag.quorum:  # a quorum starts early
                for j in [*dag.deps[i], *([dag.over[i]] if dag.is_map(i) else [])]:
                    assert sched.state[j].is_terminal, f"{sched.names[i]} started early"
            running.append(i)
        else:
            i = running.pop(pick(len(running)))
            place = sched.item_of.get(i)
            outcome = dag.outcome[i] if place is None else dag.item_outcome[place]
            attempt = sched.attempts[i]
            if outcome == "ok":
                sched.complete(i, attempt, sched.names[i], now)
            else:
                error = SkipUnit("drawn") if outcome == "skip" else ValueError(i)
                sched.fail(i, attempt, error, now)
    return sched


def final_states(sched):
    return {sched.names[i]: state for i, state in enumerate(sched.state)}


@settings(max_examples=300, deadline=None)
@given(drawn_graphs(), st.data())
def test_maps_end_everything_once_never_early_and_whatever_the_order(dag, data):
    sched = drive(dag, lambda n: data.draw(st.integers(0, n - 1)))
    assert not sched.is_active()
    assert all(state.is_terminal for state in sched.state)
    assert sched.terminal == len(sched.state) == len(sched.names)
    assert sched.running == 0
    for m, items in sched.items_of.items():
        assert len(items) == dag.count(m)
        for j in items:  # a map ends after its items
            assert sched.ended[m] >= sched.ended[j]
        if sched.state[m] is COMPLETED:
            assert all(sched.state[j] is not UnitState.FAILED for j in items)
    for m in range(len(dag.deps)):
        if dag.is_map(m) and sched.state[m] is COMPLETED:
            assert m in sched.items_of
    first_ready = drive(dag, lambda n: 0)
    assert final_states(sched) == final_states(first_ready)


@settings(max_examples=150, deadline=None)
@given(drawn_graphs_with_quorums(), st.data())
def test_quorums_end_everything_once_and_never_cancel_a_map_whose_items_go_on(dag, data):
    """With at_least(k) and cancel_rest: the run ends, each unit once; a map ends after its
    items, and a CANCELED map has no item that completed after it."""
    sched = drive(dag, lambda n: data.draw(st.integers(0, n - 1)))
    assert not sched.is_active()
    assert all(state.is_terminal for state in sched.state)
    assert sched.terminal == len(sched.state)
    assert sched.running == 0
    for m, items in sched.items_of.items():
        for j in items:
            if sched.state[m] is UnitState.CANCELED:
                assert sched.state[j] is not COMPLETED or sched.ended[j] <= sched.ended[m]
            else:
                assert sched.ended[m] >= sched.ended[j]


def run_unit(dag, i, ctx):
    """A unit of the real runs: its outcome is drawn; its result shows its inputs."""
    place = (i, ctx.index) if dag.is_map(i) else None
    outcome = dag.outcome[i] if place is None else dag.item_outcome[place]
    if outcome == "fail":
        raise ValueError(ctx.unit_id)
    if outcome == "skip":
        ctx.skip("drawn")
    if place is None:
        return list(range(dag.items[i]))
    return [ctx.unit_id, ctx.item, sorted(ctx.unit_results)]


def build(dag):
    p = QuantumPartitioner(max_workers=3)
    for i in range(len(dag.deps)):
        options = {
            "name": f"n{i}",
            "dependencies": [f"n{j}" for j in dag.deps[i]],
            "run_if": dag.rule[i],
            "when": None
            if dag.condition[i] is None
            else partial(lambda holds, ctx: holds, dag.condition[i]),
        }
        if dag.is_map(i):
            p.add_map(partial(run_unit, dag, i), over=f"n{dag.over[i]}", **options)
        else:
            p.add_unit(partial(run_unit, dag, i), **options)
    return p


def outcome_of(p):
    metrics = p.last_execution_metrics
    ends = {r["unit"]: r["event"] for r in metrics["execution_trace"] if r["event"] != "start"}
    return ends, p.get_partial_results()


@settings(max_examples=40, deadline=None)
@given(drawn_graphs())
def test_real_runs_with_maps_end_as_sequential_does(dag):
    p = build(dag)
    p.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    expected = outcome_of(p)
    for mode in (ExecutionMode.THREAD, ExecutionMode.ASYNC):
        p.execute(execution_mode=mode)
        assert outcome_of(p) == expected, mode
