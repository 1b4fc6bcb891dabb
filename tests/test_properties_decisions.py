"""Property tests: random DAGs with join rules, conditions and skips, driven in random order.

Hypothesis draws a DAG whose units each have a join rule (``run_if``), maybe a condition
and a fallback, and an outcome (complete, fail, or ``ctx.skip``). The test plays the driver
in a random order: start a ready unit, finish a running one, answer a condition. Checked:

* every unit ends in exactly one terminal state and the run ends;
* no unit starts before what its rule needs is terminal (``at_least(k)``: k ok);
* the final states and skip causes equal an oracle computed here from the rules' definition
  over the drawn DAG (so they are the same in every order, hence equal to SEQUENTIAL's),
  except with ``cancel_rest``, where which dependencies get cancelled depends on timing;
* real runs in THREAD and ASYNC mode end with the states, causes and results of SEQUENTIAL
  (graphs without ``at_least``, whose inputs depend on timing by design).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_partitioner import (
    ExecutionMode,
    QuantumPartitioner,
    QuantumUnit,
    Scheduler,
    SkipCause,
    SkipUnit,
    UnitSkippedError,
    UnitState,
    at_least,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner._joins import Verdict, join_rule, judge

COMPLETED = UnitState.COMPLETED
FAILED = UnitState.FAILED
SKIPPED = UnitState.SKIPPED
CANCELED = UnitState.CANCELED
RUNNING = UnitState.RUNNING
RULE_NAMES = ["all_success", "none_failed", "all_done", "any_success", "at_least"]


def noop(ctx):
    return None


@dataclass
class Drawn:
    deps: list[list[int]]
    rule: list[object]
    cancel_rest: list[bool]
    condition: list[bool | None]  # None: no condition
    fallback: list[bool]
    outcome: list[str]  # "ok", "fail", "skip"

    def units(self):
        return [
            QuantumUnit(
                f"u{i}",
                noop,
                [f"u{j}" for j in self.deps[i]],
                metadata={"fallback_value": f"fb{i}"} if self.fallback[i] else {},
                condition=None if self.condition[i] is None else noop,
                run_if=join_rule(self.rule[i]) if isinstance(self.rule[i], str) else self.rule[i],
                cancel_rest=self.cancel_rest[i],
            )
            for i in range(len(self.deps))
        ]


@st.composite
def drawn_dags(draw):
    n = draw(st.integers(1, 9))
    deps, rules, cancel = [], [], []
    for i in range(n):
        row = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else []
        deps.append(row)
        name = draw(st.sampled_from(RULE_NAMES)) if row else "all_success"
        if name == "at_least":
            rules.append(at_least(draw(st.integers(1, len(row)))))
            cancel.append(draw(st.booleans()))
        else:
            rules.append(name)
            cancel.append(False)
    return Drawn(
        deps,
        rules,
        cancel,
        draw(st.lists(st.sampled_from([None, None, True, False]), min_size=n, max_size=n)),
        draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        draw(st.lists(st.sampled_from(["ok", "ok", "fail", "skip"]), min_size=n, max_size=n)),
    )


def oracle(dag):
    """Final (state, cause) of each unit, from the rules' definition, in topological order."""
    final: list[tuple[UnitState, SkipCause | None]] = []
    kind_of: list[int] = []  # 0 ok, 1 failed, 2 skipped
    for i, row in enumerate(dag.deps):
        rule = join_rule(dag.rule[i]) if isinstance(dag.rule[i], str) else dag.rule[i]
        kinds = [kind_of[j] for j in row]
        ok, bad, skip = kinds.count(0), kinds.count(1), kinds.count(2)
        verdict = judge(rule, ok, bad, skip, 0) if row else Verdict.RUN
        if verdict is Verdict.SKIP:
            cause = SkipCause.UPSTREAM_FAILED if bad else SkipCause.JOIN_RULE
            final.append((SKIPPED, cause))
            kind_of.append(1 if bad else 2)
        elif dag.condition[i] is False:
            final.append((SKIPPED, SkipCause.CONDITION))
            kind_of.append(2)
        elif dag.outcome[i] == "ok":
            final.append((COMPLETED, None))
            kind_of.append(0)
        elif dag.outcome[i] == "skip":
            final.append((SKIPPED, SkipCause.DECISION))
            kind_of.append(2)
        else:
            final.append((FAILED, None))
            kind_of.append(0 if dag.fallback[i] else 1)
    return final


