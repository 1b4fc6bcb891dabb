"""ASYNC mode: coroutines on one loop, plain functions in threads, aexecute in a running loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from quantum_partitioner import (
    CachingQuantumPartitioner,
    ExecutionMode,
    MemoryStore,
    QuantumPartitioner,
    UnitState,
    UnitTimeoutError,
)
from quantum_partitioner.backends import _asyncio
from quantum_partitioner.backends._pool import default_thread_workers

ASYNC = ExecutionMode.ASYNC


def test_coroutines_share_one_loop_and_run_concurrently():
    """Fifty units sleeping 0.2 s each finish together, on one event loop."""
    loops = set()

    async def nap(ctx):
        loops.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0.2)
        return ctx.unit_id

    p = QuantumPartitioner()
    for k in range(50):
        p.add_unit(nap, name=f"nap{k}")
    start = time.monotonic()
    results = p.execute({}, execution_mode=ASYNC)
    elapsed = time.monotonic() - start
    assert len(results) == 50
    assert len(loops) == 1
    assert elapsed < 5  # 50 x 0.2 s = 10 s if they ran one after another


def test_plain_functions_do_not_block_the_loop():
    """A blocking plain function runs in a thread while coroutines keep going."""
    release = threading.Event()

    def blocking(ctx):
        release.wait(10)
        return threading.current_thread() is not threading.main_thread()

    async def releaser(ctx):
        await asyncio.sleep(0.05)
        release.set()
        return "released"

    p = QuantumPartitioner()
    p.add_unit(blocking, name="blocking")
    p.add_unit(releaser, name="releaser")
    start = time.monotonic()
    results = p.execute({}, execution_mode=ASYNC)
    assert results == {"blocking": True, "releaser": "released"}
    assert time.monotonic() - start < 5


def test_plain_function_returning_a_coroutine_is_awaited_on_the_loop():
    """lambda ctx: client.fetch(...) style units have their coroutine awaited."""

    async def fetch(value):
        await asyncio.sleep(0)
        return value * 2

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: fetch(ctx["x"]), name="fetch")
    assert p.execute({"x": 21}, execution_mode=ASYNC) == {"fetch": 42}


def test_timeout_cancels_the_coroutine():
    """A coroutine past its timeout is cancelled and the unit is TIMEOUT."""
    cancelled = []

    async def slow(ctx):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    p = QuantumPartitioner()
    p.add_unit(slow, name="slow", timeout=0.2)
    p.add_unit(lambda ctx: 1, name="quick")
    start = time.monotonic()
    results = p.execute({}, execution_mode=ASYNC)
    assert time.monotonic() - start < 10
    assert results == {"quick": 1}
    assert p.units["slow"].state is UnitState.TIMEOUT
    assert isinstance(p.units["slow"].error, UnitTimeoutError)
    assert cancelled == [True]


def test_aexecute_runs_inside_a_running_loop():
    """await aexecute() works where a loop already runs, and units share that loop."""

    async def main():
        running = asyncio.get_running_loop()

        async def which_loop(ctx):
            return asyncio.get_running_loop() is running

        p = QuantumPartitioner()
        p.add_unit(which_loop, name="a")
        return await p.aexecute({})

    assert asyncio.run(main()) == {"a": True}


def test_sync_execute_inside_a_loop_explains_aexecute():
    """execute(ASYNC) inside a running loop raises before any unit runs, naming aexecute."""
    ran = []

    async def main():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: ran.append(1), name="a")
        with pytest.raises(RuntimeError, match="aexecute"):
            p.execute({}, execution_mode=ASYNC)
        return p

    p = asyncio.run(main())
    assert ran == []
    assert p.execute({}, execution_mode=ExecutionMode.SEQUENTIAL) == {"a": None}


def test_max_workers_caps_concurrent_coroutines():
    """max_workers limits how many coroutines run at once."""
    running = 0
    peak = 0

    async def track(ctx):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    p = QuantumPartitioner()
    for k in range(20):
        p.add_unit(track, name=f"t{k}")
    p.execute({}, execution_mode=ASYNC, max_workers=3)
    assert peak == 3


def test_a_function_made_plain_or_async_between_mixed_runs_goes_where_it_belongs_now():
    """resource_balanced: a unit's function replaced between runs is called as it is now."""

    async def fetch(ctx):
        return 2

    p = QuantumPartitioner()
    unit = p.add_unit(fetch, name="a", metadata={"resource_type": "async"})
    assert p.execute_with_strategy({}, "resource_balanced") == {"a": 2}
    unit.function = lambda ctx: 3
    assert p.execute_with_strategy({}, "resource_balanced") == {"a": 3}
    unit.function = fetch
    assert p.execute_with_strategy({}, "resource_balanced") == {"a": 2}


