"""Graph shapes the benchmark runs, as plain name -> dependency-names specs.

Every runner (the project and its peers) is built from the same :class:`GraphSpec`, so all
of them execute exactly the same graph. The insertion order of ``GraphSpec.deps`` is a
topological order: a unit is always listed after the units it depends on. The dependency
lists are handed to the runners as they are (runners must not mutate them), so that the
memory measurement, which starts after the spec is built, counts none of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

LAYERED_SEED = 20240601
LAYER_COUNT = 100
LAYERED_FAN_IN = 3


@dataclass(frozen=True)
class GraphSpec:
    """A graph of no-op units: unit name -> names of the units it depends on."""

    shape: str
    deps: dict[str, list[str]]

    @property
    def size(self) -> int:
        """Number of units in the graph (the divisor of every per-unit figure)."""
        return len(self.deps)


ShapeBuilder = Callable[[int], GraphSpec]


def fanout(n: int) -> GraphSpec:
    """N independent units plus one sink that depends on all of them."""
    sources = [f"u{i}" for i in range(n)]
    deps: dict[str, list[str]] = {name: [] for name in sources}
    deps["sink"] = sources
    return GraphSpec("fanout", deps)


def chain(n: int) -> GraphSpec:
    """N units, each depending on the one before: no concurrency at all."""
    deps: dict[str, list[str]] = {"u0": []}
    for i in range(1, n):
        deps[f"u{i}"] = [f"u{i - 1}"]
    return GraphSpec("chain", deps)


def layered(n: int) -> GraphSpec:
    """100 layers of N/100 units; each unit depends on 3 random units of the layer before."""
    rng = random.Random(LAYERED_SEED)
    width = max(1, n // LAYER_COUNT)
    fan_in = min(LAYERED_FAN_IN, width)
    deps: dict[str, list[str]] = {}
    previous: list[str] = []
    for layer in range(LAYER_COUNT):
        current = [f"l{layer}_{i}" for i in range(width)]
        for name in current:
            deps[name] = rng.sample(previous, fan_in) if previous else []
        previous = current
    return GraphSpec("layered", deps)


SHAPES: dict[str, ShapeBuilder] = {"fanout": fanout, "chain": chain, "layered": layered}


def single_unit() -> GraphSpec:
    """One unit alone: what a run costs whatever its size (start-up and shut-down)."""
    return GraphSpec("1 unit", {"u0": []})
