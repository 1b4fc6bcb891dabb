"""examples/agent_dynamic.py: routing, optional tools and joins, in THREAD, PROCESS and ASYNC.

The example is imported as a module with examples/ on ``sys.path`` (so PROCESS workers can
import its functions), and also run as a script.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_partitioner import ExecutionMode, SkipCause, UnitState

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ORDER = "What do 3 widgets and 2 gadgets cost, shipped, and is it raining in Porto?"
LOOKUP = "Where is the Porto warehouse?"


@pytest.fixture
def agent(monkeypatch):
    """The example module, imported as a user would."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield importlib.import_module("agent_dynamic")
    sys.modules.pop("agent_dynamic", None)


@pytest.mark.parametrize(
    "mode", [ExecutionMode.THREAD, ExecutionMode.PROCESS, ExecutionMode.ASYNC], ids=str
)
def test_the_plan_decides_the_branch_and_the_tools_in_every_mode(agent, mode):
    """The order question computes, runs two tools, reports the failed one; as SEQUENTIAL."""
    reference = agent.build().execute({"question": ORDER}, ExecutionMode.SEQUENTIAL)
    p = agent.build()
    results = p.execute({"question": ORDER}, mode, max_workers=2)

    assert results == reference
    assert results["answer"] == "The order costs 37.50 EUR."
    assert results["tools"]["results"] == {
        "pricing": {"widget": "13.50 EUR", "gadget": "24.00 EUR"},
        "shipping": "ships in 5 days",
    }
    assert list(results["tools"]["missing"]) == ["weather"]
    assert results["report"].splitlines()[-1] == "weather: unavailable"
    assert p.units["lookup"].error.cause is SkipCause.CONDITION
    # The map made one unit per chosen tool; the weather tool failed after its retry.
    assert [results[f"tool[{i}]"][0] for i in range(2)] == ["pricing", "shipping"]
    assert isinstance(p.get_failed_units()["tool[2]"], agent.WeatherServiceError)
    assert p.last_execution_metrics["unit_times"]["tool[2]"]["attempts"] == 2  # retried once
    assert p.units["tool"].state is UnitState.FAILED
    assert p.units["report"].state is UnitState.COMPLETED


def test_a_lookup_question_skips_compute_and_every_tool(agent):
    """A question without items takes the lookup branch; no tool is needed; no failure."""
    p = agent.build()
    results = p.execute({"question": LOOKUP}, ExecutionMode.THREAD)
    assert results["answer"] == "The Porto warehouse ships gadgets."
    assert results["tools"] == {
        "results": {},
        "missing": {},
        "not_needed": ["pricing", "shipping", "weather"],
    }
    assert p.get_failed_units() == {}


def test_the_script_prints_the_report():
    """Run as a script, it prints the question, the report and what did not complete."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_dynamic.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "The order costs 37.50 EUR." in result.stdout
    assert "lookup: skipped" in result.stdout
    assert "tool[2]: failed" in result.stdout
