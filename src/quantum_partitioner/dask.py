"""Dask collections on the partitioner: ``dask.compute(x, scheduler=quantum_partitioner.dask.get)``.

Any Dask collection (``dask.delayed``, ``dask.bag``, ``dask.array``, ``dask.dataframe``) or
raw Dask graph runs on a :class:`~quantum_partitioner.QuantumPartitioner`, in THREAD mode
unless told otherwise, with the partitioner's progress bar, traces, report and timings.
``docs/dask.md`` has the long form.

Policy:
    * The graph is Dask's own: collections are turned into a graph by ``__dask_graph__()``
      and legacy tuples into task-spec nodes by ``dask._task_spec.convert_legacy_graph``, as
      ``dask.local.get_async`` does, so every graph the installed Dask produces is read the
      way Dask reads it.
    * One unit per task needed by the requested keys (tasks nothing asked for are not run).
      Literal data nodes are values, not units: each task that needs one reads it from the
      run's context, as Dask's schedulers read them from their cache.
    * A unit depends on the tasks its node depends on (``node.dependencies``). Units are
      added in the graph's order; the partitioner sorts them when that order is not
      topological and reports a cycle with the units' names.
    * Unit names: a string key is its own name, any other key (a tuple such as
      ``("sum-abc", 0, 1)``, an int) its ``str()``; a name already taken gets a ``~n``
      suffix. :attr:`Scheduler.last_names` maps keys to names.
    * The requested keys come back in Dask's nesting (``dask.local.nested_get``: lists of
      keys become tuples of values). A key that is not in the graph raises ``KeyError``
      before any task runs.
    * The first task that fails makes the run cancel what has not started (``fail_fast``),
      and its original exception is raised, with its traceback, as Dask's schedulers do.

State: a :class:`Scheduler` holds its options and its last run (:attr:`Scheduler.last_run`,
the partitioner that ran it, and :attr:`Scheduler.last_names`). :func:`get` uses a fresh
scheduler per call and keeps nothing.

.. versionadded:: 0.1
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

try:
    from dask._task_spec import DataNode, convert_legacy_graph
    from dask.core import flatten
    from dask.local import nested_get
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"quantum_partitioner.dask needs Dask: pip install 'quantum-partitioner[dask]' ({error})"
    ) from error

from ._graph import ExecutionMode, ExecutionModeArg, QuantumUnit, _gc_paused
from ._partitioner import QuantumPartitioner, _check_max_workers, _check_mode

__all__ = ["Scheduler", "get"]

# Dask's helpers, typed here (Dask leaves them unannotated): the leaves of nested lists of
# keys, and values in the nesting of the keys (lists become tuples).
_flatten: Callable[[list[Any]], Iterable[Any]] = flatten
_nested_get: Callable[[Any, Mapping[Any, Any]], Any] = nested_get

#: A Dask key: a string, a number, or a tuple of those (``("x", 0, 1)``).
Key = Hashable


def _task_unit(
    node: Any, inputs: tuple[tuple[Key, str], ...], *, show_function: bool
) -> Callable[[Any], Any]:
    """A unit that calls one Dask task-spec node with its dependencies' values from ``ctx``.

    ``inputs`` pairs each dependency's Dask key with its name in the run (a unit's name, or a
    context key for a literal data node). A plain closure, not a callable object: the run
    checks each unit function with ``inspect.iscoroutinefunction``, which is quick only for
    functions. With ``show_function``, the closure says it wraps the task's own function
    (``__wrapped__``), so the progress bar learns each kind of task's cost from the tasks of
    that function rather than from all tasks at once.
    """

    def run_task(ctx: Mapping[str, Any]) -> Any:
        return node({key: ctx[name] for key, name in inputs})

    if show_function:
        function = getattr(node, "func", None)
        if function is not None:
            run_task.__wrapped__ = function  # type: ignore[attr-defined]
    return run_task


class Scheduler:
    """A Dask scheduler that runs each task as a unit of a :class:`QuantumPartitioner`.

    Pass its :meth:`get` where Dask takes a scheduler:
    ``dask.compute(x, scheduler=sched.get)`` or ``dask.config.set(scheduler=sched.get)``;
    ``dask.compute``'s ``execution_mode=`` and ``max_workers=`` override the scheduler's own
    for that computation.
    After each computation :attr:`last_run` is the partitioner that ran it: its
    ``export_trace``, ``write_report``, ``last_execution_metrics`` and ``units`` show every
    task.

    Args:
        execution_mode: Where tasks run (default THREAD): any :class:`ExecutionMode` but
            CUSTOM, or its name.
        max_workers: Tasks that may run at once; None picks the mode's default. Dask's
            ``num_workers=`` keyword, when ``dask.compute`` forwards it, means the same.
        progress: Draw the partitioner's progress bar (needs the ``progress`` extra).
        trace: Record which worker ran each task, for ``last_run.export_trace`` and
            ``last_run.write_report``.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        execution_mode: ExecutionModeArg = ExecutionMode.THREAD,
        max_workers: int | None = None,
        progress: bool = False,
        trace: bool = False,
    ) -> None:
        """Check the options; nothing runs until :meth:`get`."""
        self.execution_mode = _task_mode(execution_mode)
        self.max_workers = _check_max_workers(max_workers)
        self.progress = bool(progress)
        self.trace = bool(trace)
        #: The partitioner that ran the last computation (None before the first).
        self.last_run: QuantumPartitioner[Any, Any] | None = None
        #: The unit name of each task and data key of the last computation's graph.
        self.last_names: dict[Key, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        """Show the options."""
        return (
            f"Scheduler(execution_mode={self.execution_mode}, max_workers={self.max_workers}, "
            f"progress={self.progress}, trace={self.trace})"
        )

    def get(
        self,
        dsk: Any,
        keys: Any,
        *,
        execution_mode: ExecutionModeArg | None = None,
        max_workers: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Compute ``keys`` of the Dask graph ``dsk``; Dask's ``get`` protocol.

        Args:
            dsk: A Dask graph (a mapping of keys to tasks, a ``HighLevelGraph``), or anything
                with ``__dask_graph__()`` (what ``dask.compute`` passes).
            keys: A key, or a list of keys and lists of keys, nested.
            execution_mode: This computation's mode, instead of the scheduler's.
            max_workers: This computation's worker count, instead of the scheduler's.
            kwargs: Other keywords ``dask.compute`` forwards. ``num_workers`` (Dask's name)
                stands for ``max_workers`` when that is not given; the others are ignored,
                as Dask's own local schedulers ignore them.

        Returns:
            The value of each requested key, in the nesting of ``keys`` (lists become
            tuples).

        Raises:
            KeyError: A requested key is not in the graph (before any task runs).
            ValueError: A task depends on a key that is not in the graph.
            BaseException: The original exception of the first task that failed.
            UnitCancelledError: ``last_run.cancel()`` stopped the computation before a
                requested key's task ended.
        """
        mode = self.execution_mode if execution_mode is None else _task_mode(execution_mode)
        workers = (
            _check_max_workers(max_workers)
            or _check_max_workers(kwargs.get("num_workers"), "num_workers")
            or self.max_workers
        )
        if not isinstance(dsk, Mapping):
            dsk = dsk.__dask_graph__()
        wanted = list(_flatten(keys)) if isinstance(keys, list) else [keys]
        # Building makes a few objects per task and frees none: the cyclic collector would
        # sweep the growing heap for nothing (a third of the time at 10,000 tasks).
        with _gc_paused():
            graph: dict[Key, Any] = convert_legacy_graph(dsk)
            for key in wanted:
                if key not in graph:
                    raise KeyError(key)
            partitioner, names, data = _build(graph, wanted, show_functions=self.progress)
        with self._lock:
            self.last_run, self.last_names = partitioner, names
        results = partitioner.execute(
            data,
            mode,
            workers,
            fail_fast=True,
            progress=self.progress,
            trace=self.trace,
        )
        failed = partitioner.get_failed_units()
        if failed:
            raise next(iter(failed.values()))
        for key in wanted:  # the run was cancelled (last_run.cancel()) before key's task ended
            name = names[key]
            if name not in data and name not in results:
                error = partitioner.units[name].error
                raise error if error is not None else KeyError(key)
        values = {key: data.get(names[key], results.get(names[key])) for key in wanted}
        return _nested_get(keys, values)


def get(
    dsk: Any,
    keys: Any,
    *,
    execution_mode: ExecutionModeArg = ExecutionMode.THREAD,
    max_workers: int | None = None,
    **kwargs: Any,
) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` on a fresh :class:`Scheduler`.

    ``dask.compute(x, scheduler=quantum_partitioner.dask.get)`` runs ``x`` in THREAD mode;
    ``dask.compute(x, scheduler=get, execution_mode="process", max_workers=2)`` elsewhere.
    Arguments and results are those of :meth:`Scheduler.get`; nothing of the run is kept.

    .. versionadded:: 0.1
    """
    return Scheduler().get(
        dsk, keys, execution_mode=execution_mode, max_workers=max_workers, **kwargs
    )


def _task_mode(value: object) -> ExecutionMode:
    """An execution mode Dask tasks can run in: any but CUSTOM, which needs an executor."""
    mode = _check_mode(value)
    if mode is ExecutionMode.CUSTOM:
        raise ValueError("execution_mode CUSTOM needs an executor; use one of the others")
    return mode


def _build(
    graph: Mapping[Key, Any], wanted: list[Key], *, show_functions: bool = False
) -> tuple[QuantumPartitioner[Any, Any], dict[Key, str], dict[str, Any]]:
    """The partitioner of the tasks ``wanted`` needs, the name of each key, and the data.

    Finds the needed keys without recursion (a chain of 10,000 tasks is a normal Dask graph),
    then adds their units in the graph's own order; the partitioner sorts them if that order
    is not topological, and reports a cycle with the units' names.
    """
    needed: set[Key] = set()
    stack = list(wanted)
    while stack:
        key = stack.pop()
        if key in needed:
            continue
        needed.add(key)
        for dep in graph[key].dependencies:
            if dep not in needed:
                if dep not in graph:
                    raise ValueError(f"task {key!r} depends on {dep!r}, which is not in the graph")
                stack.append(dep)
    order = graph if len(needed) == len(graph) else [key for key in graph if key in needed]
    names: dict[Key, str] = {}
    taken: set[str] = set()
    data: dict[str, Any] = {}
    for key in order:
        name = names[key] = _name_for(key, taken)
        node = graph[key]
        if isinstance(node, DataNode):
            data[name] = node()
    partitioner: QuantumPartitioner[Any, Any] = QuantumPartitioner()
    # Units are built here rather than through add_unit: their names are unique, their
    # dependencies distinct names of units and their functions callables by construction,
    # so add_unit's checks would only cost time per task.
    units = partitioner.units
    for key in order:
        name = names[key]
        if name in data:
            continue
        node = graph[key]
        inputs = tuple((dep, names[dep]) for dep in node.dependencies)
        deps = [dep_name for _, dep_name in inputs if dep_name not in data]
        function = _task_unit(node, inputs, show_function=show_functions)
        units[name] = QuantumUnit(name, function, deps)
    return partitioner, names, data


def _name_for(key: Key, taken: set[str]) -> str:
    """A unit name for ``key`` that no other key of the graph has."""
    base = key if isinstance(key, str) and key else str(key) if key != "" else "''"
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}~{n}"
    taken.add(name)
    return name
