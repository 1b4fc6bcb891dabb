"""The ``unitcost`` section: the cost of a unit in every mode, each beside its reference.

One row per part of a unit's cost, each measured in the same run as a reference that does
the same work with nothing but the standard library (or Dask), so that the ratio cancels
most of the drift of a small shared machine. Every row prints our figure, the reference's,
the ratio and the target (a ratio, or an absolute bound where the reference is only shown):

* ``add_unit``: building N no-op units (fanout) against a dict ``{name: (fn, *deps)}``.
* ``add_units``: the same graph in one call, from a ``{name: (fn, deps)}`` mapping made
  beforehand (the user's own mapping is not counted), against the same dict build.
* SEQUENTIAL execute against a ``graphlib.TopologicalSorter.static_order()`` loop with the
  same bookkeeping (a result and a state per unit, each unit handed its dependencies'
  results by name), on fanout, chain and layered.
* THREAD (4) execute against a minimal 4-thread dataflow loop: one lock, one condition,
  a count of unfinished dependencies per unit and a ready list.
* PROCESS (2), CPU-bound units (32 x 50 ms by default; ``--quick``: 8 x 20 ms): the
  speed-up over SEQUENTIAL with a fresh pool per run and with reused workers, beside a warm
  ``ProcessPoolExecutor(2)`` mapping the same work.
* PROCESS (2), no-op units (``--process-n``): µs per unit on reused (warm) workers against
  ``ProcessPoolExecutor.submit`` on a warm pool; a fresh-pool run is shown too.
* PROCESS worker start: a 1-unit PROCESS (1) run minus a 1-unit SEQUENTIAL run, against
  a bare interpreter importing the unit's module (``python -c "import MODULE"``); once
  with the unit in a module that imports nothing, once in this module, which imports much.
  A worker imports the modules of a run's functions before it is ready, as any process
  pool's worker does to unpickle them: that is the user's cost, so the target is 45 ms
  *beyond those imports* (the reference minus ``python -c pass``), see
  :func:`rows_worker_start`.
* ASYNC, ``async def`` units awaiting ``sleep(0)``, against the hand-written dataflow (a
  task per unit awaiting its dependencies' tasks, one ``asyncio.run``).
* The cache: a cold SQLite run (THREAD (4), every unit cacheable and stored), a warm one
  (every unit a hit), and building the cacheable graph (one shared function; distinct
  closures of one function), each against the same thing without a cache. A cold sample is
  the first run of a graph built and compiled beforehand, beside the first run of a plain
  graph made the same way; the read times a warm run leaves to the store's writer thread
  are let finish between samples, untimed.
* Memory: the RSS growth of building and executing 100,000 units (fanout, SEQUENTIAL), in
  a fresh interpreter each, against ``dask.get`` on the same graph.

Samples of a row and its reference are interleaved; each figure is a median. To keep the
section near two minutes, the slower rows take fewer samples (the table says how many).
Verdicts are informational, as everywhere in ``make bench``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import light_units
import report
from shapes import SHAPES, fanout
from workloads import burn, calibrate_burn

if TYPE_CHECKING:
    from collections.abc import Callable

    from sections import Options

THREADS = 4
PROCESSES = 2
CPU_UNITS, QUICK_CPU_UNITS = 32, 8
#: Rounds of the PROCESS speed-up rows (each: SEQUENTIAL, fresh, reused, the pool).
CPU_ROUNDS = 3
#: A unit that got less of a CPU than this ran on a busy machine.
BUSY_SHARE = 0.85
MEMORY_UNITS = 100_000
#: What a worker's start may cost beyond importing its unit's module (ms).
WORKER_START_MS = 45
BENCH_DIR = Path(__file__).resolve().parent


def _noop(ctx: Any) -> None:
    return None


async def _async_yield(ctx: Any) -> None:
    await asyncio.sleep(0)


def _pool_noop() -> None:
    return None


def _api() -> Any:
    import quantum_partitioner  # noqa: PLC0415 - the measured library, imported late

    return quantum_partitioner


@dataclass
class Row:
    """One printed row: our figure, the reference's, and the target."""

    what: str
    ours: float | None
    reference: float | None
    unit: str
    target: str
    meets: bool | None
    samples: str = ""
    #: The samples were disturbed (a busy machine): the verdict says NOISY.
    noisy: bool = False
    #: A line printed under the table.
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference


