"""Multi-agent orchestration: retrieval, then reasoning, then tools in parallel, then a reply.

The "Multi-Agent Orchestration" integration example. The graph it builds::

    retrieval_agent -> reasoning_agent -+-> tool_agent_pricing  --+-> response_agent
                                        +-> tool_agent_shipping --+
                                        +---------------------------^

The retrieval agent finds the facts that bear on the question; the reasoning agent reads
the question and those facts into a structured plan; one tool agent per required tool
works on that plan, all at once; the response agent writes the answer from the plan and
every tool's result.

The agents are local stand-ins for remote model-backed agents. They do real (small) work on
a little knowledge base: keyword retrieval, parsing quantities and prices, arithmetic with
``Decimal``. Retrieval and tool calls sleep a few milliseconds to stand for their network
round trips. The units' lambdas reach the agents through ``available_agents``, a variable of
the enclosing function: in PROCESS mode or with the ``resource_balanced`` strategy (which
sends the ``"cpu"`` agents to worker processes) the closures travel with cloudpickle.

Run it as a script (an optional question as arguments)::

    python examples/multi_agent.py

or through the command line (the units read the question from the context)::

    quantum-partitioner run examples/multi_agent.py:build --strategy resource_balanced \\
        --context '{"query": "What do 3 widgets and 2 gadgets cost in USD?"}'
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from quantum_partitioner import QuantumPartitioner

DEFAULT_QUERY = "What do 3 widgets and 2 gadgets cost in USD, and when can they ship?"

KNOWLEDGE_BASE = (
    "A widget costs 4.50 EUR.",
    "A gadget costs 12.00 EUR.",
    "A gizmo costs 7.25 EUR.",
    "Widgets ship in 2 days from the Lyon warehouse.",
    "Gadgets ship in 5 days from the Porto warehouse.",
    "Gizmos ship in 1 day from the Lyon warehouse.",
    "The exchange rate is 1.10 USD per EUR.",
    "Orders over 100 EUR ship for free.",
    "The Lyon warehouse is closed on Sundays.",
)

NETWORK_LATENCY = 0.005  # seconds: what a call to a remote agent would wait, at least


@dataclass(frozen=True)
class Plan:
    """What the reasoning agent made of the question and the retrieved facts."""

    items: dict[str, int]  # product -> quantity asked for
    prices: dict[str, Decimal]  # product -> unit price in EUR
    shipping_days: dict[str, int]  # product -> days to ship
    rate: Decimal  # USD per EUR
    currency: str


def singular(word: str) -> str:
    """``widgets`` -> ``widget`` (the knowledge base's products are regular plurals)."""
    return word.removesuffix("s")


def keywords(text: str) -> set[str]:
    """The lower-case words of ``text``, in the singular."""
    return {singular(word) for word in re.findall(r"[a-z]+", text.lower())}


class RetrievalAgent:
    """Finds the facts that share the rarest keywords with the question (TF-IDF style)."""

    def __init__(self, knowledge: tuple[str, ...], top_k: int = 5) -> None:
        self.knowledge = knowledge
        self.top_k = top_k
        self.fact_words = [keywords(fact) for fact in knowledge]
        counts = Counter(word for words in self.fact_words for word in words)
        # A word found in every fact tells none apart; a word found in one tells it best.
        self.weight = {word: math.log(len(knowledge) / n) for word, n in counts.items()}

    def process(self, query: str) -> list[str]:
        time.sleep(NETWORK_LATENCY)
        wanted = keywords(query)
        scored = sorted(
            (
                (-sum(self.weight[word] for word in wanted & words), n)
                for n, words in enumerate(self.fact_words)
            ),
        )
        return [self.knowledge[n] for score, n in scored[: self.top_k] if score < 0]


class ReasoningAgent:
    """Turns the question and the retrieved facts into a :class:`Plan`."""

    def __init__(self, tools: tuple[str, ...]) -> None:
        self.tools = tools

    def get_required_tools(self) -> tuple[str, ...]:
        return self.tools

    def process(self, query: str, facts: list[str]) -> Plan:
        items = {
            singular(name): int(count)
            for count, name in re.findall(r"(\d+)\s+([a-z]+)", query.lower())
        }
        prices, days, rate = {}, {}, Decimal(1)
        for fact in facts:
            if match := re.match(r"An? (\w+) costs ([\d.]+) EUR", fact):
                prices[match[1]] = Decimal(match[2])
            elif match := re.match(r"(\w+) ship in (\d+) days?", fact):
                days[singular(match[1].lower())] = int(match[2])
            elif match := re.search(r"rate is ([\d.]+) USD per EUR", fact):
                rate = Decimal(match[1])
        currency = "USD" if "usd" in keywords(query) else "EUR"
        return Plan(items, prices, days, rate, currency)


class ToolAgent:
    """Runs one tool on a plan: ``pricing`` adds up the order, ``shipping`` dates it."""

    def process_tool(self, plan: Plan, tool: str) -> dict[str, Any]:
        time.sleep(NETWORK_LATENCY)
        if tool == "pricing":
            eur = sum((plan.prices[item] * n for item, n in plan.items.items()), Decimal(0))
            total = eur * plan.rate if plan.currency == "USD" else eur
            return {"eur": eur, "total": total.quantize(Decimal("0.01")), "currency": plan.currency}
        if tool == "shipping":
            slowest = max(plan.items, key=lambda item: plan.shipping_days[item])
            return {"days": plan.shipping_days[slowest], "slowest": slowest}
        raise ValueError(f"unknown tool {tool!r}")


class ResponseAgent:
    """Writes the answer from the plan and the tools' results."""

    def generate_response(
        self, query: str, plan: Plan, tool_results: dict[str, dict[str, Any]]
    ) -> str:
        order = " and ".join(f"{n} {item}s" for item, n in plan.items.items())
        answer = [order[0].upper() + order[1:]]
        pricing = tool_results.get("tool_agent_pricing")
        if pricing is not None:
            answer.append(f" cost {pricing['total']} {pricing['currency']}")
            if pricing["currency"] != "EUR":
                answer.append(f" ({pricing['eur']} EUR)")
        shipping = tool_results.get("tool_agent_shipping")
        if shipping is not None:
            days = shipping["days"]
            answer.append(f"; they can ship in {days} day{'' if days == 1 else 's'}")
            if len(plan.items) > 1:
                answer.append(f" (the {shipping['slowest']}s take longest)")
        return "".join(answer) + "."


def default_agents() -> dict[str, Any]:
    """The four stand-in agents the workflow needs."""
    return {
        "retrieval": RetrievalAgent(KNOWLEDGE_BASE),
        "reasoning": ReasoningAgent(tools=("pricing", "shipping")),
        "tool": ToolAgent(),
        "response": ResponseAgent(),
    }


# -- the graph, written against the original QuantumPartitioner API: units are lambdas -----


# Multi-agent workflow with dependencies
def create_agent_workflow(
    query: str, available_agents: dict[str, Any]
) -> QuantumPartitioner[dict[str, Any], Any]:
    """Create dependency-based multi-agent workflow."""
    partitioner: QuantumPartitioner[dict[str, Any], Any] = QuantumPartitioner(
        max_workers=len(available_agents)
    )

    # Add retrieval agent unit
    partitioner.add_unit(
        fn=lambda ctx: available_agents["retrieval"].process(ctx["query"]),
        dependencies=[],  # No dependencies
        name="retrieval_agent",
        metadata={"agent_type": "retrieval", "resource_type": "io"},
    )

    # Add reasoning agent unit depending on retrieval
    partitioner.add_unit(
        fn=lambda ctx: available_agents["reasoning"].process(ctx["query"], ctx["retrieval_agent"]),
        dependencies=["retrieval_agent"],
        name="reasoning_agent",
        metadata={"agent_type": "reasoning", "resource_type": "cpu"},
    )

    # Add parallel tool agent units depending on reasoning
    for tool in available_agents["reasoning"].get_required_tools():
        partitioner.add_unit(
            fn=lambda ctx, t=tool: available_agents["tool"].process_tool(
                ctx["reasoning_agent"], tool=t
            ),
            dependencies=["reasoning_agent"],
            name=f"tool_agent_{tool}",
            metadata={"agent_type": "tool", "tool": tool, "resource_type": "io"},
        )

    # Add final response agent depending on all tool agents
    tool_units = [unit_id for unit_id in partitioner.units if unit_id.startswith("tool_agent_")]
    partitioner.add_unit(
        fn=lambda ctx: available_agents["response"].generate_response(
            ctx["query"], ctx["reasoning_agent"], {unit_id: ctx[unit_id] for unit_id in tool_units}
        ),
        dependencies=["reasoning_agent"] + tool_units,  # noqa: RUF005 - as the original API's examples write it
        name="response_agent",
        metadata={"agent_type": "response", "resource_type": "cpu"},
    )

    return partitioner


# -- running it ------------------------------------------------------------------------------


def build() -> QuantumPartitioner[dict[str, Any], Any]:
    """The partitioner for ``quantum-partitioner run``: the default agents."""
    return create_agent_workflow(DEFAULT_QUERY, default_agents())


def main(argv: list[str]) -> int:
    """Answer the question in ``argv`` (or the default one) with the default agents."""
    query = " ".join(argv) or DEFAULT_QUERY
    partitioner = create_agent_workflow(query, default_agents())
    results = partitioner.execute({"query": query})
    print(f"Question: {query}")
    if "response_agent" not in results:
        for name, error in partitioner.get_failed_units().items():
            print(f"  {name} {partitioner.units[name].state.name}: {error!r}")
        return 1
    print(f"Facts used: {len(results['retrieval_agent'])}")
    for fact in results["retrieval_agent"]:
        print(f"  - {fact}")
    tools = [name.removeprefix("tool_agent_") for name in results if name.startswith("tool_")]
    print(f"Tools run in parallel: {', '.join(tools)}")
    print(f"Answer: {results['response_agent']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
