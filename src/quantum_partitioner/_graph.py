"""Layer 1, pure data: units, their validation, and the compiled graph.

Nothing here starts a thread, reads a clock or calls a unit. ``compile_graph`` turns the
user's units (keyed by name) into a :class:`Graph` addressed by integer index, which is what
the scheduler works on: lists, not dicts of strings, on the hot path.

Compilation is O(units + edges): one pass maps dependency names to indices, one pass checks
the order (units added after their dependencies need no sort at all, otherwise Kahn's
algorithm), one pass computes levels and the longest path to each unit, and one reverse pass
computes the longest remaining path from each unit (its *rank*, which orders ready units).
"""

from __future__ import annotations

import enum
import gc
import inspect
import itertools
import math
import sys
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, NamedTuple, TypeAlias, overload

from ._errors import (
    CircularDependencyError,
    DuplicateUnitError,
    UnknownDependencyError,
    error_text,
    interrupts_run,
)
from ._joins import ALL_SUCCESS, JoinRule
from ._policies import RetryPolicy

# Type parameter defaults (PEP 696) are in typing from 3.13 only.
if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

if TYPE_CHECKING:
    from ._context import ExecutionContext

__all__ = [
    "ExecutionMode",
    "Graph",
    "QuantumUnit",
    "UnitState",
    "compile_graph",
]

# A partitioner's type parameters: T is kept for the original QuantumPartitioner[T, R]
# signature, R is the units' result type. Both default to Any, so that
# ``QuantumPartitioner(max_workers=4)`` needs no annotation.
T = TypeVar("T", default=Any)
R = TypeVar("R", default=Any)

#: What a unit is: called as ``fn(ctx)``, it returns its result or an awaitable of it.
UnitFunction: TypeAlias = "Callable[[ExecutionContext], R | Awaitable[R]]"


class UnitState(enum.Enum):
    """Lifecycle states of a unit. Every unit ends a run in exactly one terminal state."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"
    TIMEOUT = "timeout"

    @property
    def is_terminal(self) -> bool:
        """Whether a unit in this state has finished for this run."""
        return self not in _NOT_TERMINAL


_NOT_TERMINAL = frozenset({UnitState.PENDING, UnitState.RUNNING})


class ExecutionMode(enum.Enum):
    """Where units run."""

    SEQUENTIAL = "sequential"
    PROCESS = "process"
    THREAD = "thread"
    ASYNC = "async"
    CUSTOM = "custom"


#: A mode as every API that takes one accepts it: the enum member or its value.
ExecutionModeArg: TypeAlias = (
    ExecutionMode | Literal["sequential", "thread", "process", "async", "custom"]
)


class _RunView:
    """What a unit reads of the run that last executed it, and tells its partitioner.

    Each unit of a compiled graph holds its partitioner's view (set by the partitioner).
    ``changed``: an option, the dependencies or the metadata of one of them was assigned
    since; the partitioner then compiles its graph again before the next run or plan, which
    reads them (priority order, join rules, conditions, edges, weights).
    """

    __slots__ = ("changed", "record")

    def __init__(self) -> None:
        self.record: Any = None
        self.changed = False


def _changed(unit: QuantumUnit[Any, Any]) -> None:
    """Tell the partitioner whose graph ``unit`` was compiled into that it changed."""
    view = unit._view
    if view is not None:
        view.changed = True


# What a unit without dependencies holds in place of its list (see QuantumUnit.dependencies).
_NO_DEPENDENCIES: Final[tuple[()]] = ()

_new_object = object.__new__


class UnitOptions(NamedTuple):
    """The options of a unit that most units leave at their defaults, as one record.

    A unit holds one of these instead of a slot per option: most units share one of the
    two default records (:data:`_DEFAULTS`, :data:`_ADDED_DEFAULTS`), so a unit is a few
    slots to build and to keep. The record is never changed in place: setting an option on a
    unit gives that unit a new record (copy on write, see :class:`QuantumUnit`). Readers on
    a run's path test ``unit._options`` against the defaults first (:func:`customised`).
    """

    timeout: float | None = None
    retries: int = 0
    priority: int = 0
    retry_policy: RetryPolicy | None = None
    condition: Callable[[Any], object] | None = None
    run_if: JoinRule | None = None
    cancel_rest: bool = False
    limits: dict[str, int] | None = None
    over: str | None = None
    max_items: int | None = None
    view_keys: dict[str, str] | None = None


#: The options of a unit built as ``QuantumUnit(id, function)``: ``run_if`` None.
_DEFAULTS: Final = UnitOptions()
#: The options of a unit that ``add_unit``/``add_units`` built with every default: its
#: ``run_if`` reads as the rule it runs by, ``all_success``.
_ADDED_DEFAULTS: Final = UnitOptions(run_if=ALL_SUCCESS)


_V = TypeVar("_V")


def _option(name: str) -> Any:
    """The :class:`QuantumUnit` attribute for option ``name`` of its :class:`UnitOptions`.

    A property: reading is an ``operator.attrgetter`` on the record (C code, no Python frame
    per read); writing replaces the record with a copy holding the new value (copy on
    write: the record may be a default one that many units share, so it is never changed
    in place). Typed Any so that mypy reads the attribute's annotation, an ``_Option``.
    """

    def write(unit: QuantumUnit[Any, Any], value: object) -> None:
        change: dict[str, Any] = {name: value}
        unit._options = unit._options._replace(**change)
        _changed(unit)

    return property(attrgetter(f"_options.{name}"), write)


if TYPE_CHECKING:

    class _Option(Generic[_V]):
        """What mypy sees of an option made by :func:`_option`: an attribute of type ``_V``."""

        @overload
        def __get__(self, unit: None, owner: type[Any]) -> _Option[_V]: ...
        @overload
        def __get__(self, unit: object, owner: type[Any]) -> _V: ...
        def __get__(self, unit: object, owner: type[Any]) -> _V | _Option[_V]:
            raise NotImplementedError  # never runs: mypy's view only

        def __set__(self, unit: object, value: _V) -> None: ...


#: What :func:`metadata_of` gives for a unit without metadata (read-only: it is shared).
_NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})


def metadata_of(unit: QuantumUnit[Any, Any]) -> Mapping[str, Any]:
    """``unit``'s metadata to read, without making a dict for a unit that has none."""
    return unit._metadata or _NO_METADATA


