"""Layer 4: a run seen from outside, one record per unit as it finishes.

Policy: streaming is an :class:`~quantum_partitioner.Instrument` and ``cancel()``, nothing
else, so it works the same in every mode and on every backend. A collector instrument turns
each terminal event (completed, failed, timed out, skipped, cancelled) into an immutable
:class:`UnitResult` and puts it on an unbounded queue, in the order the run reports them: a
slow consumer never blocks a worker, and the queue holds at most one record per unit.

* :class:`ResultStream` (``partitioner.stream(...)``) runs ``execute(...)`` with the same
  arguments on a thread of its own and hands the records to the caller's thread. Leaving the
  iteration early (``break``, an exception, ``close()``, leaving the ``with`` block) cancels
  the run exactly like ``cancel()`` and waits for it to end (what can be stopped is
  stopped); completed results stay available through ``get_partial_results()``.
  What ``execute`` raises after the run (``TaskError`` with ``raise_on_error=True``, a
  unit's ``KeyboardInterrupt`` in modes that run units in this process) is raised from the
  iteration after the last record; bad input is raised by ``stream()`` itself, before any
  unit runs. Ctrl-C reaches the caller's thread, in the loop body, while it waits for a
  record or while ``stream()`` waits for the run to start, and cancels the run like
  ``break``.
* :class:`AsyncResultStream` (``partitioner.astream(...)``) does the same for ``async for``
  with ``aexecute(...)`` on the caller's running loop.

State: a stream follows one run; iterating it a second time yields nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Self, final

from ._graph import UnitState
from .observability._events import Instrument

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from ._run import Run
    from .observability._events import (
        RunStarted,
        UnitCancelled,
        UnitFailed,
        UnitFinished,
        UnitSkipped,
    )

__all__ = ["AsyncResultStream", "ResultStream", "UnitResult"]

_COMPLETED: Final = UnitState.COMPLETED
#: How long the consumer waits for a record at a time: a wait that can always be interrupted.
_POLL_SECONDS: Final = 0.25

_next_run = threading.local()


def take_run_instruments() -> tuple[Instrument, ...]:
    """The instruments a stream asked for the next run started in this thread (once)."""
    instruments: tuple[Instrument, ...] = getattr(_next_run, "instruments", ())
    _next_run.instruments = ()
    return instruments


class UnitResult(NamedTuple):
    """One unit that reached a terminal state, as :meth:`QuantumPartitioner.stream` yields it.

    Immutable: a named tuple, like the instruments' events (cheaper to build per unit than
    a frozen dataclass).

    Attributes:
        name: The unit's name.
        state: COMPLETED, FAILED, TIMEOUT, SKIPPED or CANCELED.
        result: What the unit returned (on Dask, for a unit whose result stays on the
            cluster, its ``distributed.Future``); None unless it completed.
        error: Why it did not complete: its exception, or the reason it was skipped or
            cancelled; None if it completed.
        attempts: How many attempts it started (0 if it never ran).
        start_time: When its last attempt started (epoch seconds), None if it never ran.
        end_time: When it reached its terminal state (epoch seconds).

    .. versionadded:: 0.1
    """

    name: str
    state: UnitState
    result: Any = None
    error: BaseException | None = None
    attempts: int = 0
    start_time: float | None = None
    end_time: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the unit completed."""
        return self.state is _COMPLETED


class _End(NamedTuple):
    """The run is over: ``execute`` returned, or raised ``error``."""

    error: BaseException | None


