"""Unit functions for the behaviour suite (test_contract.py) and the run properties.

Every mode must run these, including CUSTOM on a plain ``ProcessPoolExecutor``, which sends
``call_unit(function, ctx, pid)`` with the standard pickle: functions travel by reference, so they
live here, in a module that test_contract.py and test_properties_run.py put on ``sys.path``
and import as ``_contract_units`` (a name every worker process can import, whatever the
start method). Parameters travel in ``functools.partial`` objects, which pickle too.

Units observe nothing shared with the test: they report through their return values, ctx
metrics, raised errors, and lines appended to a file whose path they are given.
"""

from __future__ import annotations

import asyncio
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from quantum_partitioner import Instrument

# -- returning values ------------------------------------------------------------------------


def const(value: Any) -> partial[Any]:
    """A unit returning ``value``."""
    return partial(_const, value)


def _const(value: Any, ctx: Any) -> Any:
    return value


def plus(key: str, n: int) -> partial[Any]:
    """A unit returning ``ctx[key] + n``."""
    return partial(_plus, key, n)


def _plus(key: str, n: int, ctx: Any) -> Any:
    return ctx[key] + n


def times(key: str, n: int) -> partial[Any]:
    """A unit returning ``ctx[key] * n``."""
    return partial(_times, key, n)


def _times(key: str, n: int, ctx: Any) -> Any:
    return ctx[key] * n


def total(*keys: str) -> partial[Any]:
    """A unit returning the sum of ``ctx[key]`` for each key."""
    return partial(_total, keys)


def _total(keys: tuple[str, ...], ctx: Any) -> Any:
    return sum(ctx[key] for key in keys)


def upper(key: str) -> partial[Any]:
    """A unit returning ``ctx[key].upper()``."""
    return partial(_upper, key)


def _upper(key: str, ctx: Any) -> Any:
    return ctx[key].upper()


def pair(tag: str, key: str) -> partial[Any]:
    """A unit returning ``(tag, ctx[key])``."""
    return partial(_pair, tag, key)


def _pair(tag: str, key: str, ctx: Any) -> Any:
    return (tag, ctx[key])


def sleep(seconds: float, value: Any) -> partial[Any]:
    """A unit sleeping ``seconds``, then returning ``value``."""
    return partial(_sleep, seconds, value)


def _sleep(seconds: float, value: Any, ctx: Any) -> Any:
    time.sleep(seconds)
    return value


# -- looking at ctx --------------------------------------------------------------------------


def probe(*names: str) -> partial[dict[str, Any]]:
    """A unit returning its keys and, for each name, every way ctx answers for it."""
    return partial(_probe, names)


