"""The TaskMap engine of the original API, as a thin functional layer over the same scheduler.

A task map is a dict ``name -> (fn, dependencies)`` or ``name -> (fn, dependencies, options)``
where ``options`` holds :meth:`QuantumPartitioner.add_unit`'s keyword arguments
(``{"timeout": 5, "limits": ["api"]}``, a condition ``{"when": pred}``, a join rule
``{"run_if": "all_done"}``), or :meth:`~QuantumPartitioner.add_map`'s when it names ``over``
(``{"over": "plan"}`` makes the task a map); each function is called as ``fn(ctx)`` exactly
like a partitioner's unit. ``TaskMap(tasks, limits={"api": {"concurrency": 2}})`` adds the named
limits tasks may name. A task ``(other, dependencies)`` whose ``other`` is another
:class:`TaskMap` (or a partitioner) is a subgraph, as
:meth:`QuantumPartitioner.add_subgraph` inlines it. Runs raise :class:`TaskError` (with ``errors``,
``partial_results`` and ``failed_tasks``) when a task fails, as code written for it expects::

    from quantum_partitioner.taskmap import TaskMap, run_parallel_threads

    tasks = {"load": (load, []), "clean": (clean, ["load"])}
    results = run_parallel_threads(TaskMap(tasks), {"path": "data.csv"}, max_workers=4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from .._errors import CircularDependency, CircularDependencyError, TaskError
from .._graph import ExecutionMode, QuantumUnit, validate_unit
from .._limits import Limit
from .._partitioner import _UNIT_OPTIONS, QuantumPartitioner

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from .._graph import UnitFunction
    from .._plan import ExecutionPlan

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

#: A task: ``(fn, dependencies)``, ``(fn, dependencies, options)`` with ``options`` the
#: keyword arguments of ``add_unit``, or a bare ``fn``; called as ``fn(ctx)`` like a unit.
#: A TaskMap or a partitioner in place of ``fn`` is a subgraph.
TaskSpec: TypeAlias = (
    "tuple[UnitFunction[Any], Iterable[str]]"
    " | tuple[UnitFunction[Any], Iterable[str], Mapping[str, Any]]"
    " | UnitFunction[Any]"
    " | tuple[TaskMap | QuantumPartitioner[Any, Any], Iterable[str]]"
    " | TaskMap | QuantumPartitioner[Any, Any]"
)

#: What a task's ``options`` may hold: ``add_unit``'s keyword arguments (but its name).
_TASK_OPTIONS = _UNIT_OPTIONS
#: What the ``options`` of a task that names ``over`` (a map) may hold: ``add_map``'s.
_MAP_OPTIONS = (_TASK_OPTIONS - {"cancel_rest"}) | {"over", "max_items"}


class TaskMap:
    """Named tasks with dependencies, plus callbacks.

    Args:
        tasks: ``name -> (fn, dependencies)`` or ``(fn, dependencies, options)``, where
            ``options`` holds :meth:`QuantumPartitioner.add_unit`'s keyword arguments
            (``timeout``, ``retries``, ``priority``, ``metadata``, ``retry_policy``,
            ``limits``, ``when``, ``run_if``, ``cancel_rest``), or, with ``over``,
            :meth:`~QuantumPartitioner.add_map`'s (``over``, ``max_items`` and the same but
            ``cancel_rest``): the task is then a map over ``over``, whose ``dependencies``
            every item sees; a bare ``fn`` means no dependencies. In place of ``fn``, another
            TaskMap or a :class:`QuantumPartitioner` is a subgraph
            (:meth:`QuantumPartitioner.add_subgraph`): its tasks run as ``name.<task>``
            and the task's result is a dict of its sink tasks' results.
        limits: Named limits the tasks may name, ``name -> Limit`` or ``name -> {knobs}``
            (``concurrency``, ``per_second``, ``burst``, as :meth:`~QuantumPartitioner.add_limit`).

    Attributes:
        on_task_start: ``fn(name)`` when a task starts.
        on_task_complete: ``fn(name, result)`` when a task completes.
        on_task_error: ``fn(name, error)`` when a task fails.

    Raises:
        TypeError: ``tasks`` is not a mapping, a name is not a string, or a task is not a
            function or a ``(function, dependencies[, options])`` tuple whose dependencies are
            a list of names and whose options are ``add_unit`` keywords (the message names
            the task); a limit is neither a Limit nor a dict of knobs.
        ValueError: An option or a limit knob is out of range (names the task or limit).
        GraphError: Unknown dependencies or a cycle (when the map is first run or planned).
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskSpec],
        *,
        limits: Mapping[str, Limit | Mapping[str, Any]] | None = None,
    ) -> None:
        """Validate the tasks' shape; the graph itself is checked before running."""
        _check_mapping(tasks, "tasks", "(fn, dependencies)")
        self.tasks: dict[str, tuple[Callable[..., Any], list[str]]] = {}
        #: Each task's ``add_unit`` keyword arguments (tasks without options are absent).
        self.options: dict[str, dict[str, Any]] = {}
        #: The tasks that are subgraphs: ``name -> (TaskMap or partitioner, dependencies)``.
        self.subgraphs: dict[str, tuple[TaskMap | QuantumPartitioner[Any, Any], list[str]]] = {}
        checker: QuantumPartitioner[Any, Any] = QuantumPartitioner()  # add_unit's checks
        for name, spec in tasks.items():
            subgraph = _subgraph_task(name, spec)
            if subgraph is not None:
                self.subgraphs[name] = subgraph
                continue
            fn, deps, options = _task_with_options(name, spec, checker)
            self.tasks[name] = (fn, deps)
            if options:
                self.options[name] = options
        self._order = list(tasks)
        self.limits: dict[str, Limit] = _named_limits(limits)
        self.on_task_start: Callable[[str], Any] | None = None
        self.on_task_complete: Callable[[str, Any], Any] | None = None
        self.on_task_error: Callable[[str, BaseException], Any] | None = None
        self._partitioner: QuantumPartitioner[Any, Any] | None = None

    def partitioner(self) -> QuantumPartitioner[Any, Any]:
        """The partitioner that runs this map (built once, callbacks refreshed each call)."""
        if self._partitioner is None:
            partitioner: QuantumPartitioner[Any, Any] = QuantumPartitioner()
            for limit in self.limits.values():
                partitioner.add_limit(limit)
            for name in self._order:
                subgraph = self.subgraphs.get(name)
                if subgraph is not None:
                    other, deps = subgraph
                    inner = other.partitioner() if isinstance(other, TaskMap) else other
                    partitioner.add_subgraph(inner, name, deps)
                    continue
                fn, deps = self.tasks[name]
                _add_task(partitioner, name, fn, deps, self.options.get(name, {}))
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


