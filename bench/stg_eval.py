"""How close the scheduler's ordering comes to optimal on the Standard Task Graph Set.

The graphs are a sample of the 50-task random graphs of the Standard Task Graph Set
(Tobita & Kasahara, J. Scheduling 5(5), 2002), stored under ``bench/stg/50`` in their original
format, with the published optimal makespans for 2, 4, 8 and 16 processors under
``bench/stg/optimal`` (see ``bench/stg/README.md`` for where they come from).

Each graph becomes one unit per task (``estimated_duration`` = processing time, dependencies =
predecessors; the zero-cost dummy entry and exit tasks stay) and is replayed with
``ExecutionPlan.simulate(workers=p)``. The makespan is compared with:

* the published optimum, where the set's authors proved one;
* otherwise (the optimum is still open: the table gives a lower and an upper bound) the larger
  of the published lower bound and ``max(critical path, ceil(total work / p))``: it is <= the
  optimum, so the gap to it is an upper bound on the gap to the optimum.

``--alternatives`` also replays a few classic static priority lists in a standalone copy of the
simulator (checked to reproduce ``simulate()`` exactly on the current ordering), to see which
cheap change to ``Graph.priority_order`` would close the gap.

Usage: ``python bench/stg_eval.py [--alternatives] [--restarts K] [--per-graph]``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time
from pathlib import Path

from quantum_partitioner import QuantumPartitioner

HERE = Path(__file__).resolve().parent / "stg"
WORKERS = (2, 4, 8, 16)


# -- data -------------------------------------------------------------------------------------


class StgGraph:
    """One STG file: task ``i`` has processing time ``weight[i]`` and predecessors ``preds[i]``."""

    def __init__(self, path: Path) -> None:
        self.name = path.stem
        numbers = []
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                continue
            numbers.append([int(x) for x in line.split()])
        n = numbers[0][0]  # real tasks; ids 0 and n + 1 are the dummy entry and exit
        rows = [row for row in numbers[1:] if row]
        if len(rows) != n + 2:
            raise ValueError(f"{path}: {len(rows)} task lines for {n} tasks + 2 dummies")
        self.weight = [0] * (n + 2)
        self.preds: list[list[int]] = [[] for _ in range(n + 2)]
        for task, proc, count, *preds in rows:
            if len(preds) != count:
                raise ValueError(f"{path}: task {task} lists {len(preds)} of {count} preds")
            self.weight[task] = proc
            self.preds[task] = preds
        self.succs: list[list[int]] = [[] for _ in range(n + 2)]
        for task, preds in enumerate(self.preds):
            for p in preds:
                self.succs[p].append(task)
        self.order = _topological(self.preds, self.succs)
        self.finish = [0] * (n + 2)  # longest path to the end of each task (t-level + w)
        for t in self.order:
            self.finish[t] = self.weight[t] + max(
                (self.finish[p] for p in self.preds[t]), default=0
            )
        self.rank = [0] * (n + 2)  # longest path from the start of each task (b-level)
        for t in reversed(self.order):
            self.rank[t] = self.weight[t] + max((self.rank[s] for s in self.succs[t]), default=0)
        self.cp = max(self.finish)
        self.work = sum(self.weight)

    def lower_bound(self, p: int) -> int:
        return max(self.cp, math.ceil(self.work / p))


def _topological(preds: list[list[int]], succs: list[list[int]]) -> list[int]:
    waiting = [len(row) for row in preds]
    order = [i for i, count in enumerate(waiting) if count == 0]
    for i in order:
        for j in succs[i]:
            waiting[j] -= 1
            if not waiting[j]:
                order.append(j)
    if len(order) != len(preds):
        raise ValueError("cycle")
    return order


def load_optima(directory: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """``(graph, p) -> (lower, upper)``: equal when the optimum is known."""
    table = {}
    for path in sorted(directory.glob("Case50_*_OPT.csv")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            graph, p, *values = line.split(",")
            lower, upper = int(values[0]), int(values[-1])
            table[(Path(graph).stem, int(p))] = (lower, upper)
    return table


# -- the product ------------------------------------------------------------------------------


def _noop(ctx):
    return None


def product_makespans(graph: StgGraph) -> dict[int, float]:
    """``ExecutionPlan.simulate(p).makespan`` for each p, units added in task-id order."""
    qp = QuantumPartitioner()
    for task, preds in enumerate(graph.preds):
        qp.add_unit(
            _noop,
            [f"t{p}" for p in preds],
            name=f"t{task}",
            metadata={"estimated_duration": graph.weight[task]},
        )
    plan = qp.build_execution_plan()
    return {p: plan.simulate(workers=p).makespan for p in WORKERS}


# -- a standalone copy of _simulate.py, for other priority lists ------------------------------


def list_schedule(graph: StgGraph, order: list[int], workers: int) -> float:
    """Mirror of ``_simulate.simulate`` with the ready queue ordered by ``order``.

    Idle workers take the best ready units at each event; every completion at one instant is
    processed before choosing again.
    """
    position = [0] * len(order)
    for pos, task in enumerate(order):
        position[task] = pos
    weight, succs = graph.weight, graph.succs
    waiting = [len(row) for row in graph.preds]
    ready = [position[t] for t, w in enumerate(waiting) if not w]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    free = workers
    now = 0.0
    left = len(order)
    end = 0.0
    while left:
        while free and ready:
            task = order[heapq.heappop(ready)]
            heapq.heappush(running, (now + weight[task], task))
            free -= 1
        now = running[0][0]
        while running and running[0][0] == now:
            _, task = heapq.heappop(running)
            free += 1
            left -= 1
            end = now
            for s in succs[task]:
                waiting[s] -= 1
                if not waiting[s]:
                    heapq.heappush(ready, position[s])
    return end


def order_by(graph: StgGraph, key) -> list[int]:
    """Tasks sorted by ``key(task)`` ascending; Python's sort is stable (insertion order last)."""
    return sorted(range(len(graph.weight)), key=key)


