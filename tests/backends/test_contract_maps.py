"""The contract suite for mapped fan-out (``add_map``), run on every execution mode.

Same rules as ``test_contract.py``: the ``mode`` fixture, unit functions from
``_contract_units`` so a plain process pool can import them.
"""

from __future__ import annotations

import pickle
import sys
import threading
from pathlib import Path

import pytest

from quantum_partitioner import (
    CircularDependencyError,
    DuplicateUnitError,
    MapItemsFailedError,
    QuantumPartitioner,
    SkipCause,
    UnitSkippedError,
    UnitState,
    UnknownDependencyError,
    at_least,
)

sys.path.insert(0, str(Path(__file__).parent))
import _contract_units as u  # needs the sys.path entry above


def skipped_units(p):
    """The units (items included) the last run skipped, from its metrics."""
    trace = p.last_execution_metrics["execution_trace"]
    return {record["unit"] for record in trace if record["event"] == "skip"}


def agent(plan):
    """plan -> tool (a map over plan) -> summary (item-wise, over tool) -> answer."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(plan), name="plan")
    p.add_map(u.tagged_item("tool"), over="plan", name="tool", timeout=30, retries=1)
    p.add_map(u.tagged_item("summary"), over="tool", name="summary")
    p.add_unit(u.seen, ["summary"], name="answer")
    return p


def test_a_map_creates_one_unit_per_item_and_a_map_over_it_goes_item_by_item(mode):
    p = agent(["search", "calc", "weather"])

    results = mode.execute(p)

    tools = ["tool:0:search", "tool:1:calc", "tool:2:weather"]
    summaries = [f"summary:{i}:{tool}" for i, tool in enumerate(tools)]
    assert results["tool"] == tools
    assert results["summary"] == summaries
    assert results["answer"]["results"] == {"summary": summaries}
    assert [results[f"tool[{i}]"] for i in range(3)] == tools
    assert [results[f"summary[{i}]"] for i in range(3)] == summaries
    assert p.get_failed_units() == {}
    metrics = p.last_execution_metrics
    assert metrics["total_units"] == 4 + 6
    assert metrics["completed_units"] == 10


def test_zero_items_complete_the_map_with_an_empty_list(mode):
    p = agent([])

    results = mode.execute(p)

    assert {name: results[name] for name in ("plan", "tool", "summary")} == {
        "plan": [],
        "tool": [],
        "summary": [],
    }
    assert results["answer"]["results"] == {"summary": []}
    assert p.units["tool"].state is UnitState.COMPLETED
    assert p.units["summary"].state is UnitState.COMPLETED


def test_a_failed_item_skips_only_its_own_downstream(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const([1, 0, 3]), name="numbers")
    p.add_map(u.item_times(10), over="numbers", name="scaled")
    p.add_map(u.item_times(2), over="scaled", name="doubled")
    p.add_unit(u.seen, ["doubled"], name="strict")
    p.add_unit(u.seen, ["doubled"], name="report", run_if="all_done")

    results = mode.execute(p)

    assert results["doubled[0]"] == 20
    assert results["doubled[2]"] == 60
    assert "scaled[1]" not in results
    failed = p.get_failed_units()
    assert isinstance(failed["scaled[1]"], ValueError)
    assert isinstance(failed["scaled"], MapItemsFailedError)
    assert failed["scaled"].failed_items == ["scaled[1]"]
    assert failed["doubled"].failed_items == ["doubled[1]"]
    assert "doubled[1]" not in failed  # skipped, not failed
    assert {"doubled[1]", "strict"} <= skipped_units(p)
    # The all_done unit sees the completed items' results, and why the map did not complete.
    assert results["report"]["results"] == {"doubled": [20, 60]}
    assert results["report"]["upstream_errors"] == ["doubled"]


def test_retries_timeouts_and_fallbacks_apply_per_item(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const([1, 2, 3]), name="numbers")
    p.add_map(u.flaky_item, over="numbers", name="flaky", retries=1)
    p.add_unit(u.const([0, 5]), name="others")
    p.add_map(u.item_times(3), over="others", name="guarded", metadata={"fallback_value": -1})

    results = mode.execute(p)

    assert results["flaky"] == ["1 on 2", "2 on 1", "3 on 2"]
    unit_times = p.last_execution_metrics["unit_times"]
    assert [unit_times[f"flaky[{i}]"]["attempts"] for i in range(3)] == [2, 1, 2]
    assert results["guarded"] == [-1, 15]
    assert p.units["guarded"].state is UnitState.COMPLETED


def test_items_see_the_maps_declared_dependencies_not_what_they_map_over(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const("cfg"), name="config")
    p.add_unit(u.const(["a", "b"]), name="docs")
    p.add_map(u.item_view, over="docs", name="plain", dependencies=["config"])
    p.add_map(u.item_view, over="docs", name="declared", dependencies=["docs", "config"])

    results = mode.execute(p)

    assert results["plain"] == [
        {"item": "a", "index": 0, "sees": ["config"]},
        {"item": "b", "index": 1, "sees": ["config"]},
    ]
    assert results["declared"][1] == {"item": "b", "index": 1, "sees": ["config", "docs"]}


def test_a_result_that_is_not_iterable_or_too_long_fails_the_map(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(42), name="number")
    p.add_map(u.item_view, over="number", name="over_int")
    p.add_unit(u.const([1, 2, 3]), name="three")
    p.add_map(u.item_view, over="three", name="bounded", max_items=2)
    p.add_map(u.item_view, over="bounded", name="after")

    mode.execute(p)

    failed = p.get_failed_units()
    assert isinstance(failed["over_int"], TypeError)
    assert "map 'over_int': the result of 'number' is not iterable (int)" in str(failed["over_int"])
    assert isinstance(failed["bounded"], ValueError)
    assert "'three' gave 3 items, more than max_items=2" in str(failed["bounded"])
    skipped = p.units["after"].error
    assert isinstance(skipped, UnitSkippedError)
    assert skipped.cause is SkipCause.UPSTREAM_FAILED


def test_a_lazy_result_is_read_no_further_than_max_items_and_a_failing_one_says_so(mode):
    """max_items stops reading a lazy result at max_items + 1 elements (an endless one fails
    the map at once); an iterable that raises while it is read fails the map with that
    error as the cause, not as "not iterable"."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(u.Paged(1000)), name="pages")
    p.add_map(u.item_view, over="pages", name="bounded", max_items=3)
    p.add_unit(u.const(u.Paged(2)), name="short")
    p.add_map(u.item_view, over="short", name="paged")

    mode.execute(p)

    failed = p.get_failed_units()
    assert isinstance(failed["bounded"], ValueError)  # without the bound: ConnectionError
    assert "map 'bounded': 'pages' gave more than max_items=3 items" in str(failed["bounded"])
    assert isinstance(failed["paged"], TypeError)
    assert "map 'paged': reading the items of 'short' (Paged) raised ConnectionError: page 3" in (
        str(failed["paged"])
    )
    assert isinstance(failed["paged"].__cause__, ConnectionError)


