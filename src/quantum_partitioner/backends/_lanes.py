"""A driver for backends that hand attempts to somewhere else: executors, processes, loops.

The :class:`LaneBackend` runs in the calling thread and owns the scheduler. It starts ready
units on one or more :class:`Lane` objects (a thread pool, a process pool, an event loop,
a user's executor) and waits on one queue into which every lane posts outcomes, from any
thread. Several lanes make a mixed run: each unit goes to the lane its
``metadata["resource_type"]`` names, and the scheduler keeps one ready queue per lane so a
full lane never holds back another. There is still one scheduler and one graph.

A lane only runs attempts: the driver tells it to ``submit`` one, to ``abandon`` one that
timed out or was cancelled, and that an outcome was ``settled``; the lane posts
``(index, attempt, ok, value_or_error, metrics)`` when an attempt ends, or ``None`` to wake
the driver (for example when a replacement worker is ready). A failure's metrics hold only
the ``ctx.pause_limit`` calls of an attempt that ran elsewhere (or are None).

A lane whose attempts run in the caller's process hands a ``KeyboardInterrupt`` or
``SystemExit`` a unit raised to the driver (``Run.hand_over_interrupt``) instead of posting
it: the driver then stops the run as for Ctrl-C and raises it. Raised in another process,
they are posted like any failure and fail the unit (``interrupts_run``).
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from .._errors import InternalError, UnitCancelledError, UnitInterrupt
from ._base import Backend, CarriedBaseException

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._graph import Graph, QuantumUnit
    from .._run import Run
    from .._scheduler import Transition

__all__ = ["FutureLane", "Lane", "LaneBackend", "Outcome", "Post"]

#: The longest single wait; far deadlines are waited for in steps (lock waits overflow).
_MAX_WAIT = 3600.0

#: ``(index, attempt, ok, result or exception, metrics)``, or None to wake the driver.
Outcome = tuple[int, int, bool, Any, "dict[str, Any] | None"] | None
Post = "Callable[[Outcome], None]"


class Lane(ABC):
    """Somewhere attempts run, driven by a :class:`LaneBackend`.

    .. versionadded:: 0.1
    """

    #: The name units see as ``ctx.environment["execution_mode"]``.
    name = "lane"
    #: Its place among its backend's lanes: the scheduler's ready queue it starts from.
    index = 0
    #: Whether :meth:`ended_at` says when attempts ended (else the driver's clock does).
    knows_end_times = False
    #: Whether attempts go through ``Run.call`` (which consults the run's cache itself);
    #: otherwise the driver looks results up before ``submit`` and stores them after.
    calls_in_process = False
    #: Whether ``submit`` may run the attempt before it returns (a user's executor may):
    #: the driver then settles that outcome, and acts on what is due, before it hands over
    #: the next attempt, and ``ctx.cancelled`` reads the clock, as in SEQUENTIAL.
    may_run_in_submit = False

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:  # noqa: B027 - optional hook
        """Prepare to run attempts of ``run``; outcomes go to ``post`` (any thread)."""

    @abstractmethod
    def has_room(self) -> bool:
        """Whether another attempt can start now (called by the driver only)."""

    @abstractmethod
    def submit(self, i: int, attempt: int) -> None:
        """Start attempt ``attempt`` of unit ``i``; post its outcome when it ends."""

    def settled(self, i: int, attempt: int) -> None:  # noqa: B027 - optional hook
        """The driver received the outcome of that attempt: its slot is free.

        Called before the outcome is applied: a lane that knows when the attempt really
        started (a worker process stamps it) may set ``run.scheduler.started[i]``.
        """

    def ended_at(self, i: int, attempt: int) -> float:
        """When that settled attempt really ended (the run's clock), or -1 if not known.

        For lanes with ``knows_end_times``, whose attempts run where the end is stamped (a
        worker process): the driver receives an outcome later than it happened.
        """
        del i, attempt
        return -1.0

    def abandon(self, i: int, attempt: int) -> None:  # noqa: B027 - optional hook
        """Stop that attempt if possible (timeout, cancel); its outcome will be ignored."""

    def close(self, *, cancel: bool) -> None:  # noqa: B027 - optional hook
        """Release resources; with ``cancel``, stop what still runs."""


class FutureLane(Lane):
    """A lane whose attempts are ``concurrent.futures``-style futures.

    Each future resolves to ``(ok, result or exception, metrics)``, or raises: an error from
    the executor itself (the attempt fails with it), or :class:`UnitInterrupt` for a
    ``KeyboardInterrupt`` or ``SystemExit`` a unit raised in the caller's process (handed to
    the driver). Subclasses start an attempt and hand its future to :meth:`_watch`;
    settling, abandoning (cancelling the future) and closing are shared.
    """

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Remember the run and where outcomes go."""
        self._run = run
        self._post = post
        self._futures: dict[int, Any] = {}

    def _watch(self, i: int, attempt: int, future: Any) -> None:
        """Post the attempt's outcome when ``future`` ends (a cancelled one is reported)."""
        self._futures[i] = future
        post = self._post

        def done(f: Any) -> None:
            if f.cancelled():
                # Usually the driver's own doing (timeout, interrupt): that attempt is no
                # longer current and the driver ignores this. If someone else cancelled it
                # (an executor shut down), the unit must not stay RUNNING forever.
                reason = UnitCancelledError(self._run.graph.names[i], "its future was cancelled")
                post((i, attempt, False, reason, None))
                return
            error = f.exception()
            if error is None:
                ok, value, metrics = f.result()
                post((i, attempt, ok, value, metrics))
            elif isinstance(error, UnitInterrupt):
                self._run.hand_over_interrupt(error.error)
            elif isinstance(error, CarriedBaseException):  # raised in another process
                carried = error.error.with_traceback(error.__traceback__)
                if carried.__cause__ is None:  # a process pool's remote traceback
                    carried.__cause__ = error.__cause__
                post((i, attempt, False, carried, error.metrics))
            else:
                post((i, attempt, False, error, None))

        future.add_done_callback(done)

    def settled(self, i: int, attempt: int) -> None:
        """Forget the finished future."""
        del attempt
        self._futures.pop(i, None)

    def abandon(self, i: int, attempt: int) -> None:
        """Cancel the future (a call already running elsewhere may not stop)."""
        del attempt
        future = self._futures.pop(i, None)
        if future is not None:
            future.cancel()

    def close(self, *, cancel: bool) -> None:
        """Cancel what is left when the run was interrupted."""
        if cancel:
            for future in self._futures.values():
                future.cancel()
        self._futures = {}


