"""The contract every backend fulfils: drive one :class:`Run` until every unit is terminal.

A backend decides *how* attempts run (here, in threads, on an executor) and never *what*
runs next: it asks the run's scheduler. Each backend:

* starts attempts with ``scheduler.start_next(now)`` and reports each outcome with
  ``complete`` or ``fail``, passing the attempt number so late outcomes are ignored;
* waits for ``scheduler.next_deadline()`` when nothing else is due, then calls ``advance``;
  for each transition with ``was_running`` it stops or abandons that attempt;
* hands every transition to ``run.report`` and, only when instruments listen, calls
  ``run.emit_started`` / ``run.emit_finished``;
* on ``KeyboardInterrupt`` (or any error of its own) calls ``run.interrupt`` so every
  unfinished unit is CANCELED and completed results are kept, cleans up, and re-raises.

Why a ``run(run)`` method rather than ``submit``/``wait``: the thread backend is fastest when
a worker that finishes a unit picks its next one itself under the scheduler's lock, which a
submit/wait split would route through one more thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._graph import Graph
    from .._run import Run

__all__ = ["Backend"]


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

    @abstractmethod
    def run(self, run: Run) -> None:
        """Drive ``run`` until every unit is terminal.

        Raises:
            KeyboardInterrupt: After cancelling what had not finished.
        """