def customised(units: Sequence[QuantumUnit[Any, Any]]) -> list[tuple[int, UnitOptions]]:
    """``(index, options)`` of each unit whose options are not a default record.

    Most units have none of their own, so what reads an option of every unit (a run's
    timeouts and retries, the priority order, join rules) reads these few and gives the
    others the default: one identity test per unit instead of an attribute read per option.
    """
    plain, added = _DEFAULTS, _ADDED_DEFAULTS
    # First without positions: enumerate makes an int object per unit past 256, which
    # costs more than the test, and most graphs have no such unit at all.
    own = [
        unit for unit in units if (options := unit._options) is not plain and options is not added
    ]
    if not own:
        return []
    return [
        (i, options)
        for i, unit in enumerate(units)
        if (options := unit._options) is not plain and options is not added
    ]


class QuantumUnit(Generic[T, R]):
    """A unit of computation: a callable, the units it depends on, and how to run it.

    The runtime attributes (``state``, ``result``, ``error``, ``attempt``, ``start_time``,
    ``end_time``) describe the unit's last run. They are read from that run's record, so a
    run does not pay to copy them into every unit.

    The options from ``timeout`` on read and write as attributes, but live in one
    :class:`UnitOptions` record that units with default options share: setting one gives the
    unit a record of its own.

    Attributes:
        id: The unit's unique name.
        function: Called as ``function(ctx)`` with an :class:`ExecutionContext`.
        dependencies: Names of the units whose results this unit needs.
        metadata: Free-form; the library reads ``estimated_duration``, ``fallback_value``,
            ``resource_type``, ``cacheable`` and ``cache_keys``.
        timeout: Seconds one attempt may take, or None for no limit.
        retries: Extra attempts after a failure (``retries=2`` allows 3 attempts).
        priority: Among ready units, higher runs sooner.
        retry_policy: Overrides the partitioner's retry policy for this unit.
        condition: ``condition(ctx)`` is asked when the unit becomes ready; false skips it.
        run_if: Its join rule (None: ``"all_success"``).
        cancel_rest: With ``run_if=at_least(k)``, cancel the dependencies nothing else needs
            once ``k`` are ok.
        limits: The named limits an attempt holds while it runs, as ``{name: slots}``
            (None: none); see :meth:`QuantumPartitioner.add_limit`.
        over: For a map (:meth:`QuantumPartitioner.add_map`), the unit (or map) whose result
            it maps over; None for an ordinary unit.
        max_items: For a map, the most items it may have (None: no bound).
        view_keys: ``{dependency: key}`` for the dependencies the function reads under
            another key than their name (None: every one under its name). Units inlined by
            :meth:`QuantumPartitioner.add_subgraph` keep reading their inner names this way.
    """

    __slots__ = ("_dependencies", "_index", "_metadata", "_options", "_view", "function", "id")

    def __init__(  # noqa: PLR0917 - the original API's dataclass took these positionally
        self,
        id: str,  # noqa: A002 - the original API's field name
        function: UnitFunction[R],
        dependencies: list[str] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        priority: int = 0,
        metadata: dict[str, Any] | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        condition: Callable[[Any], object] | None = None,
        run_if: JoinRule | None = None,
        cancel_rest: bool = False,
        limits: dict[str, int] | None = None,
        over: str | None = None,
        max_items: int | None = None,
        view_keys: dict[str, str] | None = None,
    ) -> None:
        """Create a unit; validate it with :func:`validate_unit`."""
        self.id = id
        self.function = function
        self._dependencies: list[str] | tuple[()] = (
            _NO_DEPENDENCIES if dependencies is None else dependencies
        )
        self._metadata = metadata  # None: no dict until one is asked for
        if (
            default_options(timeout, retries, priority, retry_policy, condition, cancel_rest)
            and run_if is None
            and limits is None
            and over is None
            and max_items is None
            and view_keys is None
        ):
            self._options = _DEFAULTS
        else:
            self._options = UnitOptions(
                timeout,
                retries,
                priority,
                retry_policy,
                condition,
                run_if,
                cancel_rest,
                limits,
                over,
                max_items,
                view_keys,
            )
        self._view: _RunView | None = None
        self._index = -1

    @property
    def dependencies(self) -> list[str]:
        """Names of the units whose results this unit needs (a list it owns)."""
        deps = self._dependencies
        if deps is _NO_DEPENDENCIES:
            # A unit without dependencies holds none until its list is asked for: most units
            # of a wide graph are roots, and an empty list costs 72 bytes each.
            deps = self._dependencies = []
        return deps  # type: ignore[return-value]  # never the empty tuple here

    @dependencies.setter
    def dependencies(self, value: list[str]) -> None:
        self._dependencies = value
        _changed(self)

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form data about the unit (a dict it owns; see the class docstring)."""
        metadata = self._metadata
        if metadata is None:
            # Most units have none: a dict is made when first asked for (an empty dict costs
            # 64 bytes and a step towards the next garbage collection, per unit).
            metadata = self._metadata = {}
        return metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = value
        _changed(self)

    # The options (see UnitOptions): each reads the unit's record and writes a new one.
    timeout: _Option[float | None] = _option("timeout")
    retries: _Option[int] = _option("retries")
    priority: _Option[int] = _option("priority")
    retry_policy: _Option[RetryPolicy | None] = _option("retry_policy")
    condition: _Option[Callable[[Any], object] | None] = _option("condition")
    run_if: _Option[JoinRule | None] = _option("run_if")
    cancel_rest: _Option[bool] = _option("cancel_rest")
    limits: _Option[dict[str, int] | None] = _option("limits")
    over: _Option[str | None] = _option("over")
    max_items: _Option[int | None] = _option("max_items")
    view_keys: _Option[dict[str, str] | None] = _option("view_keys")

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        """What ``copy`` and ``pickle`` keep: the unit's fields, not the run it was part of.

        A copy is a new unit of no partitioner, PENDING until a run of one it is added to:
        the run record it would otherwise share holds locks and every unit's results.
        """
        fields = {slot: getattr(self, slot) for slot in QuantumUnit.__slots__}
        fields["_view"], fields["_index"] = None, -1
        return None, fields

    def __repr__(self) -> str:
        """Show the unit's name, dependencies and state."""
        return (
            f"QuantumUnit(id={self.id!r}, dependencies={self.dependencies!r}, state={self.state})"
        )

    def _record(self) -> Any:
        view = self._view
        return None if view is None or self._index < 0 else view.record

    @property
    def state(self) -> UnitState:
        """The unit's state in its last run (PENDING before any run)."""
        record = self._record()
        return UnitState.PENDING if record is None else record.state_of(self._index)

    @property
    def result(self) -> R | None:
        """The unit's result in its last run (its fallback value if it failed with one)."""
        record = self._record()
        return None if record is None else record.result_of(self._index)

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the unit's last run, with its ``__traceback__``."""
        record = self._record()
        return None if record is None else record.error_of(self._index)

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of :attr:`error` (from a worker process too), or None."""
        record = self._record()
        return None if record is None else record.traceback_of(self._index)

    @property
    def attempt(self) -> int:
        """How many attempts the unit's last run made."""
        record = self._record()
        return 0 if record is None else record.attempt_of(self._index)

    @property
    def start_time(self) -> float | None:
        """When the last attempt started, in seconds since the epoch."""
        record = self._record()
        return None if record is None else record.start_time_of(self._index)

    @property
    def end_time(self) -> float | None:
        """When the unit reached its terminal state, in seconds since the epoch."""
        record = self._record()
        return None if record is None else record.end_time_of(self._index)

    @property
    def item_states(self) -> dict[UnitState, int]:
        """For a map, how many of its items are in each state after its last run.

        Empty for other units, before a run, and for a map that created no items.
        """
        record = self._record()
        return {} if record is None or self.over is None else record.item_states_of(self._index)

    @property
    def execution_time(self) -> float | None:
        """Seconds the last attempt took; the original API's name for :meth:`get_execution_time`."""
        return self.get_execution_time()

    def get_execution_time(self) -> float | None:
        """Seconds the last attempt took, or None if it did not run to an end."""
        start, end = self.start_time, self.end_time
        if start is None or end is None:
            return None
        return end - start

    def _inlined(
        self, name: str, dependencies: list[str], view_keys: dict[str, str]
    ) -> QuantumUnit[T, R]:
        """A copy of this unit under another name and dependencies, with no run behind it.

        Every other field is kept (``metadata`` and ``limits`` are copied, so changing this
        unit later leaves the copy as it was): this is how a subgraph's units are inlined.
        """
        # Slot by slot: copy.copy's generic protocol costs ten times more per unit.
        clone = _new_object(type(self))
        clone.id = name
        clone.function = self.function
        clone._dependencies = dependencies
        clone._metadata = None if self._metadata is None else dict(self._metadata)
        limits = self._options.limits
        clone._options = self._options._replace(
            view_keys=view_keys, limits=None if limits is None else dict(limits)
        )
        clone._view = None
        clone._index = -1
        return clone

    def can_execute(self, completed_units: Iterable[str]) -> bool:
        """Whether every dependency is among ``completed_units``."""
        done = (
            completed_units
            if isinstance(completed_units, set | frozenset)
            else set(completed_units)
        )
        return all(dep in done for dep in self.dependencies)


