"""Provider fan-out: ask several model providers at once, then aggregate their answers.

The "Provider System Integration" example. One unit per provider calls
``provider.generate(query)``; they share no dependencies, so they all run at once on threads
(the calls wait on the network, not on the CPU). ``aggregate_responses`` depends on every
provider unit and runs as soon as the last answer is in: the fan-out takes as long as the
slowest provider, not the sum of them.

Each provider has a named limit (``provider:<id>``): at most two calls at once and a token
bucket of a few calls a second, shared by every unit that calls it, however many queries are
fanned out. A unit waiting for its provider's slot is only PENDING: it holds no thread and
its ``timeout`` has not started. No semaphore is made by hand; the scheduler does it.

The providers are local stand-ins for remote model APIs: each answers from a small table
after a fixed few milliseconds of simulated network latency. Swap :class:`FakeProvider` for
real clients with a ``generate(query)`` method and nothing else changes.

Run it as a script (an optional question as arguments)::

    python examples/provider_fanout.py
    python examples/provider_fanout.py "which is the largest planet"
    python examples/provider_fanout.py --quorum 2   # stop at the first two answers

With ``--quorum N`` the answers are consumed as they arrive through ``stream()``: once N
providers answered, leaving the loop cancels the calls still going and the vote is taken
over those N.

or through the command line, which prints each unit's outcome (the units read the query from
the context)::

    quantum-partitioner run examples/provider_fanout.py:build --context '{"query": "..."}'
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quantum_partitioner import ExecutionContext, ExecutionMode, QuantumPartitioner

DEFAULT_QUERY = "Which planet is known as the red planet?"


@dataclass(frozen=True)
class Response:
    """One provider's answer."""

    provider: str
    text: str
    confidence: float
    latency_ms: float


@dataclass
class FakeProvider:
    """A stand-in for a remote model API: a fixed latency and a table of answers.

    ``answers`` maps a phrase to the answer given when the query contains that phrase.
    """

    id: str
    latency: float
    confidence: float
    answers: dict[str, str] = field(default_factory=dict)
    #: What the provider allows: calls at once, and calls a second on average.
    concurrency: int = 2
    per_second: float = 20.0

    def generate(self, query: str) -> Response:
        """Answer ``query`` after the provider's latency, as a remote call would."""
        time.sleep(self.latency)  # the network round trip of a real provider
        asked = " ".join(words(query))
        for phrase, answer in self.answers.items():
            if phrase in asked:
                return Response(self.id, answer, self.confidence, self.latency * 1000)
        return Response(self.id, "I do not know.", 0.1, self.latency * 1000)


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def default_providers() -> list[FakeProvider]:
    """Three providers that mostly agree; ``gamma`` is the slowest and often wrong."""
    return [
        FakeProvider(
            "alpha",
            latency=0.030,
            confidence=0.9,
            answers={"red planet": "Mars", "largest planet": "Jupiter"},
        ),
        FakeProvider(
            "beta",
            latency=0.020,
            confidence=0.7,
            answers={"red planet": "mars.", "largest planet": "It is Jupiter"},
        ),
        FakeProvider(
            "gamma",
            latency=0.040,
            confidence=0.6,
            answers={"red planet": "Jupiter", "largest planet": "Saturn"},
        ),
    ]


def aggregate_responses(ctx: ExecutionContext) -> dict[str, Any]:
    """Majority vote over the providers' answers; ties go to the higher total confidence.

    ``ctx.unit_results`` holds the results of this unit's declared dependencies: one
    :class:`Response` per provider unit.
    """
    responses = sorted(ctx.unit_results.values(), key=lambda response: response.provider)
    votes: Counter[str] = Counter()
    confidence: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for response in responses:
        key = normalise_answer(response.text)
        votes[key] += 1
        confidence[key] += response.confidence
        spelling.setdefault(key, response.text.rstrip("."))
    best = max(votes, key=lambda key: (votes[key], confidence[key]))
    return {
        "answer": spelling[best],
        "votes": votes[best],
        "providers": len(responses),
        "responses": responses,
    }


def normalise_answer(text: str) -> str:
    """The answer's content words, so that "Mars", "mars." and "It is Mars" agree."""
    filler = {"it", "is", "the", "a", "an"}
    return " ".join(word for word in words(text) if word not in filler)


