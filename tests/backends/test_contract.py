"""One behaviour suite, run on every execution mode (CPython ``create_executor_tests`` style).

Every test takes the ``mode`` fixture (tests/conftest.py, section "Running graphs") and calls
``mode.execute(partitioner, context, ...)``; whatever the mode, the observable behaviour of a
run must be the same. Units may run in other processes, so they share no memory with the
test: they report through return values, errors, ctx metrics and files under ``tmp_path``,
and callbacks (which run in the caller's process in every mode) report to the test.

Unit functions come from ``_contract_units`` (this directory, put on ``sys.path``): a plain
``ProcessPoolExecutor`` pickles functions by name, so a lambda defined here could not reach
its workers. ``test_lambdas_and_closures_are_units`` covers lambdas and closures in each mode.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

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
    at_least,
)

sys.path.insert(0, str(Path(__file__).parent))
import _contract_units as u  # needs the sys.path entry above

FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))
TERMINAL = {
    UnitState.COMPLETED,
    UnitState.FAILED,
    UnitState.SKIPPED,
    UnitState.CANCELED,
    UnitState.TIMEOUT,
}


def states(partitioner):
    return {name: unit.state for name, unit in partitioner.units.items()}


def lines(path):
    """The lines units appended to ``path`` (none if they never wrote)."""
    return path.read_text().splitlines() if path.exists() else []


class Recorder:
    """Thread-safe log of callback calls, each with the id of the process that made it."""

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


def open_gate_on_error(p, gate):
    """Create the file ``gate`` when a unit fails (callbacks run in this process)."""
    p.on_unit_error = lambda unit_id, error: gate.touch()


# -- results and the context -----------------------------------------------------------------


def test_results_of_every_unit_are_returned(mode):
    """A diamond a -> (b, c) -> d returns every unit's result, each built from its inputs."""
    #   a
    #  / \
    # b   c
    #  \ /
    #   d
    p = QuantumPartitioner()
    p.add_unit(u.plus("x", 1), name="a")
    p.add_unit(u.times("a", 10), ["a"], name="b")
    p.add_unit(u.times("a", 100), ["a"], name="c")
    p.add_unit(u.total("b", "c"), ["b", "c"], name="d")

    results = mode.execute(p, {"x": 1})

    assert results == {"a": 2, "b": 20, "c": 200, "d": 220}
    assert all(state is UnitState.COMPLETED for state in states(p).values())


def test_lambdas_and_closures_are_units(mode):
    """Lambdas and closures run in every mode but on a plain process pool, which fails them."""
    offset = 10

    def closure(ctx):
        return ctx["x"] + offset

    p = QuantumPartitioner()
    p.add_unit(closure, name="closure")
    p.add_unit(lambda ctx: ctx["closure"] * 2, ["closure"], name="lambda")

    results = mode.execute(p, {"x": 1})

    if mode.pickles_functions_by_name:
        # Documented CUSTOM behaviour: the executor's pickle cannot send a local function,
        # and that fails the unit (naming the function), not the run.
        assert results == {}
        error = p.units["closure"].error
        assert p.units["closure"].state is UnitState.FAILED
        assert "pickle" in str(error)
        assert "closure" in str(error)
        assert p.units["lambda"].state is UnitState.SKIPPED
    else:
        assert results == {"closure": 11, "lambda": 22}


def test_ctx_holds_the_callers_context_and_declared_dependencies(mode):
    """A unit reads context keys and the result of each dependency it declared."""
    p = QuantumPartitioner()
    p.add_unit(u.const("from-a"), name="a")
    p.add_unit(u.probe("input", "a"), ["a"], name="b")

    seen = mode.execute(p, {"input": 42})["b"]

    assert seen["keys"] == ["a", "input"]
    assert seen["input"]["getitem"] == 42
    assert seen["a"]["getitem"] == "from-a"
    assert seen["a"]["dependency"] == "from-a"


