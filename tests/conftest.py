"""Shared pytest fixtures.

Each section belongs to one group of test files; add new fixtures in their own section.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from quantum_partitioner import ExecutionMode
from quantum_partitioner.testing import FakeClock

# tests/typing/ holds code for mypy to check (``make check``), not tests to run.
collect_ignore = ["typing"]

# == Pure layers (test_graph, test_plan, test_scheduler, test_policies) ========================
# No threads and no sleeps: time is a FakeClock that moves only when a test says so.


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock starting at 0.0."""
    return FakeClock()


# == Running graphs (tests/backends/, test_partitioner, test_properties_run) ==================
# ``mode`` runs a test once per execution mode. Each entry of RUN_MODES is ``(id, factory)``:
# the factory receives an ExitStack for whatever it must clean up (an executor) and returns
# the keyword arguments for ``QuantumPartitioner.execute()``. Adding a mode is one line here.
#
# Units of "process" and "custom-processpool" run in other processes, so tests observe them
# only through what crosses back (results, errors, metrics, callbacks, files). PROCESS sends
# functions with cloudpickle (lambdas and closures by value); a plain ProcessPoolExecutor
# uses the standard pickle, so its units must be importable by name (_contract_units.py).
# Its workers are spawned: forking a process that runs threads is unsafe. "process" passes
# max_workers=2 (two worker processes on any machine), which overrides a partitioner's own.

RunModeFactory = Callable[[ExitStack], dict[str, Any]]

RUN_MODES: list[tuple[str, RunModeFactory]] = [
    ("sequential", lambda _: {"execution_mode": ExecutionMode.SEQUENTIAL}),
    ("thread", lambda _: {"execution_mode": ExecutionMode.THREAD}),
    ("process", lambda _: {"execution_mode": ExecutionMode.PROCESS, "max_workers": 2}),
    ("async", lambda _: {"execution_mode": ExecutionMode.ASYNC}),
    (
        "custom-threadpool",
        lambda stack: {
            "execution_mode": ExecutionMode.CUSTOM,
            "custom_executor": stack.enter_context(ThreadPoolExecutor(4)),
        },
    ),
    (
        "custom-processpool",
        lambda stack: {
            "execution_mode": ExecutionMode.CUSTOM,
            "custom_executor": stack.enter_context(
                ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
            ),
        },
    ),
]


@dataclass(frozen=True)
class RunMode:
    """One execution mode: its id and the keyword arguments that select it."""

    id: str
    kwargs: Mapping[str, Any]

    @property
    def concurrent(self) -> bool:
        """Whether units may run at the same time (every mode but SEQUENTIAL)."""
        return self.kwargs["execution_mode"] is not ExecutionMode.SEQUENTIAL

    @property
    def in_processes(self) -> bool:
        """Whether units run in other processes (PROCESS, or CUSTOM on a process pool)."""
        return self.kwargs["execution_mode"] is ExecutionMode.PROCESS or isinstance(
            self.kwargs.get("custom_executor"), ProcessPoolExecutor
        )

    @property
    def pickles_functions_by_name(self) -> bool:
        """Whether unit functions travel by reference only (a plain ProcessPoolExecutor).

        Lambdas and closures cannot be sent there; PROCESS sends them by value.
        """
        return isinstance(self.kwargs.get("custom_executor"), ProcessPoolExecutor)

    def execute(self, partitioner: Any, context: Any = None, **options: Any) -> Any:
        """``partitioner.execute(context, **options)`` in this mode."""
        return partitioner.execute(context, **self.kwargs, **options)


@pytest.fixture(params=RUN_MODES, ids=[mode_id for mode_id, _ in RUN_MODES])
def mode(request: pytest.FixtureRequest) -> Iterator[RunMode]:
    """Each execution mode in turn; its executor (if any) is shut down after the test."""
    mode_id, factory = request.param
    with ExitStack() as stack:
        yield RunMode(mode_id, factory(stack))
