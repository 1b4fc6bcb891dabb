"""What a unit receives: a read-only view of the caller's context and its dependencies.

A unit is called as ``fn(ctx)``. ``ctx[name]`` is the result of a declared dependency
``name`` if there is one, else the caller's context value; a unit never sees the results of
units it did not declare. The view is built per attempt from a dict of just those results,
so it pickles with them to a worker process.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import CoroutineType, MappingProxyType

# Every worker process imports this module before it is ready, so it imports nothing it can
# do without: not ``typing`` (names for annotations only) nor ``._errors`` (imported where
# a helper raises).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, Final, NoReturn, Protocol

    class _AttemptWatch(Protocol):
        """Whoever can tell whether an attempt is still wanted (the run, in-process)."""

        def attempt_abandoned(self, index: int, attempt: int) -> bool: ...

        def pause_limit(self, name: str, seconds: float) -> None: ...

    _StrMapping = Mapping[str, Any]
else:
    _StrMapping = Mapping

__all__ = ["ExecutionContext"]

_NO_RESULTS: Final[Mapping[str, Any]] = MappingProxyType({})


#: Where an attempt in another process records ``pause_limit`` calls, for the run to apply.
PAUSES_KEY: Final = "_pause_limit"


def check_pause_seconds(seconds: object) -> None:
    """Refuse a pause that is not a finite number of seconds >= 0.

    Checked where the unit calls ``pause_limit``, in whatever process: a bad pause fails
    that attempt, never the driver that would apply it.

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is negative or not finite.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"pause_limit: seconds must be a number, got {seconds!r}")
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"pause_limit: seconds must be >= 0 and finite, got {seconds!r}")


