"""A live progress bar for long runs, drawn with rich (the ``progress`` extra).

Policy: the bar is an :class:`~quantum_partitioner.Instrument`, so the engine knows nothing
about it. Its hooks only update counters (units done, failed, skipped, cancelled, running,
retries) and the work left (:class:`WorkLeft`); a daemon thread reads them a few times a
second and redraws, so a run of many short units pays a few dict and counter updates per
event, not one redraw.

The ETA is the work left divided by the rate at which work gets done. Units do not all cost
the same: a unit's expected cost is its ``metadata["estimated_duration"]`` when given, else
the mean measured duration of the finished units of its *kind* (units of one function, map
items, or names that differ only by a trailing number or ``[index]``). While some unit left
has neither, the ETA is ``?``: a figure would be a guess. The bar is filled by the work that
finished (units completed, and units skipped by a decision rather than because a
dependency failed), never by failed or cancelled units, so a cancelled run does not look done.
The total grows as maps create their items (the ``units_added`` hook); a map itself never
runs, so it weighs nothing in the work left.

It writes to standard error, and only when that is a terminal: when output is redirected
(CI logs, pipes, files) it draws nothing at all, and ``execute(..., progress=True)`` then
does not even attach it, so the run pays nothing.

State: the counters and the display of the current run; a new run resets them.
"""

from __future__ import annotations

import collections
import functools
import inspect
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from .._graph import metadata_of
from ._events import Instrument

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Sequence
    from types import CodeType

    from .._graph import QuantumUnit
    from .._limits import Limit
    from ._events import (
        RunFinished,
        RunStarted,
        UnitCancelled,
        UnitFailed,
        UnitFinished,
        UnitRetrying,
        UnitsAdded,
        UnitSkipped,
        UnitStarted,
    )

__all__ = ["ProgressBar"]

#: How far back throughput is measured, in seconds.
_RATE_WINDOW = 10.0
_DIGITS = "0123456789"


def unit_kind(unit: QuantumUnit[Any, Any]) -> Hashable:
    """Which units are alike in cost: the same function, else the same name stem.

    A function is unwrapped (``functools.partial``, decorators) to its code, so the units of
    a map, or of ``partial(extract, doc)`` per document, are one kind. Lambdas all look
    alike, so those, and callables without code, are told apart by their name with a
    trailing number or ``[index]`` removed.
    """
    fn: Any = unit.function
    while isinstance(fn, functools.partial):
        fn = fn.func
    if hasattr(fn, "__wrapped__"):
        fn = inspect.unwrap(fn)
    code: CodeType | None = getattr(fn, "__code__", None)
    if code is not None and code.co_name != "<lambda>":
        return code
    return name_stem(unit.id)


def name_stem(name: str) -> str:
    """``name`` without a trailing number or ``[index]`` (``fetch[3]`` -> ``fetch``)."""
    stem = name
    while True:
        if stem.endswith("]") and "[" in stem:
            stem = stem[: stem.rindex("[")]
        else:
            shorter = stem.rstrip(_DIGITS)
            if shorter == stem:
                break
            stem = shorter.rstrip("_.:-")
    return stem or name


class _Kind:
    """Units alike in cost: how many are left, and what those that ran took."""

    __slots__ = ("count", "left", "total")

    def __init__(self) -> None:
        self.left = 0
        self.total = 0.0
        self.count = 0