# -- the graph, written against the original QuantumPartitioner API: units are lambdas -----


# Set up parallel model calls across providers
def create_provider_execution_plan(
    providers: list[FakeProvider], query: str, max_workers: int = 3
) -> QuantumPartitioner[dict[str, Any], Any]:
    """Create execution plan for parallel provider operations."""
    partitioner: QuantumPartitioner[dict[str, Any], Any] = QuantumPartitioner(
        max_workers=max_workers, default_execution_mode=ExecutionMode.THREAD
    )

    # Create parallel units for each provider
    for provider in providers:
        # The provider's own limits, enforced by the scheduler for every call to it.
        limit = f"provider:{provider.id}"
        partitioner.add_limit(
            limit, concurrency=provider.concurrency, per_second=provider.per_second, burst=2
        )
        partitioner.add_unit(
            fn=lambda ctx, p=provider: p.generate(ctx["query"]),
            dependencies=[],  # No dependencies
            name=f"provider_{provider.id}",
            timeout=10.0,  # 10-second timeout, counted from the call's start
            metadata={"resource_type": "io", "provider": provider.id},
            limits=[limit],
        )

    # Add aggregation unit that depends on all provider units
    provider_units = [f"provider_{p.id}" for p in providers]
    partitioner.add_unit(
        fn=lambda ctx: aggregate_responses(ctx),  # noqa: PLW0108 - a lambda, as the original API's examples write it
        dependencies=provider_units,
        name="aggregate_responses",
    )

    return partitioner


# -- running it ------------------------------------------------------------------------------


def build() -> QuantumPartitioner[dict[str, Any], Any]:
    """The partitioner for ``quantum-partitioner run``: the default providers."""
    return create_provider_execution_plan(default_providers(), DEFAULT_QUERY)


def first_answers(
    partitioner: QuantumPartitioner[dict[str, Any], Any], query: str, quorum: int
) -> list[Response]:
    """The first ``quorum`` providers' answers, in the order they arrive.

    Leaving the ``with`` block early cancels what still runs (the slower providers' calls
    and the aggregation), exactly like ``cancel()``; completed answers are kept.
    """
    answers: list[Response] = []
    with partitioner.stream({"query": query}) as results:
        for done in results:
            if done.ok and isinstance(done.result, Response):
                answers.append(done.result)
                if len(answers) == quorum:
                    break
    return answers


def main(argv: list[str]) -> int:
    """Ask the default providers the question in ``argv`` (or the default one)."""
    if argv[:1] == ["--quorum"] and len(argv) >= 2:
        quorum, argv = int(argv[1]), argv[2:]
        query = " ".join(argv) or DEFAULT_QUERY
        partitioner = create_provider_execution_plan(default_providers(), query)
        answers = first_answers(partitioner, query, quorum)
        print(f"Query: {query}")
        for response in answers:
            print(f"  {response.provider:<6} {response.latency_ms:3.0f} ms  {response.text}")
        cancelled = sorted(
            name for name, unit in partitioner.units.items() if unit.state.name == "CANCELED"
        )
        print(f"First {len(answers)} answers; cancelled: {', '.join(cancelled)}")
        return 0 if len(answers) == quorum else 1
    query = " ".join(argv) or DEFAULT_QUERY
    providers = default_providers()
    partitioner = create_provider_execution_plan(providers, query)
    started = time.perf_counter()
    results = partitioner.execute({"query": query})
    elapsed_ms = (time.perf_counter() - started) * 1000

    print(f"Query: {query}")
    if "aggregate_responses" not in results:
        for name, error in partitioner.get_failed_units().items():
            print(f"  {name} {partitioner.units[name].state.name}: {error!r}")
        return 1
    summary = results["aggregate_responses"]
    for response in summary["responses"]:
        print(f"  {response.provider:<6} {response.latency_ms:3.0f} ms  {response.text}")
    print(
        f"Answer: {summary['answer']} "
        f"({summary['votes']} of {summary['providers']} providers agree)"
    )
    total_latency = sum(provider.latency for provider in providers) * 1000
    print(
        f"{len(providers)} providers answered in {elapsed_ms:.0f} ms "
        f"(one after another: at least {total_latency:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