class ExecutionContext(_StrMapping):
    """The read-only mapping a unit is called with.

    It holds the caller's context plus one entry per declared dependency (its result, which
    wins over a context key of the same name), and offers helpers.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_attempt",
        "_context",
        "_index",
        "_item",
        "_mode",
        "_results",
        "_unit_id",
        "_upstream_errors",
        "_watch",
        "metrics",
    )

    def __init__(  # noqa: PLR0917 - built by the engine on the hot path, positionally
        self,
        context: Mapping[str, Any],
        results: Mapping[str, Any],
        unit_id: str,
        attempt: int = 1,
        mode: str = "sequential",
        watch: _AttemptWatch | None = None,
        index: int = -1,
        upstream_errors: Mapping[str, BaseException] = _NO_RESULTS,
        item: tuple[int, Any] | None = None,
    ) -> None:
        """Create a view; units receive one, they do not build it."""
        self._upstream_errors = upstream_errors
        self._item = item
        self._context = context
        self._results = results
        self._unit_id = unit_id
        self._attempt = attempt
        self._mode = mode
        self._watch = watch
        self._index = index
        #: Metrics recorded by :meth:`record_metric` during this attempt.
        self.metrics: dict[str, Any] | None = None

    # -- Mapping ---------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        """A dependency's result, else the caller's context value."""
        results = self._results
        if key in results:
            return results[key]
        try:
            return self._context[key]
        except KeyError:
            raise KeyError(
                f"unit {self._unit_id!r}: {key!r} is neither a context key nor a declared "
                "dependency"
            ) from None

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is a declared dependency or a context key."""
        return key in self._results or key in self._context

    def __iter__(self) -> Iterator[str]:
        """Context keys, then dependency names not shadowing one."""
        results = self._results
        for key in self._context:
            if key not in results:
                yield key
        yield from results

    def __len__(self) -> int:
        """The number of distinct keys."""
        return len(self._results) + sum(1 for key in self._context if key not in self._results)

    def __repr__(self) -> str:
        """Show the unit and what it can see."""
        return (
            f"ExecutionContext(unit={self._unit_id!r}, context={list(self._context)!r}, "
            f"dependencies={list(self._results)!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle without the cancellation hook, which stays in the caller's process."""
        arguments: tuple[Any, ...] = (
            dict(self._context),
            dict(self._results),
            self._unit_id,
            self._attempt,
            self._mode,
        )
        if self._upstream_errors or self._item is not None:
            arguments += (None, -1, dict(self._upstream_errors), self._item)
        return (ExecutionContext, arguments)

    def fetching(self, fetch: Callable[[Any], Any]) -> ExecutionContext:
        """This view, with each dependency result passed through ``fetch`` when read."""
        return ExecutionContext(
            self._context,
            _Fetching(self._results, fetch),
            self._unit_id,
            self._attempt,
            self._mode,
            self._watch,
            self._index,
            self._upstream_errors,
            self._item,
        )

    # -- helpers ---------------------------------------------------------------------------

    @property
    def unit_id(self) -> str:
        """The name of the unit being run."""
        return self._unit_id

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1."""
        return self._attempt

    @property
    def unit_results(self) -> Mapping[str, Any]:
        """The results of this unit's declared dependencies, by name."""
        return MappingProxyType(dict(self._results)) if self._results else _NO_RESULTS

    @property
    def environment(self) -> Mapping[str, Any]:
        """Facts about this attempt: ``unit_id``, ``attempt`` and ``execution_mode``."""
        return MappingProxyType(
            {"unit_id": self._unit_id, "attempt": self._attempt, "execution_mode": self._mode}
        )

    def get_dependency_result(self, unit_id: str) -> Any:
        """The result of the declared dependency ``unit_id``.

        Raises:
            KeyError: ``unit_id`` is not a declared dependency of this unit.
        """
        try:
            return self._results[unit_id]
        except KeyError:
            raise KeyError(
                f"unit {self._unit_id!r} did not declare {unit_id!r} as a dependency"
            ) from None

    @property
    def item(self) -> Any:
        """For an item of a map, the element of the result it maps over.

        For a map over a map, the result of the item it follows.

        Raises:
            AttributeError: This unit is not an item of a map.

        .. versionadded:: 0.2
        """
        if self._item is None:
            raise AttributeError(f"unit {self._unit_id!r} is not an item of a map: it has no item")
        return self._item[1]

    @property
    def index(self) -> int:
        """For an item of a map, its position in the map (from 0).

        Raises:
            AttributeError: This unit is not an item of a map.

        .. versionadded:: 0.2
        """
        if self._item is None:
            raise AttributeError(f"unit {self._unit_id!r} is not an item of a map: it has no index")
        return self._item[0]

    @property
    def upstream_errors(self) -> Mapping[str, BaseException]:
        """Each declared dependency that did not complete, with its error or skip reason.

        Empty unless something upstream failed or was skipped: a dependency that failed
        with a fallback value is here too (its value is in ``ctx``), and under the join
        rules other than ``all_success`` so are those that failed or were skipped.

        .. versionadded:: 0.2
        """
        return self._upstream_errors

    def skip(self, reason: str = "it decided to skip") -> NoReturn:
        """End this unit SKIPPED by its own decision (not FAILED), with ``reason``.

        It raises :class:`SkipUnit`: never retried, never cached, not a failure. Dependents
        count the unit as skipped for their join rules.

        .. versionadded:: 0.2
        """
        from ._errors import SkipUnit  # noqa: PLC0415 - see the imports

        raise SkipUnit(reason)

    def record_metric(self, name: str, value: Any) -> None:
        """Record a metric for this unit; it appears in the run's metrics."""
        if self.metrics is None:
            self.metrics = {}
        self.metrics[name] = value

    def pause_limit(self, name: str, seconds: float) -> None:
        """Hold back new starts on the named limit ``name`` for ``seconds``.

        For a provider that says "slow down" (HTTP 429 with Retry-After): attempts already
        running go on; no attempt of any unit naming that limit starts before the pause
        ends, also when this attempt then raises (to be retried after the pause). In a
        worker process the pause applies when this attempt's outcome arrives; on Dask, as
        soon as the caller hears of it.

        Raises:
            KeyError: In the caller's process, when the partitioner has no such limit.
            TypeError: ``seconds`` is not a number.
            ValueError: ``seconds`` is negative or not finite.
        """
        check_pause_seconds(seconds)
        watch = self._watch
        if watch is not None:
            watch.pause_limit(name, seconds)
            return
        if self.metrics is None:
            self.metrics = {}
        self.metrics.setdefault(PAUSES_KEY, []).append((name, seconds))

    @property
    def cancelled(self) -> bool:
        """Whether this attempt was abandoned (timed out, run cancelled): stop early."""
        watch = self._watch
        return watch is not None and watch.attempt_abandoned(self._index, self._attempt)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`UnitCancelledError` if this attempt was abandoned.

        Long units running in threads, which cannot be killed, call this now and then.
        """
        if self.cancelled:
            from ._errors import UnitCancelledError  # noqa: PLC0415 - see the imports

            raise UnitCancelledError(self._unit_id, "attempt abandoned")


class _Fetching(_StrMapping):
    """Dependency results fetched on first read (a ``when=`` predicate on Dask)."""

    __slots__ = ("_fetch", "_fetched", "_results")

    def __init__(self, results: Mapping[str, Any], fetch: Callable[[Any], Any]) -> None:
        self._results = results
        self._fetch = fetch
        self._fetched: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._fetched:
            self._fetched[key] = self._fetch(self._results[key])
        return self._fetched[key]

    def __contains__(self, key: object) -> bool:
        return key in self._results

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)


def call_unit_function(function: Callable[[ExecutionContext], Any], ctx: ExecutionContext) -> Any:
    """Call a unit as every mode does: ``function(ctx)``, and run a coroutine it returns.

    That is an ``async def`` unit, or a plain function that returned a coroutine; either
    runs on a loop of its own to its end. For the places that call a unit away from the
    run's own loop (a worker process, a user's executor, a Dask worker).
    """
    value = function(ctx)
    if type(value) is CoroutineType:
        import asyncio  # noqa: PLC0415 - most worker processes never need it

        value = asyncio.run(value)
    return value
