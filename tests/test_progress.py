"""The progress bar: counters from hooks, a timed redraw, silence when not on a terminal."""

from __future__ import annotations

import functools
import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    ProgressBar,
    QuantumPartitioner,
    RetryPolicy,
)
from quantum_partitioner.observability._events import RunStarted, UnitFinished, UnitStarted
from quantum_partitioner.observability._progress import format_eta, format_rate, unit_kind
from quantum_partitioner.testing import FakeClock

SEQ = ExecutionMode.SEQUENTIAL


def mixed_partitioner(instruments=()):
    """10 units complete; one fails after a retry and one is skipped because of it."""
    qp = QuantumPartitioner(
        max_workers=2,
        instruments=list(instruments),
        retry_policy=RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0.0)),
    )
    for i in range(10):
        qp.add_unit(lambda ctx: None, name=f"ok{i}")

    def bad(ctx):
        raise ValueError("no")

    qp.add_unit(bad, name="bad", retries=1)
    qp.add_unit(lambda ctx: None, ["bad"], name="after_bad")
    return qp


def drawn_bar(**options):
    out = io.StringIO()
    return ProgressBar(file=out, force_terminal=True, **options), out


def test_counters_follow_the_run():
    """After a run the bar counts done, failed, skipped and retried units; none running."""
    bar, out = drawn_bar()
    qp = mixed_partitioner([bar])
    qp.execute()
    assert (bar.total, bar.done, bar.failed, bar.skipped, bar.retries) == (12, 10, 1, 1, 1)
    assert bar.running == 0
    assert bar.finished == 12
    text = out.getvalue()
    assert "10/12" in text  # the fill: failed and skipped-after-a-failure work is not done
    assert "done 10" in text
    assert "failed 1" in text
    assert "skipped 1" in text


def test_cancelled_units_are_counted():
    """fail_fast cancels what has not started; the bar counts those units as cancelled."""
    bar, _ = drawn_bar()
    qp = QuantumPartitioner(instruments=[bar])

    def bad(ctx):
        raise ValueError("no")

    qp.add_unit(bad, name="bad", priority=10)
    for i in range(5):
        qp.add_unit(lambda ctx: None, name=f"later{i}")
    qp.execute(execution_mode=SEQ, fail_fast=True)
    assert (bar.failed, bar.cancelled, bar.running) == (1, 5, 0)
    assert bar.finished == 6


def test_redraws_on_a_timer_not_per_unit(monkeypatch):
    """Thousands of units cause a handful of redraws: hooks only count."""
    bar, _ = drawn_bar(refresh_per_second=20)
    redraws = []
    original = ProgressBar._refresh

    def counting(self):
        redraws.append(time.monotonic())
        original(self)

    monkeypatch.setattr(ProgressBar, "_refresh", counting)
    qp = QuantumPartitioner(instruments=[bar])
    for i in range(3000):
        qp.add_unit(lambda ctx: None, name=f"u{i}")
    started = time.monotonic()
    qp.execute(execution_mode=SEQ)
    elapsed = time.monotonic() - started
    assert bar.done == 3000
    # one draw at the start, one per tick, one at the end
    assert 2 <= len(redraws) <= 2 + elapsed * 20 + 2


def test_rate_and_eta_are_shown_while_running():
    """While units run, the line shows throughput and an ETA."""
    bar, out = drawn_bar(refresh_per_second=50)
    qp = QuantumPartitioner(max_workers=2, instruments=[bar])
    for i in range(40):
        qp.add_unit(lambda ctx: time.sleep(0.005), name=f"u{i}")
    qp.execute()
    text = out.getvalue()
    assert "/s" in text
    assert "ETA 0:" in text
    assert "running" in text


def test_the_bar_draws_nothing_when_not_a_terminal():
    """Not a terminal and not forced: the run goes on and nothing is written."""
    out = io.StringIO()
    bar = ProgressBar(file=out)
    assert not bar.active
    qp = mixed_partitioner([bar])
    qp.execute()
    assert out.getvalue() == ""
    assert bar.done == 10


