"""Backends: how attempts run. Each drives the same scheduler (see ``_base``).

Backends with heavy dependencies are imported only when asked for.
"""

from __future__ import annotations

from ._asyncio import AsyncBackend, AsyncLane
from ._base import Backend
from ._executor import ExecutorBackend, ExecutorLane
from ._lanes import Lane, LaneBackend
from ._processes import ProcessBackend, ProcessLane
from ._sequential import SequentialBackend
from ._thread_lane import ThreadLane
from ._threads import ThreadBackend

__all__ = [
    "AsyncBackend",
    "AsyncLane",
    "Backend",
    "ExecutorBackend",
    "ExecutorLane",
    "Lane",
    "LaneBackend",
    "ProcessBackend",
    "ProcessLane",
    "SequentialBackend",
    "ThreadBackend",
    "ThreadLane",
]
