"""Trace export: Chrome trace JSON checked against the run record, and OpenTelemetry spans."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    TraceRecorder,
    UnitState,
)

SEQ = ExecutionMode.SEQUENTIAL
FAST_RETRY = RetryPolicy(backoff=ExponentialBackoff(initial=0.002, jitter=0.0))


def story():
    """A run with every kind of event.

    load --> flaky (fails twice, then completes) --> report
      |
      +----> boom (fails) --> after_boom (skipped)
      |
      +----> slow (times out) --> after_slow (skipped)
    """
    failures = {"flaky": 2}
    lock = threading.Lock()

    def flaky(ctx):
        with lock:
            failures["flaky"] -= 1
            left = failures["flaky"]
        if left >= 0:
            raise ConnectionError(f"flaky: {left} failures left")
        return "fetched"

    def boom(ctx):
        raise ValueError("bad input")

    def slow(ctx):
        time.sleep(0.05)

    qp = QuantumPartitioner(max_workers=3, retry_policy=FAST_RETRY)
    qp.add_unit(lambda ctx: time.sleep(0.002) or "loaded", name="load")
    qp.add_unit(flaky, ["load"], name="flaky", retries=3)
    qp.add_unit(lambda ctx: "done", ["flaky"], name="report")
    qp.add_unit(boom, ["load"], name="boom")
    qp.add_unit(lambda ctx: None, ["boom"], name="after_boom")
    qp.add_unit(slow, ["load"], name="slow", timeout=0.01)
    qp.add_unit(lambda ctx: None, ["slow"], name="after_slow")
    return qp


def load_trace(qp, tmp_path, name="trace.json"):
    path = qp.export_trace(tmp_path / name)
    assert path == tmp_path / name
    return json.loads(path.read_text())


def slices(doc):
    return [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] != "run"]


def run_slice(doc):
    (run,) = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "run"]
    return run


def track_names(doc):
    return {
        e["tid"]: e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def assert_tracks_are_sequential(doc):
    by_tid = defaultdict(list)
    for e in slices(doc):
        by_tid[e["tid"]].append(e)
    for events in by_tid.values():
        events.sort(key=lambda e: e["ts"])
        for a, b in itertools.pairwise(events):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, (a, b)


# -- Chrome trace -------------------------------------------------------------------------------


def test_every_attempt_is_one_slice_with_its_outcome(tmp_path):
    """One "X" slice per attempt: retried attempts, the failure and the timeout are marked."""
    qp = story()
    qp.execute(execution_mode=SEQ, trace=True)
    doc = load_trace(qp, tmp_path)
    got = sorted((e["args"]["unit"], e["args"]["attempt"], e["cat"]) for e in slices(doc))
    assert got == [
        ("boom", 1, "failed"),
        ("flaky", 1, "retried"),
        ("flaky", 2, "retried"),
        ("flaky", 3, "completed"),
        ("load", 1, "completed"),
        ("report", 1, "completed"),
        ("slow", 1, "timeout"),
    ]
    total_attempts = sum(unit.attempt for unit in qp.units.values())
    assert len(slices(doc)) == total_attempts
    names = {e["name"] for e in slices(doc)}
    assert {"flaky [retried]", "flaky", "boom [failed]", "slow [timeout]"} <= names
    errors = {
        e["args"]["unit"]: e["args"].get("error") for e in slices(doc) if e["cat"] != "retried"
    }
    assert errors["boom"] == "ValueError: bad input"
    assert errors["slow"].startswith("UnitTimeoutError")


def test_skips_timeouts_and_retry_waits_are_marked(tmp_path):
    """Skipped units are instant events on the run track; retry waits are async slices."""
    qp = story()
    qp.execute(execution_mode=SEQ, trace=True)
    doc = load_trace(qp, tmp_path)
    events = doc["traceEvents"]
    skipped = {e["args"]["unit"]: e for e in events if e.get("cat") == "skipped"}
    assert set(skipped) == {"after_boom", "after_slow"}
    assert all(e["ph"] == "i" and e["tid"] == 0 for e in skipped.values())
    assert "boom" in skipped["after_boom"]["args"]["reason"]
    assert [e["args"]["unit"] for e in events if e.get("cat") == "timeout" and e["ph"] == "i"] == [
        "slow"
    ]
    waits = [e for e in events if e.get("cat") == "retry"]
    assert [e["ph"] for e in waits] == ["b", "e", "b", "e"]
    flaky = sorted((e for e in slices(doc) if e["args"]["unit"] == "flaky"), key=lambda e: e["ts"])
    assert [e["args"]["attempt"] for e in flaky] == [1, 2, 3]
    for (begin, end), before, after in zip(
        zip(waits[::2], waits[1::2], strict=True), flaky[:-1], flaky[1:], strict=True
    ):
        assert begin["id"] == end["id"]
        assert begin["ts"] == pytest.approx(before["ts"] + before["dur"], abs=2e-3)
        assert end["ts"] == pytest.approx(after["ts"], abs=1e-3)


def test_slices_match_the_run_record(tmp_path):
    """Each completed unit's slice starts and ends when the run record says it did."""
    qp = story()
    qp.execute(execution_mode=SEQ, trace=True)
    doc = load_trace(qp, tmp_path)
    origin = doc["otherData"]["start_epoch_seconds"]
    for e in slices(doc):
        unit = qp.units[e["args"]["unit"]]
        if e["args"]["attempt"] == unit.attempt and unit.state is UnitState.COMPLETED:
            assert origin + e["ts"] / 1e6 == pytest.approx(unit.start_time, abs=2e-6)
            assert origin + (e["ts"] + e["dur"]) / 1e6 == pytest.approx(unit.end_time, abs=2e-6)


