"""Named limits and run deadlines, the same in every execution mode (the contract suite).

Every test takes the ``mode`` fixture (tests/conftest.py) and checks what a run records:
the scheduler's start and end times, states and errors. Unit functions come from
``_contract_units`` so that every mode, a plain process pool included, can run them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from quantum_partitioner import (
    CachingQuantumPartitioner,
    ExponentialBackoff,
    MemoryStore,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
    at_least,
)

sys.path.insert(0, str(Path(__file__).parent))
import itertools

import _contract_units as u  # needs the sys.path entry above


def peak_overlap(partitioner, names):
    """The most units of ``names`` running at once, from the recorded start/end times."""
    times = partitioner.last_execution_metrics["unit_times"]
    events = []
    for name in names:
        events += [(times[name]["start"], 1), (times[name]["end"], -1)]
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def warm_up(mode):
    """Start a caller's process pool's workers now, so their start-up is not timed below."""
    p = QuantumPartitioner()
    for k in range(2):
        p.add_unit(u.sleep(0.05, k), name=f"warm_up{k}")
    mode.execute(p)


def test_concurrency_limit_caps_running_units_and_waiting_is_not_timed(mode):
    """concurrency=2: never more than 2 run at once, and no unit times out while waiting."""
    warm_up(mode)
    p = QuantumPartitioner(max_workers=6)
    p.add_limit("provider", concurrency=2)
    names = [f"call{k}" for k in range(6)]
    for name in names:
        # The last two wait 0.8 s, then run 0.4 s: a timeout that counted the wait would
        # end them (and one that counts only the run leaves a loaded machine 0.6 s).
        p.add_unit(u.sleep(0.4, name), name=name, limits=["provider"], timeout=1.0)
    p.add_unit(u.const("free"), name="free")
    results = mode.execute(p)
    assert results == {**{name: name for name in names}, "free": "free"}
    assert peak_overlap(p, names) <= 2
    stats = p.limit_stats()["provider"]
    assert stats.starts == 6
    assert stats.peak <= 2
    if mode.concurrent and not mode.in_processes:  # those modes have only 2 workers here
        assert stats.peak == 2
        assert stats.waited > 0
        assert max(p.last_execution_metrics["unit_times"][n]["waited"] for n in names) > 0.6


def test_rate_limit_spaces_starts(mode):
    """per_second=20 with burst=1: starts are at least ~1/20 s apart."""
    p = QuantumPartitioner(max_workers=4)
    p.add_limit("api", per_second=20.0)
    names = [f"r{k}" for k in range(4)]
    for name in names:
        p.add_unit(u.const(name), name=name, limits={"api": 1})
    mode.execute(p)
    times = p.last_execution_metrics["unit_times"]
    starts = sorted(times[name]["start"] for name in names)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.045


def test_deadline_cancels_unfinished_units_and_keeps_results(mode):
    """deadline=: what has not finished is CANCELED saying so; completed results stay."""
    warm_up(mode)
    p = QuantumPartitioner(max_workers=3)
    p.add_unit(u.const("fast"), name="fast", priority=10)
    for k in range(3):
        p.add_unit(u.sleep(2.5, k), name=f"slow{k}")
    began = time.perf_counter()
    results = mode.execute(p, deadline=1.0)
    took = time.perf_counter() - began
    assert results == {"fast": "fast"}
    for k in range(3):
        unit = p.units[f"slow{k}"]
        assert unit.state is UnitState.CANCELED
        assert "deadline of 1 s passed" in str(unit.error)
    assert p.last_execution_metrics["stop_reason"] == "deadline"
    if mode.concurrent:
        assert took < 2.2  # running attempts were stopped or abandoned, not waited for


def test_deadline_while_a_retry_or_a_token_is_awaited_ends_the_run(mode):
    """The deadline passes while the run waits for a backoff and a rate limit's token.

    SEQUENTIAL used to find nothing to do once the deadline had cancelled the rest, and
    raised InternalError instead of returning.
    """
    warm_up(mode)
    p = QuantumPartitioner(retry_policy=RetryPolicy(backoff=ExponentialBackoff(initial=30)))
    p.add_limit("api", per_second=0.1)  # one token now, the next in 10 s
    p.add_unit(u.flaky(succeed_on=2), name="flaky", retries=1, priority=2)
    p.add_unit(u.const("first"), name="first", limits=["api"], priority=1)
    p.add_unit(u.const("second"), name="second", limits=["api"])
    began = time.perf_counter()
    results = mode.execute(p, deadline=1.0)
    assert time.perf_counter() - began < 5
    # Worker processes may still be starting at the deadline on a loaded machine.
    assert results == {"first": "first"} or (mode.in_processes and results == {})
    assert p.units["flaky"].state is UnitState.CANCELED
    assert p.units["second"].state is UnitState.CANCELED
    assert p.last_execution_metrics["stop_reason"] == "deadline"


def test_ctx_cancelled_turns_true_at_the_timeout_and_at_the_deadline(mode, tmp_path):
    """A unit watching ctx.cancelled stops at its timeout and at the run's deadline.

    In SEQUENTIAL too, where nothing acts while the unit runs: ctx.cancelled used to stay
    false there, so such a unit ran to its own end (30 s here).
    """
    if mode.pickles_functions_by_name:
        pytest.skip("in a plain process pool a unit cannot see ctx.cancelled")
    never = str(tmp_path / "never")
    p = QuantumPartitioner()
    p.add_unit(u.wait_for_file(never, "late"), name="timed", timeout=0.3)
    began = time.perf_counter()
    assert mode.execute(p) == {}
    assert time.perf_counter() - began < 5
    assert p.units["timed"].state is UnitState.TIMEOUT
    q = QuantumPartitioner()
    q.add_unit(u.wait_for_file(never, "late"), name="waits")
    began = time.perf_counter()
    assert mode.execute(q, deadline=0.3) == {}
    assert time.perf_counter() - began < 5
    assert q.units["waits"].state is UnitState.CANCELED


def test_stop_reason_is_completed_for_a_full_run(mode):
    """A run that ran to the end says so."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="one")
    mode.execute(p, deadline=30)
    assert p.last_execution_metrics["stop_reason"] == "completed"


