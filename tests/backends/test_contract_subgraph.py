"""The contract suite for subgraphs (``add_subgraph``), run on every execution mode.

Same rules as ``test_contract.py`` (the ``mode`` fixture, unit functions from
``_contract_units`` so a plain process pool can import them). A subgraph's units are ordinary
units once inlined; what is special is that each reads its dependencies by its inner names.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quantum_partitioner import QuantumPartitioner, SkipCause, UnitState

sys.path.insert(0, str(Path(__file__).parent))
import _contract_units as u  # needs the sys.path entry above


def ingest() -> QuantumPartitioner:
    """An inner partitioner: ``load`` reads the outer ``config``; two sinks read ``load``."""
    #  (config) -> load -> clean
    #                 \--> look
    inner = QuantumPartitioner()
    inner.add_unit(u.plus("config", 1), name="load")
    inner.add_unit(u.times("load", 10), ["load"], name="clean", when=lambda ctx: ctx["load"] > 0)
    inner.add_unit(u.seen, ["load"], name="look")
    return inner


def test_subgraph_units_run_in_the_one_run_reading_inner_names(mode):
    """Inner units see deps by inner name, roots see the outer deps, the subgraph is a dict."""
    #  config -> [ingest.load -> ingest.clean, ingest.look] -> ingest -> report
    p = QuantumPartitioner()
    p.add_unit(u.const(2), name="config")
    p.add_subgraph(ingest(), "ingest", ["config"])
    p.add_unit(u.seen, ["ingest"], name="report")

    results = mode.execute(p)

    look = {"results": {"load": 3}, "upstream_errors": []}
    assert results == {
        "config": 2,
        "ingest.load": 3,
        "ingest.clean": 30,
        "ingest.look": look,
        "ingest": {"clean": 30, "look": look},
        "report": {"results": {"ingest": {"clean": 30, "look": look}}, "upstream_errors": []},
    }
    assert list(p.units) == [
        "config",
        "ingest.load",
        "ingest.clean",
        "ingest.look",
        "ingest",
        "report",
    ]
    assert p.units["ingest.load"].dependencies == ["config"]
    assert p.units["ingest"].dependencies == ["ingest.clean", "ingest.look"]
    assert p.last_execution_metrics["total_units"] == 6


def test_a_failure_inside_skips_only_what_depends_on_it(mode):
    """A failed inner unit skips its inner dependents and the subgraph; the rest completes."""
    #  load -> bad -> after_bad
    #     \--> fine ---------------> (outside) uses_fine
    #  summary (all_done over bad, fine) sees inner names in upstream_errors
    inner = QuantumPartitioner()
    inner.add_unit(u.const(1), name="load")
    inner.add_unit(u.explode, ["load"], name="bad")
    inner.add_unit(u.plus("bad", 1), ["bad"], name="after_bad")
    inner.add_unit(u.plus("load", 1), ["load"], name="fine", retries=1)
    inner.add_unit(u.seen, ["bad", "fine"], name="summary", run_if="all_done")
    p = QuantumPartitioner()
    p.add_subgraph(inner, "sub")
    p.add_unit(u.seen, ["sub"], name="uses_sub")
    p.add_unit(u.plus("sub.fine", 10), ["sub.fine"], name="uses_fine")

    results = mode.execute(p)

    assert results == {
        "sub.load": 1,
        "sub.fine": 2,
        "sub.summary": {"results": {"fine": 2}, "upstream_errors": ["bad"]},
        "uses_fine": 12,
    }
    assert set(p.get_failed_units()) == {"sub.bad"}
    assert "sub.bad exploded" in str(p.units["sub.bad"].error)
    for name in ("sub.after_bad", "sub", "uses_sub"):
        unit = p.units[name]
        assert unit.state is UnitState.SKIPPED, name
        assert unit.error.cause is SkipCause.UPSTREAM_FAILED
    assert p.units["sub.fine"].retries == 1


def test_nested_subgraphs_compose_names_and_dependencies(mode):
    """A subgraph inside a subgraph: ``top.ingest.load``, each root sees its own level's deps."""
    #  start -> [top.config -> [top.ingest.*] -> top.ingest -> top.combine] -> top -> end
    mid = QuantumPartitioner()
    mid.add_unit(u.plus("start", 0), name="config")
    mid.add_subgraph(ingest(), "ingest", ["config"])
    mid.add_unit(u.seen, ["ingest", "config"], name="combine")
    p = QuantumPartitioner()
    p.add_unit(u.const(4), name="start")
    p.add_subgraph(mid, "top", ["start"])
    p.add_unit(u.seen, ["top"], name="end")
    mid.units.clear()  # the copies do not depend on the partitioner they came from

    results = mode.execute(p)

    look = {"results": {"load": 5}, "upstream_errors": []}
    inner = {"clean": 50, "look": look}
    combined = {"results": {"ingest": inner, "config": 4}, "upstream_errors": []}
    assert results == {
        "start": 4,
        "top.config": 4,
        "top.ingest.load": 5,
        "top.ingest.clean": 50,
        "top.ingest.look": look,
        "top.ingest": inner,
        "top.combine": combined,
        "top": {"combine": combined},
        "end": {"results": {"top": {"combine": combined}}, "upstream_errors": []},
    }
    assert p.units["top.ingest.load"].dependencies == ["top.config"]
    assert p.units["top.config"].dependencies == ["start"]


