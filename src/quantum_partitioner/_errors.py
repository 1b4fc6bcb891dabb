"""The exceptions quantum-partitioner raises.

Every error the library raises on purpose derives from :class:`PartitionerError`, and each
also derives from the builtin that matches its meaning, so ``except ValueError`` keeps
working for code that does not know this library::

    PartitionerError
    ├── GraphError(ValueError)              # bad graph, raised before any unit runs
    │   ├── DuplicateUnitError              # two units with one name
    │   ├── UnknownDependencyError          # a dependency names no unit
    │   └── CircularDependencyError         # .cycle: [a, b, ..., a] (alias CircularDependency)
    ├── TaskError                           # raise_on_error=True: .errors .partial_results
    │                                       #   .failed_tasks
    ├── UnitTimeoutError(TimeoutError)      # a unit's error when it ran past its timeout
    ├── UnitSkippedError                    # why a unit did not run: .cause (a SkipCause)
    ├── UnitCancelledError                  # why a unit did not run (fail_fast, cancel())
    ├── WorkerDiedError(RuntimeError)       # the process running a unit died (crash, kill)
    ├── BrokenBackendError(RuntimeError)    # a backend can no longer run attempts
    └── InternalError(RuntimeError)         # a bug in quantum-partitioner: please report it

    SkipUnit(Exception)                     # not an error: raised by ctx.skip(reason)

Plain argument checks (a negative timeout, a non-callable unit) raise plain ``TypeError`` or
``ValueError`` whose message names the unit, as ``concurrent.futures`` does.

:class:`SkipUnit` is not an error: a unit raises it (through ``ctx.skip(reason)``) to end
SKIPPED by its own decision, so it derives from ``Exception`` only, like ``StopIteration``.

What a unit raises is judged here too, once for every mode: :func:`interrupts_run`.
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "BrokenBackendError",
    "CircularDependency",
    "CircularDependencyError",
    "DuplicateUnitError",
    "GraphError",
    "InternalError",
    "PartitionerError",
    "SkipCause",
    "SkipUnit",
    "TaskError",
    "UnitCancelledError",
    "UnitSkippedError",
    "UnitTimeoutError",
    "UnknownDependencyError",
    "WorkerDiedError",
]


#: What a unit (or a hook) interrupts the run with when it raises it in the caller's process.
_INTERRUPTS: Final = (KeyboardInterrupt, SystemExit)


def error_text(error: BaseException) -> str:
    """``str(error)``, or a stand-in saying so when the exception's ``__str__`` raises.

    Errors come from user code: a metric, a trace, a report or the command line that shows
    one must not fail because of it (``last_execution_metrics`` raised what it raised).
    """
    try:
        return str(error)
    except Exception as problem:
        return f"<str() of {type(error).__name__} raised {type(problem).__name__}>"


def interrupts_run(error: BaseException, caller_pid: int | None = None) -> bool:
    """Whether ``error``, raised by a unit or a hook, interrupts the run instead of failing.

    The one rule, in every mode (docs/guide.md, "Exceptions that are not errors"):
    ``KeyboardInterrupt`` and ``SystemExit`` raised in the caller's process interrupt the
    run exactly like Ctrl-C (dispatch stops, what can be cancelled is, completed results are
    kept, and the exception is re-raised in the caller after the cleanup). Raised in another
    process (a worker process, a Dask worker) they fail that unit, like every other exception
    a unit raises, ``BaseException`` subclasses included (``GeneratorExit``, a unit's own
    ``asyncio.CancelledError``).

    Args:
        error: What was raised.
        caller_pid: Where the run's caller lives, when the check runs where the unit ran
            and that may be another process (a custom executor's worker); None when this is
            the caller's process.
    """
    return isinstance(error, _INTERRUPTS) and (caller_pid is None or caller_pid == os.getpid())


class UnitInterrupt(Exception):  # noqa: N818 - not an error: it carries one
    """Carries an exception that interrupts the run (:func:`interrupts_run`) through a future.

    A ``KeyboardInterrupt`` escaping an asyncio task stops its event loop, and a future
    cannot always hold one; wrapped, it reaches the driver, which re-raises ``error``.
    """

    def __init__(self, error: BaseException) -> None:
        """Wrap ``error``."""
        super().__init__(repr(error))
        self.error = error


class PartitionerError(Exception):
    """Base class of every error quantum-partitioner raises on purpose."""


class GraphError(PartitionerError, ValueError):
    """The graph of units is invalid; raised before any unit runs."""


class DuplicateUnitError(GraphError):
    """Two units share one name, or a unit has the name an item of a map will take.

    Attributes:
        unit_id: The name.
        map_name: The map whose item would take that name, if that is the clash.
    """

    def __init__(self, unit_id: str, map_name: str | None = None) -> None:
        if map_name is None:
            message = f"unit {unit_id!r} already exists; pass replace=True to replace it"
        else:
            message = (
                f"unit {unit_id!r} has the name an item of map {map_name!r} takes "
                f"({map_name}[0], {map_name}[1], ...); rename the unit or the map"
            )
        super().__init__(message)
        self.unit_id = unit_id
        self.map_name = map_name

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.map_name))


class UnknownDependencyError(GraphError):
    """A unit depends on a name that is no unit."""

    def __init__(self, unit_id: str, dependency: str) -> None:
        super().__init__(f"unit {unit_id!r} depends on unknown unit {dependency!r}")
        self.unit_id = unit_id
        self.dependency = dependency

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.dependency))


class CircularDependencyError(GraphError):
    """The dependencies form a cycle.

    Attributes:
        cycle: The cycle's path, its first unit repeated last, in the order of
            ``graphlib.CycleError``: each unit is a dependency of the one after it.
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        path = " -> ".join(repr(name) for name in self.cycle)
        super().__init__(f"circular dependency: {path} (each unit is a dependency of the next)")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.cycle,))