def _median_pair(
    first: Callable[[], Any],
    second: Callable[[], Any],
    repeat: int,
    settle: Callable[[], Any] | None = None,
) -> tuple[float, float]:
    """Median seconds of two callables, one warm-up each, samples interleaved.

    ``settle``, untimed, runs after each call of ``first``: it waits for what ``first``
    left running in the background, so that its cost does not land in ``second``'s sample.
    """
    a: list[float] = []
    b: list[float] = []
    for sample in range(repeat + 1):  # the first round is the warm-up
        for function, into in ((first, a), (second, b)):
            started = time.perf_counter()
            # Kept until the clock is read: what a callable built is freed outside its
            # sample (a user keeps the graph they build; freeing it is not building it).
            kept = function()
            elapsed = time.perf_counter() - started
            del kept
            if sample:
                into.append(elapsed)
            if settle is not None and function is first:
                settle()
    return statistics.median(a), statistics.median(b)


# -- the references -------------------------------------------------------------------------


def graphlib_sequential(deps: dict[str, list[str]], function: Callable[..., Any]) -> dict[str, Any]:
    """``static_order()`` with the bookkeeping a run keeps: a result and a state per unit."""
    results: dict[str, Any] = {}
    states: dict[str, str] = {}
    for name in TopologicalSorter(deps).static_order():
        states[name] = "running"
        results[name] = function({dep: results[dep] for dep in deps[name]})
        states[name] = "completed"
    return results


def thread_dataflow(
    deps: dict[str, list[str]], function: Callable[..., Any], workers: int
) -> dict[str, Any]:
    """A minimal dataflow on ``workers`` threads: one lock, a ready list, dependency counts."""
    waiting = {name: len(names) for name, names in deps.items()}
    users: dict[str, list[str]] = {name: [] for name in deps}
    for name, names in deps.items():
        for dep in names:
            users[dep].append(name)
    ready = deque(name for name, count in waiting.items() if not count)
    results: dict[str, Any] = {}
    lock = threading.Lock()
    wake = threading.Condition(lock)
    left = [len(deps)]

    def work() -> None:
        while True:
            with wake:
                while not ready and left[0]:
                    wake.wait()
                if not left[0]:
                    return
                name = ready.popleft()
            value = function({dep: results[dep] for dep in deps[name]})
            with wake:
                results[name] = value
                left[0] -= 1
                woken = 0
                for user in users[name]:
                    waiting[user] -= 1
                    if not waiting[user]:
                        ready.append(user)
                        woken += 1
                if not left[0]:
                    wake.notify_all()
                elif woken:
                    wake.notify(woken)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


async def _task_dataflow(deps: dict[str, list[str]]) -> dict[str, Any]:
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def unit(dep_tasks: list[asyncio.Task[Any]], names: list[str]) -> Any:
        values = [await task for task in dep_tasks]
        return await _async_yield(dict(zip(names, values, strict=True)))

    for name, names in deps.items():
        tasks[name] = asyncio.create_task(unit([tasks[dep] for dep in names], names))
    values = await asyncio.gather(*tasks.values())
    return dict(zip(tasks, values, strict=True))


def asyncio_dataflow(deps: dict[str, list[str]]) -> dict[str, Any]:
    """The hand-written asyncio dataflow, under one ``asyncio.run`` as ``execute`` does."""
    return asyncio.run(_task_dataflow(deps))


# -- building the project's graphs ----------------------------------------------------------


