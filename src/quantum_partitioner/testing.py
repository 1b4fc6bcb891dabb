"""Helpers for testing code that drives quantum-partitioner's scheduling core.

The scheduler never reads a clock: time comes in as ``now=`` (see
:mod:`quantum_partitioner._scheduler`). Tests therefore need no sleeps, only a clock that
moves when told to. :class:`FakeClock` is that clock, in the spirit of ``trio.testing``'s
``MockClock``: call it to read the time, and move it with :meth:`~FakeClock.advance` or
:meth:`~FakeClock.set`. It is monotonic, like the ``time.perf_counter`` it stands in for.
"""

from __future__ import annotations

import math

__all__ = ["FakeClock"]


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return float(value)


class FakeClock:
    """A monotonic clock that moves only when told to.

    Use it wherever a ``Callable[[], float]`` clock is expected::

        clock = FakeClock()
        i = scheduler.start_next(clock())
        clock.advance(2.5)
        transitions = scheduler.advance(clock())

    Args:
        start: The time the clock shows at first, in seconds.

    Raises:
        TypeError: ``start`` is not a number.
        ValueError: ``start`` is NaN.

    .. versionadded:: 0.1
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        """Create a clock that shows ``start``."""
        self._now = _check_time("start", start)

    def __call__(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def __repr__(self) -> str:
        """Show the current time."""
        return f"FakeClock({self._now!r})"

    @property
    def now(self) -> float:
        """The current fake time, in seconds (the same as calling the clock)."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward.

        Args:
            seconds: How far to move, ``>= 0``.

        Returns:
            The new time.

        Raises:
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative or NaN (the clock is monotonic).
        """
        step = _check_time("seconds", seconds)
        if step < 0:
            raise ValueError(f"a monotonic clock cannot go back; got seconds={seconds!r}")
        self._now += step
        return self._now

    def set(self, t: float) -> None:
        """Move the clock to time ``t``.

        Args:
            t: The new time, not earlier than the current one.

        Raises:
            TypeError: ``t`` is not a number.
            ValueError: ``t`` is NaN or earlier than the current time (the clock is
                monotonic).
        """
        new = _check_time("t", t)
        if new < self._now:
            raise ValueError(f"a monotonic clock cannot go back from {self._now!r} to {t!r}")
        self._now = new
