"""Layer 1: ExecutionPlan fields, DOT and Mermaid pictures, and planning at scale."""

from __future__ import annotations

import json
import random
import re
import time
from itertools import pairwise

from quantum_partitioner import ExecutionPlan, QuantumPartitioner, QuantumUnit
from quantum_partitioner._graph import compile_graph

CRITICAL = "#d62728"


def noop(ctx):
    return None


def partitioner_of(spec, **metadata_by_name):
    """A partitioner with one no-op unit per ``{name: [dependencies]}`` entry."""
    p = QuantumPartitioner()
    for name, deps in spec.items():
        p.add_unit(noop, deps, name=name, metadata=metadata_by_name.get(name))
    return p


# The plan used by most tests below:
#
#   load ---> parse ---> clean ----> report
#     \                    ^            ^
#      \--> stats (5 s) ---|------------/
#   config           (parse: 1 s)
#
# stats weighs 5, parse 1, every other unit the mean of those, 3: the critical path is
# load -> stats -> clean -> report.
SPEC = {
    "load": [],
    "config": [],
    "parse": ["load"],
    "stats": ["load"],
    "clean": ["parse", "stats"],
    "report": ["clean", "stats"],
}
ESTIMATES = {"stats": {"estimated_duration": 5}, "parse": {"estimated_duration": 1}}


def edges_of(spec):
    return {(dep, name) for name, deps in spec.items() for dep in deps}


# -- fields --------------------------------------------------------------------------------


def test_plan_units_are_the_partitioners_units():
    """plan.units maps every name to the partitioner's own QuantumUnit objects, in order."""
    p = partitioner_of(SPEC, **ESTIMATES)
    plan = p.build_execution_plan()
    assert list(plan.units) == list(SPEC)
    assert all(plan.units[name] is p.units[name] for name in SPEC)
    assert plan.unit_count == 6


def test_plan_levels_and_execution_order():
    """levels group units by depth in insertion order; execution_order is the same data."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    expected = [["load", "config"], ["parse", "stats"], ["clean"], ["report"]]
    assert plan.levels == expected
    assert plan.execution_order == expected
    assert plan.max_level == 4
    assert plan.max_parallel_units == 2


def test_plan_dependencies_and_dependents_are_inverse_maps():
    """dependencies and dependents hold every unit and mirror each other exactly."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    assert plan.dependencies == {name: set(deps) for name, deps in SPEC.items()}
    assert plan.dependents == {
        "load": {"parse", "stats"},
        "config": set(),
        "parse": {"clean"},
        "stats": {"clean", "report"},
        "clean": {"report"},
        "report": set(),
    }


def test_plan_critical_path_follows_the_weights():
    """critical_path is the heaviest chain, root first, and its length is its total weight."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    assert plan.critical_path == ["load", "stats", "clean", "report"]
    assert plan.critical_path_length == 14.0


def test_plan_critical_path_without_estimates_is_the_longest_chain():
    """Without estimates each unit weighs 1: the path is the deepest chain."""
    plan = partitioner_of(SPEC).build_execution_plan()
    assert plan.critical_path == ["load", "parse", "clean", "report"]
    assert plan.critical_path_length == 4.0


def test_plan_of_wide_graph_counts_parallel_units():
    """max_parallel_units is the widest level's size."""
    # root -> w0..w9 -> sink
    spec = {"root": [], **{f"w{k}": ["root"] for k in range(10)}}
    spec["sink"] = [f"w{k}" for k in range(10)]
    plan = partitioner_of(spec).build_execution_plan()
    assert plan.max_parallel_units == 10
    assert plan.max_level == 3
    assert [len(level) for level in plan.levels] == [1, 10, 1]


def test_plan_is_cached_until_units_change():
    """build_execution_plan returns the same plan until a unit is added or removed."""
    p = partitioner_of({"a": []})
    plan = p.build_execution_plan()
    assert p.build_execution_plan() is plan
    p.add_unit(noop, ["a"], name="b")
    plan2 = p.build_execution_plan()
    assert plan2 is not plan
    assert plan2.levels == [["a"], ["b"]]
    p.remove_unit("b")
    assert p.build_execution_plan().levels == [["a"]]


