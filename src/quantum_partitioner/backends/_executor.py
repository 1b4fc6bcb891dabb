"""CUSTOM: attempts run on any ``concurrent.futures.Executor`` the caller owns.

The driver keeps at most as many attempts in flight as the executor has workers (its
``_max_workers`` when it says, else ``max_workers``): handing it everything that is ready
would let the executor's FIFO queue, not the scheduler, decide the order, and a unit's
timeout would count time spent waiting in that queue. Each attempt is sent as one call of
:func:`call_unit` with the unit's function and its context (which pickles with only the
unit's own inputs), so process-based executors work with picklable functions.

At a timeout the attempt's future is cancelled if it has not started; if it has, the unit is
TIMEOUT at its deadline, its late result is discarded, and the executor's worker stays busy
until the function returns: only the executor can stop its workers. The executor is never
shut down here: it belongs to the caller.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import queue
from typing import TYPE_CHECKING, Any

from .._errors import InternalError
from ._base import Backend

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor, Future

    from .._context import ExecutionContext
    from .._run import Run
    from .._scheduler import Transition

__all__ = ["ExecutorBackend", "call_unit"]

_Outcome = tuple[int, int, "Future[Any]"] | None


def call_unit(
    function: Callable[[ExecutionContext], Any], ctx: ExecutionContext
) -> tuple[Any, dict[str, Any] | None]:
    """Call one unit where the executor runs it; return its result and recorded metrics."""
    is_async = inspect.iscoroutinefunction(function)
    value = asyncio.run(function(ctx)) if is_async else function(ctx)
    return value, ctx.metrics


class ExecutorBackend(Backend):
    """Run attempts on a caller's ``concurrent.futures.Executor``.

    Args:
        executor: Where attempts run; it is not shut down by the run.
        max_workers: Attempts in flight at once when the executor does not say.

    .. versionadded:: 0.1
    """

    name = "custom"

    def __init__(self, executor: Executor, max_workers: int | None = None) -> None:
        """Wrap ``executor``."""
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(
                f"custom_executor must be a concurrent.futures.Executor, got {executor!r}"
            )
        self.executor = executor
        own = getattr(executor, "_max_workers", None)
        self.max_in_flight = own if isinstance(own, int) and own > 0 else (max_workers or 32)

    def run(self, run: Run) -> None:
        """Drive ``run``, submitting attempts to the executor."""
        outcomes: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        in_flight: dict[int, Future[Any]] = {}
        previous_wake, run.wake = run.wake, functools.partial(outcomes.put, None)
        try:
            self._drive(run, outcomes, in_flight)
        except BaseException as error:
            for future in in_flight.values():
                future.cancel()
            run.report(run.interrupt("interrupted", error))
            raise
        finally:
            run.wake = previous_wake

    def _drive(
        self,
        run: Run,
        outcomes: queue.SimpleQueue[_Outcome],
        in_flight: dict[int, Future[Any]],
    ) -> None:
        sched, clock = run.scheduler, run.clock
        while sched.is_active():
            if run.cancel_requested.is_set():
                for future in in_flight.values():
                    future.cancel()
                run.report(run.interrupt("cancel() was called"))
                return
            now = clock()
            if sched.has_deadlines:
                self._expire(run, sched.advance(now), in_flight)
            while len(in_flight) < self.max_in_flight:
                i = sched.start_next(now)
                if i < 0:
                    break
                self._submit(run, i, outcomes, in_flight)
            deadline = sched.next_deadline()
            if not in_flight and deadline is None:
                if sched.is_active() and not sched.ready_count:
                    raise InternalError("no unit is ready, running or waiting")
                continue
            timeout = None if deadline is None else max(0.0, deadline - clock())
            try:
                item = outcomes.get(timeout=timeout)
            except queue.Empty:
                continue
            while True:
                if item is not None:
                    self._settle(run, item, in_flight)
                try:
                    item = outcomes.get_nowait()
                except queue.Empty:
                    break

    def _submit(
        self,
        run: Run,
        i: int,
        outcomes: queue.SimpleQueue[_Outcome],
        in_flight: dict[int, Future[Any]],
    ) -> None:
        sched = run.scheduler
        attempt = sched.attempts[i]
        if run.dispatcher.unit_started:
            run.emit_started(i, attempt, sched.started[i])
        ctx = run.context_for(i, attempt)
        try:
            future = self.executor.submit(call_unit, run.graph.units[i].function, ctx)
        except Exception as error:  # a shut-down or broken executor fails the attempt
            run.report(sched.fail(i, attempt, error, run.clock()))
            return
        in_flight[i] = future
        future.add_done_callback(lambda f: outcomes.put((i, attempt, f)))

    def _settle(
        self, run: Run, item: tuple[int, int, Future[Any]], in_flight: dict[int, Any]
    ) -> None:
        i, attempt, future = item
        if in_flight.get(i) is future:
            del in_flight[i]
        sched = run.scheduler
        now = run.clock()
        if future.cancelled():
            return  # cancelled by a timeout or an interrupt: already reported
        error = future.exception()
        if error is None:
            value, metrics = future.result()
            if metrics:
                run.unit_metrics[i] = metrics
            if sched.complete(i, attempt, value, now) >= 0 and run.dispatcher.unit_finished:
                run.emit_finished(i, attempt, now)
        else:
            run.report(sched.fail(i, attempt, error, now))

    @staticmethod
    def _expire(run: Run, transitions: list[Transition], in_flight: dict[int, Future[Any]]) -> None:
        for t in transitions:
            if t.was_running:
                future = in_flight.pop(t.index, None)
                if future is not None:
                    future.cancel()
        run.report(transitions)
