"""ASYNC: coroutine units run as tasks on one event loop; plain functions run on a thread pool.

The driver is itself a coroutine (:meth:`AsyncBackend.arun`), so a partitioner can run
inside a loop that is already running (``await partitioner.aexecute(...)``, in a web server
say) and its units share that loop. ``execute(..., ExecutionMode.ASYNC)`` from synchronous
code runs the driver with ``asyncio.run``.

* ``async def`` units become tasks; a timeout or a cancellation cancels the task.
* Plain functions run on a pool of ``max_workers`` daemon threads (default
  ``min(32, cpu_count + 4)``, as ``ThreadPoolExecutor``), so a blocking call never blocks
  the loop. The driver starts a plain function only when a pool thread is free, so its
  timeout counts from when it really starts (coroutine units and plain functions wait in
  separate ready queues, so a full pool never holds a coroutine back). If such a function
  returns an awaitable (``lambda ctx: client.fetch(ctx["url"])``), it is awaited on the
  loop. A thread cannot be stopped: at its timeout the unit is TIMEOUT and its thread is
  abandoned and replaced, as in THREAD mode; one that had not started never starts.
* ``max_workers`` caps how many units run at once, coroutines and threads together (None:
  no cap on coroutines, as with ``asyncio.gather``).
* Outcomes travel as ``(ok, result or exception, metrics)`` values, never as exceptions set
  on a future: an asyncio future refuses ``StopIteration``, and a ``KeyboardInterrupt``
  escaping a task stops the loop. One a unit raises (or ``SystemExit``) stops the run as
  Ctrl-C would and is re-raised by ``execute``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any

from .._errors import UnitCancelledError, UnitInterrupt, interrupts_run
from ._base import Backend
from ._lanes import FutureLane, Lane
from ._pool import DaemonPool, default_thread_workers

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._graph import Graph
    from .._run import Run
    from .._scheduler import Transition
    from ._lanes import Outcome

__all__ = ["AsyncBackend", "AsyncLane", "PlainCalls", "call_async", "check_no_running_loop"]

#: ``(ok, result or exception, metrics)``: how an attempt ends on the loop.
AttemptOutcome = tuple[bool, Any, "dict[str, Any] | None"]

#: How long closing a lane waits for its cancelled tasks to run their cleanup.
_CLEANUP_SECONDS = 5.0


def _failed(error: BaseException) -> AttemptOutcome:
    """The outcome of an attempt that raised ``error`` on the loop or in a pool thread.

    Raises:
        asyncio.CancelledError: The driver is cancelling this task (timeout, cancel).
        UnitInterrupt: The unit raised what interrupts the run (``interrupts_run``).
    """
    if isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise error  # cancelled by the driver (timeout, cancel, Ctrl-C)
        # Otherwise the unit raised CancelledError itself: a failure of the unit, which
        # must not leave it RUNNING forever.
    if interrupts_run(error):
        raise UnitInterrupt(error) from None
    return False, error, None


async def call_async(run: Run, i: int, attempt: int) -> AttemptOutcome:
    """Run one attempt of a coroutine unit on the current loop."""
    cache = run.cache
    if cache is not None:
        hit, cached = run.lookup_cached(i)
        if hit:
            return True, cached, None
    ctx = run.context_for(i, attempt)
    try:
        value = await run.graph.units[i].function(ctx)
    except BaseException as error:  # a unit may raise anything: see _failed
        return _failed(error)
    if cache is not None:
        run.remember(i, attempt, value)
    return True, value, ctx.metrics


async def finish_plain(
    run: Run, i: int, attempt: int, called: asyncio.Future[Any]
) -> AttemptOutcome:
    """Wait for a plain unit's call in a pool thread; await what it returned if awaitable."""
    ok, value, ctx = await called
    if not ok:
        return _failed(value)
    if ctx is None:  # served from the cache
        return True, value, None
    if inspect.isawaitable(value):
        try:
            value = await value
        except BaseException as error:  # what the unit's awaitable raised
            return _failed(error)
    if run.cache is not None:
        run.remember(i, attempt, value)
    return True, value, ctx.metrics


