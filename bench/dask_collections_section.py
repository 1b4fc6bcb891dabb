"""The ``collections`` section: Dask collections on ``quantum_partitioner.dask`` beside Dask.

Three computations, each built once with Dask's own API:

* ``array sum``: ``da.ones(10_000, chunks=1).sum()``, a 10,000-chunk array and its tree
  reduction;
* ``bag fold``: ``db.from_sequence(range(20_000), npartitions=2_000)`` mapped, filtered and
  folded;
* ``delayed chain``: 10,000 ``dask.delayed`` calls of ``inc``, each taking the one before.
  It is written as the graph such calls produce (one ``Task`` per call in a ``Delayed``):
  making 10,000 nested ``delayed()`` calls takes Dask itself over a minute, as each call
  merges its whole history.

The graph ``dask.compute(..., optimize_graph=False)`` would hand its scheduler is captured
once (materialised into a dict of task-spec nodes), then every row calls its scheduler's
``get(graph, keys)`` on that same graph: what is timed is the scheduler, from reading the
graph to returning the values, not Dask's graph construction, which is the same whatever
runs it. The graphs are not optimised because Dask's optimisation fuses each chunk's tasks
into one whose own run costs Dask 150 to 250 µs (it orders the fused subgraph every time),
and the schedulers' overhead would vanish in the noise of that; unfused, each task is one
chunk function of a few tens of µs at most. Rows: ``quantum_partitioner.dask`` in THREAD mode
(4 workers) and SEQUENTIAL, ``dask.threaded.get`` (4 workers), ``dask.get`` (synchronous),
and ``tasks alone``: the tasks called one after the other in a plain loop over a
precomputed topological order, which is what the tasks cost with no scheduler. Every run's
value is checked against the first one's.

Wall time per task is the median wall time divided by the graph's tasks; the *overhead* per
task is that minus the ``tasks alone`` time per task: what the scheduler adds. Rows run in
interleaved rounds (one run of each per round, rotating order), up to :data:`MAX_ROUNDS`,
and no new round starts once a computation has taken :data:`ROUND_BUDGET_S` seconds, which
keeps the section within about a minute on an idle 2-core machine (more when other jobs
share it).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import graphlib
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import add
from typing import TYPE_CHECKING, Any

import report
from harness import RunnerUnavailableError
from project_runners import PROJECT_WORKERS, project_api

if TYPE_CHECKING:
    from sections import Options

MAX_ROUNDS = 3
ROUND_BUDGET_S = 10.0
ARRAY_CHUNKS = 10_000
BAG_ITEMS = 20_000
BAG_PARTITIONS = 2_000
CHAIN_LENGTH = 10_000

Get = Callable[[Mapping[Any, Any], Any], Any]


def inc(x: int) -> int:
    """One step of the delayed chain and the bag's map."""
    return x + 1


def is_odd(x: int) -> bool:
    """The bag's filter."""
    return bool(x % 2)


def collections() -> dict[str, Any]:
    """The three Dask collections, by row label."""
    try:
        import dask.array as da  # noqa: PLC0415 - optional: the section reports it missing
        import dask.bag as db  # noqa: PLC0415
        from dask._task_spec import Task, TaskRef  # noqa: PLC0415
        from dask.delayed import Delayed  # noqa: PLC0415
    except ImportError as exc:
        raise RunnerUnavailableError(f"dask[array,bag] is not installed: {exc}") from exc
    calls: dict[str, Any] = {"inc-0": Task("inc-0", inc, 0)}
    for i in range(1, CHAIN_LENGTH):
        calls[f"inc-{i}"] = Task(f"inc-{i}", inc, TaskRef(f"inc-{i - 1}"))
    chain = Delayed(f"inc-{CHAIN_LENGTH - 1}", calls)
    bag = db.from_sequence(range(BAG_ITEMS), npartitions=BAG_PARTITIONS)
    return {
        f"array sum ({ARRAY_CHUNKS:,} chunks)": da.ones(ARRAY_CHUNKS, chunks=1).sum(),
        f"bag fold ({BAG_PARTITIONS:,} partitions)": bag.map(inc).filter(is_odd).fold(add),
        f"delayed chain ({CHAIN_LENGTH:,} calls)": chain,
    }