def test_attempts_nest_inside_the_run_and_follow_their_dependencies(tmp_path):
    """Slices lie within the run slice, and a unit starts after its dependencies end."""
    qp = story()
    qp.execute(execution_mode=SEQ, trace=True)
    doc = load_trace(qp, tmp_path)
    run = run_slice(doc)
    assert run["tid"] == 0
    assert run["args"]["completed"] == 3
    ends = {}
    for e in slices(doc):
        assert run["ts"] <= e["ts"]
        assert e["ts"] + e["dur"] <= run["ts"] + run["dur"] + 1e-3
        ends[e["args"]["unit"]] = max(ends.get(e["args"]["unit"], 0), e["ts"] + e["dur"])
    for e in slices(doc):
        for dep in qp.units[e["args"]["unit"]].dependencies:
            assert ends[dep] <= e["ts"] + 1e-3
    metadata = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    timed = [e["ts"] for e in doc["traceEvents"] if e["ph"] != "M"]
    assert doc["traceEvents"][: len(metadata)] == metadata
    assert timed == sorted(timed)


def test_thread_runs_get_one_track_per_worker_thread(tmp_path):
    """With trace=True, THREAD mode has one track per worker thread, none overlapping."""
    qp = QuantumPartitioner(max_workers=3)
    for i in range(24):
        qp.add_unit(lambda ctx: time.sleep(0.001), name=f"u{i}")
    qp.add_unit(lambda ctx: None, [f"u{i}" for i in range(24)], name="sink")
    qp.execute(trace=True)
    doc = load_trace(qp, tmp_path)
    names = track_names(doc)
    assert names[0] == "run"
    workers = {names[e["tid"]] for e in slices(doc)}
    assert 1 <= len(workers) <= 3
    assert all(name.startswith("quantum-partitioner-") for name in workers)
    assert len(slices(doc)) == 25
    assert_tracks_are_sequential(doc)


def test_without_a_recorder_attempts_are_packed_on_slots(tmp_path):
    """A run traced without a recorder still gets at most max_workers sequential tracks."""
    qp = QuantumPartitioner(max_workers=2)
    for i in range(10):
        qp.add_unit(lambda ctx: time.sleep(0.002), name=f"u{i}")
    qp.execute()
    doc = load_trace(qp, tmp_path)
    used = {track_names(doc)[e["tid"]] for e in slices(doc)}
    assert used <= {"thread slot 1", "thread slot 2"}
    assert_tracks_are_sequential(doc)


