"""The contract every backend fulfils: drive one :class:`Run` until every unit is terminal.

A backend decides *how* attempts run (here, in threads, on an executor) and never *what*
runs next: it asks the run's scheduler. Each backend:

* starts attempts with ``scheduler.start_next(now)`` and reports each outcome with
  ``complete`` or ``fail``, passing the attempt number so late outcomes are ignored;
* waits for ``scheduler.next_deadline()`` when nothing else is due, then calls ``advance``;
  for each transition with ``was_running`` it stops or abandons that attempt;
* before starting units, whenever ``scheduler.to_decide`` or ``scheduler.outbox`` is
  non-empty, calls ``run.settle_decisions()`` (it asks ``when=`` conditions, in the caller's
  process) and treats its transitions as those of ``advance`` (``cancel_rest`` may stop
  running attempts); a decision may end the run, so it checks ``is_active()`` again;
* hands every transition to ``run.report`` and, only when instruments listen, calls
  ``run.emit_started`` / ``run.emit_finished``;
* on ``KeyboardInterrupt`` (or any error of its own) calls ``run.interrupt`` so every
  unfinished unit is CANCELED and completed results are kept, cleans up, and re-raises;
* fails a unit with whatever it raised in another process (a worker, a process pool, a Dask
  cluster), ``BaseException`` subclasses included: code that runs a unit elsewhere raises a
  ``KeyboardInterrupt``, ``SystemExit`` or other non-``Exception`` as
  :class:`CarriedBaseException` (the process there may not survive it otherwise) and the
  driver fails the unit with the exception it carries;
* applies the ``ctx.pause_limit`` calls of an attempt that ran elsewhere, whatever its
  outcome (``run.keep_attempt_metrics`` for a result, ``run.apply_pauses`` for a failure,
  before reporting it): they travel in its metrics, or in the :class:`CarriedBaseException`
  of a failure (:func:`carried_failure`); the other metrics of an attempt that is no longer
  current (timed out, cancelled) are dropped with its result, and an attempt that consults
  the cache itself stores its result with ``run.remember`` (never a late one);
* for maps: grows its own per-unit lists when items appear (``run.on_grow``); a backend
  that keeps results elsewhere sets ``run.fetch_value`` (what ``when=`` predicates read)
  and ``run.count_items`` (measure the result a map maps over where it is, and hand each
  item its element there: Dask), so ``run.settle_decisions()`` never brings a mapped
  result to the caller.

Why a ``run(run)`` method rather than ``submit``/``wait``: the thread backend is fastest when
a worker that finishes a unit picks its next one itself under the scheduler's lock, which a
submit/wait split would route through one more thread.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Final

from .._context import PAUSES_KEY
from .._errors import error_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._graph import Graph
    from .._run import Run

__all__ = [
    "Backend",
    "CarriedBaseException",
    "carried_failure",
    "check_sendable",
    "pool_size",
    "root_cause",
]

#: Results that can always be sent: not worth checking.
_SENDABLE_TYPES: Final = frozenset({int, float, complex, str, bytes, bytearray, bool, type(None)})


class CarriedBaseException(Exception):  # noqa: N818 - it carries one, it is not an error
    """What a unit raised in another process, carried back with what must reach the caller.

    Raised there in its place for a ``BaseException`` that is not an ``Exception`` (so the
    worker, pool or cluster treats it as an ordinary error of the call), and for any error
    raised after ``ctx.pause_limit`` calls, whose pauses travel in ``metrics`` (a 429
    handler pauses its limit, then raises to be retried). The driver applies the pauses,
    then fails the unit with ``error`` (it interrupts nothing here).
    """

    def __init__(self, error: BaseException, metrics: dict[str, Any] | None = None) -> None:
        """Carry ``error`` and the attempt's ``metrics`` (its pauses)."""
        super().__init__(error)
        self.error = error
        self.metrics = metrics

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle both: the default would rebuild from ``args`` alone."""
        return (type(self), (self.error, self.metrics))


def carried_failure(
    error: BaseException, metrics: dict[str, Any] | None
) -> CarriedBaseException | None:
    """What code running a unit in another process raises for ``error``; None: ``error`` itself.

    ``metrics`` are the attempt's (``ctx.metrics``): only its ``ctx.pause_limit`` calls
    travel with a failure, as in the caller's process only they outlive a failed attempt.
    """
    pauses = metrics.get(PAUSES_KEY) if metrics else None
    if pauses is None and isinstance(error, Exception):
        return None
    carried = CarriedBaseException(error, None if pauses is None else {PAUSES_KEY: pauses})
    return carried.with_traceback(error.__traceback__)


def pool_size(graph: Graph, size: int) -> int:
    """How many workers (threads, processes) of at most ``size`` a pool starts for ``graph``.

    No more than it has units, unless maps may add units while it runs: their items must
    get the full pool, not the few workers the graph's first units needed.
    """
    return size if graph.maps else max(1, min(size, len(graph)))


def check_sendable(
    unit_id: str, value: Any, where: str, serialize: Callable[[Any], object] | None = None
) -> None:
    """Raise if a unit's result cannot leave the process it ran in (``where``).

    What carries it (a process pool, a Dask cluster) would fail only later, without naming
    the unit, or (Dask) lose the result of a unit reported COMPLETED. The standard pickle,
    with buffers out of band so large arrays are not copied, settles most values; the
    carrier's own ``serialize`` gets the last word on the rest.

    Raises:
        TypeError: Naming the unit and the value's type.
    """
    if type(value) in _SENDABLE_TYPES:
        return
    try:
        pickle.dumps(value, protocol=5, buffer_callback=_drop)
    except Exception as error:
        problem = error
    else:
        return
    if serialize is not None:
        try:
            serialize(value)
        except Exception as error:
            problem = error
        else:
            return
    raise TypeError(
        f"unit {unit_id!r}: its result {type(value).__name__} cannot be sent from {where}: "
        f"{root_cause(problem)}"
    ) from problem


def _drop(buffer: Any) -> None:
    """Drop an out-of-band buffer: only whether the value pickles matters."""
    del buffer


def root_cause(error: BaseException) -> str:
    """The innermost explicit cause of ``error`` (serializers wrap errors), as text."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return f"{type(error).__name__}: {error_text(error)}"


class Backend(ABC):
    """Runs the attempts of a :class:`Run`.

    .. versionadded:: 0.1
    """

    #: The name units see as ``ctx.environment["execution_mode"]``.
    name: str = "custom"

    @property
    def concurrency(self) -> int | None:
        """How many attempts may run at once (None: no fixed limit), for the run's record."""
        return None

    def lane_of(self, graph: Graph) -> list[int] | None:
        """Each unit's lane when the backend runs units in several places, else None."""
        del graph
        return None

    def claim(self, run: Run) -> None:  # noqa: B027 - optional hook
        """Take ``run`` on, or refuse it, before it begins (no instrument has heard of it).

        A backend that can refuse a run (it drives another, its client is closed, the
        context cannot reach its workers) raises here, so a refused run fires no event and
        leaves no record. :meth:`run` follows a claim, or :meth:`release` if the run ends
        before it is driven (a ``run_started`` hook interrupted it). The default refuses
        nothing.
        """

    def release(self, run: Run) -> None:  # noqa: B027 - optional hook
        """Let go of a claimed ``run`` that :meth:`run` did not drive (else nothing to do)."""

    @abstractmethod
    def run(self, run: Run) -> None:
        """Drive ``run`` until every unit is terminal (after :meth:`claim`, or claiming it).

        Raises:
            KeyboardInterrupt: After cancelling what had not finished.
        """