def _close_lanes(lanes: Sequence[Lane], *, cancel: bool) -> None:
    """Close every lane, even after one raised (Ctrl-C as it waits): the first error is raised.

    A lane left open keeps its workers running.
    """
    error: BaseException | None = None
    for lane in lanes:
        try:
            lane.close(cancel=cancel)
        except BaseException as raised:
            if error is None:
                error = raised
            cancel = True  # interrupted: stop what runs on the lanes after it
    if error is not None:
        raise error


class LaneBackend(Backend):
    """Drive a run over one or more lanes from the calling thread.

    Args:
        lanes: Where attempts run.
        lane_for: Which lane a unit goes to (default: the first lane).
        name: The mode's name.
    """

    def __init__(
        self,
        lanes: Sequence[Lane],
        lane_for: Callable[[QuantumUnit[Any, Any]], int] | None = None,
        name: str | None = None,
    ) -> None:
        """Wrap the lanes."""
        if not lanes:
            raise ValueError("a LaneBackend needs at least one lane")
        self.lanes = list(lanes)
        for k, lane in enumerate(self.lanes):
            lane.index = k
        self.lane_for = lane_for
        self.name = name or self.lanes[0].name
        #: Held while a run is claimed or driven: the lanes follow one run at a time.
        self._driving = threading.Lock()
        #: The claimed run, where its lanes post, and the run's ``wake`` before the claim;
        #: until the run is driven to its end or released.
        self._claimed: tuple[Run, queue.SimpleQueue[Outcome], Callable[[], None]] | None = None

    @property
    def concurrency(self) -> int | None:
        """The lanes' sizes added up (None if one has no limit)."""
        sizes = [getattr(lane, "size", getattr(lane, "capacity", None)) for lane in self.lanes]
        if any(not isinstance(size, int) for size in sizes):
            return None
        return sum(size for size in sizes if isinstance(size, int))

    def lane_of(self, graph: Graph) -> list[int] | None:
        """Each unit's lane, or None when there is one lane."""
        if len(self.lanes) == 1 or self.lane_for is None:
            return None
        lane_for = self.lane_for
        return [lane_for(unit) for unit in graph.units]

    def claim(self, run: Run) -> None:
        """Take ``run`` on and open its lanes (workers start), or refuse it before it begins.

        Raises:
            RuntimeError: The backend is driving another run (its lanes follow one at a
                time: a reused ``ProcessBackend`` shared by two partitioners).
            TypeError: A lane cannot take the run (a context that cannot be sent to worker
                processes); the lanes opened for it are closed again.
        """
        if not self._driving.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is already running a run; it runs one at a "
                "time: give each run that may overlap a backend of its own"
            )
        outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        previous_wake = run.wake
        run.wake = lambda: outcomes.put(None)
        opened: list[Lane] = []
        try:
            for lane in self.lanes:
                lane.open(run, outcomes.put)
                opened.append(lane)
        except BaseException:
            run.wake = previous_wake
            try:
                _close_lanes(opened, cancel=True)
            finally:
                self._driving.release()
            raise
        if any(lane.may_run_in_submit for lane in self.lanes):
            # This driver may not act while an attempt runs (inside submit): ctx.cancelled
            # reads the clock against timeouts and the deadline, as in SEQUENTIAL.
            run.clock_cancels = True
        self._claimed = (run, outcomes, previous_wake)

    def release(self, run: Run) -> None:
        """Close the lanes of a claimed run that was not driven (nothing ran on them).

        As after a run that ended: a reused process lane keeps its idle workers.
        """
        claimed = self._claimed
        if claimed is not None and claimed[0] is run:
            self._let_go(cancel=False)  # nothing ran: idle workers a reused lane keeps stay

    def _let_go(self, *, cancel: bool) -> None:
        """Close the claimed run's lanes (stopping what runs, with ``cancel``); free them."""
        assert self._claimed is not None
        run, _, previous_wake = self._claimed
        self._claimed = None
        run.wake = previous_wake
        try:
            _close_lanes(self.lanes, cancel=cancel)
        finally:
            self._driving.release()

    def run(self, run: Run) -> None:
        """Drive ``run`` (claiming it first, unless it is claimed) until every unit is terminal.

        Raises:
            RuntimeError: The backend is driving another run; before any unit runs.
        """
        claimed = self._claimed
        if claimed is None or claimed[0] is not run:
            self.claim(run)
            claimed = self._claimed
            assert claimed is not None
        cancel = True
        try:
            self._drive(run, claimed[1])
            cancel = False
        except BaseException as error:
            run.report(run.interrupt("interrupted", error))
            raise
        finally:
            self._let_go(cancel=cancel)

    def _drive(self, run: Run, outcomes: queue.SimpleQueue[Outcome]) -> None:
        sched, clock, lanes = run.scheduler, run.clock, self.lanes
        lane_of = sched.lane_of
        in_flight: dict[int, int] = {}  # unit -> attempt, for what the lanes hold
        while sched.is_active():
            if run.cancel_requested.is_set():
                for i, attempt in in_flight.items():
                    lanes[lane_of[i]].abandon(i, attempt)
                run.report(run.stop_requested())
                return
            now = clock()
            if sched.has_deadlines:
                self._stop_abandoned(run, sched.advance(now), in_flight)
            if sched.to_decide or sched.outbox:
                self._stop_abandoned(run, run.settle_decisions(), in_flight)
            if self._start_attempts(run, outcomes, in_flight):
                # An attempt ran inside submit: what became due meanwhile (its timeout, the
                # run's deadline) comes first, then its outcome, then cancel() and the rest.
                if sched.has_deadlines:
                    self._stop_abandoned(run, sched.advance(clock()), in_flight)
                self._settle_arrived(run, outcomes, in_flight)
                continue
            if sched.to_decide or sched.outbox:
                continue  # a cache hit made decisions due (a map to expand, a condition)
            deadline = sched.next_deadline()
            if not in_flight and deadline is None:
                waiting = sched.waiting_on_limits  # for a limit another run holds
                if sched.is_active() and not sched.ready_count and not waiting:
                    raise InternalError("no unit is ready, running or waiting")
                if sched.ready_count or waiting:  # wait for a wake-up
                    self._settle(run, outcomes.get(), in_flight)
                continue
            timeout = None if deadline is None else min(max(0.0, deadline - clock()), _MAX_WAIT)
            try:
                item = outcomes.get(timeout=timeout)
            except queue.Empty:
                continue
            self._settle(run, item, in_flight)
            self._settle_arrived(run, outcomes, in_flight)

    def _settle_arrived(
        self, run: Run, outcomes: queue.SimpleQueue[Outcome], in_flight: dict[int, int]
    ) -> None:
        """Settle every outcome that has arrived, without blocking."""
        while True:
            try:
                item = outcomes.get_nowait()
            except queue.Empty:
                return
            self._settle(run, item, in_flight)

    def _start_attempts(
        self, run: Run, outcomes: queue.SimpleQueue[Outcome], in_flight: dict[int, int]
    ) -> bool:
        """Hand ready attempts to the lanes while they have room.

        Returns:
            Whether it stopped early because an attempt ran inside ``submit``
            (:attr:`Lane.may_run_in_submit`): its outcome waits in ``outcomes``.
        """
        sched, clock, lanes = run.scheduler, run.clock, self.lanes
        started_hooks = run.dispatcher.unit_started
        finished_hooks = run.dispatcher.unit_finished
        for k, lane in enumerate(lanes):
            while lane.has_room():
                # Handing the one before over took time (a process lane pickles and
                # writes it): this one starts now, not when the pass began.
                now = clock()
                i = sched.start_next(now, k)
                if i < 0:
                    break
                attempt = sched.attempts[i]
                in_flight[i] = attempt
                if started_hooks:
                    run.emit_started(i, attempt, now)
                if run.cache is not None and not lane.calls_in_process:
                    hit, value = run.lookup_cached(i)
                    if hit:  # served here: complete it now, and never store it again
                        del in_flight[i]
                        if sched.complete(i, attempt, value, now) >= 0 and finished_hooks:
                            run.emit_finished(i, attempt, now)
                        continue
                lane.submit(i, attempt)
                if lane.may_run_in_submit and not outcomes.empty():
                    return True
        return False

    def _stop_abandoned(
        self, run: Run, transitions: list[Transition], in_flight: dict[int, int]
    ) -> None:
        """Abandon the attempts the scheduler stopped (timeouts, cancel_rest), then report."""
        lane_of = run.scheduler.lane_of
        for t in transitions:
            if t.was_running and in_flight.pop(t.index, None) is not None:
                self.lanes[lane_of[t.index]].abandon(t.index, t.attempt)
        run.report(transitions)

    def _settle(self, run: Run, item: Outcome, in_flight: dict[int, int]) -> None:
        if item is None:
            return
        i, attempt, ok, value, metrics = item
        lane = self.lanes[run.scheduler.lane_of[i]]
        now = -1.0
        if in_flight.get(i) == attempt:
            del in_flight[i]
            lane.settled(i, attempt)
            if lane.knows_end_times:
                now = lane.ended_at(i, attempt)
        sched = run.scheduler
        if now < 0:
            now = run.clock()
        if ok:
            if metrics:
                run.keep_attempt_metrics(i, attempt, metrics)
            current = sched.complete(i, attempt, value, now) >= 0
            if current and run.cache is not None and not lane.calls_in_process:
                run.cache.remember(run, i, value)  # a fresh result: hits never come here
            if current and run.dispatcher.unit_finished:
                run.emit_finished(i, attempt, now)
        else:
            if metrics:  # its ctx.pause_limit calls: in force before its retry is scheduled
                run.apply_pauses(metrics)
            run.report(sched.fail(i, attempt, value, now))