def _probe(names: tuple[str, ...], ctx: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {"keys": sorted(ctx)}
    for name in names:
        answers: dict[str, Any] = {"in": name in ctx, "iterated": name in list(ctx)}
        answers["get"] = ctx.get(name, "default")
        for how, read in (("getitem", ctx.__getitem__), ("dependency", ctx.get_dependency_result)):
            try:
                answers[how] = read(name)
            except KeyError as error:
                answers[how] = f"KeyError: {error}"
        seen[name] = answers
    return seen


def write_into_ctx(ctx: Any) -> str:
    """Try ``ctx["x"] = 2``; return the name of the error, or "written"."""
    try:
        ctx["x"] = 2
    except TypeError:
        return "TypeError"
    return "written"


def environment(ctx: Any) -> dict[str, Any]:
    """Return ctx.environment as a dict."""
    return dict(ctx.environment)


def record(**metrics: Any) -> partial[None]:
    """A unit recording each metric with ctx.record_metric, returning None."""
    return partial(_record, metrics)


def _record(metrics: dict[str, Any], ctx: Any) -> None:
    for name, value in metrics.items():
        ctx.record_metric(name, value)


def sleep_then_record(seconds: float, name: str) -> partial[str]:
    """A unit sleeping ``seconds``, then recording metric ``name`` and returning "late"."""
    return partial(_sleep_then_record, seconds, name)


def _sleep_then_record(seconds: float, name: str, ctx: Any) -> str:
    time.sleep(seconds)
    ctx.record_metric(name, 1)
    return "late"


# -- failing ---------------------------------------------------------------------------------


def explode(ctx: Any) -> None:
    """Raise ValueError naming the unit."""
    raise ValueError(f"{ctx.unit_id} exploded")


def fail_if(key: str) -> partial[str]:
    """A unit raising ValueError when ``ctx[key]`` is true, else returning "fine"."""
    return partial(_fail_if, key)


def _fail_if(key: str, ctx: Any) -> str:
    if ctx[key]:
        raise ValueError("asked to fail")
    return "fine"


def flaky(succeed_on: int) -> partial[str]:
    """A unit raising ConnectionError before attempt ``succeed_on``, then returning "ok on N".

    When the context has ``"attempts"`` (a file path), each call first appends
    ``"<unit> <attempt>"`` to it, so a test can count the calls made in any process.
    """
    return partial(_flaky, succeed_on)


def _flaky(succeed_on: int, ctx: Any) -> str:
    if "attempts" in ctx:
        append(ctx["attempts"], f"{ctx.unit_id} {ctx.attempt}")
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return f"ok on {ctx.attempt}"


def pause_then_fail(limit: str, seconds: float) -> partial[int]:
    """A unit that, on its first attempt, pauses ``limit`` for ``seconds`` and raises.

    What a 429 handler does (``ctx.pause_limit``, then raise to be retried); a later
    attempt returns its number.
    """
    return partial(_pause_then_fail, limit, seconds)


def _pause_then_fail(limit: str, seconds: float, ctx: Any) -> int:
    if ctx.attempt == 1:
        ctx.pause_limit(limit, seconds)
        raise ConnectionError("429 Too Many Requests")
    return int(ctx.attempt)


def wait_for_gate(ctx: Any) -> bool:
    """Wait until the file ``ctx["gate"]`` exists (at most 10 s); return whether it does."""
    gate = Path(ctx["gate"])
    deadline = time.monotonic() + 10
    while not gate.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# -- async def units -------------------------------------------------------------------------


def async_times(key: str, n: int) -> partial[Any]:
    """An ``async def`` unit returning ``ctx[key] * n`` after yielding to its loop."""
    return partial(_async_times, key, n)


async def _async_times(key: str, n: int, ctx: Any) -> Any:
    await asyncio.sleep(0)
    return ctx[key] * n


def async_plus(key: str, n: int) -> partial[Any]:
    """An ``async def`` unit returning ``ctx[key] + n`` after yielding to its loop."""
    return partial(_async_plus, key, n)


async def _async_plus(key: str, n: int, ctx: Any) -> Any:
    await asyncio.sleep(0)
    return ctx[key] + n


def returns_coroutine(key: str, n: int) -> partial[Any]:
    """A plain function returning the coroutine of ``async_times(key, n)`` (not awaited)."""
    return partial(_returns_coroutine, key, n)


def _returns_coroutine(key: str, n: int, ctx: Any) -> Any:
    return _async_times(key, n, ctx)


async def async_key_error(ctx: Any) -> None:
    """An ``async def`` unit raising KeyError."""
    await asyncio.sleep(0)
    raise KeyError("missing")


def logged_nap(log: str, seconds: float) -> partial[Any]:
    """An ``async def`` unit that appends ``start <unit>`` to ``log``, sleeps, then ``end ...``.

    Where a mode can stop a running attempt (a task cancelled, a worker killed), a cancelled
    attempt never writes its ``end`` line.
    """
    return partial(_logged_nap, log, seconds)


async def _logged_nap(log: str, seconds: float, ctx: Any) -> str:
    append(log, f"start {ctx.unit_id}")
    await asyncio.sleep(seconds)
    append(log, f"end {ctx.unit_id}")
    return ctx.unit_id


# -- random DAGs (test_properties_run.py) ----------------------------------------------------


def value_of(i: int, dependency_values: list[int]) -> int:
    """What unit ``i`` of a random DAG returns, given its dependencies' values in order."""
    return (i + 3 * sum(dependency_values)) % 1_000_003


def dag_unit(
    log: str | None, i: int, dependencies: list[str], *, fails: bool, flakes: bool
) -> partial[int]:
    """Unit ``i`` of a random DAG: ``value_of`` its dependencies' results.

    It fails on every attempt if ``fails``, on the first one if ``flakes``. When ``log`` is a
    path, each attempt appends ``"start <unit> <attempt>"`` when it starts and ``"end ..."``
    when it ends, so the file's line order is the order in which those events happened.
    """
    return partial(
        _dag_unit, log=log, i=i, dependencies=tuple(dependencies), fails=fails, flakes=flakes
    )


def _dag_unit(
    ctx: Any, *, log: str | None, i: int, dependencies: tuple[str, ...], fails: bool, flakes: bool
) -> int:
    if log is not None:
        append(log, f"start {ctx.unit_id} {ctx.attempt}")
    try:
        if fails:
            raise ValueError(f"{ctx.unit_id} fails")
        if flakes and ctx.attempt == 1:
            raise ConnectionError(f"{ctx.unit_id} flakes")
        return value_of(i, [ctx[d] for d in dependencies])
    finally:
        if log is not None:
            append(log, f"end {ctx.unit_id} {ctx.attempt}")


# -- files -----------------------------------------------------------------------------------


def append(path: str, line: str) -> None:
    """Append one line to ``path`` with a single O_APPEND write (atomic across processes)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


# -- exceptions that are not errors ----------------------------------------------------------


class CustomBaseException(BaseException):
    """A BaseException subclass of the user's own (importable by name in every worker)."""


BASE_EXCEPTIONS: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
    "CustomBaseException": CustomBaseException,
}