#: The original QuantumPartitioner API's name for :class:`CircularDependencyError`.
CircularDependency = CircularDependencyError


class TaskError(PartitionerError):
    """One or more units failed; raised by ``execute(..., raise_on_error=True)``.

    Attributes:
        errors: Each failed unit's exception, by unit name.
        partial_results: The results of the units that completed, by unit name.
        failed_tasks: The names of the failed units, in the order they failed.
        stop_reason: Why the run stopped: ``"completed"`` (it ran to the end),
            ``"deadline"``, ``"cancel"``, ``"interrupt"`` or ``"fail_fast"``.
    """

    def __init__(
        self,
        errors: Mapping[str, BaseException],
        partial_results: Mapping[str, Any],
        failed_tasks: Sequence[str] | None = None,
        stop_reason: str = "completed",
    ) -> None:
        self.errors = dict(errors)
        self.partial_results = dict(partial_results)
        self.failed_tasks = list(self.errors if failed_tasks is None else failed_tasks)
        self.stop_reason = stop_reason
        names = ", ".join(repr(name) for name in self.failed_tasks[:5])
        more = "" if len(self.failed_tasks) <= 5 else f" and {len(self.failed_tasks) - 5} more"
        first = next(iter(self.errors.values()), None)
        cause = f"; first error: {first!r}" if first is not None else ""
        why = "" if stop_reason == "completed" else f" (the run stopped: {stop_reason})"
        super().__init__(f"{len(self.failed_tasks)} unit(s) failed: {names}{more}{cause}{why}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (
            type(self),
            (self.errors, self.partial_results, self.failed_tasks, self.stop_reason),
        )


class MapItemsFailedError(PartitionerError):
    """A map ended FAILED because some of its items failed (or were skipped by a failure).

    Attributes:
        unit_id: The map.
        failed_items: The names of its items that did not complete, in item order.
    """

    def __init__(self, unit_id: str, failed_items: Sequence[str]) -> None:
        self.unit_id = unit_id
        self.failed_items = list(failed_items)
        names = ", ".join(repr(name) for name in self.failed_items[:5])
        more = "" if len(self.failed_items) <= 5 else f" and {len(self.failed_items) - 5} more"
        super().__init__(f"map {unit_id!r}: {len(self.failed_items)} item(s) failed: {names}{more}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.failed_items))


class UnitTimeoutError(PartitionerError, TimeoutError):
    """A unit ran past its timeout. Stored as the unit's error."""

    def __init__(self, unit_id: str, timeout: float) -> None:
        super().__init__(f"unit {unit_id!r} timed out after {timeout:g} s")
        self.unit_id = unit_id
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.timeout))