def test_ctx_hides_results_of_undeclared_units(mode):
    """A unit cannot read a result it did not declare, even of a transitive dependency."""
    # hidden -> a -> c   (c declares only a; hidden has surely completed before c runs)
    p = QuantumPartitioner()
    p.add_unit(u.const("secret"), name="hidden")
    p.add_unit(u.const("a"), ["hidden"], name="a")
    p.add_unit(u.probe("hidden"), ["a"], name="c")

    seen = mode.execute(p, {"input": 1})["c"]["hidden"]

    assert seen["in"] is False
    assert seen["iterated"] is False
    assert seen["getitem"].startswith("KeyError")
    assert "'c'" in seen["getitem"]
    assert "hidden" in seen["getitem"]
    assert seen["dependency"].startswith("KeyError")
    assert seen["get"] == "default"


def test_get_dependency_result_raises_for_a_context_key(mode):
    """get_dependency_result() only answers for declared dependencies, not context keys."""
    p = QuantumPartitioner()
    p.add_unit(u.probe("input"), name="probe")

    seen = mode.execute(p, {"input": 1})["probe"]["input"]

    assert seen["getitem"] == 1
    assert seen["dependency"].startswith("KeyError")


def test_dependency_result_wins_over_context_key_of_same_name(mode):
    """ctx[name] is the dependency's result when a context key has the same name."""
    p = QuantumPartitioner()
    p.add_unit(u.const("result"), name="a")
    p.add_unit(u.pair("declares", "a"), ["a"], name="declares_a")
    p.add_unit(u.pair("does not declare", "a"), name="does_not_declare_a")

    results = mode.execute(p, {"a": "context"})

    assert results["declares_a"] == ("declares", "result")
    assert results["does_not_declare_a"] == ("does not declare", "context")


def test_ctx_is_read_only(mode):
    """Units cannot write into ctx: it is a read-only mapping."""
    p = QuantumPartitioner()
    p.add_unit(u.write_into_ctx, name="writer")

    assert mode.execute(p, {"x": 1}) == {"writer": "TypeError"}


def test_ctx_environment_names_unit_attempt_and_mode(mode):
    """ctx.environment tells the unit its name, its attempt number and the execution mode."""
    p = QuantumPartitioner()
    p.add_unit(u.environment, name="env")

    env = mode.execute(p)["env"]

    assert env == {
        "unit_id": "env",
        "attempt": 1,
        "execution_mode": mode.kwargs["execution_mode"].value,
    }


def test_record_metric_shows_up_in_unit_metrics(mode):
    """Metrics recorded with ctx.record_metric appear under unit_metrics, per unit."""
    p = QuantumPartitioner()
    p.add_unit(u.record(rows=42, source="db"), name="counting")
    p.add_unit(u.const(1), name="silent")

    mode.execute(p)

    assert p.last_execution_metrics["unit_metrics"] == {"counting": {"rows": 42, "source": "db"}}


# -- failures --------------------------------------------------------------------------------


def test_a_timed_out_attempt_leaves_no_metrics(mode):
    """An attempt that returns after its timeout keeps none of its metrics, as its result.

    Where it cannot be stopped (a thread, an executor's worker) it returns while the run goes
    on (``long``): CUSTOM kept what it recorded, under a unit that is TIMEOUT.
    """
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.sleep_then_record(0.4, "late"), name="late", timeout=0.1)
    p.add_unit(u.sleep(1.0, "long"), name="long")
    assert mode.execute(p) == {"long": "long"}
    assert p.units["late"].state is UnitState.TIMEOUT
    assert p.last_execution_metrics["unit_metrics"] == {}


def test_failure_marks_unit_failed_with_exception_and_traceback(mode):
    """A raising unit is FAILED with its exception, whose traceback names the unit function."""
    p = QuantumPartitioner()
    p.add_unit(u.explode, name="boom")

    results = mode.execute(p)

    unit = p.units["boom"]
    assert results == {}
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, ValueError)
    assert str(unit.error) == "boom exploded"
    assert "in explode" in "".join(traceback.format_exception(unit.error))
    assert "in explode" in unit.traceback
    assert p.failed_units == {"boom"}
    assert p.get_failed_units() == {"boom": unit.error}