def test_a_base_exception_from_a_maps_iterable_or_a_condition_fails_only_that_unit(mode):
    """A BaseException that does not interrupt the run, raised by user code the caller runs
    for a unit (a map reading its iterable, a when= predicate), fails that unit like one
    its function raised; it used to escape execute() and end the whole run."""

    def refuses(ctx):
        raise u.NotAnError("no answer")

    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(u.Paged(1, u.NotAnError)), name="pages")
    p.add_map(u.item_view, over="pages", name="paged")
    p.add_unit(u.const(1), ["pages"], name="gated", when=refuses)
    p.add_unit(u.const("ran"), name="independent")

    results = mode.execute(p)

    assert results["independent"] == "ran"
    failed = p.get_failed_units()
    assert isinstance(failed["paged"].__cause__, u.NotAnError)
    assert "raised NotAnError: page 2 failed" in str(failed["paged"])
    assert isinstance(failed["gated"], u.NotAnError)


def test_a_map_whose_input_did_not_complete_or_whose_condition_is_false_is_skipped(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.explode, name="broken")
    p.add_map(u.item_view, over="broken", name="never")
    p.add_map(u.item_view, over="never", name="never_either", run_if="all_done")
    p.add_map(u.item_view, over="broken", name="not_even_all_done", run_if="all_done")
    p.add_unit(u.const([1]), name="one")
    p.add_map(u.item_view, over="one", name="unwanted", when=lambda ctx: False)

    results = mode.execute(p)

    assert set(results) == {"one"}
    for name in ("never", "never_either", "not_even_all_done", "unwanted"):
        assert p.units[name].state is UnitState.SKIPPED
    assert p.units["unwanted"].error.cause is SkipCause.CONDITION
    assert p.units["never"].error.cause is SkipCause.UPSTREAM_FAILED