def test_plan_of_empty_partitioner():
    """An empty partitioner plans to zero units, no levels and an empty critical path."""
    plan = QuantumPartitioner().build_execution_plan()
    assert plan.units == {}
    assert plan.unit_count == 0
    assert plan.levels == []
    assert plan.execution_order == []
    assert plan.max_level == 0
    assert plan.max_parallel_units == 0
    assert plan.dependencies == {}
    assert plan.dependents == {}
    assert plan.critical_path == []
    assert plan.critical_path_length == 0.0
    assert parse_dot(plan.visualize()) == ({}, {})
    assert plan.to_mermaid().startswith("flowchart LR\n")
    assert "-->" not in plan.to_mermaid()


def test_plan_repr_summarises():
    """repr shows unit count, levels and width."""
    plan = partitioner_of(SPEC).build_execution_plan()
    assert repr(plan) == "ExecutionPlan(unit_count=6, max_level=4, max_parallel_units=2)"


# -- DOT --------------------------------------------------------------------------------------

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_NODE = re.compile(rf"^\s*({_QUOTED})(?:\s*\[(.*)\])?;$")
_EDGE = re.compile(rf"^\s*({_QUOTED})\s*->\s*({_QUOTED})(?:\s*\[(.*)\])?;$")


def parse_dot(text):
    """Minimal DOT reader: ``({node: attrs}, {(tail, head): attrs})`` of a flat digraph."""
    lines = text.strip().splitlines()
    assert lines[0].startswith("digraph ")
    assert lines[0].endswith("{")
    assert lines[-1] == "}"
    nodes, edges = {}, {}
    for line in lines[1:-1]:
        if edge := _EDGE.match(line):
            key = (json.loads(edge.group(1)), json.loads(edge.group(2)))
            assert key not in edges, f"edge drawn twice: {key}"
            edges[key] = edge.group(3) or ""
        elif node := _NODE.match(line):
            name = json.loads(node.group(1))
            assert name not in nodes, f"node drawn twice: {name}"
            nodes[name] = node.group(2) or ""
    return nodes, edges


def test_visualize_draws_every_unit_and_every_dependency():
    """The DOT has one node per unit and exactly one edge per dependency, dependency first."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    nodes, edges = parse_dot(plan.visualize())
    assert set(nodes) == set(SPEC)
    assert set(edges) == edges_of(SPEC)


def test_visualize_marks_the_critical_path_red_and_bold():
    """Critical-path nodes and edges are red and thick; nothing else is."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    nodes, edges = parse_dot(plan.visualize())
    critical_edges = set(pairwise(plan.critical_path))
    assert critical_edges == {("load", "stats"), ("stats", "clean"), ("clean", "report")}
    for edge, attrs in edges.items():
        marked = CRITICAL in attrs and "penwidth" in attrs
        assert marked == (edge in critical_edges), edge
    for name, attrs in nodes.items():
        marked = CRITICAL in attrs and "penwidth" in attrs
        assert marked == (name in plan.critical_path), name


def test_visualize_escapes_awkward_names():
    """Names with quotes, spaces, backslashes and arrows survive as DOT identifiers."""
    spec = {'say "hi"': [], "a b": ['say "hi"'], "c\\d": ["a b"], "x->y": ["c\\d"]}
    plan = partitioner_of(spec).build_execution_plan()
    nodes, edges = parse_dot(plan.visualize())
    assert set(nodes) == set(spec)
    assert set(edges) == edges_of(spec)


def test_visualize_without_states_has_no_fill_per_node():
    """visualize(states=False) draws no per-node state colour."""
    plan = partitioner_of(SPEC).build_execution_plan()
    nodes, _ = parse_dot(plan.visualize(states=False))
    assert all("fillcolor" not in attrs for attrs in nodes.values())
    assert set(nodes) == set(SPEC)


# -- Mermaid ---------------------------------------------------------------------------------

_MERMAID_NODE = re.compile(r'^\s*(\w+)\["(.*)"\]$')
_MERMAID_EDGE = re.compile(r"^\s*(\w+) (-->|==>) (\w+)$")


def parse_mermaid(text):
    """``({node_id: label}, {(tail_id, head_id): arrow}, critical_ids)`` of a flowchart."""
    lines = text.strip().splitlines()
    assert lines[0] == "flowchart LR"
    nodes, edges, critical = {}, {}, set()
    for line in lines[1:]:
        if node := _MERMAID_NODE.match(line):
            nodes[node.group(1)] = node.group(2)
        elif edge := _MERMAID_EDGE.match(line):
            edges[edge.group(1), edge.group(3)] = edge.group(2)
        elif line.strip().startswith("class ") and line.strip().endswith(" critical"):
            critical |= set(line.split()[1].split(","))
    return nodes, edges, critical