@pytest.mark.parametrize("strategy", [None, "resource_balanced"])
def test_unit_raising_cancelled_error_fails_instead_of_hanging(strategy):
    """A unit that raises CancelledError itself is FAILED; its dependents are skipped."""

    async def bad(ctx):
        raise asyncio.CancelledError

    p = QuantumPartitioner()
    p.add_unit(bad, name="bad")
    p.add_unit(lambda ctx: 1, name="ok")
    p.add_unit(lambda ctx: 2, ["bad"], name="after")
    if strategy is None:
        results = p.execute({}, execution_mode=ASYNC)
    else:
        results = p.execute_with_strategy({}, strategy)
    assert results == {"ok": 1}
    assert p.units["bad"].state is UnitState.FAILED
    assert p.units["after"].state is UnitState.SKIPPED


@pytest.mark.parametrize("strategy", [None, "resource_balanced"])
def test_cancelled_units_finish_their_cleanup(strategy, bounded):
    """Issue 9 #7: cancelled (and timed-out) units run their finally blocks, awaits included."""
    started, cleaned = [], []

    async def waits(ctx):
        started.append(ctx.unit_id)
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop once more
            cleaned.append(ctx.unit_id)

    def cancel_when_all_wait(ctx):
        deadline = time.monotonic() + 10
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.1)  # 'timed' is past its timeout by now
        p.cancel()

    p = QuantumPartitioner()
    for k in range(3):
        p.add_unit(waits, name=f"w{k}", metadata={"resource_type": "async"})
    p.add_unit(waits, name="timed", timeout=0.05, metadata={"resource_type": "async"})
    p.add_unit(cancel_when_all_wait, name="canceller", metadata={"resource_type": "io"})

    if strategy is None:
        bounded(lambda: p.execute({}, execution_mode=ASYNC))
    else:
        bounded(lambda: p.execute_with_strategy({}, strategy))

    assert sorted(cleaned) == ["timed", "w0", "w1", "w2"]
    assert {p.units[f"w{k}"].state for k in range(3)} == {UnitState.CANCELED}
    assert p.units["timed"].state is UnitState.TIMEOUT


def test_units_that_end_in_one_loop_iteration_are_reported_in_the_order_they_ended():
    """Coroutines woken together end in the order they waited, and are reported so.

    The driver settled the tasks that ended since it last looked last first: every
    callback and stream record of such a batch came in reverse order.
    """
    waited: list[str] = []
    events: dict[str, asyncio.Event] = {}

    def event(name):
        return events.setdefault(name, asyncio.Event())  # made on the run's loop

    async def waits(ctx):
        waited.append(ctx.unit_id)
        if len(waited) == 5:
            event("all waiting").set()
        await event("open").wait()
        return ctx.unit_id

    async def opens(ctx):
        await event("all waiting").wait()
        event("open").set()

    p = QuantumPartitioner()
    for k in range(5):
        p.add_unit(waits, name=f"w{k}")
    p.add_unit(opens, name="opens")
    ended = []
    p.on_unit_complete = lambda unit_id, result: ended.append(unit_id)
    p.execute({}, execution_mode=ASYNC)
    assert [name for name in ended if name != "opens"] == waited


@pytest.mark.parametrize("strategy", [None, "resource_balanced"])
def test_a_coroutine_that_swallows_its_timeout_leaves_no_result_nor_metrics(strategy):
    """Its late return is not cached (a later run was served it, COMPLETED), nor its metrics kept.

    The coroutine outlives its timeout by catching the cancellation and returning; the run
    goes on meanwhile (``long``), so the late outcome reaches the driver.
    """

    async def swallows(ctx):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        ctx.record_metric("late", 1)
        return "late"

    async def long(ctx):
        await asyncio.sleep(0.6)
        return "long"

    p = CachingQuantumPartitioner(cache_store=MemoryStore())
    p.add_unit(
        swallows,
        name="swallows",
        timeout=0.1,
        metadata={"cacheable": True, "resource_type": "async"},
    )
    p.add_unit(long, name="long", metadata={"resource_type": "async"})
    for _ in range(2):
        if strategy is None:
            results = p.execute({}, execution_mode=ASYNC)
        else:
            results = p.execute_with_strategy({}, strategy)
        assert results == {"long": "long"}
        assert p.units["swallows"].state is UnitState.TIMEOUT
        metrics = p.last_execution_metrics
        assert metrics is not None
        assert "swallows" not in metrics["unit_metrics"]


