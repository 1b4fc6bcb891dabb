"""The ``cache`` section: what CachingQuantumPartitioner adds per unit, hit or miss.

Graphs of 2,000 no-op units (``fanout``: 2,000 independent units and a sink depending on all
of them; ``chain``: 2,000 in a row), every unit cacheable, run in SEQUENTIAL mode so that the
cache's own cost is not hidden behind thread hand-offs. Rows:

* ``plain``: ``QuantumPartitioner``, no cache (the baseline);
* ``memory hit`` / ``SQLite hit``: every unit served from a warm store;
* ``memory miss`` / ``SQLite miss``: a cold store, so every unit is looked up, runs, and is
  stored (the store is emptied before each sample, outside the timing);
* ``SQLite hit, THREAD (4)``: hits from four threads sharing one connection.

The "added" columns are (run - plain run) / units: what a hit or a miss costs per unit on top
of executing it. Target: a SQLite hit adds well under 1 ms (the verdict line says PASS under
1,000 µs). Building the graph is timed separately: fingerprinting a function in ``add_unit``
is a one-off cost per unit.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import report
from harness import Failure, RunnerUnavailableError, Timing, check_result_count
from project_runners import noop_unit, project_api
from shapes import SHAPES, GraphSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Sized

    from sections import Options

CACHE_UNITS = 2_000
CACHE_SHAPES = ("fanout", "chain")
SQLITE_HIT_TARGET_US = 1_000.0
CACHEABLE = {"cacheable": True}


@dataclass(frozen=True)
class CacheRow:
    """One way of running the graph: ``prepare(spec, directory) -> (run_once, reset)``."""

    key: str
    label: str
    prepare: Callable[[GraphSpec, Path], tuple[Callable[[], Sized], Callable[[], None]]]


def build(spec: GraphSpec, directory: Path, store: str | None) -> Any:
    """A partitioner with one no-op unit per spec entry: plain, or caching on ``store``."""
    try:
        api = project_api()
    except ImportError as exc:
        raise RunnerUnavailableError(f"quantum_partitioner is not importable: {exc}") from exc
    if store is None:
        partitioner = api.QuantumPartitioner()
        metadata = None
    else:
        path = directory / f"{spec.shape}-{time.monotonic_ns()}.sqlite"
        partitioner = api.CachingQuantumPartitioner(cache_path=path if store == "sqlite" else None)
        metadata = CACHEABLE
    for name, deps in spec.deps.items():
        partitioner.add_unit(noop_unit, dependencies=deps, name=name, metadata=metadata)
    return partitioner


def nothing() -> None:
    """No reset between samples."""


def row(key: str, label: str, store: str | None, *, cold: bool = False, mode: str = "SEQUENTIAL"):
    """A row running ``execute()`` in ``mode``; ``cold`` empties the store before each run."""

    def prepare(spec: GraphSpec, directory: Path):
        partitioner = build(spec, directory, store)
        execution_mode = project_api().ExecutionMode[mode]

        def run_once() -> Sized:
            return partitioner.execute({}, execution_mode=execution_mode, max_workers=4)

        return run_once, (partitioner.clear_cache if cold else nothing)

    return CacheRow(key, label, prepare)


PLAIN = row("plain", "plain (QuantumPartitioner, no cache)", None)
ROWS = (
    PLAIN,
    row("memory-hit", "memory hit", "memory"),
    row("sqlite-hit", "SQLite hit", "sqlite"),
    row("memory-miss", "memory miss (lookup + run + store)", "memory", cold=True),
    row("sqlite-miss", "SQLite miss (lookup + run + store)", "sqlite", cold=True),
    row("sqlite-hit-thread", "SQLite hit, THREAD (4)", "sqlite", mode="THREAD"),
)


def time_row(cache_row: CacheRow, spec: GraphSpec, directory: Path, repeat: int) -> Timing:
    """Warm up once (filling the store), then time ``repeat`` runs, resetting before each."""
    run_once, reset = cache_row.prepare(spec, directory)
    check_result_count(spec, run_once())
    samples = []
    for _ in range(repeat):
        reset()
        gc.collect()
        start = time.perf_counter()
        results = run_once()
        samples.append(time.perf_counter() - start)
        del results
    return Timing(tuple(samples), spec.size)


def measure(cache_row: CacheRow, spec: GraphSpec, directory: Path, repeat: int):
    """One row on one graph; a crash or a missing library becomes a Failure."""
    print(f"  {spec.shape:8} {cache_row.label:40} ", end="", file=sys.stderr, flush=True)
    try:
        outcome: Timing | Failure = time_row(cache_row, spec, directory, repeat)
    except RunnerUnavailableError as exc:
        outcome = Failure("unavailable", str(exc))
    except Exception as exc:
        print(file=sys.stderr)
        traceback.print_exc()
        outcome = Failure("error", f"{type(exc).__name__}: {exc}")
    summary = outcome.kind if isinstance(outcome, Failure) else f"{outcome.us_per_unit:.2f} us/unit"
    print(summary, file=sys.stderr, flush=True)
    return outcome


def added_us(outcome: Timing | Failure, plain: Timing | Failure) -> float | None:
    """(run - plain run) / units, in µs, or None if either is missing."""
    if not isinstance(outcome, Timing) or not isinstance(plain, Timing):
        return None
    return (outcome.median - plain.median) / outcome.units * 1e6


def build_us(spec: GraphSpec, directory: Path, store: str | None, repeat: int) -> float:
    """Median µs per unit of building the graph (add_unit, fingerprinting included)."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        partitioner = build(spec, directory, store)
        samples.append(time.perf_counter() - start)
        if store is not None:
            partitioner.close()
    samples.sort()
    return samples[len(samples) // 2] / spec.size * 1e6


@dataclass(frozen=True)
class CacheSection:
    """Per-unit cost of cache hits and misses against a plain run (see the module docstring)."""

    name: str = "cache"
    title: str = "CachingQuantumPartitioner, 2,000 cacheable no-op units, SEQUENTIAL"

    def run(self, options: Options) -> bool:
        """Time every row on every shape, print the table and the verdict."""
        timings: dict[tuple[str, str], Timing | Failure] = {}
        sizes: dict[str, int] = {}
        with tempfile.TemporaryDirectory(prefix="qp-bench-cache-") as tmp:
            directory = Path(tmp)
            for shape in CACHE_SHAPES:
                spec = SHAPES[shape](CACHE_UNITS)
                sizes[shape] = spec.size
                for cache_row in ROWS:
                    timings[cache_row.key, shape] = measure(
                        cache_row, spec, directory, options.repeat
                    )
            spec = SHAPES["fanout"](CACHE_UNITS)
            try:
                builds = (
                    build_us(spec, directory, None, 3),
                    build_us(spec, directory, "memory", 3),
                )
            except Exception:
                traceback.print_exc()
                builds = None
        self.print_table(timings, sizes, options.repeat)
        if builds is not None:
            print(
                f"\nBuilding the graph (add_unit): plain {report.format_us(builds[0])} µs/unit, "
                f"cacheable {report.format_us(builds[1])} µs/unit (the function fingerprint)."
            )
        return self.print_verdict(timings)

    @staticmethod
    def print_table(
        timings: dict[tuple[str, str], Timing | Failure], sizes: dict[str, int], repeat: int
    ) -> None:
        """µs per unit and µs added per unit over the plain run, per shape."""
        print(f"\nCache cost: µs per unit, median of {repeat} after 1 warm-up run")
        print("(added: (run - plain run) / units; ±: (slowest - fastest) / median)\n")
        header = ["row"]
        for shape in CACHE_SHAPES:
            header += [f"{shape} ({sizes[shape]:,})", f"{shape} added"]
        rows = []
        for cache_row in ROWS:
            cells = [cache_row.label]
            for shape in CACHE_SHAPES:
                outcome = timings[cache_row.key, shape]
                cells.append(report.format_timing(outcome))
                added = added_us(outcome, timings[PLAIN.key, shape])
                cells.append("" if cache_row is PLAIN else report.format_optional_us(added))
            rows.append(cells)
        print(report.format_table(header, rows))

    @staticmethod
    def print_verdict(timings: dict[tuple[str, str], Timing | Failure]) -> bool:
        """The SQLite hit against its target; False if any measurement failed."""
        worst = [
            added_us(timings["sqlite-hit", shape], timings[PLAIN.key, shape])
            for shape in CACHE_SHAPES
        ]
        known = [value for value in worst if value is not None]
        if known:
            cost = max(known)
            verdict = "PASS" if cost < SQLITE_HIT_TARGET_US else "MISS"
            print(
                f"\nA SQLite hit adds {report.format_us(cost)} µs per unit at most "
                f"(target < {SQLITE_HIT_TARGET_US:,.0f} µs): {verdict}"
            )
        failures = {
            f"{key} on {shape}": outcome
            for (key, shape), outcome in timings.items()
            if isinstance(outcome, Failure)
        }
        if failures:
            print("\nMissing measurements:")
            print("\n".join(report.format_failure_notes(failures)))
        return not failures


CACHE_SECTION = CacheSection()