def descendants(graph: StgGraph) -> list[set[int]]:
    """Every task's transitive successors (a transitive closure: fine at 52 tasks only)."""
    reach: list[set[int]] = [set() for _ in graph.weight]
    for t in reversed(graph.order):
        for s in graph.succs[t]:
            reach[t].add(s)
            reach[t] |= reach[s]
    return reach


def alternatives(graph: StgGraph) -> dict[str, list[int]]:
    """Static priority lists: rank (the current order) with other tie-breaks."""
    r, w, succs = graph.rank, graph.weight, graph.succs
    reach = descendants(graph)
    ndesc = [len(d) for d in reach]
    wdesc = [sum(w[d] for d in ds) for ds in reach]
    return {
        "rank, then #succ": order_by(graph, lambda t: (-r[t], -len(succs[t]))),
        "rank, then weight": order_by(graph, lambda t: (-r[t], -w[t])),
        "rank, then #desc": order_by(graph, lambda t: (-r[t], -ndesc[t])),
        "rank, then desc work": order_by(graph, lambda t: (-r[t], -wdesc[t])),
    }


def randomized_best(graph: StgGraph, workers: int, restarts: int, seed: int) -> float:
    """Best of the rank list and ``restarts`` lists with ranks perturbed by up to +-10%."""
    rng = random.Random(seed)
    r = graph.rank
    tasks = range(len(r))
    best = list_schedule(graph, order_by(graph, lambda t: -r[t]), workers)
    for _ in range(restarts):
        scale = rng.choice((0.0, 0.05, 0.1, 0.2))
        noise = [rng.random() for _ in tasks]
        order = sorted(tasks, key=lambda t: (-r[t] * (1 + scale * (noise[t] - 0.5)), noise[t]))
        best = min(best, list_schedule(graph, order, workers))
    return best


# -- report -----------------------------------------------------------------------------------


class Reference:
    """What each (graph, p) is compared with.

    ``exact`` holds the published optima; ``lower`` a lower bound for every case (the optimum
    where known, else the larger of the published lower bound and max(CP, ceil(work / p)));
    ``upper`` the best known makespan of the open cases (the published upper bound).
    """

    def __init__(self, graphs: list[StgGraph], optima) -> None:
        self.exact: dict[tuple[str, int], int] = {}
        self.lower: dict[tuple[str, int], int] = {}
        self.upper: dict[tuple[str, int], int] = {}
        for graph in graphs:
            for p in WORKERS:
                case = (graph.name, p)
                trivial = graph.lower_bound(p)
                if case not in optima:
                    self.lower[case] = trivial
                    continue
                low, high = optima[case]
                if low == high:
                    if low < trivial:
                        raise SystemExit(f"{case}: published optimum {low} < lower bound {trivial}")
                    self.exact[case] = self.lower[case] = low
                else:
                    self.lower[case] = max(low, trivial)
                    self.upper[case] = high


def _gap(made: float, ref: float) -> float:
    return 100.0 * (made - ref) / ref


def _cells(gaps_by_p: dict[int, list[float]]) -> str:
    cells = []
    for p in WORKERS:
        gaps = gaps_by_p[p]
        at_ref = 100 * sum(g <= 1e-9 for g in gaps) / len(gaps)
        cells.append(f"{statistics.fmean(gaps):5.2f} {max(gaps):6.2f} {at_ref:4.0f}%")
    return " | ".join(cells)


