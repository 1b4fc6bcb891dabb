"""Layer 4: :class:`CachingQuantumPartitioner`, results served again while inputs are unchanged.

Key policy (docs/caching.md has the long form). A cacheable unit's key is the BLAKE2b digest
of:

* its name;
* the fingerprint of its function, taken when the unit is added (code, constants, default
  arguments, closed-over values, globals it reads; see :mod:`._fingerprint`);
* ``metadata["cache_version"]``, if given;
* the fingerprints of the context values it depends on: every key of the caller's context,
  or only ``metadata["cache_keys"]`` (a key that is absent counts as absent);
* for each dependency, by name: the dependency's own key if it is cacheable and completed
  (so a change upstream reaches everything downstream of it, without fingerprinting
  results), else the fingerprint of the result it handed over (a non-cacheable unit, or a
  fallback value).

A map's items (``tool[i]``) are keyed on the map's name, function, context part and
version, the keys of the map's declared ``dependencies`` (as above), and their own item: the
fingerprint of the item (a map over a unit), or the key of the item they follow (a map over
a map; its result's fingerprint if it has no key). Neither the index nor the whole result
mapped over is part of it, so appending one element to that result recomputes only the new
element's item and its item-wise downstream. A map never runs, so it is never stored; its
key, for its dependents, is its items' keys in item order.

State per partitioner: the store, the function fingerprints by unit name, the counters, and
what the keys of its compiled graph need that no run changes (:class:`_GraphKeys`: names as
keys spell them, dependencies by name, each unit's last fixed part). State per run
(:class:`_RunCache`): each unit's fixed key part, computed before any unit runs (so a
context value that cannot be fingerprinted is reported then), and each unit's key once its
dependencies are known. The engine calls ``lookup`` before a unit runs and ``remember``
after it completed, always in the caller's process (threads included, so both are
thread-safe: a run counts its hits, misses and writes in lists, whose ``append`` is atomic,
and adds them to the partitioner's counters when it ends).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import pickle
import threading
from dataclasses import dataclass
from types import FunctionType
from typing import TYPE_CHECKING, Any, Final, Self, cast

from .._graph import (
    _NO_METADATA,
    ExecutionMode,
    ExecutionModeArg,
    QuantumUnit,
    R,
    T,
    UnitState,
    metadata_of,
)
from .._partitioner import QuantumPartitioner
from ._fingerprint import (
    _EMPTY_CELL,
    _PLAIN_CELLS,
    NO_TEMPLATE,
    ClosureSnapshot,
    ClosureTemplate,
    Fingerprinted,
    ModuleMemo,
    UnfingerprintableError,
    closure_fingerprint_as_added,
    closure_snapshot,
    digest,
    fingerprint,
    snapshot_fingerprint,
)
from ._stores import CacheEntry, CacheStore, MemoryStore, SQLiteStore

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Mapping, Sequence
    from types import TracebackType

    from .._graph import Graph
    from .._run import Run

__all__ = ["CacheStats", "CachingQuantumPartitioner"]

LOGGER = logging.getLogger("quantum_partitioner")

#: Pickle protocol of stored results (part of the store's format since version 1).
PICKLE_PROTOCOL: Final = 5
_MISS: Final[tuple[bool, Any]] = (False, None)
_UNKEYABLE: Final = b""
_COMPLETED: Final = UnitState.COMPLETED
_KEY_FORMAT: Final = b"quantum-partitioner cache key v1"
_KEY_HEAD: Final = _KEY_FORMAT + b"\0"
_NO_VERSION: Final = b"0:"  # the version part of a unit without metadata["cache_version"]
_NO_NAMES: Final[frozenset[str]] = frozenset()
# The metadata of most cacheable units: a dict equal to it says "cacheable" and nothing else.
_CACHEABLE: Final = {"cacheable": True}
_NO_RECORD: Final[Fingerprinted] = (None, _NO_NAMES, b"")
_NAMESPACE_OF: Final = operator.attrgetter("__globals__")
_NAME_OF: Final = operator.attrgetter("id")

# A unit's function, the names left out of its fingerprint and that fingerprint (bytes);
# or the snapshot of a closure, which starts with the same two and has its template third,
# to take the fingerprint from when a run needs it (see _admit).
_Taken = Fingerprinted | ClosureSnapshot


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of a :class:`CachingQuantumPartitioner`, since it was created.

    Attributes:
        hits: Units served from the store.
        misses: Cacheable units that had to run.
        writes: Results handed to the store (one larger than the size limit is dropped).
        skipped: Cacheable units that ran without the cache: a dependency's result could not
            be fingerprinted, or their result could not be pickled (the log says which).
        corrupt: Damaged entries found, dropped and recomputed.
        errors: Store operations that failed (the log says why): a failed lookup counts as
            a miss, a failed write (at ``put``, or later when a store commits in batches)
            leaves the result to be recomputed.
        entries: Entries in the store now.
        size_bytes: Bytes of payload in the store now.

    .. versionadded:: 0.1
    """

    hits: int
    misses: int
    writes: int
    skipped: int
    corrupt: int
    errors: int
    entries: int
    size_bytes: int

    @property
    def hit_rate(self) -> float:
        """The share of lookups served: hits / (hits + misses), 0.0 before any."""
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