def build(
    deps: dict[str, list[str]], function: Any = _noop, *, cls: Any = None, **kwargs: Any
) -> Any:
    """A partitioner (``cls``, default QuantumPartitioner) holding ``deps``."""
    cls = cls or _api().QuantumPartitioner
    partitioner = cls(max_workers=THREADS, **kwargs)
    for name, names in deps.items():
        partitioner.add_unit(function, dependencies=names, name=name)
    return partitioner


def build_each(
    deps: dict[str, list[str]],
    functions: list[Any],
    metadata: dict[str, Any] | None = None,
    *,
    cls: Any = None,
    **kwargs: Any,
) -> Any:
    """A partitioner (``cls``, default QuantumPartitioner) whose unit k runs ``functions[k]``."""
    partitioner = (cls or _api().QuantumPartitioner)(max_workers=THREADS, **kwargs)
    for (name, names), function in zip(deps.items(), functions, strict=True):
        partitioner.add_unit(function, dependencies=names, name=name, metadata=metadata)
    return partitioner


def build_cacheable(deps: dict[str, list[str]], functions: list[Any], **kwargs: Any) -> Any:
    """A caching partitioner whose units are all cacheable; unit k runs ``functions[k]``.

    Its reference is ``build_each(deps, functions)``: the same units, by the same loop,
    without a cache.
    """
    cls = _api().CachingQuantumPartitioner
    return build_each(deps, functions, {"cacheable": True}, cls=cls, **kwargs)


def _closure(k: int) -> Any:
    def unit(ctx: Any) -> int:
        return k

    return unit


# -- the rows ------------------------------------------------------------------------------


def _build_row(what: str, build_graph: Callable[[], Any], n: int, bound: float, repeat: int) -> Row:
    """Building the fanout of ``n`` units with ``build_graph`` beside a dict build of it."""
    deps = fanout(n).deps
    function = _noop
    ours, ref = _median_pair(
        build_graph, lambda: {k: (function, *v) for k, v in deps.items()}, repeat
    )
    us = ours / len(deps) * 1e6
    return Row(
        what, us, ref / len(deps) * 1e6, "us/unit", f"<= {bound:g} us", us <= bound, f"{repeat}"
    )


def row_add_unit(n: int, repeat: int) -> Row:
    deps = fanout(n).deps
    return _build_row("add_unit (fanout)", lambda: build(deps), n, 2.5, repeat)


def row_add_units(n: int, repeat: int) -> Row:
    # The mapping is the user's own: made before the timing.
    units = {name: (_noop, names) for name, names in fanout(n).deps.items()}
    cls = _api().QuantumPartitioner

    def bulk() -> None:
        cls(max_workers=THREADS).add_units(units)

    return _build_row("add_units (fanout, one mapping)", bulk, n, 1.0, repeat)


def row_mode(mode: str, shape: str, n: int, repeat: int) -> Row:
    spec = SHAPES[shape](n)
    execution_mode = _api().ExecutionMode[mode]
    if mode == "ASYNC":
        partitioner = build(spec.deps, _async_yield)
        ref: Callable[[], Any] = functools.partial(asyncio_dataflow, spec.deps)
        target, label = 1.3, "ASYNC sleep(0)"
    elif mode == "THREAD":
        partitioner = build(spec.deps)
        ref = functools.partial(thread_dataflow, spec.deps, dict, THREADS)
        target, label = 2.0, f"THREAD ({THREADS})"
    else:
        partitioner = build(spec.deps)
        ref = functools.partial(graphlib_sequential, spec.deps, dict)
        target, label = 1.3, "SEQUENTIAL"
    ours, theirs = _median_pair(
        lambda: partitioner.execute({}, execution_mode=execution_mode), ref, repeat
    )
    per = len(spec.deps) / 1e6
    ratio = ours / theirs
    return Row(
        f"{label} ({shape})",
        ours / per,
        theirs / per,
        "us/unit",
        f"<= {target:g}x",
        ratio <= target,
        f"{repeat}",
    )


