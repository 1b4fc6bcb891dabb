"""One behaviour suite, run on every execution mode (CPython ``create_executor_tests`` style).

Every test takes the ``mode`` fixture (tests/conftest.py, section "running") and calls
``mode.execute(partitioner, context, ...)``; whatever the mode, the observable behaviour of a
run must be the same. Units report what they saw through their return values, so the
assertions run in the test, not inside units.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback

import pytest

from quantum_partitioner import (
    ExponentialBackoff,
    Instrument,
    QuantumPartitioner,
    RetryPolicy,
    RunFinished,
    TaskError,
    UnitCancelledError,
    UnitSkippedError,
    UnitState,
)

FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
TERMINAL = {
    UnitState.COMPLETED,
    UnitState.FAILED,
    UnitState.SKIPPED,
    UnitState.CANCELED,
    UnitState.TIMEOUT,
}


def wait_until(predicate, timeout=5.0):
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its value."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.001)
    return True


def states(partitioner):
    return {name: unit.state for name, unit in partitioner.units.items()}


def exploding_unit(ctx):
    raise ValueError(f"{ctx.unit_id} exploded")


class Recorder:
    """Thread-safe log of callback calls."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def hook(self, kind):
        def record(*args):
            with self.lock:
                self.calls.append((kind, *args, os.getpid()))
                self.changed.notify_all()

        return record

    def wait_for(self, count, timeout=5.0):
        with self.lock:
            return self.changed.wait_for(lambda: len(self.calls) >= count, timeout)

    def of(self, kind):
        with self.lock:
            return [call[1:-1] for call in self.calls if call[0] == kind]


# -- results and the context -----------------------------------------------------------------


def test_results_of_every_unit_are_returned(mode):
    """A diamond a -> (b, c) -> d returns every unit's result, each built from its inputs."""
    #   a
    #  / \
    # b   c
    #  \ /
    #   d
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"] + 1, name="a")
    p.add_unit(lambda ctx: ctx["a"] * 10, ["a"], name="b")
    p.add_unit(lambda ctx: ctx["a"] * 100, ["a"], name="c")
    p.add_unit(lambda ctx: ctx["b"] + ctx["c"], ["b", "c"], name="d")

    results = mode.execute(p, {"x": 1})

    assert results == {"a": 2, "b": 20, "c": 200, "d": 220}
    assert all(state is UnitState.COMPLETED for state in states(p).values())


def test_ctx_holds_the_callers_context_and_declared_dependencies(mode):
    """A unit reads context keys and the result of each dependency it declared."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "from-a", name="a")
    p.add_unit(
        lambda ctx: (ctx["input"], ctx["a"], ctx.get_dependency_result("a"), sorted(ctx)),
        ["a"],
        name="b",
    )

    results = mode.execute(p, {"input": 42})

    assert results["b"] == (42, "from-a", "from-a", ["a", "input"])


def test_ctx_hides_results_of_undeclared_units(mode):
    """A unit cannot read a result it did not declare, even of a transitive dependency."""
    # hidden -> a -> c   (c declares only a; hidden has surely completed before c runs)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "secret", name="hidden")
    p.add_unit(lambda ctx: "a", ["hidden"], name="a")

    def c(ctx):
        seen = {"contains": "hidden" in ctx, "iterated": "hidden" in list(ctx)}
        try:
            seen["getitem"] = ctx["hidden"]
        except KeyError as error:
            seen["getitem"] = f"KeyError: {error}"
        try:
            seen["get_dependency_result"] = ctx.get_dependency_result("hidden")
        except KeyError as error:
            seen["get_dependency_result"] = f"KeyError: {error}"
        seen["get"] = ctx.get("hidden", "default")
        return seen

    p.add_unit(c, ["a"], name="c")

    seen = mode.execute(p, {"input": 1})["c"]

    assert seen["contains"] is False
    assert seen["iterated"] is False
    assert seen["getitem"].startswith("KeyError")
    assert "'c'" in seen["getitem"]
    assert "hidden" in seen["getitem"]
    assert seen["get_dependency_result"].startswith("KeyError")
    assert seen["get"] == "default"


def test_get_dependency_result_raises_for_a_context_key(mode):
    """get_dependency_result() only answers for declared dependencies, not context keys."""

    def probe(ctx):
        try:
            ctx.get_dependency_result("input")
        except KeyError:
            return "KeyError"
        return "no error"

    p = QuantumPartitioner()
    p.add_unit(probe, name="probe")

    assert mode.execute(p, {"input": 1}) == {"probe": "KeyError"}


def test_dependency_result_wins_over_context_key_of_same_name(mode):
    """ctx[name] is the dependency's result when a context key has the same name."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "result", name="a")
    p.add_unit(lambda ctx: ctx["a"], ["a"], name="declares_a")
    p.add_unit(lambda ctx: ctx["a"], name="does_not_declare_a")

    results = mode.execute(p, {"a": "context"})

    assert results["declares_a"] == "result"
    assert results["does_not_declare_a"] == "context"