# The payload of a result of None (a unit run for what it does, not what it returns): written
# and read without the pickle module, which builds a pickler or an unpickler even for these
# 4 bytes (a tenth of what caching a no-op unit costs). The same bytes pickle.dumps makes:
# every store and version reads them as any payload.
_NONE_PAYLOAD: Final = pickle.dumps(None, protocol=PICKLE_PROTOCOL)


def dumps(value: Any) -> bytes:
    """Serialise a result: pickle, or cloudpickle for what pickle refuses (lambdas)."""
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        import cloudpickle  # noqa: PLC0415 - imported only for results pickle refuses

        return bytes(cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL))


def _check_names(unit_id: str, field: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise TypeError(
            f"unit {unit_id!r}: metadata[{field!r}] must be a list of names, got {value!r}"
        )
    return tuple(value)


def _ignored(unit: QuantumUnit[Any, Any]) -> frozenset[str]:
    """The names ``metadata["cache_ignore"]`` leaves out of the unit's function fingerprint."""
    listed = unit.metadata.get("cache_ignore")
    if listed is None:
        return _NO_NAMES
    return frozenset(_check_names(unit.id, "cache_ignore", listed) or ())


class CachingQuantumPartitioner(QuantumPartitioner[T, R]):
    """A :class:`QuantumPartitioner` that serves results of units whose inputs did not change.

    Units opt in with ``metadata={"cacheable": True}``. ``metadata["cache_keys"]`` lists the
    context keys the result depends on (absent: the whole context; ``[]``: none);
    ``metadata["cache_ignore"]`` names closure variables or globals of the function that do
    not affect the result (a counter, a lock, a client); ``metadata["cache_version"]`` is
    any plain value to bump by hand. Keys are content fingerprints (see docs/caching.md):
    editing a unit's function, a context value it reads or anything upstream of it
    recomputes it and everything downstream, and nothing else. A map's items are keyed on
    their own item, not their index nor the whole result mapped over: one element added to
    that result recomputes its item (and its item-wise downstream) only.

    Args:
        max_workers: As for :class:`QuantumPartitioner`.
        default_execution_mode: As for :class:`QuantumPartitioner`.
        cache_path: A SQLite file for results that outlive the process and are shared
            between processes; None keeps them in memory.
        cache_size_limit: Bytes of stored results to keep at most; least recently used
            entries are evicted beyond it. None: no limit.
        cache_store: Use this store instead (shared between partitioners, or your own
            :class:`CacheStore`); excludes ``cache_path`` and ``cache_size_limit``.
        **options: Passed on to :class:`QuantumPartitioner` (``retry_policy``,
            ``instruments``, ...).

    Attributes:
        cache: The store (``cache.clear()`` and ``len(cache)`` work as on a dict).
        cache_hits: Units served from the store, over every run (a run adds its own hits,
            misses and writes when it ends).
        cache_misses: Cacheable units that had to run, over every run.

    Raises:
        ValueError: ``cache_path`` is not a cache store of this format version, or is a
            symbolic link.
        OSError: ``cache_path`` is a directory or cannot be created, read or written (the
            message names it); TimeoutError (an OSError) if another process held its
            write lock for longer than 30 s.

    Warns:
        InsecureCacheWarning: ``cache_path`` exists and its group or others may write it.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        max_workers: int | None = None,
        default_execution_mode: ExecutionModeArg = ExecutionMode.THREAD,
        *,
        cache_path: str | os.PathLike[str] | None = None,
        cache_size_limit: int | None = None,
        cache_store: CacheStore | None = None,
        **options: Any,
    ) -> None:
        """Create an empty partitioner and open (or create) its store."""
        super().__init__(max_workers, default_execution_mode, **options)
        if cache_store is not None:
            if cache_path is not None or cache_size_limit is not None:
                raise ValueError("pass either cache_store or cache_path/cache_size_limit, not both")
            if not isinstance(cache_store, CacheStore):
                raise TypeError(f"cache_store must be a CacheStore, got {cache_store!r}")
            self.cache: CacheStore = cache_store
        elif cache_path is not None:
            self.cache = SQLiteStore(cache_path, cache_size_limit)
        else:
            self.cache = MemoryStore(cache_size_limit)
        self.cache_hits = 0
        self.cache_misses = 0
        self._cache_writes = 0
        self._cache_skipped = 0
        self._cache_errors = 0
        self._counts = threading.Lock()
        # unit name -> (function, ignored names, fingerprint) or a snapshot, by add_unit.
        self._fingerprints: dict[str, _Taken] = {}
        # What the units added since the last run share: functions, code, module attributes.
        self._module_memo = ModuleMemo()
        # The template of the closures _admit serves, those it served (name, function and
        # cell value, flat) until _settle makes their records, and the function of the unit
        # added before with its record (see _admit).
        self._recent: ClosureTemplate = NO_TEMPLATE
        self._pending: list[Any] = []
        self._last_function: object = None
        self._last_record: Fingerprinted = _NO_RECORD
        # What the keys of the compiled graph need that no run changes (its last cached run).
        self._graph_keys: _GraphKeys | None = None

    def __repr__(self) -> str:
        """Name the mode, count the units and show the store."""
        return (
            f"CachingQuantumPartitioner(units={len(self.units)}, max_workers={self.max_workers}, "
            f"default_execution_mode={self.default_execution_mode}, cache={self.cache!r})"
        )

    # -- building the graph ----------------------------------------------------------------

    def _admit(self, unit: QuantumUnit[Any, Any]) -> None:
        """Fingerprint a cacheable unit's function as it is added.

        The fingerprint is of the function as it is now, so a closed-over object that
        changes while runs go on (a list the unit appends to) does not invalidate the unit's
        entries. Units of one build that run one function share its fingerprint: a unit
        after the first costs a lookup by the function's identity (see ModuleMemo). A
        closure of a code object seen before in this build, whose closure values are all
        plain (numbers, strings, bytes, None), keeps those values and its digest is taken
        when a run first needs it (see closure_snapshot): the same bytes, since nothing in
        them can change.

        The two commonest builds are served here, in this one frame: the unit before ran
        the same function (its record is shared), or it was a closure of one free variable
        of the same code object, namespace and module as this one (``make_unit(k)`` in a
        loop), whose name, function and cell value are appended to ``_pending`` (three
        appends: neither a record nor a dict entry per unit) until :meth:`_settle` makes
        their records, in C loops, when they are first read. Everything else takes
        :meth:`_admit_other`.

        Raises:
            TypeError: The unit is cacheable but its function depends on a value that cannot
                be fingerprinted (the message names the unit and the value), or its cache
                metadata has the wrong type. The unit is not added.
        """
        metadata = unit._metadata  # read directly: a unit without metadata has None here
        if metadata != _CACHEABLE:  # anything but the commonest metadata: check it all
            if not metadata or not metadata.get("cacheable"):
                if self._pending and unit.id in self.units:  # _keep's test, inlined
                    self._settle()
                self._fingerprints.pop(unit.id, None)  # it may replace a cacheable unit
                return
            if "cache_ignore" in metadata:
                self._admit_other(unit, _ignored(unit))
                return
        function = unit.function
        # The template's code is the function's own by identity (the template keeps it, so
        # ``is`` cannot match another's): closure_snapshot's test, without its frame. Its
        # namespace is checked by _settle, in C loops: __globals__ cannot be assigned.
        # Its module, defaults (which make a closure's encoding longer) and cell value are
        # read here: each can be assigned after the function is added, so only now says them.
        recent = self._recent
        if (
            type(function) is FunctionType
            and function.__code__ is recent.code
            and function.__module__ is recent.module
            and function.__defaults__ is None
            and function.__kwdefaults__ is None
        ):
            try:
                value = function.__closure__[0].cell_contents  # type: ignore[index]  # one cell
            except ValueError:  # a cell not assigned yet
                value = _EMPTY_CELL
            if type(value) is int or type(value) in _PLAIN_CELLS:  # (an int: the commonest)
                pending = self._pending
                pending.append(unit.id)
                pending.append(function)
                pending.append(value)
                return
        elif function is self._last_function:
            if self._pending and unit.id in self.units:  # _keep's test, inlined
                self._settle()
            self._fingerprints[unit.id] = self._last_record
            return
        self._admit_other(unit, _NO_NAMES)

    def _admit_other(self, unit: QuantumUnit[Any, Any], ignore: frozenset[str]) -> None:
        """:meth:`_admit` for a unit neither of its two common cases serves."""
        function = unit.function
        if type(function) is FunctionType:
            memo = self._module_memo
            # ModuleMemo.function's lookup, inlined.
            known: _Taken | None = memo.functions.get((function, ignore) if ignore else function)
            if known is None:
                known = closure_snapshot(function, ignore, memo)
                if known is not None and not ignore and known[2].one_cell:
                    # The first closure of a new template: _admit serves the next ones.
                    self._settle()
                    self._recent = known[2]
                    self._pending += (unit.id, function, known[3])
                    return
            elif not ignore:
                self._last_function, self._last_record = function, known
            if known is not None:
                self._keep(unit.id, known)
                return
        known = self._take_fingerprint(unit, ignore)
        if type(function) is FunctionType and not ignore:
            self._last_function, self._last_record = function, known

    def _keep(self, name: str, record: _Taken | None) -> None:
        """Keep ``record`` as unit ``name``'s (None: drop the unit's)."""
        # Pending records are the latest only until the unit is added again (replaced).
        if self._pending and name in self.units:
            self._settle()
        if record is None:
            self._fingerprints.pop(name, None)
        else:
            self._fingerprints[name] = record

    def _settle(self) -> None:
        """Make the records of the closures ``_admit`` left in ``_pending`` (all of _recent).

        A closure whose namespace is not the template's (the same code run in another
        namespace) has its fingerprint taken as the long way would have taken it when it was
        added: of its code, module and cell value then (its module was the template's).
        """
        pending = self._pending
        if not pending:
            return
        names, functions, values = pending[0::3], pending[1::3], pending[2::3]
        pending.clear()
        template, same = self._recent, itertools.repeat
        records = zip(functions, same(_NO_NAMES), same(template), values, strict=False)
        self._fingerprints.update(zip(names, records, strict=False))
        if all(map(operator.is_, map(_NAMESPACE_OF, functions), same(template.namespace))):
            return
        seen: set[str] = set()  # a name added twice: its last closure made its record
        for name, function, value in reversed(list(zip(names, functions, values, strict=True))):
            if name in seen:
                continue
            seen.add(name)
            if function.__globals__ is not template.namespace:
                try:
                    taken = closure_fingerprint_as_added(
                        function, template, value, self._module_memo
                    )
                except UnfingerprintableError:
                    del self._fingerprints[name]  # the run takes it anew, and says why it cannot
                else:
                    self._fingerprints[name] = (function, _NO_NAMES, taken)

    def _admit_all(self, units: Iterable[QuantumUnit[T, R]]) -> None:
        """:meth:`_admit` units that join together (add_units, add_subgraph); none if one fails.

        When one is refused, those admitted before it leave no record behind (a record kept
        unread would later replace that of a unit of its name added again), and the units
        they were to replace keep theirs.
        """
        units = list(units)
        replaced: dict[str, _Taken | None] = {}
        if self.units and not self.units.keys().isdisjoint(map(_NAME_OF, units)):
            self._settle()  # the records of the units replaced, made now to be kept
            get = self._fingerprints.get
            replaced = {unit.id: get(unit.id) for unit in units if unit.id in self.units}
        try:
            for unit in units:
                self._admit(unit)
        except BaseException:
            self._settle()
            for unit in units:
                if unit.id in replaced:
                    self._keep(unit.id, replaced[unit.id])
                else:
                    self._fingerprints.pop(unit.id, None)
            raise

    def remove_unit(self, name: str) -> QuantumUnit[T, R]:
        """Remove the unit ``name`` and return it (its stored results stay; see clear_cache).

        Raises:
            KeyError: There is no such unit.
        """
        unit = super().remove_unit(name)
        self._settle()
        self._fingerprints.pop(name, None)
        return unit

    def _function_fingerprint(self, unit: QuantumUnit[Any, Any]) -> bytes:
        """The unit's function fingerprint: the one taken by add_unit, unless it changed."""
        if self._pending:
            self._settle()
        known = self._fingerprints.get(unit.id)
        if known is not None and known[0] is unit.function and known[1] == _ignored(unit):
            value = known[2]
            if type(value) is bytes:
                return value
            value = snapshot_fingerprint(known)  # a closure's, deferred by _admit
            self._fingerprints[unit.id] = (known[0], known[1], value)
            return value
        return self._take_fingerprint(unit, _ignored(unit))[2]

    def _take_fingerprint(
        self, unit: QuantumUnit[Any, Any], ignore: frozenset[str]
    ) -> Fingerprinted:
        """Fingerprint the unit's function now (shared with this build's other units)."""
        try:
            known = self._module_memo.function(unit.function, ignore)
        except UnfingerprintableError as error:
            raise TypeError(
                f"unit {unit.id!r} is cacheable but its function cannot be fingerprinted: "
                f"{error}. Make that value plain data, or list the variable in "
                "metadata['cache_ignore'] if the result does not depend on it."
            ) from None
        self._keep(unit.id, known)
        return known

    # -- the engine's hooks ----------------------------------------------------------------

    def _cache_for(self, run: Run) -> _RunCache | None:
        """A run's cache, or None when no unit is cacheable (then runs pay nothing)."""
        units = run.graph.units
        if not any(metadata_of(unit).get("cacheable") for unit in units):
            self._forget_build()  # a run all the same: units added after it read modules afresh
            return None
        graph = self._compiled()  # the declared graph (a run with maps grows a copy of it)
        known = self._graph_keys
        if known is None or known.graph is not graph:
            known = self._graph_keys = _GraphKeys(graph)
        self._settle()
        try:
            return _RunCache(self, run, known)
        finally:
            self._forget_build()  # units added after this run read modules afresh

    def _forget_build(self) -> None:
        """Forget what this build's units share (after their records are made)."""
        self._settle()
        self._module_memo.clear()
        self._recent = NO_TEMPLATE
        self._last_function, self._last_record = None, _NO_RECORD

    def _finish(self, run: Run) -> None:
        cache = run.cache
        if isinstance(cache, _RunCache):
            cache.add_counts()
        super()._finish(run)
        try:
            self.cache.flush()
        except Exception as error:
            LOGGER.warning("cache store: could not write queued results or read times: %s", error)

    # -- management ------------------------------------------------------------------------

    def clear_cache(self, unit: str | None = None) -> int:
        """Delete every stored result, or only unit ``unit``'s; return how many.

        The counters stay as they are.
        """
        return self.cache.clear(unit)

    def cache_entries(self, unit: str | None = None) -> list[CacheEntry]:
        """The stored results (or unit ``unit``'s), most recently used first."""
        return self.cache.entries(unit)

    def cache_stats(self) -> CacheStats:
        """The counters and the store's size, as a frozen record."""
        return CacheStats(
            hits=self.cache_hits,
            misses=self.cache_misses,
            writes=self._cache_writes,
            skipped=self._cache_skipped,
            corrupt=self.cache.corrupt,
            errors=self._cache_errors + self.cache.write_errors,
            entries=len(self.cache),
            size_bytes=self.cache.total_size(),
        )

    def close(self) -> None:
        """Close the store (a SQLite file's connection); the partitioner is done with."""
        self.cache.close()

    def __enter__(self) -> Self:
        """Use the partitioner in a ``with`` block that closes its store."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    # -- counters (any thread) -------------------------------------------------------------

    def _count(self, hits: int, misses: int, writes: int) -> None:
        with self._counts:
            self.cache_hits += hits
            self.cache_misses += misses
            self._cache_writes += writes

    def _count_trouble(self, *, skipped: bool = False, error: bool = False) -> None:
        with self._counts:
            if skipped:
                self._cache_skipped += 1
            if error:
                self._cache_errors += 1


def _label(name: str) -> bytes:
    """A name as keys spell it: its length in bytes, a colon, its UTF-8 bytes."""
    encoded = name.encode("utf-8", "surrogatepass")
    return b"%d:%s" % (len(encoded), encoded)


def _labels(names: Sequence[str]) -> list[bytes]:
    """:func:`_label` of each name (in C loops: a graph's first cached run spells them all)."""
    encoded = [name.encode("utf-8", "surrogatepass") for name in names]
    return list(map(b"%d:%s".__mod__, zip(map(len, encoded), encoded, strict=True)))


class _GraphKeys:
    """What the keys of one compiled graph need that no run changes.

    The partitioner keeps it between runs, until the graph changes (a unit added or removed
    compiles a new one). ``statics`` holds, per unit, its last fixed part (None: it was not
    cacheable), and ``tails`` what followed its label in it (its function fingerprint,
    context part and version part): a run whose tail is the same (a warm run) takes the part
    from there instead of hashing it again, and when every unit's is, the expected keys too.
    Units that share a function, a context and a version share one tail object. (Lists, not
    a tuple per unit: ten thousand objects made by a cold run and kept would set the garbage
    collector going a dozen times.)
    """

    __slots__ = ("dep_order", "expected", "graph", "labels", "statics", "tails", "wanted")

    def __init__(self, graph: Graph) -> None:
        """Spell the graph's names; the rest is filled by the runs."""
        self.graph = graph
        n = len(graph)
        self.labels = _labels(graph.names)
        self.dep_order: list[Sequence[int] | None] = [None] * n
        self.statics: list[bytes | None] = [None] * n
        self.tails: list[bytes] = [b""] * n
        # The last run's expected keys (see _RunCache._expected_keys), and those not None.
        self.expected: list[bytes | None] | None = None
        self.wanted: list[bytes] = []


def _version_part(unit: QuantumUnit[Any, Any], metadata: Mapping[str, Any]) -> bytes:
    """The part of a unit's key ``metadata["cache_version"]`` makes.

    Raises:
        TypeError: The version cannot be fingerprinted.
    """
    version = metadata.get("cache_version")
    if version is None:
        return _NO_VERSION
    try:
        part = fingerprint(version)
    except UnfingerprintableError as error:
        raise TypeError(
            f"unit {unit.id!r}: metadata['cache_version'] cannot be fingerprinted: {error}"
        ) from None
    return b"%d:%s" % (len(part), part)


def _combine(parts: list[bytes]) -> bytes:
    """A key from a unit's fixed part, then each dependency's by name (its label, its part).

    The pieces are joined once, not each label to its part first: a unit with many
    dependencies (a sink over ten thousand) would make two objects per dependency.
    """
    return digest(b"".join(parts))


class _UnkeyableInputError(Exception):
    """An input has no key and its result cannot be fingerprinted (the key cannot be made)."""

    def __init__(self, index: int, error: UnfingerprintableError) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class _RunCache:
    """One run's keys; the engine's ``UnitCache`` (see the module docstring)."""

    __slots__ = (
        "_ahead",
        "_context",
        "_context_digests",
        "_dep_order",
        "_expected",
        "_hits",
        "_item_bases",
        "_item_of",
        "_keys",
        "_labels",
        "_misses",
        "_names",
        "_narrowed",
        "_owner",
        "_static",
        "_store",
        "_value_digests",
        "_warned",
        "_whole_context",
        "_writes",
    )

    def __init__(
        self, owner: CachingQuantumPartitioner[Any, Any], run: Run, known: _GraphKeys
    ) -> None:
        """Compute each cacheable unit's fixed key part; raise if one cannot be made.

        Raises:
            TypeError: A context value a cacheable unit depends on cannot be fingerprinted,
                or a cacheable unit's function or metadata is unusable (names the unit).
        """
        self._owner = owner
        self._store = owner.cache
        self._context: Mapping[str, Any] = run.context
        self._context_digests: dict[Any, bytes | UnfingerprintableError] = {}
        self._whole_context: bytes | None = None
        self._narrowed: dict[tuple[Any, ...], bytes] = {}
        self._value_digests: dict[int, bytes] = {}
        # The units served, missed and written, counted without a lock (see add_counts).
        self._hits: list[int] = []
        self._misses: list[int] = []
        self._writes: list[int] = []
        graph = run.graph
        self._names = graph.names
        self._labels = known.labels
        self._dep_order = known.dep_order
        n = len(graph)
        statics, tails, labels = known.statics, known.tails, known.labels
        deps, fingerprints = graph.deps, owner._fingerprints
        # Units often share one metadata dict (added in a loop): what it says is read once.
        last: Mapping[str, Any] | None = None
        cacheable = False
        context = version_part = b""
        # Units of one build that run one function share its fingerprint record (see
        # ModuleMemo.function): a unit whose record is the one the unit before it was found
        # valid with, and whose metadata is that unit's too (the same ignored names, context
        # and version), has that unit's tail. An identity test, not the checks of
        # _function_fingerprint, per unit of a loop-built graph.
        checked: object = None
        tail = b""
        reused = True  # every fixed part is the last run's (so are the expected keys)
        for i, unit in enumerate(graph.units):
            metadata = unit._metadata or _NO_METADATA  # metadata_of, inlined: once per unit
            if metadata is not last:
                last = metadata
                checked = None
                cacheable = bool(metadata.get("cacheable"))
                if cacheable:
                    context = self._context_part(unit, metadata)
                    version_part = _version_part(unit, metadata)
            if not cacheable:
                if statics[i] is not None:  # cacheable last run
                    statics[i] = None
                    tails[i] = b""  # (a unit has a tail exactly when it has a fixed part)
                    reused = False
                continue
            record = fingerprints.get(unit.id)
            if record is not checked or record is None or record[0] is not unit.function:
                tail = owner._function_fingerprint(unit) + context + version_part
                checked = fingerprints.get(unit.id)  # the record it was found valid with
            if tails[i] != tail:  # (identical objects compare at once: a warm run's)
                tails[i] = tail
                statics[i] = digest(b"".join((_KEY_HEAD, labels[i], tail)))
                reused = False
        # None where a unit is not cacheable, as statics is; a root's key is its fixed part
        # (a map is never a root), the others' are made once their dependencies are done.
        self._static = statics.copy()
        self._keys = keys = statics.copy()
        for i in itertools.compress(range(n), deps):
            keys[i] = None
        # Each expanded cacheable map -> its items' shared key part (b"": they run uncached).
        self._item_bases: dict[int, bytes] = {}
        # Keys of items of a map over a unit, computed as it expands, until looked up.
        self._ahead: dict[int, bytes] = {}
        self._item_of = run.scheduler.item_of
        self._warned: set[int] = set()  # maps whose items' trouble was logged
        if graph.maps:
            run.on_grow.append(functools.partial(self._grow, run))
        if not reused or known.expected is None:
            known.expected = self._expected_keys(graph)
            known.wanted = list(filter(None, known.expected))
        self._expected = known.expected
        self._store.prefetch(known.wanted)

    def add_counts(self) -> None:
        """Add the run's hits, misses and writes to the partitioner's counters (at its end)."""
        # A unit looked up again (a retry) is one miss.
        self._owner._count(len(self._hits), len(set(self._misses)), len(self._writes))
        self._hits, self._misses, self._writes = [], [], []

    def _expected_keys(self, graph: Graph) -> list[bytes | None]:
        """Each unit's key if every cacheable unit completes (None: known only at run time).

        Read ahead by ``prefetch``, and taken by ``_key_of`` when the dependencies did
        complete with those keys. A unit's key is known before the run when each of its
        dependencies is cacheable: its part is then that dependency's own key (see
        ``_key_of``). Units downstream of a non-cacheable one key on a result, known only
        once it exists.
        """
        static, deps, labels, maps = self._static, graph.deps, self._labels, graph.maps
        # A root's key is its fixed part (None: not cacheable); a map's is its items', known
        # once they ran (see _map_key). The others, in topological order (the roots left
        # out by a C loop: most units of a wide graph are roots).
        expected: list[bytes | None] = list(static)
        for m in maps:
            expected[m] = None
        order = graph.order
        for i in itertools.compress(order, map(deps.__getitem__, order)):
            own = expected[i]
            if own is None:
                continue  # not cacheable, or a map
            order_i = self._dependency_order(i, deps[i])
            known = list(map(expected.__getitem__, order_i))
            if not all(known):  # a dependency whose key is known only at run time
                expected[i] = None
                continue
            # Its part after its fixed one: each dependency's label, b"k" and key, by name.
            keys = cast("list[bytes]", known)  # none is None (all() above)
            named = zip(map(labels.__getitem__, order_i), itertools.repeat(b"k"), keys)
            expected[i] = _combine([own, *itertools.chain.from_iterable(named)])
        return expected

    # -- fixed parts -----------------------------------------------------------------------

    def _context_part(self, unit: QuantumUnit[Any, Any], metadata: Mapping[str, Any]) -> bytes:
        """The part of the context ``metadata["cache_keys"]`` names (absent: all of it)."""
        keys = _check_names(unit.id, "cache_keys", metadata.get("cache_keys"))
        if keys is None:
            if self._whole_context is None:
                self._whole_context = self._digest_of_keys(unit.id, list(self._context))
            return self._whole_context
        known = self._narrowed.get(keys)
        if known is None:
            known = self._narrowed[keys] = self._digest_of_keys(unit.id, keys)
        return known

    def _digest_of_keys(self, unit_id: str, keys: Sequence[Any]) -> bytes:
        context = self._context
        parts = []
        for key in dict.fromkeys(keys):
            try:
                encoded_key = fingerprint(key)
            except UnfingerprintableError as error:
                raise TypeError(
                    f"unit {unit_id!r}: context key {key!r} cannot be fingerprinted: {error}"
                ) from None
            if key in context:
                parts.append(encoded_key + b"=" + self._context_digest(unit_id, key))
            else:
                parts.append(encoded_key + b"-")
        parts.sort()
        return digest(b"".join(parts))

    def _context_digest(self, unit_id: str, key: Any) -> bytes:
        known = self._context_digests.get(key)
        if known is None:
            try:
                known = fingerprint(self._context[key])
            except UnfingerprintableError as error:
                known = error
            self._context_digests[key] = known
        if isinstance(known, UnfingerprintableError):
            raise TypeError(
                f"unit {unit_id!r} is cacheable but context key {key!r} cannot be "
                f"fingerprinted: {known}. List the keys the unit's result depends on in "
                "metadata['cache_keys'] to leave it out."
            )
        return known

    # -- per unit, once its dependencies are done ------------------------------------------

    def _dependency_order(self, i: int, deps: Sequence[int]) -> Sequence[int]:
        """Unit ``i``'s dependencies by name: the order their parts take in its key."""
        order = self._dep_order[i]
        if order is None:
            order = sorted(deps, key=self._names.__getitem__)
            self._dep_order[i] = order
        return order

    def _key_of(self, run: Run, i: int, static: bytes) -> bytes:
        """Unit ``i``'s key, or ``_UNKEYABLE`` if a dependency's result has no fingerprint."""
        if self._item_bases and i in self._item_of:
            return self._item_key(run, i)
        deps = run.graph.deps[i]
        if not deps:
            return static
        expected = self._expected[i] if i < len(self._expected) else None
        if expected is not None:
            # Each dependency completed under the key expected for it: so did this unit's.
            keys, state = self._keys, run.scheduler.state
            for j in deps:
                if state[j] is not _COMPLETED or keys[j] != self._expected[j]:
                    break
            else:
                return expected
        names = self._names
        try:
            return self._with_inputs(run, static, self._dependency_order(i, deps))
        except _UnkeyableInputError as unkeyable:
            LOGGER.warning(
                "unit %r runs without the cache: the result of its dependency %r "
                "cannot be fingerprinted: %s",
                names[i],
                names[unkeyable.index],
                unkeyable.error,
            )
            self._owner._count_trouble(skipped=True)
            return _UNKEYABLE

    def _with_inputs(self, run: Run, static: bytes, order: Sequence[int]) -> bytes:
        """``static`` and each input in ``order``: its name and :meth:`_part_of`."""
        keys, state = self._keys, run.scheduler.state
        parts = [static]
        add = parts.append
        for j in order:
            add(self._label_of(j))
            own = keys[j]
            if own and state[j] is _COMPLETED:
                add(b"k")
                add(own)
            else:
                add(self._part_of(run, j))
        return _combine(parts)

    def _label_of(self, j: int) -> bytes:
        """Unit ``j``'s name as keys spell it (a map item's is spelled when it is needed)."""
        labels = self._labels
        return labels[j] if j < len(labels) else _label(self._names[j])

    def _part_of(self, run: Run, j: int) -> bytes:
        """What input ``j`` adds to a key: its key if it completed, else its result's fingerprint.

        Raises:
            _UnkeyableInputError: It has no key and its result cannot be fingerprinted.
        """
        sched = run.scheduler
        own = self._keys[j]
        if own is None and j in sched.items_of:  # a map: its items' keys, computed once
            own = self._keys[j] = self._map_key(run, j)
        if own and sched.state[j] is _COMPLETED:
            return b"k" + own
        value_digest = self._value_digests.get(j)
        if value_digest is None:
            try:
                value_digest = fingerprint(sched.results[j])
            except UnfingerprintableError as error:
                raise _UnkeyableInputError(j, error) from None
            self._value_digests[j] = value_digest
        return b"v" + value_digest

    # -- maps ------------------------------------------------------------------------------

    def _grow(self, run: Run, items: range) -> None:
        """A map got ``items``: room for them in the per-unit lists, and their shared part.

        That part is computed now, while the map's declared dependencies are at hand; the
        items of a map that started on incomplete inputs (a join rule) run uncached.
        """
        count = len(items)
        if not count:
            return
        self._keys.extend([None] * count)
        m = self._item_of[items.start][0]
        static = self._static[m]
        if static is not None and m in run.scheduler.partial_inputs:
            static = None
        self._static.extend([static] * count)
        if static is None:
            return
        graph = run.graph
        index, names = graph.index, graph.names
        declared = [index[name] for name in graph.units[m].dependencies]
        declared.sort(key=names.__getitem__)
        try:
            base = self._with_inputs(run, static, declared)
        except _UnkeyableInputError as unkeyable:
            LOGGER.warning(
                "the items of map %r run without the cache: the result of its dependency %r "
                "cannot be fingerprinted: %s",
                names[m],
                names[unkeyable.index],
                unkeyable.error,
            )
            base = _UNKEYABLE
        self._item_bases[m] = base
        if base:
            self._store.prefetch(self._keys_ahead(run, base, items))

    def _keys_ahead(self, run: Run, base: bytes, items: range) -> list[bytes]:
        """The keys ``items`` will be looked up under, for ``prefetch``.

        An item of a map over a unit has its key now (kept for its lookup); an item of a
        map over a map will have this one if the item it follows completes.
        """
        parents = run.scheduler.item_parent
        keys, ahead = self._keys, self._ahead
        expected = []
        if items.start in parents:
            for j in items:
                parent = parents[j]
                own = keys[parent] or ahead.get(parent)
                if own:
                    expected.append(digest(b"%s\0item\0k%s" % (base, own)))
            return expected
        for j in items:
            try:
                key = digest(b"%s\0item\0v%s" % (base, _item_digest(run, j)))
            except UnfingerprintableError:
                continue  # its lookup says why
            ahead[j] = key
            expected.append(key)
        return expected

    def _item_key(self, run: Run, i: int) -> bytes:
        """Map item ``i``'s key: its map's shared part and its item's (never its index)."""
        m = self._item_of[i][0]
        base = self._item_bases[m]
        if base:
            key = self._ahead.pop(i, None)
            if key is not None:
                return key
            sched = run.scheduler
            parent = sched.item_parent.get(i)
            try:
                if parent is not None:  # a map over a map: the item it follows
                    return digest(b"%s\0item\0%s" % (base, self._part_of(run, parent)))
                return digest(b"%s\0item\0v%s" % (base, _item_digest(run, i)))
            except (UnfingerprintableError, _UnkeyableInputError) as error:
                if m not in self._warned:
                    self._warned.add(m)
                    LOGGER.warning(
                        "items of map %r run without the cache: an item cannot be "
                        "fingerprinted (%r first): %s",
                        self._names[m],
                        self._names[i],
                        error,
                    )
        self._owner._count_trouble(skipped=True)
        return _UNKEYABLE

    def _map_key(self, run: Run, m: int) -> bytes:
        """Map ``m``'s key, for its dependents: the parts of its list's items, in item order.

        ``_UNKEYABLE`` when the map is not cacheable or did not complete (its dependents
        then fall back to the fingerprint of its result, or are not cached at all).
        """
        if self._static[m] is None:
            return _UNKEYABLE
        sched = run.scheduler
        state, fallbacks = sched.state, sched.fallbacks
        parts = [b"map"]
        for j in sched.items_of[m]:
            if state[j] is UnitState.SKIPPED:  # left out of the map's list
                continue
            if state[j] is not _COMPLETED and j not in fallbacks:
                return _UNKEYABLE
            try:
                parts.append(self._part_of(run, j))
            except _UnkeyableInputError:
                return _UNKEYABLE
        return digest(b"\0".join(parts))

    def lookup(self, run: Run, i: int) -> tuple[bool, Any]:
        """``(True, result)`` if unit ``i``'s result for its current inputs is stored."""
        key = self._keys[i]  # a root's is its fixed part, set before the run
        if key is None:
            static = self._static[i]
            if static is None or i in run.scheduler.partial_inputs:
                return _MISS  # not cacheable, or runs on incomplete inputs (a join rule)
            key = self._keys[i] = self._key_of(run, i, static)
        if not key:
            return _MISS
        try:
            payload = self._store.get(key)
        except Exception as error:
            LOGGER.warning("unit %r: cache lookup failed, running it: %s", self._names[i], error)
            self._owner._count_trouble(error=True)
            payload = None
        if payload is not None:  # (a miss, the common case of a cold run, is tested first)
            if payload == _NONE_PAYLOAD:
                self._hits.append(i)
                return True, None
            try:
                value = pickle.loads(payload)  # noqa: S301 - the store is trusted (docs/caching.md)
            except Exception as error:
                LOGGER.warning(
                    "unit %r: stored result does not load (%s); it will be recomputed",
                    self._names[i],
                    error,
                )
                self._discard(key)
            else:
                self._hits.append(i)
                return True, value
        self._misses.append(i)  # once per unit in the counts (see add_counts)
        return _MISS

    def _discard(self, key: bytes) -> None:
        try:
            self._store.discard(key, corrupt=True)
        except Exception as error:
            LOGGER.warning("cache store: could not drop a damaged entry: %s", error)
            self._owner._count_trouble(error=True)

    def remember(self, run: Run, i: int, value: Any) -> None:
        """Store unit ``i``'s fresh result under the key its lookup computed."""
        del run
        key = self._keys[i]
        if not key:
            return
        try:
            payload = _NONE_PAYLOAD if value is None else dumps(value)
        except Exception as error:
            LOGGER.warning(
                "unit %r: result not cached, it cannot be pickled: %s", self._names[i], error
            )
            self._owner._count_trouble(skipped=True)
            return
        item_of = self._item_of
        # An item's entry is its map's (clear_cache("tool")): another item may be served it.
        unit = self._names[item_of[i][0] if item_of and i in item_of else i]
        try:
            self._store.put(key, unit, payload)
        except Exception as error:
            LOGGER.warning("unit %r: result not cached: %s", self._names[i], error)
            self._owner._count_trouble(error=True)
            return
        self._writes.append(i)


def _item_digest(run: Run, i: int) -> bytes:
    """The fingerprint of map item ``i``'s item.

    Of its value here, or as its backend measured it where the value stays (Dask:
    ``Run.item_digests``, filled when the run has a cache).

    Raises:
        UnfingerprintableError: The item has no fingerprint.
    """
    m, position = run.scheduler.item_of[i]
    digests = run.item_digests.get(m)
    if digests is not None:
        measured = digests[position]
        if measured is None:
            raise UnfingerprintableError(f"item {position} of map {run.graph.names[m]!r}")
        return measured
    if run.count_items is not None:  # the items stayed where the list is, unmeasured
        raise UnfingerprintableError(f"item {position} of map {run.graph.names[m]!r} is elsewhere")
    place = run.item_of(i)
    assert place is not None
    return fingerprint(place[1])
