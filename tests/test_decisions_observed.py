"""Skips by decision are visible as such: metrics, trace, report, picture and progress bar.

A unit skipped by a decision (a condition, ``ctx.skip``, a join rule not met) is told apart
from one skipped because something failed, everywhere a run is shown.
"""

from __future__ import annotations

import io
import json

from quantum_partitioner import (
    ExecutionMode,
    ProgressBar,
    QuantumPartitioner,
    SkipCause,
    UnitState,
)
from quantum_partitioner.observability._render import DECIDED_SKIP_COLOUR, STATE_COLOURS

SEQ = ExecutionMode.SEQUENTIAL


def decided_and_failed(instruments=()):
    """``fetch`` skips itself, ``off`` has a false condition, ``boom`` fails."""
    p = QuantumPartitioner(instruments=list(instruments))
    p.add_unit(lambda ctx: ctx.skip("nothing new"), name="fetch")
    p.add_unit(lambda ctx: 1, ["fetch"], name="parse")
    p.add_unit(lambda ctx: 2, name="off", when=lambda ctx: False)
    p.add_unit(lambda ctx: 1 / 0, name="boom")
    p.add_unit(lambda ctx: 3, ["boom"], name="after_boom")
    return p


def test_metrics_count_skips_by_cause_and_the_trace_names_each_cause():
    """last_execution_metrics has skip_causes; each skip event of the trace has its cause."""
    p = decided_and_failed()
    p.execute(execution_mode=SEQ)
    metrics = p.last_execution_metrics
    assert metrics["skipped_units"] == 4
    assert metrics["failed_units"] == 1
    assert metrics["skip_causes"] == {
        "decision": 1,
        "join_rule": 1,
        "condition": 1,
        "upstream_failed": 1,
    }
    causes = {e["unit"]: e["cause"] for e in metrics["execution_trace"] if e["event"] == "skip"}
    assert causes == {
        "fetch": "decision",
        "parse": "join_rule",
        "off": "condition",
        "after_boom": "upstream_failed",
    }
    assert metrics["unit_times"]["fetch"]["state"] == "skipped"  # it ran, then skipped


def test_progress_bar_says_how_many_skips_were_decisions():
    """The bar counts every skip and says how many were decided."""
    out = io.StringIO()
    bar = ProgressBar(file=out, force_terminal=True)
    decided_and_failed([bar]).execute(execution_mode=SEQ)
    assert (bar.skipped, bar.skipped_by_decision) == (4, 3)
    assert "skipped 4 (3 by decision)" in out.getvalue()


def test_report_picture_and_trace_colour_decided_skips_apart(tmp_path):
    """Report, DOT picture and Chrome trace mark decided skips apart from failure skips."""
    p = decided_and_failed()
    p.execute(execution_mode=SEQ)
    assert p.units["parse"].error.cause is SkipCause.JOIN_RULE
    html = p.write_report(tmp_path / "report.html").read_text()
    assert "of which by decision 3" in html
    assert DECIDED_SKIP_COLOUR in html
    dot = p.build_execution_plan().visualize()
    assert f'"off" [fillcolor="{DECIDED_SKIP_COLOUR}"' in dot
    assert f'"after_boom" [fillcolor="{STATE_COLOURS[UnitState.SKIPPED]}"' in dot
    trace = json.loads(p.export_trace(tmp_path / "trace.json").read_text())
    slices = {e["name"]: e["cat"] for e in trace["traceEvents"] if e.get("ph") == "X"}
    assert slices["fetch [skipped]"] == "skipped"  # ctx.skip ran an attempt: a slice
    marks = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "i"}
    assert {"skipped: off", "skipped: parse", "skipped: after_boom"} <= marks