def validate_unit(unit: QuantumUnit[Any, Any], *, over_maps: bool = False) -> None:
    """Check one unit's own fields; raise TypeError/ValueError naming the unit.

    ``over_maps``: some dependency is a map, whose items ``at_least(k)`` counts one by one
    (so ``k`` may exceed the number of dependencies).

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field has a value out of range.
    """
    _check_name(unit.id)
    _check_dependencies(unit.id, unit._dependencies)  # the slot: no list made for a root
    _check_fields(unit, over_maps=over_maps)
    if unit.view_keys is not None:
        _check_view_keys(unit)
    if unit.over is not None:
        _check_map(unit)


def default_options(  # noqa: PLR0917 - called per unit: positional is cheapest
    timeout: object,
    retries: object,
    priority: object,
    retry_policy: object,
    condition: object,
    cancel_rest: object,
) -> bool:
    """Whether these options hold the very default values (most units' options do).

    Type and identity tests, not ``==``: ``retries=False``, ``priority=0.0`` and
    ``cancel_rest=0`` equal defaults but are the user's values, which validation may refuse.
    """
    return (
        timeout is None
        and type(retries) is int
        and retries == 0
        and type(priority) is int
        and priority == 0
        and retry_policy is None
        and condition is None
        and cancel_rest is False
    )