def test_fail_fast_cancels_the_items_that_have_not_started(mode):
    """fail_fast: once item 0 failed, only items already running may still complete. PROCESS
    used to send items ahead to busy workers, where they started after the failure."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(list(range(8))), name="numbers")
    p.add_map(u.fail_first_item(0.05), over="numbers", name="items")

    mode.execute(p, fail_fast=True)

    states = [p.last_execution_metrics["unit_times"].get(f"items[{k}]") for k in range(8)]
    completed = [k for k, times in enumerate(states) if times and times["state"] == "completed"]
    slots = {"sequential": 1, "custom-threadpool": 4}.get(mode.id, 2)
    assert len(completed) <= slots - 1  # those that ran beside item 0
    assert p.last_execution_metrics["stop_reason"] == "fail_fast"


def test_bad_maps_are_refused_before_any_unit_runs():
    p = QuantumPartitioner()
    with pytest.raises(ValueError, match="map 'loop': a map cannot map over itself"):
        p.add_map(u.item_view, over="loop", name="loop")
    with pytest.raises(TypeError, match="map 'bad': over must be the name of a unit"):
        p.add_map(u.item_view, over=3, name="bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_items must be >= 0"):
        p.add_map(u.item_view, over="x", name="bad", max_items=-1)
    p.add_map(u.item_view, over="missing", name="orphan")
    with pytest.raises(UnknownDependencyError, match="'orphan' depends on unknown unit 'missing'"):
        p.execute()
    p.remove_unit("orphan")
    p.add_map(u.item_view, over="second", name="first")
    p.add_map(u.item_view, over="first", name="second")
    with pytest.raises(CircularDependencyError):
        p.execute()


def test_a_unit_named_like_an_item_of_a_map_is_refused_saying_so(tmp_path):
    """``tool[5]`` beside a map ``tool``: refused before any unit runs, naming the map (it
    used to say "already exists; pass replace=True", which cannot help)."""
    ran = tmp_path / "ran"
    p = QuantumPartitioner()
    p.add_unit(u.logged(str(ran), list(range(10))), name="plan")
    p.add_map(u.item_view, over="plan", name="tool")
    p.add_unit(u.const("static"), name="tool[5]")
    with pytest.raises(DuplicateUnitError) as refused:
        p.execute()
    assert "unit 'tool[5]' has the name an item of map 'tool' takes" in str(refused.value)
    assert refused.value.map_name == "tool"
    assert pickle.loads(pickle.dumps(refused.value)).map_name == "tool"
    assert not ran.exists()


def test_the_record_can_be_read_from_another_thread_while_items_fail():
    """get_failed_units(), get_partial_results() and the metrics, read from another thread
    while a THREAD run's items fail and are added, never raise: they used to iterate dicts
    the run was filling ("dictionary changed size during iteration")."""
    errors: list[BaseException] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the reads interleave with the run
    try:
        for _ in range(3):
            p = QuantumPartitioner(max_workers=1)
            p.add_unit(u.const(list(range(1000))), name="numbers")
            p.add_map(u.explode, over="numbers", name="failing")
            done = threading.Event()

            def read(p=p, done=done):
                reads = (p.get_failed_units, p.get_partial_results) * 20
                while not done.is_set():
                    try:
                        for read_one in reads:
                            read_one()
                        _ = p.last_execution_metrics
                    except Exception as error:  # what the test looks for
                        errors.append(error)
                        return

            reader = threading.Thread(target=read)
            reader.start()
            try:
                p.execute(execution_mode="thread")
            finally:
                done.set()
                reader.join()
            assert len(p.get_failed_units()) == 1001
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_items_of_a_saturated_run_go_depth_first(tmp_path):
    """One worker: each item's item-wise child runs right after it, before the next item."""
    p = QuantumPartitioner()
    p.add_unit(u.const(["x", "y", "z"]), name="plan")
    p.add_map(u.tagged_item("a"), over="plan", name="a")
    p.add_map(u.tagged_item("b"), over="a", name="b")
    order = tmp_path / "order"

    p.execute({"order": str(order)}, execution_mode="sequential")

    assert order.read_text().split() == ["a[0]", "b[0]", "a[1]", "b[1]", "a[2]", "b[2]"]


def items_running_together(execute):
    """Run 2 units that make 6 items of 0.2 s; how many items ran at one moment."""
    p = QuantumPartitioner(max_workers=6)
    p.add_unit(u.const([0.2] * 6), name="naps")
    p.add_map(u.sleep(0.2, "done"), over="naps", name="calls", metadata={"resource_type": "io"})
    assert execute(p)["calls"] == ["done"] * 6
    times = p.last_execution_metrics["unit_times"]
    items = [times[f"calls[{k}]"] for k in range(6)]
    # The most items running at one moment. Each interval is shrunk at its end: an item sent
    # ahead to a busy worker starts a moment before the driver hears the previous one end.
    return max(
        sum(1 for other in items if other["start"] <= t["start"] < other["end"] - 0.1)
        for t in items
    )


