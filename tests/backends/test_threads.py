"""THREAD mode specifics: dataflow, the worker limit, timeouts, cancel(), hard exits.

Coordination uses Events, Barriers and Conditions; durations are only checked against bounds
that are generous by an order of magnitude.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitCancelledError,
    UnitState,
    UnitTimeoutError,
)

THREAD = ExecutionMode.THREAD
FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
# How long a "stuck" unit blocks unless released: far above every bound checked below.
BLOCK = 30.0


def run_threads(partitioner, context=None, **options):
    return partitioner.execute(context, THREAD, **options)


class Concurrency:
    """Counts units running at once; ``peak`` is the highest count seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.running = 0
        self.peak = 0
        self.entered = 0

    def __enter__(self):
        with self.lock:
            self.running += 1
            self.entered += 1
            self.peak = max(self.peak, self.running)
            self.changed.notify_all()
        return self

    def __exit__(self, *exc_info):
        with self.lock:
            self.running -= 1
            self.changed.notify_all()

    def wait_for(self, predicate, timeout):
        with self.lock:
            return self.changed.wait_for(predicate, timeout)


def wait_until(predicate, timeout=BLOCK):
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its value."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


def partitioner_threads():
    return [t for t in threading.enumerate() if t.name.startswith("quantum-partitioner")]


# -- dataflow --------------------------------------------------------------------------------


def test_fast_chain_does_not_wait_for_a_slow_unit_of_an_earlier_level():
    """Execution is dataflow: a chain at levels 1..3 finishes while a level-1 unit still runs."""
    #          root
    #         /    \
    #      slow     a        level 1
    #               |
    #               b        level 2
    #               |
    #               c        level 3
    # Under level barriers b could not start before slow ended. Here slow waits until c has
    # finished, so the run only ends quickly if b and c ran while slow was still running.
    chain_done = threading.Event()
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: "root", name="root")
    p.add_unit(lambda ctx: chain_done.wait(10), ["root"], name="slow")
    p.add_unit(lambda ctx: "a", ["root"], name="a")
    p.add_unit(lambda ctx: "b", ["a"], name="b")

    def c(ctx):
        chain_done.set()
        return "c"

    p.add_unit(c, ["b"], name="c")
    start = time.perf_counter()

    results = run_threads(p)

    elapsed = time.perf_counter() - start
    assert results["slow"] is True, "slow never saw the chain finish: levels ran with barriers"
    assert elapsed < 5
    assert p.units["c"].end_time <= p.units["slow"].end_time
    assert p.units["b"].start_time < p.units["slow"].end_time


def test_a_dependent_starts_as_soon_as_its_own_dependencies_are_done():
    """A unit at level 2 starts before an unrelated level-1 unit is finished."""
    #   x (blocks until y has run)      w -> y
    y_ran = threading.Event()
    p = QuantumPartitioner(max_workers=3)
    p.add_unit(lambda ctx: y_ran.wait(10), name="x")
    p.add_unit(lambda ctx: "w", name="w")

    def y(ctx):
        y_ran.set()
        return "y"

    p.add_unit(y, ["w"], name="y")

    assert run_threads(p) == {"x": True, "w": "w", "y": "y"}


# -- max_workers -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["execute", "constructor"])
def test_max_workers_bounds_concurrency(where):
    """No more than max_workers units run at once, and that many do run together."""
    limit, total = 3, 9
    counter = Concurrency()
    release = threading.Event()

    def unit(ctx):
        with counter:
            release.wait(10)
        return ctx.unit_id

    def watcher():
        # Wait until `limit` units run, give any excess unit time to start, then release.
        counter.wait_for(lambda: counter.running >= limit, timeout=10)
        counter.wait_for(lambda: counter.running > limit, timeout=0.2)
        release.set()

    p = QuantumPartitioner(max_workers=limit if where == "constructor" else None)
    for i in range(total):
        p.add_unit(unit, name=f"u{i}")
    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        options = {"max_workers": limit} if where == "execute" else {}
        results = run_threads(p, **options)
    finally:
        release.set()
        thread.join(10)

    assert len(results) == total
    assert counter.peak == limit


def test_max_workers_one_runs_units_one_at_a_time():
    """With max_workers=1 units never overlap, yet all of them run."""
    counter = Concurrency()
    p = QuantumPartitioner()

    def unit(ctx):
        with counter:
            return ctx.unit_id

    for i in range(6):
        p.add_unit(unit, name=f"u{i}")

    run_threads(p, max_workers=1)

    assert counter.entered == 6
    assert counter.peak == 1


# -- timeouts --------------------------------------------------------------------------------


@dataclass
class StuckRun:
    """A THREAD run where 'stuck' blocks far past its timeout while o0..o3 need 2 workers."""

    unblock: threading.Event = field(default_factory=threading.Event)
    saw_cancelled: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)
    counter: Concurrency = field(default_factory=Concurrency)
    partitioner: QuantumPartitioner = field(default_factory=QuantumPartitioner)
    results: dict = field(default_factory=dict)
    elapsed: float = 0.0