def test_executor_runs_are_packed_on_slots_even_with_a_recorder(tmp_path):
    """Where the driver hands attempts to an executor, tracks are slots of that executor."""
    qp = QuantumPartitioner()
    for i in range(12):
        qp.add_unit(lambda ctx: time.sleep(0.002), name=f"u{i}")
    with ThreadPoolExecutor(3) as pool:
        qp.execute(execution_mode=ExecutionMode.CUSTOM, custom_executor=pool, trace=True)
    doc = load_trace(qp, tmp_path)
    used = {track_names(doc)[e["tid"]] for e in slices(doc)}
    assert used <= {"custom slot 1", "custom slot 2", "custom slot 3"}
    assert len(slices(doc)) == 12
    assert_tracks_are_sequential(doc)


def test_workers_the_backend_reports_name_tracks_and_never_overlap(tmp_path):
    """Units a backend says ran on one worker (Dask) share its track, split where concurrent."""
    qp = QuantumPartitioner()
    for i in range(4):
        qp.add_unit(lambda ctx: time.sleep(0.02), name=f"u{i}")
    with ThreadPoolExecutor(4) as pool:
        qp.execute(execution_mode=ExecutionMode.CUSTOM, custom_executor=pool)
    run = qp._last_run
    run.unit_workers.update(dict.fromkeys(range(4), "tcp://10.0.0.1:4000"))
    doc = load_trace(qp, tmp_path)
    used = sorted({track_names(doc)[e["tid"]] for e in slices(doc)})
    assert used[0] == "tcp://10.0.0.1:4000"
    assert all(name.startswith("tcp://10.0.0.1:4000") for name in used)
    assert len(used) > 1  # the four ran at the same time
    assert_tracks_are_sequential(doc)


def test_a_recorder_in_instruments_follows_each_run(tmp_path):
    """A TraceRecorder passed to the partitioner records every run, starting afresh."""
    recorder = TraceRecorder()
    qp = QuantumPartitioner(instruments=[recorder])
    qp.add_unit(lambda ctx: 1, name="a")
    qp.execute(execution_mode=SEQ)
    assert recorder.workers == {("a", 1): threading.current_thread().name}
    qp.add_unit(lambda ctx: 2, name="b")
    qp.execute(execution_mode=SEQ)
    assert set(recorder.workers) == {("a", 1), ("b", 1)}
    doc = load_trace(qp, tmp_path)
    assert {track_names(doc)[e["tid"]] for e in slices(doc)} == {threading.current_thread().name}


def test_gz_suffix_writes_gzip(tmp_path):
    """A path ending in .gz gets a gzipped trace (Perfetto opens it as is)."""
    qp = story()
    qp.execute(execution_mode=SEQ)
    path = qp.export_trace(tmp_path / "trace.json.gz")
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert len(slices(doc)) == 7


def test_export_needs_a_finished_run(tmp_path):
    """Exporting before any run raises a RuntimeError that says to execute first."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="a")
    with pytest.raises(RuntimeError, match="execute"):
        qp.export_trace(tmp_path / "t.json")
    with pytest.raises(RuntimeError, match="execute"):
        qp.export_otel()


def test_a_unit_cancelled_while_running_is_a_cancelled_slice(tmp_path):
    """cancel() during a run: the running attempt ends as a "canceled" slice, waiters marks."""
    qp = QuantumPartitioner(max_workers=1)
    started = threading.Event()

    def hold(ctx):
        started.set()
        deadline = time.monotonic() + 2
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.001)

    qp.add_unit(hold, name="hold")
    qp.add_unit(lambda ctx: None, ["hold"], name="next")
    threading.Thread(target=lambda: started.wait(2) and qp.cancel()).start()
    qp.execute()
    doc = load_trace(qp, tmp_path)
    assert [(e["args"]["unit"], e["cat"]) for e in slices(doc)] == [("hold", "canceled")]
    marks = [e["args"]["unit"] for e in doc["traceEvents"] if e.get("cat") == "canceled"]
    assert "next" in marks


# -- OpenTelemetry ------------------------------------------------------------------------------


@pytest.fixture
def otel():
    """A tracer provider whose spans land in an InMemorySpanExporter."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    return provider, exporter


def status_code():
    return pytest.importorskip("opentelemetry.trace").StatusCode


