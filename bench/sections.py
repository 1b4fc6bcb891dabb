"""The benchmark's sections and the registries that say what each one measures.

To add rows, append a :class:`~harness.Runner` to a section's ``runners`` (and a
:class:`Comparison` if it has a peer); to add a measurement (cache hits, ...), add a
section to :data:`SECTIONS`. A section is anything with ``name``, ``title`` and
``run(options) -> bool``. A :class:`TimingSection` picks its graph size from the options
(``size``) and can also time a 1-unit graph to show a fixed per-run cost (``fixed_cost``);
:class:`CpuSection` times units that do real work and reports speed-ups.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import report
from cache_section import CACHE_SECTION
from dask_collections_section import DASK_COLLECTIONS_SECTION
from dask_section import DASK_SECTION
from harness import (
    Failure,
    MemoryPeak,
    Runner,
    RunnerUnavailableError,
    Timing,
    checking_values,
    measure_peak,
    time_runner,
)
from limits_section import LIMITS_SECTION
from maps_section import MAPS_SECTION
from peer_runners import (
    DASK_MULTIPROCESSING,
    DASK_SYNC,
    DASK_THREADED,
    GRAPHLIB_LOOP,
    TASKS_AWAIT_RETURN,
    TASKS_AWAIT_SLEEP,
    TASKS_GATHER_RETURN,
    TASKS_GATHER_SLEEP,
    dask_multiprocessing_runner,
)
from project_runners import (
    ASYNC_RETURN,
    ASYNC_SLEEP,
    PROCESS,
    PROCESS_WORKERS,
    SEQUENTIAL,
    SEQUENTIAL_CALLBACKS,
    SEQUENTIAL_PROGRESS,
    SEQUENTIAL_PROGRESS_DRAWN,
    THREAD,
    THREAD_CALLBACKS,
    THREAD_PROGRESS,
    THREAD_PROGRESS_DRAWN,
    project_runner,
    reused_process_runner,
)
from shapes import SHAPES, GraphSpec, fanout, single_unit
from unit_cost_section import UNIT_COST_SECTION
from workloads import Calibration, Workload, burn, calibrate_burn, noop

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    n: int
    repeat: int
    memory_n: int
    process_n: int
    cpu_units: int
    cpu_ms: float


def standard_size(options: Options) -> int:
    """The graph size of the no-op sections: ``--n``."""
    return options.n


def process_size(options: Options) -> int:
    """The graph size of the process section: ``--process-n``."""
    return options.process_n


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
    print(f"  {shape:8} {label:40} ", end="", file=sys.stderr, flush=True)


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
    """Median wall time per unit of each runner on each shape, then ratios to the peers.

    With ``fixed_cost``, each runner is also timed on a 1-unit graph, and a third table
    shows that fixed cost per run and the per-unit cost net of it.
    """

    name: str
    title: str
    runners: Sequence[Runner]
    comparisons: Sequence[Comparison]
    shapes: Sequence[str] = tuple(SHAPES)
    size: Callable[[Options], int] = standard_size
    fixed_cost: bool = False

    def run(self, options: Options) -> bool:
        """Time every runner on every shape and print the tables."""
        timings: dict[tuple[str, str], Timing | Failure] = {}
        units: dict[str, int] = {}
        for shape in self.shapes:
            spec = SHAPES[shape](self.size(options))
            units[shape] = spec.size
            for runner in self.runners:
                timings[runner.key, shape] = self.measure(runner, spec, options.repeat)
        fixed: dict[str, Timing | Failure] = {}
        if self.fixed_cost:
            spec = single_unit()
            fixed = {r.key: self.measure(r, spec, options.repeat) for r in self.runners}
        self.print_timings(timings, units, options.repeat)
        self.print_ratios(timings)
        if self.fixed_cost:
            self.print_fixed_costs(timings, fixed, options.repeat)
        outcomes: dict[str, object] = {f"{k} on {s}": out for (k, s), out in timings.items()}
        outcomes |= {f"{key} on 1 unit": out for key, out in fixed.items()}
        failures = failures_of(outcomes)
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

    def print_fixed_costs(
        self,
        timings: dict[tuple[str, str], Timing | Failure],
        fixed: dict[str, Timing | Failure],
        repeat: int,
    ) -> None:
        """Table of each runner's 1-unit run and its per-unit cost net of that, then ratios."""
        print(f"\nFixed cost per run: one run of a 1-unit graph (ms, median of {repeat});")
        print("net: µs per unit once that is taken off, (N-unit run - 1-unit run) / (N - 1)\n")
        header = ["runner", "1-unit run", *(f"{shape} net" for shape in self.shapes)]
        nets = {
            (runner.key, shape): net_us_per_unit(timings[runner.key, shape], fixed[runner.key])
            for runner in self.runners
            for shape in self.shapes
        }
        rows = [
            [
                runner.label,
                report.format_ms_timing(fixed[runner.key]),
                *(report.format_optional_us(nets[runner.key, s]) for s in self.shapes),
            ]
            for runner in self.runners
        ]
        for comparison in self.comparisons:
            numerator, denominator = comparison.numerator.key, comparison.denominator.key
            rows.append(
                [
                    comparison.label,
                    report.format_ratio(
                        plain_ratio(median_of(fixed[numerator]), median_of(fixed[denominator])),
                        None,
                    ),
                    *(
                        report.format_ratio(
                            plain_ratio(nets[numerator, s], nets[denominator, s]), None
                        )
                        for s in self.shapes
                    ),
                ]
            )
        print(report.format_table(header, rows))


