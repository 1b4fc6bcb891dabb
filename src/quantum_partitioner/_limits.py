"""Layer 2: named limits, and the per-run gate through which the scheduler takes them.

A :class:`Limit` is shared data, not an object units hold: ``concurrency`` slots and a token
bucket (``per_second`` tokens a second, at most ``burst`` saved up), plus an optional pause.
It never sleeps and never reads a clock: callers pass ``now``. One ``Limit`` may be used by
several runs at once (several partitioners in one process), so its counters sit behind one
module lock, and a run that waits on it is told when another run releases it.

A :class:`LimitGate` is one scheduler's view of the limits its units name. The scheduler asks
it before starting a unit that names limits (:meth:`LimitGate.try_take`); a unit whose limits
lack room does not start and waits in the gate, holding nothing.

Policy:
    * A unit starts only when every limit it names has room for its slots: free
      ``concurrency`` slots, enough tokens, and no pause. Taking is all or nothing.
    * No head-of-line blocking: a unit that cannot start waits in the heap of the first limit
      that refused it, and the scheduler goes on to the next ready unit.
    * No starvation: within one limit, the best waiting unit (scheduler order) reserves what
      frees up: a worse unit never takes that limit while a better one waits on it.
    * Slots come back on every outcome (:meth:`LimitGate.release`); room on a limit moves its
      best waiters back to the ready queue, as many as the room allows.
    * A unit waiting for tokens or for a pause to end is a deadline (:meth:`next_deadline`),
      never a sleep. A release by another run sets ``nudged`` and calls ``wake``.
    * ``in_order`` (SEQUENTIAL): while a unit waits, nothing else starts, so the order stays
      the scheduler's; only a rate limit or another run's hold can make it wait.

State:
    Per limit: ``held`` slots, ``tokens`` at ``stamp``, ``paused_until``, and the listeners
    (other runs' gates) to tell on release. Per gate: each unit's needs, the slots each
    running unit holds, one waiting heap per limit (scheduler positions), limit deadlines,
    and statistics for :class:`LimitStats`.
"""

from __future__ import annotations

import heapq
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ._graph import customised

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._graph import Graph

__all__ = [
    "Limit",
    "LimitGate",
    "LimitPlan",
    "LimitStats",
    "check_limit_name",
    "compile_limits",
    "normalize_unit_limits",
]

#: Guards every Limit's counters. One lock for all limits makes taking several at once
#: atomic without a lock order; it is held for a few arithmetic steps only.
_LOCK: Final = threading.Lock()

_NO_WAIT: Final = -math.inf


def check_limit_name(name: object) -> str:
    """Return ``name`` if it is a usable limit name.

    Raises:
        TypeError: It is not a string.
        ValueError: It is empty.
    """
    if not isinstance(name, str):
        raise TypeError(f"a limit name must be a string, got {name!r}")
    if not name:
        raise ValueError("a limit name must not be empty")
    return name


def _check_amount(name: str, field: str, value: object, *, integral: bool) -> None:
    kind = int if integral else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integral else "a number"
        raise TypeError(f"limit {name!r}: {field} must be {what} or None, got {value!r}")
    assert isinstance(value, int | float)
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ValueError(f"limit {name!r}: {field} must be positive and finite, got {value!r}")