@pytest.mark.parametrize("strategy", [None, "resource_balanced"])
def test_a_unit_that_ignores_its_cancellation_does_not_hold_the_run(strategy, monkeypatch):
    """A coroutine swallowing every CancelledError: execute() returns after the cleanup time.

    ``asyncio.run`` used to wait for it without end (here 3 x 30 s); its coroutine is now
    closed once the run's cleanup time (5 s, shortened here) has passed.
    """
    monkeypatch.setattr(_asyncio, "_CLEANUP_SECONDS", 0.3)
    closed = []

    async def stubborn(ctx):
        try:
            for _ in range(3):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(30)
        except GeneratorExit:
            closed.append(ctx.unit_id)
            raise

    p = QuantumPartitioner()
    p.add_unit(stubborn, name="stubborn", timeout=0.1, metadata={"resource_type": "async"})
    p.add_unit(lambda ctx: 1, name="ok")
    began = time.monotonic()
    if strategy is None:
        results = p.execute({}, execution_mode=ASYNC)
    else:
        results = p.execute_with_strategy({}, strategy)
    assert time.monotonic() - began < 10
    assert results == {"ok": 1}
    assert p.units["stubborn"].state is UnitState.TIMEOUT
    assert closed == ["stubborn"]


def test_plain_functions_run_on_a_bounded_pool_of_threads():
    """Issue 9 (also seen): plain functions share max_workers threads, not one thread each."""
    threads = set()

    def plain(ctx):
        threads.add(threading.current_thread().name)

    p = QuantumPartitioner()
    for k in range(200):
        p.add_unit(plain, name=f"p{k}")
    p.execute({}, execution_mode=ASYNC, max_workers=3)
    assert len(threads) <= 3


@pytest.mark.parametrize("where", ["async-mode", "async-lane"])
def test_a_plain_function_starts_only_when_a_thread_is_free(where):
    """Its timeout counts from its start: waiting for a busy pool does not time it out.

    The same for plain functions sent to a resource_balanced run's loop, which used to
    wait for the loop's threads in a queue, their timeouts running.
    """
    size = default_thread_workers()  # the pool's size when max_workers is None
    release = threading.Event()

    def blocker(ctx):
        release.wait(10)

    async def releaser(ctx):
        await asyncio.sleep(0.5)  # longer than quick's timeout
        release.set()

    on_loop = {"resource_type": "async"}
    p = QuantumPartitioner()
    for k in range(size):
        p.add_unit(blocker, name=f"b{k}", priority=1, metadata=on_loop)
    p.add_unit(releaser, name="releaser", priority=1)
    p.add_unit(lambda ctx: "quick", name="quick", timeout=0.3, metadata=on_loop)
    try:
        if where == "async-mode":
            results = p.execute({}, execution_mode=ASYNC)
        else:
            results = p.execute_with_strategy({}, "resource_balanced")
    finally:
        release.set()
    assert results["quick"] == "quick"


def test_a_timed_out_plain_function_is_replaced_so_the_pool_keeps_its_size():
    """A thread stuck past its unit's timeout is abandoned; a new one runs the next units."""
    release = threading.Event()

    def stuck(ctx):
        release.wait(30)

    p = QuantumPartitioner()
    p.add_unit(stuck, name="stuck", timeout=0.2, priority=1)
    for k in range(5):
        p.add_unit(lambda ctx: threading.current_thread().name, name=f"q{k}", timeout=5)
    start = time.monotonic()
    try:
        results = p.execute({}, execution_mode=ASYNC, max_workers=1)
    finally:
        release.set()
    assert time.monotonic() - start < 10
    assert p.units["stuck"].state is UnitState.TIMEOUT
    assert sorted(results) == [f"q{k}" for k in range(5)]
