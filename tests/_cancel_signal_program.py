"""A program for test_interrupts.py: cancel() from a signal handler, over and over, mid-run.

Usage: python _cancel_signal_program.py MODE RUNS. Each run has a SIGALRM handler calling
``partitioner.cancel()`` every 0.2 ms while the run goes on; prints ``ok RUNS`` once every
run returned with every unit in a terminal state. A deadlock shows as no output at all.
"""

from __future__ import annotations

import signal
import sys
import time

from quantum_partitioner import QuantumPartitioner


def nap(ctx):
    time.sleep(0.0005)


def main() -> None:
    """Run the graph RUNS times in MODE under a storm of cancel() calls."""
    mode, runs = sys.argv[1], int(sys.argv[2])
    p = QuantumPartitioner(max_workers=4)
    for k in range(200):
        # The timeouts keep the driver waking up, and taking its lock, all the time.
        p.add_unit(nap, name=f"u{k}", timeout=5)
    signal.signal(signal.SIGALRM, lambda signum, frame: p.cancel())
    for _ in range(runs):
        signal.setitimer(signal.ITIMER_REAL, 0.005, 0.0002)
        try:
            if mode == "resource_balanced":
                p.execute_with_strategy({}, mode)
            else:
                p.execute({}, execution_mode=mode)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        assert all(unit.state.is_terminal for unit in p.units.values())
    print("ok", runs, flush=True)


if __name__ == "__main__":
    main()
