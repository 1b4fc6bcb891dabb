"""A program for test_interrupts.py: runs a graph that gets stuck, reports states on Ctrl-C.

Usage: python _sigint_program.py MODE. Prints READY once the stuck units run, and on
KeyboardInterrupt prints one JSON line ``{"states": ..., "partial": ...}`` and re-raises.
"""

from __future__ import annotations

import json
import sys
import time

from quantum_partitioner import ExecutionMode, QuantumPartitioner


def main() -> None:
    """Run the graph in the mode named on the command line."""
    mode = ExecutionMode(sys.argv[1])
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: 1, name="quick")

    def stuck(ctx):
        print("READY", flush=True)
        while True:
            time.sleep(0.01)

    p.add_unit(stuck, ["quick"], name="stuck")
    p.add_unit(lambda ctx: 2, ["stuck"], name="after")
    try:
        p.execute({}, execution_mode=mode)
    except KeyboardInterrupt:
        states = {u.id: u.state.value for u in p.units.values()}
        print(json.dumps({"states": states, "partial": p.get_partial_results()}), flush=True)
        raise


if __name__ == "__main__":
    main()