def test_to_mermaid_draws_units_dependencies_and_critical_path():
    """Mermaid has one node per unit, one arrow per dependency, thick on the critical path."""
    plan = partitioner_of(SPEC, **ESTIMATES).build_execution_plan()
    nodes, edges, critical = parse_mermaid(plan.to_mermaid())
    name_of = nodes  # node id -> label, and labels are the plain names here
    assert sorted(name_of.values()) == sorted(SPEC)
    named_edges = {(name_of[a], name_of[b]): arrow for (a, b), arrow in edges.items()}
    assert set(named_edges) == edges_of(SPEC)
    critical_edges = set(pairwise(plan.critical_path))
    for edge, arrow in named_edges.items():
        assert (arrow == "==>") == (edge in critical_edges), edge
    assert {name_of[node] for node in critical} == set(plan.critical_path)


def test_to_mermaid_node_ids_are_unique_for_clashing_names():
    """Names that sanitise to the same text still get distinct Mermaid node ids."""
    spec = {"a-b": [], "a b": ["a-b"], "a_b": ["a b"]}
    nodes, edges, _ = parse_mermaid(partitioner_of(spec).build_execution_plan().to_mermaid())
    assert len(nodes) == 3
    assert sorted(nodes.values()) == sorted(spec)
    assert len(edges) == 2


# -- scale ---------------------------------------------------------------------------------


def random_dag_units(n, fan_in, seed):
    """``n`` units; each unit ``i >= fan_in`` depends on ``fan_in`` distinct earlier units."""
    rng = random.Random(seed)
    sample = rng.sample
    names = [f"u{i}" for i in range(n)]
    units = [QuantumUnit(names[i], noop) for i in range(min(fan_in, n))]
    units += [
        QuantumUnit(names[i], noop, [names[j] for j in sample(range(i), fan_in)])
        for i in range(fan_in, n)
    ]
    return units


def test_plan_200k_units_600k_edges_quickly():
    """200,000 units with 600,000 edges compile and plan (levels, critical path) in < 20 s.

    CPU seconds, not wall: on a loaded machine the wall time of this one-threaded work
    grows with the load, its CPU time does not.
    """
    units = random_dag_units(200_000, 3, seed=7)
    start = time.process_time()
    graph = compile_graph(units)
    plan = ExecutionPlan(graph, {unit.id: unit for unit in units})
    levels = plan.levels
    path = plan.critical_path
    elapsed = time.process_time() - start
    assert elapsed < 20, f"planning took {elapsed:.1f} s of CPU"
    assert plan.unit_count == 200_000
    assert sum(len(row) for row in graph.deps) == 3 * (200_000 - 3)
    assert sum(map(len, levels)) == 200_000
    # Unit weights: the critical path has one unit per level and each step is an edge.
    assert len(path) == plan.max_level == len(levels)
    assert plan.critical_path_length == float(len(path))
    for dependency, dependent in pairwise(path):
        assert graph.index[dependency] in graph.deps[graph.index[dependent]]
    assert graph.level[graph.index[path[0]]] == 0


def test_the_plan_shows_maps_and_subgraphs():
    """plan.maps names what each map maps over; plan.subgraphs lists each one's inner units."""
    from quantum_partitioner.cli import _plan_lines  # noqa: PLC0415 - the CLI's plan text

    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: [1, 2], name="load")
    inner.add_map(lambda ctx: ctx.item, over="load", name="parse")
    deep = QuantumPartitioner()
    deep.add_subgraph(inner, name="ingest")
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ["a"], name="plan")
    p.add_map(lambda ctx: ctx.item, over="plan", name="tool")
    p.add_map(lambda ctx: ctx.item, over="tool", name="summary")
    p.add_subgraph(deep, name="outer")
    plan = p.build_execution_plan()
    assert plan.maps == {
        "tool": "plan",
        "summary": "tool",
        "outer.ingest.parse": "outer.ingest.load",
    }
    assert plan.subgraphs == {
        "outer.ingest": ["outer.ingest.load", "outer.ingest.parse"],
        "outer": ["outer.ingest.load", "outer.ingest.parse", "outer.ingest"],
    }
    text = "\n".join(_plan_lines(plan))
    assert "maps             tool over plan, summary over tool, outer.ingest.parse over" in text
    assert "subgraphs        outer.ingest (2 units), outer (3 units)" in text
    assert QuantumPartitioner().build_execution_plan().subgraphs == {}
