"""The ``dask`` section: DaskBackend beside raw ``client.submit`` on the same cluster.

One ``distributed.LocalCluster`` (2 worker processes, 1 thread each, loopback, no dashboard)
is started for the section and shared by every row. Graphs of 500 no-op units: ``layered``
(100 layers of 5, each unit depending on 3 of the layer before) and ``fanout`` (500
independent units and a sink). Every row runs the very same function, ``workloads.noop``
(it ignores its arguments: the project calls it with a context, raw Dask with the
dependencies' results), and every row brings every unit's result back to the caller.

* ``raw client.submit``: each unit submitted once with the futures of its dependencies as
  arguments, all at once, then one ``client.gather``: Dask's own cost, with no scheduling
  semantics on top.
* ``DaskBackend``: ``execute(backend=DaskBackend(client))``, the default (lookahead: a unit
  is handed to Dask as soon as its dependencies have futures).
* ``DaskBackend, lookahead=False``: a unit is submitted only once the client has heard that
  its dependencies completed: a round trip through the client per dependency level.

Target: DaskBackend / raw <= 1.2 on each shape. Dask costs milliseconds per task on a
2-core machine (scheduler, two workers and the client share it) and the figures drift by
tens of percent from one run to the next, so the rows are measured in interleaved rounds
(one run of each row per round, in rotating order) and each ratio is the median of the
per-round ratios: drift that lasts longer than a round cancels out. Rerun before trusting a
verdict close to the target.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import report
from harness import Failure, Runner, RunnerUnavailableError, RunOnce, Timing, check_result_count
from project_runners import project_api
from shapes import SHAPES
from workloads import noop

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from sections import Options
    from shapes import GraphSpec

DASK_UNITS = 500
DASK_SHAPES = ("layered", "fanout")
DASK_TARGET = 1.2
MIN_ROUNDS = 7
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
            # Without a dashboard the scheduler still serves HTTP, by default on port 8787.
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
class Rounds:
    """Interleaved samples of several runners on one graph."""

    timings: dict[str, Timing | Failure]
    #: Per round, each runner's wall time (only rounds where every runner succeeded).
    samples: list[dict[str, float]]

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """Median over rounds of numerator time / denominator time."""
        ratios = [
            s[numerator] / s[denominator]
            for s in self.samples
            if numerator in s and s.get(denominator, 0) > 0
        ]
        return statistics.median(ratios) if ratios else None


def interleaved(runners: Sequence[Runner], spec: GraphSpec, rounds: int) -> Rounds:
    """Warm every runner up once, then run each once per round, rotating the order."""
    ready: dict[str, RunOnce] = {}
    failures: dict[str, Failure] = {}
    for runner in runners:
        print(f"  {spec.shape:8} {runner.label:40} warm-up", file=sys.stderr, flush=True)
        try:
            run_once = runner.prepare(spec)
            check_result_count(spec, run_once())
        except RunnerUnavailableError as exc:
            failures[runner.key] = Failure("unavailable", str(exc))
            continue
        except Exception as exc:
            traceback.print_exc()
            failures[runner.key] = Failure("error", f"{type(exc).__name__}: {exc}")
            continue
        ready[runner.key] = run_once
    samples: list[dict[str, float]] = []
    for k in range(rounds):
        keys = list(ready)
        if not keys:
            break
        shift = k % len(keys)
        sample = {}
        for key in keys[shift:] + keys[:shift]:
            gc.collect()
            start = time.perf_counter()
            try:
                check_result_count(spec, ready[key]())
            except Exception as exc:
                traceback.print_exc()
                failures[key] = Failure("error", f"{type(exc).__name__}: {exc}")
                del ready[key]
                continue
            sample[key] = time.perf_counter() - start
        samples.append(sample)
    samples = [s for s in samples if all(key in s for key in ready)]
    timings: dict[str, Timing | Failure] = dict(failures)
    for key in ready:
        timings[key] = Timing(tuple(sample[key] for sample in samples), spec.size)
    return Rounds(timings, samples)


@dataclass(frozen=True)
class DaskSection:
    """Start the cluster, time the rows in interleaved rounds, print times and ratios."""

    name: str = "dask"
    title: str = "DaskBackend beside raw client.submit, no-op units, 2 worker processes"

    def run(self, options: Options) -> bool:
        """Measure and print; False if the cluster or a measurement failed."""
        try:
            with local_cluster() as client:
                return self.measure(client, max(MIN_ROUNDS, options.repeat))
        except RunnerUnavailableError as exc:
            print(f"\nMissing measurements: {exc}")
            return False

    def measure(self, client: Any, rounds: int) -> bool:
        """Time the three rows on each shape and print the tables."""
        raw = Runner("raw", "raw client.submit", functools.partial(prepare_raw, client=client))
        backend = Runner(
            "backend", "DaskBackend", functools.partial(prepare_backend, client=client, options={})
        )
        no_lookahead = Runner(
            "no-lookahead",
            "DaskBackend, lookahead=False",
            functools.partial(prepare_backend, client=client, options={"lookahead": False}),
        )
        runners = (raw, backend, no_lookahead)
        measured = {
            shape: interleaved(runners, SHAPES[shape](DASK_UNITS), rounds) for shape in DASK_SHAPES
        }

        print(f"\n{self.title}: µs per unit, median of {rounds} interleaved rounds after 1 warm-up")
        print("(±: (slowest - fastest) / median; lower is better)\n")
        header = ["runner", *(f"{s} ({SHAPES[s](DASK_UNITS).size} units)" for s in DASK_SHAPES)]
        rows = [
            [r.label, *(report.format_timing(measured[s].timings[r.key]) for s in DASK_SHAPES)]
            for r in runners
        ]
        print(report.format_table(header, rows))

        print(
            "\nRatios: median over rounds of the ratio within a round (targets are informational)\n"
        )
        comparisons = ((backend, DASK_TARGET), (no_lookahead, None))
        header = ["ratio", "target", *DASK_SHAPES]
        rows = [
            [
                f"{r.label} / {raw.label}",
                report.format_target(target),
                *(
                    report.format_ratio(measured[s].ratio(r.key, raw.key), target)
                    for s in DASK_SHAPES
                ),
            ]
            for r, target in comparisons
        ]
        print(report.format_table(header, rows))
        failures = {
            f"{key} on {shape}": timing
            for shape, rounds_of in measured.items()
            for key, timing in rounds_of.timings.items()
            if isinstance(timing, Failure)
        }
        if failures:
            print("\nMissing measurements:")
            print("\n".join(report.format_failure_notes(failures)))
        return not failures


DASK_SECTION = DaskSection()
