"""The project's runners: ``QuantumPartitioner.execute()`` in each execution mode.

Units are no-ops unless a :class:`~workloads.Workload` says otherwise (the cpu and async
sections). ``workers`` is the partitioner's and the run's ``max_workers``; None leaves it
unset (ASYNC: no cap, as with ``asyncio.gather``).

The library is imported lazily, so the peers can still be measured while it does not
import; its runners then report themselves unavailable. When it is not installed the
checkout's ``src/`` is tried, so ``python bench/run.py`` measures the code next to it.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import Runner, RunnerUnavailableError, RunOnce
from workloads import ASYNC_RETURN_NONE, ASYNC_SLEEP_ZERO

if TYPE_CHECKING:
    from types import ModuleType

    from shapes import GraphSpec
    from workloads import Workload

PROJECT_WORKERS = 4
PROCESS_WORKERS = 2
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


def build_partitioner(
    spec: GraphSpec,
    with_callbacks: bool,
    workers: int | None = PROJECT_WORKERS,
    workload: Workload | None = None,
) -> Any:
    """A partitioner holding one unit per spec entry (optionally with no-op hooks).

    The units are no-ops, or run ``workload``'s functions.
    """
    try:
        api = project_api()
    except ImportError as exc:
        raise RunnerUnavailableError(f"quantum_partitioner is not importable: {exc}") from exc
    partitioner = api.QuantumPartitioner(max_workers=workers)
    for name, deps in spec.deps.items():
        function = noop_unit if workload is None else workload.function_for(deps)
        partitioner.add_unit(function, dependencies=deps, name=name)
    if with_callbacks:
        partitioner.on_unit_start = ignore_unit_start
        partitioner.on_unit_complete = ignore_unit_complete
    return partitioner


def prepare_execute(
    spec: GraphSpec,
    mode: str,
    with_callbacks: bool,
    workers: int | None = PROJECT_WORKERS,
    workload: Workload | None = None,
) -> RunOnce:
    """Build the partitioner once; the returned callable runs ``execute()`` in ``mode``."""
    partitioner = build_partitioner(spec, with_callbacks, workers, workload)
    execution_mode = project_api().ExecutionMode[mode]
    if mode == "SEQUENTIAL" or workers is None:
        return functools.partial(partitioner.execute, {}, execution_mode=execution_mode)
    return functools.partial(
        partitioner.execute, {}, execution_mode=execution_mode, max_workers=workers
    )


def project_runner(
    mode: str,
    with_callbacks: bool = False,
    *,
    workers: int | None = PROJECT_WORKERS,
    workload: Workload | None = None,
    tag: str = "",
) -> Runner:
    """A runner for ``execute(execution_mode=ExecutionMode[mode])``.

    ``tag`` names the workload in the label and key, e.g. ``ASYNC [sleep(0)]``.
    """
    shown_workers = "" if mode == "SEQUENTIAL" or workers is None else f" ({workers})"
    suffix = " + callbacks" if with_callbacks else ""
    label = f"{mode}{shown_workers}{suffix}" + (f" [{tag}]" if tag else "")
    key = mode.lower() + ("+cb" if with_callbacks else "")
    if workers != PROJECT_WORKERS and mode != "SEQUENTIAL":
        key += f"/{workers}"
    if tag:
        key += f"[{tag}]"
    prepare = functools.partial(
        prepare_execute,
        mode=mode,
        with_callbacks=with_callbacks,
        workers=workers,
        workload=workload,
    )
    return Runner(key, label, prepare)


def prepare_reused_process(
    spec: GraphSpec, workers: int, workload: Workload | None = None
) -> RunOnce:
    """PROCESS on a backend that keeps its workers between runs (start-up paid once)."""
    partitioner = build_partitioner(spec, False, workers, workload)  # noqa: FBT003
    backends = importlib.import_module("quantum_partitioner.backends")
    backend = backends.ProcessBackend(workers, reuse=True)  # stopped at interpreter exit
    return functools.partial(partitioner.execute, {}, backend=backend)


def reused_process_runner(workers: int, *, workload: Workload | None = None) -> Runner:
    """A runner for PROCESS mode with ``ProcessBackend(workers, reuse=True)``."""
    prepare = functools.partial(prepare_reused_process, workers=workers, workload=workload)
    return Runner(f"process-reused/{workers}", f"PROCESS ({workers}, reused workers)", prepare)


SEQUENTIAL = project_runner("SEQUENTIAL")
SEQUENTIAL_CALLBACKS = project_runner("SEQUENTIAL", with_callbacks=True)
THREAD = project_runner("THREAD")
THREAD_CALLBACKS = project_runner("THREAD", with_callbacks=True)
PROCESS = project_runner("PROCESS", workers=PROCESS_WORKERS)


def prepare_progress(spec: GraphSpec, mode: str, drawn: bool) -> RunOnce:
    """``execute(progress=True)``, or (``drawn``) with a bar forced to draw to /dev/null.

    stdout and stderr are not terminals here, so ``progress=True`` attaches nothing; the
    drawn variant shows what the bar costs a run that is watched from a terminal.
    """
    partitioner = build_partitioner(spec, with_callbacks=False)
    api = project_api()
    options: dict[str, Any] = {"execution_mode": api.ExecutionMode[mode]}
    if mode != "SEQUENTIAL":
        options["max_workers"] = PROJECT_WORKERS
    if not hasattr(api, "ProgressBar"):
        raise RunnerUnavailableError("this version has no progress bar")
    try:
        if drawn:
            # Open for as long as the runner lives: closing it would end the measurement.
            devnull = Path(os.devnull).open("w", encoding="utf-8")  # noqa: SIM115
            bar = api.ProgressBar(file=devnull, force_terminal=True)
            partitioner.instruments.append(bar)
        else:
            options["progress"] = True
            api.ProgressBar()  # fails as execute(progress=True) would without rich
    except ImportError as exc:
        raise RunnerUnavailableError(str(exc)) from exc
    return functools.partial(partitioner.execute, {}, **options)


def progress_runner(mode: str, drawn: bool) -> Runner:
    """A runner for ``execute(progress=True)`` in ``mode``: not a tty, or forced to draw."""
    shown_workers = "" if mode == "SEQUENTIAL" else f" ({PROJECT_WORKERS})"
    what = "progress bar drawn" if drawn else "progress=True, no tty"
    key = f"{mode.lower()}+progress" + ("-drawn" if drawn else "")
    prepare = functools.partial(prepare_progress, mode=mode, drawn=drawn)
    return Runner(key, f"{mode}{shown_workers} + {what}", prepare)


SEQUENTIAL_PROGRESS = progress_runner("SEQUENTIAL", drawn=False)
SEQUENTIAL_PROGRESS_DRAWN = progress_runner("SEQUENTIAL", drawn=True)
THREAD_PROGRESS = progress_runner("THREAD", drawn=False)
THREAD_PROGRESS_DRAWN = progress_runner("THREAD", drawn=True)
ASYNC_RETURN = project_runner("ASYNC", workers=None, workload=ASYNC_RETURN_NONE, tag="return None")
ASYNC_SLEEP = project_runner("ASYNC", workers=None, workload=ASYNC_SLEEP_ZERO, tag="sleep(0)")
