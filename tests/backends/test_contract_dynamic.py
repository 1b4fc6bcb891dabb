"""The contract suite for workflows that decide at run time, run on every execution mode.

Same rules as ``test_contract.py`` (the ``mode`` fixture, unit functions from
``_contract_units`` so a plain process pool can import them): conditions, skips by decision,
join rules, and changes to the graph during a run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from quantum_partitioner import QuantumPartitioner, UnitState

sys.path.insert(0, str(Path(__file__).parent))
import _contract_units as u  # needs the sys.path entry above

# -- changes during a run ---------------------------------------------------------------------


def test_changing_the_graph_during_a_run_raises_runtime_error(mode):
    """add_unit and remove_unit from a callback mid-run raise RuntimeError; the run goes on."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="a")
    p.add_unit(u.plus("a", 1), ["a"], name="b")
    refused = []

    def on_complete(unit_id, result):
        del result
        for change in (lambda: p.add_unit(u.const(0), name="late"), lambda: p.remove_unit("b")):
            try:
                change()
            except RuntimeError as error:
                refused.append((unit_id, str(error)))

    p.on_unit_complete = on_complete

    results = mode.execute(p)

    assert results == {"a": 1, "b": 2}
    assert [unit_id for unit_id, _ in refused] == ["a", "a", "b", "b"]
    assert "add_unit() was called while the partitioner is executing" in refused[0][1]
    assert "remove_unit() was called while the partitioner is executing" in refused[1][1]
    assert set(p.units) == {"a", "b"}
    p.add_unit(u.const(0), name="late")  # allowed again once the run is over
    assert p.units["late"].state is UnitState.PENDING
