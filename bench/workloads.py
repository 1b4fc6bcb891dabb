"""What units do in the sections whose units are not plain no-ops (cpu, async).

Every function here takes and ignores any positional arguments, so that the same function
serves the project (which calls a unit with its context) and its peers (which call a task
with its dependencies' results). They live in an importable module, not in ``__main__``,
so that worker processes (the project's and dask's) import them by name.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# The CPU work lives with the unit functions that import next to nothing.
from light_units import burn

if TYPE_CHECKING:
    from collections.abc import Callable

CALIBRATION_SAMPLES = 5
CALIBRATION_FLOOR_SECONDS = 0.02


@dataclass(frozen=True)
class Workload:
    """The functions of a graph's units: ``source`` for units without dependencies (the
    bulk of a fanout graph), ``inner`` for the others (its sink)."""

    source: Callable[..., Any]
    inner: Callable[..., Any]

    def function_for(self, deps: list[str]) -> Callable[..., Any]:
        """The function of a unit with these dependencies."""
        return self.inner if deps else self.source


def noop(*_ignored: Any) -> None:
    """Do nothing (the sink of the cpu graph)."""


async def async_noop(*_ignored: Any) -> None:
    """A coroutine unit that returns at once, never yielding to the loop."""


async def async_yield(*_ignored: Any) -> None:
    """A coroutine unit that yields to the loop once, as a unit doing real I/O would."""
    await asyncio.sleep(0)


ASYNC_RETURN_NONE = Workload(async_noop, async_noop)
ASYNC_SLEEP_ZERO = Workload(async_yield, async_yield)


def seconds_of_burn(loops: int) -> float:
    """Wall time of one ``burn(loops)`` in this process."""
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Calibration:
    """How many loops make one unit take ``target`` seconds in this interpreter."""

    loops: int
    target: float
    measured: float
    result: int


def calibrate_burn(target: float) -> Calibration:
    """Find ``loops`` such that ``burn(loops)`` takes about ``target`` seconds here.

    Doubles the loop count until one call takes long enough to time, scales it to the
    target from the fastest of a few samples (the least disturbed by other processes),
    then measures the result: ``measured`` is the median of a few calls at that count.
    """
    loops = 10_000
    while seconds_of_burn(loops) < CALIBRATION_FLOOR_SECONDS:
        loops *= 2
    fastest = min(seconds_of_burn(loops) for _ in range(CALIBRATION_SAMPLES))
    loops = max(1, round(loops * target / fastest))
    measured = statistics.median(seconds_of_burn(loops) for _ in range(CALIBRATION_SAMPLES))
    return Calibration(loops, target, measured, burn(loops))
