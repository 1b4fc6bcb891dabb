"""Unit functions for process-pool tests, importable by name in worker processes.

test_executor.py puts this directory on ``sys.path`` and imports the module as
``_pool_units``, so functions pickle by reference to a name every worker can import, whatever
the multiprocessing start method (fork, forkserver, spawn) and whatever the current directory.
"""

from __future__ import annotations

import os
from typing import Any


def load(ctx: Any) -> list[int]:
    """Return the context's numbers."""
    return list(ctx["numbers"])


def square(ctx: Any) -> list[int]:
    """Square the numbers ``load`` returned and record how many there were."""
    ctx.record_metric("count", len(ctx["load"]))
    return [n * n for n in ctx["load"]]


async def total(ctx: Any) -> int:
    """Add up the squares (an async def unit, awaited in the worker)."""
    return sum(ctx["square"])


def pid(ctx: Any) -> int:
    """The id of the process running the unit."""
    return os.getpid()


def what_i_see(ctx: Any) -> dict[str, Any]:
    """What the unit can read: its keys, a dependency, and whether an undeclared one shows."""
    try:
        ctx.get_dependency_result("pid")
    except KeyError:
        hidden = True
    else:
        hidden = False
    return {"keys": sorted(ctx), "load": ctx["load"], "pid_hidden": hidden}


def remote_failure(ctx: Any) -> None:
    """Raise in the worker process."""
    raise ValueError(f"remote failure in {ctx.unit_id}")


def flaky(ctx: Any) -> str:
    """Fail on the first two attempts."""
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return f"ok on {ctx.attempt}"


def returns_unpicklable(ctx: Any) -> Any:
    """Return a value that cannot travel back to the caller."""
    return lambda: None


def dies(ctx: Any) -> None:
    """End the worker process abruptly."""
    os._exit(3)


def one(ctx: Any) -> int:
    """Return 1."""
    return 1
