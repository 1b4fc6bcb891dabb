"""quantum-partitioner: run a graph of Python callables at the highest concurrency it allows.

Units are plain callables called as ``fn(ctx)``; each declares the units it depends on. A
sans-I/O scheduler decides what runs next, and a backend runs it: in the calling thread, on
threads, on worker processes, on an asyncio loop, on any ``concurrent.futures.Executor``, or
on a Dask cluster.

Every public name is imported on first use (PEP 562), as ``concurrent.futures`` does for its
executors: ``import quantum_partitioner`` stays cheap, so a worker process, which needs only
the unit context, starts fast, and dask is imported only by code that asks for
``DaskBackend``.
"""

from __future__ import annotations

# Worker processes import this package first: it imports nothing at all (not even
# ``typing``, whose names serve annotations only), so they start fast.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._context import ExecutionContext as ExecutionContext
    from ._errors import BrokenBackendError as BrokenBackendError
    from ._errors import CircularDependency as CircularDependency
    from ._errors import CircularDependencyError as CircularDependencyError
    from ._errors import DuplicateUnitError as DuplicateUnitError
    from ._errors import GraphError as GraphError
    from ._errors import InternalError as InternalError
    from ._errors import MapItemsFailedError as MapItemsFailedError
    from ._errors import PartitionerError as PartitionerError
    from ._errors import SkipCause as SkipCause
    from ._errors import SkipUnit as SkipUnit
    from ._errors import TaskError as TaskError
    from ._errors import UnitCancelledError as UnitCancelledError
    from ._errors import UnitSkippedError as UnitSkippedError
    from ._errors import UnitTimeoutError as UnitTimeoutError
    from ._errors import UnknownDependencyError as UnknownDependencyError
    from ._errors import WorkerDiedError as WorkerDiedError
    from ._graph import ExecutionMode as ExecutionMode
    from ._graph import QuantumUnit as QuantumUnit
    from ._graph import UnitState as UnitState
    from ._joins import JoinRule as JoinRule
    from ._joins import at_least as at_least
    from ._limits import Limit as Limit
    from ._limits import LimitStats as LimitStats
    from ._partitioner import QuantumPartitioner as QuantumPartitioner
    from ._plan import ExecutionPlan as ExecutionPlan
    from ._policies import ExponentialBackoff as ExponentialBackoff
    from ._policies import RetryPolicy as RetryPolicy
    from ._scheduler import Scheduler as Scheduler
    from ._scheduler import Transition as Transition
    from ._simulate import Simulation as Simulation
    from ._strategies import select_execution_strategy as select_execution_strategy
    from ._strategies import select_optimal_workers as select_optimal_workers
    from ._stream import AsyncResultStream as AsyncResultStream
    from ._stream import ResultStream as ResultStream
    from ._stream import UnitResult as UnitResult
    from .backends import Backend as Backend
    from .backends._dask import DaskBackend as DaskBackend
    from .caching._partitioner import CacheStats as CacheStats
    from .caching._partitioner import CachingQuantumPartitioner as CachingQuantumPartitioner
    from .caching._stores import CacheEntry as CacheEntry
    from .caching._stores import CacheStore as CacheStore
    from .caching._stores import InsecureCacheWarning as InsecureCacheWarning
    from .caching._stores import MemoryStore as MemoryStore
    from .caching._stores import SQLiteStore as SQLiteStore
    from .observability._events import Instrument as Instrument
    from .observability._events import RunFinished as RunFinished
    from .observability._events import RunStarted as RunStarted
    from .observability._events import UnitCancelled as UnitCancelled
    from .observability._events import UnitFailed as UnitFailed
    from .observability._events import UnitFinished as UnitFinished
    from .observability._events import UnitRetrying as UnitRetrying
    from .observability._events import UnitsAdded as UnitsAdded
    from .observability._events import UnitSkipped as UnitSkipped
    from .observability._events import UnitStarted as UnitStarted
    from .observability._progress import ProgressBar as ProgressBar
    from .observability._trace import TraceRecorder as TraceRecorder

#: Where each public name lives, by module.
_MODULES: dict[str, tuple[str, ...]] = {
    ".caching._partitioner": ("CacheStats", "CachingQuantumPartitioner"),
    "._context": ("ExecutionContext",),
    "._errors": (
        "BrokenBackendError",
        "CircularDependency",
        "CircularDependencyError",
        "DuplicateUnitError",
        "GraphError",
        "InternalError",
        "MapItemsFailedError",
        "PartitionerError",
        "SkipCause",
        "SkipUnit",
        "TaskError",
        "UnitCancelledError",
        "UnitSkippedError",
        "UnitTimeoutError",
        "UnknownDependencyError",
        "WorkerDiedError",
    ),
    ".observability._events": (
        "Instrument",
        "RunFinished",
        "RunStarted",
        "UnitCancelled",
        "UnitFailed",
        "UnitFinished",
        "UnitRetrying",
        "UnitSkipped",
        "UnitStarted",
        "UnitsAdded",
    ),
    "._graph": ("ExecutionMode", "QuantumUnit", "UnitState"),
    "._joins": ("JoinRule", "at_least"),
    "._limits": ("Limit", "LimitStats"),
    "._partitioner": ("QuantumPartitioner",),
    "._plan": ("ExecutionPlan",),
    "._policies": ("ExponentialBackoff", "RetryPolicy"),
    ".observability._progress": ("ProgressBar",),
    "._scheduler": ("Scheduler", "Transition"),
    "._simulate": ("Simulation",),
    ".caching._stores": (
        "CacheEntry",
        "CacheStore",
        "InsecureCacheWarning",
        "MemoryStore",
        "SQLiteStore",
    ),
    "._strategies": ("select_execution_strategy", "select_optimal_workers"),
    "._stream": ("AsyncResultStream", "ResultStream", "UnitResult"),
    ".observability._trace": ("TraceRecorder",),
    ".backends": ("Backend",),
    ".backends._dask": ("DaskBackend",),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, and remember it."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value: Any = version("quantum-partitioner")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
    elif name in _MODULE_OF:
        import contextlib  # noqa: PLC0415 - see the imports at the top
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
        # Public objects say they live here, not in private modules (reprs, docs, pickles).
        if getattr(value, "__module__", "").startswith(f"{__name__}."):
            with contextlib.suppress(AttributeError, TypeError):  # immutable objects
                value.__module__ = __name__
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, with the module's own attributes."""
    return sorted({*globals(), *__all__})


__all__ = [
    "AsyncResultStream",
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
    "InsecureCacheWarning",
    "Instrument",
    "InternalError",
    "JoinRule",
    "Limit",
    "LimitStats",
    "MapItemsFailedError",
    "MemoryStore",
    "PartitionerError",
    "ProgressBar",
    "QuantumPartitioner",
    "QuantumUnit",
    "ResultStream",
    "RetryPolicy",
    "RunFinished",
    "RunStarted",
    "SQLiteStore",
    "Scheduler",
    "Simulation",
    "SkipCause",
    "SkipUnit",
    "TaskError",
    "TraceRecorder",
    "Transition",
    "UnitCancelled",
    "UnitCancelledError",
    "UnitFailed",
    "UnitFinished",
    "UnitResult",
    "UnitRetrying",
    "UnitSkipped",
    "UnitSkippedError",
    "UnitStarted",
    "UnitState",
    "UnitTimeoutError",
    "UnitsAdded",
    "UnknownDependencyError",
    "WorkerDiedError",
    "at_least",
    "select_execution_strategy",
    "select_optimal_workers",
]
