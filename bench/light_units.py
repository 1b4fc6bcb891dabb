"""Unit functions in a module that imports next to nothing.

Worker processes import the module of a run's functions before they are ready, so where a
unit lives is part of a worker's start-up. The unit cost rows keep their units here, away
from the bench's own modules (which import much), so that a row measures the library and
not the bench: the worker start row shows a worker's own start-up with :func:`noop` (and,
beside it, with a unit in a module that imports much), and the PROCESS speed-up rows run
:func:`timed_burn`.
"""

import time


def noop(ctx: object) -> None:
    """Do nothing."""


def burn(loops: int, *_ignored: object) -> int:
    """Pure-Python CPU work that holds the GIL throughout: ``loops`` multiply-adds."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def timed_burn(loops: int, ctx: object) -> tuple[float, float]:
    """``burn(loops)``; returns the CPU seconds it took (of its thread) and its wall seconds."""
    cpu, wall = time.thread_time(), time.perf_counter()
    burn(loops)
    return time.thread_time() - cpu, time.perf_counter() - wall
