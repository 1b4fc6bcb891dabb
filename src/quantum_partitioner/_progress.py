"""A live progress bar for long runs, drawn with rich (the ``progress`` extra).

Policy: the bar is an :class:`~quantum_partitioner.Instrument`, so the engine knows nothing
about it. Its hooks only add to integer counters (units done, failed, skipped, cancelled,
running, retries); a daemon thread reads those counters a few times a second and redraws,
so a run of many short units pays one counter update per event, not one redraw. Throughput
is measured over the last few seconds and the ETA follows from it.

It writes to standard error, and only when that is a terminal: when output is redirected
(CI logs, pipes, files) it draws nothing at all, and ``execute(..., progress=True)`` then
does not even attach it, so the run pays nothing.

State: the counters and the display of the current run; a new run resets them.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from ._events import Instrument

if TYPE_CHECKING:
    from ._events import (
        RunFinished,
        RunStarted,
        UnitCancelled,
        UnitFailed,
        UnitFinished,
        UnitRetrying,
        UnitSkipped,
        UnitStarted,
    )

__all__ = ["ProgressBar"]

#: How far back throughput is measured, in seconds.
_RATE_WINDOW = 10.0


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
    """``M:SS`` or ``H:MM:SS``; ``-`` when unknown."""
    if seconds is None:
        return "-"
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
    ) -> None:
        """Check that rich is there; nothing is drawn until a run starts."""
        self._rich = _load_rich()
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be > 0, got {refresh_per_second!r}")
        self._file = file
        self._force_terminal = force_terminal
        self._interval = 1.0 / refresh_per_second
        self._description = description
        self._progress: Any = None
        self._task: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._reset(0)

    def _reset(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.skipped = 0
        #: Of the skipped units, those skipped by a decision (not because of a failure).
        self.decided = 0
        self.cancelled = 0
        self.running = 0
        self.retries = 0
        self._started_at = time.monotonic()
        self._samples.clear()

    @property
    def finished(self) -> int:
        """Units that reached a terminal state so far."""
        return self.done + self.failed + self.skipped + self.cancelled

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
        self._reset(event.total_units)
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

    def unit_started(self, event: UnitStarted) -> None:  # noqa: ARG002 - counts only
        """An attempt started."""
        self.running += 1

    def unit_finished(self, event: UnitFinished) -> None:  # noqa: ARG002 - counts only
        """A unit completed."""
        self.done += 1
        self.running -= 1

    def unit_failed(self, event: UnitFailed) -> None:  # noqa: ARG002 - counts only
        """A unit failed or timed out for good."""
        self.failed += 1
        self.running -= 1

    def unit_retrying(self, event: UnitRetrying) -> None:  # noqa: ARG002 - counts only
        """An attempt failed and will be retried."""
        self.retries += 1
        self.running -= 1

    def unit_skipped(self, event: UnitSkipped) -> None:
        """A unit was skipped (by decision, or because of a failure upstream)."""
        self.skipped += 1
        if not event.cause.is_failure:
            self.decided += 1

    def unit_cancelled(self, event: UnitCancelled) -> None:
        """A unit was cancelled."""
        self.cancelled += 1
        if event.was_running:
            self.running -= 1

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

    def rate(self) -> float | None:
        """Units finished per second over the last few seconds, None before a sample."""
        now = time.monotonic()
        samples = self._samples
        samples.append((now, self.finished))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        then, finished_then = samples[0]
        if now - then <= 0:
            return None
        return (self.finished - finished_then) / (now - then)

    def status(self, rate: float | None = None, eta: float | None = None) -> str:
        """The counters, throughput and ETA as one line of rich markup."""
        parts = [f"{self.finished}/{self.total}", f"[green]done {self.done}[/]"]
        if self.failed:
            parts.append(f"[bold red]failed {self.failed}[/]")
        if self.skipped:
            decided = f" ({self.decided} by decision)" if self.decided else ""
            parts.append(f"[magenta]skipped {self.skipped}{decided}[/]")
        if self.cancelled:
            parts.append(f"[blue]cancelled {self.cancelled}[/]")
        if self.retries:
            parts.append(f"[yellow]retries {self.retries}[/]")
        parts.append(f"[cyan]running {max(0, self.running)}[/]")
        parts.append(format_rate(rate))
        parts.append(f"ETA {format_eta(eta)}")
        return " · ".join(parts)

    def _refresh(self) -> None:
        progress = self._progress
        if progress is None:
            return
        finished = self.finished
        rate = self.rate()
        left = self.total - finished
        eta = 0.0 if not left else (left / rate if rate else None)
        progress.update(self._task, completed=finished, status=self.status(rate, eta))
        progress.refresh()