@pytest.fixture
def stuck_run():
    """Run the stuck-unit scenario; release the stuck thread after the test."""
    run = StuckRun()
    pair = threading.Barrier(2, timeout=10)

    def stuck(ctx):
        try:
            deadline = time.monotonic() + BLOCK
            while not run.unblock.wait(0.005) and time.monotonic() < deadline:
                if ctx.cancelled:
                    run.saw_cancelled.set()
            return "late result"
        finally:
            run.returned.set()

    def other(ctx):
        # Two at a time: with one of the 2 workers stuck, only a replacement lets pairs meet.
        with run.counter:
            pair.wait()
        return ctx.unit_id

    p = run.partitioner
    p.add_unit(stuck, name="stuck", timeout=0.2, priority=1)
    p.add_unit(lambda ctx: "never", ["stuck"], name="after_stuck")
    for i in range(4):
        p.add_unit(other, name=f"o{i}")
    start = time.perf_counter()
    try:
        run.results = run_threads(p, max_workers=2)
        run.elapsed = time.perf_counter() - start
        yield run
    finally:
        run.unblock.set()
        assert run.returned.wait(10), "the stuck unit never returned"


def test_timeout_marks_the_stuck_unit_timeout(stuck_run):
    """A unit running past its timeout is TIMEOUT with UnitTimeoutError; dependents skipped."""
    units = stuck_run.partitioner.units
    assert units["stuck"].state is UnitState.TIMEOUT
    assert isinstance(units["stuck"].error, UnitTimeoutError)
    assert isinstance(units["stuck"].error, TimeoutError)
    assert units["stuck"].error.timeout == 0.2
    assert units["after_stuck"].state is UnitState.SKIPPED
    assert stuck_run.partitioner.failed_units == {"stuck"}


def test_execute_does_not_wait_for_a_timed_out_unit(stuck_run):
    """execute() returns soon after the timeout, not when the stuck unit returns."""
    assert not stuck_run.returned.is_set()
    assert 0.15 <= stuck_run.elapsed < BLOCK / 3


def test_late_result_of_a_timed_out_unit_is_discarded(stuck_run):
    """When the stuck unit finally returns, its result is ignored: it stays TIMEOUT."""
    stuck_run.unblock.set()
    assert stuck_run.returned.wait(10)
    # Its worker reports the late outcome after returning; wait for that thread to exit.
    for thread in partitioner_threads():
        thread.join(10)

    unit = stuck_run.partitioner.units["stuck"]
    assert unit.state is UnitState.TIMEOUT
    assert unit.result is None
    assert "stuck" not in stuck_run.partitioner.get_partial_results()
    assert "stuck" not in stuck_run.results


def test_timeout_does_not_reduce_concurrency_for_the_rest_of_the_run(stuck_run):
    """With max_workers=2 and one stuck unit, the other units still run two at a time."""
    assert stuck_run.results == {f"o{i}": f"o{i}" for i in range(4)}
    assert stuck_run.counter.peak == 2


def test_timed_out_unit_sees_ctx_cancelled(stuck_run):
    """The stuck unit can notice through ctx.cancelled that it was abandoned."""
    assert stuck_run.saw_cancelled.wait(10)


def test_timed_out_unit_can_raise_if_cancelled():
    """ctx.raise_if_cancelled() raises UnitCancelledError in an abandoned attempt."""
    raised = []
    done = threading.Event()

    def stuck(ctx):
        try:
            wait_until(lambda: ctx.raise_if_cancelled() and False)
        except UnitCancelledError as error:
            raised.append(error)
            raise
        finally:
            done.set()

    p = QuantumPartitioner()
    p.add_unit(stuck, name="stuck", timeout=0.1)

    run_threads(p)

    assert done.wait(10)
    assert p.units["stuck"].state is UnitState.TIMEOUT
    assert len(raised) == 1
    assert raised[0].unit_id == "stuck"


def test_timed_out_attempt_is_retried():
    """A timeout counts as a failure: with retries=1 a second attempt runs and can complete."""
    released = threading.Event()

    def first_attempt_hangs(ctx):
        if ctx.attempt == 1:
            wait_until(lambda: ctx.cancelled)
            released.set()
            return "late"
        return f"attempt {ctx.attempt}"

    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(first_attempt_hangs, name="u", timeout=0.2, retries=1)

    results = run_threads(p)

    assert results == {"u": "attempt 2"}
    assert p.units["u"].attempt == 2
    assert released.wait(10)


# -- cancel() and hard exits -----------------------------------------------------------------