def test_a_cache_hit_never_waits_for_a_rate_limit(mode):
    """A second run served from the cache takes no token, so it does not wait for one."""
    p = CachingQuantumPartitioner(cache_store=MemoryStore())
    p.add_limit("api", per_second=4.0)
    for k in range(2):
        p.add_unit(u.const(k), name=f"c{k}", limits=["api"], metadata={"cacheable": True})
    mode.execute(p)
    assert p.limit_stats()["api"].starts == 2
    assert mode.execute(p) == {"c0": 0, "c1": 1}  # the bucket is empty: a token takes 0.25 s
    stats = p.limit_stats()["api"]
    assert (stats.starts, stats.waits, stats.waited) == (0, 0, 0.0)
    assert p.cache_stats().hits == 2


def test_a_failed_or_timed_out_unit_gives_its_slots_back(mode):
    """Slots are released on failure and timeout: the unit needing them all still runs."""
    p = QuantumPartitioner(max_workers=4)
    p.add_limit("gpu", concurrency=2)
    p.add_unit(u.explode, name="boom", limits=["gpu"], priority=2)
    p.add_unit(u.sleep(0.6, "late"), name="stuck", limits=["gpu"], timeout=0.2, priority=1)
    p.add_unit(u.const("after"), name="after", limits={"gpu": 2})
    results = mode.execute(p)
    assert results == {"after": "after"}
    assert p.units["boom"].state is UnitState.FAILED
    assert p.units["stuck"].state is UnitState.TIMEOUT
    assert p.limit_stats()["gpu"].released_at_timeout == 1


def test_a_unit_cancel_rest_cancels_while_it_waits_for_a_limit_leaves_its_queue(mode, bounded):
    """The units behind it start when there is room; the run ends.

    ``big`` waits for both slots of ``gpu`` while ``long`` holds one; ``quorum`` needs one of
    ``big`` and ``quick`` and cancels the other. ``big`` stayed in the limit's queue: ``small``
    waited behind it although a slot was free, and when ``long`` ended, ``big`` took the room
    for nobody: ``small`` never started and the run never ended.
    """
    p = QuantumPartitioner(max_workers=4)
    p.add_limit("gpu", concurrency=2)
    p.add_unit(u.sleep(0.6, "long"), name="long", limits=["gpu"], priority=5)
    p.add_unit(u.const("big"), name="big", limits={"gpu": 2}, priority=4)
    p.add_unit(u.sleep(0.05, "quick"), name="quick", priority=3)
    p.add_unit(
        u.const("quorum"), ["big", "quick"], name="quorum", run_if=at_least(1), cancel_rest=True
    )
    p.add_unit(u.const("small"), ["quick"], name="small", limits=["gpu"])
    results = bounded(lambda: mode.execute(p), 30)
    assert {"long", "quick", "quorum", "small"} <= set(results)
    times = p.last_execution_metrics["unit_times"]
    if mode.concurrent:  # SEQUENTIAL runs big before quick: nothing is cancelled there
        assert p.units["big"].state is UnitState.CANCELED
        assert times["small"]["start"] < times["long"]["end"]  # the free slot was used
    assert p.limit_stats()["gpu"].peak <= 2


