"""Ctrl-C and cancel(): dispatch stops, unfinished units are CANCELED, results are kept."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from quantum_partitioner import ExecutionMode, QuantumPartitioner, UnitState

PROGRAM = Path(__file__).with_name("_sigint_program.py")
MODES = ["sequential", "thread", "process", "async"]


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True, check=True)
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    return [int(child) for child, parent in rows if int(parent) == pid]


@pytest.mark.parametrize("mode", MODES)
def test_sigint_cancels_keeps_results_and_exits_at_once(mode):
    """SIGINT to a real program mid-run: CANCELED states, kept results, prompt exit."""
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # In PROCESS mode READY is printed by a worker, whose stdout goes to stderr.
        if mode == "process":
            assert proc.stderr is not None
            assert proc.stderr.readline().strip() == "READY"
            workers = _children_of(proc.pid)
            assert workers, "no worker process found"
        else:
            assert proc.stdout.readline().strip() == "READY"
            workers = []
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    assert elapsed < 10
    report = json.loads(out.strip().splitlines()[-1])
    assert report["states"] == {"quick": "completed", "stuck": "canceled", "after": "canceled"}
    assert report["partial"] == {"quick": 1}
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


@pytest.mark.parametrize("mode", [ExecutionMode.THREAD, ExecutionMode.PROCESS, ExecutionMode.ASYNC])
def test_cancel_from_another_thread_returns_completed_results(mode):
    """cancel() during a run: execute() returns what completed; the rest is CANCELED."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(lambda ctx: "done", name="quick")

    def slow(ctx):
        time.sleep(30)

    p.add_unit(slow, ["quick"], name="slow")
    p.add_unit(lambda ctx: 1, ["slow"], name="after")

    def cancel_when_running():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if p.units["slow"].state is UnitState.RUNNING:
                p.cancel()
                return
            time.sleep(0.01)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    start = time.monotonic()
    results = p.execute({}, execution_mode=mode)
    canceller.join()
    assert time.monotonic() - start < 15
    assert results == {"quick": "done"}
    assert p.units["slow"].state is UnitState.CANCELED
    assert p.units["after"].state is UnitState.CANCELED


CANCEL_PROGRAM = Path(__file__).with_name("_cancel_signal_program.py")


@pytest.mark.parametrize("mode", ["sequential", "thread", "async", "resource_balanced"])
def test_cancel_from_a_signal_handler_never_deadlocks(mode):
    """Issue 9 #3: cancel() from a SIGALRM handler every 0.2 ms, over 20 runs: no deadlock."""
    # The handler runs on the main thread, which may hold the scheduler's lock right then:
    # cancel() must only set a flag and wake the driver, taking no lock.
    done = subprocess.run(
        [sys.executable, str(CANCEL_PROGRAM), mode, "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "20"]