def test_ctx_is_read_only(mode):
    """Units cannot write into ctx: it is a read-only mapping."""

    def writer(ctx):
        try:
            ctx["x"] = 2
        except TypeError:
            return "TypeError"
        return "written"

    p = QuantumPartitioner()
    p.add_unit(writer, name="writer")

    assert mode.execute(p, {"x": 1}) == {"writer": "TypeError"}


def test_ctx_environment_names_unit_attempt_and_mode(mode):
    """ctx.environment tells the unit its name, its attempt number and the execution mode."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: dict(ctx.environment), name="env")

    env = mode.execute(p)["env"]

    assert env == {
        "unit_id": "env",
        "attempt": 1,
        "execution_mode": mode.kwargs["execution_mode"].value,
    }


def test_record_metric_shows_up_in_unit_metrics(mode):
    """Metrics recorded with ctx.record_metric appear under unit_metrics, per unit."""

    def counting(ctx):
        ctx.record_metric("rows", 42)
        ctx.record_metric("source", "db")

    p = QuantumPartitioner()
    p.add_unit(counting, name="counting")
    p.add_unit(lambda ctx: 1, name="silent")

    mode.execute(p)

    assert p.last_execution_metrics["unit_metrics"] == {"counting": {"rows": 42, "source": "db"}}


# -- failures --------------------------------------------------------------------------------


def test_failure_marks_unit_failed_with_exception_and_traceback(mode):
    """A raising unit is FAILED with its exception, whose traceback names the unit function."""
    p = QuantumPartitioner()
    p.add_unit(exploding_unit, name="boom")

    results = mode.execute(p)

    unit = p.units["boom"]
    assert results == {}
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, ValueError)
    assert str(unit.error) == "boom exploded"
    assert "exploding_unit" in "".join(traceback.format_exception(unit.error))
    assert "exploding_unit" in unit.traceback
    assert p.failed_units == {"boom"}
    assert p.get_failed_units() == {"boom": unit.error}


def test_transitive_dependents_of_a_failure_are_skipped(mode):
    """Every unit downstream of a failed unit is SKIPPED, naming the failed dependency."""
    # boom -> b -> c
    #   \--------> d
    p = QuantumPartitioner()
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: 1, ["boom"], name="b")
    p.add_unit(lambda ctx: 2, ["b"], name="c")
    p.add_unit(lambda ctx: 3, ["boom", "b"], name="d")

    results = mode.execute(p)

    assert results == {}
    assert states(p) == {
        "boom": UnitState.FAILED,
        "b": UnitState.SKIPPED,
        "c": UnitState.SKIPPED,
        "d": UnitState.SKIPPED,
    }
    for name in ("b", "c", "d"):
        error = p.units[name].error
        assert isinstance(error, UnitSkippedError)
        assert name in str(error)
        assert p.units[name].attempt == 0
    assert p.units["b"].error.failed_dependency == "boom"


def test_independent_branches_complete_despite_a_failure(mode):
    """A failure does not stop units that do not depend on it."""
    # boom -> skipped        ok1 -> ok2 -> ok3
    p = QuantumPartitioner()
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: "never", ["boom"], name="skipped")
    p.add_unit(lambda ctx: 1, name="ok1")
    p.add_unit(lambda ctx: ctx["ok1"] + 1, ["ok1"], name="ok2")
    p.add_unit(lambda ctx: ctx["ok2"] + 1, ["ok2"], name="ok3")

    results = mode.execute(p)

    assert results == {"ok1": 1, "ok2": 2, "ok3": 3}
    assert p.units["skipped"].state is UnitState.SKIPPED
    assert p.completed_units == {"ok1", "ok2", "ok3"}


def test_fallback_value_lets_dependents_run_with_it(mode):
    """A failed unit with metadata['fallback_value'] hands that value to its dependents."""
    p = QuantumPartitioner()
    p.add_unit(exploding_unit, name="fetch", metadata={"fallback_value": {"data": []}})
    p.add_unit(lambda ctx: ("used", ctx["fetch"]), ["fetch"], name="use")

    results = mode.execute(p)

    assert results == {"fetch": {"data": []}, "use": ("used", {"data": []})}
    assert p.units["fetch"].state is UnitState.FAILED
    assert isinstance(p.units["fetch"].error, ValueError)
    assert p.units["use"].state is UnitState.COMPLETED


def test_retries_until_success(mode):
    """A unit failing twice then succeeding with retries=2 completes on attempt 3."""

    def flaky(ctx):
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return f"ok on {ctx.attempt}"

    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(flaky, name="flaky", retries=2)
    p.add_unit(lambda ctx: ctx["flaky"].upper(), ["flaky"], name="after")

    results = mode.execute(p)

    assert results == {"flaky": "ok on 3", "after": "OK ON 3"}
    assert p.units["flaky"].state is UnitState.COMPLETED
    assert p.units["flaky"].attempt == 3
    assert p.units["flaky"].error is None


def test_retries_exhausted_fail_with_the_last_error(mode):
    """A unit failing on every attempt is FAILED after retries+1 attempts, with the last error."""

    def always(ctx):
        raise ConnectionError(f"attempt {ctx.attempt}")

    calls = []
    lock = threading.Lock()

    def counted(ctx):
        with lock:
            calls.append(ctx.attempt)
        return always(ctx)

    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(counted, name="always", retries=2)

    mode.execute(p)

    unit = p.units["always"]
    assert unit.state is UnitState.FAILED
    assert unit.attempt == 3
    assert str(unit.error) == "attempt 3"
    assert sorted(calls) == [1, 2, 3]


def test_fail_fast_cancels_units_that_have_not_started(mode):
    """With fail_fast=True, once a unit fails every unit not yet started is CANCELED."""
    # boom (fails first)      x -> y   (x waits until boom has failed, so y cannot start)
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(exploding_unit, name="boom", priority=10)
    p.add_unit(lambda ctx: wait_until(lambda: p.units["boom"].state.is_terminal), name="x")
    p.add_unit(lambda ctx: "y ran", ["x"], name="y")

    results = mode.execute(p, fail_fast=True)

    assert p.units["boom"].state is UnitState.FAILED
    assert p.units["y"].state is UnitState.CANCELED
    assert isinstance(p.units["y"].error, UnitCancelledError)
    assert "fail_fast" in str(p.units["y"].error)
    assert "y" not in results
    # x had either not started (CANCELED) or was running, which fail_fast lets finish.
    assert p.units["x"].state in {UnitState.CANCELED, UnitState.COMPLETED}
    if not mode.concurrent:
        assert p.units["x"].state is UnitState.CANCELED


def test_without_fail_fast_nothing_is_cancelled(mode):
    """By default a failure cancels nothing: units not downstream of it still run."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(exploding_unit, name="boom", priority=10)
    p.add_unit(lambda ctx: 1, name="x")
    p.add_unit(lambda ctx: 2, ["x"], name="y")

    assert mode.execute(p) == {"x": 1, "y": 2}