def test_otel_one_run_span_and_one_child_per_attempt(otel):
    """The run is one span; each attempt a child span with unit id, attempt and state."""
    StatusCode = status_code()  # noqa: N806 - the class's own name

    provider, exporter = otel
    qp = story()
    qp.execute(execution_mode=SEQ)
    qp.export_otel(provider)
    spans = exporter.get_finished_spans()
    (run,) = [s for s in spans if s.name == "quantum_partitioner.run"]
    attempts = [s for s in spans if s is not run]
    assert len(attempts) == sum(unit.attempt for unit in qp.units.values())
    for span in attempts:
        assert span.parent is not None
        assert span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
        assert run.start_time <= span.start_time <= span.end_time <= run.end_time
        assert span.name == span.attributes["quantum_partitioner.unit.id"]
    by_key = {
        (
            s.attributes["quantum_partitioner.unit.id"],
            s.attributes["quantum_partitioner.unit.attempt"],
        ): s
        for s in attempts
    }
    assert by_key["load", 1].attributes["quantum_partitioner.unit.state"] == "completed"
    assert by_key["load", 1].status.status_code is StatusCode.UNSET
    boom = by_key["boom", 1]
    assert boom.attributes["quantum_partitioner.unit.state"] == "failed"
    assert boom.attributes["quantum_partitioner.unit.error"] == "ValueError: bad input"
    assert boom.status.status_code is StatusCode.ERROR
    assert [e.name for e in boom.events] == ["exception"]
    retried = by_key["flaky", 1]
    assert retried.attributes["quantum_partitioner.unit.retried"] is True
    assert retried.status.status_code is StatusCode.ERROR
    assert by_key["flaky", 3].attributes["quantum_partitioner.unit.retried"] is False
    assert by_key["slow", 1].attributes["quantum_partitioner.unit.state"] == "timeout"


def test_otel_an_error_whose_str_raises_is_an_exception_event_saying_so(otel):
    """An attempt's error whose ``__str__`` raises: its span still ends, with the event."""

    class UnprintableError(Exception):
        def __str__(self):
            raise RuntimeError("__str__ is broken")

    def fails(ctx):
        raise UnprintableError

    provider, exporter = otel
    qp = QuantumPartitioner()
    qp.add_unit(fails, name="bad")
    qp.execute(execution_mode=SEQ)
    qp.export_otel(provider)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "bad"]
    (event,) = span.events
    assert event.name == "exception"
    message = event.attributes["exception.message"]
    assert message == "<str() of UnprintableError raised RuntimeError>"


def test_otel_run_span_has_counts_skips_and_error_status(otel):
    """The run span counts units by state, lists skipped units as events, and is ERROR."""
    StatusCode = status_code()  # noqa: N806 - the class's own name

    provider, exporter = otel
    qp = story()
    qp.execute(execution_mode=SEQ)
    returned = qp.export_otel(tracer_provider=provider)
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "quantum_partitioner.run"]
    assert returned.get_span_context().span_id == run.context.span_id
    assert run.attributes["quantum_partitioner.units"] == 7
    assert run.attributes["quantum_partitioner.units.completed"] == 3
    assert run.attributes["quantum_partitioner.units.skipped"] == 2
    assert run.status.status_code is StatusCode.ERROR
    skipped = sorted(
        e.attributes["quantum_partitioner.unit.id"] for e in run.events if e.name == "unit skipped"
    )
    assert skipped == ["after_boom", "after_slow"]


def test_otel_run_span_is_a_child_of_the_current_span(otel):
    """Exported inside an active span, the run span becomes its child."""
    provider, exporter = otel
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="a")
    qp.execute(execution_mode=SEQ)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("job") as job:
        qp.export_otel(provider)
    run = next(s for s in exporter.get_finished_spans() if s.name == "quantum_partitioner.run")
    assert run.parent.span_id == job.get_span_context().span_id