def test_transitive_dependents_of_a_failure_are_skipped(mode):
    """Every unit downstream of a failed unit is SKIPPED, naming the failed dependency."""
    # boom -> b -> c
    #   \--------> d
    p = QuantumPartitioner()
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const(1), ["boom"], name="b")
    p.add_unit(u.const(2), ["b"], name="c")
    p.add_unit(u.const(3), ["boom", "b"], name="d")

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
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const("never"), ["boom"], name="skipped")
    p.add_unit(u.const(1), name="ok1")
    p.add_unit(u.plus("ok1", 1), ["ok1"], name="ok2")
    p.add_unit(u.plus("ok2", 1), ["ok2"], name="ok3")

    results = mode.execute(p)

    assert results == {"ok1": 1, "ok2": 2, "ok3": 3}
    assert p.units["skipped"].state is UnitState.SKIPPED
    assert p.completed_units == {"ok1", "ok2", "ok3"}


def test_fallback_value_lets_dependents_run_with_it(mode):
    """A failed unit with metadata['fallback_value'] hands that value to its dependents."""
    p = QuantumPartitioner()
    p.add_unit(u.explode, name="fetch", metadata={"fallback_value": {"data": []}})
    p.add_unit(u.pair("used", "fetch"), ["fetch"], name="use")

    results = mode.execute(p)

    assert results == {"fetch": {"data": []}, "use": ("used", {"data": []})}
    assert p.units["fetch"].state is UnitState.FAILED
    assert isinstance(p.units["fetch"].error, ValueError)
    assert p.units["use"].state is UnitState.COMPLETED


def test_retries_until_success(mode, tmp_path):
    """A unit failing twice then succeeding with retries=2 completes on attempt 3."""
    attempts = tmp_path / "attempts"
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(u.flaky(succeed_on=3), name="flaky", retries=2)
    p.add_unit(u.upper("flaky"), ["flaky"], name="after")

    results = mode.execute(p, {"attempts": str(attempts)})

    assert results == {"flaky": "ok on 3", "after": "OK ON 3"}
    assert p.units["flaky"].state is UnitState.COMPLETED
    assert p.units["flaky"].attempt == 3
    assert p.units["flaky"].error is None
    assert lines(attempts) == ["flaky 1", "flaky 2", "flaky 3"]


def test_retries_exhausted_fail_with_the_last_error(mode, tmp_path):
    """A unit failing on every attempt is FAILED after retries+1 attempts, with the last error."""
    attempts = tmp_path / "attempts"
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(u.flaky(succeed_on=99), name="always", retries=2)

    mode.execute(p, {"attempts": str(attempts)})

    unit = p.units["always"]
    assert unit.state is UnitState.FAILED
    assert unit.attempt == 3
    assert isinstance(unit.error, ConnectionError)
    assert str(unit.error) == "attempt 3"
    assert lines(attempts) == ["always 1", "always 2", "always 3"]


class _BrokenBackoff:
    """A backoff of the user's own whose delay raises."""

    def delay(self, failures):
        raise KeyError(f"no delay for failure {failures}")


def test_a_backoff_that_raises_fails_its_unit_not_the_run(mode, tmp_path):
    """A user's backoff that raises: its unit FAILED saying why, dependents SKIPPED, run ends."""
    attempts = tmp_path / "attempts"
    p = QuantumPartitioner(retry_policy=RetryPolicy(backoff=_BrokenBackoff()))
    p.add_unit(u.flaky(succeed_on=99), name="always", retries=2)
    p.add_unit(u.upper("always"), ["always"], name="after")
    p.add_unit(u.const(1), name="other")

    results = mode.execute(p, {"attempts": str(attempts)})

    assert results == {"other": 1}
    unit = p.units["always"]
    assert unit.state is UnitState.FAILED
    assert unit.attempt == 1
    assert str(unit.error) == (
        "unit 'always': no retry after attempt 1 failed (ConnectionError: attempt 1): "
        "KeyError: 'no delay for failure 1'"
    )
    assert isinstance(unit.error.__cause__, KeyError)
    assert isinstance(unit.error.__context__, ConnectionError)
    assert p.units["after"].state is UnitState.SKIPPED


def test_an_error_whose_str_raises_is_shown_as_such_by_metrics_trace_and_report(mode, tmp_path):
    """A unit's error whose ``__str__`` raises: metrics, trace and report say so, no crash."""
    p = QuantumPartitioner()
    p.add_unit(u.raise_unprintable, name="bad")
    p.add_unit(u.const(1), name="fine")

    assert mode.execute(p, trace=True) == {"fine": 1}

    text = "<str() of UnprintableError raised RuntimeError>"
    assert p.last_execution_metrics["unit_times"]["bad"]["error"] == text
    assert text in p.export_trace(tmp_path / "t.json").read_text()
    assert text.replace("<", "&lt;").replace(">", "&gt;") in (
        p.write_report(tmp_path / "r.html").read_text()
    )