def rows_process_cpu(options: Options) -> list[Row]:
    """Speed-ups over SEQUENTIAL, each the median of per-round ratios.

    One round times SEQUENTIAL, a fresh pool, reused workers and the warm
    ``ProcessPoolExecutor`` back to back, so each ratio compares runs made under the same
    load of a shared machine (a lone SEQUENTIAL sample taken during a spike gave speed-ups
    above the number of workers). Every unit returns the CPU time it used: a run whose units
    got much less than a whole CPU each ran on a busy machine, and the row says so.
    """
    units = QUICK_CPU_UNITS if options.n < 10_000 else CPU_UNITS
    cpu_ms = options.cpu_ms
    calibration = calibrate_burn(cpu_ms / 1000)
    work = functools.partial(light_units.timed_burn, calibration.loops)
    deps = fanout(units).deps
    deps.pop("sink")
    api = _api()
    sequential = build(deps, work)
    fresh = build(deps, work)
    reused = build(deps, work)
    backend = api.backends.ProcessBackend(PROCESSES, reuse=True)
    cpu_shares: list[float] = []

    def timed(function: Callable[[], Any]) -> float:
        started = time.perf_counter()
        results = function()
        wall = time.perf_counter() - started
        if isinstance(results, dict):  # ours: each unit's (CPU seconds, wall seconds)
            cpu_shares.append(
                sum(c for c, _ in results.values()) / sum(w for _, w in results.values())
            )
        return wall

    runs: list[Callable[[], Any]] = [
        lambda: sequential.execute({}, execution_mode="SEQUENTIAL"),
        lambda: fresh.execute({}, execution_mode="PROCESS", max_workers=PROCESSES),
        lambda: reused.execute({}, backend=backend),
    ]
    with concurrent.futures.ProcessPoolExecutor(PROCESSES) as pool:
        runs.append(lambda: list(pool.map(burn, [calibration.loops] * units)))
        runs[-1]()  # warm: the workers are up
        runs[2]()  # warm-up of the reused workers
        rounds = [[timed(run) for run in runs] for _ in range(CPU_ROUNDS)]
    backend.close()
    seq_s = [r[0] for r in rounds]
    fresh_x, reused_x, pool_x = (
        statistics.median(s / r[k] for s, r in zip(seq_s, rounds, strict=True)) for k in (1, 2, 3)
    )
    what = f"PROCESS ({PROCESSES}) speed-up, {units} x {cpu_ms:g} ms"
    share = min(cpu_shares)
    note = (
        f"PROCESS speed-ups: SEQUENTIAL took {statistics.median(seq_s):.2f} s (median) for "
        f"{units} units; the units got {share:.0%} to {max(cpu_shares):.0%} of a CPU (their "
        "CPU time over their wall time)"
        + (", a busy machine: the speed-ups are unreliable" if share < BUSY_SHARE else "")
    )
    rows = []
    for label, speedup, target in (("fresh pool", fresh_x, 1.75), ("reused", reused_x, 1.85)):
        rows.append(
            Row(
                f"{what}, {label}",
                speedup,
                pool_x,
                "x",
                f">= {target:g}x",
                speedup >= target,
                f"{CPU_ROUNDS}",
                # More than PROCESSES times faster cannot be: the samples were disturbed.
                noisy=speedup > PROCESSES * 1.02 or share < BUSY_SHARE,
            )
        )
    rows[0].note = note
    return rows