def ok_dep(sched, j):
    state = sched.state[j]
    return state is COMPLETED or (state is FAILED and j in sched.fallbacks)


def drive(dag, choices):
    """Run the scheduler, choosing among possible steps with ``choices``; check each start."""
    sched = Scheduler(compile_graph(dag.units()))
    rules = [join_rule(r) if isinstance(r, str) else r for r in dag.rule]
    running: list[int] = []
    for _ in range(1000):
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
        step = steps[choices.draw(st.integers(0, len(steps) - 1))]
        if step == "decide":
            i = sched.to_decide.pop(choices.draw(st.integers(0, len(sched.to_decide) - 1)))
            sched.decide(i, holds=bool(dag.condition[i]), now=0.0)
        elif step == "start":
            i = sched.start_next(0.0)
            row = dag.deps[i]
            if rules[i].name == "at_least":
                assert sum(ok_dep(sched, j) for j in row) >= rules[i].k
            else:
                assert all(sched.state[j].is_terminal for j in row), f"u{i} started early"
            running.append(i)
        else:
            i = running.pop(choices.draw(st.integers(0, len(running) - 1)))
            attempt = sched.attempts[i]
            if dag.outcome[i] == "ok":
                sched.complete(i, attempt, i, 0.0)
            else:
                error = SkipUnit("drawn") if dag.outcome[i] == "skip" else ValueError(i)
                sched.fail(i, attempt, error, 0.0)
    return sched


@settings(max_examples=300, deadline=None)
@given(drawn_dags(), st.data())
def test_rules_end_every_unit_once_never_early_and_as_the_definition_says(dag, choices):
    """Exactly one terminal state each, no early start, final states as the oracle says."""
    sched = drive(dag, choices)
    assert not sched.is_active()
    assert all(state.is_terminal for state in sched.state)
    assert sched.terminal == len(dag.deps)
    assert sched.running == 0
    got = [
        (state, e.cause if isinstance(e := sched.errors.get(i), UnitSkippedError) else None)
        for i, state in enumerate(sched.state)
    ]
    if any(dag.cancel_rest):
        # Timing decides what cancel_rest cancels; what is not cancelled follows the rules.
        expected = oracle(dag)
        for i, (state, cause) in enumerate(got):
            if state is not CANCELED and not any(sched.state[j] is CANCELED for j in dag.deps[i]):
                assert (state, cause) == expected[i] or state is CANCELED
        return
    assert got == oracle(dag)


def act(outcome, ctx):
    """A unit of the run-level property: its outcome is drawn; its result shows its inputs."""
    if outcome == "fail":
        raise ValueError(ctx.unit_id)
    if outcome == "skip":
        ctx.skip("drawn")
    return [ctx.unit_id, sorted(ctx.unit_results), sorted(ctx.upstream_errors)]


def partitioner_of(dag):
    p = QuantumPartitioner(max_workers=3)
    for unit in dag.units():
        i = int(unit.id[1:])
        holds = dag.condition[i]
        p.add_unit(
            partial(act, dag.outcome[i]),
            unit.dependencies,
            name=unit.id,
            metadata=unit.metadata,
            when=None if holds is None else (lambda ctx, holds=holds: holds),
            run_if=unit.run_if,
        )
    return p


def outcome_of(p):
    return {
        name: (unit.state, getattr(unit.error, "cause", None), unit.result)
        for name, unit in p.units.items()
    }


@settings(max_examples=25, deadline=None)
@given(drawn_dags().filter(lambda d: not any(getattr(r, "k", 0) for r in d.rule)))
def test_threads_and_the_event_loop_end_as_sequential_does(dag):
    """THREAD and ASYNC runs of a random graph with rules end exactly as SEQUENTIAL does."""
    reference = partitioner_of(dag)
    expected_results = reference.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    expected = outcome_of(reference)
    assert [(s, c) for s, c, _ in expected.values()] == oracle(dag)
    for mode in (ExecutionMode.THREAD, ExecutionMode.ASYNC):
        p = partitioner_of(dag)
        assert p.execute(execution_mode=mode) == expected_results
        assert outcome_of(p) == expected