class GraphCapturedError(Exception):
    """Raised by the capturing scheduler once it has the graph."""


@dataclass(frozen=True)
class Captured:
    """The graph and keys ``dask.compute`` hands its scheduler, and a topological order."""

    graph: dict[Any, Any]
    keys: Any
    order: list[Any]

    @property
    def tasks(self) -> int:
        """How many nodes of the graph are tasks (not literal data)."""
        from dask._task_spec import DataNode  # noqa: PLC0415 - dask is there by now

        return sum(not isinstance(node, DataNode) for node in self.graph.values())


def capture(collection: Any) -> Captured:
    """Keep the graph ``dask.compute`` would run for ``collection``, without optimising it."""
    import dask  # noqa: PLC0415
    from dask._task_spec import convert_legacy_graph  # noqa: PLC0415

    seen: list[tuple[dict[Any, Any], Any]] = []

    def keep(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        graph = dsk if isinstance(dsk, Mapping) else dsk.__dask_graph__()
        seen.append((convert_legacy_graph(graph), keys))
        raise GraphCapturedError  # the graph is all that is wanted here: run nothing

    with contextlib.suppress(GraphCapturedError):
        dask.compute(collection, scheduler=keep, optimize_graph=False)
    graph, keys = seen[0]
    order = graphlib.TopologicalSorter({key: node.dependencies for key, node in graph.items()})
    return Captured(graph, keys, list(order.static_order()))


def tasks_alone(captured: Captured) -> Any:
    """Call every task in topological order in a plain loop: the tasks' cost, no scheduler."""
    from dask.local import nested_get  # noqa: PLC0415

    graph = captured.graph
    values: dict[Any, Any] = {}
    for key in captured.order:
        node = graph[key]
        values[key] = node({dep: values[dep] for dep in node.dependencies})
    return nested_get(captured.keys, values)


TASKS_ALONE = "tasks alone (plain loop, no scheduler)"


def runners() -> dict[str, Callable[[Captured], Any]]:
    """The schedulers compared, then the plain loop, by row label."""
    import dask  # noqa: PLC0415
    import dask.threaded  # noqa: PLC0415

    try:
        project_api()
        import quantum_partitioner.dask as qd  # noqa: PLC0415
    except ImportError as exc:
        raise RunnerUnavailableError(f"quantum_partitioner.dask is not importable: {exc}") from exc
    gets: dict[str, Get] = {
        f"quantum_partitioner.dask THREAD ({PROJECT_WORKERS})": qd.Scheduler(
            max_workers=PROJECT_WORKERS
        ).get,
        "quantum_partitioner.dask SEQUENTIAL": qd.Scheduler(execution_mode="sequential").get,
        f"dask.threaded.get ({PROJECT_WORKERS})": functools.partial(
            dask.threaded.get, num_workers=PROJECT_WORKERS
        ),
        "dask.get (sync)": dask.get,
    }
    rows: dict[str, Callable[[Captured], Any]] = {
        label: functools.partial(call_get, get) for label, get in gets.items()
    }
    rows[TASKS_ALONE] = tasks_alone
    return rows


def call_get(get: Get, captured: Captured) -> Any:
    """Compute the captured keys with a scheduler's ``get``."""
    return get(captured.graph, captured.keys)


def time_rounds(
    rows: dict[str, Callable[[Captured], Any]], captured: Captured
) -> dict[str, list[float]]:
    """Time each row once per round, rotating the order, checking every value."""
    samples: dict[str, list[float]] = {label: [] for label in rows}
    labels = list(rows)
    expected: list[Any] = []
    started = time.perf_counter()
    for k in range(MAX_ROUNDS):
        if k and time.perf_counter() - started > ROUND_BUDGET_S:
            break
        shift = k % len(labels)
        for label in labels[shift:] + labels[:shift]:
            gc.collect()
            start = time.perf_counter()
            value = rows[label](captured)
            samples[label].append(time.perf_counter() - start)
            if not expected:
                expected.append(value)
            elif not bool(value == expected[0]):
                raise AssertionError(f"{label} returned {value!r}, not {expected[0]!r}")
    return samples


@dataclass(frozen=True)
class Measured:
    """One computation's tasks and each row's samples."""

    tasks: int
    samples: dict[str, list[float]]

    def median(self, label: str) -> float:
        """The row's median wall time, in seconds."""
        return statistics.median(self.samples[label])

    def wall_us(self, label: str) -> float:
        """The row's median wall time per task, in µs."""
        return self.median(label) / self.tasks * 1e6

    def overhead_us(self, label: str) -> float:
        """What the row adds per task to the tasks' own cost, in µs."""
        return (self.median(label) - self.median(TASKS_ALONE)) / self.tasks * 1e6

    def spread(self, label: str) -> float:
        """(slowest - fastest) / median of the row's samples."""
        samples = self.samples[label]
        return (max(samples) - min(samples)) / self.median(label)


@dataclass(frozen=True)
class DaskCollectionsSection:
    """Time each scheduler on each captured graph; print µs per task and the ratios."""

    name: str = "collections"
    title: str = "Dask collections: quantum_partitioner.dask beside Dask's local schedulers"

    def run(self, options: Options) -> bool:
        """Measure and print; False if Dask is missing or a measurement failed."""
        del options  # the computations' sizes are fixed; rounds are bounded by time
        try:
            rows = runners()
            workloads = collections()
        except RunnerUnavailableError as exc:
            print(f"\nMissing measurements: {exc}")
            return False
        measured: dict[str, Measured] = {}
        failed = False
        for label, collection in workloads.items():
            print(f"  {label:40} ", end="", file=sys.stderr, flush=True)
            try:
                captured = capture(collection)
                measured[label] = Measured(captured.tasks, time_rounds(rows, captured))
            except Exception:
                print(file=sys.stderr)
                traceback.print_exc()
                failed = True
                continue
            rounds = len(measured[label].samples[TASKS_ALONE])
            print(f"{captured.tasks:,} tasks, {rounds} rounds", file=sys.stderr, flush=True)
        if measured:
            print_tables(list(rows), measured)
        return not failed


def print_tables(labels: list[str], measured: dict[str, Measured]) -> None:
    """Wall time and overhead per task for each row and computation, then the ratios."""
    header = ["scheduler", *(f"{label} [{m.tasks:,} tasks]" for label, m in measured.items())]
    rounds = ", ".join(f"{len(m.samples[TASKS_ALONE])}" for m in measured.values())
    print(
        "\nWall time per task on the (unoptimised) graph dask.compute hands its scheduler "
        f"(µs, median of {rounds} interleaved rounds; ±: spread; lower is better)\n"
    )
    rows = [
        [
            label,
            *(
                f"{report.format_us(m.wall_us(label))} ±{m.spread(label):.0%}"
                for m in measured.values()
            ),
        ]
        for label in labels
    ]
    print(report.format_table(header, rows))
    schedulers = [label for label in labels if label != TASKS_ALONE]
    print("\nOverhead per task: wall time per task minus the tasks alone (µs)\n")
    rows = [
        [label, *(report.format_us(m.overhead_us(label)) for m in measured.values())]
        for label in schedulers
    ]
    print(report.format_table(header, rows))
    thread, sequential, threaded, sync = schedulers
    print("\nRatios of overheads per task (wall-time ratios in brackets; lower is better)\n")
    rows = [
        [
            f"{a} / {b}",
            *(
                f"{ratio(m.overhead_us(a), m.overhead_us(b))} ({ratio(m.median(a), m.median(b))})"
                for m in measured.values()
            ),
        ]
        for a, b in ((thread, threaded), (sequential, sync))
    ]
    print(report.format_table(["ratio", *measured], rows))


def ratio(numerator: float, denominator: float) -> str:
    """``numerator / denominator`` as ``0.25x``, or n/a when the divisor is not positive."""
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "n/a"


DASK_COLLECTIONS_SECTION = DaskCollectionsSection()