def raise_base_exception(name: str) -> partial[None]:
    """A unit raising the exception named ``name`` (a key of ``RAISABLE``)."""
    return partial(_raise_base_exception, name)


#: What ``raise_base_exception`` can raise: the above, and StopIteration (an Exception that
#: cannot be set on an asyncio future, issue 9 #1).
RAISABLE: dict[str, type[BaseException]] = {**BASE_EXCEPTIONS, "StopIteration": StopIteration}


def _raise_base_exception(name: str, ctx: Any) -> None:
    raise RAISABLE[name](f"{ctx.unit_id} raised it")


def async_raise_base_exception(name: str) -> partial[Any]:
    """An ``async def`` unit raising ``RAISABLE[name]`` after yielding to its loop once."""
    return partial(_async_raise_base_exception, name)


async def _async_raise_base_exception(name: str, ctx: Any) -> None:
    await asyncio.sleep(0)
    raise RAISABLE[name](f"{ctx.unit_id} raised it")


# -- decisions (test_contract_dynamic.py) ----------------------------------------------------


def logged(path: str, value: Any) -> partial[Any]:
    """A unit that appends its name to ``path`` (proof that it ran) and returns ``value``."""
    return partial(_logged, path, value)


def _logged(path: str, value: Any, ctx: Any) -> Any:
    append(path, ctx.unit_id)
    return value


def skip_with(reason: str, path: str | None = None) -> partial[Any]:
    """A unit that calls ``ctx.skip(reason)`` (after noting in ``path`` that it ran)."""
    return partial(_skip_with, reason, path)


def _skip_with(reason: str, path: str | None, ctx: Any) -> Any:
    if path is not None:
        append(path, f"{ctx.unit_id} {ctx.attempt}")
    ctx.skip(reason)


def seen(ctx: Any) -> dict[str, Any]:
    """What a unit saw: its dependencies' results and the names in ``upstream_errors``."""
    return {
        "results": dict(ctx.unit_results),
        "upstream_errors": sorted(ctx.upstream_errors),
    }


def fail_with(message: str) -> partial[Any]:
    """A unit raising ``ValueError(message)``."""
    return partial(_fail_with, message)


def _fail_with(message: str, ctx: Any) -> Any:
    raise ValueError(message)


def wait_for_file(path: str, value: Any) -> partial[Any]:
    """A unit that returns ``value`` once ``path`` exists or it is cancelled (<= 30 s)."""
    return partial(_wait_for_file, path, value)