def make_plain_unit(
    unit_id: str, fn: UnitFunction[R], dependencies: Any = None
) -> QuantumUnit[Any, R]:
    """A new unit with every option at its default: ``make_unit(unit_id, fn, dependencies)``.

    The name, the dependencies (deduplicated) and ``fn`` are checked in
    :func:`validate_unit`'s order, each with a fast path for the common exact types (an
    ``isinstance`` against an abstract base class costs more than the rest of a unit). The
    unit shares the default options record (:class:`UnitOptions`).

    Raises:
        TypeError: An argument has the wrong type (the message names the unit).
        ValueError: The name is empty.
    """
    if type(unit_id) is not str or not unit_id:
        _check_name(unit_id)
    deps: list[str] | tuple[()]
    if dependencies is None or (type(dependencies) is list and not dependencies):
        deps = _NO_DEPENDENCIES  # no list until one is asked for
    else:
        deps = _own_dependencies(unit_id, dependencies)
    if not callable(fn):
        raise TypeError(f"unit {unit_id!r}: fn must be callable, got {type(fn).__name__}")
    # Built slot by slot: the constructor's 16 parameters with their defaults would cost
    # more than the rest of this function.
    unit: QuantumUnit[Any, R] = _new_object(QuantumUnit)
    unit.id = unit_id
    unit.function = fn
    unit._dependencies = deps
    unit._metadata = None
    unit._options = _ADDED_DEFAULTS
    unit._view = None
    unit._index = -1
    return unit


def make_plain_units(
    units: Mapping[str, Any], make_other: Callable[[str, Any], QuantumUnit[Any, Any]]
) -> dict[str, QuantumUnit[Any, Any]]:
    """The units of an ``add_units`` mapping, by name, in its order.

    An entry ``(fn, dependencies)`` with a list of dependencies, a plain non-empty name and
    a callable ``fn`` (most entries of a large graph) becomes what :func:`make_plain_unit`
    makes of it, built here: a Python call per unit would cost a third of the build. Every
    other entry is ``make_other(name, entry)``, which builds it or raises its error. The
    entries are taken in order, so the first bad entry raises, as one by one.

    Raises:
        TypeError: From ``make_other``, or a dependency that is no name (naming the unit).
    """
    new_unit, unit_class, defaults, no_deps = _new_object, QuantumUnit, _ADDED_DEFAULTS, ()
    made: dict[str, QuantumUnit[Any, Any]] = {}
    for name, entry in units.items():
        if type(entry) is tuple and len(entry) == 2 and type(name) is str and name:
            fn, wanted = entry
            if type(wanted) is list and callable(fn):
                # make_plain_unit's checks and slot stores, inlined: the name, the list and
                # fn are known to be valid here; the names in the list are checked next.
                unit = new_unit(unit_class)
                unit.id = name
                unit.function = fn
                unit._dependencies = _own_dependencies(name, wanted) if wanted else no_deps
                unit._metadata = None
                unit._options = defaults
                unit._view = None
                unit._index = -1
                made[name] = unit
                continue
        made[name] = make_other(name, entry)
    return made


def _own_dependencies(unit_id: str, dependencies: Any) -> list[str]:
    """``dependencies``, checked, as the unit's own list, each name once (in first order).

    Raises:
        TypeError: ``dependencies`` is no list of names (the message names the unit).
    """
    if type(dependencies) is list:
        # str.join refuses any item that is not a str (a str subclass is one), in C: the
        # cheapest check of a long list there is (a Python loop costs three times more).
        # The joined string is thrown away; only a refusal goes on to the check that
        # names the unit.
        try:
            "".join(dependencies)
        except TypeError:
            _check_dependencies(unit_id, dependencies)
    else:
        _check_dependencies(unit_id, dependencies)
    # A set finds a repeat faster than a dict removes one, and repeats are rare.
    if len(dependencies) > 1 and len(set(dependencies)) != len(dependencies):
        return list(dict.fromkeys(dependencies))
    return list(dependencies)


def make_unit(  # noqa: PLR0917 - add_unit's arguments, passed on in its order
    unit_id: str,
    fn: UnitFunction[R],
    dependencies: Any = None,
    timeout: float | None = None,
    retries: int = 0,
    priority: int = 0,
    metadata: dict[str, Any] | None = None,
    retry_policy: RetryPolicy | None = None,
    condition: Callable[[Any], object] | None = None,
    run_if: JoinRule = ALL_SUCCESS,
    cancel_rest: bool = False,
    limits: dict[str, int] | None = None,
    *,
    over_maps: bool = False,
) -> QuantumUnit[Any, R]:
    """A new unit, checked as :func:`validate_unit` checks one, its dependencies deduplicated.

    This is what ``add_unit`` and ``add_units`` build: :func:`make_plain_unit`, then the
    options, checked only when one is not at its default.

    Raises:
        TypeError: An argument has the wrong type (the message names the unit).
        ValueError: An argument is out of range (the message names the unit).
    """
    unit: QuantumUnit[Any, R] = make_plain_unit(unit_id, fn, dependencies)
    unit._metadata = metadata
    if (
        default_options(timeout, retries, priority, retry_policy, condition, cancel_rest)
        and run_if is ALL_SUCCESS
    ):
        # Every option at its default (most units): the shared record, no more checks.
        if limits is not None:
            unit._options = _ADDED_DEFAULTS._replace(limits=limits)
        if metadata is not None:  # the only field left to check (the options are defaults)
            check_metadata(unit_id, metadata)
    else:
        unit._options = UnitOptions(
            timeout, retries, priority, retry_policy, condition, run_if, cancel_rest, limits
        )
        _check_fields(unit, over_maps=over_maps)
    return unit