def report(label: str, made: dict[tuple[str, int], float], ref: Reference, tables) -> None:
    """Add one row (per table) for an ordering's makespans."""
    proven: dict[int, list[float]] = {p: [] for p in WORKERS}
    bound: dict[int, list[float]] = {p: [] for p in WORKERS}
    open_upper: list[float] = []
    for case, ms in made.items():
        p = case[1]
        if ms < ref.lower[case]:
            raise SystemExit(f"{case}: makespan {ms} below the reference {ref.lower[case]}")
        if case in ref.exact:
            proven[p].append(_gap(ms, ref.exact[case]))
        bound[p].append(_gap(ms, ref.lower[case]))
        if case in ref.upper:
            open_upper.append(_gap(ms, ref.upper[case]))
    all_proven = [g for p in WORKERS for g in proven[p]]
    all_bound = [g for p in WORKERS for g in bound[p]]
    tables[0].append(f"{label:<28} {_cells(proven)} | {statistics.fmean(all_proven):5.2f}")
    upper = f"{statistics.fmean(open_upper):5.2f}" if open_upper else "   - "
    tables[1].append(f"{label:<28} {_cells(bound)} | {statistics.fmean(all_bound):5.2f} | {upper}")


def print_tables(graphs, ref: Reference, tables) -> None:
    cols = " | ".join(f"{f'p={p}':^18}" for p in WORKERS)
    n_cases = len(graphs) * len(WORKERS)
    n_open = n_cases - len(ref.exact)
    print(
        f"{len(graphs)} graphs x p in {WORKERS}: {len(ref.exact)} cases with a published "
        f"optimum, {n_open} open"
    )
    print("cells: mean gap %, max gap %, share of cases at the reference\n")
    print(f"A. gap to the published optimum ({len(ref.exact)} cases)")
    print(f"{'ordering':<28} {cols} | mean")
    print("\n".join(tables[0]))
    print(
        f"\nB. gap to a lower bound, all {n_cases} cases (optimum, or for the {n_open} open cases"
        " the published lower bound): an upper bound on the gap to optimal"
    )
    print(f"{'ordering':<28} {cols} | mean  | open cases: gap to best known")
    print("\n".join(tables[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alternatives", action="store_true", help="also try other orderings")
    parser.add_argument("--restarts", type=int, default=0, help="randomized lists per case")
    parser.add_argument("--per-graph", action="store_true", help="list cases off the reference")
    args = parser.parse_args()

    started = time.perf_counter()
    graphs = [StgGraph(path) for path in sorted((HERE / "50").glob("*.stg"))]
    ref = Reference(graphs, load_optima(HERE / "optimal"))
    tables: tuple[list[str], list[str]] = ([], [])

    product = {}
    for graph in graphs:
        for p, made in product_makespans(graph).items():
            product[(graph.name, p)] = made
    report("simulate() (current)", product, ref, tables)

    if args.alternatives or args.restarts:
        mirror = {}
        for graph in graphs:
            base = order_by(graph, lambda t, g=graph: -g.rank[t])
            for p in WORKERS:
                mirror[(graph.name, p)] = list_schedule(graph, base, p)
        if mirror != product:
            raise SystemExit("the standalone simulator does not reproduce simulate()")
    if args.alternatives:
        lists = {graph.name: alternatives(graph) for graph in graphs}
        names = list(next(iter(lists.values())))
        runs = {}
        for name in names:
            runs[name] = {
                (graph.name, p): list_schedule(graph, lists[graph.name][name], p)
                for graph in graphs
                for p in WORKERS
            }
            report(name, runs[name], ref, tables)
        both = {case: min(product[case], runs["rank, then #succ"][case]) for case in product}
        report("best of current, #succ", both, ref, tables)
    if args.restarts:
        made = {
            (graph.name, p): randomized_best(graph, p, args.restarts, seed=i)
            for i, graph in enumerate(graphs)
            for p in WORKERS
        }
        report(f"best of {args.restarts} perturbed", made, ref, tables)

    print_tables(graphs, ref, tables)
    if args.per_graph:
        print("\nsimulate() cases above the reference:")
        for graph in graphs:
            for p in WORKERS:
                case = (graph.name, p)
                made = product[case]
                if made > ref.lower[case]:
                    kind = "optimum" if case in ref.exact else "lower bound"
                    best = f", best known {ref.upper[case]}" if case in ref.upper else ""
                    print(f"  {graph.name} p={p:<2} {made:g} vs {kind} {ref.lower[case]}{best}")
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