def test_raise_on_error_raises_task_error_with_details(mode):
    """raise_on_error=True raises TaskError carrying errors, partial results and failed tasks."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="ok")
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: 2, ["boom"], name="skipped")

    with pytest.raises(TaskError) as info:
        mode.execute(p, raise_on_error=True)

    error = info.value
    assert error.partial_results == {"ok": 1}
    assert error.failed_tasks == ["boom"]
    assert set(error.errors) == {"boom"}
    assert isinstance(error.errors["boom"], ValueError)
    assert "boom" in str(error)
    assert p.get_partial_results() == {"ok": 1}


def test_raise_on_error_returns_normally_when_nothing_failed(mode):
    """raise_on_error=True does not raise when every unit completed."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="ok")

    assert mode.execute(p, raise_on_error=True) == {"ok": 1}


# -- callbacks and instruments ---------------------------------------------------------------


def _callback_graph(recorder):
    # boom -> skipped      flaky (fails once) -> after
    def flaky(ctx):
        if ctx.attempt == 1:
            raise ConnectionError("first attempt")
        return "flaky ok"

    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: "never", ["boom"], name="skipped")
    p.add_unit(flaky, name="flaky", retries=1)
    p.add_unit(lambda ctx: "after ok", ["flaky"], name="after")
    p.on_unit_start = recorder.hook("start")
    p.on_unit_complete = recorder.hook("complete")
    p.on_unit_error = recorder.hook("error")
    p.on_unit_retry = recorder.hook("retry")
    p.on_unit_skip = recorder.hook("skip")
    return p


# start: boom, flaky x2, after; complete: flaky, after; error: boom; retry: flaky; skip: skipped
_EXPECTED_CALLBACKS = 9