def test_fail_fast_cancels_units_that_have_not_started(mode, tmp_path):
    """With fail_fast=True, once a unit fails every unit not yet started is CANCELED."""
    # boom (fails first)      x -> y   (x waits until boom has failed, so y cannot start)
    gate = tmp_path / "boom-failed"
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.explode, name="boom", priority=10)
    p.add_unit(u.wait_for_gate, name="x")
    p.add_unit(u.const("y ran"), ["x"], name="y")
    open_gate_on_error(p, gate)

    results = mode.execute(p, {"gate": str(gate)}, fail_fast=True)

    assert p.units["boom"].state is UnitState.FAILED
    assert p.units["y"].state is UnitState.CANCELED
    assert isinstance(p.units["y"].error, UnitCancelledError)
    assert "fail_fast" in str(p.units["y"].error)
    assert "y" not in results
    # x had either not started (CANCELED) or was running, which fail_fast lets finish.
    assert p.units["x"].state in {UnitState.CANCELED, UnitState.COMPLETED}
    if p.units["x"].state is UnitState.COMPLETED:
        assert results["x"] is True  # it saw the gate: it did wait for boom's failure
    if not mode.concurrent:
        assert p.units["x"].state is UnitState.CANCELED


def test_without_fail_fast_nothing_is_cancelled(mode):
    """By default a failure cancels nothing: units not downstream of it still run."""
    p = QuantumPartitioner(max_workers=1)
    p.add_unit(u.explode, name="boom", priority=10)
    p.add_unit(u.const(1), name="x")
    p.add_unit(u.const(2), ["x"], name="y")

    assert mode.execute(p) == {"x": 1, "y": 2}


def test_raise_on_error_raises_task_error_with_details(mode):
    """raise_on_error=True raises TaskError carrying errors, partial results and failed tasks."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="ok")
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const(2), ["boom"], name="skipped")

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
    p.add_unit(u.const(1), name="ok")

    assert mode.execute(p, raise_on_error=True) == {"ok": 1}


# -- callbacks and instruments ---------------------------------------------------------------


def _callback_graph(recorder):
    # boom -> skipped      flaky (fails once) -> after
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const("never"), ["boom"], name="skipped")
    p.add_unit(u.flaky(succeed_on=2), name="flaky", retries=1)
    p.add_unit(u.const("after ok"), ["flaky"], name="after")
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
    assert sorted(recorder.of("complete")) == [("after", "after ok"), ("flaky", "ok on 2")]
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
    p.add_unit(u.const(1), name="a")
    p.add_unit(u.plus("a", 1), ["a"], name="b")
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


def test_every_unit_ends_in_exactly_one_terminal_state(mode, tmp_path):
    """After a run with completions, failures, skips and cancellations, every unit is terminal."""
    #  boom -> skipped      gate -> late
    #  (fail_fast also cancels 'late': 'gate' waits for boom's failure before it ends)
    gate = tmp_path / "boom-failed"
    instrument = _TerminalEvents()
    p = QuantumPartitioner(max_workers=2, instruments=[instrument])
    p.add_unit(u.explode, name="boom", priority=5)
    p.add_unit(u.const(0), ["boom"], name="skipped")
    p.add_unit(u.wait_for_gate, name="gate")
    p.add_unit(u.const(1), ["gate"], name="late")
    open_gate_on_error(p, gate)

    mode.execute(p, {"gate": str(gate)}, fail_fast=True)

    final = states(p)
    assert all(state in TERMINAL for state in final.values()), final
    assert final["boom"] is UnitState.FAILED
    assert final["late"] is UnitState.CANCELED
    assert final["gate"] in {UnitState.COMPLETED, UnitState.CANCELED}
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
    p = QuantumPartitioner()
    p.add_unit(u.async_times("base", 2), name="fetch")
    p.add_unit(u.async_plus("fetch", 1), ["fetch"], name="refine")
    p.add_unit(u.times("refine", 10), ["refine"], name="plain")

    results = mode.execute(p, {"base": 5})

    assert results == {"fetch": 10, "refine": 11, "plain": 110}


def test_a_plain_function_returning_a_coroutine_is_awaited(mode):
    """A plain function's returned coroutine is run: dependents receive its value."""
    p = QuantumPartitioner()
    p.add_unit(u.returns_coroutine("base", 3), name="wrapped")
    p.add_unit(u.times("wrapped", 10), ["wrapped"], name="plain")

    assert mode.execute(p, {"base": 5}) == {"wrapped": 15, "plain": 150}


