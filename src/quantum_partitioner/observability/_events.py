"""Instruments: the one mechanism through which a run can be watched.

Subclass :class:`Instrument` and override the hooks you need; each receives an immutable
event record (a named tuple: cheaper to build per unit than a frozen dataclass).
The ``on_unit_*`` callbacks, run metrics, progress and trace exporters are all
instruments. A run only dispatches to hooks that some instrument overrides, so unused hooks
cost nothing per unit. Hooks run in the caller's process, one at a time (a lock serialises
them, so an instrument need not be thread-safe); a hook that raises is logged on the
``quantum_partitioner`` logger and never disturbs the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import SkipCause, interrupts_run

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .._graph import QuantumUnit, UnitState

__all__ = [
    "Instrument",
    "RunFinished",
    "RunStarted",
    "UnitCancelled",
    "UnitFailed",
    "UnitFinished",
    "UnitRetrying",
    "UnitSkipped",
    "UnitStarted",
    "UnitsAdded",
]

LOGGER = logging.getLogger("quantum_partitioner")


class RunStarted(NamedTuple):
    """A run began; ``units`` are the run's units (its graph's, not a copy)."""

    total_units: int
    execution_mode: str
    max_workers: int
    time: float
    units: Sequence[QuantumUnit[Any, Any]] = ()


class RunFinished(NamedTuple):
    """A run ended; counts are by terminal state."""

    total_units: int
    completed: int
    failed: int
    skipped: int
    canceled: int
    time: float
    duration: float


class UnitStarted(NamedTuple):
    """An attempt of a unit started."""

    unit_id: str
    attempt: int
    time: float
    worker: str


class UnitFinished(NamedTuple):
    """A unit completed."""

    unit_id: str
    attempt: int
    time: float
    duration: float
    result: Any


class UnitFailed(NamedTuple):
    """A unit failed for good (``state`` is FAILED or TIMEOUT); ``fallback`` if it had one."""

    unit_id: str
    attempt: int
    time: float
    error: BaseException
    state: UnitState
    has_fallback: bool


class UnitRetrying(NamedTuple):
    """An attempt failed and another will start after ``delay`` seconds."""

    unit_id: str
    attempt: int
    time: float
    error: BaseException
    delay: float


class UnitSkipped(NamedTuple):
    """A unit was SKIPPED.

    ``cause`` says why (a condition, ``ctx.skip``, a failure upstream, a join rule not met);
    ``reason`` is its :class:`UnitSkippedError`.
    """

    unit_id: str
    time: float
    reason: BaseException
    cause: SkipCause = SkipCause.UPSTREAM_FAILED


class UnitsAdded(NamedTuple):
    """A map expanded: the run gained ``names``, one unit per item, in item order.

    ``unit`` is the map's unit, whose options (and ``metadata``) every item has. Sent
    before any of those items starts; a map with no items sends none.
    """

    map_id: str
    names: Sequence[str]
    time: float
    unit: QuantumUnit[Any, Any]


class UnitCancelled(NamedTuple):
    """A unit was cancelled (fail_fast, cancel(), Ctrl-C); ``was_running`` if mid-attempt."""

    unit_id: str
    time: float
    reason: BaseException
    was_running: bool


class Instrument:
    """Base class for run observers; every hook is a no-op until overridden.

    .. versionadded:: 0.1
    """

    def run_started(self, event: RunStarted) -> None:
        """A run began."""

    def unit_started(self, event: UnitStarted) -> None:
        """An attempt started."""

    def unit_finished(self, event: UnitFinished) -> None:
        """A unit completed."""

    def unit_failed(self, event: UnitFailed) -> None:
        """A unit failed for good."""

    def unit_retrying(self, event: UnitRetrying) -> None:
        """An attempt failed and will be retried."""

    def unit_skipped(self, event: UnitSkipped) -> None:
        """A unit was skipped."""

    def unit_cancelled(self, event: UnitCancelled) -> None:
        """A unit was cancelled."""

    def units_added(self, event: UnitsAdded) -> None:
        """A map created its items: the run has more units than it started with."""

    def run_finished(self, event: RunFinished) -> None:
        """A run ended."""


HOOKS = (
    "run_started",
    "unit_started",
    "unit_finished",
    "unit_failed",
    "unit_retrying",
    "unit_skipped",
    "unit_cancelled",
    "units_added",
    "run_finished",
)

Hook = Callable[[Any], None]


class Dispatcher:
    """Calls the overridden hooks of some instruments, one at a time, logging failures.

    For each hook, ``self.<hook>`` is the tuple of bound methods to call, empty when no
    instrument overrides it: the engine tests that tuple before building an event.
    """

    __slots__ = (*HOOKS, "_lock")

    run_started: tuple[Hook, ...]
    unit_started: tuple[Hook, ...]
    unit_finished: tuple[Hook, ...]
    unit_failed: tuple[Hook, ...]
    unit_retrying: tuple[Hook, ...]
    unit_skipped: tuple[Hook, ...]
    unit_cancelled: tuple[Hook, ...]
    units_added: tuple[Hook, ...]
    run_finished: tuple[Hook, ...]

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        """Collect the hooks each instrument overrides."""
        self._lock = threading.Lock()
        instruments = list(instruments)
        for hook in HOOKS:
            base = getattr(Instrument, hook)
            bound = tuple(
                getattr(instrument, hook)
                for instrument in instruments
                if getattr(type(instrument), hook, base) is not base
            )
            setattr(self, hook, bound)

    def emit(self, hooks: tuple[Hook, ...], event: object) -> None:
        """Call each of ``hooks`` with ``event``; log and swallow what they raise.

        Except what interrupts the run (:func:`interrupts_run`): that propagates.
        """
        with self._lock:
            for hook in hooks:
                try:
                    hook(event)
                except BaseException as error:
                    if interrupts_run(error):
                        raise  # KeyboardInterrupt, SystemExit: they stop the run like Ctrl-C
                    LOGGER.exception("instrument hook %r raised; the run goes on", hook)