def test_callbacks_receive_the_right_arguments_in_the_callers_process(mode):
    """on_unit_start/complete/error/retry/skip get (id), (id, result), (id, error), ... here."""
    recorder = Recorder()
    p = _callback_graph(recorder)

    mode.execute(p)
    # Only the arguments are checked here; when they arrive is the next test's business.
    recorder.wait_for(_EXPECTED_CALLBACKS)

    assert sorted(recorder.of("start")) == [("after",), ("boom",), ("flaky",), ("flaky",)]
    assert sorted(recorder.of("complete")) == [("after", "after ok"), ("flaky", "flaky ok")]
    [(error_unit, error)] = recorder.of("error")
    assert error_unit == "boom"
    assert error is p.units["boom"].error
    [(retry_unit, retry_attempt, retry_error)] = recorder.of("retry")
    assert (retry_unit, retry_attempt) == ("flaky", 1)
    assert isinstance(retry_error, ConnectionError)
    [(skip_unit, reason)] = recorder.of("skip")
    assert skip_unit == "skipped"
    assert isinstance(reason, UnitSkippedError)
    assert {call[-1] for call in recorder.calls} == {os.getpid()}
    assert len(recorder.calls) == _EXPECTED_CALLBACKS


def test_callbacks_have_all_run_when_execute_returns(mode):
    """Every callback of a run has been called (and has returned) when execute() returns."""
    recorder = Recorder()
    p = _callback_graph(recorder)
    slow = recorder.hook("complete")

    def slow_complete(unit_id, result):
        threading.Event().wait(0.02)  # e.g. a callback writing to a file or a socket
        slow(unit_id, result)

    p.on_unit_complete = slow_complete

    mode.execute(p)

    kinds = sorted(call[0] for call in recorder.calls)
    assert kinds == sorted(["start"] * 4 + ["complete"] * 2 + ["error", "retry", "skip"]), (
        f"callbacks missing when execute() returned; got {recorder.calls}"
    )


def test_raising_callback_is_logged_and_does_not_break_the_run(mode, caplog):
    """A callback that raises is logged on the quantum_partitioner logger; the run goes on."""

    def broken(unit_id):
        raise RuntimeError(f"callback broke on {unit_id}")

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(lambda ctx: ctx["a"] + 1, ["a"], name="b")
    p.on_unit_start = broken

    with caplog.at_level(logging.ERROR, logger="quantum_partitioner"):
        results = mode.execute(p)

    assert results == {"a": 1, "b": 2}
    assert all(state is UnitState.COMPLETED for state in states(p).values())
    logged = [r for r in caplog.records if r.name == "quantum_partitioner" and r.exc_info]
    assert len(logged) == 2
    assert {str(r.exc_info[1]) for r in logged} == {"callback broke on a", "callback broke on b"}


class _TerminalEvents(Instrument):
    def __init__(self):
        self.finished: list[RunFinished] = []

    def run_finished(self, event):
        self.finished.append(event)


def test_every_unit_ends_in_exactly_one_terminal_state(mode):
    """After a run with completions, failures, skips and cancellations, every unit is terminal."""
    #  boom -> skipped      ok -> ok2
    #  (fail_fast also cancels 'late', which waits for boom's failure before 'late2')
    instrument = _TerminalEvents()
    p = QuantumPartitioner(max_workers=2, instruments=[instrument])
    p.add_unit(exploding_unit, name="boom", priority=5)
    p.add_unit(lambda ctx: 0, ["boom"], name="skipped")
    p.add_unit(lambda ctx: wait_until(lambda: p.units["boom"].state.is_terminal), name="gate")
    p.add_unit(lambda ctx: 1, ["gate"], name="late")

    mode.execute(p, fail_fast=True)

    final = states(p)
    assert all(state in TERMINAL for state in final.values()), final
    counts = {state: list(final.values()).count(state) for state in TERMINAL}
    [event] = instrument.finished
    assert event.total_units == 4
    assert event.completed + event.failed + event.skipped + event.canceled == event.total_units
    assert event.completed == counts[UnitState.COMPLETED]
    assert event.failed == counts[UnitState.FAILED] + counts[UnitState.TIMEOUT]
    assert event.skipped == counts[UnitState.SKIPPED] == 1
    assert event.canceled == counts[UnitState.CANCELED]
    metrics = p.last_execution_metrics
    assert metrics["completed_units"] + metrics["failed_units"] + metrics[
        "skipped_units"
    ] + metrics["canceled_units"] == len(p.units)


# -- async units -----------------------------------------------------------------------------