class _Collector(Instrument):
    """Turns each terminal event into a :class:`UnitResult` for ``put`` (called in order).

    It listens to terminal events only (no per-start event is built for it); what those do
    not carry (a failed unit's start, a cancelled one's attempts) is read from the run's
    record, final for that unit by then.
    """

    def __init__(
        self,
        put: Callable[[UnitResult], None],
        active_run: Callable[[], Run | None],
        on_start: Callable[[], object],
    ) -> None:
        self._put = put
        self._active_run = active_run
        self._on_start = on_start
        self._cancel_at_start = False
        #: The run being streamed, once it started.
        self.run: Run | None = None

    def run_started(self, event: RunStarted) -> None:
        """Note the run: the partitioner's active one, as it starts."""
        del event
        self.run = self._active_run()
        if self._cancel_at_start:
            _cancel(self.run)
        self._on_start()

    def cancel_run(self) -> None:
        """Cancel the run now, or as it starts if it has not yet (any thread).

        The flag is set before ``run`` is read, and :meth:`run_started` sets ``run`` before
        it reads the flag: one of the two sees the other's write.
        """
        self._cancel_at_start = True
        _cancel(self.run)

    def _attempts_and_start(self, name: str) -> tuple[int, float | None]:
        run = self.run
        if run is None:  # pragma: no cover - events come after run_started
            return 0, None
        i = run.graph.index[name]
        return run.attempt_of(i), run.start_time_of(i)

    def unit_finished(self, event: UnitFinished) -> None:
        """A unit completed."""
        self._put(
            UnitResult(
                event.unit_id,
                _COMPLETED,
                event.result,
                None,
                event.attempt,
                event.time - event.duration,
                event.time,
            )
        )

    def unit_failed(self, event: UnitFailed) -> None:
        """A unit failed or timed out for good."""
        _, start = self._attempts_and_start(event.unit_id)
        self._put(
            UnitResult(
                event.unit_id, event.state, None, event.error, event.attempt, start, event.time
            )
        )

    def unit_skipped(self, event: UnitSkipped) -> None:
        """A unit was skipped: before it ran, or by its own ``ctx.skip`` (then it has attempts)."""
        attempts, start = self._attempts_and_start(event.unit_id)
        self._put(
            UnitResult(
                event.unit_id, UnitState.SKIPPED, None, event.reason, attempts, start, event.time
            )
        )

    def unit_cancelled(self, event: UnitCancelled) -> None:
        """A unit was cancelled."""
        attempts, start = self._attempts_and_start(event.unit_id)
        self._put(
            UnitResult(
                event.unit_id,
                UnitState.CANCELED,
                None,
                event.reason,
                attempts,
                start if event.was_running else None,
                event.time,
            )
        )


def _cancel(run: Run | None) -> None:
    if run is not None:
        run.request_cancel()  # what cancel() does, aimed at this stream's own run


