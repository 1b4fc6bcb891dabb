"""ASYNC: coroutine units run as tasks on one event loop; plain functions run in threads.

The driver is itself a coroutine (:meth:`AsyncBackend.arun`), so a partitioner can run
inside a loop that is already running (``await partitioner.aexecute(...)``, in a web server
say) and its units share that loop. ``execute(..., ExecutionMode.ASYNC)`` from synchronous
code runs the driver with ``asyncio.run``.

* ``async def`` units become tasks; a timeout or a cancellation cancels the task.
* Plain functions run in a daemon thread each, so a blocking call never blocks the loop; if
  such a function returns an awaitable (``lambda ctx: client.fetch(ctx["url"])``), it is
  awaited on the loop. A thread cannot be stopped: at its timeout the unit is TIMEOUT and the
  thread is abandoned, as in THREAD mode.
* ``max_workers`` caps how many units run at once (None: no cap, as with
  ``asyncio.gather``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any

from .._errors import UnitCancelledError
from ._base import Backend
from ._lanes import FutureLane

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._run import Run
    from .._scheduler import Transition
    from ._lanes import Outcome

__all__ = ["AsyncBackend", "AsyncLane", "call_async", "check_no_running_loop"]


async def call_async(run: Run, i: int, attempt: int) -> tuple[Any, dict[str, Any] | None]:
    """Run one attempt on the current loop: await a coroutine unit, thread a plain one."""
    cache = run.cache
    if cache is not None:
        hit, cached = cache.lookup(run, i)
        if hit:
            return cached, None
    function = run.graph.units[i].function
    ctx = run.context_for(i, attempt)
    try:
        if inspect.iscoroutinefunction(function):
            value = await function(ctx)
        else:
            value = await _in_daemon_thread(function, ctx)
            if inspect.isawaitable(value):
                value = await value
    except asyncio.CancelledError as error:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # cancelled by the driver (timeout, cancel, Ctrl-C)
        # The unit itself raised CancelledError: that is a failure of the unit, not a
        # cancellation of the run, and must not leave it RUNNING forever.
        msg = f"unit {run.graph.names[i]!r} raised CancelledError"
        raise RuntimeError(msg) from error
    if cache is not None:
        cache.remember(run, i, value)
    return value, ctx.metrics


def _in_daemon_thread(function: Callable[[Any], Any], ctx: Any) -> asyncio.Future[Any]:
    """Call ``function(ctx)`` in a fresh daemon thread; a stuck call never blocks exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return  # cancelled by a timeout: the late outcome is dropped
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            value = function(ctx)
        except BaseException as error:
            outcome = (False, error)
        else:
            outcome = (True, value)
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=f"quantum-partitioner-{ctx.unit_id}", daemon=True).start()
    return future


