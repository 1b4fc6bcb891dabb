"""Named limits and run deadlines in the sans-I/O core, driven by hand with a FakeClock.

Each test plays the driver (``start_next`` / ``complete`` / ``advance``) over a Scheduler
whose units name :class:`Limit` objects, then the facade's argument checks.
"""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from quantum_partitioner import (
    ExecutionMode,
    Limit,
    QuantumPartitioner,
    QuantumUnit,
    Scheduler,
    UnitCancelledError,
    UnitState,
)
from quantum_partitioner._graph import compile_graph
from quantum_partitioner._limits import LimitPlan

PENDING = UnitState.PENDING
RUNNING = UnitState.RUNNING
CANCELED = UnitState.CANCELED


def noop(ctx):
    return None


def limited(spec, *, priorities=None, timeouts=None, deps=None):
    """A Scheduler over independent units ``spec`` = ``{name: {Limit: slots}}`` (in order)."""
    priorities = priorities or {}
    timeouts = timeouts or {}
    deps = deps or {}
    units = [
        QuantumUnit(
            name,
            noop,
            deps.get(name, []),
            timeout=timeouts.get(name),
            priority=priorities.get(name, 0),
        )
        for name in spec
    ]
    graph = compile_graph(units)
    needs = {graph.index[name]: wanted for name, wanted in spec.items() if wanted}
    return Scheduler(graph, limits=LimitPlan.compile(needs))


def start(sched, now=0.0):
    i = sched.start_next(now)
    return None if i < 0 else sched.names[i]


def done(sched, name, now=0.0):
    i = sched.names.index(name)
    assert sched.complete(i, sched.attempts[i], None, now) >= 0


def test_full_limit_does_not_block_the_next_ready_unit():
    """A unit whose limit is full waits (PENDING); the next ready unit without it starts."""
    a = Limit("a", concurrency=1)
    sched = limited({"x": {a: 1}, "y": {a: 1}, "free": {}})
    assert start(sched) == "x"
    assert start(sched) == "free"  # y waits: no head-of-line blocking
    assert start(sched) is None
    assert sched.state[1] is PENDING
    assert sched.waiting_on_limits == 1
    done(sched, "x", 1.0)
    assert start(sched, 1.0) == "y"
    assert a.held == 1


def test_a_waiting_unit_timeout_starts_when_it_starts():
    """The timeout of a unit that waited counts from its start, not from when it was ready."""
    a = Limit("a", concurrency=1)
    sched = limited({"x": {a: 1}, "y": {a: 1}}, timeouts={"y": 1.0})
    assert start(sched) == "x"
    assert start(sched) is None
    done(sched, "x", 5.0)
    assert start(sched, 5.0) == "y"
    assert sched.next_deadline() == 6.0
    assert sched.advance(5.9) == []
    assert sched.gate is not None
    assert sched.gate.unit_waited[1] == 5.0


def test_best_waiting_unit_reserves_what_frees_up():
    """A 2-slot unit waiting on a limit is not overtaken by worse 1-slot units."""
    a = Limit("a", concurrency=2)
    sched = limited({"one": {a: 1}, "big": {a: 2}, "small": {a: 1}, "small2": {a: 1}})
    assert start(sched) == "one"
    assert start(sched) is None  # big waits; small and small2 queue behind it
    done(sched, "one", 1.0)
    assert start(sched, 1.0) == "big"
    assert start(sched, 1.0) is None
    done(sched, "big", 2.0)
    assert {start(sched, 2.0), start(sched, 2.0)} == {"small", "small2"}


def test_rate_limit_is_a_deadline_not_a_sleep():
    """per_second=2, burst=1: the second start waits for the next token, a deadline."""
    r = Limit("r", per_second=2.0)
    sched = limited({"x": {r: 1}, "y": {r: 1}, "z": {r: 1}})
    assert start(sched, 10.0) == "x"
    assert start(sched, 10.0) is None
    assert sched.next_deadline() == pytest.approx(10.5)
    sched.advance(10.5)
    assert start(sched, 10.5) == "y"
    assert start(sched, 10.5) is None
    assert sched.next_deadline() == pytest.approx(11.0)
    sched.advance(11.0)
    assert start(sched, 11.0) == "z"


