"""The user guide's examples (docs/guide.md) as a user types them, under ``mypy --strict``.

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, assert_type

from quantum_partitioner import (
    ExecutionContext,
    ExecutionMode,
    ExponentialBackoff,
    Instrument,
    QuantumPartitioner,
    QuantumUnit,
    RetryPolicy,
    Simulation,
    SkipCause,
    UnitFinished,
    UnitSkippedError,
    UnitState,
    at_least,
    select_execution_strategy,
)
from quantum_partitioner.taskmap import build_graph, run_async, run_parallel


def modes_by_name() -> None:
    """A mode is the enum member or its value, as the guide writes it."""
    partitioner = QuantumPartitioner(max_workers=2, default_execution_mode="process")
    partitioner.add_unit(lambda ctx: 1, name="one")
    partitioner.execute({}, execution_mode="process")
    partitioner.execute({}, execution_mode="sequential")
    partitioner.execute({}, execution_mode="thread")
    partitioner.execute({}, execution_mode="async")
    with ThreadPoolExecutor(2) as pool:
        partitioner.execute({}, execution_mode="custom", custom_executor=pool)
    partitioner.execute({}, execution_mode=ExecutionMode.PROCESS)
    for mode in ExecutionMode:
        partitioner.execute({}, execution_mode=mode)
    assert_type(partitioner.units["one"].state, UnitState)


def decorator_keeps_the_function() -> None:
    """``@partitioner.add_unit(...)`` returns the function itself, its signature intact."""
    partitioner = QuantumPartitioner()

    @partitioner.add_unit(dependencies=[])
    def load(ctx: ExecutionContext) -> list[int]:
        return [3, 1, 2]

    @partitioner.add_unit(dependencies=["load"], retries=2)
    async def total(ctx: ExecutionContext) -> int:
        await asyncio.sleep(0)
        return sum(ctx["load"])

    # mypy shows them as "def load(ctx: ExecutionContext) -> list[int]", not as a Callable.
    ctx = ExecutionContext({}, {"load": [1]}, "total")
    assert_type(load(ctx), list[int])
    assert_type(asyncio.run(total(ctx)), int)
    assert_type(load.__name__, str)


async def async_units() -> None:
    """Coroutine units, and ``aexecute`` inside a running loop."""

    async def double(ctx: ExecutionContext) -> int:
        await asyncio.sleep(0)
        return int(ctx["n"]) * 2

    partitioner = QuantumPartitioner()
    partitioner.add_unit(double, name="double")
    assert_type(await partitioner.aexecute({"n": 21}), dict[str, Any])


def typed_results() -> None:
    """``QuantumPartitioner[T, R]`` takes both parameters; R types units and results."""
    partitioner: QuantumPartitioner[Any, int] = QuantumPartitioner(max_workers=2)

    def one(ctx: ExecutionContext) -> int:
        return 1

    async def two(ctx: ExecutionContext) -> int:
        await asyncio.sleep(0)
        return 2

    unit = partitioner.add_unit(one, name="one")
    assert_type(unit, QuantumUnit[Any, int])
    assert_type(unit.result, int | None)
    partitioner.add_unit(two, name="two")  # an async unit counts by what it awaits to
    assert_type(partitioner.execute({}), dict[str, int])
    assert_type(partitioner.units, dict[str, QuantumUnit[Any, int]])
    assert_type(partitioner.remove_unit("two"), QuantumUnit[Any, int])


def failures_retries_and_callbacks() -> None:
    """Fallbacks, retry policies, callbacks, instruments and strategies."""
    quick = RetryPolicy(
        backoff=ExponentialBackoff(initial=0.01, jitter=0), retry_on=ConnectionError
    )
    partitioner = QuantumPartitioner(max_workers=1, retry_policy=quick)
    partitioner.add_unit(lambda ctx: 1 / 0, name="divides", retries=3, timeout=1.5, priority=2)
    partitioner.add_unit(
        lambda ctx: len(ctx["divides"]),
        ["divides"],
        name="count",
        metadata={"fallback_value": []},
        retry_policy=RetryPolicy(),
    )
    partitioner.on_unit_start = lambda unit_id: None
    partitioner.on_unit_complete = lambda unit_id, result: None
    partitioner.on_unit_error = lambda unit_id, error: None
    partitioner.execute({}, fail_fast=True, raise_on_error=False)
    partitioner.execute_with_strategy({}, "resource_balanced")
    partitioner.execute_with_strategy({}, "priority", max_workers=2)
    assert_type(select_execution_strategy(partitioner.units), ExecutionMode)
    partitioner.cancel()

    class Durations(Instrument):
        def __init__(self) -> None:
            self.seconds: dict[str, float] = {}

        def unit_finished(self, event: UnitFinished) -> None:
            self.seconds[event.unit_id] = event.duration

    QuantumPartitioner(instruments=[Durations()])


def plans() -> None:
    """Plans and simulations, with and without a TaskMap."""
    partitioner = QuantumPartitioner()
    partitioner.add_unit(lambda ctx: None, [], "load", metadata={"estimated_duration": 2})
    plan = partitioner.build_execution_plan()
    assert_type(plan.critical_path_length, float)
    simulation = plan.simulate(2)
    assert_type(simulation, Simulation)
    assert_type(build_graph({"a": [], "b": ["a"]}).levels, list[list[str]])
    assert_type(run_parallel({"a": lambda ctx: 1}), dict[str, Any])
    assert_type(run_async({"a": lambda ctx: 1}), dict[str, Any])


def dynamic_workflows() -> None:
    """Conditions, skips by decision and join rules, as the guide writes them."""
    partitioner: QuantumPartitioner[Any, Any] = QuantumPartitioner()
    partitioner.add_unit(lambda ctx: "calc", name="route")
    partitioner.add_unit(
        lambda ctx: 42, ["route"], name="calc", when=lambda ctx: ctx["route"] == "calc"
    )

    def refresh(ctx: ExecutionContext) -> None:
        ctx.skip("cache is fresh")

    partitioner.add_unit(refresh, name="refresh")
    partitioner.add_unit(lambda ctx: 0, ["calc", "refresh"], name="join", run_if="none_failed")
    partitioner.add_unit(
        lambda ctx: sorted(ctx.upstream_errors),
        ["calc", "refresh"],
        name="quorum",
        run_if=at_least(1),
        cancel_rest=True,
    )
    error = partitioner.units["refresh"].error
    if isinstance(error, UnitSkippedError):
        assert_type(error.cause, SkipCause)