class PlainCalls:
    """Plain functions of one run called on a :class:`DaemonPool`, as futures of the loop.

    Args:
        run: The run.
        loop: The loop whose futures receive the outcomes.
        size: How many threads.
        on_free: Called when a thread becomes free without an outcome (wakes the driver).
    """

    def __init__(
        self,
        run: Run,
        loop: asyncio.AbstractEventLoop,
        size: int,
        on_free: Callable[[], None],
    ) -> None:
        """Start the pool's threads."""
        self._run = run
        self._loop = loop
        self._futures: dict[tuple[int, int], asyncio.Future[Any]] = {}
        self._on_free = on_free
        self._pool: DaemonPool[tuple[int, int]] = DaemonPool(
            size, "quantum-partitioner-async", self._call, self._deliver, on_free
        )
        self._pool.start()

    @property
    def free(self) -> int:
        """How many threads can start a function now."""
        return self._pool.free

    def start(self, i: int, attempt: int) -> asyncio.Future[Any]:
        """Hand attempt ``attempt`` of unit ``i`` to a thread (call in the loop's thread).

        Returns:
            The future of ``(ok, result or exception, ctx)`` (``ctx`` None for a cache
            hit). Cancelling it abandons the call: dropped if it has not started.
        """
        key = (i, attempt)
        future = self._loop.create_future()
        self._futures[key] = future
        future.add_done_callback(functools.partial(self._forget, key))
        self._pool.submit(key)
        return future

    def close(self) -> None:
        """Let the threads exit; calls not yet started never start."""
        self._pool.close()

    def _forget(self, key: tuple[int, int], future: asyncio.Future[Any]) -> None:
        self._futures.pop(key, None)
        if future.cancelled():
            self._pool.abandon(key)

    def _call(self, key: tuple[int, int]) -> tuple[bool, Any, Any] | None:
        """In a pool thread: the cache, then the function (it must not raise).

        None: the attempt was abandoned, or its timeout passed, before this thread got to
        it; it never starts (the driver times it out or has dropped it).
        """
        run = self._run
        i, attempt = key
        if not run.still_wanted(i, attempt):
            return None
        try:
            cache = run.cache
            if cache is not None:
                hit, value = run.lookup_cached(i)
                if hit:
                    return True, value, None
            ctx = run.context_for(i, attempt)
            value = run.graph.units[i].function(ctx)
        except BaseException as error:  # a unit may raise anything: judged on the loop
            return False, error, None
        return True, value, ctx

    def _deliver(self, key: tuple[int, int], outcome: tuple[bool, Any, Any] | None) -> None:
        if outcome is None:
            self._on_free()  # not run: its thread is free for the next one
            return
        # A closed loop raises RuntimeError: nobody waits for this late outcome any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle, key, outcome)

    def _settle(self, key: tuple[int, int], outcome: tuple[bool, Any, Any]) -> None:
        future = self._futures.get(key)
        if future is not None and not future.done():
            future.set_result(outcome)


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


#: A started attempt: its number, its task, and the future of its call in a pool thread.
_Entry = tuple[int, "asyncio.Task[AttemptOutcome]", "asyncio.Future[Any] | None"]


def _abandon(entry: _Entry, cleaning: set[asyncio.Task[Any]]) -> None:
    """Cancel a started attempt; its task joins ``cleaning`` until it has run its cleanup."""
    task = entry[1]
    task.cancel()
    if not task.done():
        cleaning.add(task)
        task.add_done_callback(cleaning.discard)
    if entry[2] is not None:
        entry[2].cancel()  # also when the task never ran: the call must not start


async def _let_clean_up(tasks: set[asyncio.Task[Any]]) -> None:
    """Wait (a bounded time) until cancelled tasks have run their ``finally`` blocks.

    Once the driver returns, ``asyncio.run`` cancels what is left once more, which would cut
    a cleanup that awaits short. A unit that ignores its cancellation does not hold the run:
    ``asyncio.run`` would wait for it without end, so its coroutine is closed (it receives
    ``GeneratorExit`` where it waits) and its task ends at the next cancellation.
    """
    if not tasks:
        return
    await asyncio.wait(set(tasks), timeout=_CLEANUP_SECONDS)
    stubborn = [task for task in tasks if not task.done()]
    for task in stubborn:
        # Its finally blocks run now; one that awaits there raises RuntimeError: ignored.
        with contextlib.suppress(Exception):
            task.get_coro().close()
        task.cancel()
    if stubborn:
        await asyncio.wait(stubborn, timeout=_CLEANUP_SECONDS)
        for task in stubborn:
            if task.done() and not task.cancelled():
                task.exception()  # seen: its closed coroutine could not go on (RuntimeError)