def test_items_get_the_whole_pool_not_the_workers_the_first_units_needed(mode):
    """Two units to start with, then 6 items: they run max_workers at a time.

    Pools used to start no more workers than the graph's first units (2 here), so the items
    of a map ran two at a time in THREAD, PROCESS, ASYNC and the thread lane.
    """
    workers = {"sequential": 1, "process": 2, "custom-processpool": 2, "custom-threadpool": 4}
    # At least: with two processes, a third item may start as the driver hears of the first.
    assert items_running_together(mode.execute) >= workers.get(mode.id, 6)


def test_items_get_the_whole_thread_lane():
    """The same in a resource_balanced run's thread lane."""
    together = items_running_together(lambda p: p.execute_with_strategy(None, "resource_balanced"))
    assert together == 6


def test_items_hold_the_maps_limits(mode):
    p = QuantumPartitioner(max_workers=4)
    p.add_limit("tools", concurrency=1)
    p.add_unit(u.const([0.05, 0.05, 0.05]), name="naps")
    p.add_map(u.sleep(0.05, "done"), over="naps", name="calls", limits=["tools"])

    results = mode.execute(p)

    assert results["calls"] == ["done"] * 3
    assert p.limit_stats()["tools"].peak == 1
    assert p.limit_stats()["tools"].starts == 3


def test_at_least_counts_the_items_of_a_map_and_cancel_rest_stops_the_others(mode, tmp_path):
    """A quorum over a map's items: it runs once k items completed, the rest is cancelled."""
    gate = tmp_path / "never"  # the slow items wait for a file that never appears
    p = QuantumPartitioner(max_workers=4)
    p.add_unit(u.const(["fast", "fast", "slow", "slow"]), name="providers")
    p.add_map(u.quorum_member(str(gate)), over="providers", name="ask", timeout=30)
    p.add_unit(u.seen, ["ask"], name="quorum", run_if=at_least(2), cancel_rest=True)

    results = mode.execute(p)

    assert results["quorum"]["results"] == {"ask": ["fast:0", "fast:1"]}
    assert results["ask[0]"] == "fast:0"
    assert "ask[2]" not in results
    canceled = [
        r["unit"] for r in p.last_execution_metrics["execution_trace"] if r["event"] == "cancel"
    ]
    assert {"ask", "ask[2]", "ask[3]"} <= set(canceled)


def test_at_least_over_a_map_with_too_few_items_is_skipped(mode):
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const([1]), name="one")
    p.add_map(u.item_times(2), over="one", name="doubled")
    p.add_unit(u.seen, ["doubled"], name="quorum", run_if=at_least(2))
    p.add_unit(u.const([]), name="none")
    p.add_map(u.item_times(2), over="none", name="empty")
    p.add_unit(u.seen, ["empty"], name="empty_quorum", run_if=at_least(1))

    results = mode.execute(p)

    assert results["doubled"] == [2]
    assert p.units["quorum"].error.cause is SkipCause.JOIN_RULE
    assert p.units["empty_quorum"].error.cause is SkipCause.JOIN_RULE


def test_maps_stream_item_by_item_and_run_on_mixed_lanes():
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const([1, 2, 3]), name="plan", metadata={"resource_type": "io"})
    p.add_map(u.item_times(10), over="plan", name="cpu", metadata={"resource_type": "cpu"})
    p.add_map(u.item_times(2), over="cpu", name="io", metadata={"resource_type": "io"})
    p.add_unit(u.total("io"), ["io"], name="total", metadata={"resource_type": "io"})

    assert p.execute_with_strategy({}, "resource_balanced")["io"] == [20, 40, 60]
    with p.stream(execution_mode="thread") as stream:
        names = [result.name for result in stream]
    assert sorted(names) == sorted(
        ["plan", "cpu", "io", "total", *(f"{m}[{i}]" for m in ("cpu", "io") for i in range(3))]
    )
    assert names.index("cpu") > max(names.index(f"cpu[{i}]") for i in range(3))


def test_adding_a_map_or_a_subgraph_during_a_run_raises_runtime_error(mode):
    p = QuantumPartitioner()
    p.add_unit(u.const([1]), name="a")
    inner = QuantumPartitioner()
    inner.add_unit(u.const(2), name="b")
    refused = []

    def on_complete(unit_id, result):
        del unit_id, result
        for change in (
            lambda: p.add_map(u.item_view, over="a", name="late"),
            lambda: p.add_subgraph(inner, name="late_graph"),
        ):
            try:
                change()
            except RuntimeError as error:
                refused.append(str(error))

    p.on_unit_complete = on_complete

    assert mode.execute(p) == {"a": [1]}
    assert "add_map() was called while the partitioner is executing" in refused[0]
    assert "add_subgraph() was called while the partitioner is executing" in refused[1]
    assert set(p.units) == {"a"}
