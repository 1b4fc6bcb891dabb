"""The project's runners: ``QuantumPartitioner.execute()`` in each execution mode.

The library is imported lazily, so the peers can still be measured while it does not
import; its runners then report themselves unavailable. When it is not installed the
checkout's ``src/`` is tried, so ``python bench/run.py`` measures the code next to it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import Runner, RunnerUnavailableError, RunOnce

if TYPE_CHECKING:
    from types import ModuleType

    from shapes import GraphSpec

PROJECT_WORKERS = 4
CHECKOUT_SRC = Path(__file__).resolve().parent.parent / "src"


def noop_unit(ctx: Any) -> None:
    """A unit that does nothing; the project passes it the execution context."""


def ignore_unit_start(uid: str) -> None:
    """No-op ``on_unit_start`` hook, so that only the cost of calling hooks is measured."""


def ignore_unit_complete(uid: str, result: Any) -> None:
    """No-op ``on_unit_complete`` hook."""


@functools.cache
def project_api() -> ModuleType:
    """Import ``quantum_partitioner``, from the checkout's ``src/`` if it is not installed."""
    try:
        return importlib.import_module("quantum_partitioner")
    except ImportError:
        if not (CHECKOUT_SRC / "quantum_partitioner" / "__init__.py").is_file():
            raise
        sys.path.insert(0, str(CHECKOUT_SRC))
        return importlib.import_module("quantum_partitioner")


def project_version() -> str:
    """The library's version, or why it is not importable."""
    try:
        api = project_api()
    except Exception as exc:  # a half-edited library may raise anything on import
        return f"not importable ({type(exc).__name__}: {exc})"
    return str(getattr(api, "__version__", "unknown version"))


def build_partitioner(spec: GraphSpec, with_callbacks: bool) -> Any:
    """A partitioner holding one no-op unit per spec entry (optionally with no-op hooks)."""
    try:
        api = project_api()
    except ImportError as exc:
        raise RunnerUnavailableError(f"quantum_partitioner is not importable: {exc}") from exc
    partitioner = api.QuantumPartitioner(max_workers=PROJECT_WORKERS)
    for name, deps in spec.deps.items():
        partitioner.add_unit(noop_unit, dependencies=deps, name=name)
    if with_callbacks:
        partitioner.on_unit_start = ignore_unit_start
        partitioner.on_unit_complete = ignore_unit_complete
    return partitioner


def prepare_execute(spec: GraphSpec, mode: str, with_callbacks: bool) -> RunOnce:
    """Build the partitioner once; the returned callable runs ``execute()`` in ``mode``."""
    partitioner = build_partitioner(spec, with_callbacks)
    execution_mode = project_api().ExecutionMode[mode]
    if mode == "SEQUENTIAL":
        return functools.partial(partitioner.execute, {}, execution_mode=execution_mode)
    return functools.partial(
        partitioner.execute, {}, execution_mode=execution_mode, max_workers=PROJECT_WORKERS
    )


def project_runner(mode: str, with_callbacks: bool = False) -> Runner:
    """A runner for ``execute(execution_mode=ExecutionMode[mode])``."""
    workers = "" if mode == "SEQUENTIAL" else f" ({PROJECT_WORKERS})"
    suffix = " + callbacks" if with_callbacks else ""
    key = mode.lower() + ("+cb" if with_callbacks else "")
    prepare = functools.partial(prepare_execute, mode=mode, with_callbacks=with_callbacks)
    return Runner(key, f"{mode}{workers}{suffix}", prepare)


SEQUENTIAL = project_runner("SEQUENTIAL")
SEQUENTIAL_CALLBACKS = project_runner("SEQUENTIAL", with_callbacks=True)
THREAD = project_runner("THREAD")
THREAD_CALLBACKS = project_runner("THREAD", with_callbacks=True)