class Limit:
    """A named limit on running attempts: concurrency slots and a token bucket.

    Args:
        name: The name units refer to in ``limits=``.
        concurrency: At most this many slots held by running attempts at once (None: no cap).
        per_second: Starts per second on average, as a token bucket (None: no rate limit).
        burst: How many starts the bucket allows at once (its size); default 1.

    Raises:
        TypeError: A knob has the wrong type, or ``name`` is not a string.
        ValueError: A knob is not positive and finite, or ``name`` is empty.

    The bucket starts full and keeps its state across runs; one Limit may be shared by
    several partitioners running at the same time.

    .. versionadded:: 0.2
    """

    __slots__ = (
        "_listeners",
        "burst",
        "concurrency",
        "held",
        "name",
        "paused_until",
        "per_second",
        "stamp",
        "tokens",
        "waiting",
    )

    def __init__(
        self,
        name: str,
        concurrency: int | None = None,
        per_second: float | None = None,
        burst: int = 1,
    ) -> None:
        """Create a limit; see the class docstring."""
        check_limit_name(name)
        if concurrency is not None:
            _check_amount(name, "concurrency", concurrency, integral=True)
        if per_second is not None:
            _check_amount(name, "per_second", per_second, integral=False)
        _check_amount(name, "burst", burst, integral=True)
        self.name = name
        self.concurrency = concurrency
        self.per_second = None if per_second is None else float(per_second)
        self.burst = burst
        #: Slots held by running attempts, over every run using this limit.
        self.held = 0
        #: Units waiting for it, over every run using it (the progress bar shows them).
        self.waiting = 0
        #: Tokens in the bucket at time ``stamp`` (None until the bucket is first used).
        self.tokens = float(burst)
        self.stamp: float | None = None
        #: No new start before this time (see ``ctx.pause_limit``).
        self.paused_until = _NO_WAIT
        self._listeners: dict[int, Callable[[], None]] = {}

    def __repr__(self) -> str:
        """Show the knobs and how many slots are held."""
        return (
            f"Limit({self.name!r}, concurrency={self.concurrency}, "
            f"per_second={self.per_second}, burst={self.burst}, held={self.held})"
        )

    # -- called with _LOCK held ------------------------------------------------------------

    def _refill(self, now: float) -> float:
        """The tokens in the bucket at ``now`` (moves the bucket's clock forward)."""
        rate = self.per_second
        assert rate is not None
        stamp = self.stamp
        if stamp is None or now < stamp:
            # First use, or a run on another clock (a test's FakeClock): start afresh.
            self.stamp = now
            return self.tokens
        tokens = min(float(self.burst), self.tokens + (now - stamp) * rate)
        self.tokens = tokens
        self.stamp = now
        return tokens

    def _room_at(self, slots: int, now: float) -> float:
        """When ``slots`` could be taken: ``-inf`` now, ``inf`` on a release, else a time."""
        if self.paused_until > now:
            return self.paused_until
        concurrency = self.concurrency
        if concurrency is not None and self.held + slots > concurrency:
            return math.inf
        if self.per_second is not None:
            tokens = self._refill(now)
            if tokens < slots:
                return now + (slots - tokens) / self.per_second
        return _NO_WAIT

    # -- public ----------------------------------------------------------------------------

    def pause(self, until: float) -> None:
        """Hold back new starts until time ``until`` (a later pause wins)."""
        with _LOCK:
            self.paused_until = max(self.paused_until, until)
            listeners = list(self._listeners.values())
        for listener in listeners:  # outside the lock: a listener may take a driver's lock
            listener()

    def _listen(self, key: int, listener: Callable[[], None]) -> None:
        with _LOCK:
            self._listeners[key] = listener

    def _unlisten(self, key: int) -> None:
        with _LOCK:
            self._listeners.pop(key, None)


@dataclass(frozen=True, slots=True)
class LimitStats:
    """What one limit saw during a run (:meth:`QuantumPartitioner.limit_stats`).

    Attributes:
        name: The limit's name.
        concurrency: Its ``concurrency`` knob.
        per_second: Its ``per_second`` knob.
        burst: Its ``burst`` knob.
        peak: The most slots held at once while this run took it (other runs sharing the
            limit included).
        starts: Attempts of this run that took the limit.
        waited: Seconds units of this run spent waiting for it, added up.
        waits: How many times a unit of this run had to wait for it.
        released_at_timeout: Attempts whose slots came back at their timeout while they may
            still run (a thread cannot be killed): they no longer count against the limit.

    .. versionadded:: 0.2
    """

    name: str
    concurrency: int | None
    per_second: float | None
    burst: int
    peak: int
    starts: int
    waited: float
    waits: int
    released_at_timeout: int


#: One unit's needs: ``(limit id in the gate, limit, slots)`` per limit it names.
Needs = tuple[tuple[int, Limit, int], ...]


@dataclass(frozen=True, slots=True)
class LimitPlan:
    """The limits a graph's units name, compiled once (the partitioner caches it per graph).

    Attributes:
        limits: The distinct limits, by limit id.
        needs: Per unit index that names limits, its needs.
    """

    limits: tuple[Limit, ...]
    needs: Mapping[int, Needs]

    @classmethod
    def compile(cls, wanted: Mapping[int, Mapping[Limit, int]]) -> LimitPlan | None:
        """Index ``{unit index: {limit: slots}}``; None when no unit names a limit."""
        ids: dict[Limit, int] = {}
        needs: dict[int, Needs] = {}
        for i, row in wanted.items():
            if row:
                needs[i] = tuple(
                    (ids.setdefault(limit, len(ids)), limit, slots) for limit, slots in row.items()
                )
        if not needs:
            return None
        return cls(tuple(ids), needs)


