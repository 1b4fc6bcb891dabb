"""CUSTOM: attempts run on any ``concurrent.futures.Executor`` the caller owns.

The lane keeps at most as many attempts in flight as the executor has workers (its
``_max_workers`` when it says, else ``max_workers``): handing it everything that is ready
would let the executor's FIFO queue, not the scheduler, decide the order, and a unit's
timeout would count time spent waiting in that queue. Each attempt is one call of
:func:`call_unit` with the unit's function and its context (which pickles with only the
unit's own inputs), so process-based executors work with picklable functions. Where the
call runs in another process, whatever the unit raises fails it, ``BaseException``
subclasses included (carried back, see :class:`CarriedBaseException`), and a result that
cannot be pickled fails it with an error naming the unit and the value's type.

Whether a unit's ``KeyboardInterrupt`` or ``SystemExit`` interrupts the run depends on where
it was raised, not on the executor's class: :func:`call_unit` compares the process it runs
in with the caller's. In the caller's process (a thread pool) it stops the run as Ctrl-C
would; in another (a process pool) it fails the unit.

At a timeout the attempt's future is cancelled if it has not started; if it has, the unit is
TIMEOUT at its deadline, its late result is discarded, and the executor's worker stays busy
until the function returns: only the executor can stop its workers. Until then that worker
counts as taken, also by the next runs on the same executor, so the next attempt is not
queued behind it inside the executor, where its own timeout would run while it waits. The
executor is never shut down here: it belongs to the caller.

An executor may run the call inside ``submit`` (a synchronous one): the driver then settles
each outcome before it hands over the next attempt, acting first on what fell due during
the call, as SEQUENTIAL does: a call past its timeout is TIMEOUT, and the run's deadline,
``cancel()`` and ``fail_fast`` stop the run between two calls. ``ctx.cancelled`` reads the
clock against the timeout and the run's deadline, as there.
"""

from __future__ import annotations

import os
import pickle
import weakref
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from .._context import call_unit_function
from .._errors import UnitInterrupt, interrupts_run
from ._base import carried_failure, check_sendable
from ._lanes import FutureLane, LaneBackend

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor

    from .._context import ExecutionContext
    from .._run import Run
    from ._lanes import Outcome

__all__ = ["ExecutorBackend", "ExecutorLane", "call_unit"]


def call_unit(
    function: Callable[[ExecutionContext], Any],
    ctx: ExecutionContext,
    caller_pid: int,
    serialize: Callable[[Any], object] | None = None,
) -> tuple[bool, Any, dict[str, Any] | None]:
    """Call one unit where the executor runs it: ``(True, result, metrics)``, or raise.

    ``caller_pid`` is the id of the process that submitted the call. In that process, a
    ``KeyboardInterrupt`` or ``SystemExit`` the unit raises is raised as
    :class:`UnitInterrupt` (the run stops) and anything else propagates and fails the unit.
    In another process, a ``BaseException`` is raised as :class:`CarriedBaseException` (a
    pool's or cluster's worker may not survive it otherwise), and so is any error raised
    after ``ctx.pause_limit`` calls, with those pauses; a result that cannot be sent
    back raises ``TypeError`` naming the unit: one the standard pickle refuses, unless
    ``serialize`` (how the executor sends results, if not with that pickle) accepts it.
    """
    if caller_pid == os.getpid():
        try:
            value = call_unit_function(function, ctx)
        except BaseException as error:
            if interrupts_run(error):
                raise UnitInterrupt(error) from None
            raise
        return True, value, ctx.metrics
    try:
        value = call_unit_function(function, ctx)
        check_sendable(ctx.unit_id, value, "the executor's worker process", serialize)
    except BaseException as error:  # it must fail the unit, not the executor's worker
        carried = carried_failure(error, ctx.metrics)
        if carried is None:
            raise
        raise carried from None
    return True, value, ctx.metrics


#: Per executor, the abandoned attempts still running on it, across runs: a worker stuck in
#: an attempt that timed out in an earlier run is as taken as one stuck in this run.
_STUCK: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()


def _stuck_on(executor: Executor) -> set[Any]:
    """The set of ``executor``'s abandoned attempts still running, shared by its runs."""
    try:
        return _STUCK.setdefault(executor, set())
    except TypeError:  # not weakly referenceable, or not hashable: this run's alone
        return set()


