"""Layer 4: the execution strategies and the worker/mode selection rules.

* ``resource_balanced``: one run, one scheduler, units placed by
  ``metadata["resource_type"]``: ``"cpu"`` on worker processes, ``"io"`` (and units with no
  type) on threads, ``"async"`` (and ``async def`` units) on an event loop. A cpu unit can
  depend on an io unit and feed an async one; there are no phases.
* ``adaptive``: units on threads, with concurrency lowered while the machine's CPU or memory
  is saturated and raised again when it recovers, measured with psutil while the run goes on.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import TYPE_CHECKING, Any

from ._graph import ExecutionMode, metadata_of
from .backends import AsyncLane, Lane, LaneBackend, ProcessLane, ThreadLane
from .backends._pool import default_thread_workers
from .observability._events import LOGGER

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._graph import QuantumUnit
    from ._plan import ExecutionPlan
    from ._run import Run

__all__ = [
    "RESOURCE_TYPES",
    "AdaptiveBackend",
    "resource_balanced_backend",
    "select_execution_strategy",
    "select_optimal_workers",
]

RESOURCE_TYPES = ("cpu", "io", "async")


def select_optimal_workers(units: Mapping[str, QuantumUnit[Any, Any]], plan: ExecutionPlan) -> int:
    """Choose a worker count from the workload, by the original API's rules.

    Never more than the plan's widest level; mostly-cpu workloads get one worker per core,
    others two per core.
    """
    cores = os.cpu_count() or 4
    widest = max(1, plan.max_parallel_units)
    cpu_bound = sum(1 for u in units.values() if metadata_of(u).get("resource_type") == "cpu")
    io_bound = len(units) - cpu_bound
    if cpu_bound > io_bound:
        return min(widest, cores)
    return min(widest, cores * 2)


def select_execution_strategy(units: Mapping[str, QuantumUnit[Any, Any]]) -> ExecutionMode:
    """Choose an execution mode from the units' ``resource_type``, by the original API's rules.

    Units without a type count as cpu, as in the original API; ``async def`` units count as async.
    """
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    for unit in units.values():
        kind = metadata_of(unit).get("resource_type")
        if kind is None:
            kind = "async" if inspect.iscoroutinefunction(unit.function) else "cpu"
        if kind in counts:
            counts[kind] += 1
    if counts["async"] > counts["cpu"] + counts["io"]:
        return ExecutionMode.ASYNC
    if counts["io"] > counts["cpu"]:
        return ExecutionMode.THREAD
    return ExecutionMode.PROCESS


def _resource_type(unit: QuantumUnit[Any, Any]) -> str:
    kind = metadata_of(unit).get("resource_type")
    if kind is None:
        return "async" if inspect.iscoroutinefunction(unit.function) else "io"
    if kind not in RESOURCE_TYPES:
        raise ValueError(
            f"unit {unit.id!r}: resource_type must be one of {list(RESOURCE_TYPES)}, got {kind!r}"
        )
    return str(kind)


def resource_balanced_backend(
    units: Mapping[str, QuantumUnit[Any, Any]], max_workers: int | None
) -> LaneBackend:
    """A backend placing each unit by its resource type; only the lanes needed are made.

    Raises:
        ValueError: A unit's ``resource_type`` is unknown (message names the unit).
    """
    kinds = {_resource_type(unit) for unit in units.values()} or {"io"}
    order = [kind for kind in ("io", "cpu", "async") if kind in kinds]
    lanes: list[Lane] = []
    for kind in order:
        if kind == "io":
            lanes.append(ThreadLane(max_workers or default_thread_workers()))
        elif kind == "cpu":
            cores = os.cpu_count() or 1
            lanes.append(ProcessLane(min(cores, max_workers) if max_workers else cores))
        else:
            lanes.append(AsyncLane(max_workers))
    index: dict[str, int] = {kind: k for k, kind in enumerate(order)}

    def plain_on_loop(unit: QuantumUnit[Any, Any]) -> bool:
        return _resource_type(unit) == "async" and not inspect.iscoroutinefunction(unit.function)

    # The async lane's plain functions wait for one of its threads in a ready queue apart.
    if any(plain_on_loop(unit) for unit in units.values()):
        loop_lane = lanes[index["async"]]
        assert isinstance(loop_lane, AsyncLane)
        index["plain on the loop"] = len(lanes)
        lanes.append(loop_lane.plain_functions())

    def lane_for(unit: QuantumUnit[Any, Any]) -> int:
        if plain_on_loop(unit):
            return index["plain on the loop"]
        return index[_resource_type(unit)]

    return LaneBackend(lanes, lane_for, name="resource_balanced")


class _AdaptiveThreadLane(ThreadLane):
    """A thread lane whose capacity a monitor thread adjusts to the machine's load."""

    def __init__(self, max_workers: int, interval: float, high: float, low: float) -> None:
        super().__init__(max_workers)
        self.interval = interval
        self.high = high
        self.low = low
        #: ``(seconds since start, capacity, cpu %, memory %)`` at each adjustment.
        self.history: list[tuple[float, int, float, float]] = []

    def open(self, run: Run, post: Any) -> None:
        try:
            import psutil  # noqa: PLC0415 - optional dependency
        except ImportError:  # pragma: no cover - part of the dev install
            raise ImportError(
                "the adaptive strategy needs psutil: pip install 'quantum-partitioner[adaptive]'"
            ) from None
        super().open(run, post)
        self._psutil = psutil
        self._stop = threading.Event()
        self._post_wake = post
        self.capacity = min(self.size, os.cpu_count() or 1)
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        threading.Thread(
            target=self._monitor, args=(run,), name="quantum-partitioner-adaptive", daemon=True
        ).start()

    def _monitor(self, run: Run) -> None:
        start = run.clock()
        while not self._stop.wait(self.interval):
            cpu = float(self._psutil.cpu_percent(interval=None))
            memory = float(self._psutil.virtual_memory().percent)
            capacity = self.capacity
            if cpu > self.high or memory > self.high:
                capacity = max(1, capacity - 1)
            elif cpu < self.low and memory < self.high:
                capacity = min(self.size, capacity + 1)
            if capacity != self.capacity:
                LOGGER.debug(
                    "adaptive: %d workers (cpu %.0f%%, memory %.0f%%)", capacity, cpu, memory
                )
                self.capacity = capacity
                self._post_wake(None)
            self.history.append((run.clock() - start, capacity, cpu, memory))

    def close(self, *, cancel: bool) -> None:
        self._stop.set()
        super().close(cancel=cancel)


class AdaptiveBackend(LaneBackend):
    """Threads whose concurrency follows the machine's load (psutil), within ``max_workers``.

    Args:
        max_workers: The most units at once; the run starts at one per core.
        interval: Seconds between load readings.
        high: CPU or memory percentage above which concurrency drops by one.
        low: CPU percentage below which concurrency rises by one.

    .. versionadded:: 0.1
    """

    def __init__(
        self, max_workers: int, *, interval: float = 0.25, high: float = 90.0, low: float = 70.0
    ) -> None:
        """Create the backend."""
        self.lane = _AdaptiveThreadLane(max_workers, interval, high, low)
        super().__init__([self.lane], name="adaptive")

    @property
    def history(self) -> list[tuple[float, int, float, float]]:
        """``(seconds, workers, cpu %, memory %)`` readings of the last run."""
        return self.lane.history
