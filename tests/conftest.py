"""Shared pytest fixtures.

Each section belongs to one group of test files; add new fixtures in their own section.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from quantum_partitioner import ExecutionMode
from quantum_partitioner.testing import FakeClock

# == Pure layers (test_graph, test_plan, test_scheduler, test_policies) ========================
# No threads and no sleeps: time is a FakeClock that moves only when a test says so.


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock starting at 0.0."""
    return FakeClock()


# == Running graphs (tests/backends/, test_partitioner, test_properties_run) ==================
# ``mode`` runs a test once per execution mode that exists. Each entry of RUN_MODES is
# ``(id, factory)``: the factory receives an ExitStack for whatever it must clean up (an
# executor) and returns the keyword arguments for ``QuantumPartitioner.execute()``. Adding a
# mode is one line here.

RunModeFactory = Callable[[ExitStack], dict[str, Any]]

RUN_MODES: list[tuple[str, RunModeFactory]] = [
    ("sequential", lambda _: {"execution_mode": ExecutionMode.SEQUENTIAL}),
    ("thread", lambda _: {"execution_mode": ExecutionMode.THREAD}),
    (
        "custom-threadpool",
        lambda stack: {
            "execution_mode": ExecutionMode.CUSTOM,
            "custom_executor": stack.enter_context(ThreadPoolExecutor(4)),
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

    def execute(self, partitioner: Any, context: Any = None, **options: Any) -> Any:
        """``partitioner.execute(context, **options)`` in this mode."""
        return partitioner.execute(context, **self.kwargs, **options)


@pytest.fixture(params=RUN_MODES, ids=[mode_id for mode_id, _ in RUN_MODES])
def mode(request: pytest.FixtureRequest) -> Iterator[RunMode]:
    """Each execution mode in turn; its executor (if any) is shut down after the test."""
    mode_id, factory = request.param
    with ExitStack() as stack:
        yield RunMode(mode_id, factory(stack))
