"""Subgraphs as user code meets them (docs/guide.md, "Subgraphs").

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

from typing import Any, assert_type

from quantum_partitioner import ExecutionContext, QuantumPartitioner, QuantumUnit
from quantum_partitioner.taskmap import TaskMap, run_tasks


def load(ctx: ExecutionContext) -> int:
    return int(ctx["config"])


def subgraphs() -> None:
    """add_subgraph takes any partitioner and returns the subgraph's own unit."""
    inner: QuantumPartitioner[Any, int] = QuantumPartitioner()
    inner.add_unit(load, name="load")
    outer = QuantumPartitioner()
    outer.add_unit(lambda ctx: 1, name="config")
    unit = outer.add_subgraph(inner, "ingest", dependencies=["config"])
    assert_type(unit, QuantumUnit[Any, Any])
    outer.add_subgraph(inner, name="again")


def task_map_subgraphs() -> None:
    """A TaskMap or a partitioner in place of a task's function is a subgraph."""
    inner = TaskMap({"load": load})
    tasks = TaskMap({"config": lambda ctx: 1, "ingest": (inner, ["config"]), "lone": inner})
    assert_type(run_tasks(tasks), dict[str, Any])
