"""THREAD: a pool of worker threads pulling ready units from the scheduler (dataflow).

There are no level barriers: a unit starts as soon as its dependencies are done. One lock
guards the scheduler. A worker that finishes a unit reports it and picks its next unit in the
same critical section, so the dependent it just made ready usually runs on the same thread
without a hand-off; it wakes only as many idle workers as there are extra ready units. No
``Future`` is created per unit.

The calling thread is the driver: it sleeps until the next deadline (a timeout or a retry)
or until the run ends, on a ``SimpleQueue`` rather than under the lock, so ``cancel()`` can
wake it without taking the lock, from a signal handler too (a handler runs on the main
thread, which may hold the lock at that moment). Threads cannot be killed, so at a unit's
timeout the unit becomes TIMEOUT, its worker is *retired* (its late result is discarded and
it exits when the unit returns) and a fresh worker replaces it: the rest of the run keeps
its full concurrency, and the unit can notice through ``ctx.cancelled``. Workers are daemon
threads, so a unit stuck forever never keeps the interpreter alive after an interrupt.

A ``KeyboardInterrupt`` or ``SystemExit`` raised in a worker, by a unit or a callback, is
handed to the driver (``Run.hand_over_interrupt``), which stops the run as for Ctrl-C and
raises it in the caller.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from typing import TYPE_CHECKING, Any

from .._errors import InternalError, interrupts_run
from ._base import Backend, pool_size

if TYPE_CHECKING:
    from .._run import Run
    from .._scheduler import Transition

__all__ = ["ThreadBackend"]

_thread_ids = itertools.count(1)


class ThreadBackend(Backend):
    """Run attempts on ``max_workers`` threads.

    Args:
        max_workers: How many units may run at once.

    .. versionadded:: 0.1
    """

    name = "thread"

    def __init__(self, max_workers: int) -> None:
        """Remember the pool size; threads start per run."""
        if max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers

    @property
    def concurrency(self) -> int:
        """The pool size."""
        return self.max_workers

    def run(self, run: Run) -> None:
        """Drive ``run`` on a fresh pool of worker threads."""
        _ThreadPool(run, self.max_workers).drive()


class _Worker:
    __slots__ = ("retired", "thread")

    def __init__(self) -> None:
        self.retired = False
        self.thread: threading.Thread | None = None


class _ThreadPool:
    """The workers and the driver of one run, around one lock."""

    def __init__(self, run: Run, max_workers: int) -> None:
        self.run = run
        self.sched = run.scheduler
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # idle workers wait here
        self.wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()  # the driver waits here
        self.idle = 0
        # When the sleeping driver will wake by itself; -inf while it is awake (then nobody
        # needs to wake it: it looks at the deadlines before it sleeps again).
        self.wake_at = -math.inf
        self.stopping = False
        self.failure: BaseException | None = None
        self.owner: list[_Worker | None] = [None] * len(run.graph)
        run.on_grow.append(self._grow)
        self.workers: list[_Worker] = []
        self.size = pool_size(run.graph, max_workers)

    # -- the driver ------------------------------------------------------------------------

    def _grow(self, items: range) -> None:
        """Maps added items: they may have owners too."""
        self.owner.extend([None] * len(items))

    def drive(self) -> None:
        run, sched, lock = self.run, self.sched, self.lock
        clock = run.clock
        previous_wake, run.wake = run.wake, self._wake
        if sched.gate is not None:
            sched.gate.on_new_deadline = self._deadline_added
        try:
            for _ in range(self.size):
                self._spawn()
            while True:
                with lock:
                    self.wake_at = -math.inf
                    self._raise_failure()
                    if not sched.is_active() or run.cancel_requested.is_set():
                        break
                    now = clock()
                    transitions = sched.advance(now)
                    if sched.to_decide or sched.outbox:
                        transitions += run.settle_decisions()
                    for t in transitions:
                        if t.was_running:
                            self._retire(t.index)
                    self._wake_workers()
                    # Every deadline up to now was acted on: the next one is in the future.
                    deadline = sched.next_deadline()
                    self.wake_at = math.inf if deadline is None else deadline
                run.report(transitions)
                if sched.is_active():  # (a run deadline may just have ended it)
                    self._sleep(deadline)
            if run.cancel_requested.is_set():
                with lock:
                    transitions = run.stop_requested()
                run.report(transitions)
            else:
                self._join_workers()
                self._raise_handed_over()
        except BaseException as error:
            with lock:
                transitions = run.interrupt("interrupted", error)
            run.report(transitions)
            raise
        finally:
            with lock:
                self.stopping = True
                self.work.notify_all()
            run.wake = previous_wake

    def _sleep(self, deadline: float | None) -> None:
        """Wait for a wake-up or until ``deadline``, then forget wake-ups already queued.

        What woke the driver is in the scheduler's state, read once awake, so a wake-up
        queued before that read carries nothing more.
        """
        wakeups = self.wakeups
        try:
            if deadline is None:
                wakeups.get()
            else:
                wakeups.get(timeout=_wait_time(max(0.0, deadline - self.run.clock())))
            while True:
                wakeups.get_nowait()
        except queue.Empty:
            pass

    def _join_workers(self) -> None:
        """Wait for the workers of a finished run, so their last events are delivered.

        Every unit is terminal, so no current worker is inside a unit: each is idle or
        reporting its last outcome. Retired workers may still be stuck in a unit that timed
        out; they are daemons and are not waited for.
        """
        with self.lock:
            self.stopping = True
            self.work.notify_all()
        for worker in self.workers:
            if not worker.retired and worker.thread is not None:
                worker.thread.join()

    def _raise_handed_over(self) -> None:
        """Raise what a worker handed over after the driver last looked (a last callback's)."""
        if self.run.handed_over is not None:
            raise self.run.handed_over

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise InternalError("a worker thread crashed") from self.failure

    def _wake(self) -> None:
        """Wake the driver; takes no lock (``cancel()`` may call it from a signal handler)."""
        self.wakeups.put(None)

    def _deadline_added(self, at: float) -> None:
        """A limit's next token is due at ``at`` (under the lock): wake the driver if sooner."""
        if at < self.wake_at:
            self.wakeups.put(None)

    def _spawn(self) -> None:
        worker = _Worker()
        thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"quantum-partitioner-{next(_thread_ids)}",
            daemon=True,
        )
        worker.thread = thread
        self.workers.append(worker)
        thread.start()

    def _retire(self, i: int) -> None:
        """Abandon the worker stuck in unit ``i`` and start another in its place."""
        worker = self.owner[i]
        if worker is not None and not worker.retired:
            worker.retired = True
            self._spawn()

    def _dismissed(self, worker: _Worker) -> bool:
        """Whether ``worker`` should exit: it was retired, or the run is over."""
        return worker.retired or self.stopping

    def _settle_decisions(self) -> list[Transition]:
        """Conditions and the scheduler's own transitions, under the lock (a worker's turn).

        Predicates are meant to be quick: they run here, between units.
        """
        transitions = self.run.settle_decisions()
        for t in transitions:
            if t.was_running:
                self._retire(t.index)
        self._wake_workers()
        if not self.sched.is_active():
            self.wakeups.put(None)  # a decision ended the run: the driver waits for that
        return transitions

    def _wake_workers(self) -> None:
        ready = self.sched.ready_count
        if ready and self.idle:
            self.work.notify(min(ready, self.idle))

    # -- the workers -----------------------------------------------------------------------

    def _work(self, me: _Worker) -> None:
        try:
            self._work_loop(me)
        except BaseException as error:
            if interrupts_run(error):  # a unit or a callback raised KeyboardInterrupt & co
                self.run.hand_over_interrupt(error)
                return
            with self.lock:  # a bug here must not hang the driver
                self.failure = error
            self.wakeups.put(None)

    def _work_loop(self, me: _Worker) -> None:
        run, sched, lock = self.run, self.sched, self.lock
        clock, call, report = run.clock, run.call, run.report
        start_next, complete, fail = sched.start_next, sched.complete, sched.fail
        attempts, timeouts, owner = sched.attempts, sched.timeouts, self.owner
        cancellable = sched.cancels_rest
        started_hooks = run.dispatcher.unit_started
        finished_hooks = run.dispatcher.unit_finished
        work, wake = self.work, self.wakeups.put
        # With a run deadline every running unit may have to be abandoned, not only timed ones.
        own_all = sched.run_deadline is not None
        i, attempt, ok = -1, 0, True
        value: Any = None
        while True:
            transitions: list[Transition] = []
            finished = False
            with lock:
                now = clock()
                if i >= 0:
                    if ok:
                        finished = complete(i, attempt, value, now) >= 0 and bool(finished_hooks)
                    else:
                        transitions = fail(i, attempt, value, now)
                        for t in transitions:
                            if t.retry_at is not None and t.retry_at < self.wake_at:
                                wake(None)
                    if not sched.is_active():
                        wake(None)
                done_at = now
                nxt = -1
                deferred = False  # events to deliver before this worker goes idle
                if sched.to_decide or sched.outbox:
                    transitions = transitions + self._settle_decisions()
                if not self._dismissed(me):
                    nxt = start_next(now)
                    deferred = nxt < 0 and (finished or bool(transitions)) and sched.is_active()
                    while nxt < 0 and sched.is_active() and not deferred:
                        self.idle += 1
                        work.wait()
                        self.idle -= 1
                        if self._dismissed(me):
                            break
                        now = clock()
                        nxt = start_next(now)
                if nxt >= 0:
                    if sched.ready_count and self.idle:
                        work.notify(min(sched.ready_count, self.idle))
                    timeout = timeouts[nxt]
                    if timeout is not None:
                        owner[nxt] = me
                        if now + timeout < self.wake_at:
                            wake(None)
                    elif own_all or cancellable:  # a run deadline or cancel_rest may stop it
                        owner[nxt] = me
                    next_attempt = attempts[nxt]
            if finished:
                run.emit_finished(i, attempt, done_at)
            if transitions:
                report(transitions)
            if deferred:
                i = -1  # events delivered: now wait for work like any idle worker
                continue
            if nxt < 0:
                return
            i, attempt = nxt, next_attempt
            if started_hooks:
                run.emit_started(i, attempt, now)
            try:
                ok, value = call(i, attempt)
            except Exception as error:  # from around the unit (its cache): fails the unit
                ok, value = False, error
            # What interrupts the run (KeyboardInterrupt, SystemExit) goes on to _work.


def _wait_time(seconds: float) -> float:
    """``seconds`` capped at what a lock wait accepts (deadlines may be far away)."""
    return min(seconds, threading.TIMEOUT_MAX)