def _named_limits(limits: object) -> dict[str, Limit]:
    """A TaskMap's ``limits=`` as Limit objects by name."""
    if limits is None:
        return {}
    _check_mapping(limits, "limits", "Limit or dict of concurrency/per_second/burst")
    assert isinstance(limits, Mapping)
    named: dict[str, Limit] = {}
    for name, spec in limits.items():
        if isinstance(spec, Limit):
            if spec.name != name:
                raise ValueError(f"limit {name!r}: its Limit is named {spec.name!r}")
            named[name] = spec
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"concurrency", "per_second", "burst"}
            if unknown:
                raise TypeError(f"limit {name!r}: unknown knobs {sorted(unknown)}")
            named[name] = Limit(name, **spec)
        else:
            raise TypeError(
                f"limit {name!r}: expected a Limit or a dict of concurrency/per_second/burst, "
                f"got {spec!r}"
            )
    return named


def _add_task(
    partitioner: QuantumPartitioner[Any, Any],
    name: str,
    fn: Callable[..., Any],
    deps: list[str],
    options: Mapping[str, Any],
) -> None:
    """Add one task: a map if its options name ``over``, else a unit."""
    if "over" in options:
        partitioner.add_map(fn, name=name, dependencies=deps, **options)
    else:
        partitioner.add_unit(fn, deps, name=name, **options)


def _subgraph_task(
    name: Any, spec: object
) -> tuple[TaskMap | QuantumPartitioner[Any, Any], list[str]] | None:
    """A task that is a subgraph, ``(other, dependencies)`` or a bare ``other``, else None."""
    graphs = (TaskMap, QuantumPartitioner)
    if isinstance(spec, graphs):
        return spec, []
    if not (isinstance(spec, tuple) and len(spec) in {2, 3} and isinstance(spec[0], graphs)):
        return None
    if len(spec) == 3 and spec[2]:
        raise TypeError(
            f"task {name!r}: a subgraph takes no options, got {spec[2]!r}; set them on its tasks"
        )
    return spec[0], _dependency_names(name, spec[1])


def _task_with_options(
    name: Any, spec: object, checker: QuantumPartitioner[Any, Any]
) -> tuple[Callable[..., Any], list[str], dict[str, Any]]:
    """A task as ``(fn, dependency names, options)``, checked by adding it to ``checker``.

    So the options obey exactly the rules of ``add_unit`` (or ``add_map``, for a map).
    """
    if not (isinstance(spec, tuple) and len(spec) == 3):
        return (*_task(name, spec), {})
    fn, deps, options = spec
    if not isinstance(options, Mapping):
        raise TypeError(
            f"task {name!r}: options must be a dict of add_unit keyword arguments, got {options!r}"
        )
    allowed, method = (
        (_MAP_OPTIONS, "add_map") if "over" in options else (_TASK_OPTIONS, "add_unit")
    )
    unknown = set(options) - allowed
    if unknown:
        also = "" if method == "add_map" else " (with over, add_map's: a map)"
        raise TypeError(
            f"task {name!r}: unknown options {sorted(unknown)}; "
            f"use {method}'s keywords: {sorted(allowed)}{also}"
        )
    fn, dep_names = _task(name, (fn, deps))
    _add_task(checker, name, fn, dep_names, options)
    return fn, dep_names, dict(options)


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

    Lambdas and closures work in the worker processes this starts: they travel with
    cloudpickle. An ``executor`` sends functions its own way: a ``ProcessPoolExecutor``
    only those importable by name (a lambda fails its task with a ``TypeError`` naming it).

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