def rows_process_noop(options: Options) -> list[Row]:
    n = options.process_n
    deps = fanout(n).deps
    api = _api()
    reused = build(deps)
    fresh = build(deps)
    backend = api.backends.ProcessBackend(PROCESSES, reuse=True)
    repeat = 3
    with concurrent.futures.ProcessPoolExecutor(PROCESSES) as pool:

        def submit_all() -> None:
            futures = [pool.submit(_pool_noop) for _ in range(len(deps))]
            for future in futures:
                future.result()

        ours, ref = _median_pair(lambda: reused.execute({}, backend=backend), submit_all, repeat)
        fresh_s, _ = _median_pair(
            lambda: fresh.execute({}, execution_mode="PROCESS", max_workers=PROCESSES),
            lambda: None,
            1,
        )
    backend.close()
    per = len(deps) / 1e6
    ratio = ours / ref
    return [
        Row(
            f"PROCESS ({PROCESSES}) no-op, reused workers ({n:,})",
            ours / per,
            ref / per,
            "us/unit",
            "<= 1.5x",
            ratio <= 1.5,
            f"{repeat}",
        ),
        Row(
            f"PROCESS ({PROCESSES}) no-op, fresh pool ({n:,})",
            fresh_s / per,
            ref / per,
            "us/unit",
            "(shown)",
            None,
            "1",
        ),
    ]


def rows_worker_start(repeat: int) -> list[Row]:
    """A 1-unit PROCESS (1) run minus a 1-unit SEQUENTIAL run, beside a bare interpreter
    importing the unit's module.

    Twice: with the unit in a module that imports nothing (the worker's own start-up), and
    in this module, which imports much. A worker imports the module of a run's functions
    before it is ready, and so does any process pool's worker (to unpickle the function):
    that import is the user's cost, not the worker's. So the reference is
    ``python -c "import MODULE"`` with the module's directory on the path, and the target
    is an allowance *beyond those imports* (the reference minus ``python -c pass``): 45 ms
    for the worker's own start-up, its hand-off and its exit, whatever the module imports.
    An allowance, not a ratio: the worker's own cost does not grow with the module's
    imports, and a ratio would let a slow worker hide behind a heavy module.
    """
    api = _api()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), *sys.path])}

    def interpreter(code: str) -> Callable[[], None]:
        return lambda: subprocess.run([sys.executable, "-c", code], check=True, env=env)

    rows = []
    for function, label in (
        (light_units.noop, "its module imports nothing"),
        (_noop, "its module imports much"),
    ):
        one = build({"u0": []}, function)

        def process_run(one: Any = one) -> None:
            one.execute({}, execution_mode=api.ExecutionMode.PROCESS, max_workers=1)

        def sequential_run(one: Any = one) -> None:
            one.execute({}, execution_mode=api.ExecutionMode.SEQUENTIAL)

        imports_s, bare_s = _median_pair(
            interpreter(f"import {function.__module__}"), interpreter("pass"), repeat
        )
        process_s, sequential_s = _median_pair(process_run, sequential_run, repeat)
        ms = (process_s - sequential_s) * 1e3
        imports_ms = max(0.0, imports_s - bare_s) * 1e3
        rows.append(
            Row(
                f"PROCESS worker start (1-unit run), {label}",
                ms,
                imports_s * 1e3,
                "ms",
                f"<= 45 ms + {imports_ms:.0f}",
                ms <= WORKER_START_MS + imports_ms,
                f"{repeat}",
                note=(
                    f"Worker start, {label}: {ms:.1f} ms, {ms - imports_ms:.1f} ms beyond "
                    f"its imports ({function.__module__}: a bare interpreter takes "
                    f"{bare_s * 1e3:.1f} ms, {imports_s * 1e3:.1f} ms importing it)"
                ),
            )
        )
    return rows