def test_otel_missing_names_the_extra(monkeypatch):
    """Without opentelemetry-api, export_otel says which extra to install."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="a")
    qp.execute(execution_mode=SEQ)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"quantum-partitioner\[otel\]"):
        qp.export_otel()


def test_aexecute_records_and_exports_too(tmp_path):
    """aexecute(trace=True) on a running loop: one slot track per concurrent coroutine."""

    async def unit(ctx):
        await asyncio.sleep(0.005)

    qp = QuantumPartitioner()
    for i in range(3):
        qp.add_unit(unit, name=f"c{i}")
    qp.add_unit(unit, [f"c{i}" for i in range(3)], name="sink")
    asyncio.run(qp.aexecute(trace=True, progress=True))
    doc = load_trace(qp, tmp_path)
    assert len(slices(doc)) == 4
    assert {track_names(doc)[e["tid"]] for e in slices(doc)} == {
        "async slot 1",
        "async slot 2",
        "async slot 3",
    }
    assert_tracks_are_sequential(doc)


# -- maps: every item is a unit of the trace ------------------------------------------------


def mapped_story():
    """plan -> fetch (a map; item 1 fails after a retry) -> parse (item-wise) -> report.

    fetch[1] fails for good, so parse[1] is skipped; report (all_done) still runs.
    """
    attempts = defaultdict(int)

    def fetch(ctx):
        attempts[ctx.index] += 1
        if ctx.index == 1:
            raise ConnectionError(f"no route to {ctx.item}")
        time.sleep(0.002)
        return ctx.item.upper()

    qp = QuantumPartitioner(max_workers=2)
    qp.add_unit(lambda ctx: ["a", "b", "c"], name="plan")
    qp.add_map(fetch, over="plan", name="fetch", retries=1)
    qp.add_map(lambda ctx: f"<{ctx.item}>", over="fetch", name="parse")
    qp.add_unit(lambda ctx: ctx["parse"], ["parse"], name="report", run_if="all_done")
    return qp


@pytest.mark.parametrize("mode", [SEQ, ExecutionMode.THREAD])
def test_every_map_item_is_in_the_trace_metrics_and_partial_results(tmp_path, mode):
    """The trace, loaded back, has each item's attempts and skips; so do metrics and results."""
    qp = mapped_story()
    qp.execute(execution_mode=mode, trace=True)
    doc = load_trace(qp, tmp_path)
    got = sorted((e["args"]["unit"], e["args"]["attempt"], e["cat"]) for e in slices(doc))
    assert got == [
        ("fetch[0]", 1, "completed"),
        ("fetch[1]", 1, "retried"),
        ("fetch[1]", 2, "failed"),
        ("fetch[2]", 1, "completed"),
        ("parse[0]", 1, "completed"),
        ("parse[2]", 1, "completed"),
        ("plan", 1, "completed"),
        ("report", 1, "completed"),
    ]
    skipped = [e["args"]["unit"] for e in doc["traceEvents"] if e.get("cat") == "skipped"]
    assert skipped == ["parse[1]"]
    metrics = qp.last_execution_metrics
    items = {"fetch[0]", "fetch[1]", "fetch[2]", "parse[0]", "parse[2]"}
    assert {"plan", "report", *items} == set(metrics["unit_times"])  # what ran
    assert metrics["unit_times"]["fetch[1]"]["attempts"] == 2
    assert metrics["total_units"] == 4 + 6
    assert (metrics["completed_units"], metrics["failed_units"]) == (6, 3)  # fetch, parse fail
    ends = {r["unit"] for r in metrics["execution_trace"] if r["event"] in {"skip", "error"}}
    assert ends == {"fetch[1]", "parse[1]", "fetch", "parse"}
    partial = qp.get_partial_results()
    assert {k: partial[k] for k in ("fetch[0]", "fetch[2]", "parse[0]", "parse[2]")} == {
        "fetch[0]": "A",
        "fetch[2]": "C",
        "parse[0]": "<A>",
        "parse[2]": "<C>",
    }
    assert partial["report"] == ["<A>", "<C>"]  # all_done: the completed items' results


def test_the_observed_critical_path_goes_through_the_item_that_ended_last():
    """A map never runs: the path steps from its dependent to its last item, then upstream."""
    from quantum_partitioner.observability._trace import observed_critical_path  # noqa: PLC0415

    qp = QuantumPartitioner(max_workers=2)
    qp.add_unit(lambda ctx: [0.0, 0.05, 0.0], name="plan")
    qp.add_map(lambda ctx: time.sleep(ctx.item) or ctx.index, over="plan", name="wait")
    qp.add_map(lambda ctx: ctx.item, over="wait", name="echo")
    qp.add_unit(lambda ctx: ctx["echo"], ["echo"], name="done")
    qp.execute(execution_mode=ExecutionMode.THREAD)
    run = qp._last_run
    names = run.graph.names
    assert [names[i] for i in observed_critical_path(run)] == [
        "plan",
        "wait[1]",
        "echo[1]",
        "done",
    ]
