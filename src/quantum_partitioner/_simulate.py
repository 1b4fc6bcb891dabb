"""Replay a plan on the real scheduling core with a virtual clock.

Each unit takes its weight (``metadata["estimated_duration"]``; without one the mean of the
given estimates, 1 when none is given: see :class:`Graph`) on one of ``workers``
identical workers; the scheduler chooses what runs next exactly as in a real run (priority,
then longest remaining critical path, then insertion order). Nothing runs and no time
passes: this is the sans-I/O core driven by a loop whose clock jumps from one completion to
the next.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import InternalError
from ._limits import Limit, LimitPlan, compile_limits
from ._scheduler import Scheduler

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._graph import Graph

__all__ = ["Simulation", "simulate"]


@dataclass(frozen=True, slots=True)
class Simulation:
    """A predicted run.

    Attributes:
        workers: How many workers were simulated.
        makespan: When the last unit ends.
        starts: Each unit's predicted start, by name.
        ends: Each unit's predicted end, by name.
        worker_of: Which worker (0..workers-1) runs each unit, by name.
        critical_path_length: The lower bound no number of workers can beat.
    """

    workers: int
    makespan: float
    starts: dict[str, float]
    ends: dict[str, float]
    worker_of: dict[str, int]
    critical_path_length: float

    @property
    def utilisation(self) -> float:
        """Busy worker time over ``workers * makespan`` (1.0 is perfectly packed)."""
        if not self.makespan:
            return 1.0
        busy = sum(self.ends[name] - self.starts[name] for name in self.starts)
        return busy / (self.workers * self.makespan)


def _fresh_limits(graph: Graph, limits: Mapping[str, Limit]) -> LimitPlan | None:
    """The units' limits as copies with full buckets: a prediction never touches the real."""
    copies = {
        name: Limit(name, limit.concurrency, limit.per_second, limit.burst)
        for name, limit in limits.items()
    }
    return compile_limits(graph, copies)


def simulate(graph: Graph, workers: int, limits: Mapping[str, Limit] | None = None) -> Simulation:
    """Predict the run of ``graph`` on ``workers`` workers, under the named ``limits``.

    Raises:
        ValueError: ``workers`` is not a positive int.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    sched = Scheduler(graph, limits=_fresh_limits(graph, limits) if limits else None)
    weight = graph.weight
    n = len(graph)
    start = [0.0] * n
    end = [0.0] * n
    worker_of = [0] * n
    free = list(range(workers))  # idle workers, lowest number first
    running: list[tuple[float, int, int]] = []  # (end, unit, worker)
    now = 0.0
    while sched.is_active():
        for i in sched.to_decide:  # a prediction takes every condition to hold
            sched.decide(i, holds=True, now=now)
        sched.to_decide.clear()
        if sched.has_deadlines:
            sched.advance(now)  # a limit's next token is due
        while free:
            i = sched.start_next(now)
            if i < 0:
                break
            worker = heapq.heappop(free)
            start[i], end[i], worker_of[i] = now, now + weight[i], worker
            heapq.heappush(running, (end[i], i, worker))
        deadline = sched.next_deadline()
        if not running and deadline is None:
            raise InternalError("simulation stalled with units left")
        if deadline is not None and (not running or deadline < running[0][0]):
            now = max(now, deadline)  # nothing ends before a waiting unit's token is due
            continue
        now = running[0][0]
        # Finish everything that ends now before choosing again, so a unit released by the
        # second of two simultaneous completions competes on equal terms.
        while running and running[0][0] == now:
            _, i, worker = heapq.heappop(running)
            sched.complete(i, 1, None, now)
            heapq.heappush(free, worker)
    names = graph.names
    return Simulation(
        workers=workers,
        makespan=max(end, default=0.0),
        starts=dict(zip(names, start, strict=True)),
        ends=dict(zip(names, end, strict=True)),
        worker_of=dict(zip(names, worker_of, strict=True)),
        critical_path_length=max(graph.finish, default=0.0),
    )
