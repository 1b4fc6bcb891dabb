"""Layer 2, the sans-I/O scheduling core: the one place that decides what runs next.

It has the shape of ``graphlib.TopologicalSorter``: a driver asks for the next ready unit
(:meth:`Scheduler.start_next`), runs it however it likes, and reports the outcome
(:meth:`~Scheduler.complete` or :meth:`~Scheduler.fail`). The core never calls user code,
never sleeps and never reads the clock: time comes in as ``now`` and leaves as a deadline
(:meth:`~Scheduler.next_deadline`) that the driver waits for before calling
:meth:`~Scheduler.advance`. Every backend drives this same machine, so the semantics below
hold in every mode.

Policy:
    * A unit is ready when every dependency completed or failed with a fallback value.
    * Among ready units: higher ``priority`` first, then the longer remaining critical path
      (weighted by ``estimated_duration``), then insertion order (:meth:`Graph.priority_order`).
    * A failed attempt with retries left goes back to PENDING with a ``not_before`` deadline:
      it holds no worker while it waits.
    * A running attempt past its ``timeout`` deadline fails with :class:`UnitTimeoutError`
      (retried like any failure); the driver is told so it can stop or abandon it.
    * A unit that fails for good is FAILED (or TIMEOUT). With ``metadata["fallback_value"]``
      its dependents receive that value and run; otherwise its transitive dependents are
      SKIPPED. With ``fail_fast`` every unit that has not started is CANCELED.
    * Outcomes of attempts that are no longer current (timed out, cancelled) are ignored.
    * Named limits (:mod:`._limits`): a ready unit whose limits lack room is not started; it
      waits in the :class:`LimitGate`, holding nothing, its timeout not started, and the next
      ready unit with room starts instead. Slots are released on every outcome.
    * A run deadline (:meth:`Scheduler.set_run_deadline`) cancels every unfinished unit,
      running ones included, when it passes.

Run-time decisions (only graphs that use them pay for them; see "decisions" below):
    * A unit with a join rule (``run_if``) other than ``all_success`` is judged by
      :func:`~quantum_partitioner._joins.judge` each time a dependency becomes terminal:
      it becomes ready, waits, or is SKIPPED with the cause the rule gives.
    * A unit with a condition (``when=``) that becomes ready goes to :attr:`to_decide`
      instead of the ready queue; the driver asks the predicate (it is user code) and
      reports the answer with :meth:`decide`: true queues it, false skips it.
    * An attempt that raises :class:`SkipUnit` ends the unit SKIPPED (never retried).
    * A skip by decision counts as SKIPPED for the dependents' rules, a skip caused by a
      failure as failed. The first such skip in a graph without rules switches the
      scheduler to this path (counts per unit) for the rest of the run.

State:
    Per unit, in lists indexed by unit: ``state``, ``attempts``, ``started``, ``ended``,
    ``results``, plus the count of dependencies still unfinished. The ready queue is a heap of
    integer positions in the precomputed priority order; retries and timeouts are heaps of
    deadlines. ``errors`` is sparse: only units that did not complete have an entry.
"""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._errors import (
    InternalError,
    MapItemsFailedError,
    SkipCause,
    SkipUnit,
    UnitCancelledError,
    UnitSkippedError,
    UnitTimeoutError,
    error_text,
)
from ._graph import Graph, UnitState, customised
from ._joins import ALL_SUCCESS, Verdict, judge
from ._limits import LimitGate, LimitPlan
from ._policies import DEFAULT_RETRY_POLICY, RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Sequence


__all__ = ["Scheduler", "Transition"]

_PENDING: Final = UnitState.PENDING
_RUNNING: Final = UnitState.RUNNING
_COMPLETED: Final = UnitState.COMPLETED
_FAILED: Final = UnitState.FAILED
_TIMEOUT: Final = UnitState.TIMEOUT
_SKIPPED: Final = UnitState.SKIPPED
_CANCELED: Final = UnitState.CANCELED

_FALLBACK_KEY: Final = "fallback_value"
_NO_DEPS: Final[list[int]] = []  # shared by every item without dependencies: never mutated