def check_no_running_loop() -> None:
    """Raise if called inside a running event loop, where ``asyncio.run`` cannot work.

    Raises:
        RuntimeError: A loop is running in this thread: use ``aexecute`` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "execute(..., ExecutionMode.ASYNC) was called inside a running event loop; "
        "use `await partitioner.aexecute(...)` there"
    )


class AsyncBackend(Backend):
    """Run units on an event loop (see the module docstring).

    Args:
        max_workers: How many units may run at once; None for no limit.

    .. versionadded:: 0.1
    """

    name = "async"

    def __init__(self, max_workers: int | None = None) -> None:
        """Set the concurrency cap."""
        if max_workers is not None and max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers

    @property
    def concurrency(self) -> int | None:
        """The cap on concurrent units, if any."""
        return self.max_workers

    def run(self, run: Run) -> None:
        """Run the driver with ``asyncio.run`` (there must be no running loop here).

        Raises:
            RuntimeError: Called from inside a running event loop: use ``aexecute``.
        """
        check_no_running_loop()
        asyncio.run(self.arun(run))

    async def arun(self, run: Run) -> None:
        """Drive ``run`` on the running loop until every unit is terminal."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        previous_wake = run.wake

        def wake_up() -> None:
            loop.call_soon_threadsafe(wake.set)

        run.wake = wake_up
        tasks: dict[int, tuple[int, asyncio.Task[Any]]] = {}
        try:
            await self._drive(run, wake, tasks)
        except BaseException as error:
            for _, task in tasks.values():
                task.cancel()
            run.report(run.interrupt("interrupted", error))
            raise
        finally:
            run.wake = previous_wake

    async def _drive(
        self, run: Run, wake: asyncio.Event, tasks: dict[int, tuple[int, asyncio.Task[Any]]]
    ) -> None:
        sched, clock = run.scheduler, run.clock
        limit = self.max_workers
        finished: list[tuple[int, int, asyncio.Task[Any]]] = []

        def on_done(i: int, attempt: int, task: asyncio.Task[Any]) -> None:
            finished.append((i, attempt, task))
            wake.set()

        while sched.is_active():
            if run.cancel_requested.is_set():
                for _, task in tasks.values():
                    task.cancel()
                run.report(run.interrupt("cancel() was called"))
                return
            now = clock()
            if sched.has_deadlines:
                _stop_abandoned(run, sched.advance(now), tasks)
            if sched.to_decide or sched.outbox:
                _stop_abandoned(run, run.settle_decisions(), tasks)
            while limit is None or len(tasks) < limit:
                i = sched.start_next(now)
                if i < 0:
                    break
                attempt = sched.attempts[i]
                if run.dispatcher.unit_started:
                    run.emit_started(i, attempt, now)
                task = asyncio.create_task(call_async(run, i, attempt))
                task.add_done_callback(functools.partial(on_done, i, attempt))
                tasks[i] = (attempt, task)
            while finished:
                i, attempt, task = finished.pop()
                entry = tasks.get(i)
                if entry is not None and entry[0] == attempt:
                    del tasks[i]
                self._settle(run, i, attempt, task)
            if (
                not sched.is_active()
                or (sched.ready_count and (limit is None or len(tasks) < limit))
                or sched.to_decide
                or sched.outbox
            ):
                continue
            deadline = sched.next_deadline()
            wake.clear()
            if finished:
                continue
            timeout = None if deadline is None else max(0.0, deadline - clock())
            try:
                async with asyncio.timeout(timeout):
                    await wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _settle(run: Run, i: int, attempt: int, task: asyncio.Task[Any]) -> None:
        sched = run.scheduler
        now = run.clock()
        if task.cancelled():
            # Usually the driver's own doing (timeout, cancel), and then this attempt is no
            # longer current and fail() ignores it; otherwise it must not stay RUNNING.
            reason = UnitCancelledError(run.graph.names[i], "its task was cancelled")
            run.report(sched.fail(i, attempt, reason, now))
            return
        error = task.exception()
        if error is None:
            value, metrics = task.result()
            if metrics:
                run.unit_metrics[i] = metrics
            if sched.complete(i, attempt, value, now) >= 0 and run.dispatcher.unit_finished:
                run.emit_finished(i, attempt, now)
        else:
            run.report(sched.fail(i, attempt, error, now))


def _stop_abandoned(
    run: Run, transitions: list[Transition], tasks: dict[int, tuple[int, asyncio.Task[Any]]]
) -> None:
    """Cancel the tasks of attempts the scheduler stopped (timeouts, cancel_rest); report."""
    for t in transitions:
        entry = tasks.pop(t.index, None) if t.was_running else None
        if entry is not None:
            entry[1].cancel()
    run.report(transitions)


class AsyncLane(FutureLane):
    """Coroutine units of a mixed run, on an event loop in a background thread."""

    name = "async"
    calls_in_process = True  # call_async consults the run's cache itself

    def __init__(self, max_workers: int | None = None) -> None:
        """Set the concurrency cap (None: no cap)."""
        self.capacity = max_workers
        self._futures = {}

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Start the loop's thread."""
        super().open(run, post)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="quantum-partitioner-loop", daemon=True
        )
        self._thread.start()

    def has_room(self) -> bool:
        """Whether fewer than ``max_workers`` units are running on the loop."""
        return self.capacity is None or len(self._futures) < self.capacity

    def submit(self, i: int, attempt: int) -> None:
        """Schedule the attempt on the loop."""
        coroutine = call_async(self._run, i, attempt)
        self._watch(i, attempt, asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def close(self, *, cancel: bool) -> None:
        """Cancel what runs (the loop stops either way), stop the loop and its thread."""
        del cancel
        super().close(cancel=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