def _wait_for_file(path: str, value: Any, ctx: Any) -> Any:
    deadline = time.monotonic() + 30
    while not Path(path).exists() and not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)


def async_sleep(seconds: float, value: Any) -> partial[Any]:
    """An ``async def`` unit sleeping ``seconds`` on the loop, then returning ``value``."""
    return partial(_async_sleep, seconds, value)


async def _async_sleep(seconds: float, value: Any, ctx: Any) -> Any:
    await asyncio.sleep(seconds)
    return value


# -- map items --------------------------------------------------------------------------------


def tagged_item(tag: str) -> partial[str]:
    """A map item returning ``"<tag>:<index>:<item>"``; when the context has ``"order"`` (a
    file path), it first appends its unit name there, so a test sees the order items ran in."""
    return partial(_tagged_item, tag)


def _tagged_item(tag: str, ctx: Any) -> str:
    if "order" in ctx:
        append(ctx["order"], ctx.unit_id)
    return f"{tag}:{ctx.index}:{ctx.item}"


def item_times(n: int) -> partial[Any]:
    """A map item returning ``ctx.item * n``; it raises ValueError for an item that is 0."""
    return partial(_item_times, n)


def _item_times(n: int, ctx: Any) -> Any:
    if ctx.item == 0:
        raise ValueError("item 0 is refused")
    return ctx.item * n


def item_view(ctx: Any) -> dict[str, Any]:
    """A map item returning what it sees: its item, index, and declared dependencies."""
    return {"item": ctx.item, "index": ctx.index, "sees": sorted(ctx.unit_results)}


def flaky_item(ctx: Any) -> str:
    """A map item that fails its first attempt when its item is odd."""
    if ctx.item % 2 and ctx.attempt < 2:
        raise ConnectionError(f"attempt {ctx.attempt}")
    return f"{ctx.item} on {ctx.attempt}"


def quorum_member(gate: str) -> partial[str]:
    """A map item: returns ``"fast:<index>"`` at once for a "fast" item; a "slow" one waits
    (up to 20 s) for ``gate`` to exist, checking ``ctx.cancelled`` so a thread stops early."""
    return partial(_quorum_member, gate)


def _quorum_member(gate: str, ctx: Any) -> str:
    if ctx.item == "slow":
        deadline = time.monotonic() + 20
        while not Path(gate).exists() and time.monotonic() < deadline and not ctx.cancelled:
            time.sleep(0.01)
    return f"{ctx.item}:{ctx.index}"


class NotAnError(BaseException):
    """A ``BaseException`` that is neither ``KeyboardInterrupt`` nor ``SystemExit``."""


class Paged:
    """An iterable that yields ``good`` items, then raises ``raises`` (ConnectionError: a page
    that failed).

    Picklable (it crosses back from a worker process), and lazy: a map reading it reads
    one element at a time, so a map with ``max_items`` below ``good`` must stop early.
    """

    def __init__(self, good: int, raises: type[BaseException] = ConnectionError) -> None:
        self.good = good
        self.raises = raises

    def __iter__(self) -> Any:
        yield from range(self.good)
        raise self.raises(f"page {self.good + 1} failed")


def fail_first_item(seconds: float) -> partial[Any]:
    """A map item: item 0 raises at once; the others sleep ``seconds`` and return their item."""
    return partial(_fail_first_item, seconds)


def _fail_first_item(seconds: float, ctx: Any) -> Any:
    if ctx.index == 0:
        raise ValueError("the first item fails")
    time.sleep(seconds)
    return ctx.item


class UnprintableError(Exception):
    """An error whose ``str()`` raises, as a buggy ``__str__`` of user code does."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def raise_unprintable(ctx: Any) -> None:
    raise UnprintableError


# -- instruments -----------------------------------------------------------------------------


class InterruptOnFirstRunStart(Instrument):
    """Raises KeyboardInterrupt from the first ``run_started`` it sees: a run its backend
    claimed and that is let go of before it is driven."""

    def __init__(self) -> None:
        self.armed = True

    def run_started(self, event: Any) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
