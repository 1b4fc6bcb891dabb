"""Runners and the two measurements taken of them: wall time and traced peak memory.

A :class:`Runner` turns a :class:`~shapes.GraphSpec` into a zero-argument callable that
executes the whole graph once and returns the results of every unit. ``prepare`` does all
the graph construction, so only the callable is timed; the memory measurement covers both.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapes import GraphSpec

RunOnce = Callable[[], Sized]


class RunnerUnavailableError(Exception):
    """The runner cannot run in this environment (e.g. its library is not importable)."""


class ResultCountError(Exception):
    """A runner returned fewer or more results than the graph has units."""


@dataclass(frozen=True)
class Runner:
    """One way of executing a graph, e.g. the project in THREAD mode or ``dask.threaded.get``.

    ``key`` is what comparisons and the command line refer to; ``label`` is what the tables
    print.
    """

    key: str
    label: str
    prepare: Callable[[GraphSpec], RunOnce]


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one runner on one graph (warm-up excluded)."""

    samples: tuple[float, ...]
    units: int

    @property
    def median(self) -> float:
        """Median wall time of a whole run, in seconds."""
        return statistics.median(self.samples)

    @property
    def us_per_unit(self) -> float:
        """Median wall time divided by the number of units, in microseconds."""
        return self.median / self.units * 1e6

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median: how noisy the samples were."""
        return (max(self.samples) - min(self.samples)) / self.median


@dataclass(frozen=True)
class MemoryPeak:
    """Traced allocations of building and executing one graph, relative to a baseline."""

    retained_after_build: int
    peak: int
    units: int

    @property
    def peak_per_unit(self) -> float:
        """Peak bytes divided by the number of units."""
        return self.peak / self.units

    @property
    def built_per_unit(self) -> float:
        """Bytes still held once the graph is built, divided by the number of units."""
        return self.retained_after_build / self.units


@dataclass(frozen=True)
class Failure:
    """Why a measurement is missing: ``unavailable`` (skipped) or ``error`` (crashed)."""

    kind: str
    message: str


class ResultValueError(Exception):
    """A runner returned a wrong value for a unit."""


def check_result_count(spec: GraphSpec, results: Sized) -> None:
    """Fail unless the run returned one result per unit, so every runner does the same work."""
    if len(results) != spec.size:
        raise ResultCountError(f"returned {len(results)} results for {spec.size} units")


def results_by_name(spec: GraphSpec, results: Sized) -> Mapping[str, Any]:
    """A run's results by unit name: the project returns a dict, dask a tuple in key order."""
    if isinstance(results, Mapping):
        return results
    return dict(zip(spec.deps, results, strict=True))


def check_results(spec: GraphSpec, results: Sized, expected: Mapping[str, Any]) -> None:
    """Fail unless every unit named in ``expected`` returned the expected value."""
    check_result_count(spec, results)
    by_name = results_by_name(spec, results)
    wrong = [name for name, value in expected.items() if by_name.get(name) != value]
    if wrong:
        shown = ", ".join(f"{name}={by_name.get(name)!r}" for name in wrong[:3])
        raise ResultValueError(f"{len(wrong)} of {len(expected)} results are wrong: {shown}")


def run_and_check(spec: GraphSpec, run_once: RunOnce, expected: Mapping[str, Any]) -> Sized:
    """Run once and check the results' values (used by :func:`checking_values`)."""
    results = run_once()
    check_results(spec, results, expected)
    return results


def checking_values(runner: Runner, expected: Mapping[str, Any]) -> Runner:
    """The same runner, but every run also checks the values of the units in ``expected``.

    The check is a few dict look-ups per checked unit, negligible beside units that do real
    work (the cpu section); the no-op sections check only the number of results.
    """

    def prepare(spec: GraphSpec) -> RunOnce:
        return functools.partial(run_and_check, spec, runner.prepare(spec), expected)

    return Runner(runner.key, runner.label, prepare)


def time_runner(runner: Runner, spec: GraphSpec, repeat: int) -> Timing:
    """Run once to warm up (and check the results), then time ``repeat`` runs.

    The garbage collector stays enabled (collecting the objects a run creates is part of
    its cost) but is emptied before each sample so that one run does not pay for another.
    """
    run_once = runner.prepare(spec)
    check_result_count(spec, run_once())
    samples = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        results = run_once()
        samples.append(time.perf_counter() - start)
        del results
    return Timing(tuple(samples), spec.size)


def measure_peak(runner: Runner, spec: GraphSpec) -> MemoryPeak:
    """Trace the allocations of building and executing the graph once.

    ``spec`` (the unit names and dependency tuples, the same input for every runner) is
    built before tracing starts and so is not counted; the one shared no-op function is
    created at import time. What remains is the runner's own cost, including the results
    it returns.
    """
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run_once = runner.prepare(spec)
        after_build, _ = tracemalloc.get_traced_memory()
        results = run_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_result_count(spec, results)
    return MemoryPeak(after_build - baseline, peak - baseline, spec.size)
