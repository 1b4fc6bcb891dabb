"""The seed's TaskMap engine, as a thin functional layer over the same scheduler.

A task map is a dict ``name -> (fn, dependencies)``; each function is called as ``fn(ctx)``
exactly like a partitioner's unit. Runs raise :class:`TaskError` (with ``errors``,
``partial_results`` and ``failed_tasks``) when a task fails, as the seed's code expects::

    from quantum_partitioner.taskmap import TaskMap, run_parallel_threads

    tasks = {"load": (load, []), "clean": (clean, ["load"])}
    results = run_parallel_threads(TaskMap(tasks), {"path": "data.csv"}, max_workers=4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from ._errors import CircularDependency, CircularDependencyError, TaskError
from ._graph import ExecutionMode, QuantumUnit, validate_unit
from ._partitioner import QuantumPartitioner

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ._graph import UnitFunction
    from ._plan import ExecutionPlan

__all__ = [
    "CircularDependency",
    "CircularDependencyError",
    "TaskError",
    "TaskMap",
    "build_graph",
    "run_async",
    "run_parallel",
    "run_parallel_threads",
    "run_tasks",
]

#: A task: ``(fn, dependencies)``, or a bare ``fn``, called as ``fn(ctx)`` like a unit.
TaskSpec: TypeAlias = "tuple[UnitFunction[Any], Iterable[str]] | UnitFunction[Any]"


class TaskMap:
    """Named tasks with dependencies, plus the seed's callbacks.

    Args:
        tasks: ``name -> (fn, dependencies)``; a bare ``fn`` means no dependencies.

    Attributes:
        on_task_start: ``fn(name)`` when a task starts.
        on_task_complete: ``fn(name, result)`` when a task completes.
        on_task_error: ``fn(name, error)`` when a task fails.

    Raises:
        TypeError: ``tasks`` is not a mapping, a name is not a string, or a task is not a
            function or a ``(function, dependencies)`` pair whose dependencies are a list of
            names (the message names the task).
        GraphError: Unknown dependencies or a cycle (when the map is first run or planned).
    """

    def __init__(self, tasks: Mapping[str, TaskSpec]) -> None:
        """Validate the tasks' shape; the graph itself is checked before running."""
        _check_mapping(tasks, "tasks", "(fn, dependencies)")
        self.tasks: dict[str, tuple[Callable[..., Any], list[str]]] = {}
        for name, spec in tasks.items():
            self.tasks[name] = _task(name, spec)
        self.on_task_start: Callable[[str], Any] | None = None
        self.on_task_complete: Callable[[str, Any], Any] | None = None
        self.on_task_error: Callable[[str, BaseException], Any] | None = None
        self._partitioner: QuantumPartitioner[Any, Any] | None = None

    def partitioner(self) -> QuantumPartitioner[Any, Any]:
        """The partitioner that runs this map (built once, callbacks refreshed each call)."""
        if self._partitioner is None:
            partitioner: QuantumPartitioner[Any, Any] = QuantumPartitioner()
            for name, (fn, deps) in self.tasks.items():
                partitioner.add_unit(fn, deps, name=name)
            self._partitioner = partitioner
        partitioner = self._partitioner
        partitioner.on_unit_start = self.on_task_start
        partitioner.on_unit_complete = self.on_task_complete
        partitioner.on_unit_error = self.on_task_error
        return partitioner

    def plan(self) -> ExecutionPlan:
        """Validate the map and describe it (levels, critical path, DOT)."""
        return self.partitioner().build_execution_plan()

    def run(self, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run every task in this thread, in order; see :func:`run_tasks`."""
        return run_tasks(self, context)


def _check_mapping(value: object, what: str, shape: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must be a dict of name -> {shape}, got a {type(value).__name__}: {value!r}"
        )


def _task(name: Any, spec: object) -> tuple[Callable[..., Any], list[str]]:
    """One task of a map as ``(fn, dependency names)``, checked by add_unit's rules.

    Every entry point that takes tasks (:class:`TaskMap`, and through it ``run_*``;
    :func:`build_graph`) reads them here, so a bad task is refused when the map is built,
    with a ``TypeError``/``ValueError`` naming the task.
    """
    deps: object = ()
    if callable(spec):
        fn = spec
    elif isinstance(spec, tuple) and len(spec) == 2:
        fn, deps = spec
    else:
        raise TypeError(f"task {name!r}: expected fn or (fn, dependencies), got {spec!r}")
    unit: QuantumUnit[Any, Any] = QuantumUnit(name, fn, _dependency_names(name, deps))
    validate_unit(unit)  # the name, the function, each dependency's name: as add_unit checks
    return unit.function, unit.dependencies


def _dependency_names(name: object, deps: object) -> list[str]:
    """``deps`` as a list; a string (not split into letters), a mapping or None is refused."""
    if isinstance(deps, str | bytes | Mapping) or not isinstance(deps, Iterable):
        raise TypeError(
            f"unit {name!r}: dependencies must be a list of unit names, got {deps!r}"
            + (" (use [] for none)" if deps is None else "")
        )
    return list(deps)


def _as_task_map(task_map: TaskMap | Mapping[str, TaskSpec]) -> TaskMap:
    return task_map if isinstance(task_map, TaskMap) else TaskMap(task_map)


def _run_on(
    task_map: TaskMap | Mapping[str, TaskSpec],
    context: Mapping[str, Any] | None,
    mode: ExecutionMode,
    executor: Executor | None,
    max_workers: int | None,
) -> dict[str, Any]:
    """Run on ``executor`` (CUSTOM) if given, else in ``mode``; raise TaskError on failure."""
    partitioner = _as_task_map(task_map).partitioner()
    if executor is not None:
        mode = ExecutionMode.CUSTOM
    return partitioner.execute(
        context, mode, max_workers, custom_executor=executor, raise_on_error=True
    )


def run_tasks(
    task_map: TaskMap | Mapping[str, TaskSpec], context: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run every task sequentially in the calling thread (for debugging and tracing).

    Raises:
        TaskError: Some task failed; completed results are in ``partial_results``.
    """
    partitioner = _as_task_map(task_map).partitioner()
    return partitioner.execute(
        context, execution_mode=ExecutionMode.SEQUENTIAL, raise_on_error=True
    )


def run_parallel_threads(
    task_map: TaskMap | Mapping[str, TaskSpec],
    context: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
) -> dict[str, Any]:
    """Run tasks on threads (for I/O-bound work), or on ``executor`` if given.

    Raises:
        TaskError: Some task failed; completed results are in ``partial_results``.
    """
    return _run_on(task_map, context, ExecutionMode.THREAD, executor, max_workers)


def run_parallel(
    task_map: TaskMap | Mapping[str, TaskSpec],
    context: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    max_workers: int | None = None,
) -> dict[str, Any]:
    """Run tasks in worker processes (for CPU-bound work), or on ``executor`` if given.

    Lambdas and closures work: they travel with cloudpickle.

    Raises:
        TaskError: Some task failed; completed results are in ``partial_results``.
    """
    return _run_on(task_map, context, ExecutionMode.PROCESS, executor, max_workers)


def run_async(
    task_map: TaskMap | Mapping[str, TaskSpec],
    context: Mapping[str, Any] | None = None,
    max_workers: int | None = None,
) -> dict[str, Any]:
    """Run tasks on an event loop: coroutine functions as tasks, plain ones in threads.

    From inside a running loop, use ``await task_map.partitioner().aexecute(...)``.

    Raises:
        TaskError: Some task failed; completed results are in ``partial_results``.
    """
    partitioner = _as_task_map(task_map).partitioner()
    return partitioner.execute(context, ExecutionMode.ASYNC, max_workers, raise_on_error=True)


def _never_called(_ctx: object) -> None:  # pragma: no cover - plans never run
    raise RuntimeError("build_graph() describes a graph; it has no functions to run")


def build_graph(dependencies: Mapping[str, Iterable[str]]) -> ExecutionPlan:
    """Validate ``name -> dependencies`` as a graph and return its plan.

    Args:
        dependencies: ``name -> list of names``; a TaskMap-style ``(fn, dependencies)`` pair
            is accepted too.

    Raises:
        TypeError: ``dependencies`` is not a mapping, a name is not a string, or an entry
            is not a list of names (the message names the task).
        UnknownDependencyError: A dependency names no task.
        CircularDependencyError: The dependencies form a cycle (``.cycle`` has its path).
    """
    _check_mapping(dependencies, "dependencies", "list of dependency names")
    partitioner: QuantumPartitioner[Any, Any] = QuantumPartitioner()
    spec: Any
    for name, spec in dependencies.items():
        if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[0]):
            fn, deps = _task(name, spec)  # a TaskMap-style (fn, dependencies) pair
        else:
            fn, deps = _task(name, (_never_called, spec))
        partitioner.add_unit(fn, deps, name=name)
    return partitioner.build_execution_plan()
