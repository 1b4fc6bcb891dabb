"""Layer 4: :class:`QuantumPartitioner`, the public API over the scheduler and backends.

A partitioner holds units by name. ``execute`` validates everything it is given before any
unit runs, compiles the graph (cached until the units change), starts a :class:`Run` and
hands it to the backend of the chosen mode. The run's record then backs ``units[...]``'s
runtime attributes, the results, ``get_failed_units()`` and ``last_execution_metrics``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import is_not
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeAlias, TypeVar, overload

from ._errors import DuplicateUnitError, TaskError
from ._graph import (
    ExecutionMode,
    ExecutionModeArg,
    Graph,
    QuantumUnit,
    R,
    T,
    UnitFunction,
    UnitState,
    _gc_paused,
    _RunView,
    check_metadata,
    compile_graph,
    default_options,
    make_plain_unit,
    make_plain_units,
    make_unit,
    validate_unit,
)
from ._joins import ALL_SUCCESS, JoinRule, join_rule
from ._limits import (
    Limit,
    LimitPlan,
    LimitStats,
    check_limit_name,
    compile_limits,
    normalize_unit_limits,
)
from ._plan import ExecutionPlan
from ._policies import RetryPolicy
from ._run import Run, UnitCache
from ._strategies import AdaptiveBackend, resource_balanced_backend
from ._stream import AsyncResultStream, ResultStream, take_run_instruments
from ._subgraph import inline_subgraph, subgraph_result
from .backends import (
    AsyncBackend,
    Backend,
    ExecutorBackend,
    ProcessBackend,
    SequentialBackend,
    ThreadBackend,
)
from .backends._asyncio import check_no_running_loop
from .backends._pool import default_thread_workers
from .observability._events import (
    Instrument,
    UnitFailed,
    UnitFinished,
    UnitRetrying,
    UnitSkipped,
    UnitStarted,
)
from .observability._metrics import build_metrics
from .observability._progress import ProgressBar
from .observability._trace import TraceRecorder, export_spans, write_chrome_trace

if TYPE_CHECKING:
    from concurrent.futures import Executor
    from pathlib import Path

    from ._context import ExecutionContext

__all__ = ["QuantumPartitioner"]

# The decorator form of add_unit returns the function it is given, its type intact.
_Decorated = TypeVar("_Decorated", bound="Callable[[ExecutionContext], Any]")

StrategyName = Literal["priority", "resource_balanced", "adaptive"]

#: One entry of :meth:`QuantumPartitioner.add_units`: ``fn``, ``(fn, dependencies)``, or
#: ``(fn, dependencies, options)`` with ``options`` a dict of ``add_unit`` keyword arguments.
UnitSpec: TypeAlias = (
    "UnitFunction[R] | tuple[UnitFunction[R], Sequence[str]]"
    " | tuple[UnitFunction[R], Sequence[str], Mapping[str, Any]]"
)

_FAILED_STATES = frozenset({UnitState.FAILED, UnitState.TIMEOUT})
_STRATEGIES = ("priority", "resource_balanced", "adaptive")


def _join_rule_of(unit_id: str, value: object) -> JoinRule:
    try:
        return join_rule(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"unit {unit_id!r}: {error}") from None


#: The keyword arguments of add_unit an ``(fn, dependencies, options)`` entry may hold.
_UNIT_OPTIONS = frozenset(
    {
        "timeout",
        "retries",
        "priority",
        "metadata",
        "retry_policy",
        "when",
        "run_if",
        "cancel_rest",
        "limits",
    }
)


def _unit_of_spec(
    name: str, spec: object, depends_on_a_map: Callable[[object], bool]
) -> QuantumUnit[Any, Any]:
    """An ``add_units`` entry that :func:`make_plain_units` leaves: any shape, or an error."""
    if type(spec) is not tuple and callable(spec):
        return make_plain_unit(name, spec)
    if not (isinstance(spec, tuple) and len(spec) in {2, 3}):
        raise TypeError(
            f"unit {name!r}: expected fn, (fn, dependencies) or (fn, dependencies, options), "
            f"got {spec!r}"
        )
    fn, deps, *rest = spec
    options: object = rest[0] if rest else {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"unit {name!r}: options must be a dict of add_unit keyword arguments, got {options!r}"
        )
    unknown = options.keys() - _UNIT_OPTIONS
    if unknown:
        raise TypeError(
            f"unit {name!r}: unknown options {sorted(unknown)}; "
            f"use add_unit's keywords: {sorted(_UNIT_OPTIONS)}"
        )
    get = options.get
    run_if = get("run_if", "all_success")
    rule = ALL_SUCCESS if run_if == "all_success" else _join_rule_of(name, run_if)
    limits = get("limits")
    return make_unit(
        name,
        fn,
        deps,
        get("timeout"),
        get("retries", 0),
        get("priority", 0),
        get("metadata"),
        get("retry_policy"),
        get("when"),
        rule,
        get("cancel_rest", False),
        None if limits is None else normalize_unit_limits(name, limits),
        over_maps=rule.name == "at_least" and depends_on_a_map(deps),
    )


def _is_subgraph(unit: QuantumUnit[Any, Any]) -> bool:
    """Whether ``unit`` is a subgraph's own unit (:meth:`QuantumPartitioner.add_subgraph`)."""
    return unit.function is subgraph_result


def _check_max_workers(value: object, name: str = "max_workers") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be greater than 0, got {value}")
    return value


def _check_mode(value: object) -> ExecutionMode:
    if isinstance(value, ExecutionMode):
        return value
    if isinstance(value, str):
        try:
            return ExecutionMode(value.lower())
        except ValueError:
            pass
    known = ", ".join(mode.name for mode in ExecutionMode)
    raise ValueError(f"unknown execution mode {value!r}; use one of ExecutionMode.{{{known}}}")