def test_failing_async_unit_is_failed(mode):
    """An exception raised inside an async def unit fails that unit like a plain one."""
    p = QuantumPartitioner()
    p.add_unit(u.async_key_error, name="broken")

    assert mode.execute(p) == {}
    assert p.units["broken"].state is UnitState.FAILED
    assert isinstance(p.units["broken"].error, KeyError)


# -- several runs and the unit record ----------------------------------------------------------


def test_the_same_partitioner_runs_twice(mode):
    """Running a partitioner again runs every unit again, with the new context."""
    p = QuantumPartitioner()
    p.add_unit(u.times("x", 2), name="double")
    p.add_unit(u.plus("double", 1), ["double"], name="inc")

    first = mode.execute(p, {"x": 1})
    second = mode.execute(p, {"x": 10})

    assert first == {"double": 2, "inc": 3}
    assert second == {"double": 20, "inc": 21}


def test_states_reset_between_runs(mode):
    """A unit that failed in one run and completes in the next shows only the last run."""
    p = QuantumPartitioner()
    p.add_unit(u.fail_if("fail"), name="sometimes")
    p.add_unit(u.pair("after", "sometimes"), ["sometimes"], name="after")

    mode.execute(p, {"fail": True})
    assert p.units["after"].state is UnitState.SKIPPED
    assert p.failed_units == {"sometimes"}

    results = mode.execute(p, {"fail": False})

    assert results == {"sometimes": "fine", "after": ("after", "fine")}
    assert states(p) == {"sometimes": UnitState.COMPLETED, "after": UnitState.COMPLETED}
    assert p.units["sometimes"].error is None
    assert p.units["sometimes"].attempt == 1
    assert p.failed_units == set()
    assert p.completed_units == {"sometimes", "after"}
    assert p.get_failed_units() == {}
    assert p.last_execution_metrics["failed_units"] == 0


def test_a_function_replaced_between_runs_is_called_as_it_is_now(mode):
    """``unit.function = ...`` between runs: the next run calls (and awaits) the new one."""
    p = QuantumPartitioner()
    unit = p.add_unit(u.async_times("base", 2), name="unit")
    assert mode.execute(p, {"base": 5}) == {"unit": 10}

    unit.function = u.times("base", 3)
    assert mode.execute(p, {"base": 5}) == {"unit": 15}
    unit.function = u.async_times("base", 4)
    assert mode.execute(p, {"base": 5}) == {"unit": 20}
    assert unit.state is UnitState.COMPLETED


def test_options_and_dependencies_set_between_runs_are_what_the_next_run_uses(mode):
    """A unit's when=, run_if and dependencies assigned after a run: the next run sees them."""
    p = QuantumPartitioner()
    p.add_unit(u.fail_if("fail"), name="flaky")
    p.add_unit(u.const(2), name="steady")
    joined = p.add_unit(u.times("steady", 10), ["flaky"], name="joined")
    mode.execute(p, {"fail": True})
    assert joined.state is UnitState.SKIPPED

    joined.run_if = at_least(1)
    joined.dependencies = ["flaky", "steady"]
    assert mode.execute(p, {"fail": True})["joined"] == 20  # ctx["steady"]: declared now

    joined.condition = lambda ctx: False
    mode.execute(p, {"fail": False})
    assert joined.state is UnitState.SKIPPED


