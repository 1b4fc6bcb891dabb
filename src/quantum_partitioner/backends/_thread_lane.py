"""A pool of threads as a lane, for mixed runs (``resource_type: "io"``).

Pure THREAD mode uses the faster :mod:`._threads` backend, whose workers pull from the
scheduler themselves; in a mixed run one driver feeds several lanes, and this is the thread
one, on a :class:`~._pool.DaemonPool`. Timeouts behave as in THREAD mode: an attempt is
handed over only to a free thread, so its timeout counts from when it starts; an abandoned
attempt that no thread has picked up never starts, nor does one whose timeout passed before a
thread got to it; a thread stuck in one is retired (its late
outcome is ignored) and a fresh one takes its place, so the lane keeps its full size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import interrupts_run
from ._base import pool_size
from ._lanes import Lane
from ._pool import DaemonPool

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._run import Run
    from ._lanes import Outcome

__all__ = ["ThreadLane"]


class ThreadLane(Lane):
    """Run attempts on ``max_workers`` daemon threads."""

    name = "thread"
    calls_in_process = True

    def __init__(self, max_workers: int) -> None:
        """Size the pool; threads start when the lane opens."""
        if max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        self.size = max_workers
        #: How many attempts may run at once; an adaptive controller may lower it.
        self.capacity = max_workers
        self._busy = 0

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Start the threads."""
        self._run = run
        self._post = post
        self._busy = 0
        self._pool: DaemonPool[tuple[int, int]] = DaemonPool(
            pool_size(run.graph, self.size),
            "quantum-partitioner-io",
            self._call,
            self._deliver,
            lambda: post(None),
        )
        self._pool.start()

    def _call(self, job: tuple[int, int]) -> tuple[bool, Any] | None:
        i, attempt = job
        run = self._run
        if not run.still_wanted(i, attempt):
            return None  # abandoned, or timed out, before this thread got to it: never start
        try:
            return run.call(i, attempt)
        except BaseException as error:
            if interrupts_run(error):  # KeyboardInterrupt, SystemExit: stop the run
                self._run.hand_over_interrupt(error)
                return None
            return False, error  # from around the unit (its cache): fails the unit

    def _deliver(self, job: tuple[int, int], outcome: tuple[bool, Any] | None) -> None:
        if outcome is None:
            self._post(None)  # not run, or the run is being interrupted: wake the driver
            return
        i, attempt = job
        ok, value = outcome
        self._post((i, attempt, ok, value, None))

    def has_room(self) -> bool:
        """Whether a thread is free (and the capacity allows one more)."""
        return self._pool.free > 0 and self._busy < self.capacity

    def submit(self, i: int, attempt: int) -> None:
        """Hand the attempt to a free thread."""
        self._busy += 1
        self._pool.submit((i, attempt))

    def settled(self, i: int, attempt: int) -> None:
        """A thread finished an attempt."""
        del i, attempt
        self._busy -= 1

    def abandon(self, i: int, attempt: int) -> None:
        """Drop the attempt if it has not started, else retire its thread for a fresh one."""
        self._busy -= 1
        self._pool.abandon((i, attempt))

    def close(self, *, cancel: bool) -> None:
        """Let idle threads exit; stuck ones are daemons and exit when their unit returns."""
        del cancel
        self._pool.close()