def rows_cache(n: int, repeat: int, directory: Path) -> list[Row]:
    deps = fanout(n).deps
    plain = build(deps)
    shared = [_noop] * len(deps)
    counter = iter(range(1_000_000))

    def fresh_path() -> Path:
        return directory / f"cold-{next(counter)}.sqlite"

    def cold_run() -> None:
        partitioner = cold_graphs.pop()
        partitioner.execute({}, execution_mode="THREAD")
        partitioner.close()
        ran.append(partitioner)  # freed after the row, not in a sample

    def first_plain_run() -> None:
        partitioner = plain_graphs.pop()
        partitioner.execute({}, execution_mode="THREAD")
        ran.append(partitioner)

    # Cold: a graph on an empty store per sample, built and compiled outside the timing,
    # beside the first run of a plain graph built and compiled the same way: both pay the
    # one-time work of a graph's first run (its priority order, ranks, coroutine flags).
    cold_graphs = [
        build_cacheable(deps, shared, cache_path=fresh_path()) for _ in range(repeat + 1)
    ]
    ran: list[Any] = []
    plain_graphs = [build(deps) for _ in range(repeat + 1)]
    for graph in cold_graphs + plain_graphs:
        graph.build_execution_plan()
    cold_s, plain_s = _median_pair(cold_run, first_plain_run, repeat)
    plain_run = functools.partial(plain.execute, {}, execution_mode="THREAD")
    plain_run()  # compiled by a first run, as the warm graph below is
    warm = build_cacheable(deps, shared, cache_path=fresh_path())
    warm.execute({}, execution_mode="THREAD")
    # A warm run leaves its read times to the store's writer thread: let it finish, untimed.
    warm_s, plain_s2 = _median_pair(
        functools.partial(warm.execute, {}, execution_mode="THREAD"),
        plain_run,
        repeat,
        settle=warm.cache_entries,
    )
    warm.close()
    closures = [_closure(k) for k in range(len(deps))]
    # Each beside the same units without a cache: a plain build of the distinct closures
    # reads as many function objects as the cached one (one shared function reads one).
    build_shared, build_plain = _median_pair(
        lambda: build_cacheable(deps, shared), lambda: build_each(deps, shared), repeat
    )
    build_closures, build_plain2 = _median_pair(
        lambda: build_cacheable(deps, closures), lambda: build_each(deps, closures), repeat
    )

    # add_unit leaves the digest of a closure of a code seen before to the first run (see
    # CachingQuantumPartitioner._admit): a build and its cold run together show the whole.
    def closures_and_cold_run() -> Any:
        partitioner = build_cacheable(deps, closures, cache_path=fresh_path())
        partitioner.execute({}, execution_mode="THREAD")
        partitioner.close()
        return partitioner  # freed outside the sample

    def plain_build_and_first_run() -> Any:
        partitioner = build_each(deps, closures)
        partitioner.execute({}, execution_mode="THREAD")
        return partitioner

    total_closures, total_plain = _median_pair(
        closures_and_cold_run, plain_build_and_first_run, repeat
    )
    per = len(deps) / 1e6
    rows = []
    for what, ours, ref, target in (
        (f"cache cold run, SQLite, THREAD ({THREADS})", cold_s, plain_s, 2.0),
        (f"cache warm run (all hits), THREAD ({THREADS})", warm_s, plain_s2, 1.5),
        ("cache build, one shared function", build_shared, build_plain, 1.5),
        ("cache build, distinct closures", build_closures, build_plain2, 1.5),
    ):
        rows.append(
            Row(
                what,
                ours / per,
                ref / per,
                "us/unit",
                f"<= {target:g}x",
                ours / ref <= target,
                f"{repeat}",
            )
        )
    rows.append(
        Row(
            f"cache build + cold run, distinct closures, SQLite, THREAD ({THREADS})",
            total_closures / per,
            total_plain / per,
            "us/unit",
            "(shown)",
            None,
            f"{repeat}",
        )
    )
    return rows


_RSS_CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
from shapes import fanout
from workloads import noop
deps = fanout({n}).deps
which = {which!r}
if which == "dask":
    import dask
    graph = {{k: (noop, *v) for k, v in deps.items()}}
    before = rss()
    results = dask.get(graph, list(deps))
else:
    import quantum_partitioner as qp
    before = rss()
    p = qp.QuantumPartitioner()
    for name, names in deps.items():
        p.add_unit(noop, dependencies=names, name=name)
    results = p.execute({{}}, execution_mode="SEQUENTIAL")