class AsyncBackend(Backend):
    """Run units on an event loop (see the module docstring).

    Args:
        max_workers: How many units may run at once, and the size of the thread pool for
            plain functions; None: no cap on coroutines, and the default pool size.

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

    def lane_of(self, graph: Graph) -> list[int] | None:
        """Coroutine units in lane 0, plain functions in lane 1, when the graph has both.

        A plain function waits for a free thread in its own ready queue, so it never holds
        back a coroutine that could start.
        """
        lanes = [0 if inspect.iscoroutinefunction(u.function) else 1 for u in graph.units]
        return lanes if 0 in lanes and 1 in lanes else None

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
            # Pool threads call this too, possibly once the run is over and the loop closed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

        run.wake = wake_up
        plain_units = run.is_async.count(False)
        plain = None
        if plain_units:
            size = self.max_workers or default_thread_workers()
            if not run.graph.maps:  # else maps may add plain functions: keep the full pool
                size = min(size, plain_units)
            plain = PlainCalls(run, loop, size, wake_up)
        tasks: dict[int, _Entry] = {}
        cleaning: set[asyncio.Task[Any]] = set()
        try:
            await self._drive(run, wake, tasks, plain, cleaning)
        except BaseException as error:
            for entry in tasks.values():
                _abandon(entry, cleaning)
            run.report(run.interrupt("interrupted", error))
            raise
        finally:
            run.wake = previous_wake
            if plain is not None:
                plain.close()
            await _let_clean_up(cleaning)

    async def _drive(
        self,
        run: Run,
        wake: asyncio.Event,
        tasks: dict[int, _Entry],
        plain: PlainCalls | None,
        cleaning: set[asyncio.Task[Any]],
    ) -> None:
        sched, clock, is_async = run.scheduler, run.clock, run.is_async
        limit = self.max_workers
        finished: list[tuple[int, int, asyncio.Task[AttemptOutcome]]] = []
        # A lane holding plain functions starts units only while a pool thread is free.
        needs_thread = [False] * sched.lanes
        lane_of = sched.lane_of
        for i, coroutine in enumerate(is_async):
            if not coroutine:
                needs_thread[lane_of[i]] = True

        def on_done(i: int, attempt: int, task: asyncio.Task[AttemptOutcome]) -> None:
            finished.append((i, attempt, task))
            wake.set()

        while sched.is_active():
            if run.cancel_requested.is_set():
                transitions = run.stop_requested()
                for entry in tasks.values():
                    _abandon(entry, cleaning)
                run.report(transitions)
                return
            now = clock()
            if sched.has_deadlines:
                _stop_abandoned(run, sched.advance(now), tasks, cleaning)
            if sched.to_decide or sched.outbox:
                _stop_abandoned(run, run.settle_decisions(), tasks, cleaning)
            while limit is None or len(tasks) < limit:
                if plain is None:
                    i = sched.start_next(now)
                else:  # plain functions only while a pool thread is free
                    i = sched.start_first(now, self._allowed(needs_thread, plain))
                if i < 0:
                    break
                attempt = sched.attempts[i]
                if run.dispatcher.unit_started:
                    run.emit_started(i, attempt, now)
                called = None
                if is_async[i]:
                    task = asyncio.create_task(call_async(run, i, attempt))
                else:
                    assert plain is not None
                    called = plain.start(i, attempt)
                    task = asyncio.create_task(finish_plain(run, i, attempt, called))
                task.add_done_callback(functools.partial(on_done, i, attempt))
                tasks[i] = (attempt, task, called)
            if finished:
                # In the order they ended (events, stream records); tasks' done callbacks
                # run from the loop, never while this runs, so the list does not grow here.
                for i, attempt, task in finished:
                    current = tasks.get(i)
                    if current is not None and current[0] == attempt:
                        del tasks[i]
                    self._settle(run, i, attempt, task)
                finished.clear()
            if (
                not sched.is_active()
                or (
                    sched.ready_count
                    and (limit is None or len(tasks) < limit)
                    and (plain is None or sched.best_lane(self._allowed(needs_thread, plain)) >= 0)
                )
                or sched.to_decide
                or sched.outbox
            ):
                continue
            deadline = sched.next_deadline()
            wake.clear()
            if finished or run.cancel_requested.is_set():
                continue
            timeout = None if deadline is None else max(0.0, deadline - clock())
            try:
                async with asyncio.timeout(timeout):
                    await wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _allowed(needs_thread: list[bool], plain: PlainCalls) -> list[bool]:
        """Which lanes may start a unit now: a lane of plain functions needs a free thread."""
        free = plain.free > 0
        return [free or not gated for gated in needs_thread]

    @staticmethod
    def _settle(run: Run, i: int, attempt: int, task: asyncio.Task[AttemptOutcome]) -> None:
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
            ok, value, metrics = task.result()
            if not ok:
                run.report(sched.fail(i, attempt, value, now))
                return
            if metrics:
                run.keep_attempt_metrics(i, attempt, metrics)
            if sched.complete(i, attempt, value, now) >= 0 and run.dispatcher.unit_finished:
                run.emit_finished(i, attempt, now)
        elif isinstance(error, UnitInterrupt):
            # Raised once every outcome at hand is settled, so none of them is lost.
            run.hand_over_interrupt(error.error)
        else:
            run.report(sched.fail(i, attempt, error, now))


def _stop_abandoned(
    run: Run,
    transitions: list[Transition],
    tasks: dict[int, _Entry],
    cleaning: set[asyncio.Task[Any]],
) -> None:
    """Abandon the attempts the scheduler stopped (timeouts, cancel_rest), then report."""
    for t in transitions:
        abandoned = tasks.pop(t.index, None) if t.was_running else None
        if abandoned is not None:
            _abandon(abandoned, cleaning)
    run.report(transitions)


class AsyncLane(FutureLane):
    """Coroutine units of a mixed run, on an event loop in a background thread.

    Plain functions sent here (``resource_type: "async"``) run on a pool of ``max_workers``
    threads (default ``min(32, cpu_count + 4)``) and their awaitables on the loop. Send them
    through :meth:`plain_functions`, a lane of their own, so that each starts only when a
    thread is free (its timeout counts from then, not from a wait for a thread) and a busy
    pool never holds back a coroutine.
    """

    name = "async"
    calls_in_process = True  # call_async consults the run's cache itself

    def __init__(self, max_workers: int | None = None) -> None:
        """Set the concurrency cap (None: no cap)."""
        self.capacity = max_workers
        self._futures = {}
        #: How many threads run the plain functions sent here.
        self.threads = max_workers or default_thread_workers()
        self._plain_functions: _PlainFunctions | None = None

    def plain_functions(self) -> Lane:
        """The lane for the plain functions this lane runs: on its threads, within its cap."""
        if self._plain_functions is None:
            self._plain_functions = _PlainFunctions(self)
        return self._plain_functions

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Start the loop's thread."""
        super().open(run, post)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="quantum-partitioner-loop", daemon=True
        )
        self._thread.start()
        self._plain: PlainCalls | None = None

    def has_room(self) -> bool:
        """Whether fewer than ``max_workers`` units are running on the loop."""
        return self.capacity is None or len(self._futures) < self.capacity

    def submit(self, i: int, attempt: int) -> None:
        """Schedule the attempt on the loop."""
        run = self._run
        coroutine = call_async(run, i, attempt) if run.is_async[i] else self._call_plain(i, attempt)
        self._watch(i, attempt, asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    async def _call_plain(self, i: int, attempt: int) -> AttemptOutcome:
        if self._plain is None:  # the first plain function of the run starts the pool
            self._plain = PlainCalls(self._run, self._loop, self.threads, lambda: self._post(None))
        return await finish_plain(self._run, i, attempt, self._plain.start(i, attempt))

    def close(self, *, cancel: bool) -> None:
        """Cancel what runs, let it clean up (``finally`` blocks), then stop the loop."""
        del cancel
        super().close(cancel=True)
        done = asyncio.run_coroutine_threadsafe(self._shut_down(), self._loop)
        # A unit that ignores its cancellation must not hold the run: stop the loop anyway.
        with contextlib.suppress(TimeoutError):
            done.result(timeout=3 * _CLEANUP_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_CLEANUP_SECONDS)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shut_down(self) -> None:
        """Cancel every task left on the loop and wait until each has run its cleanup."""
        if self._plain is not None:
            self._plain.close()
        me = asyncio.current_task()
        tasks = {task for task in asyncio.all_tasks() if task is not me}
        for task in tasks:
            if not task.cancelling():  # cancelling twice would cut its cleanup short
                task.cancel()
        await _let_clean_up(tasks)


class _PlainFunctions(Lane):
    """The plain functions of an :class:`AsyncLane`, as a lane (a ready queue) of their own.

    It hands an attempt over only while one of the lane's threads is not taken, so the
    attempt starts at once; the lane runs it. A thread stuck in an abandoned attempt is
    replaced by the pool, so abandoning frees its place here.
    """

    name = "async"
    calls_in_process = True
    size = 0  # its attempts count in the AsyncLane's capacity

    def __init__(self, lane: AsyncLane) -> None:
        """Serve ``lane``'s plain functions."""
        self._lane = lane
        self._taken = 0

    def has_room(self) -> bool:
        """Whether a thread is not taken and the lane's cap allows one more."""
        return self._taken < self._lane.threads and self._lane.has_room()

    def submit(self, i: int, attempt: int) -> None:
        """Hand the attempt to the lane, for a thread."""
        self._taken += 1
        self._lane.submit(i, attempt)

    def settled(self, i: int, attempt: int) -> None:
        """Its thread is free."""
        self._taken -= 1
        self._lane.settled(i, attempt)

    def abandon(self, i: int, attempt: int) -> None:
        """Drop the attempt (or retire its thread for a fresh one)."""
        self._taken -= 1
        self._lane.abandon(i, attempt)