def test_unit_runtime_fields_describe_the_last_run(mode):
    """units[x] exposes state, result, error, attempt, start/end time and execution time."""
    p = QuantumPartitioner()
    p.add_unit(u.sleep(0.05, "slow"), name="slow")
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const(0), ["boom"], name="skipped")
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
    unit = p.add_unit(u.const(1), name="a")

    assert (unit.state, unit.result, unit.error, unit.attempt) == (UnitState.PENDING, None, None, 0)
    assert unit.start_time is None
    assert unit.end_time is None
    assert unit.get_execution_time() is None
    mode.execute(p)
    assert unit.state is UnitState.COMPLETED


def test_results_hold_only_completed_units_and_fallbacks(mode):
    """Failed (without fallback), skipped and cancelled units are absent from the results."""
    p = QuantumPartitioner()
    p.add_unit(u.const("ok"), name="ok")
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.explode, name="soft", metadata={"fallback_value": 0})
    p.add_unit(u.plus("soft", 0), ["soft"], name="after_soft")
    p.add_unit(u.const(1), ["boom"], name="skipped")

    results = mode.execute(p)

    assert results == {"ok": "ok", "soft": 0, "after_soft": 0}
    assert p.get_partial_results() == results


# -- what a unit raises besides ordinary errors (issue 9 #1, #8, #17) ------------------------
# The rule (docs/guide.md, "Exceptions that are not errors"): KeyboardInterrupt and SystemExit
# raised in the caller's process stop the run like Ctrl-C and are re-raised; raised in a worker
# process they fail the unit; anything else, BaseException subclasses included, fails it.


@pytest.mark.parametrize(
    ("kind", "unit"),
    [
        ("KeyboardInterrupt", u.raise_base_exception),
        ("SystemExit", u.raise_base_exception),
        ("KeyboardInterrupt", u.async_raise_base_exception),
    ],
    ids=["KeyboardInterrupt", "SystemExit", "async-KeyboardInterrupt"],
)
def test_keyboard_interrupt_and_system_exit_from_a_unit(mode, kind, unit, bounded):
    """Issue 9 #8: in the caller's process they stop the run and are re-raised, elsewhere fail."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="first")
    p.add_unit(unit(kind), ["first"], name="raiser")
    p.add_unit(u.const(2), ["raiser"], name="after")
    expected = u.RAISABLE[kind]

    if mode.in_processes:
        assert bounded(lambda: mode.execute(p)) == {"first": 1}
        assert p.units["raiser"].state is UnitState.FAILED
        assert type(p.units["raiser"].error).__name__ == kind
        assert p.units["after"].state is UnitState.SKIPPED
    else:
        with pytest.raises(expected):
            bounded(lambda: mode.execute(p))
        assert p.get_partial_results() == {"first": 1}
        assert p.units["raiser"].state is UnitState.CANCELED
        assert p.units["after"].state is UnitState.CANCELED
    p.add_unit(u.const("calm"), ["first"], name="raiser", replace=True)
    assert mode.execute(p)["after"] == 2  # nothing is left claiming the partitioner


@pytest.mark.parametrize(
    "unit", [u.raise_base_exception, u.async_raise_base_exception], ids=["plain", "async"]
)
def test_other_exceptions_fail_only_their_unit(mode, unit, bounded):
    """Issue 9 #1, #8: StopIteration, GeneratorExit, CancelledError, custom BaseException fail."""
    kinds = ["StopIteration", "GeneratorExit", "CancelledError", "CustomBaseException"]
    if unit is u.async_raise_base_exception:
        kinds.remove("StopIteration")  # a coroutine turns it into RuntimeError (PEP 479)
    p = QuantumPartitioner()
    for kind in kinds:
        p.add_unit(unit(kind), name=kind)
        p.add_unit(u.const(kind), [kind], name=f"after_{kind}")
    p.add_unit(u.const("ok"), name="ok")

    assert bounded(lambda: mode.execute(p)) == {"ok": "ok"}

    for kind in kinds:
        assert p.units[kind].state is UnitState.FAILED, kind
        assert type(p.units[kind].error).__name__ == kind
        assert p.units[f"after_{kind}"].state is UnitState.SKIPPED


def test_callback_raising_system_exit_stops_the_run_and_is_re_raised(mode, bounded):
    """Issue 9 #17: callbacks run in the caller's process, so their SystemExit stops the run."""
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="first")
    p.add_unit(u.const(2), ["first"], name="second")

    def on_complete(unit_id, result):
        if unit_id == "first":
            raise SystemExit(4)

    p.on_unit_complete = on_complete
    with pytest.raises(SystemExit):
        bounded(lambda: mode.execute(p))
    assert p.get_partial_results() == {"first": 1}
    assert p.units["second"].state is UnitState.CANCELED
    p.on_unit_complete = None
    assert mode.execute(p) == {"first": 1, "second": 2}


