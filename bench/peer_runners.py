"""Peers the project is compared with: dask's local schedulers and a hand-rolled loop.

Each peer executes the same :class:`~shapes.GraphSpec` and returns the result of every
unit, as the project's ``execute()`` does.
"""

from __future__ import annotations

import functools
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from graphlib import TopologicalSorter
from typing import TYPE_CHECKING, Any

import dask.local
import dask.threaded
from harness import Runner, RunOnce

if TYPE_CHECKING:
    from shapes import GraphSpec

PEER_WORKERS = 4


def noop_task(*dependency_results: Any) -> None:
    """A unit that does nothing; receives its dependencies' results as arguments."""


def dask_graph(spec: GraphSpec) -> dict[str, tuple[Any, ...]]:
    """The spec as a dask graph: ``name -> (function, *dependency_names)``."""
    return {name: (noop_task, *deps) for name, deps in spec.deps.items()}


def prepare_dask_sync(spec: GraphSpec) -> RunOnce:
    """``dask.get`` (the synchronous scheduler), asked for every key."""
    graph = dask_graph(spec)
    return functools.partial(dask.local.get_sync, graph, list(graph))


def prepare_dask_threaded(spec: GraphSpec) -> RunOnce:
    """``dask.threaded.get`` with 4 workers, asked for every key."""
    graph = dask_graph(spec)
    return functools.partial(dask.threaded.get, graph, list(graph), num_workers=PEER_WORKERS)


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


DASK_SYNC = Runner("dask-sync", "dask.get (sync)", prepare_dask_sync)
DASK_THREADED = Runner(
    "dask-threaded", f"dask.threaded.get ({PEER_WORKERS})", prepare_dask_threaded
)
GRAPHLIB_LOOP = Runner("graphlib", f"graphlib + ThreadPool ({PEER_WORKERS})", prepare_graphlib_loop)