def test_burst_allows_starts_at_once():
    """burst=3 lets three start at once, then one per 1/per_second."""
    r = Limit("r", per_second=10.0, burst=3)
    sched = limited({f"u{k}": {r: 1} for k in range(5)})
    assert [start(sched, 0.0) for _ in range(4)] == ["u0", "u1", "u2", None]
    assert sched.next_deadline() == pytest.approx(0.1)


def test_slots_come_back_on_failure_timeout_and_cancel():
    """Every outcome releases the slots; a timed-out attempt is counted as released."""
    a = Limit("a", concurrency=3)
    sched = limited({"f": {a: 1}, "t": {a: 1}, "c": {a: 1}}, timeouts={"t": 1.0})
    for _ in range(3):
        start(sched)
    assert a.held == 3
    sched.fail(0, 1, ValueError("boom"), 0.5)
    assert a.held == 2
    sched.advance(1.0)
    assert a.held == 1
    assert sched.gate is not None
    assert sched.gate.released_at_timeout == [1]
    sched.cancel(1.5, "stop")
    assert a.held == 0


def test_sequential_order_waits_for_the_best_units_token():
    """in_order (SEQUENTIAL): a token-blocked best unit is not overtaken by the next one."""
    r = Limit("r", per_second=1.0)
    sched = limited({"x": {r: 1}, "y": {r: 1}, "free": {}})
    assert sched.gate is not None
    sched.gate.in_order = True
    assert start(sched) == "x"
    done(sched, "x")
    assert start(sched) is None  # "free" would be ready, but y is better and waits
    sched.advance(1.0)
    assert start(sched, 1.0) == "y"
    assert start(sched, 1.0) == "free"


def test_shared_limit_wakes_the_other_run():
    """Two schedulers share a Limit: a release in one nudges and wakes the waiting other."""
    a = Limit("a", concurrency=1)
    first = limited({"x": {a: 1}})
    second = limited({"y": {a: 1}})
    woken = []
    assert second.gate is not None
    second.gate.wake = lambda: woken.append(True)
    for sched in (first, second):
        assert sched.gate is not None
        sched.gate.open()
    assert start(first) == "x"
    assert start(second) is None
    assert second.next_deadline() is None  # nothing to wait for but the other run
    done(first, "x", 1.0)
    assert woken == [True]
    assert second.next_deadline() == -math.inf
    second.advance(1.0)
    assert start(second, 1.0) == "y"
    for sched in (first, second):
        sched.gate.close()


def test_cache_hit_takes_no_slot_or_token():
    """A unit the probe reports as a cache hit starts without taking its limits."""
    r = Limit("r", per_second=1.0)
    sched = limited({"x": {r: 1}, "y": {r: 1}})
    assert sched.gate is not None
    sched.gate.probe = lambda i: i == 1
    assert start(sched) == "x"
    assert start(sched) == "y"  # served from the cache: no token needed
    assert r.tokens == 0.0


def test_pause_holds_back_new_starts():
    """A paused limit starts nothing until the pause ends (a deadline)."""
    a = Limit("a", concurrency=5)
    sched = limited({"x": {a: 1}, "y": {a: 1}})
    assert start(sched) == "x"
    a.pause(3.0)
    assert start(sched, 1.0) is None
    assert sched.next_deadline() == 3.0
    sched.advance(3.0)
    assert start(sched, 3.0) == "y"