# -- exceptions that are not errors ----------------------------------------------------------


def test_base_exceptions_raised_in_a_worker_process_fail_only_that_unit(mode):
    """Defect 8: any BaseException a unit raises in another process FAILS that unit, promptly.

    KeyboardInterrupt and SystemExit included: they happened in the worker, not in the
    caller, so they interrupt nothing here; dependents are skipped, other units complete.
    """
    if not mode.in_processes:
        pytest.skip("units run in the caller's process here")
    p = QuantumPartitioner()
    for name in u.BASE_EXCEPTIONS:
        p.add_unit(u.raise_base_exception(name), name=name)
        p.add_unit(u.const(1), [name], name=f"after {name}")
    p.add_unit(u.const("ok"), name="fine")

    start = time.monotonic()
    results = mode.execute(p)

    assert time.monotonic() - start < 30
    assert results == {"fine": "ok"}
    for name, kind in u.BASE_EXCEPTIONS.items():
        unit = p.units[name]
        assert unit.state is UnitState.FAILED, name
        assert type(unit.error) is kind
        assert str(unit.error) == f"{name} raised it"
        assert "_raise_base_exception" in unit.traceback  # the worker's traceback
        assert p.units[f"after {name}"].state is UnitState.SKIPPED


# -- streaming results (stream(): one record per unit, leaving early cancels) ---------------


def stream_of(mode, partitioner, context=None, **options):
    """``partitioner.stream(context, **options)`` in this mode."""
    return partitioner.stream(context, **mode.kwargs, **options)


def test_stream_yields_one_record_per_unit_in_finishing_order(mode):
    """Every unit once, as it reaches its terminal state, with its outcome and times."""
    #   a --> b        boom --> after_boom (skipped)        solo
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(u.const(2), name="a")
    p.add_unit(u.times("a", 10), ["a"], name="b")
    p.add_unit(u.explode, name="boom", retries=1)
    p.add_unit(u.const(1), ["boom"], name="after_boom")
    p.add_unit(u.const("s"), name="solo")
    p.add_unit(u.skip_with("not needed"), name="decides")
    with stream_of(mode, p) as results:
        records = list(results)
    assert sorted(r.name for r in records) == sorted(p.units)
    by_name = {r.name: r for r in records}
    assert [r.name for r in records].index("a") < [r.name for r in records].index("b")
    ends = [r.end_time for r in records]
    assert ends == sorted(ends)  # finishing order
    for r in records:
        assert r.state is p.units[r.name].state
        assert r.ok is (r.state is UnitState.COMPLETED)
    assert (by_name["b"].result, by_name["b"].error, by_name["b"].attempts) == (20, None, 1)
    assert by_name["b"].start_time <= by_name["b"].end_time
    boom = by_name["boom"]
    assert (boom.state, type(boom.error), boom.attempts) == (UnitState.FAILED, ValueError, 2)
    skipped = by_name["after_boom"]
    assert (skipped.state, type(skipped.error)) == (UnitState.SKIPPED, UnitSkippedError)
    assert (skipped.attempts, skipped.start_time) == (0, None)
    decides = by_name["decides"]  # it ran, then skipped itself with ctx.skip()
    assert (decides.state, decides.attempts) == (UnitState.SKIPPED, 1)
    assert decides.start_time is not None
    assert decides.start_time <= decides.end_time
    with pytest.raises(AttributeError):
        boom.state = UnitState.COMPLETED  # records are immutable
    assert p.get_partial_results() == {"a": 2, "b": 20, "solo": "s"}