def _check_name(name: object) -> None:
    # The first test is the fast path: a plain non-empty str.
    if (type(name) is not str or not name) and (not isinstance(name, str) or not name):
        msg = f"unit name must be a non-empty string, got {name!r}"
        raise TypeError(msg) if not isinstance(name, str) else ValueError(msg)


def _check_dependencies(name: str, deps: Any) -> None:
    if type(deps) is not list and (isinstance(deps, str) or not isinstance(deps, Sequence)):
        raise TypeError(f"unit {name!r}: dependencies must be a list of unit names, got {deps!r}")
    for dep in deps:
        if type(dep) is not str and not isinstance(dep, str):
            raise TypeError(f"unit {name!r}: dependency names must be strings, got {dep!r}")


def _check_fields(unit: QuantumUnit[Any, Any], *, over_maps: bool = False) -> None:
    """Check a unit's fields but its name and dependencies (known to be valid).

    ``over_maps``: some dependency is a map, whose items ``at_least(k)`` counts one by one
    (so ``k`` may exceed the number of dependencies).
    """
    name = unit.id
    if not callable(unit.function):
        raise TypeError(f"unit {name!r}: fn must be callable, got {type(unit.function).__name__}")
    timeout = unit.timeout
    if timeout is not None:
        _check_number(name, "timeout", timeout, positive=True)
        if math.isinf(timeout):
            raise ValueError(f"unit {name!r}: timeout must be finite; use None for no limit")
    retries = unit.retries
    # type() first: the fast path (bool, an int subclass, is refused by the isinstance test).
    if type(retries) is not int and (isinstance(retries, bool) or not isinstance(retries, int)):
        raise TypeError(f"unit {name!r}: retries must be an int, got {retries!r}")
    if retries < 0:
        raise ValueError(f"unit {name!r}: retries must be >= 0, got {retries}")
    priority = unit.priority
    if type(priority) is not int:  # an int is never NaN
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            raise TypeError(f"unit {name!r}: priority must be a number, got {priority!r}")
        if math.isnan(priority):
            raise ValueError(f"unit {name!r}: priority must not be NaN")
    if unit.retry_policy is not None and not isinstance(unit.retry_policy, RetryPolicy):
        raise TypeError(
            f"unit {name!r}: retry_policy must be a RetryPolicy or None, got {unit.retry_policy!r}"
        )
    metadata = unit._metadata  # None: none given (the property would make a dict)
    if metadata is not None:
        check_metadata(name, metadata)
    decided = unit.condition is not None or unit.run_if is not ALL_SUCCESS
    if decided or unit.cancel_rest is not False:
        _check_decisions(unit, over_maps=over_maps)


def check_metadata(name: str, metadata: object) -> None:
    """Check a unit's metadata: a mapping, its ``estimated_duration`` a number.

    Raises:
        TypeError: It is not a mapping, or ``estimated_duration`` is not a number.
        ValueError: ``estimated_duration`` is negative or not finite.
    """
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise TypeError(f"unit {name!r}: metadata must be a dict, got {metadata!r}")
    if metadata and "estimated_duration" in metadata:
        _check_number(name, "estimated_duration", metadata["estimated_duration"])


def _check_view_keys(unit: QuantumUnit[Any, Any]) -> None:
    """Check that ``view_keys`` maps dependencies to keys and no two share a key."""
    name, keys = unit.id, unit.view_keys
    if not isinstance(keys, dict) or not all(
        isinstance(dep, str) and isinstance(key, str) for dep, key in keys.items()
    ):
        raise TypeError(f"unit {name!r}: view_keys must be a dict of str -> str, got {keys!r}")
    seen = [keys.get(dep, dep) for dep in dict.fromkeys(unit.dependencies)]
    if len(set(seen)) != len(seen):
        raise ValueError(f"unit {name!r}: view_keys reads two dependencies under one key")


def _check_map(unit: QuantumUnit[Any, Any]) -> None:
    """Check ``over`` and ``max_items`` of a map."""
    name, over = unit.id, unit.over
    if not isinstance(over, str) or not over:
        raise TypeError(f"map {name!r}: over must be the name of a unit, got {over!r}")
    if over == name:
        raise ValueError(f"map {name!r}: a map cannot map over itself")
    bound = unit.max_items
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
        raise TypeError(f"map {name!r}: max_items must be an int or None, got {bound!r}")
    if bound is not None and bound < 0:
        raise ValueError(f"map {name!r}: max_items must be >= 0, got {bound}")
    if unit.cancel_rest:
        raise ValueError(f"map {name!r}: cancel_rest is not supported on a map")
    estimate = unit._metadata.get("estimated_items", 1) if unit._metadata else 1
    if isinstance(estimate, bool) or not isinstance(estimate, int):
        raise TypeError(
            f"map {name!r}: metadata['estimated_items'] must be an int, got {estimate!r}"
        )
    if estimate < 0:
        raise ValueError(f"map {name!r}: metadata['estimated_items'] must be >= 0, got {estimate}")


