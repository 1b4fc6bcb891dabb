"""The benchmark's sections and the registries that say what each one measures.

To add rows, append a :class:`~harness.Runner` to a section's ``runners`` (and a
:class:`Comparison` if it has a peer); to add a measurement (PROCESS beside
``dask.multiprocessing.get``, ASYNC beside ``asyncio.gather``, cache hits, ...), add a
section to :data:`SECTIONS`. A section is anything with ``name``, ``title`` and
``run(options) -> bool``.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import report
from harness import (
    Failure,
    MemoryPeak,
    Runner,
    RunnerUnavailableError,
    Timing,
    measure_peak,
    time_runner,
)
from peer_runners import DASK_SYNC, DASK_THREADED, GRAPHLIB_LOOP
from project_runners import SEQUENTIAL, SEQUENTIAL_CALLBACKS, THREAD, THREAD_CALLBACKS
from shapes import SHAPES, GraphSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    n: int
    repeat: int
    memory_n: int


class Section(Protocol):
    """One part of the report; ``run`` prints it and says whether every measurement worked."""

    @property
    def name(self) -> str:
        """What ``--only`` calls the section."""
        ...

    @property
    def title(self) -> str:
        """The heading of the section's tables."""
        ...

    def run(self, options: Options) -> bool:
        """Measure, print the tables and return False if any measurement failed."""
        ...


@dataclass(frozen=True)
class Comparison:
    """A ratio of two runners' times on the same graph, with an optional target."""

    numerator: Runner
    denominator: Runner
    target: float | None = None

    @property
    def label(self) -> str:
        """How the ratio is named in the table."""
        return f"{self.numerator.label} / {self.denominator.label}"


@dataclass(frozen=True)
class MemoryCheck:
    """A runner whose peak memory is measured, with an optional bytes-per-unit target."""

    runner: Runner
    shape: str
    target_bytes_per_unit: float | None = None


def progress_start(shape: str, label: str) -> None:
    """Say what is being measured; progress goes to stderr so stdout holds only the report."""
    print(f"  {shape:8} {label:32} ", end="", file=sys.stderr, flush=True)


def progress_end(outcome: Timing | MemoryPeak | Failure) -> None:
    """Finish the progress line with the measurement's one-word summary."""
    print(describe(outcome), file=sys.stderr, flush=True)


def attempt(measure: Callable[[], T]) -> T | Failure:
    """Run one measurement; a runner that is unavailable or crashes becomes a Failure."""
    try:
        return measure()
    except RunnerUnavailableError as exc:
        return Failure("unavailable", str(exc))
    except Exception as exc:
        print(file=sys.stderr)
        traceback.print_exc()
        return Failure("error", f"{type(exc).__name__}: {exc}")


def describe(outcome: Timing | MemoryPeak | Failure) -> str:
    """One-word progress summary of a measurement."""
    if isinstance(outcome, Failure):
        return outcome.kind
    if isinstance(outcome, Timing):
        return f"{report.format_us(outcome.us_per_unit)} us/unit"
    return f"{outcome.peak_per_unit:,.0f} B/unit peak"


def failures_of(outcomes: dict[str, object]) -> dict[str, Failure]:
    """The failed measurements, keyed by where they happened."""
    return {where: out for where, out in outcomes.items() if isinstance(out, Failure)}


def print_failures(failures: dict[str, Failure]) -> None:
    """List missing measurements under a table."""
    if failures:
        print("\nMissing measurements:")
        print("\n".join(report.format_failure_notes(failures)))


@dataclass(frozen=True)
class TimingSection:
    """Median wall time per unit of each runner on each shape, then ratios to the peers."""

    name: str
    title: str
    runners: Sequence[Runner]
    comparisons: Sequence[Comparison]
    shapes: Sequence[str] = tuple(SHAPES)

    def run(self, options: Options) -> bool:
        """Time every runner on every shape and print both tables."""
        timings: dict[tuple[str, str], Timing | Failure] = {}
        units: dict[str, int] = {}
        for shape in self.shapes:
            spec = SHAPES[shape](options.n)
            units[shape] = spec.size
            for runner in self.runners:
                timings[runner.key, shape] = self.measure(runner, spec, options.repeat)
        self.print_timings(timings, units, options.repeat)
        self.print_ratios(timings)
        failures = failures_of({f"{k} on {s}": out for (k, s), out in timings.items()})
        print_failures(failures)
        return not failures

    @staticmethod
    def measure(runner: Runner, spec: GraphSpec, repeat: int) -> Timing | Failure:
        """Time one runner on one graph, reporting progress."""
        progress_start(spec.shape, runner.label)
        outcome = attempt(lambda: time_runner(runner, spec, repeat))
        progress_end(outcome)
        return outcome

    def print_timings(
        self, timings: dict[tuple[str, str], Timing | Failure], units: dict[str, int], repeat: int
    ) -> None:
        """Table of µs per unit: one row per runner, one column per shape."""
        print(f"\n{self.title}: µs per unit, median of {repeat} after 1 warm-up")
        print("(±: (slowest - fastest) / median; lower is better)\n")
        header = ["runner", *(f"{shape} ({units[shape]:,} units)" for shape in self.shapes)]
        rows = [
            [runner.label, *(report.format_timing(timings[runner.key, s]) for s in self.shapes)]
            for runner in self.runners
        ]
        print(report.format_table(header, rows))

    def print_ratios(self, timings: dict[tuple[str, str], Timing | Failure]) -> None:
        """Table of time ratios, with PASS/MISS where a target is set (informational)."""
        if not self.comparisons:
            return
        print("\nRatios of median times (lower is better; targets are informational)\n")
        header = ["ratio", "target", *self.shapes]
        rows = [
            [
                comparison.label,
                report.format_target(comparison.target),
                *(
                    report.format_ratio(ratio_of(comparison, timings, s), comparison.target)
                    for s in self.shapes
                ),
            ]
            for comparison in self.comparisons
        ]
        print(report.format_table(header, rows))


