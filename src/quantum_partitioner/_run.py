"""One run of a graph: the scheduler, the caller's context, the instruments, and the record.

A :class:`Run` is what backends drive. It calls units (building each one's
:class:`ExecutionContext`), turns scheduler transitions into instrument events, and once the
run is over it *is* the record that units, results and metrics are read from, so finishing a
run copies nothing per unit.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import traceback
from types import CoroutineType, MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._context import PAUSES_KEY, ExecutionContext, check_pause_seconds
from ._errors import SkipCause, SkipUnit, UnitSkippedError, interrupts_run
from ._graph import Graph, UnitState, materialise, too_many_items
from ._limits import compile_limits
from ._scheduler import Scheduler, Transition
from .observability._events import (
    Dispatcher,
    Instrument,
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

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from ._limits import Limit, LimitPlan
    from ._policies import RetryPolicy

__all__ = ["Run"]

_NO_RESULTS: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_ERRORS: Final[Mapping[str, BaseException]] = MappingProxyType({})
_MISSING: Final = object()
_MISS: Final = (False, None)
_COMPLETED: Final = UnitState.COMPLETED
_FAILED_STATES: Final = frozenset({UnitState.FAILED, UnitState.TIMEOUT})


class UnitCache(Protocol):
    """Serves results of units whose inputs have not changed (see ``_cache``).

    Backends consult it in the caller's process only, through :meth:`Run.lookup_cached`:
    :meth:`Run.call` for attempts that run here, the lane driver and the asyncio driver for
    attempts that run elsewhere. For a unit that names limits the scheduler asks first
    (before taking slots or tokens), and the attempt is then served what it found.
    """

    def lookup(self, run: Run, i: int) -> tuple[bool, Any]:
        """``(True, result)`` if unit ``i``'s result for its current inputs is stored."""
        ...

    def remember(self, run: Run, i: int, value: Any) -> None:
        """Store unit ``i``'s fresh result."""
        ...


def _nothing() -> None:
    """Wake nobody: the default until a backend installs its own."""