class LimitGate:
    """One scheduler's limits: who needs what, who holds what, who waits where.

    Args:
        plan: The compiled limits of the graph's units.
        position_of: Each unit's position in the scheduler's order (lower is better).
        by_position: The unit at each position.
        push_ready: Put a unit back in the scheduler's ready queue.

    Not thread-safe on its own (the scheduler's driver serialises calls), except for the
    listener other runs call, which only sets ``nudged`` and calls ``wake``.
    """

    def __init__(
        self,
        plan: LimitPlan,
        position_of: Sequence[int],
        by_position: Sequence[int],
        push_ready: Callable[[int], None],
    ) -> None:
        """Prepare one run's state over the compiled limits."""
        self.limits = plan.limits
        self.needs = plan.needs
        count = len(self.limits)
        self._position_of = position_of
        self._by_position = by_position
        self._push_ready = push_ready
        #: Slots each running unit holds (absent: it holds none).
        self.holding: dict[int, Needs] = {}
        #: Positions of waiting units, per limit: a heap, best first.
        self.waiting: list[list[int]] = [[] for _ in range(count)]
        self.waiting_count = 0
        #: ``(time, limit id)``: when a waiting limit may have room again.
        self.due: list[tuple[float, int]] = []
        self.due_at: list[float] = [math.inf] * count
        #: Set (from any thread) when another run released a limit this gate waits on.
        self.nudged = False
        #: Called (from any thread) after ``nudged`` is set; the scheduler's owner sets it.
        self.wake: Callable[[], None] = _nothing
        #: Called when a new limit deadline is set (inside the driver's critical section).
        self.on_new_deadline: Callable[[float], None] | None = None
        #: SEQUENTIAL: while a unit waits, start nothing else.
        self.in_order = False
        #: Decides cache hits before anything is taken: ``probe(i)`` true means unit ``i``'s
        #: result is served without running it, so it takes no slot and no token.
        self.probe: Callable[[int], bool] | None = None
        # Statistics, per limit id.
        self.peak = [0] * count
        self.starts = [0] * count
        self.waited = [0.0] * count
        self.waits = [0] * count
        self.released_at_timeout = [0] * count
        #: Per unit: when it began waiting, and on which limit it waits now.
        self.wait_since: dict[int, float] = {}
        self.blocked_on: dict[int, int] = {}
        #: Per unit: seconds waited in all, and the limit it waited for last (for the record).
        self.unit_waited: dict[int, float] = {}
        self.unit_waited_for: dict[int, str] = {}
        #: Per unit: when its last wait began and ended (for the trace).
        self.last_wait: dict[int, tuple[float, float]] = {}
        self._key = id(self)

    def open(self) -> None:
        """Listen to the limits for other runs' releases (the run begins)."""
        for limit in self.limits:
            limit._listen(self._key, self._listener)

    def close(self) -> None:
        """Stop listening to the limits (the run is over)."""
        for limit in self.limits:
            limit._unlisten(self._key)

    def _listener(self) -> None:
        """A limit this gate uses was released elsewhere or paused: look again if one waits."""
        if self.waiting_count:
            self.nudged = True
            self.wake()

    # -- queries ---------------------------------------------------------------------------

    @property
    def has_deadlines(self) -> bool:
        """Whether :meth:`advance` may have work (cheap)."""
        return bool(self.due) or self.nudged

    def next_deadline(self) -> float | None:
        """When a waiting limit may have room again; ``-inf`` when nudged; else None."""
        if self.nudged:
            return _NO_WAIT
        due = self.due
        while due and due[0][0] != self.due_at[due[0][1]]:
            heapq.heappop(due)  # superseded
        return due[0][0] if due else None

    # -- starting and ending ---------------------------------------------------------------

    def try_take(self, i: int, now: float) -> bool:
        """Take unit ``i``'s slots and tokens and return True, or make it wait and return False.

        A unit that names no limit, or whose result the cache serves, takes nothing.
        """
        needs = self.needs.get(i)
        if needs is None:
            return True
        probe = self.probe
        if probe is not None and probe(i):
            return True
        waiting = self.waiting
        if len(needs) == 1:  # the common case: one concurrency limit, nobody waiting
            ((lid, limit, slots),) = needs
            with _LOCK:
                concurrency = limit.concurrency
                held = limit.held + slots
                if (
                    not waiting[lid]
                    and limit.per_second is None
                    and limit.paused_until <= now
                    and (concurrency is None or held <= concurrency)
                ):
                    limit.held = held
                    peak = self.peak
                    if held > peak[lid]:  # noqa: PLR1730 - cheaper than max() on the hot path
                        peak[lid] = held
                    self.starts[lid] += 1
                    self.holding[i] = needs
                    if self.wait_since:
                        self._end_wait(i, now)
                    return True
        pos = self._position_of[i]
        blocked = -1
        until = _NO_WAIT
        with _LOCK:
            for lid, limit, slots in needs:
                heap = waiting[lid]
                if heap and heap[0] < pos:
                    blocked, until = lid, math.inf  # a better unit waits here: it has first call
                    break
                if limit.per_second is None and limit.paused_until <= now:
                    concurrency = limit.concurrency  # the common case, inline
                    if concurrency is not None and limit.held + slots > concurrency:
                        blocked, until = lid, math.inf
                        break
                    continue
                until = limit._room_at(slots, now)
                if until != _NO_WAIT:
                    blocked = lid
                    break
            if blocked < 0:
                peak, starts = self.peak, self.starts
                for lid, limit, slots in needs:
                    held = limit.held + slots
                    limit.held = held
                    if limit.per_second is not None:
                        limit.tokens -= slots
                    peak[lid] = max(peak[lid], held)
                    starts[lid] += 1
                self.holding[i] = needs
                if self.wait_since:
                    self._end_wait(i, now)
                return True
            # Pushed under the lock: a release in another run now sees this waiter.
            heapq.heappush(waiting[blocked], pos)
            self.waiting_count += 1
            self.limits[blocked].waiting += 1
        if i not in self.wait_since:
            self.wait_since[i] = now
            self.waits[blocked] += 1
        self.blocked_on[i] = blocked
        if until != math.inf and waiting[blocked][0] == pos:
            self._set_due(blocked, until)
        # Room this unit was moved to the ready queue for, on its other limits, is free
        # again for the next waiter there.
        for lid, _, _ in needs:
            if lid != blocked and waiting[lid]:
                self._promote(lid, now)
        return False

    def _end_wait(self, i: int, now: float) -> None:
        """Unit ``i`` starts or ends at ``now``: if it waited, record for how long."""
        since = self.wait_since.pop(i, None)
        if since is None:
            return
        waited = now - since
        lid = self.blocked_on.pop(i)
        self.last_wait[i] = (since, now)
        self.waited[lid] += waited
        self.unit_waited[i] = self.unit_waited.get(i, 0.0) + waited
        self.unit_waited_for[i] = self.limits[lid].name

    def release(self, i: int, now: float, *, timed_out: bool = False) -> None:
        """Give back what unit ``i`` holds (any outcome) and let waiters in."""
        needs = self.holding.pop(i, None)
        if needs is None:
            return
        if len(needs) == 1:  # the common case, without the loops below
            lid, limit, slots = needs[0]
            with _LOCK:
                limit.held -= slots
                listeners = limit._listeners
                shared = len(listeners) > 1  # with a run going on elsewhere
                if shared:
                    key = self._key
                    wakes = [f for k, f in listeners.items() if k != key]
            if timed_out:
                self.released_at_timeout[lid] += 1
            if self.waiting[lid]:
                self._promote(lid, now)
            if shared:
                for listener in wakes:
                    listener()
            return
        others: dict[int, Callable[[], None]] | None = None
        with _LOCK:
            for _, limit, slots in needs:
                limit.held -= slots
                if len(limit._listeners) > 1:  # shared with a run going on elsewhere
                    key = self._key
                    if others is None:
                        others = {}
                    others.update((k, f) for k, f in limit._listeners.items() if k != key)
        waiting = self.waiting
        for lid, _, _ in needs:
            if timed_out:
                self.released_at_timeout[lid] += 1
            if waiting[lid]:
                self._promote(lid, now)
        if others:  # outside the lock; each run's wake-up takes no lock of its own
            for listener in others.values():
                listener()

    def advance(self, now: float) -> None:
        """Let waiters in on every limit whose deadline passed, or all after a nudge."""
        if self.nudged:
            self.nudged = False
            for lid, heap in enumerate(self.waiting):
                if heap:
                    self._promote(lid, now)
        due = self.due
        while due and due[0][0] <= now:
            at, lid = heapq.heappop(due)
            if at == self.due_at[lid]:
                self.due_at[lid] = math.inf
                self._promote(lid, now)

    def clear(self) -> None:
        """Forget every waiter (the run was cancelled)."""
        with _LOCK:
            for limit, heap in zip(self.limits, self.waiting, strict=True):
                limit.waiting -= len(heap)
                heap.clear()
        self.waiting_count = 0
        self.due.clear()
        self.due_at = [math.inf] * len(self.limits)

    def forget(self, i: int, now: float) -> None:
        """Unit ``i`` ended while waiting or holding (cancelled): settle its record.

        One cancelled alone (``cancel_rest``) while it waits leaves the limit's queue, and
        the next waiters get the room it waited for, or was moved to the ready queue for:
        else, at the head of the queue, it would hold back every unit behind it and, once
        room came, take that room for nobody, and the run would wait for ever.
        """
        lid = self.blocked_on.get(i)
        if lid is None:
            return
        self._end_wait(i, now)
        heap = self.waiting[lid]
        position = self._position_of[i]
        with _LOCK:
            if position in heap:
                heap.remove(position)
                heapq.heapify(heap)
                self.waiting_count -= 1
                self.limits[lid].waiting -= 1
        for other, _, _ in self.needs[i]:
            if self.waiting[other]:
                self._promote(other, now)

    # -- internals -------------------------------------------------------------------------

    def _set_due(self, lid: int, at: float) -> None:
        if at < self.due_at[lid]:
            self.due_at[lid] = at
            heapq.heappush(self.due, (at, lid))
            hook = self.on_new_deadline
            if hook is not None:
                hook(at)

    def _promote(self, lid: int, now: float) -> None:
        """Move the best waiters of limit ``lid`` to the ready queue, as many as fit."""
        heap = self.waiting[lid]
        limit = self.limits[lid]
        by_position = self._by_position
        with _LOCK:
            free_at: float | None = None
            free = 0.0
            tokens = 0.0
            if limit.paused_until > now:
                free_at = limit.paused_until
            else:
                concurrency = limit.concurrency
                free = math.inf if concurrency is None else float(concurrency - limit.held)
                tokens = math.inf if limit.per_second is None else limit._refill(now)
            moved = []
            while heap and free_at is None:
                i = by_position[heap[0]]
                slots = next(s for k, _, s in self.needs[i] if k == lid)
                if slots > free:
                    break  # the best waiter keeps what is free; a release brings more
                if slots > tokens:
                    assert limit.per_second is not None
                    free_at = now + (slots - tokens) / limit.per_second
                    break
                heapq.heappop(heap)
                self.waiting_count -= 1
                limit.waiting -= 1
                free -= slots
                tokens -= slots
                moved.append(i)
        if free_at is not None:
            self._set_due(lid, free_at)
        for i in moved:
            self._push_ready(i)