after = rss()
print(json.dumps((after - before) / len(deps)))
"""


def row_memory(n: int) -> Row:
    def measure(which: str) -> float:
        code = _RSS_CHILD.format(bench=str(BENCH_DIR), n=n, which=which)
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        return float(json.loads(done.stdout.strip().splitlines()[-1]))

    ours, dask_b = measure("project"), measure("dask")
    return Row(
        f"RSS growth, {n:,} units (fanout, SEQUENTIAL)",
        ours,
        dask_b,
        "B/unit",
        "<= 800 B",
        ours <= 800,
        "1",
    )


# -- the section ---------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "B/unit":
        return f"{value:,.0f} B"
    return report.format_us(value)


def _verdict(row: Row) -> str:
    if row.meets is None:
        return ""
    if row.noisy:
        return "NOISY"
    return "PASS" if row.meets else "MISS"


class UnitCostSection:
    """See the module docstring."""

    name = "unitcost"
    title = "Cost of a unit in every mode, each beside its reference"

    def run(self, options: Options) -> bool:
        """Measure every row, print the table; False if a measurement failed."""
        n = options.n
        repeat = max(3, options.repeat)
        quick = n < 10_000
        memory_n = min(options.memory_n, MEMORY_UNITS)
        rows: list[Row] = []
        ok = True
        with tempfile.TemporaryDirectory() as tmp:
            steps: list[Callable[[], list[Row]]] = [
                lambda: [row_add_unit(n, repeat)],
                lambda: [row_add_units(n, repeat)],
                *(
                    functools.partial(lambda m, s: [row_mode(m, s, n, repeat)], mode, shape)
                    for mode in ("SEQUENTIAL", "THREAD")
                    for shape in ("fanout", "chain", "layered")
                ),
                *(
                    functools.partial(lambda s: [row_mode("ASYNC", s, n, 3)], shape)
                    for shape in ("fanout", "layered")
                ),
                lambda: rows_process_cpu(options),
                lambda: rows_process_noop(options),
                lambda: rows_worker_start(5),
                lambda: rows_cache(n, 3, Path(tmp)),
                lambda: [row_memory(memory_n)],
            ]
            for step in steps:
                try:
                    made = step()
                except Exception:
                    traceback.print_exc()
                    ok = False
                    continue
                for row in made:
                    print(
                        f"  {row.what:50} {_fmt(row.ours, row.unit)}", file=sys.stderr, flush=True
                    )
                rows.extend(made)
        print(
            f"\n{self.title}: N={n:,} no-op units unless said"
            + (" (--quick: smaller graphs)" if quick else "")
            + "; median of the samples shown, interleaved with the reference's\n"
        )
        header = ["what", "ours", "reference", "ratio", "target", "verdict", "samples"]
        table = [
            [
                row.what,
                _fmt(row.ours, row.unit),
                _fmt(row.reference, row.unit),
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                row.target,
                _verdict(row),
                row.samples,
            ]
            for row in rows
        ]
        print(report.format_table(header, table))
        for row in rows:
            if row.note:
                print(f"\n{row.note}")
        print(
            "\nReferences: a dict build; graphlib static_order() loop with a result and a state"
            "\nper unit; a 4-thread dataflow with one lock; ProcessPoolExecutor(2) warm (its"
            "\nspeed-up, and submit per unit); python -c 'import MODULE'; a task-per-unit asyncio"
            "\ndataflow; the same run or build without a cache; dask.get's RSS growth on the same"
            "\ngraph."
            "\nSpeed-up rows: ours and the reference are speed-ups over SEQUENTIAL; the target is"
            "\non ours. The worker start is a 1-unit PROCESS (1) run minus a 1-unit SEQUENTIAL run;"
            "\nits target allows 45 ms beyond the module's imports (reference - python -c pass)."
        )
        return ok


UNIT_COST_SECTION = UnitCostSection()