def materialise(
    map_name: str,
    over_name: str,
    result: Any,
    max_items: int | None = None,
    *,
    in_caller: bool = True,
) -> list[Any]:
    """The items of map ``map_name``: ``result`` (of unit ``over_name``) as a list, once.

    With ``max_items``, at most one element more than that is read: a huge or endless
    iterable fails the map at once instead of being read to its end. ``KeyboardInterrupt``
    and ``SystemExit`` propagate (they interrupt the run) only ``in_caller``: elsewhere (a
    Dask worker) they fail the map like any other exception.

    Raises:
        TypeError: ``result`` is not iterable, or iterating it raised (the message names the
            map, the unit, the result's type and the error, which is the ``__cause__``).
        ValueError: ``result`` has more than ``max_items`` elements.
    """
    kind = type(result).__name__
    if max_items is not None and isinstance(result, Sized):
        try:
            size = len(result)
        except BaseException as error:  # a broken __len__: count by iterating instead
            if in_caller and interrupts_run(error):
                raise
            size = -1
        if size > max_items:
            raise too_many_items(map_name, over_name, size, max_items)
    try:
        iterator = iter(result)
    except BaseException as error:
        if in_caller and interrupts_run(error):
            raise
        message = (
            f"map {map_name!r}: the result of {over_name!r} is not iterable ({kind}): "
            f"{error_text(error)}"
        )
        raise TypeError(message) from error
    try:
        items = list(iterator if max_items is None else itertools.islice(iterator, max_items + 1))
    except BaseException as error:  # user code: any exception fails the map, as a unit's would
        if in_caller and interrupts_run(error):
            raise
        message = (
            f"map {map_name!r}: reading the items of {over_name!r} ({kind}) raised "
            f"{type(error).__name__}: {error_text(error)}"
        )
        raise TypeError(message) from error
    if max_items is not None and len(items) > max_items:
        raise too_many_items(map_name, over_name, None, max_items)
    return items


def too_many_items(map_name: str, over_name: str, count: int | None, bound: int) -> ValueError:
    """The error of a map given more than ``max_items`` items (``count``: how many, if known)."""
    if count is None:
        return ValueError(f"map {map_name!r}: {over_name!r} gave more than max_items={bound} items")
    return ValueError(
        f"map {map_name!r}: {over_name!r} gave {count} items, more than max_items={bound}"
    )


def _check_decisions(unit: QuantumUnit[Any, Any], *, over_maps: bool) -> None:
    """Check ``condition``, ``run_if`` and ``cancel_rest``."""
    name = unit.id
    if unit.condition is not None and not callable(unit.condition):
        raise TypeError(f"unit {name!r}: when= must be callable, got {unit.condition!r}")
    rule = unit.run_if
    if rule is not None and not isinstance(rule, JoinRule):
        raise TypeError(f"unit {name!r}: run_if must be a JoinRule, got {rule!r}")
    if (
        rule is not None
        and rule.name == "at_least"
        and rule.k > len(unit.dependencies)
        and not over_maps
    ):
        raise ValueError(
            f"unit {name!r}: run_if=at_least({rule.k}) needs at least {rule.k} dependencies, "
            f"it has {len(unit.dependencies)}"
        )
    if not isinstance(unit.cancel_rest, bool):
        raise TypeError(f"unit {name!r}: cancel_rest must be a bool, got {unit.cancel_rest!r}")
    if unit.cancel_rest and (rule is None or rule.name != "at_least"):
        raise ValueError(f"unit {name!r}: cancel_rest=True needs run_if=at_least(k)")


def _check_number(
    unit_id: str, field: str, value: object, *, allow_none: bool = False, positive: bool = False
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"unit {unit_id!r}: {field} must be a number, got {value!r}")
    if math.isnan(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"unit {unit_id!r}: {field} must be {bound}, got {value!r}")