class WorkLeft:
    """The work a run has left, in seconds, and the work it has done, for the ETA.

    Not thread-safe: the bar calls it under its lock.

    Args:
        units: The run's units.
        clock: The time, in seconds (the bar's clock).
    """

    def __init__(self, units: Iterable[QuantumUnit[Any, Any]], clock: Callable[[], float]) -> None:
        """Sort the units into estimated ones and kinds to learn."""
        self._clock = clock
        #: Each unit's estimate, or the kind it learns its cost from.
        self._unit: dict[str, float | _Kind] = {}
        self._kinds: dict[Hashable, _Kind] = {}
        self._estimated_left = 0.0
        self._running: dict[str, float] = {}  # unit -> when its attempt started
        self._done = 0.0  # seconds of work in attempts that ended
        for unit in units:
            if unit.over is None:  # a map never runs: its items are the work
                self._add(unit.id, unit)

    def add(self, names: Iterable[str], unit: QuantumUnit[Any, Any]) -> None:
        """A map created the units ``names`` (its items), each with ``unit``'s options."""
        for name in names:
            self._add(name, unit)

    def _add(self, name: str, unit: QuantumUnit[Any, Any] | None) -> None:
        estimate = metadata_of(unit).get("estimated_duration") if unit else None
        if estimate is not None:
            self._unit[name] = float(estimate)
            self._estimated_left += float(estimate)
            return
        key = name_stem(name) if unit is None else unit_kind(unit)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = _Kind()
        kind.left += 1
        self._unit[name] = kind

    def started(self, name: str) -> None:
        """An attempt of ``name`` started."""
        if name not in self._unit:
            self._add(name, None)  # a unit the run created as it went
        self._running[name] = self._clock()

    def attempt_ended(self, name: str) -> None:
        """An attempt of ``name`` ended and another follows: its time was work done."""
        started = self._running.pop(name, None)
        if started is not None:
            self._done += self._clock() - started

    def finished(self, name: str, duration: float | None = None) -> bool:
        """``name`` reached a terminal state; ``duration`` is its attempt's, if it completed.

        Returns whether an attempt of it was running (a map, which never runs, was not).
        """
        started = self._running.pop(name, None)
        if started is None:
            duration = 0.0  # it never ran (a skip, a map that collected its items)
        elif duration is None:
            duration = self._clock() - started
        self._done += duration
        entry = self._unit.pop(name, None)
        if entry is None:
            return started is not None
        if type(entry) is float:
            self._estimated_left -= entry
            return started is not None
        assert isinstance(entry, _Kind)
        entry.left -= 1
        if started is not None:  # it ran: learn what its kind costs
            entry.total += duration
            entry.count += 1
        return started is not None

    def _expected(self, name: str) -> float | None:
        entry = self._unit.get(name)
        if entry is None or type(entry) is float:
            return entry
        assert isinstance(entry, _Kind)
        return entry.total / entry.count if entry.count else None

    def left(self) -> float | None:
        """Seconds of work left, or None while some unit left has no expected cost."""
        total = self._estimated_left
        for kind in self._kinds.values():
            if kind.left:
                if not kind.count:
                    return None
                total += kind.left * kind.total / kind.count
        now = self._clock()
        for name, started in self._running.items():  # what running attempts already did
            expected = self._expected(name)
            if expected is not None:
                total -= min(now - started, expected)
        return max(0.0, total)

    def done(self) -> float:
        """Seconds of work done so far, running attempts included."""
        now = self._clock()
        return self._done + sum(now - started for started in self._running.values())


def _load_rich() -> Any:
    try:
        import rich.progress  # noqa: PLC0415 - an optional extra, loaded when needed
    except ImportError:
        raise ImportError(
            "the progress bar needs rich: pip install 'quantum-partitioner[progress]'"
        ) from None
    return rich


def format_rate(rate: float | None) -> str:
    """Units per second, with as many digits as are meaningful."""
    if rate is None:
        return "-/s"
    if rate >= 100:
        return f"{rate:,.0f}/s"
    if rate >= 1:
        return f"{rate:.1f}/s"
    return f"{rate:.2f}/s"


