"""The rest of the public API as user code meets it: errors, events, instruments, policies.

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

from typing import Any, assert_type

from quantum_partitioner import (
    CircularDependencyError,
    ExecutionContext,
    ExecutionMode,
    ExponentialBackoff,
    Instrument,
    QuantumPartitioner,
    RetryPolicy,
    RunFinished,
    RunStarted,
    TaskError,
    UnitFailed,
    UnitRetrying,
    UnitSkipped,
    UnitStarted,
    UnitState,
    UnitTimeoutError,
    WorkerDiedError,
)
from quantum_partitioner.testing import FakeClock


class Counts(Instrument):
    """An instrument overriding hooks with the events' own types."""

    def __init__(self) -> None:
        self.started = 0
        self.states: dict[str, UnitState] = {}

    def run_started(self, event: RunStarted) -> None:
        assert_type(event.execution_mode, str)
        assert_type(event.total_units, int)

    def unit_started(self, event: UnitStarted) -> None:
        self.started += 1
        assert_type(event.worker, str)

    def unit_failed(self, event: UnitFailed) -> None:
        self.states[event.unit_id] = event.state
        assert_type(event.error, BaseException)

    def unit_retrying(self, event: UnitRetrying) -> None:
        assert_type(event.delay, float)

    def unit_skipped(self, event: UnitSkipped) -> None:
        assert_type(event.reason, BaseException)

    def run_finished(self, event: RunFinished) -> None:
        assert_type(event.duration, float)


def errors() -> None:
    """The errors' attributes are typed, as ``except`` blocks read them."""
    partitioner = QuantumPartitioner(
        default_execution_mode=ExecutionMode.SEQUENTIAL,
        retry_policy=RetryPolicy(backoff=ExponentialBackoff(initial=0.01), retry_on=OSError),
        instruments=[Counts()],
    )
    partitioner.add_unit(lambda ctx: 1, name="a", timeout=1)
    try:
        partitioner.execute({}, raise_on_error=True)
    except TaskError as error:
        assert_type(error.errors, dict[str, BaseException])
        assert_type(error.partial_results, dict[str, Any])
        assert_type(error.failed_tasks, list[str])
    except CircularDependencyError as error:
        assert_type(error.cycle, list[str])
    failure = partitioner.units["a"].error
    if isinstance(failure, UnitTimeoutError):
        assert_type(failure.timeout, float)
    elif isinstance(failure, WorkerDiedError):
        assert_type(failure.exitcode, int | None)
    assert_type(partitioner.units["a"].traceback, str | None)
    assert_type(partitioner.units["a"].execution_time, float | None)


def fake_clock() -> None:
    """The sans-I/O core's clock for tests."""
    clock = FakeClock()
    assert_type(clock(), float)
    assert_type(clock.advance(1.5), float)


def bulk_units() -> None:
    """``add_units`` takes each entry shape; its results type as ``add_unit``'s do."""

    def load(ctx: ExecutionContext) -> int:
        return 1

    partitioner: QuantumPartitioner[Any, int] = QuantumPartitioner()
    partitioner.add_units(
        {"load": load, "twice": (load, ["load"]), "thrice": (load, ["twice"], {"retries": 1})}
    )
    assert_type(partitioner.execute({}), dict[str, int])
