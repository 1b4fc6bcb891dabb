"""stream() and astream() beyond the contract suite: bad input, Ctrl-C, async, mixed lanes.

The behaviour every mode shares (one record per unit, break cancels, raise_on_error, slow
consumers) is in tests/backends/test_contract.py; Dask is in tests/backends/test_dask.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from quantum_partitioner import (
    ExecutionMode,
    Instrument,
    QuantumPartitioner,
    UnitResult,
    UnitState,
    UnknownDependencyError,
)

sys.path.insert(0, str(Path(__file__).parent / "backends"))
import _contract_units as u  # needs the sys.path entry above


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def naps(log, count=6, seconds=1.5, **options):
    """A partitioner: ``first`` (instant, highest priority), then ``count`` logged naps."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const("first"), name="first", priority=10)
    for k in range(count):
        p.add_unit(u.logged_nap(str(log), seconds), name=f"nap_{k}", **options)
    return p


def worker_processes():
    """This process's PROCESS-mode workers still alive."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and "quantum_partitioner._process_worker" in " ".join(child.cmdline())
    ]


def test_bad_input_raises_from_stream_before_any_unit_runs(tmp_path):
    """An unknown dependency raises from stream() itself; nothing ran, no thread is left."""
    log = tmp_path / "log"
    p = naps(log, count=1)
    p.add_unit(u.const(1), ["missing"], name="orphan")
    threads = threading.active_count()
    with pytest.raises(UnknownDependencyError, match="missing"):
        p.stream()
    assert lines(log) == []
    assert threading.active_count() == threads


def test_stream_takes_executes_arguments_and_exports_its_record():
    """Positional and keyword arguments go to execute(); records are UnitResult."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"] * 2, name="double")
    with p.stream({"x": 21}, ExecutionMode.SEQUENTIAL, 1) as results:
        (done,) = list(results)
    assert done == UnitResult(
        "double", UnitState.COMPLETED, 42, None, 1, done.start_time, done.end_time
    )
    with pytest.raises(TypeError):
        p.stream({}, no_such_option=True)


def test_ctrl_c_in_the_loop_body_cancels_like_break(tmp_path):
    """A real SIGINT while the loop body runs: KeyboardInterrupt leaves the loop, run cancelled."""
    log = tmp_path / "log"
    p = naps(log)

    def consume():
        with p.stream(execution_mode=ExecutionMode.ASYNC) as results:
            for _ in results:
                signal.raise_signal(signal.SIGINT)
                time.sleep(5)  # interrupted long before

    with pytest.raises(KeyboardInterrupt):
        consume()
    assert p._active_run is None
    assert p.get_partial_results() == {"first": "first"}
    assert all(unit.state.is_terminal for unit in p.units.values())
    assert any(unit.state is UnitState.CANCELED for unit in p.units.values())


def test_ctrl_c_while_waiting_for_a_record_cancels_the_run(tmp_path):
    """SIGINT while the consumer waits for the next record: the wait is interrupted too."""
    log = tmp_path / "log"
    p = naps(log, count=4, seconds=3.0)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = []

    def consume():
        with p.stream(execution_mode=ExecutionMode.PROCESS) as results:
            for _ in results:  # "first"; then it waits for naps of 3 s
                started.append(time.monotonic())
                timer.start()

    with pytest.raises(KeyboardInterrupt):
        consume()
    timer.join()
    assert time.monotonic() - started[0] < 2.5  # not after the 3 s naps
    assert p.get_partial_results() == {"first": "first"}
    assert worker_processes() == []


class InterruptAsTheRunStarts(Instrument):
    """Interrupts the consumer while it waits for the run to start (worker processes start).

    It runs before the stream's own instrument hears of the run.
    """

    def __init__(self, interrupt):
        self.interrupt = interrupt

    def run_started(self, event):
        self.interrupt()


def ctrl_c_in_the_main_thread():
    """SIGINT aimed at the main thread once it waits, then time to handle it."""
    time.sleep(0.2)  # as worker processes would take to start
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    time.sleep(0.3)


def test_ctrl_c_while_the_run_gets_ready_cancels_it(tmp_path):
    """SIGINT while stream() waits for the run to start: it is cancelled and over on the raise.

    stream() raised KeyboardInterrupt and let the run go on in its thread, every unit
    running to its end.
    """
    log = tmp_path / "log"
    p = naps(log, count=4, seconds=1.0)
    p.instruments.append(InterruptAsTheRunStarts(ctrl_c_in_the_main_thread))
    with pytest.raises(KeyboardInterrupt):
        p.stream(execution_mode=ExecutionMode.SEQUENTIAL)
    assert p._active_run is None
    assert lines(log) == []  # nothing started
    assert {unit.state for unit in p.units.values()} == {UnitState.CANCELED}


def test_cancelling_astream_while_the_run_gets_ready_cancels_it(tmp_path):
    """The consumer is cancelled while astream() waits for the run to start: so is the run."""
    log = tmp_path / "log"
    p = naps(log, count=4, seconds=1.0)
    consumer = []
    p.instruments.append(InterruptAsTheRunStarts(lambda: consumer[0].cancel() and None))

    async def consume():
        async with p.astream() as results:
            async for _ in results:
                pass

    async def main():
        consumer.append(asyncio.current_task())
        with pytest.raises(asyncio.CancelledError):
            await consume()
        assert p._active_run is None

    asyncio.run(main())
    # The run started units before the consumer's cancellation was delivered; none ended.
    assert not [line for line in lines(log) if line.startswith("end")]
    assert {p.units[f"nap_{k}"].state for k in range(4)} == {UnitState.CANCELED}