def test_breaking_out_of_a_stream_cancels_the_rest_and_leaves_nothing_running(mode, tmp_path):
    """break: nothing new starts, stoppable attempts stop, completed results are kept."""
    log = tmp_path / "log"
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const("first"), name="first", priority=10)
    for k in range(6):
        p.add_unit(u.logged_nap(str(log), 1.5), name=f"nap_{k}")
    with stream_of(mode, p) as results:
        for done in results:
            assert done.name == "first"
            break
    # The run is over when the block is left: every unit is terminal, nothing is active.
    assert all(unit.state in TERMINAL for unit in p.units.values())
    assert p._active_run is None
    assert p.get_partial_results()["first"] == "first"
    cancelled = [name for name, unit in p.units.items() if unit.state is UnitState.CANCELED]
    assert cancelled  # six 1.5 s naps on two workers cannot all have finished
    seen = lines(log)
    # Nothing new starts. An attempt already handed to a thread or a user's executor before
    # the break cannot be taken back and may still begin (and end) there; PROCESS kills its
    # worker and ASYNC cancels its task, so those attempts stop where they are: wait longer
    # than a nap for the end they must never write.
    stoppable = mode.kwargs["execution_mode"].value in {"process", "async"}
    time.sleep(1.6 if stoppable else 0.5)
    handed_over = {name for name in cancelled if p.units[name].attempt}
    started_later = {line.split()[1] for line in lines(log)[len(seen) :] if "start" in line}
    if stoppable:
        assert started_later == set()
        ended = {line.split()[1] for line in lines(log) if line.startswith("end")}
        assert ended.isdisjoint(cancelled)
    else:
        assert started_later <= handed_over


def test_a_bare_for_loop_closes_the_stream_when_left(mode):
    """Leaving ``for done in p.stream(...)`` ends the run at once, with no with-block."""
    p = QuantumPartitioner(max_workers=2)
    p.add_unit(u.const(1), name="first", priority=10)
    for k in range(4):
        p.add_unit(u.sleep(0.5, k), name=f"slow_{k}")
    for done in stream_of(mode, p):
        assert done.name == "first"
        break
    assert p._active_run is None
    assert all(unit.state in TERMINAL for unit in p.units.values())
    assert any(unit.state is UnitState.CANCELED for unit in p.units.values())


def test_stream_raises_task_error_after_the_last_record(mode):
    """raise_on_error=True: every record first, then TaskError from the iteration."""
    p = QuantumPartitioner()
    p.add_unit(u.explode, name="boom")
    p.add_unit(u.const(1), name="fine")
    seen = []
    with (
        pytest.raises(TaskError) as caught,
        stream_of(mode, p, raise_on_error=True) as results,
    ):
        seen.extend(done.name for done in results)
    assert sorted(seen) == ["boom", "fine"]
    assert list(caught.value.failed_tasks) == ["boom"]


def test_a_units_keyboard_interrupt_leaves_the_stream_as_it_leaves_execute(mode):
    """A unit's KeyboardInterrupt: re-raised from the iteration where execute() raises it.

    Where the unit runs in the caller's process it interrupts the run (execute() raises
    it), and stream() raises it from the loop, after the records of what finished before;
    where it only fails its unit, the stream yields that failure.
    """
    p = QuantumPartitioner()
    p.add_unit(u.const(1), name="fine", priority=10)
    p.add_unit(u.raise_base_exception("KeyboardInterrupt"), ["fine"], name="interrupts")
    p.add_unit(u.const(2), ["interrupts"], name="after")
    try:
        mode.execute(p)
    except KeyboardInterrupt:
        interrupts = True
    else:
        interrupts = False
    expected = states(p)
    seen = []
    if interrupts:
        with pytest.raises(KeyboardInterrupt), stream_of(mode, p) as results:
            seen.extend(done.name for done in results)
        assert "fine" in seen
    else:
        with stream_of(mode, p) as results:
            seen.extend(done.name for done in results)
        assert sorted(seen) == sorted(p.units)
    assert states(p) == expected
    assert p.get_partial_results() == {"fine": 1}


def test_a_slow_consumer_never_holds_the_workers_back(mode):
    """Records queue up: the run finishes while the loop body is still busy."""
    p = QuantumPartitioner()
    for k in range(5):
        p.add_unit(u.const(k), name=f"u{k}")
    woke = None
    records = []
    with stream_of(mode, p) as results:
        for done in results:
            if woke is None:
                time.sleep(1.0)  # far longer than five no-op units take
                woke = time.time()
            records.append(done)
    assert len(records) == 5
    assert all(r.end_time < woke for r in records)