class Graph:
    """The units compiled to integer indices: what the scheduler and plans read.

    Attributes:
        names: Unit names by index, in insertion order.
        index: Unit index by name.
        deps: Each unit's dependencies, as indices.
        dependents: Each unit's direct dependents, as indices.
        order: A topological order of the indices.
        level: Each unit's level: 0 without dependencies, else 1 + its deepest dependency's.
        weight: Each unit's estimated duration: its ``metadata["estimated_duration"]``, else
            ``default_weight``.
        default_weight: What a unit without an estimate weighs: the mean of the estimates
            that are given, so one unknown unit does not swamp estimates in milliseconds
            (1 when no unit has one, which makes every weight 1: paths count units).
        finish: Longest weighted path from any root to the end of each unit.
        rank: Longest weighted path from the start of each unit to any sink.
    """

    __slots__ = (
        "_coroutine_flags",
        "_decisions",
        "_dependents",
        "_flag_functions",
        "_priority_order",
        "_rank",
        "_view_keys",
        "default_weight",
        "deps",
        "finish",
        "index",
        "level",
        "maps",
        "names",
        "order",
        "units",
        "weight",
    )

    def __init__(self, units: Sequence[QuantumUnit[Any, Any]]) -> None:
        """Compile ``units``; see :func:`compile_graph`."""
        with _gc_paused():
            self._compile(list(units))

    def _compile(self, units: list[QuantumUnit[Any, Any]]) -> None:
        self.units = units
        names = [unit.id for unit in units]
        self.names = names
        index = {name: i for i, name in enumerate(names)}
        if len(index) != len(names):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise DuplicateUnitError(name)
                seen.add(name)
        self.index = index
        n = len(names)
        deps: list[list[int]] = []
        append = deps.append
        position = index.__getitem__
        no_deps: list[int] = []  # shared by every root: rows are never mutated
        in_order = True
        maps: dict[int, int] = {}
        for i, unit in enumerate(units):
            wanted = unit._dependencies  # the slot: no list made for a unit without any
            over = unit._options.over  # the record: no property call per unit
            if over is not None:  # a map also depends on what it maps over
                if over not in index:
                    raise UnknownDependencyError(unit.id, over)
                maps[i] = index[over]
                wanted = [over, *wanted]
            if not wanted:
                append(no_deps)
                continue
            try:
                row = list(map(position, wanted))
            except KeyError:
                unknown = next(d for d in wanted if d not in index)
                raise UnknownDependencyError(unit.id, unknown) from None
            if len(row) > 1 and len(set(row)) != len(row):
                row = list(dict.fromkeys(row))
            if max(row) >= i:
                in_order = False
            append(row)
        self.deps = deps
        #: Each map's index -> the index of the unit (or map) it maps over.
        self.maps = maps
        if maps:
            _check_item_names(names, index, maps)
        # What a plan needs is computed here; what only scheduling needs (dependents,
        # ranks) waits for the first run, so planning a huge graph stays cheap.
        self._dependents: list[list[int]] | None = None
        self._rank: array[float] | None = None
        # Units added after their dependencies (the common case) are already in topological
        # order, which also proves there is no cycle; otherwise sort with Kahn's algorithm.
        self.order: Sequence[int] = (
            range(n) if in_order else _kahn_order(names, deps, self.dependents)
        )
        # Per-unit numbers live in typed arrays: 8 bytes each, no float object per unit.
        estimates = [_estimate(unit) for unit in units]
        given = [e for e in estimates if e is not None]
        default = math.fsum(given) / len(given) if given else 1.0
        self.default_weight = default
        self.weight = array("d", [default if e is None else e for e in estimates])
        self.level, self.finish = _levels_and_finish(self.order, deps, self.weight)
        self._priority_order: tuple[array[int], array[int]] | None = None
        self._decisions: tuple[dict[int, Callable[[Any], object]], dict[int, JoinRule]] | None = (
            None
        )
        self._coroutine_flags: list[bool] | None = None
        #: The functions ``_coroutine_flags`` was found for.
        self._flag_functions: list[Callable[..., Any]] = []
        self._view_keys: list[tuple[str, ...]] | Literal[False] | None = False

    def for_run(self) -> Graph:
        """A copy for one run of a graph with maps: its unit lists grow as maps expand.

        What describes the declared units (order, levels, ranks, the priority order) is
        shared; the lists a run appends items to (units, names, index, deps, dependents)
        are the copy's own. Rows are shared too: a run only appends rows, never edits one.
        """
        self.priority_order()  # computed on the declared units, shared by every run
        self.coroutine_flags()
        self.view_keys()  # likewise: items read their keys through their map (Run._row_of)
        copy = object.__new__(Graph)
        for slot in Graph.__slots__:
            setattr(copy, slot, getattr(self, slot))
        copy.units = list(self.units)
        copy.names = list(self.names)
        copy.index = dict(self.index)
        copy.deps = list(self.deps)
        copy._dependents = list(self.dependents)
        return copy

    def coroutine_flags(self, functions: list[Callable[..., Any]] | None = None) -> list[bool]:
        """Whether each unit's function is a coroutine function, found on first use.

        Asked once per distinct function (many units share one), not per unit per run:
        ``inspect.iscoroutinefunction`` is a good part of a no-op unit's cost. Never mutated:
        a run that adds units (maps) copies it.

        Args:
            functions: The units' functions as a run read them. When one is not the function
                the flags were found for (``unit.function`` replaced between runs), they are
                found again: comparing the lists costs a run about a nanosecond per unit.
        """
        flags = self._coroutine_flags
        if flags is not None and functions is not None:
            try:
                same = functions == self._flag_functions  # identical items never call __eq__
            except Exception:  # a callable whose __eq__ cannot answer: ask again
                same = False
            if not same:
                flags = None
        if flags is None:
            if functions is None:
                functions = [unit.function for unit in self.units]
            known: dict[int, bool] = {}
            flags = []
            for function in functions:
                flag = known.get(id(function))
                if flag is None:
                    flag = known[id(function)] = inspect.iscoroutinefunction(function)
                flags.append(flag)
            self._coroutine_flags = flags
            # The run's own list, kept as it is unless its maps will grow it.
            self._flag_functions = list(functions) if self.maps else functions
        return flags

    def decisions(self) -> tuple[dict[int, Callable[[Any], object]], dict[int, JoinRule]]:
        """``(conditions, rules)`` by unit index, found on first use (usually both empty).

        ``conditions`` holds each conditioned unit's predicate, ``rules`` each join rule
        other than the default.
        """
        if self._decisions is None:
            own = customised(self.units)
            conditions = {i: o.condition for i, o in own if o.condition is not None}
            rules = {
                i: o.run_if for i, o in own if o.run_if is not None and o.run_if is not ALL_SUCCESS
            }
            self._decisions = (conditions, rules)
        return self._decisions

    def view_keys(self) -> list[tuple[str, ...]] | None:
        """The key each unit reads each dependency by, aligned with :attr:`deps`.

        None when every unit reads its dependencies by their names (a graph without
        subgraphs), so that runs of such graphs build contexts from :attr:`names` alone.
        Found on first use.
        """
        keys = self._view_keys
        if keys is False:
            keys = self._view_keys = _view_keys(self.units, self.names, self.deps)
        return keys

    @property
    def dependents(self) -> list[list[int]]:
        """Each unit's direct dependents, as indices (built on first use)."""
        if self._dependents is None:
            with _gc_paused():
                # A row is made by its first dependent, as long as it needs to be (most rows
                # of a wide graph hold one index): [] and append would reserve four.
                rows: list[list[int] | None] = [None] * len(self.deps)
                for i, row in enumerate(self.deps):
                    for j in row:
                        known = rows[j]
                        if known is None:
                            rows[j] = [i]
                        else:
                            known.append(i)
                # Sinks get a list each: a run may append to any row (maps).
                self._dependents = [[] if row is None else row for row in rows]
        return self._dependents

    @property
    def rank(self) -> array[float]:
        """Each unit's longest weighted path to any sink, itself included (first use)."""
        if self._rank is None:
            self._rank = _ranks(self.order, self.dependents, self.weight)
        return self._rank

    def __len__(self) -> int:
        """The number of units."""
        return len(self.names)

    def priority_order(self) -> tuple[array[int], array[int]]:
        """Rank every unit once for the ready queue: ``(by_position, position_of)``.

        Ready units run by higher priority, then longer remaining critical path, then
        insertion order. That is one total order, computed here once, so the scheduler's ready
        queue holds plain integers. Two stable sorts give the lexicographic key without
        building a tuple per unit.
        """
        if self._priority_order is None:
            n = len(self.names)
            order = sorted(range(n), key=self.rank.__getitem__, reverse=True)
            own = [(i, o.priority) for i, o in customised(self.units) if o.priority]
            if own:
                priorities = [0] * n
                for i, priority in own:
                    priorities[i] = priority
                order.sort(key=priorities.__getitem__, reverse=True)
            by_position = array("l", order)
            del order
            position_of = array("l", bytes(by_position.itemsize * n))
            for position, i in enumerate(by_position):
                position_of[i] = position
            self._priority_order = (by_position, position_of)
        return self._priority_order

    def critical_path(self) -> list[int]:
        """The longest weighted chain of dependencies, as indices from root to sink."""
        if not self.names:
            return []
        finish = self.finish
        node = max(range(len(finish)), key=finish.__getitem__)
        path = [node]
        while self.deps[node]:
            node = max(self.deps[node], key=finish.__getitem__)
            path.append(node)
        path.reverse()
        return path

    def levels(self) -> list[list[int]]:
        """Units grouped by level: each level's units depend only on earlier levels."""
        if not self.names:
            return []
        grouped: list[list[int]] = [[] for _ in range(max(self.level) + 1)]
        for i, lvl in enumerate(self.level):
            grouped[lvl].append(i)
        return grouped


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building per-unit containers.

    Compiling creates a few container objects per unit and frees none, so the collector
    would sweep the growing heap again and again for nothing (a third of the time at a
    million units). It is restored as it was.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _check_item_names(names: list[str], index: dict[str, int], maps: dict[int, int]) -> None:
    """Refuse a unit named like an item of a map (``tool[0]``): items take those names."""
    for name in names:
        if name.endswith("]") and "[" in name:
            owner, _, rest = name.rpartition("[")
            if rest[:-1].isdigit() and index.get(owner, -1) in maps:
                raise DuplicateUnitError(name, owner)