def _result_serializer(executor: Executor) -> Callable[[Any], object] | None:
    """How ``executor`` may send results besides the standard pickle, as far as one can tell.

    ``ProcessPoolExecutor`` uses that pickle alone; others (loky, Dask's) fall back on
    cloudpickle, where it is installed.
    """
    if isinstance(executor, ProcessPoolExecutor):
        return None
    try:
        import cloudpickle  # noqa: PLC0415 - optional
    except ImportError:  # pragma: no cover - the extra is part of the test install
        return None
    dumps: Callable[[Any], object] = cloudpickle.dumps
    return dumps


class ExecutorLane(FutureLane):
    """Run attempts on a caller's executor.

    Args:
        executor: Where attempts run; it is not shut down by the run.
        max_workers: Attempts in flight at once when the executor does not say.
    """

    name = "custom"
    may_run_in_submit = True  # an executor may call the function before submit returns

    def __init__(self, executor: Executor, max_workers: int | None = None) -> None:
        """Wrap ``executor``."""
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(
                f"custom_executor must be a concurrent.futures.Executor, got {executor!r}"
            )
        self.executor = executor
        own = getattr(executor, "_max_workers", None)
        self.capacity = own if isinstance(own, int) and own > 0 else (max_workers or 32)
        self._serialize = _result_serializer(executor)
        # A ProcessPoolExecutor pickles functions by name, in its feeder thread: a lambda
        # would fail its unit with a PicklingError that does not name it. Each function is
        # tried once per run here instead (id -> (function, the error or None)).
        self._by_name = isinstance(executor, ProcessPoolExecutor)
        self._pickled: dict[int, tuple[Any, Exception | None]] = {}
        self._futures = {}
        self._caller_pid = os.getpid()
        #: Abandoned attempts still running: each holds an executor worker until it returns
        #: (shared by the runs on this executor, see :func:`_stuck_on`).
        self._stuck: set[Any] = set()

    def has_room(self) -> bool:
        """Whether fewer attempts than the executor's workers are in flight (stuck ones too).

        An abandoned attempt that could not be cancelled still holds its worker: another
        attempt sent now would wait in the executor's queue, its timeout running.
        """
        return len(self._futures) + len(self._stuck) < self.capacity

    def abandon(self, i: int, attempt: int) -> None:
        """Cancel the future; if it already runs, count its worker busy until it returns."""
        del attempt
        future = self._futures.pop(i, None)
        if future is not None and not future.cancel():
            self._stuck.add(future)
            future.add_done_callback(self._worker_free)

    def _worker_free(self, future: Any) -> None:
        """An abandoned attempt returned (any thread): its worker can take the next one."""
        self._stuck.discard(future)
        self._post(None)

    def open(self, run: Run, post: Callable[[Outcome], None]) -> None:
        """Count the executor's workers still stuck in attempts of earlier runs as taken.

        Each wakes this run's driver when it returns, as one stuck in this run does.
        """
        super().open(run, post)
        self._stuck = _stuck_on(self.executor)
        for future in list(self._stuck):
            future.add_done_callback(self._worker_free)
        self._pickled = {}

    def _unpicklable(self, function: Any) -> Exception | None:
        """Why the standard pickle cannot send ``function``, or None (tried once a run)."""
        cached = self._pickled.get(id(function))
        if cached is None:
            try:
                pickle.dumps(function)
            except Exception as error:
                cached = (function, error)  # holding the function keeps its id unique
            else:
                cached = (function, None)
            self._pickled[id(function)] = cached
        return cached[1]

    def submit(self, i: int, attempt: int) -> None:
        """Send the attempt to the executor."""
        run = self._run
        unit = run.graph.units[i]
        if self._by_name:
            problem = self._unpicklable(unit.function)
            if problem is not None:
                error = TypeError(
                    f"unit {unit.id!r}: its function {unit.function!r} cannot be pickled for "
                    f"the ProcessPoolExecutor, which sends functions by name (ExecutionMode."
                    f"PROCESS sends lambdas and closures): {problem}"
                )
                error.__cause__ = problem
                self._post((i, attempt, False, error, None))
                return
        ctx = run.context_for(i, attempt)
        try:
            future = self.executor.submit(
                call_unit, unit.function, ctx, self._caller_pid, self._serialize
            )
        except Exception as error:  # a shut-down or broken executor fails the attempt
            self._post((i, attempt, False, error, None))
            return
        self._watch(i, attempt, future)


class ExecutorBackend(LaneBackend):
    """Run attempts on a caller's ``concurrent.futures.Executor``.

    Args:
        executor: Where attempts run; it is not shut down by the run.
        max_workers: Attempts in flight at once when the executor does not say.

    .. versionadded:: 0.1
    """

    def __init__(self, executor: Executor, max_workers: int | None = None) -> None:
        """Wrap ``executor``."""
        super().__init__([ExecutorLane(executor, max_workers)], name="custom")
