"""Layer 4: subgraphs, another partitioner's units inlined into this one's graph.

A subgraph is not a nested run. ``add_subgraph(other, name="ingest")`` copies ``other``'s
units into the partitioner as ordinary units named ``ingest.<inner>``, so one scheduler runs
them and every backend, limit, retry, trace and report sees each one. Two things keep the
inner functions working unchanged:

- Each copy reads its dependencies under their inner names, through the unit's
  ``view_keys`` (``Graph.view_keys``, which runs read when they build a context).
- The subgraph's root units also depend on the subgraph's own dependencies, read under
  their outer names.

The subgraph itself is one more unit, named ``ingest``: it depends on the inner sink units
and returns their results by inner name (:func:`subgraph_result`). Nested subgraphs compose,
because a copy keeps the view keys it already had.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._graph import QuantumUnit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._context import ExecutionContext
    from ._policies import RetryPolicy

__all__ = ["inline_subgraph", "subgraph_result"]


def subgraph_result(ctx: ExecutionContext) -> dict[str, Any]:
    """What a subgraph's own unit returns: its sink units' results, by inner name.

    A module-level function, so it travels to worker processes and Dask workers by name.
    """
    return dict(ctx.unit_results)


def inline_subgraph(
    units: Sequence[QuantumUnit[Any, Any]],
    name: str,
    dependencies: list[str],
    retry_policy: RetryPolicy | None,
) -> list[QuantumUnit[Any, Any]]:
    """Copies of ``units`` named ``name.<inner>``, then the subgraph's own unit ``name``.

    Args:
        units: The inner partitioner's units, in insertion order (a valid graph).
        name: The subgraph's name.
        dependencies: Outer units every inner root unit also depends on.
        retry_policy: The inner partitioner's default retry policy, kept by the copies
            that have none of their own.

    Returns:
        The copies in ``units``' order, then the subgraph's unit.
    """
    prefix = f"{name}."
    depended_on = {dep for unit in units for dep in unit.dependencies}
    depended_on.update(unit.over for unit in units if unit.over is not None)
    inlined: list[QuantumUnit[Any, Any]] = []
    for unit in units:
        inner_deps = unit.dependencies
        read_as = unit.view_keys or {}
        # Read under the inner name it had (a unit of a nested subgraph: its own inner one).
        keys = {prefix + dep: read_as.get(dep, dep) for dep in inner_deps}
        deps = list(keys)
        if not inner_deps and unit.over is None:  # a root: it also waits for the subgraph's
            deps += dependencies  # dependencies, and reads them by name
        clone = unit._inlined(prefix + unit.id, deps, keys)
        if unit.over is not None:  # a map maps over a unit of the same subgraph
            clone.over = prefix + unit.over
        if clone.retry_policy is None:
            clone.retry_policy = retry_policy
        inlined.append(clone)
    sinks = [unit.id for unit in units if unit.id not in depended_on]
    keys = {prefix + sink: sink for sink in sinks}
    own: QuantumUnit[Any, Any] = QuantumUnit(name, subgraph_result, list(keys), view_keys=keys)
    inlined.append(own)
    return inlined