def test_run_deadline_cancels_everything_unfinished():
    """At the run deadline, running and pending units are CANCELED with the reason."""
    units = [QuantumUnit(n, noop, []) for n in ("a", "b")]
    sched = Scheduler(compile_graph(units))
    sched.set_run_deadline(5.0, "the run's deadline of 5 s passed")
    assert start(sched) == "a"
    assert sched.next_deadline() == 5.0
    transitions = sched.advance(5.0)
    assert {t.index: t.was_running for t in transitions} == {0: True, 1: False}
    assert sched.state == [CANCELED, CANCELED]
    assert isinstance(sched.errors[0], UnitCancelledError)
    assert "deadline" in str(sched.errors[0])
    assert sched.stop_reason == "deadline"


# -- the facade ----------------------------------------------------------------------------


def test_bad_limits_are_refused_before_any_unit_runs():
    """Unknown limit names, too many slots and bad knobs raise, naming the unit or limit."""
    ran = []
    p = QuantumPartitioner()
    p.add_limit("gpu", concurrency=1)
    p.add_limit("api", per_second=5.0, burst=2)
    p.add_unit(lambda ctx: ran.append(1), name="ok", limits=["gpu"])
    p.add_unit(noop, name="bad", limits=["nope"])
    with pytest.raises(ValueError, match=r"unit 'bad' names the unknown limit 'nope'"):
        p.execute()
    p.add_unit(noop, name="bad", limits={"gpu": 2}, replace=True)
    with pytest.raises(ValueError, match=r"unit 'bad' asks for 2 slots of limit 'gpu'"):
        p.execute()
    p.add_unit(noop, name="bad", limits={"api": 3}, replace=True)
    with pytest.raises(ValueError, match=r"burst of 2"):
        p.execute()
    assert ran == []
    with pytest.raises(TypeError, match="limit name must be a string"):
        p.add_limit(3)  # type: ignore[arg-type]
    for knob in ({"concurrency": 0}, {"per_second": math.inf}, {"burst": -1}):
        with pytest.raises(ValueError, match=r"limit 'x': .* must be positive and finite"):
            p.add_limit("x", **knob)
    with pytest.raises(TypeError, match="concurrency must be an int"):
        p.add_limit("x", concurrency=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unit 'u': limits must be a list"):
        p.add_unit(noop, name="u", limits="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unit 'u': slots of limit 'gpu' must be >= 1"):
        p.add_unit(noop, name="u", limits={"gpu": 0})


def test_add_limit_replaces_and_lists_and_is_refused_during_a_run():
    """Same name replaces; ``limits`` lists them; adding one while a run goes on raises."""
    p = QuantumPartitioner()
    first = p.add_limit("a", concurrency=1)
    shared = Limit("a", concurrency=2)
    assert p.add_limit(shared) is shared
    assert dict(p.limits) == {"a": shared}
    assert first is not shared
    errors = []

    def unit(ctx):
        try:
            p.add_limit("b", concurrency=1)
        except RuntimeError as error:
            errors.append(error)

    p.add_unit(unit, limits=["a"])
    p.execute(execution_mode=ExecutionMode.THREAD)
    assert len(errors) == 1
    assert "while this partitioner is executing" in str(errors[0])


def test_deadline_must_be_positive_and_finite():
    """deadline= is checked before any unit runs."""
    p = QuantumPartitioner()
    p.add_unit(noop)
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="deadline must be positive and finite"):
            p.execute(deadline=bad)
    with pytest.raises(TypeError, match="deadline must be a number"):
        p.execute(deadline="1")  # type: ignore[arg-type]


