"""A pool of threads as a lane, for mixed runs (``resource_type: "io"``).

Pure THREAD mode uses the faster :mod:`._threads` backend, whose workers pull from the
scheduler themselves; in a mixed run one driver feeds several lanes, and this is the thread
one. Timeouts behave as in THREAD mode: the stuck thread is retired (its late outcome is
ignored) and a fresh one takes its place, so the lane keeps its full size.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import TYPE_CHECKING

from ._lanes import Lane

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._run import Run
    from ._lanes import Outcome

__all__ = ["ThreadLane"]

_ids = itertools.count(1)


class _Slot:
    __slots__ = ("job", "retired")

    def __init__(self) -> None:
        self.job: tuple[int, int] | None = None
        self.retired = False


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
        self._jobs: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._busy = 0
        for _ in range(min(self.size, max(1, len(run.graph)))):
            self._spawn()

    def _spawn(self) -> None:
        slot = _Slot()
        self._slots.append(slot)
        name = f"quantum-partitioner-io-{next(_ids)}"
        threading.Thread(target=self._work, args=(slot,), name=name, daemon=True).start()

    def _work(self, slot: _Slot) -> None:
        run, post, jobs = self._run, self._post, self._jobs
        while not slot.retired:
            job = jobs.get()
            if job is None:
                return
            slot.job = job
            i, attempt = job
            try:
                ok, value = run.call(i, attempt)
            except BaseException as error:
                ok, value = False, error
            slot.job = None
            post((i, attempt, ok, value, None))

    def has_room(self) -> bool:
        """Whether a thread is free."""
        return self._busy < self.capacity

    def submit(self, i: int, attempt: int) -> None:
        """Queue the attempt for the next free thread."""
        self._busy += 1
        self._jobs.put((i, attempt))

    def settled(self, i: int, attempt: int) -> None:
        """A thread finished an attempt."""
        del i, attempt
        self._busy -= 1

    def abandon(self, i: int, attempt: int) -> None:
        """Retire the thread stuck in that attempt and start another in its place."""
        self._busy -= 1
        with self._lock:
            for slot in self._slots:
                if slot.job == (i, attempt) and not slot.retired:
                    slot.retired = True
                    self._spawn()
                    return

    def close(self, *, cancel: bool) -> None:
        """Let idle threads exit; stuck ones are daemons and exit when their unit returns."""
        del cancel
        for slot in self._slots:
            if not slot.retired:
                self._jobs.put(None)
