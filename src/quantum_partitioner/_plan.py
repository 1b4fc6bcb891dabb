"""The execution plan: a read-only picture of a compiled graph, and its simulation.

Levels, dependency maps and the critical path are computed from the :class:`Graph` when
first asked for, so planning a million units costs only what the caller reads. The plan sits
just above the scheduling core, which :meth:`ExecutionPlan.simulate` replays.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, final

from ._simulate import Simulation, simulate
from .observability._render import to_dot, to_mermaid

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ._graph import Graph, QuantumUnit
    from ._limits import Limit

__all__ = ["ExecutionPlan"]


@final
class ExecutionPlan:
    """The units of a partitioner, validated, levelled and measured.

    Built by :meth:`QuantumPartitioner.build_execution_plan`; do not construct it.

    Attributes:
        units: The units, by name.
        levels: Names grouped by level: each level depends only on earlier ones. Execution
            does not wait for levels (it is dataflow); they describe the graph's shape.
        execution_order: The same lists as ``levels`` (the original QuantumPartitioner API's name).
        max_level: The number of levels.
        dependencies: Each unit's dependencies, by name.
        dependents: Each unit's direct dependents, by name.
        critical_path: The longest chain of dependencies, weighted by
            ``metadata["estimated_duration"]`` (a unit without one weighs the mean of the
            given estimates, 1 when none is given), root first.
        critical_path_length: That chain's total weight.
        maps: Each map (:meth:`QuantumPartitioner.add_map`), by name: what it maps over. A map
            is one unit of the plan; its items exist only in a run.
        subgraphs: Each subgraph (:meth:`QuantumPartitioner.add_subgraph`), by name: the names
            of the units inlined into it, nested subgraphs' included.
    """

    def __init__(
        self,
        graph: Graph,
        units: dict[str, QuantumUnit[Any, Any]],
        limits: Mapping[str, Limit] | None = None,
        is_subgraph: Callable[[QuantumUnit[Any, Any]], bool] | None = None,
    ) -> None:
        """Wrap a compiled graph (and the named limits its units may name).

        ``is_subgraph`` tells a subgraph's own unit (the facade knows what one is).
        """
        self._graph = graph
        self.units = dict(units)
        self._limits = dict(limits or {})
        self._is_subgraph = is_subgraph

    def __repr__(self) -> str:
        """Summarise the plan."""
        return (
            f"ExecutionPlan(unit_count={self.unit_count}, max_level={self.max_level}, "
            f"max_parallel_units={self.max_parallel_units})"
        )

    @property
    def graph(self) -> Graph:
        """The compiled graph (integer-indexed) behind this plan."""
        return self._graph

    @property
    def unit_count(self) -> int:
        """How many units the plan has."""
        return len(self._graph)

    @cached_property
    def levels(self) -> list[list[str]]:
        """Unit names by level, each level in insertion order."""
        names = self._graph.names
        return [[names[i] for i in level] for level in self._graph.levels()]

    @property
    def execution_order(self) -> list[list[str]]:
        """The original QuantumPartitioner API's name for :attr:`levels`."""
        return self.levels

    @property
    def max_level(self) -> int:
        """How many levels there are."""
        return max(self._graph.level) + 1 if len(self._graph) else 0

    @cached_property
    def max_parallel_units(self) -> int:
        """The size of the widest level (0 for an empty plan)."""
        return max((len(level) for level in self._graph.levels()), default=0)

    @cached_property
    def maps(self) -> dict[str, str]:
        """Each map's name -> the name of the unit (or map) it maps over."""
        names = self._graph.names
        return {names[m]: names[over] for m, over in self._graph.maps.items()}

    @cached_property
    def subgraphs(self) -> dict[str, list[str]]:
        """Each subgraph's name -> the names of its inner units, in order."""
        is_subgraph = self._is_subgraph
        if is_subgraph is None:
            return {}
        members: dict[str, list[str]] = {
            unit.id: [] for unit in self._graph.units if is_subgraph(unit)
        }
        if members:
            for name in self._graph.names:
                dot = name.find(".")
                while dot > 0:  # every enclosing subgraph: "a" and "a.b" for "a.b.c"
                    inner = members.get(name[:dot])
                    if inner is not None:
                        inner.append(name)
                    dot = name.find(".", dot + 1)
        return members

    @cached_property
    def dependencies(self) -> dict[str, set[str]]:
        """Each unit's dependencies, by name."""
        names = self._graph.names
        return {names[i]: {names[j] for j in row} for i, row in enumerate(self._graph.deps)}

    @cached_property
    def dependents(self) -> dict[str, set[str]]:
        """Each unit's direct dependents, by name."""
        names = self._graph.names
        return {names[i]: {names[j] for j in row} for i, row in enumerate(self._graph.dependents)}

    @cached_property
    def critical_path(self) -> list[str]:
        """The longest weighted chain of dependencies, root first."""
        names = self._graph.names
        return [names[i] for i in self._graph.critical_path()]

    @property
    def critical_path_length(self) -> float:
        """The total ``estimated_duration`` along :attr:`critical_path`."""
        return max(self._graph.finish, default=0.0)

    def visualize(self, *, states: bool = True) -> str:
        """Graphviz DOT source of the plan, the critical path drawn in bold red.

        Args:
            states: Colour units by their state in the last run, if there was one.
        """
        return to_dot(self._graph, self.critical_path, states=states)

    def simulate(self, workers: int = 1) -> Simulation:
        """Predict a run on ``workers`` workers from each unit's ``estimated_duration``.

        The plan is replayed on the real scheduling core with a virtual clock, so the
        prediction follows the same ordering a real run uses, and the units' named limits
        (concurrency and rate, on fresh copies with full buckets) hold as in a real run.

        Returns:
            The predicted makespan, and each unit's start, end and worker.
        """
        return simulate(self._graph, workers, self._limits)

    def to_mermaid(self, *, states: bool = True) -> str:
        """Mermaid flowchart source of the plan, the critical path highlighted."""
        return to_mermaid(self._graph, self.critical_path, states=states)