def compile_limits(graph: Graph, named: Mapping[str, Limit]) -> LimitPlan | None:
    """The limits ``graph``'s units name, compiled against ``named``; None if none does.

    Names no limit of ``named`` has are left out (the partitioner refuses them first).
    """
    if not named:
        return None
    return LimitPlan.compile(
        {
            i: {named[name]: slots for name, slots in options.limits.items() if name in named}
            for i, options in customised(graph.units)
            if options.limits
        }
    )


def _nothing() -> None:
    """Wake nobody (until the scheduler's owner installs its wake-up)."""


def normalize_unit_limits(unit_id: str, limits: object) -> dict[str, int] | None:
    """A unit's ``limits=`` as ``{name: slots}``, or None for none.

    Raises:
        TypeError: Not a list of names or a dict of names to slots (names the unit).
        ValueError: A slot count is not positive.
    """
    if limits is None:
        return None
    if isinstance(limits, str):
        raise TypeError(
            f"unit {unit_id!r}: limits must be a list of limit names or a dict of names to "
            f"slots, got the string {limits!r} (write [{limits!r}])"
        )
    out: dict[str, int] = {}
    if isinstance(limits, dict):
        for name, slots in limits.items():
            if not isinstance(name, str):
                raise TypeError(f"unit {unit_id!r}: a limit name must be a string, got {name!r}")
            if isinstance(slots, bool) or not isinstance(slots, int):
                raise TypeError(
                    f"unit {unit_id!r}: slots of limit {name!r} must be an int, got {slots!r}"
                )
            if slots < 1:
                raise ValueError(
                    f"unit {unit_id!r}: slots of limit {name!r} must be >= 1, got {slots}"
                )
            out[name] = slots
    elif isinstance(limits, list | tuple | set | frozenset):
        for name in limits:
            if not isinstance(name, str):
                raise TypeError(f"unit {unit_id!r}: a limit name must be a string, got {name!r}")
            out[name] = out.get(name, 0) + 1
    else:
        raise TypeError(
            f"unit {unit_id!r}: limits must be a list of limit names or a dict of names to "
            f"slots, got {limits!r}"
        )
    return out or None
