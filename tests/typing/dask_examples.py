"""docs/dask.md's Dask-collection examples as a user types them, under ``mypy --strict``.

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any, assert_type

import quantum_partitioner.dask
from quantum_partitioner import QuantumPartitioner


def compute_with_options(graph: dict[Any, Any]) -> None:
    """``get`` and ``Scheduler.get`` take a graph and keys; modes are enum members or names."""
    quantum_partitioner.dask.get(graph, ["x"], execution_mode="sequential", max_workers=2)
    sched = quantum_partitioner.dask.Scheduler(progress=False, trace=True, execution_mode="thread")
    sched.get(graph, "x")
    sched.get(graph, "x", execution_mode="process", max_workers=2, num_workers=2)
    run = sched.last_run
    if run is not None:
        assert_type(run, QuantumPartitioner[Any, Any])
        assert_type(run.export_trace("trace.json"), Path)
        assert_type(sched.last_names, dict[Hashable, str])