def test_a_forgotten_stream_is_cancelled_when_collected(tmp_path):
    """Garbage collection is the last resort: a stream dropped unread cancels its run."""
    log = tmp_path / "log"
    p = naps(log, count=4, seconds=0.5)
    stream = p.stream(execution_mode=ExecutionMode.THREAD)
    del stream
    gc.collect()
    deadline = time.monotonic() + 10
    while p._active_run is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p._active_run is None
    assert any(unit.state is UnitState.CANCELED for unit in p.units.values())


def test_mixed_lanes_stream_and_break_leaves_no_worker_process(tmp_path):
    """strategy="resource_balanced": processes, threads, a loop in one stream; break stops all."""
    log = tmp_path / "log"
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const("first"), name="first", priority=10)
    for k, kind in enumerate(["cpu", "io", "async"] * 2):
        p.add_unit(
            u.logged_nap(str(log), 0.5), name=f"{kind}_{k}", metadata={"resource_type": kind}
        )
    with p.stream(strategy="resource_balanced") as results:
        for done in results:
            assert done.name == "first"
            break
    assert p._active_run is None
    assert all(unit.state.is_terminal for unit in p.units.values())
    assert worker_processes() == []
    with p.stream(strategy="resource_balanced") as results:
        assert sorted(done.name for done in results) == sorted(p.units)


# -- astream ---------------------------------------------------------------------------------


def test_astream_yields_records_on_the_running_loop():
    """async with p.astream(): coroutine units share the caller's loop; all records come."""
    p = QuantumPartitioner()
    p.add_unit(u.async_times("x", 2), name="a")
    p.add_unit(u.async_plus("a", 1), ["a"], name="b")
    p.add_unit(u.explode, name="boom")

    async def main():
        async with p.astream({"x": 5}) as results:
            return [done async for done in results]

    records = asyncio.run(main())
    assert [r.name for r in records if r.ok] == ["a", "b"]
    assert {r.name: r.result for r in records if r.ok} == {"a": 10, "b": 11}
    assert [r.state for r in records if not r.ok] == [UnitState.FAILED]


def test_leaving_an_astream_cancels_its_coroutines(tmp_path):
    """break in async for, inside async with: running coroutines are cancelled, nothing starts."""
    log = tmp_path / "log"
    p = naps(log)

    async def main():
        async with p.astream() as results:
            async for done in results:
                assert done.name == "first"
                break

    asyncio.run(main())
    assert p._active_run is None
    cancelled = {name for name, unit in p.units.items() if unit.state is UnitState.CANCELED}
    assert cancelled
    seen = len(lines(log))
    time.sleep(1.6)  # longer than a nap: a coroutine still going would write its end
    assert len(lines(log)) == seen  # no attempt started or ended afterwards
    assert not any(line == f"end {name}" for line in lines(log) for name in cancelled)


def test_a_timeout_around_an_astream_fires_while_it_waits_for_the_run_to_end():
    """asyncio.timeout() fires while leaving the stream waits for a cancelled unit's cleanup.

    The wait swallowed every exception, the caller's cancellation too: the timeout never
    raised TimeoutError and the code after it went on as if nothing had happened.
    """

    async def cleans_up_slowly(ctx):
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(2)

    p = QuantumPartitioner()
    p.add_unit(u.async_times("x", 2), name="first", priority=1)
    p.add_unit(cleans_up_slowly, name="slow")

    async def main():
        async with asyncio.timeout(0.5):
            async with p.astream({"x": 1}) as results:
                async for done in results:
                    assert done.name == "first"
                    break  # leaving waits for slow's cleanup (2 s): the timeout fires first

    began = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(main())
    assert time.monotonic() - began < 1.9
    assert p._active_run is None
    assert p.units["slow"].state is UnitState.CANCELED


def test_astream_raises_task_error_after_the_last_record():
    """raise_on_error=True: records first, then TaskError from the async iteration."""
    from quantum_partitioner import TaskError  # noqa: PLC0415 - only this test needs it

    p = QuantumPartitioner()
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.async_times("x", 2), name="fine")
    seen = []

    async def main():
        async with p.astream({"x": 1}, raise_on_error=True) as results:
            async for done in results:
                seen.append(done.name)

    with pytest.raises(TaskError):
        asyncio.run(main())
    assert sorted(seen) == ["boom", "fine"]


def test_stream_forwards_executes_deadline(tmp_path):
    """stream(deadline=...) is execute's deadline: the records of what it cancelled say so."""
    log = tmp_path / "log"
    p = naps(log, count=4, seconds=3.0)
    with p.stream(execution_mode=ExecutionMode.ASYNC, deadline=0.5) as results:
        records = {done.name: done for done in results}
    assert records["first"].ok
    cancelled = [r for r in records.values() if r.state is UnitState.CANCELED]
    assert len(cancelled) == 4
    assert all("deadline" in str(r.error) for r in cancelled)
