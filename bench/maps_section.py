"""The ``maps`` section: what a mapped item costs beside a static unit doing the same work.

10,000 items (``--n``) of one map over a list, beside 10,000 static units declared before the
run, each a no-op, with one sink unit depending on all of them; SEQUENTIAL and THREAD (4).
The map's items are created during the run, so the figure includes their creation; the
static side includes its ``add_unit`` calls, as a user building the graph pays them. A
second row times the run alone (graphs built beforehand). Target: items within 1.2x of
static units.
"""

from __future__ import annotations

import statistics
import time
import traceback
from typing import TYPE_CHECKING, Any

import report

if TYPE_CHECKING:
    from sections import Options

TARGET = 1.2


def _noop(ctx: Any) -> None:
    return None


def _items(n: int) -> Any:
    def listing(ctx: Any) -> list[int]:
        return list(range(n))

    return listing


def _static(n: int) -> Any:
    from quantum_partitioner import QuantumPartitioner  # noqa: PLC0415 - measured import

    p: Any = QuantumPartitioner(max_workers=4)
    p.add_unit(_items(n), name="listing")
    names = [f"item{k}" for k in range(n)]
    for name in names:
        p.add_unit(_noop, ["listing"], name=name)
    p.add_unit(_noop, names, name="sink")
    return p


def _mapped(n: int) -> Any:
    from quantum_partitioner import QuantumPartitioner  # noqa: PLC0415 - measured import

    p: Any = QuantumPartitioner(max_workers=4)
    p.add_unit(_items(n), name="listing")
    p.add_map(_noop, over="listing", name="item")
    p.add_unit(_noop, ["item"], name="sink")
    return p


def _median(build: Any, n: int, mode: str, repeat: int, *, with_build: bool) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        p = build(n)
        if not with_build:
            started = time.perf_counter()
        p.execute(execution_mode=mode)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


class MapsSection:
    """See the module docstring."""

    name = "maps"
    title = "Maps: a mapped item beside a static unit doing the same work"

    def run(self, options: Options) -> bool:
        """Measure and print the table; False if a measurement failed."""
        n = options.n
        repeat = 2 * options.repeat + 1
        rows = []
        ok = True
        for mode in ("sequential", "thread"):
            for with_build in (True, False):
                try:
                    _median(_mapped, n, mode, 1, with_build=with_build)  # warm-up
                    static = _median(_static, n, mode, repeat, with_build=with_build)
                    mapped = _median(_mapped, n, mode, repeat, with_build=with_build)
                except Exception:
                    traceback.print_exc()
                    ok = False
                    continue
                ratio = mapped / static
                rows.append(
                    [
                        mode.upper() if mode == "sequential" else "THREAD (4)",
                        "build + run" if with_build else "run",
                        report.format_us(static / n * 1e6),
                        report.format_us(mapped / n * 1e6),
                        f"{ratio:.2f}x {'PASS' if ratio <= TARGET else 'MISS'}",
                    ]
                )
        print(f"\n{n:,} no-op units: static, or items of one map; median of {repeat}:\n")
        header = ["mode", "what", "static µs/unit", "mapped µs/item", f"ratio (≤ {TARGET}x)"]
        print(report.format_table(header, rows))
        return ok


MAPS_SECTION = MapsSection()
