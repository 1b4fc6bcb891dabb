"""The ``dask`` section: DaskBackend beside raw ``client.submit`` on the same cluster.

One ``distributed.LocalCluster`` (2 worker processes, 1 thread each, loopback, no dashboard)
is started for the section and shared by every row. Graphs of 500 no-op units: ``layered``
(100 layers of 5, each unit depending on 3 of the layer before) and ``fanout`` (499
independent units and a sink). Every row runs the very same function, ``workloads.noop``
(it ignores its arguments: the project calls it with a context, raw Dask with the
dependencies' results), and every row brings every unit's result back to the caller.

* ``raw client.submit``: each unit submitted once with the futures of its dependencies as
  arguments, all at once, then one ``client.gather``: Dask's own cost, with no scheduling
  semantics on top.
* ``DaskBackend``: ``execute(backend=DaskBackend(client))``, the default (lookahead: a unit
  is handed to Dask as soon as its dependencies have futures).
* ``DaskBackend, lookahead=False``: a unit is submitted only once the client has heard that
  its dependencies completed, a round trip per dependency level.

Target: DaskBackend / raw <= 1.2 on each shape. Dask's per-task cost on a 2-core machine
(scheduler, two workers and the client sharing it) is milliseconds and noisy, so read the
ratio, not the absolute numbers, and rerun before trusting a verdict close to the target.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import Runner, RunnerUnavailableError, RunOnce
from project_runners import project_api
from workloads import noop

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sections import Options
    from shapes import GraphSpec

DASK_UNITS = 500
DASK_TARGET = 1.2
_RUN_IDS = itertools.count()


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A client of a fresh 2-process LocalCluster, closed on exit."""
    try:
        import distributed  # noqa: PLC0415 - optional: the section reports it missing
    except ImportError as exc:
        raise RunnerUnavailableError(f"distributed is not installed: {exc}") from exc
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def raw_submit(client: Any, spec: GraphSpec) -> dict[str, Any]:
    """Submit every unit at once with its dependencies' futures; gather every result."""
    run = next(_RUN_IDS)
    futures: dict[str, Any] = {}
    for name, deps in spec.deps.items():
        inputs = [futures[dep] for dep in deps]
        futures[name] = client.submit(noop, *inputs, key=f"{name}-raw{run}", pure=False)
    return dict(zip(futures, client.gather(list(futures.values())), strict=True))


def prepare_raw(spec: GraphSpec, client: Any) -> RunOnce:
    """Nothing to build: Dask's graph is the submissions themselves."""
    return functools.partial(raw_submit, client, spec)


def prepare_backend(spec: GraphSpec, client: Any, options: dict[str, Any]) -> RunOnce:
    """A partitioner of ``noop`` units, run with ``DaskBackend(client, **options)``."""
    api = project_api()
    if not hasattr(api, "DaskBackend"):
        raise RunnerUnavailableError("this version has no DaskBackend")
    partitioner = api.QuantumPartitioner()
    for name, deps in spec.deps.items():
        partitioner.add_unit(noop, dependencies=deps, name=name)
    return functools.partial(partitioner.execute, {}, backend=api.DaskBackend(client, **options))


@dataclass(frozen=True)
class DaskSection:
    """Start the cluster, then time the rows as a TimingSection with a 1-unit fixed cost."""

    name: str = "dask"
    title: str = "DaskBackend beside raw client.submit, no-op units, 2 worker processes"

    def run(self, options: Options) -> bool:
        """Measure and print; False if the cluster or a measurement failed."""
        try:
            with local_cluster() as client:
                return self.measure(client, options)
        except RunnerUnavailableError as exc:
            print(f"\nMissing measurements: {exc}")
            return False

    def measure(self, client: Any, options: Options) -> bool:
        """Time the three rows on both shapes and print the tables."""
        from sections import Comparison, TimingSection  # noqa: PLC0415 - sections imports us

        raw = Runner("dask-raw", "raw client.submit", functools.partial(prepare_raw, client=client))
        backend = Runner(
            "dask-backend",
            "DaskBackend",
            functools.partial(prepare_backend, client=client, options={}),
        )
        no_lookahead = Runner(
            "dask-backend-no-lookahead",
            "DaskBackend, lookahead=False",
            functools.partial(prepare_backend, client=client, options={"lookahead": False}),
        )
        section = TimingSection(
            name=self.name,
            title=self.title,
            runners=(raw, backend, no_lookahead),
            comparisons=(Comparison(backend, raw, DASK_TARGET), Comparison(no_lookahead, raw)),
            shapes=("layered", "fanout"),
            size=lambda _: DASK_UNITS,
            fixed_cost=True,
        )
        return section.run(options)


DASK_SECTION = DaskSection()
