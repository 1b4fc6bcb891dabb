"""The README's examples as a user types them: ``mypy --strict`` passes with no annotation.

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
``assert_type`` pins what each call returns, so a signature that loses its types fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, assert_type

from quantum_partitioner import (
    CacheStats,
    CachingQuantumPartitioner,
    ExecutionContext,
    ExecutionPlan,
    QuantumPartitioner,
    QuantumUnit,
)
from quantum_partitioner.taskmap import TaskMap, run_parallel_threads, run_tasks


def load_data(ctx: ExecutionContext) -> list[int]:
    return [int(field) for field in ctx["input_data"].split(",")]


def process_data(ctx: ExecutionContext) -> list[int]:
    return [value * value for value in ctx["load_data"]]


def validate_data(ctx: ExecutionContext) -> bool:
    values = ctx.get_dependency_result("load_data")
    return all(value >= 0 for value in values)


def store_results(ctx: ExecutionContext) -> dict[str, int]:
    squares = ctx["process_data"]
    return {"count": len(squares), "total": sum(squares)}


def quick_start() -> None:
    """README "Quick start": the first line needs no annotation."""
    partitioner = QuantumPartitioner(max_workers=4)
    assert_type(partitioner, QuantumPartitioner[Any, Any])
    unit = partitioner.add_unit(fn=load_data, dependencies=[], name="load_data")
    assert_type(unit, QuantumUnit[Any, Any])
    partitioner.add_unit(fn=process_data, dependencies=["load_data"], name="process_data")
    partitioner.add_unit(fn=validate_data, dependencies=["load_data"], name="validate_data")
    partitioner.add_unit(
        fn=store_results, dependencies=["process_data", "validate_data"], name="store_results"
    )
    plan = partitioner.build_execution_plan()
    assert_type(plan, ExecutionPlan)
    assert_type(plan.levels, list[list[str]])
    assert_type(plan.critical_path, list[str])
    assert_type(plan.visualize(), str)
    assert_type(plan.to_mermaid(), str)
    results = partitioner.execute({"input_data": "3,1,4,1,5,9,2,6"})
    assert_type(results, dict[str, Any])
    assert_type(partitioner.get_partial_results(), dict[str, Any])
    assert_type(partitioner.get_failed_units(), dict[str, BaseException])


def observability(partitioner: QuantumPartitioner) -> None:
    """README "Observability": the bare class name is QuantumPartitioner[Any, Any]."""
    assert_type(partitioner, QuantumPartitioner[Any, Any])
    partitioner.execute({}, progress=True, trace=True)
    assert_type(partitioner.export_trace("run.json"), Path)
    assert_type(partitioner.write_report("run.html"), Path)
    assert_type(partitioner.render("graph.svg"), Path)
    assert_type(partitioner.last_execution_metrics, dict[str, Any] | None)


def caching() -> None:
    """README "Caching": ``with`` gives back the partitioner's own type."""
    with CachingQuantumPartitioner(cache_path="runs.sqlite", max_workers=4) as p:
        assert_type(p, CachingQuantumPartitioner[Any, Any])
        p.add_unit(
            lambda ctx: ctx["n"] ** 2,
            name="square",
            metadata={"cacheable": True, "cache_keys": ["n"]},
        )
        p.add_unit(
            lambda ctx: ctx["square"] + 1, ["square"], name="plus_one", metadata={"cacheable": True}
        )
        assert_type(p.execute({"n": 3}), dict[str, Any])
        assert_type(p.cache_stats(), CacheStats)
        assert_type(p.clear_cache(), int)


def taskmap() -> None:
    """README "TaskMap"."""
    tasks = TaskMap(
        {
            "load": (lambda ctx: ctx["numbers"], []),
            "double": (lambda ctx: [2 * n for n in ctx["load"]], ["load"]),
            "total": (lambda ctx: sum(ctx["double"]), ["double"]),
        }
    )
    tasks.on_task_complete = lambda name, result: print(name, "->", result)
    assert_type(run_parallel_threads(tasks, {"numbers": [1, 2, 3]}, max_workers=4), dict[str, Any])
    assert_type(run_tasks(tasks, {"numbers": [1]}), dict[str, Any])
    assert_type(tasks.plan(), ExecutionPlan)