def test_cancel_from_another_thread_keeps_completed_results():
    """cancel() from another thread: completed results are kept, unfinished units CANCELED."""
    # a -> b (blocks) -> c
    #            \----> d
    b_started = threading.Event()
    release = threading.Event()

    def b(ctx):
        b_started.set()
        release.wait(BLOCK)
        return "b"

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "a", name="a")
    p.add_unit(b, ["a"], name="b")
    p.add_unit(lambda ctx: "c", ["b"], name="c")
    p.add_unit(lambda ctx: "d", ["b"], name="d")

    def canceller():
        if b_started.wait(10):
            p.cancel()

    thread = threading.Thread(target=canceller)
    thread.start()
    start = time.perf_counter()
    try:
        results = run_threads(p)
        elapsed = time.perf_counter() - start
    finally:
        release.set()
        thread.join(10)

    assert results == {"a": "a"}
    assert p.get_partial_results() == {"a": "a"}
    assert p.units["a"].state is UnitState.COMPLETED
    for name in ("b", "c", "d"):
        assert p.units[name].state is UnitState.CANCELED
        assert isinstance(p.units[name].error, UnitCancelledError)
    assert elapsed < BLOCK / 3, "execute() waited for the running unit after cancel()"


def test_cancel_while_a_retry_waits_ends_the_run_at_once():
    """cancel() during a retry's backoff CANCELs the unit without waiting for the backoff."""
    retrying = threading.Event()

    def flaky(ctx):
        raise ConnectionError(f"attempt {ctx.attempt}")

    backoff = ExponentialBackoff(initial=BLOCK, multiplier=1, maximum=BLOCK, jitter=0)
    slow_retry = RetryPolicy(backoff)
    p = QuantumPartitioner(retry_policy=slow_retry)
    p.add_unit(flaky, name="flaky", retries=1)
    p.add_unit(lambda ctx: "done", name="quick")
    p.on_unit_retry = lambda unit_id, attempt, error: retrying.set()

    def canceller():
        if retrying.wait(10):
            p.cancel()

    thread = threading.Thread(target=canceller)
    thread.start()
    start = time.perf_counter()
    results = run_threads(p)
    elapsed = time.perf_counter() - start
    thread.join(10)

    assert results == {"quick": "done"}
    assert p.units["flaky"].state is UnitState.CANCELED
    assert p.units["flaky"].attempt == 1
    assert elapsed < BLOCK / 3


def test_cancel_without_a_run_does_nothing():
    """cancel() on an idle partitioner is harmless and the next run is not cancelled."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")

    p.cancel()

    assert run_threads(p) == {"a": 1}


def test_system_exit_in_a_unit_stops_the_run_and_is_re_raised():
    """Issue 9 #8: a unit's SystemExit stops the run like Ctrl-C; execute re-raises it."""

    def exits(ctx):
        raise SystemExit(3)

    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: "ok", name="ok")
    p.add_unit(exits, ["ok"], name="exits")
    p.add_unit(lambda ctx: "never", ["exits"], name="after")

    with pytest.raises(SystemExit) as raised:
        run_threads(p)

    assert raised.value.code == 3
    assert p.get_partial_results() == {"ok": "ok"}
    assert p.units["exits"].state is UnitState.CANCELED
    assert p.units["after"].state is UnitState.CANCELED
    p.add_unit(lambda ctx: "calm", ["ok"], name="exits", replace=True)
    assert run_threads(p)["after"] == "never"  # the partitioner runs again


def test_worker_threads_exit_after_the_run():
    """No worker thread outlives a run that ended normally."""
    before = set(partitioner_threads())
    p = QuantumPartitioner(max_workers=4)
    for i in range(8):
        p.add_unit(lambda ctx: 1, name=f"u{i}")

    run_threads(p)

    for thread in set(partitioner_threads()) - before:
        thread.join(10)
        assert not thread.is_alive(), f"{thread.name} still alive"


# -- callbacks are delivered as units finish -------------------------------------------------


@pytest.mark.parametrize("hook", ["on_unit_complete", "on_unit_error", "on_unit_retry"])
def test_callback_is_delivered_while_other_units_still_run(hook):
    """A unit's callback runs when it ends, not when its worker next finds work."""
    # 'waiter' starts first and blocks until 'quick' has been reported through the callback;
    # 'quick' ends while 'waiter' still runs, and its worker then has nothing else to do (a
    # retry waits 2 s). Once reported, 'waiter' cancels the run so nobody waits for the retry.
    waiter_started = threading.Event()
    reported = threading.Event()
    outcome = {}

    def quick(ctx):
        waiter_started.wait(10)
        if hook in {"on_unit_error", "on_unit_retry"}:
            raise ValueError("quick failed")
        return "quick"

    def waiter(ctx):
        waiter_started.set()
        outcome["reported"] = reported.wait(1)
        if hook == "on_unit_retry":
            p.cancel()
        return "waiter"

    slow_retry = RetryPolicy(ExponentialBackoff(initial=2, multiplier=1, maximum=2, jitter=0))
    p = QuantumPartitioner(max_workers=2, retry_policy=slow_retry)
    p.add_unit(waiter, name="waiter", priority=1)
    p.add_unit(quick, name="quick", retries=1 if hook == "on_unit_retry" else 0)
    setattr(p, hook, lambda unit_id, *args: unit_id == "quick" and reported.set())

    run_threads(p)

    assert outcome["reported"], f"{hook} for 'quick' was held back while 'waiter' ran"