def test_force_color_does_not_make_a_log_a_terminal(monkeypatch):
    """FORCE_COLOR (set by some CI systems) does not make a non-terminal draw."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    out = io.StringIO()
    bar = ProgressBar(file=out)
    assert not bar.active
    mixed_partitioner([bar]).execute()
    assert out.getvalue() == ""


def test_progress_true_is_silent_and_free_when_stderr_is_not_a_terminal(capsys):
    """execute(progress=True) with stderr captured: no output and no instrument attached."""
    qp = mixed_partitioner()
    qp.execute(progress=True)
    assert capsys.readouterr() == ("", "")
    assert not qp._last_run.dispatcher.unit_started


def test_progress_true_draws_on_a_real_terminal(tmp_path):
    """With stderr on a pseudo-terminal, progress=True draws the bar there."""
    script = tmp_path / "watched.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            from quantum_partitioner import QuantumPartitioner

            qp = QuantumPartitioner(max_workers=2)
            for i in range(30):
                qp.add_unit(lambda ctx: time.sleep(0.01), name=f"u{i}")
            qp.execute(progress=True)
            """
        )
    )
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        env=env,
    ) as child:
        os.close(secondary)
        chunks = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(primary)
        assert child.wait(timeout=30) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "30/30" in text
    assert "done 30" in text


def test_missing_rich_names_the_extra(monkeypatch):
    """Without rich, ProgressBar and execute(progress=True) say which extra to install."""
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    with pytest.raises(ImportError, match=r"quantum-partitioner\[progress\]"):
        ProgressBar()
    ran = threading.Event()
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: ran.set(), name="a")
    with pytest.raises(ImportError, match=r"quantum-partitioner\[progress\]"):
        qp.execute(progress=True)
    assert not ran.is_set()


def test_refresh_rate_must_be_positive():
    """refresh_per_second <= 0 is rejected."""
    with pytest.raises(ValueError, match="refresh_per_second"):
        ProgressBar(refresh_per_second=0)


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "-/s"), (0.5, "0.50/s"), (12.34, "12.3/s"), (12345.6, "12,346/s")],
)
def test_format_rate(rate, text):
    """Throughput keeps the digits that mean something."""
    assert format_rate(rate) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "?"), (0, "0:00"), (61.4, "1:01"), (3725, "1:02:05")]
)
def test_format_eta(seconds, text):
    """The ETA reads as M:SS, or H:MM:SS past an hour."""
    assert format_eta(seconds) == text


# -- the ETA, with a fake clock --------------------------------------------------------------


def started_bar(qp, clock):
    """A bar (not drawn) told that a run of ``qp``'s units began at ``clock()``."""
    bar = ProgressBar(force_terminal=False, clock=clock)
    units = list(qp.units.values())
    bar.run_started(RunStarted(len(units), "thread", 1, clock(), units))
    return bar


def run_one(bar, clock, name, seconds):
    """One attempt of ``name`` that takes ``seconds`` on the fake clock; the bar redraws."""
    bar.unit_started(UnitStarted(name, 1, clock(), "w"))
    clock.advance(seconds)
    bar.unit_finished(UnitFinished(name, 1, clock(), seconds, None))
    return bar.eta()


def test_eta_is_unknown_until_each_kind_left_has_been_measured():
    """Cheap units first do not make an ETA of a run whose slow units are still to come."""
    clock = FakeClock()
    qp = QuantumPartitioner()
    for i in range(400):
        qp.add_unit(lambda ctx: None, name=f"cheap_{i:03}")
    for i in range(200):
        qp.add_unit(lambda ctx: None, name=f"slow_{i:03}")
    bar = started_bar(qp, clock)
    assert bar.eta() is None  # nothing measured yet
    etas = [run_one(bar, clock, f"cheap_{i:03}", 0.001) for i in range(400)]
    assert set(etas) == {None}  # 400/600 done, but what a slow unit costs is unknown
    assert format_eta(bar.eta()) == "?"
    eta = run_one(bar, clock, "slow_000", 0.05)
    # 199 slow units of 50 ms left, on one worker busy all the time: 9.95 s, not 0.2 s.
    assert eta == pytest.approx(199 * 0.05)


def test_eta_uses_estimated_durations_before_any_unit_finished():
    """Units with estimated_duration give an ETA as soon as the work rate is measured."""
    clock = FakeClock()
    qp = QuantumPartitioner()
    for i in range(10):
        qp.add_unit(lambda ctx: None, name=f"fit_{i}", metadata={"estimated_duration": 2.0})
    bar = started_bar(qp, clock)
    bar.unit_started(UnitStarted("fit_0", 1, clock(), "w1"))
    bar.unit_started(UnitStarted("fit_1", 1, clock(), "w2"))
    assert bar.eta() is None  # one sample: no rate yet
    clock.advance(1.0)
    # 20 s of work, 2 s of it done by two workers in 1 s: 18 s left at 2 s per second.
    assert bar.eta() == pytest.approx(9.0)


