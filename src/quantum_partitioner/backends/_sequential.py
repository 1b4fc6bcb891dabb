"""SEQUENTIAL: every attempt runs in the calling thread, one at a time, in scheduler order.

This is the reference semantics and it is deterministic: the same graph always runs in the
same order. A unit cannot be interrupted in the calling thread, so a unit that returns after
its timeout is marked TIMEOUT and its result discarded, and the run's deadline is checked
between units. While a retry waits for its backoff, other ready units run; the thread sleeps
only when nothing else can, on a ``SimpleQueue`` that ``cancel()`` (or another run releasing
a shared limit) can wake without taking a lock (so from a signal handler too). Concurrency
limits are met trivially (one attempt at a time); a rate limit is honoured by waiting for
the best unit's token, not by running another unit first, so the order stays the same.

A unit runs in this very thread, so a ``KeyboardInterrupt`` or ``SystemExit`` it raises
reaches the driver as Ctrl-C would, and stops the run the same way.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import TYPE_CHECKING

from .._errors import InternalError
from ._base import Backend

if TYPE_CHECKING:
    from .._run import Run

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    """Run every attempt in the calling thread.

    .. versionadded:: 0.1
    """

    name = "sequential"

    @property
    def concurrency(self) -> int:
        """One attempt at a time."""
        return 1

    def run(self, run: Run) -> None:
        """Drive ``run`` to the end in this thread."""
        sched = run.scheduler
        clock, call, report = run.clock, run.call, run.report
        start_next, complete, fail = sched.start_next, sched.complete, sched.fail
        attempts = sched.attempts
        dispatcher = run.dispatcher
        started_hooks, finished_hooks = dispatcher.unit_started, dispatcher.unit_finished
        wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        previous_wake, run.wake = run.wake, lambda: wakeups.put(None)
        run.clock_cancels = True  # nothing acts on a deadline while a unit runs here
        if sched.gate is not None:
            sched.gate.in_order = True
        try:
            while sched.is_active():
                if run.cancel_requested.is_set():
                    report(run.stop_requested())
                    break
                now = clock()
                if sched.has_deadlines:
                    report(sched.advance(now))
                if sched.to_decide or sched.outbox:
                    report(run.settle_decisions())  # nothing runs here, nothing to stop
                    continue  # a decision may have ended the run
                i = start_next(now)
                if i < 0:
                    _sleep_until_deadline(run, now, wakeups)
                    continue
                attempt = attempts[i]
                if started_hooks:
                    run.emit_started(i, attempt, now)
                ok, value = call(i, attempt)
                now = clock()
                if sched.has_deadlines:
                    report(sched.advance(now))  # a unit past its timeout becomes TIMEOUT
                if ok:
                    if complete(i, attempt, value, now) >= 0 and finished_hooks:
                        run.emit_finished(i, attempt, now)
                else:
                    report(fail(i, attempt, value, now))
        except BaseException as error:
            report(run.interrupt("interrupted", error))
            raise
        finally:
            run.wake = previous_wake


def _sleep_until_deadline(run: Run, now: float, wakeups: queue.SimpleQueue[None]) -> None:
    sched = run.scheduler
    if not sched.is_active():
        return  # the run's deadline ended it while it waited (for a backoff, a token)
    deadline = sched.next_deadline()
    if deadline is None:
        if not sched.waiting_on_limits:
            raise InternalError("no unit is ready, running or waiting, yet the run is not over")
        wakeups.get()  # a limit another run holds: its release (or cancel()) wakes this run
    elif deadline > now:
        # cancel() cuts the wait short; far deadlines are waited for in steps.
        with contextlib.suppress(queue.Empty):
            wakeups.get(timeout=min(deadline - now, threading.TIMEOUT_MAX))