def format_eta(seconds: float | None) -> str:
    """``M:SS`` or ``H:MM:SS``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


class ProgressBar(Instrument):
    """Draws units done / failed / skipped / running, throughput and ETA while a run goes.

    ``execute(..., progress=True)`` attaches one for a run; pass one in
    ``QuantumPartitioner(instruments=[...])`` to watch every run, or to choose where it
    draws.

    Args:
        file: Where to draw (default: standard error).
        force_terminal: Draw even if ``file`` is not a terminal (True), or never (False);
            None decides by looking at ``file``.
        refresh_per_second: How often the display is redrawn.
        description: The text before the bar (default: the mode and worker count).
        clock: The time in seconds, for throughput and the ETA (default:
            ``time.monotonic``; tests pass a :class:`~quantum_partitioner.testing.FakeClock`).

    Raises:
        ImportError: rich is not installed (``pip install 'quantum-partitioner[progress]'``).

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        file: IO[str] | None = None,
        force_terminal: bool | None = None,
        refresh_per_second: float = 5.0,
        description: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Check that rich is there; nothing is drawn until a run starts."""
        self._rich = _load_rich()
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second!r}")
        self._file = file
        self._force_terminal = force_terminal
        self._interval = 1.0 / refresh_per_second
        self._description = description
        self._clock = clock
        self._lock = threading.Lock()  # between the hooks and the redraw thread
        self._progress: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: collections.deque[tuple[float, int, float]] = collections.deque()
        #: Named limits to show when saturated (the partitioner sets them for its runs).
        self.limits: Sequence[Limit] = ()
        self._reset(0, ())

    def _reset(self, total: int, units: Iterable[QuantumUnit[Any, Any]]) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.skipped = 0
        #: Of ``skipped``: units skipped by a decision, not because a dependency failed.
        self.skipped_by_decision = 0
        self.cancelled = 0
        self.running = 0
        self.retries = 0
        self.work = WorkLeft(units, self._clock)
        self._samples.clear()

    @property
    def finished(self) -> int:
        """Units that reached a terminal state so far."""
        return self.done + self.failed + self.skipped + self.cancelled

    @property
    def filled(self) -> int:
        """Units whose work is done: completed, or skipped by a decision (the bar's fill)."""
        return self.done + self.skipped_by_decision

    def _target(self) -> IO[str]:
        return sys.stderr if self._file is None else self._file

    @property
    def active(self) -> bool:
        """Whether a run started now would be drawn: its output is a terminal, or forced.

        Only a real terminal counts (``isatty()``): unlike rich's own test, ``FORCE_COLOR``
        in a CI job's environment does not turn a log file into a terminal.
        """
        if self._force_terminal is not None:
            return self._force_terminal
        isatty = getattr(self._target(), "isatty", None)
        try:
            return bool(isatty is not None and isatty())
        except ValueError:  # a closed file
            return False

    # -- hooks: counters only --------------------------------------------------------------

    def run_started(self, event: RunStarted) -> None:
        """Reset the counters and, on a terminal, start drawing."""
        with self._lock:
            self._reset(event.total_units, event.units)
        if not self.active:
            return
        console = self._rich.console.Console(file=self._target(), force_terminal=True)
        p = self._rich.progress
        progress = p.Progress(
            p.SpinnerColumn(),
            p.TextColumn("{task.description}"),
            p.BarColumn(bar_width=24),
            p.TextColumn("{task.fields[status]}"),
            console=console,
            auto_refresh=False,
            redirect_stdout=self._file is None,
            redirect_stderr=self._file is None,
        )
        workers = f" x{event.max_workers}" if event.max_workers else ""
        description = self._description or f"{event.execution_mode}{workers}"
        self._task = progress.add_task(description, total=event.total_units, status="")
        self._progress = progress
        progress.start()
        self._refresh()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._redraw, name="quantum-partitioner-progress", daemon=True
        )
        self._thread.start()

    def unit_started(self, event: UnitStarted) -> None:
        """An attempt started."""
        with self._lock:
            self.running += 1
            self.work.started(event.unit_id)

    def unit_finished(self, event: UnitFinished) -> None:
        """A unit completed."""
        with self._lock:
            self.done += 1
            if self.work.finished(event.unit_id, event.duration):
                self.running -= 1

    def unit_failed(self, event: UnitFailed) -> None:
        """A unit failed or timed out for good."""
        with self._lock:
            self.failed += 1
            if self.work.finished(event.unit_id):
                self.running -= 1

    def unit_retrying(self, event: UnitRetrying) -> None:
        """An attempt failed and will be retried."""
        with self._lock:
            self.retries += 1
            self.running -= 1
            self.work.attempt_ended(event.unit_id)

    def unit_skipped(self, event: UnitSkipped) -> None:
        """A unit was skipped (by decision, or because of a failure upstream)."""
        with self._lock:
            self.skipped += 1
            if not event.cause.is_failure:
                self.skipped_by_decision += 1
            self.work.finished(event.unit_id)

    def unit_cancelled(self, event: UnitCancelled) -> None:
        """A unit was cancelled."""
        with self._lock:
            self.cancelled += 1
            if event.was_running:
                self.running -= 1
            self.work.finished(event.unit_id)

    def units_added(self, event: UnitsAdded) -> None:
        """A map created its items: the total grows, and so does the work left."""
        with self._lock:
            self.total += len(event.names)
            self.work.add(event.names, event.unit)

    def run_finished(self, event: RunFinished) -> None:  # noqa: ARG002 - only the end matters
        """Stop the redraw thread and draw the final state."""
        progress, thread = self._progress, self._thread
        if progress is None:
            return
        self._stop.set()
        if thread is not None:
            thread.join()
        self._refresh()
        progress.stop()
        self._progress = self._thread = None

    # -- the display -----------------------------------------------------------------------

    def _redraw(self) -> None:
        while not self._stop.wait(self._interval):
            self._refresh()

    def _sample(self) -> tuple[float | None, float | None]:
        """Units and seconds of work done per second over the last few seconds.

        None before two samples apart in time. Cancelled units are not throughput.
        """
        now = self._clock()
        samples = self._samples
        samples.append((now, self.finished - self.cancelled, self.work.done()))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        then, units_then, work_then = samples[0]
        _, units_now, work_now = samples[-1]
        if now - then <= 0:
            return None, None
        return (units_now - units_then) / (now - then), (work_now - work_then) / (now - then)

    def rate(self) -> float | None:
        """Units finished per second over the last few seconds, None before a sample."""
        with self._lock:
            return self._sample()[0]

    def eta(self) -> float | None:
        """Seconds until the run ends, or None while that cannot be told (shown ``?``).

        The work left (see :class:`WorkLeft`) over the rate at which work got done lately.
        """
        with self._lock:
            return self._eta(self._sample()[1])

    def _eta(self, work_rate: float | None) -> float | None:
        if self.finished >= self.total:
            return 0.0
        left = self.work.left()
        if left is None or not work_rate:
            return None
        return left / work_rate

    def status(self, rate: float | None = None, eta: float | None = None) -> str:
        """The counters, throughput and ETA as one line of rich markup.

        It starts with the units whose work is done (the bar's fill) out of all units, then
        each terminal state's count; a run that ended early says so. A named limit that units
        wait for shows its holders out of its concurrency and how many wait.
        """
        parts = [f"{self.filled}/{self.total}", f"[green]done {self.done}[/]"]
        if self.failed:
            parts.append(f"[bold red]failed {self.failed}[/]")
        if self.skipped:
            decided = (
                f" ({self.skipped_by_decision} by decision)" if self.skipped_by_decision else ""
            )
            parts.append(f"[magenta]skipped {self.skipped}{decided}[/]")
        if self.cancelled:
            parts.append(f"[blue]cancelled {self.cancelled}[/]")
        if self.retries:
            parts.append(f"[yellow]retries {self.retries}[/]")
        parts.append(f"[cyan]running {max(0, self.running)}[/]")
        parts += [
            f"[yellow]{limit.name.replace('[', chr(92) + '[')} "
            f"{limit.held}/{limit.concurrency or '∞'}"
            f" +{limit.waiting} waiting[/]"
            for limit in self.limits
            if limit.waiting
        ]
        parts.append(format_rate(rate))
        parts.append(f"ETA {format_eta(eta)}")
        return " · ".join(parts)

    def _refresh(self) -> None:
        progress = self._progress
        if progress is None:
            return
        with self._lock:
            rate, work_rate = self._sample()
            status = self.status(rate, self._eta(work_rate))
            filled = self.filled
            total = self.total
        progress.update(self._task, total=total, completed=filled, status=status)
        progress.refresh()
