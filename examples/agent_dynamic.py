"""An agent workflow that decides while it runs: routing, tools chosen by a result, joins.

The graph it builds::

    plan ─┬─> lookup  (when the plan routes to a lookup) ─┐
          ├─> compute (when it routes to arithmetic) ─────┴─> answer  (none_failed) ─┐
          └─> chosen ─> tool[0], tool[1], ... (a map: one per tool the plan chose)   │
                            └──> tools (all_done) ─────────────> report (all_done) <─┘

The planning unit reads the question and decides which branch answers it and which tools
help: the other branch is SKIPPED by its condition, without running, and the map ``tool``
creates one unit per chosen tool, each retried, timed out and traced on its own. ``answer``
joins the branch that ran (``none_failed``); ``tools`` collects the tools that ran, whatever
happened to them (``all_done``: it receives the results of the tools that completed, and a
tool that failed is named in ``ctx.upstream_errors``); ``report`` always runs and says what
happened. A tool may decide it has nothing to add and skip itself (``ctx.skip``), which is
not a failure.

The agents are small local stand-ins for model-backed ones. Run it as a script (an optional
question as arguments)::

    python examples/agent_dynamic.py

or through the command line::

    quantum-partitioner run examples/agent_dynamic.py:build \\
        --context '{"question": "What do 3 widgets cost, and is it raining in Lyon?"}'
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal
from typing import Any

from quantum_partitioner import MapItemsFailedError, QuantumPartitioner

DEFAULT_QUESTION = "What do 3 widgets and 2 gadgets cost, shipped, and is it raining in Porto?"

PRICES = {"widget": Decimal("4.50"), "gadget": Decimal("12.00"), "gizmo": Decimal("7.25")}
SHIPPING_DAYS = {"widget": 2, "gadget": 5, "gizmo": 1}
FACTS = {
    "lyon": "The Lyon warehouse ships widgets and gizmos.",
    "porto": "The Porto warehouse ships gadgets.",
}
TOOLS = ("pricing", "shipping", "weather")


class WeatherServiceError(ConnectionError):
    """The weather tool's service does not answer (it never does, in this example)."""


def plan(ctx: Any) -> dict[str, Any]:
    """Read the question: which items, whether it is arithmetic, which tools would help."""
    question = ctx["question"].lower()
    items = {
        name: int(count) for count, name in re.findall(r"(\d+)\s+(widget|gadget|gizmo)s?", question)
    }
    tools = []
    if items:
        tools.append("pricing")
    if items and ("ship" in question or "deliver" in question):
        tools.append("shipping")
    if "rain" in question or "weather" in question:
        tools.append("weather")
    return {"route": "compute" if items else "lookup", "items": items, "tools": tools}


def lookup(ctx: Any) -> str:
    """Answer from the facts that mention a word of the question."""
    words = set(re.findall(r"[a-z]+", ctx["question"].lower()))
    found = [fact for key, fact in FACTS.items() if key in words]
    return " ".join(found) or "I know nothing about that."


def compute(ctx: Any) -> str:
    """Sum the order's price."""
    items = ctx["plan"]["items"]
    total = sum(PRICES[name] * count for name, count in items.items())
    return f"The order costs {total:.2f} EUR."


def pricing(ctx: Any) -> dict[str, str]:
    """Each item's line price."""
    return {name: f"{PRICES[name] * count:.2f} EUR" for name, count in ctx["plan"]["items"].items()}


def shipping(ctx: Any) -> str:
    """When the whole order can ship; skips itself when nothing needs shipping."""
    items = ctx["plan"]["items"]
    if not items:
        ctx.skip("nothing to ship")
    return f"ships in {max(SHIPPING_DAYS[name] for name in items)} days"


def weather(ctx: Any) -> str:
    """Ask a weather service that is down: this tool always fails."""
    raise WeatherServiceError("the weather service does not answer")


TOOL_FUNCTIONS = {"pricing": pricing, "shipping": shipping, "weather": weather}


def call_tool(ctx: Any) -> tuple[str, Any]:
    """One item of the map ``tool``: run the tool ``ctx.item`` names; say which it was."""
    return ctx.item, TOOL_FUNCTIONS[ctx.item](ctx)


def collect_tools(ctx: Any) -> dict[str, Any]:
    """The tools that produced something, those that failed, and those with nothing to add."""
    chosen = ctx["chosen"]
    results = dict(ctx.unit_results.get("tool", []))
    error = ctx.upstream_errors.get("tool")
    failed = error.failed_items if isinstance(error, MapItemsFailedError) else []
    missing = {chosen[int(item[len("tool[") : -1])]: "failed" for item in failed}
    not_needed = [name for name in TOOLS if name not in results and name not in missing]
    return {"results": results, "missing": missing, "not_needed": not_needed}


def report(ctx: Any) -> str:
    """One paragraph: the answer if there is one, what the tools said, what went wrong."""
    answer = ctx.unit_results.get("answer", "(no answer)")
    lines = [answer]
    tools = ctx.unit_results.get("tools", {"results": {}, "missing": {}})
    lines.extend(f"{name}: {result}" for name, result in sorted(tools["results"].items()))
    lines.extend(f"{name}: unavailable" for name in sorted(tools["missing"]))
    return "\n".join(lines)


def build() -> QuantumPartitioner[Any, Any]:
    """The workflow, ready to execute with ``{"question": ...}`` as its context."""
    p: QuantumPartitioner[Any, Any] = QuantumPartitioner(max_workers=4)
    p.add_unit(plan, name="plan")
    p.add_unit(lookup, ["plan"], name="lookup", when=lambda ctx: ctx["plan"]["route"] == "lookup")
    p.add_unit(
        compute, ["plan"], name="compute", when=lambda ctx: ctx["plan"]["route"] == "compute"
    )
    p.add_unit(
        lambda ctx: next(iter(ctx.unit_results.values())),
        ["lookup", "compute"],
        name="answer",
        run_if="none_failed",
    )
    p.add_unit(lambda ctx: ctx["plan"]["tools"], ["plan"], name="chosen")
    p.add_map(call_tool, over="chosen", name="tool", dependencies=["plan"], timeout=30, retries=1)
    p.add_unit(collect_tools, ["chosen", "tool"], name="tools", run_if="all_done")
    p.add_unit(report, ["answer", "tools"], name="report", run_if="all_done")
    return p


def main(argv: list[str]) -> int:
    """Run the workflow on a question and print the report and what was skipped."""
    question = " ".join(argv) or DEFAULT_QUESTION
    partitioner = build()
    results = partitioner.execute({"question": question})
    print(f"Q: {question}")
    print(results["report"])
    for name, error in partitioner.get_failed_units().items():
        print(f"  {name}: failed ({error})")
    for name, unit in partitioner.units.items():
        if unit.state.value == "skipped":
            print(f"  {name}: skipped ({unit.error})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