@final
class ResultStream:
    """The records of one run, in the order its units finish (see the module docstring).

    Made by :meth:`QuantumPartitioner.stream`; use it as ``with p.stream(...) as results:``
    and iterate ``results``. Iterating it directly (``for done in p.stream(...)``) works
    too: leaving such a loop closes the stream at once (in CPython).

    .. versionadded:: 0.1
    """

    def __init__(self, execute: Callable[[], object], active_run: Callable[[], Run | None]) -> None:
        """Start ``execute()`` on a thread of its own; raise what it raises before it starts.

        Args:
            execute: Runs the partitioner (``execute`` with the stream's arguments).
            active_run: The partitioner's current run, read when the run starts.
        """
        self._records: queue.SimpleQueue[UnitResult | _End] = queue.SimpleQueue()
        self._closed = False
        self._ended = False
        started = threading.Event()
        self._collector = collector = _Collector(self._records.put, active_run, started.set)
        records = self._records

        def drive() -> None:
            _next_run.instruments = (collector,)
            try:
                execute()
            except BaseException as error:
                records.put(_End(error))
            else:
                records.put(_End(None))
            finally:
                _next_run.instruments = ()
                started.set()

        # The thread refers to the queue and the collector, not to this object, so that
        # dropping the stream collects it (and ``__del__`` cancels the run).
        self._thread = threading.Thread(target=drive, name="quantum-partitioner-stream")
        try:
            self._thread.start()
            started.wait()
        except BaseException:  # Ctrl-C while the run gets ready (worker processes start)
            # As leaving the loop: the run is cancelled, and ended, before this propagates
            # (unless the thread's own start was cut short: then it is cancelled as it starts).
            self._closed = self._ended = True
            collector.cancel_run()
            with contextlib.suppress(RuntimeError):  # "cannot join thread before it is started"
                self._thread.join()
            raise
        if collector.run is None:  # it ended before it started: bad input
            self._thread.join()
            end = self._records.get()
            self._closed = self._ended = True
            assert isinstance(end, _End)
            if end.error is not None:
                raise end.error

    def __enter__(self) -> Self:
        """Use the stream; leaving the block closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the stream: cancel what has not finished and wait for the run to end."""
        self.close()

    def __iter__(self) -> Iterator[UnitResult]:
        """Yield each unit's record as it finishes; the run's error after the last one."""
        try:
            while not self._ended:
                try:
                    item = self._records.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                if isinstance(item, _End):
                    self._ended = True
                    self._thread.join()
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the rest of the run, like ``cancel()``, and wait until it has ended.

        Completed results stay available (``get_partial_results()``). Closing a stream
        that ended, or closing it twice, does nothing.
        """
        if self._closed:
            return
        self._closed = True
        if not self._ended:
            _cancel(self._collector.run)
            self._thread.join()
            self._ended = True

    def __del__(self) -> None:
        """A last resort for a stream nobody closed: cancel its run (without waiting)."""
        if not getattr(self, "_ended", True):
            _cancel(self._collector.run)


@final
class AsyncResultStream:
    """:class:`ResultStream` for ``async for``, on the caller's running loop.

    Made by :meth:`QuantumPartitioner.astream`; use it as
    ``async with p.astream(...) as results:`` and ``async for done in results``.

    .. versionadded:: 0.1
    """

    def __init__(
        self, aexecute: Callable[[], Awaitable[object]], active_run: Callable[[], Run | None]
    ) -> None:
        """Prepare; the run starts on the running loop when the stream is first used."""
        self._aexecute = aexecute
        self._active_run = active_run
        self._task: asyncio.Task[object] | None = None
        self._records: asyncio.Queue[UnitResult | _End] = asyncio.Queue()
        self._collector: _Collector | None = None
        self._ended = False

    async def _start(self) -> None:
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        records = self._records
        loop_thread = threading.get_ident()

        def put(record: UnitResult) -> None:
            if threading.get_ident() == loop_thread:
                records.put_nowait(record)
            else:  # a hook called from a worker thread
                loop.call_soon_threadsafe(records.put_nowait, record)

        started = asyncio.Event()
        collector = self._collector = _Collector(put, self._active_run, started.set)

        async def drive() -> object:
            # aexecute prepares its run before its first await: the instruments set here
            # are taken by that run and no other.
            _next_run.instruments = (collector,)
            try:
                value = await self._aexecute()
            except BaseException as error:
                records.put_nowait(_End(error))
                raise
            finally:
                _next_run.instruments = ()
                started.set()
            records.put_nowait(_End(None))
            return value

        self._task = asyncio.ensure_future(drive())
        try:
            await started.wait()
        except BaseException:  # the caller is cancelled while the run gets ready
            # As leaving the loop: the run is cancelled, and ended, before this propagates.
            self._ended = True
            collector.cancel_run()
            await _wait_for_run(self._task)
            raise
        if collector.run is None:  # it ended before it started: bad input
            self._ended = True
            await self._task  # raises it

    async def __aenter__(self) -> Self:
        """Start the run; leaving the block closes the stream."""
        await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the stream: cancel what has not finished and wait for the run to end."""
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[UnitResult]:
        """Yield each unit's record as it finishes; the run's error after the last one."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[UnitResult]:
        await self._start()
        try:
            while not self._ended:
                item = await self._records.get()
                if isinstance(item, _End):
                    self._ended = True
                    assert self._task is not None
                    await _wait_for_run(self._task)  # its outcome is ``item``
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel the rest of the run, like ``cancel()``, and wait until it has ended."""
        task = self._task
        if self._ended or task is None:
            self._ended = True
            return
        self._ended = True
        _cancel(self._collector.run if self._collector is not None else None)
        await _wait_for_run(task)


async def _wait_for_run(task: asyncio.Task[object]) -> None:
    """Wait until the run's task has ended, whatever it raised: its last record says that.

    The caller's own cancellation while it waits (a timeout around the stream,
    ``task.cancel()``) is not the run's outcome: it propagates (the run is cancelled with
    it), or the caller's timeout would never fire.
    """
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
    except BaseException:  # noqa: S110 - the run's outcome, which its last record carries
        pass
