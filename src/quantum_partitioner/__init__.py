"""quantum-partitioner: run a graph of Python callables at the highest concurrency it allows.

Units are plain callables called as ``fn(ctx)``; each declares the units it depends on. A
sans-I/O scheduler decides what runs next, and a backend runs it: in the calling thread, on
threads, on worker processes, on an asyncio loop, or on any ``concurrent.futures.Executor``.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ._cache import CacheStats as CacheStats
from ._cache import CachingQuantumPartitioner as CachingQuantumPartitioner
from ._context import ExecutionContext as ExecutionContext
from ._errors import BrokenBackendError as BrokenBackendError
from ._errors import CircularDependency as CircularDependency
from ._errors import CircularDependencyError as CircularDependencyError
from ._errors import DuplicateUnitError as DuplicateUnitError
from ._errors import GraphError as GraphError
from ._errors import InternalError as InternalError
from ._errors import PartitionerError as PartitionerError
from ._errors import TaskError as TaskError
from ._errors import UnitCancelledError as UnitCancelledError
from ._errors import UnitSkippedError as UnitSkippedError
from ._errors import UnitTimeoutError as UnitTimeoutError
from ._errors import UnknownDependencyError as UnknownDependencyError
from ._errors import WorkerDiedError as WorkerDiedError
from ._events import Instrument as Instrument
from ._events import RunFinished as RunFinished
from ._events import RunStarted as RunStarted
from ._events import UnitCancelled as UnitCancelled
from ._events import UnitFailed as UnitFailed
from ._events import UnitFinished as UnitFinished
from ._events import UnitRetrying as UnitRetrying
from ._events import UnitSkipped as UnitSkipped
from ._events import UnitStarted as UnitStarted
from ._graph import ExecutionMode as ExecutionMode
from ._graph import QuantumUnit as QuantumUnit
from ._graph import UnitState as UnitState
from ._partitioner import QuantumPartitioner as QuantumPartitioner
from ._plan import ExecutionPlan as ExecutionPlan
from ._policies import ExponentialBackoff as ExponentialBackoff
from ._policies import RetryPolicy as RetryPolicy
from ._progress import ProgressBar as ProgressBar
from ._scheduler import Scheduler as Scheduler
from ._scheduler import Transition as Transition
from ._simulate import Simulation as Simulation
from ._stores import CacheEntry as CacheEntry
from ._stores import CacheStore as CacheStore
from ._stores import MemoryStore as MemoryStore
from ._stores import SQLiteStore as SQLiteStore
from ._strategies import select_execution_strategy as select_execution_strategy
from ._strategies import select_optimal_workers as select_optimal_workers
from ._trace import TraceRecorder as TraceRecorder
from .backends import Backend as Backend

if TYPE_CHECKING:
    from .backends._dask import DaskBackend as DaskBackend

#: Exported names imported on first use, so that importing the package never imports dask.
_LAZY = frozenset({"DaskBackend"})


def __getattr__(name: str) -> Any:
    """Import a lazily exported name (``DaskBackend``) on first use."""
    if name in _LAZY:
        from . import backends  # noqa: PLC0415 - lazy by design

        obj = getattr(backends, name)
        obj.__module__ = __name__
        globals()[name] = obj
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = version("quantum-partitioner")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Backend",
    "BrokenBackendError",
    "CacheEntry",
    "CacheStats",
    "CacheStore",
    "CachingQuantumPartitioner",
    "CircularDependency",
    "CircularDependencyError",
    "DaskBackend",
    "DuplicateUnitError",
    "ExecutionContext",
    "ExecutionMode",
    "ExecutionPlan",
    "ExponentialBackoff",
    "GraphError",
    "Instrument",
    "InternalError",
    "MemoryStore",
    "PartitionerError",
    "ProgressBar",
    "QuantumPartitioner",
    "QuantumUnit",
    "RetryPolicy",
    "RunFinished",
    "RunStarted",
    "SQLiteStore",
    "Scheduler",
    "Simulation",
    "TaskError",
    "TraceRecorder",
    "Transition",
    "UnitCancelled",
    "UnitCancelledError",
    "UnitFailed",
    "UnitFinished",
    "UnitRetrying",
    "UnitSkipped",
    "UnitSkippedError",
    "UnitStarted",
    "UnitState",
    "UnitTimeoutError",
    "UnknownDependencyError",
    "WorkerDiedError",
    "select_execution_strategy",
    "select_optimal_workers",
]

# Public objects say they live here, not in private modules (for reprs, docs and pickles of
# exceptions).
for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(
        ("quantum_partitioner._", "quantum_partitioner.backends._")
    ):
        with contextlib.suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj, contextlib
