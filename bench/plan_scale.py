"""How long planning a very large graph takes: compile, levels and critical path.

The graph has N units (default 1,000,000); each unit ``i >= 3`` depends on 3 distinct random
earlier units (fixed seed), so there are about 3N edges. Building the QuantumUnit objects is
timed separately from planning, which is what the library is responsible for. The test
suite checks the same shape at 200,000 units (tests/test_plan.py).

Usage: ``python bench/plan_scale.py [--n N] [--fan-in K] [--seed S]``.
"""

from __future__ import annotations

import argparse
import random
import time

from quantum_partitioner import ExecutionPlan, QuantumUnit
from quantum_partitioner._graph import compile_graph


def noop(ctx):
    return None


def build_units(n, fan_in, seed):
    rng = random.Random(seed)
    sample = rng.sample
    names = [f"u{i}" for i in range(n)]
    units = [QuantumUnit(names[i], noop) for i in range(min(fan_in, n))]
    units += [
        QuantumUnit(names[i], noop, [names[j] for j in sample(range(i), fan_in)])
        for i in range(fan_in, n)
    ]
    return units


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of units")
    parser.add_argument("--fan-in", type=int, default=3, help="dependencies per unit")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    start = time.perf_counter()
    units = build_units(args.n, args.fan_in, args.seed)
    built = time.perf_counter()
    graph = compile_graph(units)
    compiled = time.perf_counter()
    plan = ExecutionPlan(graph, {unit.id: unit for unit in units})
    levels = plan.levels
    levelled = time.perf_counter()
    path = plan.critical_path
    done = time.perf_counter()

    edges = sum(len(row) for row in graph.deps)
    print(
        f"units: {len(units):,}  edges: {edges:,}  levels: {len(levels):,}  "
        f"critical path: {len(path):,} units"
    )
    print(f"build units   {built - start:8.2f} s  (test-side, not the library)")
    print(f"compile       {compiled - built:8.2f} s")
    print(f"levels        {levelled - compiled:8.2f} s")
    print(f"critical path {done - levelled:8.2f} s")
    print(f"plan total    {done - built:8.2f} s  (compile + levels + critical path)")


if __name__ == "__main__":
    main()
