"""Strategies: resource_balanced mixed runs, adaptive concurrency, the original selectors."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from quantum_partitioner import (
    ExecutionMode,
    QuantumPartitioner,
    UnitState,
    select_execution_strategy,
    select_optimal_workers,
)


def test_resource_balanced_places_each_unit_by_resource_type():
    """io on threads, cpu in another process, async on a loop: one graph, one run.

    io --> cpu --> async
    """
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(
        lambda ctx: (os.getpid(), threading.current_thread().name),
        name="io",
        metadata={"resource_type": "io"},
    )
    p.add_unit(
        lambda ctx: (os.getpid(), ctx["io"][0]),
        ["io"],
        name="cpu",
        metadata={"resource_type": "cpu"},
    )

    async def finish(ctx):
        await asyncio.sleep(0)
        return (os.getpid(), ctx["cpu"])

    p.add_unit(finish, ["cpu"], name="async", metadata={"resource_type": "async"})
    results = p.execute_with_strategy({}, "resource_balanced")
    io_pid, io_thread = results["io"]
    cpu_pid, cpu_saw_io = results["cpu"]
    async_pid, async_saw = results["async"]
    assert io_pid == os.getpid()
    assert io_thread != threading.main_thread().name
    assert cpu_pid != os.getpid()
    assert cpu_saw_io == io_pid
    assert async_pid == os.getpid()
    assert async_saw == results["cpu"]


def test_resource_balanced_rejects_an_unknown_resource_type():
    """An unknown resource_type is a ValueError naming the unit, before anything runs."""
    ran = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ran.append(1), name="ok")
    p.add_unit(lambda ctx: 1, name="odd", metadata={"resource_type": "gpu"})
    with pytest.raises(ValueError, match="'odd'"):
        p.execute_with_strategy({}, "resource_balanced")
    assert ran == []


def test_adaptive_strategy_completes_the_graph():
    """The adaptive strategy runs every unit to completion on threads."""
    p = QuantumPartitioner(max_workers=4)
    for k in range(30):
        p.add_unit(lambda ctx, k=k: k, name=f"u{k}")
    p.add_unit(
        lambda ctx: sum(ctx[f"u{k}"] for k in range(30)), [f"u{k}" for k in range(30)], name="sum"
    )
    results = p.execute_with_strategy({}, "adaptive")
    assert results["sum"] == sum(range(30))
    assert all(u.state is UnitState.COMPLETED for u in p.units.values())


def test_unknown_strategy_is_refused():
    """An unknown strategy name raises ValueError listing the known ones."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    with pytest.raises(ValueError, match="resource_balanced"):
        p.execute_with_strategy({}, "fastest")


def test_select_execution_strategy_follows_the_original_rules():
    """Mostly async -> ASYNC, mostly io -> THREAD, otherwise PROCESS."""

    def build(kinds):
        p = QuantumPartitioner()
        for k, kind in enumerate(kinds):
            p.add_unit(lambda ctx: 1, name=f"u{k}", metadata={"resource_type": kind})
        return p.units

    assert select_execution_strategy(build(["async"] * 3 + ["io"])) is ExecutionMode.ASYNC
    assert select_execution_strategy(build(["io"] * 3 + ["cpu"])) is ExecutionMode.THREAD
    assert select_execution_strategy(build(["cpu"] * 2 + ["io"] * 2)) is ExecutionMode.PROCESS


def test_select_optimal_workers_is_bounded_by_the_widest_level():
    """Never more workers than the plan's widest level; cpu-heavy work gets one per core."""
    p = QuantumPartitioner()
    for k in range(3):
        p.add_unit(lambda ctx: 1, name=f"cpu{k}", metadata={"resource_type": "cpu"})
    plan = p.build_execution_plan()
    assert select_optimal_workers(p.units, plan) == min(3, os.cpu_count() or 4)
    wide = QuantumPartitioner()
    for k in range(200):
        wide.add_unit(lambda ctx: 1, name=f"io{k}", metadata={"resource_type": "io"})
    assert select_optimal_workers(wide.units, wide.build_execution_plan()) == 2 * (
        os.cpu_count() or 4
    )


