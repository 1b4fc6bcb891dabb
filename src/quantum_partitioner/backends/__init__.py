"""Backends: how attempts run. Each drives the same scheduler (see ``_base``).

Backends with heavy dependencies are imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._asyncio import AsyncBackend, AsyncLane
from ._base import Backend
from ._executor import ExecutorBackend, ExecutorLane
from ._lanes import Lane, LaneBackend
from ._processes import ProcessBackend, ProcessLane
from ._sequential import SequentialBackend
from ._thread_lane import ThreadLane
from ._threads import ThreadBackend

if TYPE_CHECKING:
    from ._dask import DaskBackend

__all__ = [
    "AsyncBackend",
    "AsyncLane",
    "Backend",
    "DaskBackend",
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


def __getattr__(name: str) -> Any:
    """Import ``DaskBackend`` on first use: importing the package never imports dask."""
    if name == "DaskBackend":
        from ._dask import DaskBackend  # noqa: PLC0415 - lazy by design

        globals()[name] = DaskBackend
        return DaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