# How a terminal dependency counts for its dependents' join rules (see _joins).
_OK: Final = 0
_BAD: Final = 1
_SKIP: Final = 2
_RUN: Final = Verdict.RUN
_WAIT: Final = Verdict.WAIT
_SKIP_VERDICT: Final = Verdict.SKIP


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change the driver did not cause directly, for it to act on and report.

    Attributes:
        index: The unit's index.
        state: Its new state. PENDING means a retry was scheduled for ``retry_at``.
        attempt: The attempt this concerns (the failed one for a retry).
        error: The failure, or why the unit was skipped or cancelled.
        retry_at: For a scheduled retry, the time it becomes ready.
        was_running: The unit had an attempt in flight that the driver should stop.
    """

    index: int
    state: UnitState
    attempt: int
    error: BaseException | None
    retry_at: float | None = None
    was_running: bool = False


class Scheduler:
    """The state machine of one run over a compiled :class:`Graph`.

    Args:
        graph: The compiled units.
        retry_policy: The default retry policy; a unit's own ``retry_policy`` wins.
        fail_fast: Cancel every unit that has not started once one fails for good.
        lane_of: For drivers that run units in several places at once (processes for some,
            threads for others), each unit's lane: ready units are queued per lane, so a
            full lane never holds back another. Default: one lane.
        limits: The compiled named limits the units name (see ``_limits``), if any.

    Not thread-safe: a threaded driver holds one lock around every call.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        retry_policy: RetryPolicy | None = None,
        fail_fast: bool = False,
        lane_of: Sequence[int] | None = None,
        limits: LimitPlan | None = None,
    ) -> None:
        """Set every unit PENDING and queue the units without dependencies."""
        if graph.maps:  # the run adds map items: grow a copy, never the shared graph
            graph = graph.for_run()
        n = len(graph)
        units = graph.units
        #: The graph this run schedules: a run-local copy that grows when maps expand.
        self.graph = graph
        self.fail_fast = fail_fast
        self.default_policy = DEFAULT_RETRY_POLICY if retry_policy is None else retry_policy
        self.names = graph.names
        # Most units have default options: fill in the few that have their own.
        self.timeouts: list[float | None] = [None] * n
        self.retries: list[int] = [0] * n
        self.has_timeouts = False
        for i, options in customised(units):
            if options.timeout is not None:
                self.timeouts[i] = options.timeout
                self.has_timeouts = True
            self.retries[i] = options.retries
        # The metadata slot read directly (metadata_of inlined): once per unit per run.
        self.fallbacks: dict[int, Any] = {
            i: unit._metadata[_FALLBACK_KEY]
            for i, unit in enumerate(units)
            if unit._metadata and _FALLBACK_KEY in unit._metadata
        }

        self.state: list[UnitState] = [_PENDING] * n
        self.attempts: list[int] = [0] * n
        # Times as raw doubles: no float object per unit.
        self.started: array[float] = array("d", bytes(8 * n))
        self.ended: array[float] = array("d", bytes(8 * n))
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException] = {}
        self.running = 0
        self.terminal = 0
        self.stopped = False

        self._n = n
        self._deps = graph.deps
        self._dependents = graph.dependents
        self._waiting = [len(row) for row in graph.deps]
        by_position, position_of_static = graph.priority_order()
        # Positions are ints; a map's items take float positions between them, and then
        # these two become a list and a dict (see _init_maps).
        self._by_position: Any = by_position
        self._position_of: Any = position_of_static
        self.lane_of: list[int] = [0] * n if lane_of is None else list(lane_of)
        if len(self.lane_of) != n:
            raise ValueError(f"lane_of has {len(self.lane_of)} entries for {n} units")
        #: Each map's index -> the unit it maps over (see "maps" below); usually empty.
        self.maps = graph.maps
        #: Each expanded map's items, as a range of indices.
        self.items_of: dict[int, range] = {}
        #: Each item's ``(map, position in the map)``.
        self.item_of: dict[int, tuple[int, int]] = {}
        #: Each item of a map over a map -> the item it maps (its ``ctx.item`` is that result).
        self.item_parent: dict[int, int] = {}
        # Expanded maps whose items have not all ended.
        self._collecting: set[int] = set()
        if self.maps:
            self._init_maps()
        position_of = self._position_of
        self._init_decisions(graph)
        conditioned = self._conditioned
        lanes = max(self.lane_of, default=0) + 1
        self._heaps: list[list[int]] = [[] for _ in range(lanes)]
        for i in range(n):
            if not self._waiting[i]:
                if conditioned and i in conditioned:
                    self.to_decide.append(i)
                else:
                    self._heaps[self.lane_of[i]].append(position_of[i])
        for heap in self._heaps:
            heapq.heapify(heap)
        # The single-lane case (every backend but the mixed one) reads this heap directly.
        self._ready = self._heaps[0] if lanes == 1 else None
        self._timeouts_heap: list[tuple[float, int, int]] = []
        #: The timeout deadline of each running attempt whose start a lane put off
        #: (:meth:`hold`, :meth:`begin`): inf while held. Its entries in the heap that differ
        #: are stale. Empty but on that rare path: the heap's checks then cost a truth test.
        self._moved_deadlines: dict[tuple[int, int], float] = {}
        self._retries_heap: list[tuple[float, int]] = []
        #: The named limits' gate; None when no unit names a limit (then limits cost nothing).
        self.gate: LimitGate | None = (
            LimitGate(limits, position_of, self._by_position, self._push_ready) if limits else None
        )
        if self.gate is not None and self.maps:
            self.gate.needs = dict(self.gate.needs)  # items join it as maps expand
        #: When the whole run must stop (see :meth:`set_run_deadline`), and why it stopped.
        self.run_deadline: float | None = None
        self._deadline_reason = ""
        #: Why the run stopped early: "deadline", "fail_fast", or what the driver set.
        self.stop_reason: str | None = None

    # -- queries ---------------------------------------------------------------------------

    def is_active(self) -> bool:
        """Whether some unit has not reached a terminal state."""
        return self.terminal < self._n

    @property
    def ready_count(self) -> int:
        """How many units are ready to start now."""
        if self._ready is not None:
            return len(self._ready)
        return sum(map(len, self._heaps))

    @property
    def lanes(self) -> int:
        """How many lanes (ready queues) there are: 1 unless ``lane_of`` was given."""
        return len(self._heaps)

    def best_lane(self, allowed: Sequence[bool]) -> int:
        """Of the lanes ``allowed``, the one whose best ready unit comes first, or -1.

        For a driver that starts the units of several lanes within one limit, so the
        priority order holds across its lanes.
        """
        best, best_position = -1, -1
        for lane, heap in enumerate(self._heaps):
            if heap and allowed[lane] and (best < 0 or heap[0] < best_position):
                best, best_position = lane, heap[0]
        return best

    def start_first(self, now: float, allowed: Sequence[bool]) -> int:
        """:meth:`start_next` over the lanes ``allowed``, best ready unit first; -1 if none.

        A lane whose ready units all wait for a named limit yields nothing: the next lane
        is tried.
        """
        while True:
            lane = self.best_lane(allowed)
            if lane < 0:
                return -1
            i = self.start_next(now, lane)
            if i >= 0:
                return i
            allowed = [ok and k != lane for k, ok in enumerate(allowed)]

    def peek_next(self, lane: int = 0) -> int:
        """The ready unit of ``lane`` that :meth:`start_next` considers first, or -1.

        Changes nothing. For a driver that starts a unit differently depending on what it
        is (a worker process sends some ahead).
        """
        heaps = self._heaps
        if lane >= len(heaps) or not heaps[lane]:
            return -1
        i: int = self._by_position[heaps[lane][0]]
        return i

    def ready_in(self, lane: int) -> int:
        """How many units of ``lane`` are ready to start now."""
        return len(self._heaps[lane])

    @property
    def has_deadlines(self) -> bool:
        """Whether a timeout, retry, limit or run deadline may be pending (cheap; may be stale)."""
        return bool(
            self._timeouts_heap
            or self._retries_heap
            or self.run_deadline is not None
            or (self.gate is not None and (bool(self.gate.due) or self.gate.nudged))
        )

    @property
    def waiting_on_limits(self) -> int:
        """How many ready units wait for a named limit's slots or tokens."""
        gate = self.gate
        return 0 if gate is None else gate.waiting_count

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`advance` has work, else None.

        That is a timeout, a retry, a limit's next token or pause end, or the run deadline.
        """
        own = self._own_deadline()
        if self.gate is None and self.run_deadline is None:
            return own
        extra = self._extra_deadline()
        if own is None:
            return extra
        if extra is None:
            return own
        return min(own, extra)

    def _extra_deadline(self) -> float | None:
        """The limits' and the run's deadline, else None."""
        gate = self.gate
        at = None if gate is None else gate.next_deadline()
        run_deadline = self.run_deadline
        if run_deadline is not None and (at is None or run_deadline < at):
            return run_deadline
        return at

    def _own_deadline(self) -> float | None:
        timeouts = self._timeouts_heap
        state, attempts, moved = self.state, self.attempts, self._moved_deadlines
        while timeouts:
            at, i, attempt = timeouts[0]
            current = state[i] is _RUNNING and attempts[i] == attempt
            if current and not (moved and moved.get((i, attempt), at) != at):
                break
            heapq.heappop(timeouts)  # that attempt already ended (or its deadline moved)
            if not current and moved:
                moved.pop((i, attempt), None)
        retries = self._retries_heap
        while retries and state[retries[0][1]] is not _PENDING:
            heapq.heappop(retries)  # cancelled while it waited
        if timeouts and retries:
            return min(timeouts[0][0], retries[0][0])
        if timeouts:
            return timeouts[0][0]
        if retries:
            return retries[0][0]
        return None

    # -- the hot path ----------------------------------------------------------------------

    def start_next(self, now: float, lane: int = 0) -> int:
        """Mark the best ready unit RUNNING at ``now`` and return its index, or -1 if none.

        The attempt number is then ``attempts[index]``. With several lanes, only units of
        ``lane`` are considered. A unit whose named limits lack room is never returned: it
        waits (PENDING) and the next ready unit with room is considered.
        """
        ready = self._heaps[lane]
        if self.gate is None:
            if not ready:
                return -1
            i: int = self._by_position[heapq.heappop(ready)]
        else:
            gate = self.gate
            if not ready or (gate.in_order and gate.waiting_count):
                return -1  # SEQUENTIAL waits for the best unit instead of reordering
            i = self._by_position[heapq.heappop(ready)]
            if not gate.try_take(i, now):  # it waits; look further (not in SEQUENTIAL)
                i = -1 if gate.in_order else self._next_with_room(gate, ready, now)
                if i < 0:
                    return -1
        self.state[i] = _RUNNING
        attempt = self.attempts[i] + 1
        self.attempts[i] = attempt
        self.started[i] = now
        self.running += 1
        timeout = self.timeouts[i]
        if timeout is not None:
            heapq.heappush(self._timeouts_heap, (now + timeout, i, attempt))
        return i

    def hold(self, i: int, attempt: int) -> None:
        """The lane holds that running attempt before it really starts: no timeout yet.

        A lane that could not start it when it was handed over (its worker died just then)
        calls :meth:`begin` when it does: the timeout counts from there, not from
        :meth:`start_next`, as for any attempt.
        """
        if self.timeouts[i] is not None and self.attempts[i] == attempt:
            self._moved_deadlines[i, attempt] = float("inf")

    def begin(self, i: int, attempt: int, now: float) -> None:
        """The held attempt of unit ``i`` really starts at ``now``: its start and timeout."""
        if self.state[i] is not _RUNNING or self.attempts[i] != attempt:
            return
        self.started[i] = now
        timeout = self.timeouts[i]
        if timeout is not None:
            self._moved_deadlines[i, attempt] = now + timeout
            heapq.heappush(self._timeouts_heap, (now + timeout, i, attempt))

    def never_began(self, i: int) -> None:
        """The abandoned attempt of unit ``i`` had not begun: a lane held it, then dropped it.

        Cancelled (or being cancelled: the run stops), it does not count as an attempt: a
        unit that had no other reads as never started (no start, no time), as one cancelled
        before it was started does. (One that timed out keeps it: its timeout counted from
        its start here, and a retry must have a number of its own.)
        """
        if self.state[i] is _CANCELED or self.state[i] is _RUNNING:
            self.attempts[i] -= 1

    def complete(self, i: int, attempt: int, result: Any, now: float) -> int:
        """Record that attempt ``attempt`` of unit ``i`` returned ``result``.

        Returns:
            How many units became ready, or -1 if that attempt was no longer current
            (it timed out or was cancelled) and its result was discarded.
        """
        if self.state[i] is not _RUNNING or self.attempts[i] != attempt:
            return -1
        self.state[i] = _COMPLETED
        self.results[i] = result
        self.ended[i] = now
        self.running -= 1
        self.terminal += 1
        if self.gate is not None:
            self.gate.release(i, now)
        if self._dynamic:
            return self._settle_dependents(i, _OK, self.outbox, now)
        return self._release_dependents(i)

    # -- named limits (see _limits) --------------------------------------------------------

    def _next_with_room(self, gate: LimitGate, ready: list[int], now: float) -> int:
        """Pop ready units best first until one has room in its limits; -1 if none has.

        No head-of-line blocking: each unit that lacks room waits in the gate, holding
        nothing, and the next one is considered.
        """
        by_position, take = self._by_position, gate.try_take
        while ready:
            i: int = by_position[heapq.heappop(ready)]
            if take(i, now):
                return i
        return -1

    def _push_ready(self, i: int) -> None:
        """A unit that waited for its limits may try again."""
        if not self.stopped and self.state[i] is _PENDING:
            heapq.heappush(self._heaps[self.lane_of[i]], self._position_of[i])

    def set_run_deadline(self, at: float, reason: str) -> None:
        """Cancel every unfinished unit, running ones included, at time ``at``.

        Args:
            at: When, on the driver's clock.
            reason: The text of each unit's :class:`UnitCancelledError`.
        """
        self.run_deadline = at
        self._deadline_reason = reason

    def _release_dependents(self, i: int) -> int:
        waiting = self._waiting
        state = self.state
        lane_of = self.lane_of
        released = 0
        for j in self._dependents[i]:
            left = waiting[j] - 1
            waiting[j] = left
            if not left and state[j] is _PENDING:
                heapq.heappush(self._heaps[lane_of[j]], self._position_of[j])
                released += 1
        return released

    # -- failures, deadlines, cancellation -------------------------------------------------

    def fail(self, i: int, attempt: int, error: BaseException, now: float) -> list[Transition]:
        """Record that attempt ``attempt`` of unit ``i`` raised ``error``.

        Returns:
            What followed: a scheduled retry, or the unit's terminal failure followed by the
            units it skipped or (``fail_fast``) cancelled. Empty if the attempt was no longer
            current.
        """
        if self.state[i] is not _RUNNING or self.attempts[i] != attempt:
            return []
        self.running -= 1
        if self.gate is not None:
            self.gate.release(i, now)
        if isinstance(error, SkipUnit):
            return self._skip_by_decision(i, error, now)
        return self._after_failure(i, error, now, timed_out=False)

    def advance(self, now: float) -> list[Transition]:
        """Act on every deadline that has passed at ``now``.

        Running attempts past their timeout fail with :class:`UnitTimeoutError` (the driver
        should stop them: ``was_running`` is set); retries whose wait is over become ready.
        """
        transitions: list[Transition] = []
        timeouts = self._timeouts_heap
        state, attempts, moved = self.state, self.attempts, self._moved_deadlines
        while timeouts and timeouts[0][0] <= now:
            at, i, attempt = heapq.heappop(timeouts)
            if state[i] is not _RUNNING or attempts[i] != attempt:
                continue
            if moved:  # a lane held some attempt: this deadline may be stale
                if moved.get((i, attempt), at) != at:
                    continue  # it was held since: its deadline is a later entry, or none yet
                moved.pop((i, attempt), None)
            self.running -= 1
            if self.gate is not None:
                # The attempt may go on running (a thread): it no longer holds its slots.
                self.gate.release(i, now, timed_out=True)
            timeout = self.timeouts[i]
            assert timeout is not None
            error = UnitTimeoutError(self.names[i], timeout)
            transitions += self._after_failure(i, error, now, timed_out=True)
        retries = self._retries_heap
        while retries and retries[0][0] <= now:
            _, i = heapq.heappop(retries)
            if state[i] is _PENDING and not self.stopped:
                heapq.heappush(self._heaps[self.lane_of[i]], self._position_of[i])
        if self.gate is not None and not self.stopped:
            self.gate.advance(now)
        run_deadline = self.run_deadline
        if run_deadline is not None and now >= run_deadline:
            self.run_deadline = None
            if self.is_active():
                self.stop_reason = "deadline"
                transitions += self.cancel(now, self._deadline_reason, running=True)
        return transitions

    def cancel(self, now: float, reason: str, *, running: bool = True) -> list[Transition]:
        """Stop the run: every unit that has not finished becomes CANCELED.

        Args:
            now: The current time.
            reason: Why, for each unit's :class:`UnitCancelledError`.
            running: Cancel running attempts too (their late outcomes are then ignored);
                otherwise they may still complete.

        Returns:
            One transition per cancelled unit; ``was_running`` marks attempts to stop.
        """
        self.stopped = True
        for heap in self._heaps:
            heap.clear()
        self.to_decide.clear()
        if self.gate is not None:
            self.gate.clear()
        transitions = []
        state = self.state
        for i in range(self._n):
            current = state[i]
            if current is _PENDING or (running and current is _RUNNING):
                transitions.append(
                    self._cancel_one(i, now, reason, was_running=current is _RUNNING)
                )
        return transitions

    def _cancel_one(self, i: int, now: float, reason: str, *, was_running: bool) -> Transition:
        if was_running:
            self.running -= 1
        if self.gate is not None:
            self.gate.release(i, now)
            self.gate.forget(i, now)
        self.state[i] = _CANCELED
        error = UnitCancelledError(self.names[i], reason)
        self.errors[i] = error
        self.ended[i] = now
        self.terminal += 1
        return Transition(i, _CANCELED, self.attempts[i], error, was_running=was_running)

    def _after_failure(
        self, i: int, error: BaseException, now: float, *, timed_out: bool
    ) -> list[Transition]:
        attempt = self.attempts[i]
        unit_policy = self.graph.units[i].retry_policy
        policy = self.default_policy if unit_policy is None else unit_policy
        if attempt <= self.retries[i] and not self.stopped and policy.should_retry(error):
            try:
                retry_at = now + policy.delay(attempt)
            except Exception as backoff_error:  # a backoff of the user's: fails the unit only
                failure = RuntimeError(
                    f"unit {self.names[i]!r}: no retry after attempt {attempt} failed "
                    f"({type(error).__name__}: {error_text(error)}): "
                    f"{type(backoff_error).__name__}: {error_text(backoff_error)}"
                )
                failure.__cause__ = backoff_error
                failure.__context__ = error
                return self._fail_for_good(i, failure, now, timed_out=timed_out)
            self.state[i] = _PENDING
            heapq.heappush(self._retries_heap, (retry_at, i))
            return [Transition(i, _PENDING, attempt, error, retry_at, was_running=timed_out)]
        return self._fail_for_good(i, error, now, timed_out=timed_out)

    def _fail_for_good(
        self, i: int, error: BaseException, now: float, *, timed_out: bool
    ) -> list[Transition]:
        attempt = self.attempts[i]
        failed_state = _TIMEOUT if timed_out else _FAILED
        self.state[i] = failed_state
        self.errors[i] = error
        self.ended[i] = now
        self.terminal += 1
        transitions = [Transition(i, failed_state, attempt, error, was_running=timed_out)]
        if i in self.fallbacks:
            self.results[i] = self.fallbacks[i]
            if self._dynamic:
                self._settle_dependents(i, _OK, transitions, now)
            else:
                self._release_dependents(i)
            return transitions
        if self._dynamic:
            self._settle_dependents(i, _BAD, transitions, now)
        else:
            transitions += self._skip_dependents(i, now)
        if self.fail_fast:
            if self.stop_reason is None:
                self.stop_reason = "fail_fast"
            reason = f"fail_fast after {self.names[i]!r} failed"
            transitions += self.cancel(now, reason, running=False)
        return transitions

    def _skip_dependents(self, failed: int, now: float) -> list[Transition]:
        # Every transitive dependent of a failed unit is still PENDING: none can have
        # started, since this unit never completed. Walk them breadth-first.
        state, dependents = self.state, self._dependents
        name = self.names[failed]
        skipped: list[Transition] = []
        frontier = [failed]
        for node in frontier:
            for j in dependents[node]:
                if state[j] is _PENDING:
                    state[j] = _SKIPPED
                    error = UnitSkippedError(self.names[j], name)
                    self.errors[j] = error
                    self.ended[j] = now
                    self.terminal += 1
                    skipped.append(Transition(j, _SKIPPED, 0, error))
                    frontier.append(j)
        return skipped

    def check_finished(self) -> None:
        """Assert that an inactive run left every unit terminal (an internal invariant).

        Raises:
            InternalError: The run stalled with units that can never run.
        """
        if (
            self.is_active()
            and not self.running
            and not self.ready_count
            and not self._retries_heap
            and not self.to_decide
            and not self.waiting_on_limits
        ):
            stuck = [self.names[i] for i, s in enumerate(self.state) if not s.is_terminal]
            raise InternalError(f"scheduler stalled with units left: {stuck[:10]}")

    def unfinished(self) -> Sequence[int]:
        """Indices of units not yet terminal."""
        return [i for i, s in enumerate(self.state) if not s.is_terminal]

    # -- decisions: conditions, skips by decision, join rules --------------------------------
    # Graphs without conditions or join rules never enter this section unless a unit skips
    # itself: ``complete`` pays one boolean check (``_dynamic``).

    def _init_decisions(self, graph: Graph) -> None:
        conditions, rules = graph.decisions()
        #: Conditioned units that became ready. The driver asks each predicate (user code,
        #: in the caller's process) and reports the answer with :meth:`decide`.
        self.to_decide: list[int] = []
        #: Transitions :meth:`complete` caused (it returns a count): skips by join rule and
        #: ``cancel_rest`` cancellations. The driver reports them and stops those
        #: ``was_running``.
        self.outbox: list[Transition] = []
        #: Units that started while a dependency had not completed (or given a fallback):
        #: their results are never cached.
        self.partial_inputs: set[int] = set()
        self._conditioned = frozenset(conditions)
        self._rules = rules
        self._cancels_rest = frozenset(i for i in rules if graph.units[i].cancel_rest)
        #: Whether ``cancel_rest`` may cancel running attempts (drivers track their owners).
        self.cancels_rest = bool(self._cancels_rest)
        #: Units whose start a condition or a join rule decides (drivers must not run them
        #: ahead of the scheduler, as Dask's look-ahead would).
        self.judged = self._conditioned | frozenset(rules)
        # Units a rule released before every dependency was terminal (at_least).
        self._triggered: set[int] = set()
        self._dynamic = False
        if conditions or rules or graph.maps:
            self._go_dynamic()

    def _go_dynamic(self) -> None:
        """Count each pending unit's terminal dependencies by kind, from now on per event."""
        n = self._n
        self._ok = array("l", bytes(8 * n))
        self._bad = array("l", bytes(8 * n))
        self._skip = array("l", bytes(8 * n))
        self._dynamic = True
        state, deps, waiting = self.state, self._deps, self._waiting
        for j in range(n):
            if state[j] is _PENDING and waiting[j] < len(deps[j]):
                for d in deps[j]:
                    if state[d].is_terminal:
                        self._count(j, self._kind_of(d))

    def _kind_of(self, d: int) -> int:
        state = self.state[d]
        if state is _COMPLETED:
            return _OK
        if state is _SKIPPED:
            error = self.errors.get(d)
            failed = isinstance(error, UnitSkippedError) and error.cause.is_failure
            return _BAD if failed else _SKIP
        if state is _FAILED or state is _TIMEOUT:
            return _OK if d in self.fallbacks else _BAD
        return _BAD  # CANCELED: never a reason to run

    def _count(self, j: int, kind: int) -> None:
        if kind == _OK:
            self._ok[j] += 1
        elif kind == _BAD:
            self._bad[j] += 1
        else:
            self._skip[j] += 1

    def _settle_dependents(self, i: int, kind: int, out: list[Transition], now: float) -> int:
        """Unit ``i`` became terminal as ``kind``: judge its dependents, skips propagating.

        Skips (and maps that finished) are appended to ``out``; returns how many units
        became ready (or to decide).
        """
        return self._propagate([(i, kind)], out, now)

    def _propagate(self, work: list[tuple[int, int]], out: list[Transition], now: float) -> int:
        """Judge the dependents of each ``(unit, kind)`` in ``work``, transitively.

        ``work`` grows as skips and finished maps propagate. Returns how many units became
        ready (or to decide).
        """
        dependents = self._dependents
        settle = self._settle_one
        released = 0
        for node, node_kind in work:
            for j in dependents[node]:
                released += settle(j, node, node_kind, out, work, now)
        return released

    def _settle_one(  # noqa: PLR0917 - called per edge: positional is cheapest
        self,
        j: int,
        node: int,
        node_kind: int,
        out: list[Transition],
        work: list[tuple[int, int]],
        now: float,
    ) -> int:
        """Dependency ``node`` of unit ``j`` became terminal as ``node_kind``: judge ``j``.

        Returns 1 if ``j`` became ready (or to decide), else 0. A skip of ``j`` (or a map
        ``j`` that has all its items) is appended to ``out`` and to ``work``, so that its own
        dependents are judged in turn.
        """
        waiting = self._waiting
        waiting[j] -= 1
        if self.state[j] is not _PENDING or j in self._triggered:
            return 0
        if node_kind == _OK:
            self._ok[j] += 1
        elif node_kind == _BAD:
            self._bad[j] += 1
        else:
            self._skip[j] += 1
        return self._judge_dependent(j, node, node_kind, out, work, now)

    def _judge_dependent(  # noqa: PLR0917 - called per edge: positional is cheapest
        self,
        j: int,
        node: int,
        node_kind: int,
        out: list[Transition],
        work: list[tuple[int, int]],
        now: float,
    ) -> int:
        """Judge unit ``j`` on its counts, ``node`` being the dependency that just ended."""
        waiting = self._waiting
        if self._collecting and j in self._collecting:  # an expanded map: one item ended
            if not waiting[j]:
                work.append((j, self._finish_map(j, now, out)))
            return 0
        if node_kind != _OK and self.maps and self.maps.get(j) == node:
            # A map has nothing to map over, whatever its rule says of its other inputs.
            verdict = _SKIP_VERDICT
        else:
            verdict = None
        rules = self._rules
        rule = rules.get(j, ALL_SUCCESS) if rules else ALL_SUCCESS
        bad = self._bad[j]
        if verdict is None:
            verdict = judge(rule, self._ok[j], bad, self._skip[j], waiting[j])
        if verdict is _WAIT:
            return 0
        if verdict is _RUN:
            self._release(j, now)
            return 1
        cause = SkipCause.UPSTREAM_FAILED if bad else SkipCause.JOIN_RULE
        decided_by: int | None = node
        if node_kind == _OK:  # the last input completed: name one that decided the skip
            decided_by = self._input_of_kind(j, _BAD if bad else _SKIP)
        if decided_by is None:  # none failed or was skipped: too few inputs (at_least)
            reason = f"only {self._ok[j]} of its inputs completed"
        else:
            verb = "failed" if self._kind_of(decided_by) == _BAD else "was skipped"
            reason = f"dependency {self.names[decided_by]!r} {verb}"
        if decided_by is not None and self.maps.get(j) == decided_by:
            reason = f"what it maps over, {self.names[decided_by]!r}, {verb}"
        elif rule is not ALL_SUCCESS:
            reason = f"its join rule {rule} was not met ({reason})"
        dependency = None if decided_by is None else self.names[decided_by]
        error = UnitSkippedError(self.names[j], dependency, cause, reason)
        out.append(self._skip_one(j, error, now))
        work.append((j, _BAD if cause.is_failure else _SKIP))
        return 0

    def _input_of_kind(self, j: int, kind: int) -> int | None:
        """The first terminal input of unit ``j`` that counts as ``kind``, else None.

        Its inputs are its dependencies, and the items of a map it counts item by item
        (``at_least``). For the reason of a skip whose last input completed.
        """
        quorums = self._item_quorums if self.maps else {}
        state, items_of = self.state, self.items_of
        for d in self._deps[j]:
            # A map that never expanded (skipped, failed) counts as itself.
            inputs = items_of[d] if d in items_of and j in quorums.get(d, ()) else (d,)
            for k in inputs:
                if state[k].is_terminal and self._kind_of(k) == kind:
                    return k
        return None

    def _release(self, j: int, now: float) -> None:
        """Unit ``j``'s rule is met: queue it (or ask its condition first)."""
        if self.ok_count(j) < len(self._deps[j]):
            self.partial_inputs.add(j)
        if self._waiting[j]:  # met before every dependency finished (at_least)
            self.partial_inputs.add(j)
            self._triggered.add(j)
            if j in self._cancels_rest:
                self._cancel_unneeded(j, now)
        self._make_ready(j)

    def counts_ok(self, i: int) -> bool:
        """Whether unit ``i`` ended COMPLETED, or failed with a fallback value."""
        return self.state[i].is_terminal and self._kind_of(i) == _OK

    def ok_count(self, j: int) -> int:
        """How many of unit ``j``'s dependencies completed or gave a fallback (decisions)."""
        return self._ok[j] if self._dynamic else len(self._deps[j]) - self._waiting[j]

    def _make_ready(self, j: int) -> None:
        if j in self._conditioned or j in self.maps:  # a map is expanded by the driver
            self.to_decide.append(j)
        else:
            heapq.heappush(self._heaps[self.lane_of[j]], self._position_of[j])

    def decide(
        self, i: int, holds: bool, now: float, error: BaseException | None = None
    ) -> list[Transition]:
        """Record the answer of unit ``i``'s condition, taken from :attr:`to_decide`.

        Args:
            i: The unit.
            holds: The predicate's answer: true queues the unit, false skips it.
            now: The current time.
            error: What the predicate raised, if it did: the unit fails with it.

        Returns:
            The unit's skip or failure and what followed from it.
        """
        if self.state[i] is not _PENDING or self.stopped:
            return []  # cancelled while it waited for its answer
        if error is not None:
            return self._fail_for_good(i, error, now, timed_out=False)
        if holds:
            heapq.heappush(self._heaps[self.lane_of[i]], self._position_of[i])
            return []
        skipped = UnitSkippedError(self.names[i], None, SkipCause.CONDITION)
        out = [self._skip_one(i, skipped, now)]
        self._settle_dependents(i, _SKIP, out, now)
        return out

    def _skip_by_decision(self, i: int, signal: SkipUnit, now: float) -> list[Transition]:
        """A running unit raised :class:`SkipUnit`: SKIPPED, not failed, never retried."""
        if not self._dynamic:
            self._go_dynamic()
        error = UnitSkippedError(self.names[i], None, SkipCause.DECISION, signal.reason)
        error.__cause__ = signal
        out = [self._skip_one(i, error, now)]
        self._settle_dependents(i, _SKIP, out, now)
        return out

    def _skip_one(self, j: int, error: UnitSkippedError, now: float) -> Transition:
        self.state[j] = _SKIPPED
        self.errors[j] = error
        self.ended[j] = now
        self.terminal += 1
        return Transition(j, _SKIPPED, self.attempts[j], error)

    def _cancel_unneeded(self, j: int, now: float) -> None:
        """``j`` runs on enough dependencies: cancel those (and their inputs) nobody else needs.

        The cancellations go to :attr:`outbox`, so the driver stops those that run.
        """
        state, dependents = self.state, self._dependents
        reason = f"{self.names[j]!r} had what it needed (cancel_rest)"
        stack = list(self._deps[j])
        while stack:
            d = stack.pop()
            current = state[d]
            if current.is_terminal or any(
                k != j and not state[k].is_terminal for k in dependents[d]
            ):
                continue
            if d in self._collecting and self._items_needed(d, j):
                continue  # the map ends when its items do, as without cancel_rest
            if current is _PENDING:
                self._unqueue(d)
            self.outbox.append(self._cancel_one(d, now, reason, was_running=current is _RUNNING))
            stack.extend(self._deps[d])
            if d in self._collecting:  # a map nothing needs: its unfinished items too
                self._collecting.discard(d)
                stack.extend(self.items_of[d])

    def _items_needed(self, m: int, j: int) -> bool:
        """Whether an unfinished item of map ``m`` is needed by something but ``j`` and ``m``.

        By a map over ``m`` (item-wise: expanded or not, it needs each item) or another unit
        counting ``m``'s items (``at_least``): those are not among ``m``'s dependents.
        """
        state = self.state
        if any(not state[c].is_terminal for c in self._item_children.get(m, ())):
            return True
        return any(
            k not in (j, m) and not state[k].is_terminal
            for item in self.items_of[m]
            if not state[item].is_terminal
            for k in self._dependents[item]
        )

    def _unqueue(self, d: int) -> None:
        """Take a PENDING unit out of the ready queue or the decisions, if it is there."""
        heap = self._heaps[self.lane_of[d]]
        position = self._position_of[d]
        if position in heap:
            heap.remove(position)
            heapq.heapify(heap)
        if d in self.to_decide:
            self.to_decide.remove(d)

    # -- maps: units that grow the run ------------------------------------------------------
    # A map is a unit that never runs: when it becomes ready, the driver reads the result it
    # maps over and calls :meth:`expand`, which appends one unit per item (indices from the
    # current size on), each an ordinary unit from then on. An item's entry in
    # ``graph.units`` is its map's QuantumUnit (it has the map's options) while its name is
    # its own (``graph.names``): code that names a unit reads ``names[i]``, not
    # ``units[i].id``. The map then *collects*: its waiting count becomes its items' count,
    # and it ends once they all have (COMPLETED if none failed). A map over a map is
    # item-wise: it expands when the map it follows does (that edge counts as met then, and
    # is taken out of that map's dependents), and its item i waits only for item i of the
    # other map.

    def _init_maps(self) -> None:
        """Make the per-unit structures growable (the graph is already a run-local copy)."""
        graph = self.graph
        self._position_of = list(self._position_of)
        self._by_position = dict(enumerate(self._by_position))
        #: Each map -> the maps over it (item-wise), which expand with it.
        self._item_children: dict[int, list[int]] = {}
        for m, over in self.maps.items():
            if over in self.maps:
                self._item_children.setdefault(over, []).append(m)
        #: Each map -> its dependents under at_least(k), which count its items.
        self._item_quorums: dict[int, list[int]] = {}
        for j, rule in graph.decisions()[1].items():
            if rule.name == "at_least":
                for d in self._deps[j]:
                    if d in self.maps:
                        self._item_quorums.setdefault(d, []).append(j)
        # A map's fallback value is its items' (a map as a whole never runs).
        self._item_fallbacks = {m: self.fallbacks.pop(m) for m in self.maps if m in self.fallbacks}
        self._deps = graph.deps
        self._dependents = graph.dependents

    def expand(self, m: int, count: int, now: float) -> list[Transition]:
        """Give map ``m`` (taken from :attr:`to_decide`) ``count`` items, and start collecting.

        For a map over a map, ``count`` must be that map's item count. Returns what followed:
        a map without items completes at once, and item-wise maps over this one expand too.
        """
        if self.state[m] is not _PENDING or self.stopped:
            return []  # cancelled while it waited
        if m in self.items_of:
            raise InternalError(f"map {self.names[m]!r} expanded twice")
        graph = self.graph
        units, names, index = graph.units, self.names, graph.index
        map_unit = units[m]
        first = self._n
        items = range(first, first + count)
        self.items_of[m] = items
        over = self.maps[m]
        parents = self.items_of.get(over) if over in self.maps else None
        keys = self._item_keys(m, count, parents)
        deps, dependents, waiting = self._deps, self._dependents, self._waiting
        # One extend per per-unit list: an item costs what a unit costs, not a loop of appends.
        stem = names[m]
        new_names = [f"{stem}[{k}]" for k in range(count)]
        units.extend([map_unit] * count)  # an item has its map's options: the same object
        names.extend(new_names)
        index.update(zip(new_names, items, strict=True))
        self.item_of.update(zip(items, zip([m] * count, range(count), strict=True), strict=True))
        self.attempts.extend([0] * count)
        zeros = bytes(8 * count)
        self.started.frombytes(zeros)
        self.ended.frombytes(zeros)
        self._ok.frombytes(zeros)
        self._bad.frombytes(zeros)
        self._skip.frombytes(zeros)
        self.results.extend([None] * count)
        self.timeouts.extend([map_unit.timeout] * count)
        self.retries.extend([map_unit.retries] * count)
        self.lane_of.extend([self.lane_of[m]] * count)
        self._position_of.extend(keys)
        self._by_position.update(zip(keys, items, strict=True))
        if m in self._item_fallbacks:
            self.fallbacks.update(dict.fromkeys(items, self._item_fallbacks[m]))
        if self.gate is not None and m in self.gate.needs:
            self.gate.needs.update(dict.fromkeys(items, self.gate.needs[m]))  # type: ignore[attr-defined]
        dependents.extend([[m] for _ in items])
        if parents is None:
            deps.extend([_NO_DEPS] * count)
            waiting.extend([0] * count)
        else:
            self.item_parent.update(zip(items, parents, strict=True))
            deps.extend([[parent] for parent in parents])
            waiting.extend([1] * count)
        # Last: a reader in another thread (get_partial_results(), the metrics) walks
        # ``state``, so every other per-unit list must already have the items' rows.
        self.state.extend([_PENDING] * count)
        self._n += count
        if count and self.timeouts[m] is not None:
            self.has_timeouts = True
        self.started[m] = now
        self._waiting[m] = count
        self._ok[m] = self._bad[m] = self._skip[m] = 0
        self._collecting.add(m)
        out: list[Transition] = []
        work: list[tuple[int, int]] = []
        # Items start now, or when the item they follow ends.
        for j in items:
            parent = self.item_parent.get(j, -1)
            if parent < 0:
                self._make_ready(j)
            elif self.state[parent].is_terminal:
                self._settle_one(j, parent, self._kind_of(parent), out, work, now)
            else:
                dependents[parent].append(j)
        children = self._item_children.get(m)
        quorums = self._item_quorums.get(m)
        if children or quorums:  # they now follow this map item by item, not as a whole
            following = {*(children or ()), *(quorums or ())}
            dependents[m] = [j for j in dependents[m] if j not in following]
            for c in children or ():
                self._settle_one(c, m, _OK, out, work, now)
        for q in quorums or ():  # at_least(k) counts this map's items, not the map
            if self.state[q] is not _PENDING or q in self._triggered:
                continue
            waiting[q] += count - 1
            for j in items:
                dependents[j].append(q)
            if not count:
                self._judge_dependent(q, m, _OK, out, work, now)
        if not count:  # nothing to wait for: complete with []
            work.append((m, self._finish_map(m, now, out)))
        self._propagate(work, out, now)  # what those endings caused
        return out

    def _item_keys(self, m: int, count: int, parents: range | None) -> list[float]:
        """Each new item's place in the ready order (lower is sooner).

        A map's items take the map's place, in item order. An item-wise map's items of the
        same priority take the place right after the item they follow, so a saturated run
        goes depth-first; otherwise they take their own map's place.
        """
        position_of = self._position_of
        units = self.graph.units
        if parents is not None and units[m].priority == units[self.maps[m]].priority:
            taken = self._by_position
            keys = []
            for parent in parents:
                key = position_of[parent]
                key = math.nextafter(key, math.inf)
                while key in taken:
                    key = math.nextafter(key, math.inf)
                keys.append(key)
            return keys
        base, step = position_of[m], 1.0 / (count + 2)
        return [base + (k + 1) * step for k in range(count)]

    def _finish_map(self, m: int, now: float, out: list[Transition]) -> int:
        """Every item of map ``m`` ended: it is COMPLETED, or FAILED if an item failed.

        Its result is the list of its items' results (fallback values included), in item
        order; items skipped by a decision are left out. Returns how it counts for its
        dependents' rules.
        """
        self._collecting.discard(m)
        state, results, names = self.state, self.results, self.names
        values = []
        failed = []
        for j in self.items_of[m]:
            kind = self._kind_of(j)
            if kind == _OK:
                values.append(results[j])
            elif kind == _BAD:
                failed.append(names[j])
        results[m] = values
        self.ended[m] = now
        self.terminal += 1
        if failed:
            error = MapItemsFailedError(names[m], failed)
            state[m] = _FAILED
            self.errors[m] = error
            out.append(Transition(m, _FAILED, 0, error))
            return _BAD
        state[m] = _COMPLETED
        out.append(Transition(m, _COMPLETED, 0, None))
        return _OK

    def fail_map(self, m: int, error: BaseException, now: float) -> list[Transition]:
        """Map ``m`` cannot expand (its input is not iterable, or has too many items)."""
        if self.state[m] is not _PENDING or self.stopped:
            return []
        return self._fail_for_good(m, error, now, timed_out=False)