def median_of(outcome: Timing | Failure) -> float | None:
    """A timing's median in seconds, or None if it failed."""
    return outcome.median if isinstance(outcome, Timing) else None


def plain_ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the divisor is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def net_us_per_unit(whole: Timing | Failure, one_unit: Timing | Failure) -> float | None:
    """µs per unit beyond the fixed cost: (whole run - 1-unit run) / (units - 1)."""
    if not isinstance(whole, Timing) or not isinstance(one_unit, Timing) or whole.units < 2:
        return None
    return (whole.median - one_unit.median) / (whole.units - 1) * 1e6


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


@dataclass(frozen=True)
class CpuRow:
    """A runner of the cpu section, made once the work per unit is calibrated.

    ``make(workload=...)`` returns the runner.
    """

    make: Callable[..., Runner]
    speedup_target: float | None = None


@dataclass(frozen=True)
class CpuSection:
    """Wall time of a fanout of units doing pure-Python work, and speed-ups over the first row.

    At the start, the loop count of one unit is calibrated so that it takes
    ``options.cpu_ms`` in this interpreter; every run checks every unit's result. Each
    runner is also timed on a 1-unit no-op graph, its fixed cost per run (the start-up of
    worker processes), so that the table can also show the speed-up net of that cost.
    """

    name: str
    title: str
    rows: Sequence[CpuRow]
    workers: int

    def run(self, options: Options) -> bool:
        """Calibrate, time every row on the same graph and print the table."""
        load_before = os.getloadavg()[0]
        calibration = calibrate_burn(options.cpu_ms / 1000)
        spec = GraphSpec("cpu", fanout(options.cpu_units).deps)
        workload = Workload(functools.partial(burn, calibration.loops), noop)
        expected = {name: None if deps else calibration.result for name, deps in spec.deps.items()}
        runners = [checking_values(row.make(workload=workload), expected) for row in self.rows]
        timings = [TimingSection.measure(runner, spec, options.repeat) for runner in runners]
        one_unit = single_unit()
        fixed = [
            TimingSection.measure(
                checking_values(row.make(workload=Workload(noop, noop)), {"u0": None}),
                one_unit,
                options.repeat,
            )
            for row in self.rows
        ]
        self.print_table(
            options, calibration, runners, timings=timings, fixed=fixed, load_before=load_before
        )
        outcomes: dict[str, object] = {}
        for runner, timing, fixed_cost in zip(runners, timings, fixed, strict=True):
            outcomes[f"{runner.key} on cpu"] = timing
            outcomes[f"{runner.key} on 1 unit"] = fixed_cost
        failures = failures_of(outcomes)
        print_failures(failures)
        return not failures

    def print_table(
        self,
        options: Options,
        calibration: Calibration,
        runners: Sequence[Runner],
        *,
        timings: Sequence[Timing | Failure],
        fixed: Sequence[Timing | Failure],
        load_before: float,
    ) -> None:
        """Wall time per run and speed-up over the first row, with PASS/MISS on targets."""
        work = options.cpu_units * calibration.measured
        load_after = os.getloadavg()[0]
        print(
            f"\n{self.title}: {options.cpu_units} units of pure-Python work + a no-op sink, "
            f"median of {options.repeat} after 1 warm-up"
        )
        print(
            f"(one unit: burn({calibration.loops:,}), calibrated to {calibration.target * 1e3:g} "
            f"ms, measures {calibration.measured * 1e3:.1f} ms here; {work * 1e3:.0f} ms of work "
            f"in all,\n {work / self.workers * 1e3:.0f} ms if perfectly shared by {self.workers} "
            f"workers; load average {load_before:.2f} before, {load_after:.2f} after)\n"
        )
        nets = [
            net_seconds(timing, fixed_cost)
            for timing, fixed_cost in zip(timings, fixed, strict=True)
        ]
        baseline, baseline_net = median_of(timings[0]), nets[0]
        header = [
            "runner",
            "wall time",
            f"speedup vs {runners[0].label}",
            "target",
            "1-unit run",
            "speedup net of 1-unit run",
        ]
        rows = [
            [
                runner.label,
                report.format_ms_timing(timing),
                report.format_speedup(plain_ratio(baseline, median_of(timing)), row.speedup_target),
                "" if row.speedup_target is None else f">= {row.speedup_target:g}x",
                report.format_ms_timing(fixed_cost),
                report.format_speedup(plain_ratio(baseline_net, net), None),
            ]
            for row, runner, timing, fixed_cost, net in zip(
                self.rows, runners, timings, fixed, nets, strict=True
            )
        ]
        print(report.format_table(header, rows))
        print(
            "\nThe verdict is on the wall time, which includes starting the worker processes"
            "\n(PROCESS and dask.multiprocessing.get start theirs in every run); the last column"
            "\ntakes each runner's 1-unit no-op run (its fixed cost per run) off both sides."
        )


