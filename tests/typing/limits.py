"""Named limits and run deadlines as user code meets them (docs/guide.md, "Limits").

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_type

from quantum_partitioner import (
    ExecutionContext,
    ExecutionMode,
    Limit,
    LimitStats,
    QuantumPartitioner,
    TaskError,
)
from quantum_partitioner.taskmap import TaskMap, run_parallel_threads


def ask(ctx: ExecutionContext) -> str:
    return str(ctx.unit_id)


def limits_and_deadlines() -> None:
    """add_limit returns the Limit; units take names or slots; execute takes a deadline."""
    p = QuantumPartitioner(max_workers=4)
    alpha = p.add_limit("provider:alpha", concurrency=2, per_second=50.0, burst=2)
    assert_type(alpha, Limit)
    assert_type(p.add_limit("gpu", concurrency=1), Limit)
    shared = Limit("db", concurrency=1)
    p.add_limit(shared)
    p.add_unit(ask, name="alpha_q0", limits=["provider:alpha"], timeout=0.5)
    p.add_unit(ask, name="embed_big", limits={"gpu": 1, "provider:alpha": 2})
    assert_type(p.limits, Mapping[str, Limit])
    assert_type(p.execute({}, execution_mode=ExecutionMode.THREAD, deadline=0.3), dict[str, Any])
    stats = p.limit_stats()
    assert_type(stats, dict[str, LimitStats])
    assert_type(stats["provider:alpha"].peak, int)
    assert_type(stats["provider:alpha"].waited, float)
    try:
        p.execute({}, deadline=1, raise_on_error=True)
    except TaskError as error:
        assert_type(error.stop_reason, str)


def task_map_options() -> None:
    """TaskMap tasks with add_unit's options, and the limits they name."""
    tasks = TaskMap(
        {
            "a": (ask, [], {"limits": ["api"], "retries": 1}),
            "b": (ask, ["a"]),
            "c": ask,
        },
        limits={"api": {"concurrency": 2}, "db": Limit("db", 1)},
    )
    assert_type(tasks.limits, dict[str, Limit])
    assert_type(run_parallel_threads(tasks, {}), dict[str, Any])
