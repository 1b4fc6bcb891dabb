"""Streaming as user code meets it: stream(), astream() and their records.

Checked by ``make check`` (mypy), never run: pytest does not collect ``tests/typing/``.
"""

from __future__ import annotations

from typing import Any, assert_type

from quantum_partitioner import (
    AsyncResultStream,
    ExecutionMode,
    QuantumPartitioner,
    ResultStream,
    UnitResult,
    UnitState,
)

p = QuantumPartitioner(max_workers=4)
p.add_unit(lambda ctx: 1, name="one")

assert_type(p.stream({}, execution_mode=ExecutionMode.THREAD), ResultStream)
with p.stream({}, execution_mode="thread", raise_on_error=True) as results:
    for done in results:
        assert_type(done, UnitResult)
        assert_type(done.name, str)
        assert_type(done.state, UnitState)
        assert_type(done.ok, bool)
        assert_type(done.result, Any)
        assert_type(done.error, BaseException | None)
        assert_type(done.attempts, int)
        assert_type(done.start_time, float | None)
        assert_type(done.end_time, float | None)
        if done.ok:
            break
    results.close()

for done in p.stream(strategy="resource_balanced"):
    assert_type(done, UnitResult)


async def quorum() -> list[Any]:
    """``async with`` / ``async for`` over astream()."""
    stream = p.astream({}, raise_on_error=False)
    assert_type(stream, AsyncResultStream)
    async with stream as records:
        return [done.result async for done in records if done.ok]