def net_seconds(whole: Timing | Failure, one_unit: Timing | Failure) -> float | None:
    """Median whole run minus median 1-unit run, or None if either failed."""
    if not isinstance(whole, Timing) or not isinstance(one_unit, Timing):
        return None
    return whole.median - one_unit.median


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
        SEQUENTIAL_PROGRESS,
        SEQUENTIAL_PROGRESS_DRAWN,
        THREAD_PROGRESS,
        THREAD_PROGRESS_DRAWN,
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
        Comparison(SEQUENTIAL_PROGRESS, SEQUENTIAL),
        Comparison(SEQUENTIAL_PROGRESS_DRAWN, SEQUENTIAL),
        Comparison(THREAD_PROGRESS, THREAD),
        Comparison(THREAD_PROGRESS_DRAWN, THREAD),
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

PROCESS_SECTION = TimingSection(
    name="process",
    title="PROCESS beside dask.multiprocessing, no-op units",
    runners=(PROCESS, DASK_MULTIPROCESSING, SEQUENTIAL),
    comparisons=(Comparison(PROCESS, DASK_MULTIPROCESSING),),
    size=process_size,
    fixed_cost=True,
)

PROCESS_SPEEDUP_TARGET = 1.8

CPU_SECTION = CpuSection(
    name="cpu",
    title="CPU-bound graph",
    rows=(
        CpuRow(functools.partial(project_runner, "SEQUENTIAL")),
        CpuRow(
            functools.partial(project_runner, "PROCESS", workers=PROCESS_WORKERS),
            PROCESS_SPEEDUP_TARGET,
        ),
        CpuRow(functools.partial(reused_process_runner, PROCESS_WORKERS), PROCESS_SPEEDUP_TARGET),
        CpuRow(functools.partial(project_runner, "THREAD", workers=PROCESS_WORKERS)),
        CpuRow(functools.partial(dask_multiprocessing_runner, PROCESS_WORKERS)),
        CpuRow(functools.partial(dask_multiprocessing_runner, PROCESS_WORKERS, chunksize=1)),
    ),
    workers=PROCESS_WORKERS,
)

ASYNC_SECTION = TimingSection(
    name="async",
    title="ASYNC beside a hand-rolled asyncio dataflow, coroutine units",
    runners=(
        ASYNC_RETURN,
        TASKS_AWAIT_RETURN,
        TASKS_GATHER_RETURN,
        ASYNC_SLEEP,
        TASKS_AWAIT_SLEEP,
        TASKS_GATHER_SLEEP,
    ),
    comparisons=(
        Comparison(ASYNC_RETURN, TASKS_AWAIT_RETURN),
        Comparison(ASYNC_SLEEP, TASKS_AWAIT_SLEEP),
        Comparison(ASYNC_RETURN, TASKS_GATHER_RETURN),
        Comparison(ASYNC_SLEEP, TASKS_GATHER_SLEEP),
    ),
    shapes=("fanout", "layered"),
)

SECTIONS: dict[str, Section] = {
    section.name: section
    for section in (
        TIME_SECTION,
        MEMORY_SECTION,
        PROCESS_SECTION,
        CPU_SECTION,
        ASYNC_SECTION,
        CACHE_SECTION,
        DASK_SECTION,
        DASK_COLLECTIONS_SECTION,
        LIMITS_SECTION,
        MAPS_SECTION,
        UNIT_COST_SECTION,
    )
}