def test_units_of_one_function_are_one_kind():
    """partial(f, item) units share a kind; lambdas are told apart by their name's stem."""

    def extract(doc, ctx):
        return doc

    qp = QuantumPartitioner()
    qp.add_unit(functools.partial(extract, "a"), name="first")
    qp.add_unit(functools.partial(extract, "b"), name="second")
    qp.add_unit(lambda ctx: None, name="fetch[0]")
    qp.add_unit(lambda ctx: None, name="fetch[1]")
    qp.add_unit(lambda ctx: None, name="load")
    kinds = [unit_kind(unit) for unit in qp.units.values()]
    assert kinds[0] == kinds[1]
    assert kinds[2] == kinds[3] == "fetch"
    assert kinds[4] == "load"


def test_a_cancelled_run_fills_the_bar_with_finished_work_only():
    """After cancel() the bar shows done/total and each state, not a full bar."""
    bar, out = drawn_bar()
    qp = QuantumPartitioner(instruments=[bar])
    for i in range(3):
        qp.add_unit(lambda ctx: None, name=f"early{i}", priority=10)
    qp.add_unit(lambda ctx: qp.cancel(), name="stopper", priority=5)
    for i in range(6):
        qp.add_unit(lambda ctx: None, name=f"late{i}")
    qp.execute(execution_mode=SEQ)
    assert (bar.done, bar.cancelled, bar.filled, bar.total) == (4, 6, 4, 10)
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "4/10" in final
    assert "10/10" not in out.getvalue()
    assert "cancelled 6" in final
    assert bar._progress is None


def test_a_limit_with_waiters_shows_its_holders_and_waiters():
    """While units wait for a named limit, the status line shows held/concurrency +waiting."""
    from quantum_partitioner import Limit  # noqa: PLC0415 - only this test needs it

    bar, _ = drawn_bar()
    gpu = Limit("gpu", concurrency=2)
    bar.limits = [gpu]
    assert "gpu" not in bar.status()
    gpu.held, gpu.waiting = 2, 3
    assert "gpu 2/2 +3 waiting" in bar.status()


# -- maps: the total grows as items appear ------------------------------------------------------


def test_the_total_grows_as_a_map_creates_its_items_and_the_stream_and_hooks_see_them():
    """3 units declared; the map adds 4 items: the bar ends at 7/7 with none running."""
    bar, out = drawn_bar()
    seen: dict[str, list[str]] = {"start": [], "complete": []}
    qp = QuantumPartitioner(instruments=[bar], max_workers=2)
    qp.on_unit_start = seen["start"].append
    qp.on_unit_complete = lambda name, result: seen["complete"].append(name)
    qp.add_unit(lambda ctx: [1, 2, 3, 4], name="plan")
    qp.add_map(lambda ctx: ctx.item * 2, over="plan", name="double")
    qp.add_unit(lambda ctx: sum(ctx["double"]), ["double"], name="total")
    qp.execute(execution_mode=ExecutionMode.THREAD)
    items = [f"double[{i}]" for i in range(4)]
    assert (bar.total, bar.done, bar.running, bar.filled) == (7, 7, 0, 7)
    assert "7/7" in out.getvalue().rsplit("\r", 1)[-1]
    assert sorted(seen["start"]) == sorted(["plan", "total", *items])  # a map never starts
    assert sorted(seen["complete"]) == sorted(["plan", "double", "total", *items])
    streamed = [r.name for r in qp.stream(execution_mode=ExecutionMode.THREAD)]
    assert sorted(streamed) == sorted(["plan", "double", "total", *items])


def test_a_map_weighs_nothing_and_its_items_learn_one_kind():
    """A map itself is no work; once it expands, its items are work of one kind."""
    from quantum_partitioner.observability._events import UnitsAdded  # noqa: PLC0415

    clock = FakeClock()
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: [1, 2, 3], name="plan", metadata={"estimated_duration": 1.0})
    fetch = qp.add_map(lambda ctx: None, over="plan", name="fetch")
    bar = started_bar(qp, clock)
    assert bar.total == 2
    run_one(bar, clock, "plan", 1.0)
    assert bar.work.left() == 0.0  # what the map will create is not known yet: it weighs 0
    bar.units_added(UnitsAdded("fetch", ["fetch[0]", "fetch[1]", "fetch[2]"], clock(), fetch))
    assert bar.total == 5
    assert bar.work.left() is None  # three items of a kind not measured yet
    run_one(bar, clock, "fetch[0]", 2.0)
    assert bar.work.left() == pytest.approx(2 * 2.0)  # two items of 2 s each
    bar.unit_finished(UnitFinished("fetch", 0, clock(), 0.0, []))  # the map never ran
    assert bar.running == 0
