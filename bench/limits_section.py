"""The ``limits`` section: what named limits cost, and how well a full limit is kept busy.

Two measurements:

* overhead: a THREAD run (4 workers) of N no-op units (``--n``, fanout) where every unit
  names one limit that is never saturated, beside the same run without limits. The ratio
  of median times is the per-unit price of limits (target: under 1.3x).
* makespan: 1,000 units (200 with ``--quick``) sleeping 10 ms under one limit of
  ``concurrency=4``, in THREAD (32 workers, so the limit is what bounds the run) and in
  ASYNC (``async def`` units awaiting ``asyncio.sleep``). The ideal is units x 10 ms / 4
  (2.5 s); the target is within 5% of it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import traceback
from typing import TYPE_CHECKING, Any

import report

if TYPE_CHECKING:
    from sections import Options

OVERHEAD_TARGET = 1.3
MAKESPAN_TARGET = 1.05
MAKESPAN_UNITS = 1_000
QUICK_MAKESPAN_UNITS = 200
SLEEP_S = 0.010
CONCURRENCY = 4


def _noop(ctx: Any) -> None:
    return None


def _sleep(ctx: Any) -> None:
    time.sleep(SLEEP_S)


async def _async_sleep(ctx: Any) -> None:
    await asyncio.sleep(SLEEP_S)


def _fanout(n: int, *, limited: bool) -> Any:
    from quantum_partitioner import QuantumPartitioner  # noqa: PLC0415 - measured import

    p: Any = QuantumPartitioner(max_workers=4)
    if limited:
        p.add_limit("api", concurrency=n + 1)  # never saturated
    options = {"limits": ["api"]} if limited else {}
    names = [f"u{k}" for k in range(n)]
    for name in names:
        p.add_unit(_noop, name=name, **options)
    p.add_unit(_noop, names, name="sink", **options)
    return p


def _median_runs(first: Any, second: Any, repeat: int) -> tuple[float, float]:
    """Median seconds of ``first.execute()`` and ``second.execute()``, samples interleaved.

    Alternating the two cancels most of the drift of a shared machine between them.
    """
    first.execute()  # warm-up
    second.execute()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for p, into in ((first, samples[0]), (second, samples[1])):
            started = time.perf_counter()
            p.execute()
            into.append(time.perf_counter() - started)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _makespan(mode: str, units: int, *, limited: bool = True) -> float:
    """One run's seconds: under the limit (32 workers), or on 4 workers without one."""
    from quantum_partitioner import QuantumPartitioner  # noqa: PLC0415 - measured import

    p: Any = QuantumPartitioner(max_workers=32 if limited else CONCURRENCY)
    if limited:
        p.add_limit("provider", concurrency=CONCURRENCY)
    function = _async_sleep if mode == "async" else _sleep
    for k in range(units):
        p.add_unit(function, name=f"call{k}", limits=["provider"] if limited else None)
    started = time.perf_counter()
    results = p.execute(execution_mode=mode)
    took = time.perf_counter() - started
    if len(results) != units:
        raise RuntimeError(f"{mode}: {len(results)} of {units} units completed")
    return took


class LimitsSection:
    """See the module docstring."""

    name = "limits"
    title = "Named limits: per-unit overhead and makespan under concurrency=4"

    def run(self, options: Options) -> bool:
        """Measure both, print them with their verdicts; False if a measurement failed."""
        ok = True
        n = options.n
        try:
            plain, limited = _median_runs(
                _fanout(n, limited=False), _fanout(n, limited=True), 2 * options.repeat + 1
            )
        except Exception:
            traceback.print_exc()
            ok = False
        else:
            ratio = limited / plain
            verdict = "PASS" if ratio < OVERHEAD_TARGET else "MISS"
            samples = 2 * options.repeat + 1
            print(f"\nTHREAD (4), fanout of {n:,} no-op units, median of {samples}:\n")
            rows = [
                ["without limits", report.format_us(plain / (n + 1) * 1e6)],
                ["one unsaturated limit per unit", report.format_us(limited / (n + 1) * 1e6)],
            ]
            print(report.format_table(["run", "µs per unit"], rows))
            print(f"\nWith limits / without: {ratio:.2f}x (target < {OVERHEAD_TARGET}x): {verdict}")
        units = QUICK_MAKESPAN_UNITS if options.n < 10_000 else MAKESPAN_UNITS
        ideal = units * SLEEP_S / CONCURRENCY
        rows = []
        for mode in ("thread", "async"):
            try:
                took = _makespan(mode, units)
                reference = _makespan(mode, units, limited=False)
            except Exception:
                traceback.print_exc()
                ok = False
                continue
            verdict = "PASS" if took / ideal <= MAKESPAN_TARGET else "MISS"
            rows.append(
                [
                    mode.upper(),
                    f"{took:.3f} s",
                    f"{took / ideal:.3f}x {verdict}",
                    f"{reference:.3f} s",
                    f"{took / reference:.3f}x",
                ]
            )
        print(
            f"\n{units:,} units sleeping {SLEEP_S * 1e3:g} ms under concurrency={CONCURRENCY} "
            f"(ideal {ideal:.2f} s; target within {MAKESPAN_TARGET - 1:.0%}):\n"
        )
        header = ["mode", "makespan", "/ ideal", "4 workers, no limit", "limit / 4 workers"]
        print(report.format_table(header, rows))
        print(
            "(the 4-worker run without a limit shows what the machine's sleeps and threads cost "
            "by themselves)"
        )
        return ok


LIMITS_SECTION = LimitsSection()