def test_async_def_units_are_awaited(mode):
    """A coroutine function unit is awaited: its dependents receive the value, not a coroutine."""

    async def fetch(ctx):
        return ctx["base"] * 2

    async def refine(ctx):
        return ctx["fetch"] + 1

    p = QuantumPartitioner()
    p.add_unit(fetch, name="fetch")
    p.add_unit(refine, ["fetch"], name="refine")
    p.add_unit(lambda ctx: ctx["refine"] * 10, ["refine"], name="plain")

    results = mode.execute(p, {"base": 5})

    assert results == {"fetch": 10, "refine": 11, "plain": 110}


def test_failing_async_unit_is_failed(mode):
    """An exception raised inside an async def unit fails that unit like a plain one."""

    async def broken(ctx):
        raise KeyError("missing")

    p = QuantumPartitioner()
    p.add_unit(broken, name="broken")

    assert mode.execute(p) == {}
    assert p.units["broken"].state is UnitState.FAILED
    assert isinstance(p.units["broken"].error, KeyError)


# -- several runs and the unit record ----------------------------------------------------------


def test_the_same_partitioner_runs_twice(mode):
    """Running a partitioner again runs every unit again, with the new context."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"] * 2, name="double")
    p.add_unit(lambda ctx: ctx["double"] + 1, ["double"], name="inc")

    first = mode.execute(p, {"x": 1})
    second = mode.execute(p, {"x": 10})

    assert first == {"double": 2, "inc": 3}
    assert second == {"double": 20, "inc": 21}


def test_states_reset_between_runs(mode):
    """A unit that failed in one run and completes in the next shows only the last run."""

    def sometimes(ctx):
        if ctx["fail"]:
            raise ValueError("asked to fail")
        return "fine"

    p = QuantumPartitioner()
    p.add_unit(sometimes, name="sometimes")
    p.add_unit(lambda ctx: ctx["sometimes"], ["sometimes"], name="after")

    mode.execute(p, {"fail": True})
    assert p.units["after"].state is UnitState.SKIPPED
    assert p.failed_units == {"sometimes"}

    results = mode.execute(p, {"fail": False})

    assert results == {"sometimes": "fine", "after": "fine"}
    assert states(p) == {"sometimes": UnitState.COMPLETED, "after": UnitState.COMPLETED}
    assert p.units["sometimes"].error is None
    assert p.units["sometimes"].attempt == 1
    assert p.failed_units == set()
    assert p.completed_units == {"sometimes", "after"}
    assert p.get_failed_units() == {}
    assert p.last_execution_metrics["failed_units"] == 0


def test_unit_runtime_fields_describe_the_last_run(mode):
    """units[x] exposes state, result, error, attempt, start/end time and execution time."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: threading.Event().wait(0.05) or "slow", name="slow")
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(lambda ctx: 0, ["boom"], name="skipped")
    before = time.time()

    mode.execute(p)

    after = time.time()
    slow, boom, skipped = p.units["slow"], p.units["boom"], p.units["skipped"]
    assert (slow.state, slow.result, slow.error, slow.attempt) == (
        UnitState.COMPLETED,
        "slow",
        None,
        1,
    )
    assert before - 1 <= slow.start_time <= slow.end_time <= after + 1
    assert slow.get_execution_time() == pytest.approx(slow.end_time - slow.start_time)
    assert 0.04 <= slow.get_execution_time() < 30
    assert boom.state is UnitState.FAILED
    assert boom.result is None
    assert isinstance(boom.error, ValueError)
    assert boom.attempt == 1
    assert boom.get_execution_time() is not None
    assert skipped.attempt == 0
    assert skipped.start_time is None
    assert skipped.get_execution_time() is None


def test_units_are_pending_before_any_run(mode):
    """Before a run, units are PENDING with no result, error, attempt or times."""
    p = QuantumPartitioner()
    unit = p.add_unit(lambda ctx: 1, name="a")

    assert (unit.state, unit.result, unit.error, unit.attempt) == (UnitState.PENDING, None, None, 0)
    assert unit.start_time is None
    assert unit.end_time is None
    assert unit.get_execution_time() is None
    mode.execute(p)
    assert unit.state is UnitState.COMPLETED


def test_results_hold_only_completed_units_and_fallbacks(mode):
    """Failed (without fallback), skipped and cancelled units are absent from the results."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "ok", name="ok")
    p.add_unit(exploding_unit, name="boom")
    p.add_unit(exploding_unit, name="soft", metadata={"fallback_value": 0})
    p.add_unit(lambda ctx: ctx["soft"], ["soft"], name="after_soft")
    p.add_unit(lambda ctx: 1, ["boom"], name="skipped")

    results = mode.execute(p)

    assert results == {"ok": "ok", "soft": 0, "after_soft": 0}
    assert p.get_partial_results() == results