def compile_graph(units: Iterable[QuantumUnit[Any, Any]]) -> Graph:
    """Validate ``units`` as a graph and compile it for scheduling.

    Raises:
        DuplicateUnitError: Two units share one name.
        UnknownDependencyError: A unit depends on a name that is no unit.
        CircularDependencyError: The dependencies form a cycle; ``.cycle`` is its path.
    """
    return Graph(list(units))


def _view_keys(
    units: list[QuantumUnit[Any, Any]], names: list[str], deps: list[list[int]]
) -> list[tuple[str, ...]] | None:
    if all(o.view_keys is None for _, o in customised(units)):
        return None
    keys: list[tuple[str, ...]] = []
    for unit, row in zip(units, deps, strict=True):
        key_of = unit.view_keys
        if key_of is None:
            keys.append(tuple(names[j] for j in row))
        else:
            keys.append(tuple(key_of.get(names[j], names[j]) for j in row))
    return keys


def _estimate(unit: QuantumUnit[Any, Any]) -> float | None:
    metadata = unit._metadata  # not the property, which would make a dict for every unit
    estimate = metadata.get("estimated_duration") if metadata else None
    return None if estimate is None else float(estimate)


def _kahn_order(names: list[str], deps: list[list[int]], dependents: list[list[int]]) -> list[int]:
    waiting = [len(row) for row in deps]
    order = [i for i, count in enumerate(waiting) if count == 0]
    # order grows while we walk it: a queue without a deque.
    for i in order:
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                order.append(j)
    if len(order) != len(names):
        raise CircularDependencyError(_find_cycle(names, deps, waiting))
    return order


def _find_cycle(names: list[str], deps: list[list[int]], waiting: list[int]) -> list[str]:
    """Walk dependencies among the units Kahn could not order until one repeats.

    Every such unit has a dependency that is also unordered, so the walk must close a cycle.
    """
    start = next(i for i, count in enumerate(waiting) if count > 0)
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(j for j in deps[node] if waiting[j] > 0)
    cycle = [*path[seen[node] :], node]
    # The walk followed "depends on" edges; graphlib lists a cycle the other way round.
    return [names[i] for i in reversed(cycle)]


def _levels_and_finish(
    order: Sequence[int], deps: list[list[int]], weight: array[float]
) -> tuple[list[int], array[float]]:
    n = len(deps)
    level = [0] * n
    finish = array("d", bytes(8 * n))
    level_of = level.__getitem__
    finish_of = finish.__getitem__
    for i in order:
        row = deps[i]
        if row:
            level[i] = max(map(level_of, row)) + 1
            finish[i] = max(map(finish_of, row)) + weight[i]
        else:
            finish[i] = weight[i]
    return level, finish


def _ranks(order: Sequence[int], dependents: list[list[int]], weight: array[float]) -> array[float]:
    rank = array("d", bytes(8 * len(dependents)))
    rank_of = rank.__getitem__
    for i in reversed(order):
        row = dependents[i]
        rank[i] = weight[i] + (max(map(rank_of, row)) if row else 0.0)
    return rank