def _check_deadline(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"deadline must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ValueError(f"deadline must be positive and finite, got {value!r}")
    return float(value)


class QuantumPartitioner(Generic[T, R]):
    """Runs a graph of units with as much concurrency as their dependencies allow.

    Args:
        max_workers: Units that may run at once (per run); None picks a default per mode.
        default_execution_mode: Where units run when ``execute`` does not say.
        retry_policy: Which failures are retried and the backoff between attempts.
        instruments: Observers of every run (progress, traces, ...).

    Attributes:
        units: The units, by name, in insertion order.
        completed_units: Names of the units that completed in the last run.
        failed_units: Names of the units that failed or timed out in the last run.
        on_unit_start: ``fn(unit_id)`` when an attempt starts.
        on_unit_complete: ``fn(unit_id, result)`` when a unit completes.
        on_unit_error: ``fn(unit_id, error)`` when a unit fails for good.
        on_unit_retry: ``fn(unit_id, attempt, error)`` when a failed attempt will be retried.
        on_unit_skip: ``fn(unit_id, reason)`` when a unit is skipped.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        max_workers: int | None = None,
        default_execution_mode: ExecutionModeArg = ExecutionMode.THREAD,
        *,
        retry_policy: RetryPolicy | None = None,
        instruments: list[Instrument] | tuple[Instrument, ...] = (),
    ) -> None:
        """Create an empty partitioner."""
        self.max_workers = _check_max_workers(max_workers)
        self.default_execution_mode = _check_mode(default_execution_mode)
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a RetryPolicy or None, got {retry_policy!r}")
        self.retry_policy = retry_policy
        for instrument in instruments:
            if not isinstance(instrument, Instrument):
                raise TypeError(f"instruments must be Instrument objects, got {instrument!r}")
        self.instruments: list[Instrument] = list(instruments)
        self.units: dict[str, QuantumUnit[T, R]] = {}
        # completed_units and failed_units, built from _settled_run when first read.
        self._settled_run: Run | None = None
        self._completed_units: set[str] | None = set()
        self._failed_units: set[str] | None = set()
        self.on_unit_start: Callable[[str], Any] | None = None
        self.on_unit_complete: Callable[[str, Any], Any] | None = None
        self.on_unit_error: Callable[[str, BaseException], Any] | None = None
        self.on_unit_retry: Callable[[str, int, BaseException], Any] | None = None
        self.on_unit_skip: Callable[[str, BaseException], Any] | None = None
        self._graph: Graph | None = None
        self._plan: ExecutionPlan | None = None
        self._view = _RunView()
        self._last_run: Run | None = None
        self._last_recorder: TraceRecorder | None = None
        self._last_metrics: dict[str, Any] | None = None
        self._active_run: Run | None = None
        self._lock = threading.Lock()
        self._limits: dict[str, Limit] = {}
        #: The compiled limits of the last graph: ``(graph, limits by name, plan)``.
        self._limit_plan: tuple[Graph, dict[str, Limit], LimitPlan | None] | None = None

    @property
    def completed_units(self) -> set[str]:
        """Names of the units that completed in the last finished run."""
        if self._completed_units is None:
            self._completed_units = self._names_in_states(frozenset({UnitState.COMPLETED}))
        return self._completed_units

    @completed_units.setter
    def completed_units(self, names: set[str]) -> None:
        self._completed_units = names

    @property
    def failed_units(self) -> set[str]:
        """Names of the units that failed or timed out in the last finished run."""
        if self._failed_units is None:
            self._failed_units = self._names_in_states(_FAILED_STATES)
        return self._failed_units

    @failed_units.setter
    def failed_units(self, names: set[str]) -> None:
        self._failed_units = names

    def _names_in_states(self, states: frozenset[UnitState]) -> set[str]:
        """The names of the last finished run's units in ``states``.

        Built on demand: a run of many units does not pay for sets nobody reads.
        """
        run = self._settled_run
        if run is None:
            return set()
        names = run.graph.names
        return {names[i] for i, state in enumerate(run.scheduler.state) if state in states}

    def __repr__(self) -> str:
        """Name the mode and count the units."""
        return (
            f"QuantumPartitioner(units={len(self.units)}, max_workers={self.max_workers}, "
            f"default_execution_mode={self.default_execution_mode})"
        )

    # -- building the graph ----------------------------------------------------------------

    @overload
    def add_unit(
        self,
        fn: UnitFunction[R],
        dependencies: list[str] | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
        *,
        replace: bool = False,
        retry_policy: RetryPolicy | None = None,
        when: Callable[[ExecutionContext], object] | None = None,
        run_if: str | JoinRule = "all_success",
        cancel_rest: bool = False,
        limits: list[str] | dict[str, int] | None = None,
    ) -> QuantumUnit[T, R]: ...

    @overload
    def add_unit(
        self,
        fn: None = None,
        dependencies: list[str] | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
        *,
        replace: bool = False,
        retry_policy: RetryPolicy | None = None,
        when: Callable[[ExecutionContext], object] | None = None,
        run_if: str | JoinRule = "all_success",
        cancel_rest: bool = False,
        limits: list[str] | dict[str, int] | None = None,
    ) -> Callable[[_Decorated], _Decorated]: ...

    def add_unit(  # noqa: PLR0917 - the original API's positional signature: its add_unit
        # takes (fn, dependencies, name, timeout, retries, metadata); priority comes after
        self,
        fn: UnitFunction[R] | None = None,
        dependencies: list[str] | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        metadata: dict[str, Any] | None = None,
        priority: int = 0,
        *,
        replace: bool = False,
        retry_policy: RetryPolicy | None = None,
        when: Callable[[ExecutionContext], object] | None = None,
        run_if: str | JoinRule = "all_success",
        cancel_rest: bool = False,
        limits: list[str] | dict[str, int] | None = None,
    ) -> QuantumUnit[T, R] | Callable[[_Decorated], _Decorated]:
        """Add a unit; called without ``fn``, return a decorator that adds the function.

        Args:
            fn: Called as ``fn(ctx)`` with an :class:`ExecutionContext`.
            dependencies: Names of the units whose results ``fn`` needs.
            name: The unit's unique name; defaults to ``unit_<n>`` (the original API's rule), or to
                the function's ``__name__`` when ``add_unit`` is used as a decorator.
            timeout: Seconds one attempt may take (> 0), or None.
            retries: Extra attempts after a failure (>= 0).
            metadata: Free-form; see :class:`QuantumUnit`.
            priority: Among ready units, higher runs sooner.
            replace: Replace an existing unit of the same name instead of raising.
            retry_policy: This unit's retry policy, overriding the partitioner's.
            when: A condition: ``when(ctx)`` is called in the caller's process when the
                unit becomes ready (``ctx`` as the unit would see it); if false, the unit is
                SKIPPED (cause ``SkipCause.CONDITION``) without running. If it raises, the
                unit fails with that error. Keep it quick: it runs between units.
            run_if: The join rule: ``"all_success"`` (every dependency completed or gave a
                fallback value), ``"none_failed"`` (none failed, at least one completed),
                ``"all_done"`` (all terminal, whatever happened), ``"any_success"`` (all
                terminal, at least one completed) or ``at_least(k)`` (as soon as ``k``
                completed). See "Join rules" in the guide.
            cancel_rest: With ``run_if=at_least(k)``: once ``k`` completed, cancel the
                unfinished dependencies that nothing else still needs.
            limits: Named limits each attempt holds while it runs (:meth:`add_limit`): a list
                of names (one slot each) or ``{name: slots}``. An attempt waits, PENDING and
                holding no worker, until every one has room; its timeout starts after.

        Returns:
            The new unit, or a decorator that adds its function and returns it unchanged.

        Raises:
            DuplicateUnitError: A unit of that name exists and ``replace`` is false.
            TypeError: An argument has the wrong type (message names the unit).
            ValueError: An argument is out of range (message names the unit).
            RuntimeError: The partitioner is executing (the graph of a run is fixed when
                it starts; see "Dynamic workflows" in the guide for graphs that grow).
        """
        if fn is None:
            options = {
                "replace": replace,
                "retry_policy": retry_policy,
                "when": when,
                "run_if": run_if,
                "cancel_rest": cancel_rest,
                "limits": limits,
            }
            return self._unit_decorator(
                (dependencies, name, timeout, retries, metadata, priority), options
            )
        if self._active_run is not None:
            self._check_not_executing("add_unit")
        # A plain non-empty string is the common case; _name_for checks the others.
        named = name if type(name) is str and name else None
        unit_id = named or self._name_for(fn, name, use_function_name=False)
        if unit_id in self.units and not replace:
            raise DuplicateUnitError(unit_id)
        unit: QuantumUnit[T, R]
        if (
            limits is None
            and run_if == "all_success"
            and default_options(timeout, retries, priority, retry_policy, when, cancel_rest)
        ):
            # Every option at its default (most units): nothing but the unit, and its
            # metadata if it has some, to check.
            unit = make_plain_unit(unit_id, fn, dependencies)
            if metadata is not None:
                # check_metadata's own test of a dict, inlined: a cacheable unit's metadata
                # ({"cacheable": True}) is a dict without an estimated_duration to check.
                if type(metadata) is not dict or "estimated_duration" in metadata:
                    check_metadata(unit_id, metadata)
                unit._metadata = metadata
        else:
            rule = ALL_SUCCESS if run_if == "all_success" else _join_rule_of(unit_id, run_if)
            unit = make_unit(
                unit_id,
                fn,
                dependencies,
                timeout,
                retries,
                priority,
                metadata,
                retry_policy,
                when,
                rule,
                cancel_rest,
                None if limits is None else normalize_unit_limits(unit_id, limits),
                over_maps=rule.name == "at_least" and self._depends_on_a_map(dependencies),
            )
        if self._admits:
            self._admit(unit)
        self.units[unit_id] = unit
        self._graph = None
        self._plan = None
        return unit

    def _depends_on_a_map(self, dependencies: object) -> bool:
        """Whether a dependency names a map here (``at_least(k)`` then counts its items)."""
        if not isinstance(dependencies, list | tuple):
            return False
        units = self.units
        return any(isinstance(d, str) and d in units and units[d].over for d in dependencies)

    def add_map(
        self,
        fn: UnitFunction[Any],
        over: str,
        name: str | None = None,
        *,
        dependencies: list[str] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        replace: bool = False,
        retry_policy: RetryPolicy | None = None,
        when: Callable[[ExecutionContext], object] | None = None,
        run_if: str | JoinRule = "all_success",
        limits: list[str] | dict[str, int] | None = None,
        max_items: int | None = None,
    ) -> QuantumUnit[T, R]:
        """Add a map: one unit per item of the result of ``over``, created during the run.

        When ``over`` completes, its result (any iterable, materialised once in the
        caller's process) gives one unit per item, named ``f"{name}[{i}]"``, each with this
        map's options; inside, ``ctx.item`` is the item and ``ctx.index`` its position, and
        ``dependencies`` are visible as usual (``over``'s whole result is not, unless it is
        declared). Over another map, the map is item-wise: item ``i`` gets that map's item
        ``i``'s result as ``ctx.item`` and starts as soon as that item completes.

        The map itself is a unit named ``name``: its result is the list of its items'
        results in item order, and it is COMPLETED once every item completed (or gave a
        fallback value), FAILED (:class:`MapItemsFailedError`) if one did not. A dependent
        receives that list. See "Maps" in the guide.

        Args:
            fn: Called as ``fn(ctx)`` for each item.
            over: The unit (or map) whose result to map over.
            name: The map's unique name; defaults as for :meth:`add_unit`.
            dependencies: Other units whose results every item sees.
            timeout: Seconds one attempt of an item may take.
            retries: Extra attempts per item after a failure.
            priority: Among ready units, higher runs sooner (each item has it).
            metadata: As for :meth:`add_unit`; a ``fallback_value`` applies per item.
            replace: Replace an existing unit of the same name instead of raising.
            retry_policy: The items' retry policy.
            when: A condition on the map as a whole, asked when it becomes ready: if
                false, the map is SKIPPED and no item is created.
            run_if: The map's join rule over ``over`` and ``dependencies`` (not
                ``at_least``).
            limits: Named limits each item's attempt holds (:meth:`add_limit`).
            max_items: The most items the map may have: more fails the map (None: no bound).

        Returns:
            The map's unit.

        Raises:
            DuplicateUnitError: A unit of that name exists and ``replace`` is false.
            TypeError: An argument has the wrong type (message names the map).
            ValueError: An argument is out of range, or the map maps over itself.
            RuntimeError: The partitioner is executing.

        .. versionadded:: 0.2
        """
        self._check_not_executing("add_map")
        unit_id = self._name_for(fn, name, use_function_name=False)
        if unit_id in self.units and not replace:
            raise DuplicateUnitError(unit_id)
        deps = dependencies
        if isinstance(deps, list | tuple) and all(isinstance(d, str) for d in deps):
            deps = list(dict.fromkeys(deps))
        rule = _join_rule_of(unit_id, run_if)
        if rule.name == "at_least":
            raise ValueError(f"map {unit_id!r}: run_if=at_least(k) is not supported on a map")
        unit: QuantumUnit[T, R] = QuantumUnit(
            unit_id,
            fn,
            deps,
            timeout,
            retries,
            priority,
            metadata,
            retry_policy=retry_policy,
            condition=when,
            run_if=rule,
            limits=normalize_unit_limits(unit_id, limits),
            over=over,
            max_items=max_items,
        )
        validate_unit(unit)
        self._admit(unit)
        self.units[unit_id] = unit
        self._graph = None
        self._plan = None
        return unit

    def add_subgraph(
        self,
        other: QuantumPartitioner[Any, Any],
        name: str,
        dependencies: list[str] | None = None,
    ) -> QuantumUnit[T, Any]:
        """Inline ``other``'s units into this partitioner, as one subgraph named ``name``.

        Each unit of ``other`` is copied as it is now (later changes to ``other`` do not
        reach this partitioner) and added as an ordinary unit named ``f"{name}.{inner}"``,
        with every option it has (timeout, retries, priority, metadata, limits, ``when=``,
        ``run_if``, ...; ``other``'s ``retry_policy`` for those without their own). The
        same scheduler runs them, so each appears in traces, reports, metrics and progress.
        Nested subgraphs compose: ``outer.ingest.load``.

        - Inner functions keep reading their dependencies by inner name: ``ctx["load"]``,
          in ``when=`` predicates and ``ctx.upstream_errors`` too.
        - The subgraph's root units (those without dependencies) also depend on
          ``dependencies`` and read them by their names here.
        - The subgraph is itself a unit named ``name``: it waits for the inner sink units
          (those nothing inside depends on) and its result is a dict of their results by
          inner name. A unit depending on ``name`` receives that dict.
        - ``other``'s named limits come along (:meth:`add_limit`); a limit of the same name
          here must be the same :class:`Limit` object.

        ``other``'s callbacks, instruments and cache are not copied: this partitioner's
        apply to every unit of its runs.

        Args:
            other: The partitioner whose units to inline (not this one).
            name: The subgraph's name, a prefix of its units' names.
            dependencies: Names of units here that the subgraph's root units wait for.

        Returns:
            The subgraph's own unit (named ``name``).

        Raises:
            DuplicateUnitError: ``name`` or one of the new names is already a unit here.
            GraphError: ``other``'s own graph is invalid (unknown dependency, cycle).
            TypeError: ``other`` is not a partitioner, or an argument has the wrong type.
            ValueError: ``other`` is this partitioner or has no units, the subgraph
                depends on itself, or a limit of ``other`` clashes with one here.
            RuntimeError: The partitioner is executing.

        .. versionadded:: 0.2
        """
        self._check_not_executing("add_subgraph")
        if not isinstance(other, QuantumPartitioner):
            raise TypeError(f"add_subgraph: other must be a QuantumPartitioner, got {other!r}")
        if other is self:
            raise ValueError("add_subgraph: a partitioner cannot be a subgraph of itself")
        probe: QuantumUnit[Any, Any] = QuantumUnit(name, subgraph_result, dependencies)
        validate_unit(probe)  # the name and dependencies, checked as add_unit checks them
        if not other.units:
            raise ValueError(f"subgraph {name!r}: the partitioner to inline has no units")
        other._compiled()  # its own graph must hold: an unknown name or a cycle is named here
        outer_deps = list(dict.fromkeys(probe.dependencies))
        with _gc_paused():  # many objects made and none freed: see _graph._gc_paused
            units = inline_subgraph(
                list(other.units.values()), name, outer_deps, other.retry_policy
            )
        new_names = {unit.id for unit in units}
        for unit in units:
            if unit.id in self.units:
                raise DuplicateUnitError(unit.id)
        own_deps = [dep for dep in outer_deps if dep in new_names]
        if own_deps:
            raise ValueError(
                f"subgraph {name!r} cannot depend on itself or its own units: {own_deps}"
            )
        limits = dict(other._limits)
        for limit_name, limit in limits.items():
            here = self._limits.get(limit_name)
            if here is not None and here is not limit:
                raise ValueError(
                    f"subgraph {name!r}: its limit {limit_name!r} is not the limit of that "
                    "name here; share one Limit object (add_limit(limit) on both)"
                )
        self._admit_all(units)
        with self._lock:
            self._limits.update(limits)
        for unit in units:
            self.units[unit.id] = unit
        self._graph = None
        self._plan = None
        return self.units[name]

    def add_units(self, units: Mapping[str, UnitSpec[R]], *, replace: bool = False) -> None:
        """Add many units at once: the fast way to build a large graph.

        ``units`` maps each name to a unit in the shape of a task map
        (:mod:`quantum_partitioner.taskmap`): ``fn``, ``(fn, dependencies)``, or
        ``(fn, dependencies, options)`` where ``options`` is a dict of :meth:`add_unit`'s
        keyword arguments (``timeout``, ``retries``, ``priority``, ``metadata``,
        ``retry_policy``, ``when``, ``run_if``, ``cancel_rest``, ``limits``)::

            partitioner.add_units({
                "load": load,
                "clean": (clean, ["load"]),
                "fetch": (fetch, ["clean"], {"retries": 3, "timeout": 10}),
            })

        Each unit is checked exactly as :meth:`add_unit` checks it, with the same errors.
        Either every unit is added or, when one is refused, none is.

        Args:
            units: Units by name, in the order they are added.
            replace: Replace existing units of the same names instead of raising.

        Raises:
            DuplicateUnitError: A unit of one of the names exists and ``replace`` is false.
            TypeError: ``units`` is not a mapping, an entry has none of those shapes, or an
                argument has the wrong type (the message names the unit).
            ValueError: An argument is out of range (the message names the unit).
            RuntimeError: The partitioner is executing.

        .. versionadded:: 0.2
        """
        self._check_not_executing("add_units")
        if not isinstance(units, Mapping):
            raise TypeError(
                "add_units() takes a dict of name -> fn, (fn, dependencies) or "
                f"(fn, dependencies, options), got a {type(units).__name__}"
            )
        depends_on_a_map = self._depends_on_a_map

        def make_other(name: str, entry: object) -> QuantumUnit[Any, Any]:
            return _unit_of_spec(name, entry, depends_on_a_map)

        with _gc_paused():  # many objects made and none freed: see _graph._gc_paused
            new: dict[str, QuantumUnit[T, R]] = make_plain_units(units, make_other)
            if self.units and not replace and not new.keys().isdisjoint(self.units):
                raise DuplicateUnitError(next(name for name in new if name in self.units))
            if self._admits:
                self._admit_all(new.values())
            self.units.update(new)
        self._graph = None
        self._plan = None

    def _unit_decorator(
        self, arguments: tuple[Any, ...], options: dict[str, Any]
    ) -> Callable[[_Decorated], _Decorated]:
        """``add_unit`` without ``fn``: a decorator that adds the function it is given.

        It is built here rather than inside ``add_unit``: a closure there would turn every
        argument of ``add_unit`` into a cell, a cost each call would pay.
        """
        dependencies, name, *rest = arguments

        def decorator(function: _Decorated) -> _Decorated:
            unit_id = self._name_for(function, name, use_function_name=True)
            self.add_unit(function, dependencies, unit_id, *rest, **options)
            return function

        return decorator

    def _check_not_executing(self, action: str) -> None:
        """Refuse to change the graph while a run uses it, instead of ignoring the change.

        Raises:
            RuntimeError: A run is going on.
        """
        if self._active_run is not None:
            raise RuntimeError(
                f"{action}() was called while the partitioner is executing; the graph of a "
                "run cannot change from outside (call it before execute() or after it returns)"
            )

    # -- named limits ----------------------------------------------------------------------

    def add_limit(
        self,
        name: str | Limit,
        concurrency: int | None = None,
        per_second: float | None = None,
        burst: int = 1,
    ) -> Limit:
        """Add a named limit that units hold while they run (``add_unit(..., limits=[name])``).

        Args:
            name: The limit's name, or a :class:`Limit` to use as it is (one Limit may be
                shared by several partitioners: its slots and tokens are then shared).
            concurrency: At most this many slots held by running attempts at once.
            per_second: Starts per second on average (a token bucket), or None.
            burst: How many starts the bucket allows at once (default 1).

        Returns:
            The limit. Its token bucket keeps its state across runs.

        Raises:
            TypeError: A knob has the wrong type, or the name is not a string.
            ValueError: A knob is not positive and finite.
            RuntimeError: A run is going on (a limit of the same name would be replaced).

        An existing limit of the same name is replaced.

        .. versionadded:: 0.2
        """
        if isinstance(name, Limit):
            if concurrency is not None or per_second is not None or burst != 1:
                raise TypeError("add_limit(Limit(...)) takes no other arguments")
            limit = name
        else:
            limit = Limit(check_limit_name(name), concurrency, per_second, burst)
        with self._lock:
            if self._active_run is not None:
                raise RuntimeError(
                    f"cannot add limit {limit.name!r} while this partitioner is executing"
                )
            self._limits[limit.name] = limit
            self._plan = None  # its simulations read the limits
        return limit

    @property
    def limits(self) -> Mapping[str, Limit]:
        """The named limits, by name (read-only; add them with :meth:`add_limit`)."""
        return MappingProxyType(self._limits)

    def limit_stats(self) -> dict[str, LimitStats]:
        """What each limit saw in the last run: peak concurrency, starts, waiting time.

        Returns:
            One :class:`LimitStats` per limit named by a unit of the last run (empty before
            any run, or when no unit names a limit).

        .. versionadded:: 0.2
        """
        run = self._last_run
        gate = None if run is None else run.scheduler.gate
        if gate is None:
            return {}
        return {
            limit.name: LimitStats(
                limit.name,
                limit.concurrency,
                limit.per_second,
                limit.burst,
                gate.peak[k],
                gate.starts[k],
                gate.waited[k],
                gate.waits[k],
                gate.released_at_timeout[k],
            )
            for k, limit in enumerate(gate.limits)
        }

    def _compiled_limits(self, graph: Graph) -> LimitPlan | None:
        """The units' limits, checked and compiled for ``graph``, reused while neither changes.

        Raises:
            ValueError: A unit names an unknown limit or more slots than it has.
        """
        cached = self._limit_plan
        if cached is not None and cached[0] is graph and cached[1] == self._limits:
            return cached[2]
        self._check_limits()  # the units or the limits changed: check them again
        plan = compile_limits(graph, self._limits)
        self._limit_plan = (graph, dict(self._limits), plan)
        return plan

    def _check_limits(self) -> None:
        """Refuse units naming unknown limits or more slots than a limit has, before a run."""
        known = self._limits
        for unit in self.units.values():
            wanted = unit._options.limits  # the record: no property call per unit
            if not wanted:
                continue
            for name, slots in wanted.items():
                limit = known.get(name)
                if limit is None:
                    raise ValueError(
                        f"unit {unit.id!r} names the unknown limit {name!r}; "
                        f"add it with add_limit({name!r}, ...) (known: {sorted(known)})"
                    )
                if limit.concurrency is not None and slots > limit.concurrency:
                    raise ValueError(
                        f"unit {unit.id!r} asks for {slots} slots of limit {name!r}, "
                        f"whose concurrency is {limit.concurrency}: it could never start"
                    )
                if limit.per_second is not None and slots > limit.burst:
                    raise ValueError(
                        f"unit {unit.id!r} asks for {slots} slots of limit {name!r}, more "
                        f"than its burst of {limit.burst}: it could never start"
                    )

    def _admit(self, unit: QuantumUnit[T, R]) -> None:
        """Check a valid unit before it joins; a subclass hook (raising adds nothing)."""

    def _admit_all(self, units: Iterable[QuantumUnit[T, R]]) -> None:
        """:meth:`_admit` each of units that join together: one refused, none joins."""
        for unit in units:
            self._admit(unit)

    #: Whether this class overrides :meth:`_admit`: adding a unit skips the call otherwise.
    _admits: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Note whether the subclass overrides :meth:`_admit` (see :attr:`_admits`)."""
        super().__init_subclass__(**kwargs)
        cls._admits = cls._admit is not QuantumPartitioner._admit

    def _name_for(
        self, fn: Callable[..., Any], name: str | None, *, use_function_name: bool
    ) -> str:
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"unit name must be a string, got {name!r}")
            if not name:
                raise ValueError("unit name must not be empty")
            return name
        fn_name = getattr(fn, "__name__", None)
        if use_function_name and isinstance(fn_name, str) and fn_name != "<lambda>":
            return fn_name
        n = len(self.units)
        while f"unit_{n}" in self.units:  # after remove_unit, the count may name a unit
            n += 1
        return f"unit_{n}"

    def remove_unit(self, name: str) -> QuantumUnit[T, R]:
        """Remove the unit ``name`` and return it.

        Raises:
            KeyError: There is no such unit.
            RuntimeError: The partitioner is executing.
        """
        self._check_not_executing("remove_unit")
        try:
            unit = self.units.pop(name)
        except KeyError:
            raise KeyError(f"no unit named {name!r}") from None
        self._graph = None
        self._plan = None
        return unit

    def _compiled(self) -> Graph:
        graph = self._graph
        view = self._view
        units = self.units
        if graph is not None and (
            len(graph.units) != len(units) or any(map(is_not, graph.units, units.values()))
        ):
            # A unit put into or deleted from the dict directly: the count alone misses one
            # deleted and another put in, which ran the deleted unit and left the new PENDING.
            view.changed = True
        # changed: a unit's field was assigned since; a run under way keeps its graph (and
        # its units their states), the next run takes the change.
        if graph is None or (view.changed and self._active_run is None):
            self._graph = self._plan = None  # a graph that does not compile stays unknown
            if view.changed:
                self._check_assigned()
            graph = compile_graph(self.units.values())
            view.changed = False
            # Bind each unit to the run record it will read its state from.
            view.record = None
            # zip with the index's values shares its int objects instead of making new ones.
            for unit, i in zip(graph.units, graph.index.values(), strict=True):
                unit._view = view
                unit._index = i
            self._graph = graph
        return graph

    def _check_assigned(self) -> None:
        """Check the units as add_unit checks them: a field was assigned since the last compile.

        Limits given as a list of names become ``{name: slots}``, and a join rule given by
        name the rule, as ``limits=`` and ``run_if=`` do.

        Raises:
            TypeError: A field has the wrong type (the message names the unit).
            ValueError: A field is out of range (the message names the unit).
        """
        for key, unit in self.units.items():
            if not isinstance(unit, QuantumUnit):
                raise TypeError(f"units[{key!r}] must be a QuantumUnit, got {unit!r}")
            if unit.id != key:
                raise ValueError(
                    f"units[{key!r}] holds the unit {unit.id!r}: a unit's key is its name"
                )
            rule: object = unit._options.run_if  # what was assigned: maybe a rule's name
            if isinstance(rule, str):  # the record, not the attribute: no change to report
                unit._options = unit._options._replace(run_if=_join_rule_of(unit.id, rule))
            validate_unit(unit, over_maps=self._depends_on_a_map(unit._dependencies))
            limits = unit._options.limits
            if limits is not None:
                slots = normalize_unit_limits(unit.id, limits)
                if slots != limits:  # the record, not the attribute: no change to report
                    unit._options = unit._options._replace(limits=slots)

    def build_execution_plan(self) -> ExecutionPlan:
        """Validate the graph and describe it: levels, critical path, picture.

        Raises:
            UnknownDependencyError: A unit depends on a name that is no unit.
            CircularDependencyError: The dependencies form a cycle (``.cycle`` has its path).
        """
        graph = self._compiled()
        if self._plan is None or self._plan.graph is not graph:
            self._plan = ExecutionPlan(graph, self.units, self._limits, is_subgraph=_is_subgraph)
        return self._plan

    # -- running ---------------------------------------------------------------------------

    def execute(
        self,
        context: Mapping[str, Any] | None = None,
        execution_mode: ExecutionModeArg | None = None,
        max_workers: int | None = None,
        custom_executor: Executor | None = None,
        *,
        fail_fast: bool = False,
        raise_on_error: bool = False,
        backend: Backend | None = None,
        progress: bool = False,
        trace: bool = False,
        deadline: float | None = None,
    ) -> dict[str, R]:
        """Run every unit, respecting dependencies; return the results that exist.

        Args:
            context: Read-only values every unit sees through ``ctx``.
            execution_mode: Where units run (default: ``default_execution_mode``).
            max_workers: Units that may run at once for this run.
            custom_executor: The executor for ``ExecutionMode.CUSTOM``.
            fail_fast: Once a unit fails for good, cancel every unit that has not started.
            raise_on_error: Raise :class:`TaskError` if any unit failed or timed out.
            backend: Run on this backend instead of the mode's own (it decides where units
                run: an ``execution_mode`` or a ``custom_executor`` that is not its own is
                refused with it).
            progress: Draw a live progress bar on standard error, if it is a terminal
                (needs the ``progress`` extra).
            trace: Record which worker runs each attempt, for :meth:`export_trace` and
                :meth:`write_report` (one dict entry per attempt).
            deadline: Seconds the whole run may take (positive, finite). When they are up,
                every unfinished unit is CANCELED, running attempts are stopped where the
                mode can (processes killed, tasks cancelled) or abandoned, and completed
                results are kept; ``last_execution_metrics["stop_reason"]`` is
                ``"deadline"``.

        Returns:
            Results by unit name: every completed unit, plus the fallback value of each
            failed unit that has one. Failed, skipped and cancelled units are absent (see
            :meth:`get_failed_units` and ``units[name].state``).

        Raises:
            TaskError: With ``raise_on_error``, after the run, if any unit failed or the
                deadline cancelled units (its ``stop_reason`` says why the run stopped).
            GraphError: The graph is invalid; raised before any unit runs.
            KeyboardInterrupt: After cancelling what had not finished; completed results
                stay available through :meth:`get_partial_results`.
        """
        chosen, run = self._prepare(
            context,
            execution_mode,
            max_workers,
            custom_executor,
            backend,
            fail_fast=fail_fast,
            progress=progress,
            trace=trace,
            deadline=deadline,
        )
        try:
            _begin(run)  # its hooks may raise KeyboardInterrupt too: inside the cleanup
            chosen.run(run)
        finally:
            _end(run, chosen, self._finish)
        return self._outcome(run, raise_on_error=raise_on_error)

    async def aexecute(
        self,
        context: Mapping[str, Any] | None = None,
        max_workers: int | None = None,
        *,
        fail_fast: bool = False,
        raise_on_error: bool = False,
        progress: bool = False,
        trace: bool = False,
        deadline: float | None = None,
    ) -> dict[str, R]:
        """Run every unit on the running event loop (ASYNC mode) and return the results.

        Use it where a loop already runs (a web server, a notebook): coroutine units share
        that loop, plain functions run in threads. Arguments and results are those of
        :meth:`execute`.
        """
        chosen, run = self._prepare(
            context,
            ExecutionMode.ASYNC,
            max_workers,
            None,
            None,
            fail_fast=fail_fast,
            from_loop=True,
            progress=progress,
            trace=trace,
            deadline=deadline,
        )
        assert isinstance(chosen, AsyncBackend)
        try:
            _begin(run)  # its hooks may raise KeyboardInterrupt too: inside the cleanup
            await chosen.arun(run)
        finally:
            _end(run, chosen, self._finish)
        return self._outcome(run, raise_on_error=raise_on_error)

    def stream(
        self,
        context: Mapping[str, Any] | None = None,
        *args: Any,
        strategy: StrategyName | None = None,
        **options: Any,
    ) -> ResultStream:
        """Run like :meth:`execute` and yield each unit's :class:`UnitResult` as it finishes.

        It takes exactly :meth:`execute`'s arguments, and ``strategy=`` to run as
        :meth:`execute_with_strategy` does (``"resource_balanced"``: mixed lanes). Use it
        as::

            with partitioner.stream(context, execution_mode=ExecutionMode.THREAD) as results:
                for done in results:
                    print(done.name, done.state, done.result if done.ok else done.error)
                    if enough(done):
                        break  # the rest of the run is cancelled, like cancel()

        Records come in the order units reach a terminal state (completed, failed, timed
        out, skipped, cancelled); the run goes on while the loop body runs, and records
        wait in a queue for a slow consumer. Leaving the loop or the ``with`` block early
        cancels what has not finished, exactly like :meth:`cancel`, and waits for the run
        to end; completed results stay in :meth:`get_partial_results`. The run is driven
        from a thread of its own (units of SEQUENTIAL mode run there, one at a time).

        Raises:
            GraphError: Bad input, from ``stream()`` itself, before any unit runs; so does
                every other error :meth:`execute` raises before the run.
            TaskError: With ``raise_on_error``, from the iteration after the last record.
            KeyboardInterrupt: A unit running in this process raised it (or SystemExit):
                from the iteration, after the records of what finished before.

        .. versionadded:: 0.1
        """
        if strategy is not None:
            if args:
                raise TypeError("stream(strategy=...) takes keyword arguments only")
            return ResultStream(
                lambda: self.execute_with_strategy(context, strategy, **options),
                lambda: self._active_run,
            )
        return ResultStream(
            lambda: self.execute(context, *args, **options), lambda: self._active_run
        )

    def astream(
        self, context: Mapping[str, Any] | None = None, *args: Any, **options: Any
    ) -> AsyncResultStream:
        """:meth:`stream` for ``async for``, running like :meth:`aexecute` on this loop.

        It takes :meth:`aexecute`'s arguments. Use it as ``async with p.astream(ctx) as
        results:`` and ``async for done in results:``; leaving the block cancels the rest
        of the run (its coroutines are cancelled) and waits for it to end.

        .. versionadded:: 0.1
        """
        return AsyncResultStream(
            lambda: self.aexecute(context, *args, **options), lambda: self._active_run
        )

    def _prepare(
        self,
        context: Mapping[str, Any] | None,
        execution_mode: ExecutionModeArg | None,
        max_workers: int | None,
        custom_executor: Executor | None,
        backend: Backend | None,
        *,
        fail_fast: bool,
        from_loop: bool = False,
        progress: bool = False,
        trace: bool = False,
        deadline: float | None = None,
    ) -> tuple[Backend, Run]:
        """Validate a run's arguments and graph, then claim the partitioner for it."""
        if context is None:
            context = {}
        elif not isinstance(context, Mapping):
            raise TypeError(f"context must be a mapping (a dict), got {type(context).__name__}")
        workers = _check_max_workers(max_workers)
        run_deadline = _check_deadline(deadline)
        chosen = self._choose_backend(execution_mode, workers, custom_executor, backend)
        if isinstance(chosen, AsyncBackend) and not from_loop:
            check_no_running_loop()
        graph = self._compiled()
        limit_plan = self._compiled_limits(graph)
        instruments = self._run_instruments(progress=progress, trace=trace)
        run = Run(
            graph,
            context,
            mode=chosen.name,
            max_workers=chosen.concurrency or 0,
            retry_policy=self.retry_policy,
            fail_fast=bool(fail_fast),
            instruments=instruments,
            lane_of=chosen.lane_of(graph),
            limits=self._limits,
            deadline=run_deadline,
            limit_plan=limit_plan,
        )
        recorder = next((i for i in instruments if isinstance(i, TraceRecorder)), None)
        with self._lock:
            if self._active_run is not None:
                raise RuntimeError("this partitioner is already executing; wait for it to end")
            self._active_run = run
        try:
            # Once the partitioner is this run's: the keys' parts it keeps are the run's own.
            run.cache = self._cache_for(run)
            # Its clock starts before the backend takes it on: workers starting are in the run.
            run.begin()
            chosen.claim(run)
        except BaseException:  # refused, like bad input: no event, the last run's record kept
            run.withdraw()
            with self._lock:
                self._active_run = None
            raise
        # From the claim to the caller's try (which releases both), no function is called:
        # CPython raises a pending KeyboardInterrupt only at a call or a loop's jump back, so
        # one cannot land where nothing would release the run (the recorder is found above).
        self._view.record = run
        self._last_run = run
        self._last_recorder = recorder
        self._last_metrics = None
        return chosen, run

    def _cache_for(self, run: Run) -> UnitCache | None:
        """The cache a run consults: none here; ``CachingQuantumPartitioner`` has one."""
        del run
        return None

    def _outcome(self, run: Run, *, raise_on_error: bool) -> dict[str, R]:
        results: dict[str, R] = run.results()
        stop_reason = run.stop_reason
        if raise_on_error and (self.failed_units or stop_reason == "deadline"):
            failed = run.failed()
            if stop_reason == "deadline":
                failed.update(run.cancelled())
            raise TaskError(failed, results, list(failed), stop_reason)
        return results

    def _choose_backend(
        self,
        execution_mode: ExecutionModeArg | None,
        workers: int | None,
        custom_executor: Executor | None,
        backend: Backend | None,
    ) -> Backend:
        if backend is not None:
            if not isinstance(backend, Backend):
                raise TypeError(f"backend must be a Backend, got {backend!r}")
            # A mode or an executor that is not the backend's would be ignored: the run would
            # go elsewhere than asked.
            if execution_mode is not None and _check_mode(execution_mode).value != backend.name:
                raise ValueError(
                    f"backend= runs units in {backend.name!r} mode, not in "
                    f"execution_mode={_check_mode(execution_mode).value!r}; drop one of them"
                )
            if custom_executor is not None and backend.name != ExecutionMode.CUSTOM.value:
                raise ValueError(
                    f"backend= runs units in {backend.name!r} mode, not on custom_executor=; "
                    "drop one of them"
                )
            return backend
        if execution_mode is None:
            mode = (
                ExecutionMode.CUSTOM if custom_executor is not None else self.default_execution_mode
            )
        else:
            mode = _check_mode(execution_mode)
        if custom_executor is not None and mode is not ExecutionMode.CUSTOM:
            raise ValueError(f"custom_executor is only used with ExecutionMode.CUSTOM, not {mode}")
        workers = workers or self.max_workers
        if mode is ExecutionMode.SEQUENTIAL:
            return SequentialBackend()
        if mode is ExecutionMode.THREAD:
            return ThreadBackend(workers or default_thread_workers())
        if mode is ExecutionMode.CUSTOM:
            if custom_executor is None:
                raise ValueError("ExecutionMode.CUSTOM needs custom_executor=<an Executor>")
            return ExecutorBackend(custom_executor, workers)
        if mode is ExecutionMode.PROCESS:
            return ProcessBackend(workers)
        return AsyncBackend(workers)

    def _finish(self, run: Run) -> None:
        self._settled_run = run
        self._completed_units = self._failed_units = None  # built when first read
        with self._lock:
            self._active_run = None

    def _run_instruments(self, *, progress: bool, trace: bool) -> list[Instrument]:
        """The partitioner's instruments, its callbacks, and those this run asked for."""
        instruments = [*self.instruments, *self._callback_instruments(), *take_run_instruments()]
        if trace and not any(isinstance(i, TraceRecorder) for i in instruments):
            instruments.append(TraceRecorder())
        if progress:
            bar = ProgressBar()  # raises ImportError naming the extra if rich is missing
            if bar.active:  # not a terminal: nothing to draw, so nothing to pay per unit
                bar.limits = list(self._limits.values())
                instruments.append(bar)
        return instruments

    def _callback_instruments(self) -> list[Instrument]:
        instruments: list[Instrument] = []
        if self.on_unit_start is not None:
            instruments.append(_OnStart(self.on_unit_start))
        if self.on_unit_complete is not None:
            instruments.append(_OnComplete(self.on_unit_complete))
        if self.on_unit_error is not None:
            instruments.append(_OnError(self.on_unit_error))
        if self.on_unit_retry is not None:
            instruments.append(_OnRetry(self.on_unit_retry))
        if self.on_unit_skip is not None:
            instruments.append(_OnSkip(self.on_unit_skip))
        return instruments

    def cancel(self) -> None:
        """Stop the current run from any thread.

        Nothing new starts, unfinished units are CANCELED, completed results are kept, and
        ``execute`` returns them.
        """
        run = self._active_run
        if run is not None:
            run.request_cancel()

    # -- variants kept from the original API -----------------------------------------------

    def execute_with_monitoring(
        self, context: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, R]:
        """Execute (threads unless told otherwise) and keep detailed metrics.

        Every run sets :attr:`last_execution_metrics`; this is ``execute`` under the original
        API's name, kept for code written against it.
        """
        return self.execute(context, **options)

    def execute_with_recovery(
        self, context: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, R]:
        """Execute with retries and fallbacks, returning partial results instead of raising.

        Retries (``retries=N``) wait without holding a worker; a unit that still fails
        hands its ``metadata["fallback_value"]`` to its dependents, which then run; units
        downstream of a failure without fallback are skipped. This is what ``execute``
        always does; the original API's name is kept for code written against it.
        """
        options.setdefault("raise_on_error", False)
        return self.execute(context, **options)

    def execute_with_strategy(
        self, context: Mapping[str, Any] | None, strategy: StrategyName, **options: Any
    ) -> dict[str, R]:
        """Execute with a named strategy.

        Strategies:
            ``"priority"``: ready units run by ``priority`` (higher first), then by the
            longest remaining critical path. It is the scheduler's own order, used by every
            run in the default mode.

            ``"resource_balanced"``: each unit runs where its ``metadata["resource_type"]``
            says (``"cpu"``: processes, ``"io"`` or none: threads, ``"async"``: an event
            loop), in one run over one dependency graph.

            ``"adaptive"``: threads whose number follows the machine's CPU and memory load
            (psutil), adjusted while the run goes on, up to ``max_workers``.

        Other keyword arguments are those of :meth:`execute`.

        Raises:
            ValueError: The strategy is unknown, or a unit's ``resource_type`` is.
        """
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; use one of {list(_STRATEGIES)}")
        if strategy == "priority":
            return self.execute(context, **options)
        workers = _check_max_workers(options.pop("max_workers", None)) or self.max_workers
        for name in ("execution_mode", "custom_executor", "backend"):
            if options.get(name) is not None:
                raise ValueError(f"strategy {strategy!r} chooses its own backend; drop {name}=")
        backend: Backend
        if strategy == "resource_balanced":
            backend = resource_balanced_backend(self.units, workers)
        else:
            backend = AdaptiveBackend(workers or default_thread_workers())
        return self.execute(context, backend=backend, **options)

    # -- results of the last run -----------------------------------------------------------

    def get_partial_results(self) -> dict[str, R]:
        """The results of the last (or current) run that exist, by unit name."""
        run = self._last_run
        return {} if run is None else run.results()

    def get_failed_units(self) -> dict[str, BaseException]:
        """The units that failed or timed out in the last run, with their errors."""
        run = self._last_run
        return {} if run is None else run.failed()

    @property
    def last_execution_metrics(self) -> dict[str, Any] | None:
        """Metrics of the last run (the original API's keys), built when first read; None before."""
        run = self._last_run
        if run is None:
            return None
        if self._last_metrics is None or self._active_run is run:
            metrics = build_metrics(run)
            if self._active_run is run:
                return metrics
            self._last_metrics = metrics
        return self._last_metrics

    # -- pictures and traces of the last run (see docs/observability.md) --------------------

    def _finished_run(self) -> Run:
        run = self._last_run
        if run is None:
            raise RuntimeError("there is no run to show yet: call execute() first")
        if self._active_run is run:
            raise RuntimeError("the run is still going; export it once execute() returns")
        return run

    def export_trace(self, path: str | Path) -> Path:
        """Write the last run as a Chrome trace (JSON) that Perfetto and chrome://tracing open.

        One track per worker, one slice per attempt; retries, failures, timeouts, skips and
        cancellations are marked. Tracks are named after worker threads when the run had a
        :class:`TraceRecorder` (``execute(..., trace=True)``), else numbered slots.

        Args:
            path: The file to write; a ``.gz`` suffix compresses it.

        Returns:
            The path written.

        Raises:
            RuntimeError: No run has finished yet.

        .. versionadded:: 0.1
        """
        return write_chrome_trace(self._finished_run(), path, self._last_recorder)

    def export_otel(self, tracer_provider: Any = None) -> Any:
        """Send the last run to OpenTelemetry as one span, with one child span per attempt.

        Args:
            tracer_provider: Where spans go (default: the global tracer provider).

        Returns:
            The run's span (ended).

        Raises:
            ImportError: ``opentelemetry-api`` is missing (the ``otel`` extra).
            RuntimeError: No run has finished yet.

        .. versionadded:: 0.1
        """
        return export_spans(self._finished_run(), tracer_provider, self._last_recorder)

    def write_report(self, path: str | Path, *, title: str = "quantum-partitioner run") -> Path:
        """Write a self-contained HTML report of the last run.

        It shows the graph coloured by state, a Gantt chart with one row per worker, the
        critical path, and every unit's state, attempts and duration; it needs no network.

        Returns:
            The path written.

        Raises:
            RuntimeError: No run has finished yet.

        .. versionadded:: 0.1
        """
        from .observability._report import write_report  # noqa: PLC0415 - only reports need html & co

        return write_report(self._finished_run(), path, self._last_recorder, title=title)

    def render(self, path: str | Path, format: str | None = None) -> Path:  # noqa: A002
        """Draw the graph (coloured by the last run's states) with Graphviz's ``dot``.

        Args:
            path: The image to write.
            format: ``"svg"``, ``"png"`` or ``"pdf"``; None takes it from ``path``'s suffix.

        Returns:
            The path written.

        Raises:
            FileNotFoundError: Graphviz is not installed; the message says how to get it.
            ValueError: The format is not one of those.

        .. versionadded:: 0.1
        """
        from .observability._report import render_dot  # noqa: PLC0415 - only pictures need subprocess

        return render_dot(self.build_execution_plan().visualize(), path, format)


