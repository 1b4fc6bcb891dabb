"""Shared pytest fixtures.

Each section belongs to one group of test files; add new fixtures in their own section.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
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
# Spawning two interpreters costs more than most tests, so "custom-processpool" lends every
# test the same pool, as a user keeps one executor for many runs; a test that leaves it
# broken, shut down or still busy gets it shut down (what runs is waited for, what waits is
# cancelled) and a new one the next time.

RunModeFactory = Callable[[ExitStack], dict[str, Any]]


class _LentProcessPool:
    """One spawned ``ProcessPoolExecutor(2)``, lent test after test while it stays clean."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def lend(self, stack: ExitStack) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        stack.callback(self._returned)
        return self._pool

    def _returned(self) -> None:
        pool = self._pool
        assert pool is not None
        # No public API tells these; each would leak into the next test.
        if pool._broken or pool._shutdown_thread or pool._pending_work_items:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


_LENT_PROCESS_POOL = _LentProcessPool()

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
            "custom_executor": _LENT_PROCESS_POOL.lend(stack),
        },
    ),
]


@pytest.fixture(scope="session", autouse=True)
def _close_the_lent_process_pool() -> Iterator[None]:
    yield
    _LENT_PROCESS_POOL.close()


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
    """Each execution mode in turn; its executor (if any) is shut down or returned after it."""
    mode_id, factory = request.param
    with ExitStack() as stack:
        yield RunMode(mode_id, factory(stack))


# == Calls that must not hang (test_contract, test_strategies, test_partitioner) ==============
# A defect that hangs execute() must fail its test, not the whole session: ``bounded(call)``
# runs ``call()`` in a daemon thread and fails the test if it has not returned in time.


def _bounded(call: Callable[[], Any], seconds: float = 60.0) -> Any:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call did not return within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def bounded() -> Callable[..., Any]:
    """``bounded(call, seconds=60)``: ``call()``'s result or error, or a failure if it hangs."""
    return _bounded


# == Type checking (test_docs, test_public_api) ================================================
# mypy runs with the project's configuration and cache, so after `make check` it costs about
# a second; it reports errors as (file, line, message).

MypyRun = Callable[..., list[tuple[str, int, str]]]
_MYPY_ERROR = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+): error: (?P<message>.*)$", re.MULTILINE)


@pytest.fixture
def mypy() -> MypyRun:
    """``mypy(*paths, *flags, cwd=dir)``: mypy's errors on files relative to ``cwd``."""
    root = Path(__file__).resolve().parent.parent

    def run(*arguments: str, cwd: Path) -> list[tuple[str, int, str]]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(root / "pyproject.toml"),
                "--cache-dir",
                str(root / ".mypy_cache"),
                "--no-error-summary",
                "--show-error-codes",
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
            check=False,
        )
        assert result.returncode in {0, 1}, f"mypy did not run:\n{result.stdout}{result.stderr}"
        return [
            (match["file"], int(match["line"]), match["message"])
            for match in _MYPY_ERROR.finditer(result.stdout)
        ]

    return run
