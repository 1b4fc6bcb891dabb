"""Replay a plan on the real scheduling core with a virtual clock.

Each unit takes its weight (``metadata["estimated_duration"]``; without one the mean of the
given estimates, 1 when none is given: see :class:`Graph`) on one of ``workers``
identical workers; the scheduler chooses what runs next exactly as in a real run (priority,
then longest remaining critical path, then insertion order). Nothing runs and no time
passes: this is the sans-I/O core driven by a loop whose clock jumps from one completion to
the next.

A map expands as in a run, when what it maps over completes, to
``metadata["estimated_items"]`` items (default 1; a map over a map gets that map's item
count), each weighing what the map weighs. Every condition is taken to hold.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import InternalError
from ._graph import metadata_of
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
        starts: Each unit's predicted start, by name (map items included; a map's start is
            when it expands).
        ends: Each unit's predicted end, by name (a map's: when its last item ends).
        worker_of: Which worker (0..workers-1) runs each unit, by name (a map itself runs
            nowhere: only its items are here).
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
        busy = sum(self.ends[name] - self.starts[name] for name in self.worker_of)
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
    weight = list(graph.weight)
    n = len(graph)
    start = [0.0] * n
    end = [0.0] * n
    worker_of = [0] * n
    free = list(range(workers))  # idle workers, lowest number first
    running: list[tuple[float, int, int]] = []  # (end, unit, worker)
    now = 0.0
    while sched.is_active():
        while sched.to_decide:
            _decide(sched, now, weight=weight, start=start, end=end, worker_of=worker_of)
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
    names = sched.graph.names  # the declared units, then the items maps created
    maps = sched.maps
    for m, items in sched.items_of.items():  # a map spans its items (or ends at once)
        end[m] = max((end[j] for j in items), default=start[m])
    return Simulation(
        workers=workers,
        makespan=max(end, default=0.0),
        starts=dict(zip(names, start, strict=True)),
        ends=dict(zip(names, end, strict=True)),
        worker_of={
            name: w
            for i, (name, w) in enumerate(zip(names, worker_of, strict=True))
            if i not in maps
        },
        critical_path_length=max(graph.finish, default=0.0),
    )


def _decide(
    sched: Scheduler,
    now: float,
    *,
    weight: list[float],
    start: list[float],
    end: list[float],
    worker_of: list[int],
) -> None:
    """Settle what became ready to decide: conditions hold, maps expand to their estimate."""
    batch = list(sched.to_decide)
    sched.to_decide.clear()
    maps, units = sched.maps, sched.graph.units
    for i in batch:
        if i not in maps:
            sched.decide(i, holds=True, now=now)
            continue
        over = maps[i]
        if over in maps:  # item-wise: one item per item of that map
            count = len(sched.items_of[over])
        else:
            count = metadata_of(units[i]).get("estimated_items", 1)
        start[i] = now
        sched.expand(i, count, now)
        weight.extend([weight[i]] * count)  # each item weighs what its map weighs
        start.extend([0.0] * count)
        end.extend([0.0] * count)
        worker_of.extend([0] * count)
    sched.outbox.clear()  # what followed is only the scheduler's record here