def test_subgraph_units_run_on_their_own_lanes_with_resource_balanced():
    """resource_balanced: inner cpu, io and async units each on their lane, inner names kept."""
    #  (config) -> crunch [cpu] -> fetch [io] -> wait [async]; failing [cpu] after crunch
    inner = QuantumPartitioner()
    inner.add_unit(u.times("config", 3), name="crunch", metadata={"resource_type": "cpu"})
    inner.add_unit(u.plus("crunch", 1), ["crunch"], name="fetch", metadata={"resource_type": "io"})
    inner.add_unit(
        u.async_plus("fetch", 1), ["fetch"], name="wait", metadata={"resource_type": "async"}
    )
    inner.add_unit(u.explode, ["crunch"], name="failing", metadata={"resource_type": "cpu"})
    inner.add_unit(u.seen, ["wait", "failing"], name="report", run_if="all_done")
    p = QuantumPartitioner()
    p.add_unit(u.const(2), name="config")
    p.add_subgraph(inner, "sub", ["config"])

    results = p.execute_with_strategy({}, "resource_balanced", max_workers=2)

    assert results == {
        "config": 2,
        "sub.crunch": 6,
        "sub.fetch": 7,
        "sub.wait": 8,
        "sub.report": {"results": {"wait": 8}, "upstream_errors": ["failing"]},
        "sub": {"report": {"results": {"wait": 8}, "upstream_errors": ["failing"]}},
    }
    assert set(p.get_failed_units()) == {"sub.failing"}


def test_maps_inside_a_subgraph_expand_under_its_name_and_read_inner_names(mode):
    """A map in a subgraph: items ``sub.scaled[i]``, item-wise over it, deps by inner name."""
    #  config -> sub.plan -> sub.scaled (map) -> sub.again (map over the map)
    #                   \--> sub.view (map, also declares plan) ; sinks: view, again
    inner = QuantumPartitioner()
    inner.add_unit(u.times("config", 1), name="plan")
    inner.add_map(u.item_times(10), over="plan", name="scaled")
    inner.add_map(u.item_times(2), over="scaled", name="again")
    inner.add_map(u.item_view, over="plan", name="view", dependencies=["plan"])
    p = QuantumPartitioner()
    p.add_unit(u.const([1, 2]), name="config")
    p.add_subgraph(inner, "sub", ["config"])

    results = mode.execute(p)

    views = [{"item": 1, "index": 0, "sees": ["plan"]}, {"item": 2, "index": 1, "sees": ["plan"]}]
    assert results["sub.scaled"] == [10, 20]
    assert [results["sub.again[0]"], results["sub.again[1]"]] == [20, 40]
    assert results["sub.view"] == views
    assert results["sub"] == {"again": [20, 40], "view": views}
    assert p.last_execution_metrics["total_units"] == 6 + 6