def pause_after_a_429(**metadata):
    """A partitioner whose unit pauses ``api`` for 0.4 s and fails, then ``other`` on ``api``.

    The unit's retry and ``other`` (which waits for the only slot) must both start after the
    pause, wherever the unit ran.
    """
    policy = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
    p = QuantumPartitioner(retry_policy=policy)
    p.add_limit("api", concurrency=1)
    p.add_unit(
        u.pause_then_fail("api", 0.4),
        name="calls",
        limits=["api"],
        retries=1,
        priority=1,
        metadata=metadata,
    )
    p.add_unit(u.const("other"), name="other", limits=["api"], metadata=metadata)
    return p


def assert_paused_after_the_failure(p):
    """Both later starts on ``api`` came at least the pause after the failure was recorded.

    (The pause takes effect when the unit calls it, or when the outcome of an attempt in
    another process arrives: never after its failure is recorded.)
    """
    metrics = p.last_execution_metrics
    [failed_at] = [e["time"] for e in metrics["execution_trace"] if e["event"] == "retry"]
    times = metrics["unit_times"]
    assert times["calls"]["attempts"] == 2
    assert times["calls"]["start"] - failed_at >= 0.35
    assert times["other"]["start"] - failed_at >= 0.35


def test_a_pause_from_a_failed_attempt_holds_back_its_limit(mode):
    """ctx.pause_limit then raise (a 429 handler): the pause holds, in a worker process too."""
    p = pause_after_a_429()
    assert mode.execute(p) == {"calls": 2, "other": "other"}
    assert_paused_after_the_failure(p)


def test_a_bad_pause_fails_only_its_unit(mode):
    """ctx.pause_limit(name, -1) raises in the unit, wherever it runs: the run goes on.

    In a worker process it used to be recorded, then refused by the driver, which ended
    the whole run.
    """
    p = QuantumPartitioner()
    p.add_limit("api", concurrency=1)
    p.add_unit(u.pause_then_fail("api", -1.0), name="bad", limits=["api"])
    p.add_unit(u.const("ok"), name="ok")
    assert mode.execute(p) == {"ok": "ok"}
    error = p.units["bad"].error
    assert isinstance(error, ValueError)
    assert "pause_limit: seconds must be >= 0" in str(error)


def test_a_pause_from_a_failed_attempt_holds_in_every_lane_of_a_resource_balanced_run():
    """The same from a worker process (cpu), a thread (io) and the loop (async)."""
    for kind in ("cpu", "io", "async"):
        p = pause_after_a_429(resource_type=kind)
        assert p.execute_with_strategy(None, "resource_balanced") == {"calls": 2, "other": "other"}
        assert_paused_after_the_failure(p)


def test_one_limit_spans_the_lanes_of_a_resource_balanced_run():
    """cpu (processes), io (threads) and async units share one limit: never two at once."""
    p = QuantumPartitioner(max_workers=2)
    p.add_limit("shared", concurrency=1)
    names = []
    for kind in ("cpu", "io", "async"):
        for k in range(2):
            name = f"{kind}{k}"
            names.append(name)
            function = u.async_sleep(0.1, name) if kind == "async" else u.sleep(0.1, name)
            p.add_unit(function, name=name, limits=["shared"], metadata={"resource_type": kind})
    results = p.execute_with_strategy(None, "resource_balanced")
    assert results == {name: name for name in names}
    assert peak_overlap(p, names) == 1


def test_deadline_stops_every_lane_of_a_resource_balanced_run():
    """deadline= kills the worker process, cancels the task and abandons the thread."""
    p = QuantumPartitioner(max_workers=2)
    for kind in ("cpu", "io", "async"):
        function = u.async_sleep(3.0, kind) if kind == "async" else u.sleep(3.0, kind)
        p.add_unit(function, name=kind, metadata={"resource_type": kind})
    began = time.perf_counter()
    assert p.execute_with_strategy(None, "resource_balanced", deadline=1.0) == {}
    assert time.perf_counter() - began < 2.5
    assert {unit.state for unit in p.units.values()} == {UnitState.CANCELED}