class Flag:
    """A flag any thread, or a signal handler, may set.

    Unlike ``threading.Event``, setting it takes no lock: a signal handler runs on the main
    thread between two bytecodes, possibly while that thread holds the very lock an
    ``Event`` (or the scheduler) would need, and would wait for itself forever.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        """Start unset."""
        self._set = False

    def set(self) -> None:
        """Set the flag (never blocks)."""
        self._set = True

    def is_set(self) -> bool:
        """Whether the flag was set."""
        return self._set


class Run:
    """The state of one execution of a graph, then its record.

    Args:
        graph: The compiled units.
        context: The caller's context, shared read-only by every unit.
        mode: The execution mode's name, as units see it in ``ctx.environment``.
        max_workers: How many attempts may run at once (0: no fixed limit, as in ASYNC).
        retry_policy: The default retry policy.
        fail_fast: Cancel what has not started once a unit fails for good.
        instruments: Observers of the run.
        lane_of: Each unit's lane, for backends that run units in several places.
        cache: Serves and stores results of cacheable units.
        limits: The named limits units may name in their ``limits``, by name.
        limit_plan: Those limits compiled for ``graph`` (a caller may cache it); by default
            compiled here.
        deadline: Seconds after :meth:`begin` at which every unfinished unit is cancelled.
    """

    def __init__(
        self,
        graph: Graph,
        context: Mapping[str, Any],
        *,
        mode: str,
        max_workers: int,
        retry_policy: RetryPolicy | None = None,
        fail_fast: bool = False,
        instruments: Iterable[Instrument] = (),
        lane_of: Sequence[int] | None = None,
        cache: UnitCache | None = None,
        limits: Mapping[str, Limit] | None = None,
        deadline: float | None = None,
        limit_plan: LimitPlan | None = None,
    ) -> None:
        """Prepare the run; nothing starts until a backend drives it."""
        #: Where results of unchanged units come from, if anywhere.
        self.cache = cache
        self.graph = graph
        self.context = context
        self.mode = mode
        self.max_workers = max_workers
        self.limits: Mapping[str, Limit] = limits or {}
        self.deadline = deadline
        self.scheduler = Scheduler(
            graph,
            retry_policy=retry_policy,
            fail_fast=fail_fast,
            lane_of=lane_of,
            limits=limit_plan if limit_plan is not None else compile_limits(graph, self.limits),
        )
        #: How many units were declared: the run's first units; map items come after.
        self.declared_units = len(graph)
        # The scheduler's graph: for a graph with maps, a run-local copy that grows.
        graph = self.scheduler.graph
        self.graph = graph
        #: Called with the new indices whenever maps add items, for backends that keep
        #: per-unit lists of their own.
        self.on_grow: list[Callable[[range], None]] = []
        # Each item of a map over a unit -> its item (a map over a map reads its parent's
        # result instead); each expanded map -> the dependencies its items see.
        self._item_values: dict[int, Any] = {}
        self._map_inputs: dict[int, tuple[list[int], list[str] | None]] = {}
        #: Cache hits decided before a unit took its limits, served to its attempt.
        self._served: dict[int, Any] = {}
        self._missed: set[int] = set()
        gate = self.scheduler.gate
        if gate is not None:
            gate.wake = self._wake_from_limit
        self.dispatcher = Dispatcher(instruments)
        self.clock: Callable[[], float] = time.perf_counter
        self.unit_metrics: dict[int, dict[str, Any]] = {}
        #: Where each unit ran, for backends that know (a Dask worker's address).
        self.unit_workers: dict[int, str] = {}
        #: Where each attempt ran, for backends that know it per attempt: ``(index,
        #: attempt)`` -> a slot that runs one attempt at a time ("process slot 2").
        self.attempt_workers: dict[tuple[int, int], str] = {}
        #: Workers started during the run: (slot, started, ready), in the run's clock.
        self.worker_startups: list[tuple[str, float, float]] = []
        #: Completed units whose results stayed where they ran (a Dask cluster, not gathered):
        #: absent from :meth:`results`.
        self.withheld: set[int] = set()
        #: Every attempt that ended without completing: (index, attempt, start, end, error).
        self.failed_attempts: list[tuple[int, int, float, float, BaseException]] = []
        #: Set when the run is interrupted or cancelled; units can watch ``ctx.cancelled``.
        self.stopping = threading.Event()
        self.interrupted: BaseException | None = None
        #: Whether ``ctx.cancelled`` reads the clock against timeouts and the deadline
        #: (:meth:`attempt_abandoned`): set by a driver that cannot act while a unit runs.
        self.clock_cancels = False
        #: Set by :meth:`request_cancel`; the backend checks it between steps.
        self.cancel_requested = Flag()
        #: What a unit or hook raised in another thread of this process that interrupts the
        #: run (:meth:`hand_over_interrupt`); the driver raises it.
        self.handed_over: BaseException | None = None
        #: Wakes the driving backend when it sleeps; a backend that sleeps replaces it. It
        #: must take no lock (a ``SimpleQueue.put``, a loop's ``call_soon_threadsafe``):
        #: :meth:`request_cancel` calls it from signal handlers too.
        self.wake: Callable[[], None] = _nothing
        # Typed loosely: a unit declared sync may still return a coroutine (awaited below).
        self._functions: list[Callable[..., Any]] = [unit.function for unit in graph.units]
        #: Whether each unit is a coroutine function, for drivers that run those apart.
        flags = graph.coroutine_flags(self._functions)
        self.is_async = list(flags) if graph.maps else flags  # maps extend it
        self._names = graph.names
        self._deps = graph.deps
        #: The key each unit reads each dependency by, None when that is its name.
        self._view_keys = graph.view_keys()
        self._conditions = graph.decisions()[0]
        #: Brings a dependency's result here for a ``when=`` predicate, for backends that
        #: keep results elsewhere (Dask): only the values a predicate reads travel.
        self.fetch_value: Callable[[Any], Any] | None = None
        #: Measures, where it is kept, the result map ``m`` maps over, for backends that keep
        #: results elsewhere (Dask): ``count_items(m, over)`` returns its number of items, so
        #: the result never travels here, and raises what :func:`materialise` raised. The
        #: backend then hands each item its element itself (``item_of`` gives no value).
        self.count_items: Callable[[int, int], int] | None = None
        #: For a map whose items stay where the result it maps over is (Dask): each item's
        #: fingerprint, or None for one that has none, filled by ``count_items`` when the
        #: run has a cache (items are keyed on their values, which never come here).
        self.item_digests: dict[int, list[bytes | None]] = {}
        self._epoch_offset = time.time() - time.perf_counter()
        self.started_at = 0.0
        self.ended_at = 0.0

    def _wake_from_limit(self) -> None:
        """Another run released a limit a unit here waits on: wake the driver."""
        self.wake()

    # -- the cache -------------------------------------------------------------------------

    def _probe_cache(self, i: int) -> bool:
        """Whether the cache serves unit ``i`` (asked before it takes slots or tokens)."""
        cache = self.cache
        if cache is None:
            return False
        if i in self._missed:
            return False
        hit, value = cache.lookup(self, i)
        if hit:
            self._served[i] = value
        else:
            self._missed.add(i)
        return hit

    def lookup_cached(self, i: int) -> tuple[bool, Any]:
        """``(True, result)`` if the cache serves unit ``i``'s attempt, else ``(False, None)``.

        The one way drivers consult the cache: a hit the scheduler already decided is served
        without a second look-up.
        """
        served = self._served
        if served:
            value = served.pop(i, _MISSING)
            if value is not _MISSING:
                return True, value
        cache = self.cache
        if cache is None or i in self._missed:
            return _MISS  # probed before it took its limits: a miss stays a miss
        return cache.lookup(self, i)

    def keep_metrics(self, i: int, metrics: dict[str, Any]) -> None:
        """Keep the metrics an attempt recorded elsewhere; apply its ``ctx.pause_limit`` calls."""
        self.apply_pauses(metrics)
        if metrics:
            self.unit_metrics[i] = metrics

    def keep_attempt_metrics(self, i: int, attempt: int, metrics: dict[str, Any]) -> None:
        """:meth:`keep_metrics` for an outcome a driver is about to report, current or not.

        Its pauses apply either way (a 429 is a 429), but the metrics of an attempt that is
        no longer current (timed out, cancelled: its outcome will be discarded) are
        dropped, as its result is: a late attempt leaves nothing behind.
        """
        self.apply_pauses(metrics)
        sched = self.scheduler
        if metrics and sched.attempts[i] == attempt and sched.state[i] is UnitState.RUNNING:
            self.unit_metrics[i] = metrics

    def remember(self, i: int, attempt: int, value: Any) -> None:
        """Store attempt ``attempt``'s fresh result in the cache, unless it came too late.

        For drivers whose attempts consult the cache themselves (coroutines, a loop's
        plain functions), as :meth:`call` does: an attempt that outlived its timeout or
        was cancelled (a coroutine that swallowed its cancellation) must leave no result
        for a later run to be served.
        """
        cache = self.cache
        if cache is not None and self.still_wanted(i, attempt):
            cache.remember(self, i, value)

    def apply_pauses(self, metrics: dict[str, Any]) -> None:
        """Apply (and take out of ``metrics``) the pauses an attempt elsewhere asked for.

        For a failed attempt too, before its failure is reported: a 429 handler pauses its
        limit and raises, and its retry must wait for the pause.
        """
        pauses = metrics.pop(PAUSES_KEY, None)
        for name, seconds in pauses or ():
            if name in self.limits:
                self.pause_limit(name, seconds)

    def pause_limit(self, name: str, seconds: float) -> None:
        """Hold back new starts on limit ``name`` for ``seconds`` (``ctx.pause_limit``).

        Raises:
            KeyError: No limit has that name.
            ValueError: ``seconds`` is negative or not finite.
        """
        limit = self.limits.get(name)
        if limit is None:
            raise KeyError(f"no limit named {name!r}; known: {sorted(self.limits)}")
        check_pause_seconds(seconds)
        limit.pause(self.clock() + seconds)

    # -- calling units ---------------------------------------------------------------------

    def call(self, i: int, attempt: int) -> tuple[bool, Any]:
        """Run attempt ``attempt`` of unit ``i`` in this thread.

        Returns ``(True, result)`` or ``(False, exception)``, whatever the unit raised, except
        what interrupts the run (:func:`interrupts_run`: ``KeyboardInterrupt``,
        ``SystemExit``), which propagates as in plain Python. A worker thread that is not the
        driver passes it on with :meth:`hand_over_interrupt`.
        """
        cache = self.cache
        if cache is not None:
            hit, value = self.lookup_cached(i)
            if hit:
                return True, value
        ctx = self.context_for(i, attempt)
        try:
            if self.is_async[i]:
                value = asyncio.run(self._functions[i](ctx))
            else:
                value = self._functions[i](ctx)
            if type(value) is CoroutineType:  # a plain function that returned a coroutine
                value = asyncio.run(value)
        except BaseException as error:  # a unit may raise anything; it fails only that unit
            if interrupts_run(error):
                raise
            return False, error
        metrics = ctx.metrics
        if metrics is None and cache is None:
            # Nothing to keep or to leave behind (most units): whether the attempt is still
            # wanted is the scheduler's to decide when it gets the result, as it always is.
            return True, value
        if not self.still_wanted(i, attempt):
            return True, value  # timed out or cancelled: the scheduler will discard it
        if metrics is not None:
            self.unit_metrics[i] = metrics
        if cache is not None:
            cache.remember(self, i, value)
        return True, value

    def still_wanted(self, i: int, attempt: int) -> bool:
        """Whether an attempt is still current and within its timeout.

        Checked before keeping its metrics or caching its result: a late result must leave
        nothing behind. (SEQUENTIAL notices a timeout only after the call, hence the clock.)
        A pool thread checks it before it starts an attempt handed to it: one whose timeout
        passed before the thread got to it must never start.
        """
        if self.attempt_abandoned(i, attempt):
            return False
        timeout = self.scheduler.timeouts[i]
        return timeout is None or self.clock() - self.scheduler.started[i] <= timeout

    def context_for(self, i: int, attempt: int) -> ExecutionContext:
        """The context unit ``i`` is called with: the caller's plus its dependencies'."""
        if self._map_inputs:
            item = self.item_of(i)
            if item is not None:  # an item sees its map's declared dependencies
                inputs, errors = self.inputs_of(i)
                return ExecutionContext(
                    self.context, inputs, self._names[i], attempt, self.mode, self, i, errors, item
                )
        deps = self._deps[i]
        view: Mapping[str, Any]
        if deps:
            sched = self.scheduler
            if sched.errors or sched.partial_inputs:  # something upstream did not complete
                view, upstream = self._inputs_with_gaps(*self._row_of(i))
                return ExecutionContext(
                    self.context, view, self._names[i], attempt, self.mode, self, i, upstream
                )
            results, keys = sched.results, self._view_keys
            if keys is None:  # inlined here: the hot path of ordinary graphs
                names = self._names
                view = {names[j]: results[j] for j in deps}
            else:  # a graph with subgraphs (not an item: items returned above)
                view = {key: results[j] for key, j in zip(keys[i], deps, strict=True)}
        else:
            view = _NO_RESULTS
        return ExecutionContext(self.context, view, self._names[i], attempt, self.mode, self, i)

    def inputs_of(self, i: int) -> tuple[Mapping[str, Any], Mapping[str, BaseException]]:
        """Unit ``i``'s inputs: its dependencies' results that exist, and why others have none.

        For backends that build the context elsewhere (a worker process, a Dask worker).
        """
        sched = self.scheduler
        row, keys = self._row_of(i)
        if sched.errors or sched.partial_inputs:
            return self._inputs_with_gaps(row, keys)
        return self._complete_inputs(row, keys), _NO_ERRORS

    def _row_of(self, i: int) -> tuple[Sequence[int], Sequence[str] | None]:
        """The dependencies unit ``i``'s context shows, and the keys it reads them by.

        Keys are None when they are the dependencies' names. A map item shows its map's
        declared dependencies (not the item it follows, nor what its map maps over); a unit
        inlined from a subgraph reads its dependencies by their inner names.
        """
        if self._map_inputs:
            place = self.scheduler.item_of.get(i)
            if place is not None:
                return self._map_inputs[place[0]]
        keys = self._view_keys
        return self._deps[i], None if keys is None else keys[i]

    def _complete_inputs(self, row: Sequence[int], keys: Sequence[str] | None) -> dict[str, Any]:
        """The results of ``row``, each under its key (its name when ``keys`` is None)."""
        results = self.scheduler.results
        if keys is None:
            names = self._names
            return {names[j]: results[j] for j in row}
        return dict(zip(keys, map(results.__getitem__, row), strict=True))

    def _inputs_with_gaps(
        self, row: Sequence[int], keys: Sequence[str] | None
    ) -> tuple[dict[str, Any], Mapping[str, BaseException]]:
        """The inputs from ``row`` of a unit some of whose dependencies did not complete.

        The results that exist (fallback values included, and the completed items' results
        of a map that failed or has not finished) and, as ``upstream_errors``, why each
        other terminal dependency has none.
        """
        sched = self.scheduler
        results, state, errors = sched.results, sched.state, sched.errors
        row_keys = map(self._names.__getitem__, row) if keys is None else keys
        view: dict[str, Any] = {}
        upstream: dict[str, BaseException] = {}
        for j, key in zip(row, row_keys, strict=True):
            error = errors.get(j)
            if error is not None:
                upstream[key] = error
            if state[j] is _COMPLETED or (state[j] in _FAILED_STATES and j in sched.fallbacks):
                view[key] = results[j]
            elif j in sched.items_of:  # a map that failed, or is unfinished (at_least)
                view[key] = [results[k] for k in sched.items_of[j] if sched.counts_ok(k)]
        return view, upstream or _NO_ERRORS

    # -- decisions -------------------------------------------------------------------------

    def settle_decisions(self) -> list[Transition]:
        """Ask the conditions of units that became ready; collect what the scheduler did.

        Drivers call it, where they start units, whenever ``scheduler.to_decide`` or
        ``scheduler.outbox`` is non-empty, then report the transitions and stop the
        attempts marked ``was_running`` (``cancel_rest``), as they do for ``advance``.
        A predicate runs here, in the caller's process, as ``predicate(ctx)``.
        """
        sched = self.scheduler
        transitions: list[Transition] = []
        maps = sched.maps
        while sched.to_decide or sched.outbox:
            transitions += sched.outbox
            sched.outbox.clear()
            batch = list(sched.to_decide)
            sched.to_decide.clear()
            for i in batch:
                if i in self._conditions:
                    holds, error = self._ask_condition(i)
                    if not holds or error is not None or i not in maps:
                        transitions += sched.decide(i, holds, self.clock(), error)
                        continue
                if i in maps:
                    transitions += self._expand(i)
        return transitions

    # -- maps ------------------------------------------------------------------------------

    def _expand(self, m: int) -> list[Transition]:
        """Give map ``m`` its items: one per element of the result it maps over.

        That result is materialised once, here in the caller's process, or measured where
        it is kept by :attr:`count_items` (Dask: the list never comes here); a map over a
        map has one item per item of that map. A result that is not iterable, or has more
        than ``max_items`` elements, fails the map.
        """
        sched = self.scheduler
        over = sched.maps[m]
        unit = self.graph.units[m]
        now = self.clock()
        values: list[Any] | None = None
        if over in sched.maps:
            count = len(sched.items_of[over])
        else:
            try:
                if self.count_items is not None:
                    count = self.count_items(m, over)
                else:
                    values = materialise(
                        unit.id, self._names[over], sched.results[over], unit.max_items
                    )
                    count = len(values)
            except Exception as error:  # not iterable, its iterator raised, or unreachable
                return sched.fail_map(m, error, now)
        bound = unit.max_items
        if bound is not None and count > bound:  # a map over a map, or counted elsewhere
            return sched.fail_map(m, too_many_items(unit.id, self._names[over], count, bound), now)
        index = self.graph.index
        declared = unit.dependencies
        view_keys = unit.view_keys
        self._map_inputs[m] = (
            [index[name] for name in declared],
            None if view_keys is None else [view_keys.get(name, name) for name in declared],
        )
        first = len(self._functions)
        transitions = sched.expand(m, count, now)
        items = sched.items_of.get(m, range(first, first))
        if values is not None:
            self._item_values.update(zip(items, values, strict=True))
        function = unit.function
        self._functions.extend([function] * count)
        self.is_async.extend([inspect.iscoroutinefunction(function)] * count)
        for listener in self.on_grow:
            listener(items)
        dispatcher = self.dispatcher
        if dispatcher.units_added and count:  # before any item starts
            event = UnitsAdded(
                self._names[m], self._names[items.start : items.stop], self.to_epoch(now), unit
            )
            dispatcher.emit(dispatcher.units_added, event)
        return transitions

    def item_of(self, i: int) -> tuple[int, Any] | None:
        """For a map item, ``(its position in the map, the item)``: ``ctx.index``, ``ctx.item``."""
        sched = self.scheduler
        place = sched.item_of.get(i) if sched.item_of else None
        if place is None:
            return None
        parent = sched.item_parent.get(i)
        value = self._item_values.get(i) if parent is None else sched.results[parent]
        return place[1], value

    def _ask_condition(self, i: int) -> tuple[bool, BaseException | None]:
        predicate = self._conditions[i]
        ctx = self.context_for(i, 0)
        if self.fetch_value is not None:
            ctx = ctx.fetching(self.fetch_value)
        try:
            answer = predicate(ctx)
        except SkipUnit:
            return False, None
        except BaseException as error:  # user code: it fails only its unit, as a unit would
            if interrupts_run(error):
                raise
            return False, error
        if inspect.isawaitable(answer):
            if inspect.iscoroutine(answer):
                answer.close()
            msg = f"unit {self._names[i]!r}: when= returned an awaitable; it must return a bool"
            return False, TypeError(msg)
        return bool(answer), None

    def attempt_abandoned(self, i: int, attempt: int) -> bool:
        """Whether attempt ``attempt`` of unit ``i`` is no longer wanted (``ctx.cancelled``).

        With :attr:`clock_cancels` (SEQUENTIAL, whose driver cannot act while a unit runs, and
        CUSTOM, whose executor may run the call inside ``submit``),
        also once its timeout or the run's deadline has passed, so that a unit watching
        ``ctx.cancelled`` stops there as in the other modes. Elsewhere the driver decides:
        a result it receives before it acts on a deadline still counts.
        """
        sched = self.scheduler
        if (
            self.stopping.is_set()
            or sched.attempts[i] != attempt
            or sched.state[i] is not UnitState.RUNNING
        ):
            return True
        if not self.clock_cancels:
            return False
        timeout, run_deadline = sched.timeouts[i], sched.run_deadline
        if timeout is None and run_deadline is None:
            return False
        now = self.clock()
        return (timeout is not None and now - sched.started[i] > timeout) or (
            run_deadline is not None and now >= run_deadline
        )

    # -- events ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Mark the start of the run (its backend is claimed next, then :meth:`announce`)."""
        self.started_at = self.clock()
        sched = self.scheduler
        if sched.gate is not None:
            sched.gate.open()
            if self.cache is not None:  # hits are decided before limits are taken
                sched.gate.probe = self._probe_cache
        if self.deadline is not None:
            sched.set_run_deadline(
                self.started_at + self.deadline,
                f"the run's deadline of {self.deadline:g} s passed",
            )

    def withdraw(self) -> None:
        """Undo :meth:`begin` for a run its backend refused: it never started."""
        if self.scheduler.gate is not None:
            self.scheduler.gate.close()

    def announce(self) -> None:
        """Tell the instruments the run started (its backend took it on)."""
        if self.dispatcher.run_started:
            event = RunStarted(
                len(self.graph),
                self.mode,
                self.max_workers,
                self.to_epoch(self.started_at),
                self.graph.units,
            )
            self.dispatcher.emit(self.dispatcher.run_started, event)

    def end(self) -> None:
        """Mark the end of the run and tell the instruments."""
        self.ended_at = self.clock()
        if self.scheduler.gate is not None:
            self.scheduler.gate.close()
        if self.dispatcher.run_finished:
            counts = self.counts()
            event = RunFinished(
                len(self.graph),
                counts[UnitState.COMPLETED],
                counts[UnitState.FAILED] + counts[UnitState.TIMEOUT],
                counts[UnitState.SKIPPED],
                counts[UnitState.CANCELED],
                self.to_epoch(self.ended_at),
                self.ended_at - self.started_at,
            )
            self.dispatcher.emit(self.dispatcher.run_finished, event)

    def emit_started(self, i: int, attempt: int, now: float) -> None:
        """Tell the instruments an attempt started (call only if some listen)."""
        event = UnitStarted(
            self._names[i], attempt, self.to_epoch(now), threading.current_thread().name
        )
        self.dispatcher.emit(self.dispatcher.unit_started, event)

    def emit_finished(self, i: int, attempt: int, now: float) -> None:
        """Tell the instruments a unit completed (call only if some listen)."""
        sched = self.scheduler
        event = UnitFinished(
            self._names[i], attempt, self.to_epoch(now), now - sched.started[i], sched.results[i]
        )
        self.dispatcher.emit(self.dispatcher.unit_finished, event)

    def report(self, transitions: list[Transition]) -> None:
        """Record transitions and tell the instruments about them."""
        if not transitions:
            return
        sched = self.scheduler
        dispatcher = self.dispatcher
        for t in transitions:
            i, state = t.index, t.state
            name = self._names[i]
            if state is UnitState.PENDING or (state in _FAILED_STATES and i not in sched.maps):
                end = sched.ended[i] if state is not UnitState.PENDING else self.clock()
                assert t.error is not None
                self.failed_attempts.append((i, t.attempt, sched.started[i], end, t.error))
            if state is UnitState.PENDING:
                if dispatcher.unit_retrying:
                    assert t.error is not None
                    assert t.retry_at is not None
                    delay = max(0.0, t.retry_at - self.clock())
                    event: object = UnitRetrying(
                        name, t.attempt, self.to_epoch(self.clock()), t.error, delay
                    )
                    dispatcher.emit(dispatcher.unit_retrying, event)
            elif state in _FAILED_STATES:
                if dispatcher.unit_failed:
                    assert t.error is not None
                    event = UnitFailed(
                        name,
                        t.attempt,
                        self.to_epoch(sched.ended[i]),
                        t.error,
                        state,
                        i in sched.fallbacks,
                    )
                    dispatcher.emit(dispatcher.unit_failed, event)
            elif state is UnitState.SKIPPED:
                if dispatcher.unit_skipped:
                    assert t.error is not None
                    cause = (
                        t.error.cause
                        if isinstance(t.error, UnitSkippedError)
                        else SkipCause.UPSTREAM_FAILED
                    )
                    event = UnitSkipped(name, self.to_epoch(sched.ended[i]), t.error, cause)
                    dispatcher.emit(dispatcher.unit_skipped, event)
            elif state is _COMPLETED:  # a map whose items all ended
                if dispatcher.unit_finished:
                    self.emit_finished(i, t.attempt, sched.ended[i])
            elif state is UnitState.CANCELED and dispatcher.unit_cancelled:
                assert t.error is not None
                event = UnitCancelled(name, self.to_epoch(sched.ended[i]), t.error, t.was_running)
                dispatcher.emit(dispatcher.unit_cancelled, event)

    def interrupt(self, reason: str, error: BaseException | None = None) -> list[Transition]:
        """Stop the run: cancel every unit not finished, running ones included.

        Returns the transitions for the caller to :meth:`report` (outside its lock).
        """
        self.stopping.set()
        if error is not None and self.interrupted is None:
            self.interrupted = error
        sched = self.scheduler
        if sched.stop_reason is None and sched.is_active():
            sched.stop_reason = "cancel" if error is None else "interrupt"
        return sched.cancel(self.clock(), reason, running=True)

    @property
    def stop_reason(self) -> str:
        """Why the run stopped: completed, deadline, cancel, interrupt or fail_fast."""
        return self.scheduler.stop_reason or "completed"

    def request_cancel(self) -> None:
        """Ask the driving backend to stop at its next step.

        Safe from any thread, a callback or a signal handler: it takes no lock.
        """
        self.cancel_requested.set()
        self.wake()

    def hand_over_interrupt(self, error: BaseException) -> None:
        """Stop the run as Ctrl-C would, for ``error`` raised in another thread of this process.

        For a ``KeyboardInterrupt`` or ``SystemExit`` a unit or a hook raised in a worker
        thread (or a lane's thread): the driver raises it at its next step, in the caller's
        thread, and cleans up on its way out as for Ctrl-C. The first one wins.
        """
        if self.handed_over is None:
            self.handed_over = error
        self.request_cancel()

    def stop_requested(self) -> list[Transition]:
        """Act on :attr:`cancel_requested`, for the driver that saw it set.

        Returns:
            The transitions of cancelling every unfinished unit, to :meth:`report`.

        Raises:
            BaseException: The interrupt a worker handed over (:meth:`hand_over_interrupt`).
        """
        if self.handed_over is not None:
            raise self.handed_over
        return self.interrupt("cancel() was called")

    # -- the record ------------------------------------------------------------------------
    # Read during the run too (get_partial_results() from another thread): dicts the
    # driver fills are copied first (list() of a dict is one step under the GIL), since
    # iterating one that grows raises RuntimeError.

    def to_epoch(self, t: float) -> float:
        """Convert a run clock reading to seconds since the epoch."""
        return t + self._epoch_offset

    def counts(self) -> dict[UnitState, int]:
        """How many units are in each state."""
        counts = dict.fromkeys(UnitState, 0)
        for state in self.scheduler.state:
            counts[state] += 1
        return counts

    def skip_causes(self) -> dict[SkipCause, int]:
        """How many units were SKIPPED for each cause (causes that occurred only)."""
        counts: dict[SkipCause, int] = {}
        for error in list(self.scheduler.errors.values()):
            if isinstance(error, UnitSkippedError):
                counts[error.cause] = counts.get(error.cause, 0) + 1
        return counts

    def state_of(self, i: int) -> UnitState:
        """Unit ``i``'s state."""
        return self.scheduler.state[i]

    def result_of(self, i: int) -> Any:
        """Unit ``i``'s result (or fallback value), else None."""
        return self.scheduler.results[i]

    def error_of(self, i: int) -> BaseException | None:
        """Why unit ``i`` did not complete, else None."""
        return self.scheduler.errors.get(i)

    def traceback_of(self, i: int) -> str | None:
        """Unit ``i``'s error with its traceback, formatted, else None."""
        error = self.error_of(i)
        if error is None:
            return None
        return "".join(traceback.format_exception(error))

    def item_states_of(self, i: int) -> dict[UnitState, int]:
        """For map ``i``, how many of its items are in each state ({} before it expanded)."""
        sched = self.scheduler
        items = sched.items_of.get(i)
        counts: dict[UnitState, int] = {}
        if items is not None:
            state = sched.state
            for j in items:
                counts[state[j]] = counts.get(state[j], 0) + 1
        return counts

    def attempt_of(self, i: int) -> int:
        """How many attempts unit ``i`` made."""
        return self.scheduler.attempts[i]

    def start_time_of(self, i: int) -> float | None:
        """When unit ``i``'s last attempt started (epoch seconds), else None."""
        sched = self.scheduler
        return self.to_epoch(sched.started[i]) if sched.attempts[i] else None

    def end_time_of(self, i: int) -> float | None:
        """When unit ``i`` finished (epoch seconds), else None."""
        sched = self.scheduler
        return self.to_epoch(sched.ended[i]) if sched.state[i].is_terminal else None

    def results(self) -> dict[str, Any]:
        """Results by unit name: completed units, and failed units' fallback values."""
        names, state, results = self._names, self.scheduler.state, self.scheduler.results
        out = {names[i]: results[i] for i, s in enumerate(state) if s is _COMPLETED}
        for i, value in list(self.scheduler.fallbacks.items()):
            if state[i] in _FAILED_STATES:
                out[names[i]] = value
        for i in list(self.withheld):
            out.pop(names[i], None)
        return out

    def cancelled(self) -> dict[str, BaseException]:
        """Errors of the units that were CANCELED, by name."""
        sched = self.scheduler
        return {
            self._names[i]: error
            for i, error in list(sched.errors.items())
            if sched.state[i] is UnitState.CANCELED
        }

    def failed(self) -> dict[str, BaseException]:
        """Errors of the units that FAILED or timed out, by name, in the order they failed."""
        sched = self.scheduler
        return {
            self._names[i]: error
            for i, error in list(sched.errors.items())
            if sched.state[i] in _FAILED_STATES
        }