def ratio_of(
    comparison: Comparison, timings: dict[tuple[str, str], Timing | Failure], shape: str
) -> float | None:
    """Numerator time / denominator time on one shape, or None if either is missing."""
    numerator = timings.get((comparison.numerator.key, shape))
    denominator = timings.get((comparison.denominator.key, shape))
    if not isinstance(numerator, Timing) or not isinstance(denominator, Timing):
        return None
    return numerator.median / denominator.median


@dataclass(frozen=True)
class MemorySection:
    """Traced peak memory of building and executing one large graph, per unit."""

    name: str
    title: str
    checks: Sequence[MemoryCheck]
    note: str = ""

    def run(self, options: Options) -> bool:
        """Measure every check on its graph of ``options.memory_n`` units; print the table."""
        specs = {shape: SHAPES[shape](options.memory_n) for shape in self.shapes()}
        peaks = [self.measure(check.runner, specs[check.shape]) for check in self.checks]
        sizes = ", ".join(f"{shape} {spec.size:,}" for shape, spec in specs.items())
        print(f"\n{self.title}: units built and executed once ({sizes})")
        print("(tracemalloc; bytes held after build and at the peak, minus a baseline)\n")
        header = ["runner", "shape", "target", "built/unit", "peak/unit", "peak total", "verdict"]
        rows = [
            report.format_memory_row(
                check.runner.label, check.shape, peak, check.target_bytes_per_unit
            )
            for check, peak in zip(self.checks, peaks, strict=True)
        ]
        print(report.format_table(header, rows))
        if self.note:
            print(f"\n{self.note}")
        failures = failures_of(
            {f"{c.runner.key} on {c.shape}": p for c, p in zip(self.checks, peaks, strict=True)}
        )
        print_failures(failures)
        return not failures

    def shapes(self) -> list[str]:
        """The shapes the checks need, each once, in order of first use."""
        return list(dict.fromkeys(check.shape for check in self.checks))

    @staticmethod
    def measure(runner: Runner, spec: GraphSpec) -> MemoryPeak | Failure:
        """Measure one runner's peak, reporting progress."""
        progress_start(spec.shape, runner.label)
        outcome = attempt(lambda: measure_peak(runner, spec))
        progress_end(outcome)
        return outcome


THREAD_VS_DASK_TARGET = 0.15
SEQUENTIAL_VS_DASK_TARGET = 0.2
MEMORY_TARGET_BYTES_PER_UNIT = 1024

TIME_SECTION = TimingSection(
    name="time",
    title="Per-unit wall time, no-op units",
    runners=(
        SEQUENTIAL,
        SEQUENTIAL_CALLBACKS,
        THREAD,
        THREAD_CALLBACKS,
        DASK_SYNC,
        DASK_THREADED,
        GRAPHLIB_LOOP,
    ),
    comparisons=(
        Comparison(THREAD, DASK_THREADED, THREAD_VS_DASK_TARGET),
        Comparison(SEQUENTIAL, DASK_SYNC, SEQUENTIAL_VS_DASK_TARGET),
        Comparison(THREAD, GRAPHLIB_LOOP),
        Comparison(THREAD_CALLBACKS, DASK_THREADED),
        Comparison(SEQUENTIAL_CALLBACKS, DASK_SYNC),
        Comparison(THREAD_CALLBACKS, THREAD),
        Comparison(SEQUENTIAL_CALLBACKS, SEQUENTIAL),
        Comparison(THREAD, SEQUENTIAL),
    ),
)

MEMORY_SECTION = MemorySection(
    name="memory",
    title="Peak memory, SEQUENTIAL",
    checks=(
        MemoryCheck(SEQUENTIAL, "fanout", MEMORY_TARGET_BYTES_PER_UNIT),
        MemoryCheck(SEQUENTIAL, "layered", MEMORY_TARGET_BYTES_PER_UNIT),
        MemoryCheck(DASK_SYNC, "fanout"),
    ),
    note=(
        "dask.get is for reference on fanout only: on layered its memory grows with the\n"
        "square of the graph (about 27 KB per unit at 20,000 units), too much at 100,000."
    ),
)

SECTIONS: dict[str, Section] = {section.name: section for section in (TIME_SECTION, MEMORY_SECTION)}