# -- the mixed lanes: what units raise, cancellation, abandoned attempts (issue 9) -----------


def _raising(exception, *, coroutine):
    if coroutine:

        async def raiser(ctx):
            await asyncio.sleep(0)
            raise exception

        return raiser

    def raiser(ctx):
        raise exception

    return raiser


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("lane", ["io", "async", "cpu"])
def test_keyboard_interrupt_and_system_exit_in_each_lane(lane, kind, bounded):
    """Issue 9 #2, #8: io and async lanes stop the run and re-raise; the cpu lane fails the unit."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: 1, name="first", metadata={"resource_type": "io"})
    raiser = _raising(kind, coroutine=lane == "async")
    p.add_unit(raiser, ["first"], name="raiser", metadata={"resource_type": lane})
    p.add_unit(lambda ctx: 2, ["raiser"], name="after", metadata={"resource_type": "io"})

    if lane == "cpu":  # raised in a worker process
        assert bounded(lambda: p.execute_with_strategy({}, "resource_balanced")) == {"first": 1}
        assert p.units["raiser"].state is UnitState.FAILED
        assert isinstance(p.units["raiser"].error, kind)
        assert p.units["after"].state is UnitState.SKIPPED
    else:
        with pytest.raises(kind):
            bounded(lambda: p.execute_with_strategy({}, "resource_balanced"))
        assert p.get_partial_results() == {"first": 1}
        assert p.units["raiser"].state is UnitState.CANCELED
        assert p.units["after"].state is UnitState.CANCELED


@pytest.mark.parametrize("lane", ["io", "async", "cpu"])
def test_other_base_exceptions_fail_only_their_unit_in_each_lane(lane, bounded):
    """Issue 9 #8: GeneratorExit and a custom BaseException fail the unit in every lane."""

    class Custom(BaseException):
        pass

    coroutine = lane == "async"
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(
        _raising(GeneratorExit, coroutine=coroutine), name="g", metadata={"resource_type": lane}
    )
    if lane != "cpu":  # a class local to this test cannot be unpickled in a worker process
        p.add_unit(
            _raising(Custom, coroutine=coroutine), name="c", metadata={"resource_type": lane}
        )
    p.add_unit(lambda ctx: "ok", name="ok", metadata={"resource_type": lane})

    assert bounded(lambda: p.execute_with_strategy({}, "resource_balanced")) == {"ok": "ok"}
    assert p.units["g"].state is UnitState.FAILED
    assert isinstance(p.units["g"].error, GeneratorExit)
    if lane != "cpu":
        assert isinstance(p.units["c"].error, Custom)


@pytest.mark.parametrize(
    ("strategy", "kind"),
    [("resource_balanced", "io"), ("resource_balanced", "async"), (None, None)],
    ids=["io-lane", "async-lane", "async-mode"],
)
def test_a_pool_thread_never_starts_an_attempt_whose_timeout_passed(strategy, kind):
    """Issue 9 #9: an attempt that times out before a pool thread takes it never runs.

    A timeout of 1 µs passes before any thread can pick the attempt up. Abandoned attempts
    used to stay queued and ran anyway; a thread that took one just before the driver
    noticed its timeout ran it too. Now no attempt starts, in the io lane, in the async
    lane's threads and in ASYNC mode's.
    """
    ran = []

    def quick(ctx):
        ran.append(ctx.unit_id)

    p = QuantumPartitioner(max_workers=2)
    metadata = {} if kind is None else {"resource_type": kind}
    for k in range(300):
        p.add_unit(quick, name=f"q{k}", timeout=1e-6, metadata=metadata)

    if strategy is None:
        p.execute({}, execution_mode=ExecutionMode.ASYNC)
    else:
        p.execute_with_strategy({}, strategy)
    for thread in threading.enumerate():  # abandoned attempts used to run after the run
        if thread.name.startswith("quantum-partitioner-"):
            thread.join(10)

    assert ran == []
    assert {unit.state for unit in p.units.values()} == {UnitState.TIMEOUT}
