"""Strategies: resource_balanced mixed runs, adaptive concurrency, and the seed's selectors."""

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


def test_select_execution_strategy_follows_the_seed_rules():
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