class SkipCause(enum.Enum):
    """Why a unit was SKIPPED (``UnitSkippedError.cause``).

    Only :attr:`UPSTREAM_FAILED` comes from a failure; the others are decisions, and a
    dependency skipped by one counts as SKIPPED (not failed) for its dependents' join rules.

    .. versionadded:: 0.2
    """

    #: Its ``when=`` condition was false; it never ran.
    CONDITION = "condition"
    #: It called ``ctx.skip(reason)`` (raised :class:`SkipUnit`).
    DECISION = "decision"
    #: A dependency failed (or was itself skipped because of a failure).
    UPSTREAM_FAILED = "upstream_failed"
    #: Its join rule could no longer be met, through decisions only (no failure upstream).
    JOIN_RULE = "join_rule"

    @property
    def is_failure(self) -> bool:
        """Whether the skip comes from a failure upstream (dependents count it as failed)."""
        return self is SkipCause.UPSTREAM_FAILED


class UnitSkippedError(PartitionerError):
    """Why a unit was SKIPPED: its :attr:`cause`, the dependency that decided it, a reason.

    Attributes:
        unit_id: The skipped unit.
        cause: A :class:`SkipCause`.
        dependency: The dependency whose outcome decided the skip, if one did.
        failed_dependency: That dependency when the cause is a failure upstream, else None.
        reason: The reason in words (the text given to ``ctx.skip``, or what was not met).
    """

    def __init__(
        self,
        unit_id: str,
        failed_dependency: str | None = None,
        cause: SkipCause = SkipCause.UPSTREAM_FAILED,
        reason: str | None = None,
    ) -> None:
        self.unit_id = unit_id
        self.cause = cause
        self.dependency = failed_dependency
        self.failed_dependency = failed_dependency if cause.is_failure else None
        if reason is None:
            if cause is SkipCause.CONDITION:
                reason = "its condition (when=) was false"
            elif cause is SkipCause.DECISION:
                reason = "it decided to skip"
            elif failed_dependency is not None:
                verb = "failed" if cause.is_failure else "was skipped"
                reason = f"dependency {failed_dependency!r} {verb}"
            else:
                reason = cause.value
        self.reason = reason
        super().__init__(f"unit {unit_id!r} skipped: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.dependency, self.cause, self.reason))


class SkipUnit(Exception):  # noqa: N818 - a decision, not an error (like StopIteration)
    """Raised inside a unit (by ``ctx.skip(reason)``) to end it SKIPPED, not FAILED.

    It is never retried, its unit's result is not cached, and it is not a failure:
    ``get_failed_units()`` omits the unit and the CLI exits 0 for it.

    .. versionadded:: 0.2
    """

    def __init__(self, reason: str = "it decided to skip") -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the reason (a unit may skip in a worker process)."""
        return (type(self), (self.reason,))


class UnitCancelledError(PartitionerError):
    """A unit was cancelled before it finished (``fail_fast``, ``cancel()``, Ctrl-C)."""

    def __init__(self, unit_id: str, reason: str) -> None:
        super().__init__(f"unit {unit_id!r} cancelled: {reason}")
        self.unit_id = unit_id
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.reason))


class WorkerDiedError(PartitionerError, RuntimeError):
    """The worker process running a unit died: a crash, ``os._exit``, a kill, out of memory.

    Only that unit fails (and is retried if it has retries); the worker is replaced.

    Attributes:
        unit_id: The unit the worker was running.
        exitcode: The process's exit status; negative for the signal that killed it.
        reason: Why it was killed, when the driver killed it (bytes in its pipe that are
            no message), else None.
    """

    def __init__(self, unit_id: str, exitcode: int | None, reason: str | None = None) -> None:
        self.unit_id = unit_id
        self.exitcode = exitcode
        self.reason = reason
        why = f"; it was replaced: {reason}" if reason else ""
        super().__init__(
            f"unit {unit_id!r}: its worker process died ({describe_exit(exitcode)}){why}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the constructor's arguments (errors cross process boundaries)."""
        return (type(self), (self.unit_id, self.exitcode, self.reason))


def describe_exit(exitcode: int | None) -> str:
    """Say how a process ended, from its exit status, in words."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        import signal  # noqa: PLC0415 - only needed on this rare path

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with status {exitcode}"


class BrokenBackendError(PartitionerError, RuntimeError):
    """A backend can no longer run attempts (its pool or cluster is gone)."""


class InternalError(PartitionerError, RuntimeError):
    """Something that should never happen did: please report it as a bug."""
