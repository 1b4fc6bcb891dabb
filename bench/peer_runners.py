"""Peers the project is compared with: dask's local schedulers and hand-rolled loops.

Each peer executes the same :class:`~shapes.GraphSpec` and returns the result of every
unit, as the project's ``execute()`` does. Units are no-ops unless a
:class:`~workloads.Workload` says otherwise.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from graphlib import TopologicalSorter
from typing import TYPE_CHECKING, Any

import dask.local
import dask.multiprocessing
import dask.threaded
from harness import Runner, RunOnce
from workloads import ASYNC_RETURN_NONE, ASYNC_SLEEP_ZERO, Workload

if TYPE_CHECKING:
    from collections.abc import Callable

    from shapes import GraphSpec

PEER_WORKERS = 4
MULTIPROCESSING_WORKERS = 2


def noop_task(*dependency_results: Any) -> None:
    """A unit that does nothing; receives its dependencies' results as arguments."""


def dask_graph(spec: GraphSpec, workload: Workload | None = None) -> dict[str, tuple[Any, ...]]:
    """The spec as a dask graph: ``name -> (function, *dependency_names)``."""
    if workload is None:
        return {name: (noop_task, *deps) for name, deps in spec.deps.items()}
    return {name: (workload.function_for(deps), *deps) for name, deps in spec.deps.items()}


def prepare_dask_sync(spec: GraphSpec) -> RunOnce:
    """``dask.get`` (the synchronous scheduler), asked for every key."""
    graph = dask_graph(spec)
    return functools.partial(dask.local.get_sync, graph, list(graph))


def prepare_dask_threaded(spec: GraphSpec) -> RunOnce:
    """``dask.threaded.get`` with 4 workers, asked for every key."""
    graph = dask_graph(spec)
    return functools.partial(dask.threaded.get, graph, list(graph), num_workers=PEER_WORKERS)


def prepare_dask_multiprocessing(
    spec: GraphSpec,
    workers: int = MULTIPROCESSING_WORKERS,
    workload: Workload | None = None,
    chunksize: int | None = None,
) -> RunOnce:
    """``dask.multiprocessing.get``: a fresh pool of ``workers`` processes per call.

    ``chunksize`` None keeps dask's default (6 ready tasks sent to a worker at a time).
    """
    graph = dask_graph(spec, workload)
    return functools.partial(
        dask.multiprocessing.get, graph, list(graph), num_workers=workers, chunksize=chunksize
    )


def dask_multiprocessing_runner(
    workers: int = MULTIPROCESSING_WORKERS,
    workload: Workload | None = None,
    chunksize: int | None = None,
) -> Runner:
    """A runner for ``dask.multiprocessing.get(num_workers=workers, chunksize=chunksize)``."""
    prepare = functools.partial(
        prepare_dask_multiprocessing, workers=workers, workload=workload, chunksize=chunksize
    )
    key, label = f"dask-mp/{workers}", f"dask.multiprocessing.get ({workers}"
    if chunksize is not None:
        key, label = f"{key}/chunk{chunksize}", f"{label}, chunksize={chunksize}"
    return Runner(key, f"{label})", prepare)


def run_graphlib_loop(deps: dict[str, list[str]], max_workers: int) -> dict[str, Any]:
    """The loop people write by hand: get_ready() -> submit -> wait(FIRST_COMPLETED) -> done()."""
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    results: dict[str, Any] = {}
    pending: dict[Future[Any], str] = {}
    with ThreadPoolExecutor(max_workers) as pool:
        while sorter.is_active():
            for name in sorter.get_ready():
                args = [results[dep] for dep in deps[name]]
                pending[pool.submit(noop_task, *args)] = name
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                results[name] = future.result()
                sorter.done(name)
    return results


def prepare_graphlib_loop(spec: GraphSpec) -> RunOnce:
    """``graphlib.TopologicalSorter`` driving a ``ThreadPoolExecutor(4)``."""
    return functools.partial(run_graphlib_loop, spec.deps, PEER_WORKERS)


async def await_deps_then_run(
    function: Callable[..., Any], dep_tasks: list[asyncio.Task[Any]], gather_deps: bool
) -> Any:
    """One unit of the hand-rolled dataflow: wait for its dependencies, then run it."""
    if gather_deps:
        results = await asyncio.gather(*dep_tasks)
    else:
        results = [await task for task in dep_tasks]
    return await function(*results)


async def run_task_dataflow(
    deps: dict[str, list[str]], workload: Workload, gather_deps: bool
) -> dict[str, Any]:
    """The asyncio dataflow people write by hand: one task per unit, each awaiting its
    dependencies' tasks then running; ``asyncio.gather`` over all of them.

    ``deps`` is in topological order, so every dependency's task exists before its user's.
    """
    tasks: dict[str, asyncio.Task[Any]] = {}
    for name, names in deps.items():
        dep_tasks = [tasks[dep] for dep in names]
        function = workload.function_for(names)
        tasks[name] = asyncio.create_task(await_deps_then_run(function, dep_tasks, gather_deps))
    results = await asyncio.gather(*tasks.values())
    return dict(zip(tasks, results, strict=True))


def run_task_dataflow_sync(
    deps: dict[str, list[str]], workload: Workload, gather_deps: bool
) -> dict[str, Any]:
    """One whole run under its own ``asyncio.run``, as the project's ``execute`` does."""
    return asyncio.run(run_task_dataflow(deps, workload, gather_deps))


def prepare_task_dataflow(spec: GraphSpec, workload: Workload, gather_deps: bool) -> RunOnce:
    """The hand-rolled asyncio dataflow over ``spec``."""
    return functools.partial(run_task_dataflow_sync, spec.deps, workload, gather_deps)


def task_dataflow_runner(workload: Workload, tag: str, gather_deps: bool) -> Runner:
    """A runner for the hand-rolled asyncio dataflow; ``tag`` names the workload."""
    how = "gather deps" if gather_deps else "await deps"
    prepare = functools.partial(prepare_task_dataflow, workload=workload, gather_deps=gather_deps)
    return Runner(f"tasks/{how}[{tag}]", f"asyncio tasks, {how} [{tag}]", prepare)


DASK_SYNC = Runner("dask-sync", "dask.get (sync)", prepare_dask_sync)
DASK_THREADED = Runner(
    "dask-threaded", f"dask.threaded.get ({PEER_WORKERS})", prepare_dask_threaded
)
GRAPHLIB_LOOP = Runner("graphlib", f"graphlib + ThreadPool ({PEER_WORKERS})", prepare_graphlib_loop)
DASK_MULTIPROCESSING = dask_multiprocessing_runner()

TASKS_AWAIT_RETURN = task_dataflow_runner(ASYNC_RETURN_NONE, "return None", gather_deps=False)
TASKS_AWAIT_SLEEP = task_dataflow_runner(ASYNC_SLEEP_ZERO, "sleep(0)", gather_deps=False)
TASKS_GATHER_RETURN = task_dataflow_runner(ASYNC_RETURN_NONE, "return None", gather_deps=True)
TASKS_GATHER_SLEEP = task_dataflow_runner(ASYNC_SLEEP_ZERO, "sleep(0)", gather_deps=True)
