"""Plain-text tables for the benchmark's results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Failure, MemoryPeak, Timing

if TYPE_CHECKING:
    from collections.abc import Sequence

KIB = 1024
MIB = 1024 * 1024


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align columns: the first to the left, the others to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        padded = [first.ljust(widths[0])]
        padded += [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_us(value: float) -> str:
    """Microseconds with about three significant digits."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_optional_us(value: float | None) -> str:
    """Microseconds, or n/a when the figure could not be computed."""
    return "n/a" if value is None else format_us(value)


def format_ms_timing(outcome: Timing | Failure) -> str:
    """Table cell: a whole run's median in milliseconds and the spread of the samples."""
    if isinstance(outcome, Failure):
        return format_failure(outcome)
    return f"{format_us(outcome.median * 1e3)} ms ±{outcome.spread:.0%}"


def format_speedup(speedup: float | None, target: float | None) -> str:
    """Table cell: a speed-up (higher is better) and, when there is a target, PASS or MISS."""
    if speedup is None:
        return "n/a"
    if target is None:
        return f"{speedup:.2f}x"
    return f"{speedup:.2f}x {'PASS' if speedup >= target else 'MISS'}"


def format_failure(failure: Failure) -> str:
    """Table cell for a missing measurement."""
    return "n/a" if failure.kind == "unavailable" else "ERROR"


def format_timing(outcome: Timing | Failure) -> str:
    """Table cell: median µs per unit and the spread of the samples."""
    if isinstance(outcome, Failure):
        return format_failure(outcome)
    return f"{format_us(outcome.us_per_unit)} ±{outcome.spread:.0%}"


def format_ratio(ratio: float | None, target: float | None) -> str:
    """Table cell: the ratio and, when there is a target, PASS or MISS."""
    if ratio is None:
        return "n/a"
    if target is None:
        return f"{ratio:.2f}x"
    verdict = "PASS" if ratio <= target else "MISS"
    return f"{ratio:.2f}x {verdict}"


def format_target(target: float | None) -> str:
    """Table cell for a ratio target (empty when the ratio is informational)."""
    return "" if target is None else f"<= {target:g}x"


def format_bytes_per_unit(value: float) -> str:
    """Bytes per unit, rounded to the byte."""
    return f"{value:,.0f} B"


def format_memory_verdict(outcome: MemoryPeak | Failure, target: float | None) -> str:
    """PASS or MISS against a bytes-per-unit target (empty without a target)."""
    if isinstance(outcome, Failure):
        return format_failure(outcome)
    if target is None:
        return ""
    return "PASS" if outcome.peak_per_unit < target else "MISS"


def format_memory_row(
    label: str, shape: str, outcome: MemoryPeak | Failure, target: float | None
) -> list[str]:
    """Table row: built and peak bytes per unit, total peak and the verdict."""
    target_cell = "" if target is None else f"< {target / KIB:g} KiB"
    verdict = format_memory_verdict(outcome, target)
    if isinstance(outcome, Failure):
        return [label, shape, target_cell, "", "", "", verdict]
    return [
        label,
        shape,
        target_cell,
        format_bytes_per_unit(outcome.built_per_unit),
        format_bytes_per_unit(outcome.peak_per_unit),
        f"{outcome.peak / MIB:.1f} MiB",
        verdict,
    ]


def format_failure_notes(failures: dict[str, Failure]) -> list[str]:
    """One line per distinct failure: which cells are missing and why."""
    by_message: dict[str, list[str]] = {}
    for where, failure in failures.items():
        by_message.setdefault(f"{failure.kind}: {failure.message}", []).append(where)
    return [f"  {message}  [{', '.join(where)}]" for message, where in by_message.items()]