def _begin(run: Run) -> None:
    """Announce the run; if a ``run_started`` hook interrupts it, cancel every unit.

    Once the backend drives the run, it cancels what is unfinished itself.
    """
    try:
        run.announce()
    except BaseException as error:
        run.report(run.interrupt("interrupted", error))
        raise


def _end(run: Run, backend: Backend, finish: Callable[[Run], None]) -> None:
    """Close the run's record; release the backend and the partitioner whatever raises.

    The backend is released first: a run whose ``run_started`` hook interrupted it was
    claimed but never driven.
    """
    try:
        backend.release(run)
    finally:
        try:
            run.end()
        finally:
            finish(run)


class _OnStart(Instrument):
    def __init__(self, callback: Callable[[str], Any]) -> None:
        self.callback = callback

    def unit_started(self, event: UnitStarted) -> None:
        self.callback(event.unit_id)


class _OnComplete(Instrument):
    def __init__(self, callback: Callable[[str, Any], Any]) -> None:
        self.callback = callback

    def unit_finished(self, event: UnitFinished) -> None:
        self.callback(event.unit_id, event.result)


class _OnError(Instrument):
    def __init__(self, callback: Callable[[str, BaseException], Any]) -> None:
        self.callback = callback

    def unit_failed(self, event: UnitFailed) -> None:
        self.callback(event.unit_id, event.error)


class _OnRetry(Instrument):
    def __init__(self, callback: Callable[[str, int, BaseException], Any]) -> None:
        self.callback = callback

    def unit_retrying(self, event: UnitRetrying) -> None:
        self.callback(event.unit_id, event.attempt, event.error)


class _OnSkip(Instrument):
    def __init__(self, callback: Callable[[str, BaseException], Any]) -> None:
        self.callback = callback

    def unit_skipped(self, event: UnitSkipped) -> None:
        self.callback(event.unit_id, event.reason)