def test_one_limit_shared_by_two_partitioners_running_at_once():
    """Two partitioners in two threads share one Limit: together they never exceed it."""
    shared = Limit("provider", concurrency=2)
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def call(ctx):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    partitioners = []
    for _ in range(2):
        p = QuantumPartitioner(max_workers=4)
        p.add_limit(shared)
        for k in range(6):
            p.add_unit(call, name=f"u{k}", limits=["provider"])
        partitioners.append(p)
    threads = [threading.Thread(target=p.execute) for p in partitioners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak[0] == 2
    assert all(len(p.completed_units) == 6 for p in partitioners)
    assert shared.held == 0


def test_pause_limit_from_a_unit_holds_back_the_next_start():
    """ctx.pause_limit(name, s) delays every later start on that limit by about s."""
    p = QuantumPartitioner()
    p.add_limit("api", concurrency=1)
    starts = {}

    def first(ctx):
        starts["first"] = time.perf_counter()
        ctx.pause_limit("api", 0.2)

    def second(ctx):
        starts["second"] = time.perf_counter()

    p.add_unit(first, name="first", limits=["api"], priority=1)
    p.add_unit(second, name="second", limits=["api"])
    p.execute(execution_mode=ExecutionMode.THREAD)
    assert starts["second"] - starts["first"] >= 0.19
    stats = p.limit_stats()["api"]
    assert stats.starts == 2
    assert stats.peak == 1
    assert p.last_execution_metrics is not None
    assert p.last_execution_metrics["unit_times"]["second"]["waited"] >= 0.15


def test_simulate_respects_concurrency_and_rate_limits():
    """plan.simulate(workers=N) shows a concurrency limit's and a rate limit's effect."""
    p = QuantumPartitioner()
    p.add_limit("gpu", concurrency=1)
    for k in range(4):
        p.add_unit(noop, name=f"g{k}", limits=["gpu"], metadata={"estimated_duration": 2.0})
    assert p.build_execution_plan().simulate(workers=4).makespan == 8.0
    q = QuantumPartitioner()
    api = q.add_limit("api", per_second=0.5)
    for k in range(3):
        q.add_unit(noop, name=f"a{k}", limits=["api"], metadata={"estimated_duration": 1.0})
    sim = q.build_execution_plan().simulate(workers=3)
    assert sorted(sim.starts.values()) == [0.0, 2.0, 4.0]
    assert api.tokens == 1.0  # the real bucket is untouched


def test_waiting_shows_in_the_trace_the_report_and_the_metrics(tmp_path):
    """A unit that waited for a limit: a "waiting for" slice, a report column, waited."""
    p = QuantumPartitioner(max_workers=2)
    gpu = p.add_limit("gpu", concurrency=1)

    def first(ctx):
        # Holds the slot until "second" is seen waiting for it (a loaded machine may start
        # the other worker late), then 50 ms more: "second" waits at least that long.
        deadline = time.monotonic() + 30
        while not gpu.waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)

    p.add_unit(first, name="first", limits=["gpu"], priority=1)
    p.add_unit(lambda ctx: None, name="second", limits=["gpu"])
    p.execute(execution_mode=ExecutionMode.THREAD)
    times = p.last_execution_metrics["unit_times"]
    assert times["second"]["waited"] >= 0.04
    assert times["second"]["waited_for"] == "gpu"
    assert times["first"]["waited"] == 0.0
    trace = json.loads(p.export_trace(tmp_path / "t.json").read_text())
    waits = [e for e in trace["traceEvents"] if e.get("cat") == "limit"]
    assert [e["ph"] for e in waits] == ["b", "e"]
    assert waits[0]["name"] == "waiting for gpu"
    assert waits[0]["args"]["unit"] == "second"
    html = p.write_report(tmp_path / "r.html").read_text()
    assert "<th>waited for a limit</th>" in html
    assert "(gpu)" in html


def test_limit_counts_its_waiters_over_runs():
    """Limit.waiting counts units waiting for it, and drops to 0 when they start."""
    a = Limit("a", concurrency=1)
    sched = limited({"x": {a: 1}, "y": {a: 1}, "z": {a: 1}})
    assert start(sched) == "x"
    assert start(sched) is None
    assert a.waiting == 2
    done(sched, "x", 1.0)
    assert a.waiting == 1
    sched.cancel(2.0, "stop")
    assert a.waiting == 0
