"""A program for test_cache_resume.py: runs cached graphs in a process of its own.

Usage:

* ``python _cache_program.py resume STORE LOG GATE MODE``: the chain
  ``a -> (b1, b2) -> c -> d -> e`` with every unit cacheable in the SQLite store ``STORE``.
  Each unit appends its name to ``LOG`` when it starts; ``d`` first waits until the results
  upstream of it are committed, and after logging until the file ``GATE`` exists. Prints
  one JSON line ``{"results": ..., "hits": ..., "misses": ...}``.
* ``python _cache_program.py map STORE LOG BROKEN MODE``: ``plan`` returns four documents,
  ``tool`` maps over it (its item ``BROKEN``, unless ``-``, raises), ``summary`` maps over
  ``tool`` item by item, ``answer`` joins the summaries; every unit is cacheable and logs
  ``name:item`` when it starts. Prints the same JSON line.
* ``python _cache_program.py share STORE N BARRIER PARTIES``: ``N`` independent cacheable
  units in THREAD mode. Before running, the program creates a file in the directory
  ``BARRIER`` and waits until ``PARTIES`` files are there, so that several copies write the
  store at the same time. Prints the same JSON line.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
import uuid
from pathlib import Path

from quantum_partitioner import CachingQuantumPartitioner, ExecutionMode


def log_start(ctx):
    """Append this unit's name to the log, one line per start (O_APPEND: whole lines)."""
    with Path(ctx["log"]).open("a", encoding="utf-8") as log:
        log.write(ctx.unit_id + "\n")


def wait_until_stored(store: str, units: list[str]) -> None:
    """Wait until the store file holds an entry of each of ``units`` (at most 10 s).

    The store commits a result within a transaction's time of its unit completing (the
    bound docs/caching.md states), not before its dependents start: ``d`` waits for that
    before it logs, so that the kill comes after the bound for everything upstream of it.
    """
    deadline = time.monotonic() + 10
    query = f"SELECT count(DISTINCT unit) FROM entries WHERE unit IN ({','.join('?' * len(units))})"
    while True:
        with contextlib.closing(sqlite3.connect(store, timeout=10)) as db:
            if db.execute(query, units).fetchone()[0] == len(units):
                return
        if time.monotonic() > deadline:
            msg = f"the results of {units} were not committed within 10 s"
            raise TimeoutError(msg)
        time.sleep(0.005)


def unit(ctx):
    """Log, wait at the gate if this is ``d``, then combine the dependencies' results."""
    if ctx.unit_id == "d":
        wait_until_stored(ctx["store"], ["a", "b1", "b2", "c"])
    log_start(ctx)
    if ctx.unit_id == "d":
        while not Path(ctx["gate"]).exists():  # the test kills the process here
            time.sleep(0.01)
    upstream = ctx.unit_results
    return [ctx.unit_id, ctx["base"], [upstream[name] for name in sorted(upstream)]]


def square(ctx):
    """A small result per unit."""
    return int(ctx.unit_id[1:]) ** 2


def resume(store: str, log: str, gate: str, mode: str) -> dict[str, object]:
    """Run the chain once (it blocks at ``d`` until the gate exists)."""
    graph = {"a": [], "b1": ["a"], "b2": ["a"], "c": ["b1", "b2"], "d": ["c"], "e": ["d"]}
    with CachingQuantumPartitioner(max_workers=2, cache_path=store) as p:
        for name, deps in graph.items():
            # The result depends on "base" only: the paths are not inputs.
            p.add_unit(unit, deps, name=name, metadata={"cacheable": True, "cache_keys": ["base"]})
        results = p.execute(
            {"base": 7, "log": log, "gate": gate, "store": store},
            execution_mode=ExecutionMode(mode),
            raise_on_error=True,
        )
        return {"results": results, "hits": p.cache_hits, "misses": p.cache_misses}


def map_unit(ctx):
    """Log ``map:item``; fail on the broken item; else tag the item with the map's name."""
    with Path(ctx["log"]).open("a", encoding="utf-8") as log:
        log.write(f"{ctx.unit_id.partition('[')[0]}:{ctx.item}\n")
    if ctx.item == ctx["broken"]:
        msg = f"{ctx.item} is broken"
        raise RuntimeError(msg)
    return f"{ctx.unit_id.partition('[')[0]}({ctx.item})"


def answer(ctx):
    """Log, then join the summaries."""
    log_start(ctx)
    return " ".join(ctx["summary"])


def mapped(store: str, log: str, broken: str, mode: str) -> dict[str, object]:
    """Run plan -> tool (a map) -> summary (item-wise) -> answer once."""
    no_context: dict[str, object] = {"cacheable": True, "cache_keys": []}
    with CachingQuantumPartitioner(max_workers=2, cache_path=store) as p:
        p.add_unit(lambda ctx: ["a", "b", "c", "d"], name="plan", metadata=no_context)
        p.add_map(map_unit, over="plan", name="tool", metadata=no_context)
        p.add_map(map_unit, over="tool", name="summary", metadata=no_context)
        p.add_unit(answer, ["summary"], name="answer", metadata=no_context)
        results = p.execute({"log": log, "broken": broken}, execution_mode=ExecutionMode(mode))
        return {"results": results, "hits": p.cache_hits, "misses": p.cache_misses}


def share(store: str, n: int, barrier: str, parties: int) -> dict[str, object]:
    """Wait for the other parties, then run ``n`` cacheable units on threads."""
    with CachingQuantumPartitioner(max_workers=4, cache_path=store) as p:
        for i in range(n):
            p.add_unit(square, name=f"u{i}", metadata={"cacheable": True})
        Path(barrier, uuid.uuid4().hex).touch()
        deadline = time.monotonic() + 20
        while len(list(Path(barrier).iterdir())) < parties:
            if time.monotonic() > deadline:
                msg = "the other parties never reached the barrier"
                raise TimeoutError(msg)
            time.sleep(0.005)
        results = p.execute({}, execution_mode=ExecutionMode.THREAD, raise_on_error=True)
        stats = p.cache_stats()
        return {
            "results": results,
            "hits": stats.hits,
            "misses": stats.misses,
            "errors": stats.errors,
        }


def main() -> None:
    """Dispatch on the first argument."""
    command, *args = sys.argv[1:]
    if command == "resume":
        outcome = resume(*args)
    elif command == "map":
        outcome = mapped(*args)
    else:
        store, n, barrier, parties = args
        outcome = share(store, int(n), barrier, int(parties))
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
