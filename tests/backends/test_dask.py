"""DaskBackend: the partitioner's semantics on a real ``distributed.LocalCluster``.

One cluster of two worker processes on loopback serves the module (started and closed by the
``cluster`` fixture). Units that the workers must import by name come from ``_dask_units``
(this directory, put on ``sys.path`` before the workers are spawned); lambdas and closures
written here travel by value, as users' do. Units report what they saw through their return
values, so assertions run here, not on the workers.

Dask logs every failing task (and every worker death) at ERROR level; that is its normal
output, captured by pytest. The clusters bind no fixed port (``NO_FIXED_PORT``), so they
start beside any other cluster on the machine without warnings.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402 - only once distributed is known to be installed

from quantum_partitioner import (  # noqa: E402
    BrokenBackendError,
    CachingQuantumPartitioner,
    DaskBackend,
    ExecutionMode,
    ExponentialBackoff,
    Instrument,
    QuantumPartitioner,
    RetryPolicy,
    SkipCause,
    UnitCancelledError,
    UnitSkippedError,
    UnitState,
    UnitTimeoutError,
    at_least,
)

sys.path.insert(0, str(Path(__file__).parent))
import _dask_units as units  # noqa: E402 - needs the sys.path entry above
from _contract_units import InterruptOnFirstRunStart  # noqa: E402 - the same directory

#: Without a dashboard, a scheduler still serves HTTP, on port 8787 unless told otherwise;
#: another cluster on this machine (the second one below, or anyone's) would collide with it.
NO_FIXED_PORT = {"dashboard_address": "127.0.0.1:0"}

FAST_RETRIES = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))

#: Under pytest-xdist (``make test``), the module's tests share one worker, so its clusters
#: start once.
pytestmark = pytest.mark.xdist_group("dask-clusters")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each, each declaring one "cpu" resource.

    ``allowed-failures`` is 1: a task whose worker dies is rescheduled once, and fails with
    KilledWorker when a second worker dies running it (that keeps the test short).
    """
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            resources={"cpu": 1},
            scheduler_kwargs=NO_FIXED_PORT,
        ) as local_cluster,
    ):
        yield local_cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as module_client:
        yield module_client


@pytest.fixture(params=[True, False], ids=["lookahead", "no-lookahead"])
def backend(request, client):
    """A DaskBackend on the module's cluster, with and without lookahead."""
    return DaskBackend(client, lookahead=request.param)


def run_keys(client, prefix):
    """Keys of the scheduler's tasks whose name starts with ``prefix-``."""
    return client.run_on_scheduler(
        lambda dask_scheduler: [k for k in dask_scheduler.tasks if str(k).startswith(prefix)]
    )


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def states(partitioner):
    return {name: unit.state for name, unit in partitioner.units.items()}


# -- results and the context -------------------------------------------------------------------


def test_results_of_every_unit_are_returned(backend):
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

    results = p.execute({"x": 1}, backend=backend)

    assert results == {"a": 2, "b": 20, "c": 200, "d": 220}
    assert all(state is UnitState.COMPLETED for state in states(p).values())
    assert p.units["d"].result == 220


def test_ctx_holds_context_and_declared_dependencies_only(client):
    """On a worker, ctx has the context, declared results only, and names the mode "dask"."""
    # hidden -> a -> c   (c declares only a)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "secret", name="hidden")
    p.add_unit(lambda ctx: "from-a", ["hidden"], name="a")

    def c(ctx):
        try:
            ctx.get_dependency_result("hidden")
        except KeyError:
            hidden = "KeyError"
        else:
            hidden = "visible"
        return {
            "keys": sorted(ctx),
            "a": (ctx["a"], ctx.get_dependency_result("a")),
            "input": ctx["input"],
            "hidden": hidden,
            "environment": dict(ctx.environment),
            "cancelled": ctx.cancelled,
        }

    p.add_unit(c, ["a"], name="c")

    seen = p.execute({"input": 42}, backend=DaskBackend(client))["c"]

    assert seen == {
        "keys": ["a", "input"],
        "a": ("from-a", "from-a"),
        "input": 42,
        "hidden": "KeyError",
        "environment": {"unit_id": "c", "attempt": 1, "execution_mode": "dask"},
        "cancelled": False,
    }


def test_async_def_units_are_awaited_on_the_workers(client):
    """A coroutine function unit is awaited on its worker; dependents receive its value."""

    async def fetch(ctx):
        return ctx["base"] * 2

    p = QuantumPartitioner()
    p.add_unit(fetch, name="fetch")
    p.add_unit(lambda ctx: ctx["fetch"] + 1, ["fetch"], name="plain")

    def returns_coroutine(ctx):  # a plain function: its coroutine is run like an async unit's
        return fetch(ctx)

    p.add_unit(returns_coroutine, name="returns_coroutine")

    assert p.execute({"base": 5}, backend=DaskBackend(client)) == {
        "fetch": 10,
        "plain": 11,
        "returns_coroutine": 10,
    }


def test_a_unit_changed_between_runs_runs_as_it_is_now(client):
    """Its function (async made plain), run_if and dependencies assigned after a run."""

    async def fetch(ctx):
        return ctx["base"] * 2

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1 / 0, name="broken")
    p.add_unit(lambda ctx: 3, name="steady")
    unit = p.add_unit(fetch, name="fetch")
    joined = p.add_unit(lambda ctx: ctx["steady"], ["broken"], name="joined")
    p.execute({"base": 5}, backend=DaskBackend(client))
    assert joined.state is UnitState.SKIPPED

    unit.function = lambda ctx: ctx["base"] * 3
    joined.run_if, joined.dependencies = at_least(1), ["broken", "steady"]
    results = p.execute({"base": 5}, backend=DaskBackend(client))
    assert (results["fetch"], results["joined"]) == (15, 3)


def test_default_client_is_used_when_none_is_given(client):
    """DaskBackend() without a client runs on the default client."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "ok", name="a")

    assert p.execute(backend=DaskBackend()) == {"a": "ok"}


# -- failures, skips, fallbacks, retries -----------------------------------------------------


def test_failure_keeps_the_workers_exception_and_traceback(backend):
    """A unit raising on a worker is FAILED with its exception; the traceback names it."""
    p = QuantumPartitioner()
    p.add_unit(units.exploding_unit, name="boom")

    assert p.execute(backend=backend) == {}

    unit = p.units["boom"]
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, ValueError)
    assert str(unit.error) == "boom exploded"
    assert "exploding_unit" in unit.traceback
    assert p.get_failed_units() == {"boom": unit.error}


def test_base_exceptions_fail_only_their_unit_promptly(client):
    """Defect 8: KeyboardInterrupt, SystemExit or any BaseException raised on a worker FAILS
    that unit with it, at once (no KilledWorker, no worker lost); other units complete."""
    p = QuantumPartitioner()
    for name in units.BASE_EXCEPTIONS:
        p.add_unit(units.raise_base_exception, name=name)
        p.add_unit(lambda ctx: 1, [name], name=f"after {name}")
    p.add_unit(lambda ctx: "ok", name="fine")
    workers = set(client.scheduler_info()["workers"])

    start = time.monotonic()
    results = p.execute(backend=DaskBackend(client))

    assert time.monotonic() - start < 5  # KilledWorker took 8 s per unit
    assert results == {"fine": "ok"}
    for name, kind in units.BASE_EXCEPTIONS.items():
        unit = p.units[name]
        assert unit.state is UnitState.FAILED, name
        assert type(unit.error) is kind
        assert str(unit.error) == f"{name} raised it"
        assert "raise_base_exception" in unit.traceback
        assert p.units[f"after {name}"].state is UnitState.SKIPPED
    assert set(client.scheduler_info()["workers"]) == workers


def test_a_result_that_cannot_be_serialized_fails_naming_the_unit_and_its_type(backend):
    """Defect 12: a result Dask could never send is FAILED on the worker, naming the unit and
    the value's type, as in PROCESS mode; its dependents are skipped."""
    p = QuantumPartitioner()
    p.add_unit(units.returns_a_lock, name="locked")
    p.add_unit(lambda ctx: "never", ["locked"], name="after")
    p.add_unit(lambda ctx: "fine", name="fine")

    results = p.execute(backend=backend)

    assert results == {"fine": "fine"}
    unit = p.units["locked"]
    assert unit.state is UnitState.FAILED
    assert isinstance(unit.error, TypeError)
    assert "unit 'locked': its result lock cannot be sent" in str(unit.error)
    assert p.units["after"].state is UnitState.SKIPPED


def test_dependents_of_a_failure_are_skipped_and_other_branches_complete(backend):
    """Transitive dependents of a failed unit are SKIPPED; an independent chain completes."""
    # boom -> b -> c        ok1 -> ok2
    p = QuantumPartitioner()
    p.add_unit(units.exploding_unit, name="boom")
    p.add_unit(lambda ctx: 1, ["boom"], name="b")
    p.add_unit(lambda ctx: 2, ["b"], name="c")
    p.add_unit(lambda ctx: 1, name="ok1")
    p.add_unit(lambda ctx: ctx["ok1"] + 1, ["ok1"], name="ok2")

    results = p.execute(backend=backend)

    assert results == {"ok1": 1, "ok2": 2}
    assert states(p) == {
        "boom": UnitState.FAILED,
        "b": UnitState.SKIPPED,
        "c": UnitState.SKIPPED,
        "ok1": UnitState.COMPLETED,
        "ok2": UnitState.COMPLETED,
    }
    assert isinstance(p.units["c"].error, UnitSkippedError)
    assert p.units["b"].error.failed_dependency == "boom"
    assert p.units["c"].attempt == 0


def test_fallback_value_reaches_dependents_as_a_plain_argument(backend):
    """A failed unit's fallback value is what its dependents receive, and is in the results."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 3, name="up")
    p.add_unit(units.exploding_unit, ["up"], name="fetch", metadata={"fallback_value": [1, 2]})
    p.add_unit(lambda ctx: ("used", ctx["fetch"]), ["fetch"], name="use")

    results = p.execute(backend=backend)

    assert results == {"up": 3, "fetch": [1, 2], "use": ("used", [1, 2])}
    assert p.units["fetch"].state is UnitState.FAILED
    assert p.units["use"].state is UnitState.COMPLETED


def test_retries_are_the_partitioners_and_dependents_see_the_retried_result(backend):
    """retries=2 gives 3 attempts (Dask retries none); the dependent gets attempt 3's value."""
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(units.flaky, name="flaky", retries=2)
    p.add_unit(lambda ctx: ctx["flaky"].upper(), ["flaky"], name="after")

    results = p.execute(backend=backend)

    assert results == {"flaky": "ok on 3", "after": "OK ON 3"}
    assert p.units["flaky"].attempt == 3
    assert p.units["after"].attempt == 1


def test_a_sink_handed_over_early_is_handed_over_again_after_a_retry(backend):
    """A sink of three inputs, one of which fails once, runs on the retried input."""
    # ok1 ----\
    # flaky --- sink      (flaky: fails on attempt 1)
    # ok2 ----/
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(lambda ctx: 1, name="ok1")
    p.add_unit(units.fails_once, name="flaky", retries=1)
    p.add_unit(lambda ctx: 2, name="ok2")
    p.add_unit(
        lambda ctx: (ctx["ok1"], ctx["flaky"], ctx["ok2"]), ["ok1", "flaky", "ok2"], name="sink"
    )

    results = p.execute(backend=backend)

    assert results["sink"] == (1, results["flaky"], 2)
    assert p.units["flaky"].attempt == 2
    assert p.units["sink"].attempt == 1


def test_retries_exhausted_fail_with_the_last_error(client):
    """A unit failing every attempt is FAILED after retries + 1 attempts with the last error."""
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(units.flaky, name="flaky", retries=1)
    p.add_unit(lambda ctx: 0, ["flaky"], name="after")

    p.execute(backend=DaskBackend(client))

    assert p.units["flaky"].state is UnitState.FAILED
    assert p.units["flaky"].attempt == 2
    assert str(p.units["flaky"].error) == "attempt 2"
    assert p.units["after"].state is UnitState.SKIPPED


def test_retry_waits_for_the_partitioners_backoff(client):
    """The second attempt starts only after the policy's backoff (0.3 s), measured here."""
    failed_at = []
    p = QuantumPartitioner(retry_policy=RetryPolicy(backoff=ExponentialBackoff(0.3, jitter=0)))
    p.add_unit(units.fails_once, name="unit", retries=1)
    p.on_unit_retry = lambda unit_id, attempt, error: failed_at.append(time.time())

    second_started = p.execute(backend=DaskBackend(client))["unit"]

    [first_failed] = failed_at
    assert second_started - first_failed >= 0.25


def test_timeout_marks_the_unit_and_cancels_its_task(client):
    """A unit over its timeout is TIMEOUT at its deadline; the run does not wait for it."""
    p = QuantumPartitioner()
    p.add_unit(units.sleep_then, name="slow", timeout=0.2)
    p.add_unit(lambda ctx: "never", ["slow"], name="after")
    p.add_unit(lambda ctx: "ok", name="other")

    started = time.monotonic()
    results = p.execute({"seconds": 1.0}, backend=DaskBackend(client))
    elapsed = time.monotonic() - started

    assert results == {"other": "ok"}
    assert p.units["slow"].state is UnitState.TIMEOUT
    assert isinstance(p.units["slow"].error, UnitTimeoutError)
    assert p.units["after"].state is UnitState.SKIPPED
    assert elapsed < 0.9
    # The task is cancelled: the scheduler forgets it (its thread finishes on its own).
    assert wait_for(lambda: not run_keys(client, "slow-"))
    time.sleep(0.9)  # let the worker thread finish sleeping before the next test


def test_dependents_of_a_timed_out_attempt_run_on_its_retry(backend):
    """Attempt 1 times out and attempt 2 completes: the dependent gets attempt 2's result."""
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(
        # Attempt 2 may be placed on the worker whose thread attempt 1 still holds (Dask
        # cannot stop it), and its timeout counts that wait: attempt 1 overruns its timeout
        # by little, so attempt 2 has most of its own second for a loaded machine.
        lambda ctx: time.sleep(1.1) if ctx.attempt == 1 else f"attempt {ctx.attempt}",
        name="slow_once",
        timeout=1.0,
        retries=1,
    )
    p.add_unit(lambda ctx: ctx["slow_once"].upper(), ["slow_once"], name="after")

    results = p.execute(backend=backend)

    assert results == {"slow_once": "attempt 2", "after": "ATTEMPT 2"}
    assert p.units["slow_once"].attempt == 2
    time.sleep(0.3)  # let the abandoned attempt's thread finish


def _random_partitioner(seed):
    """30 units, each with up to 3 earlier dependencies; some fail some attempts."""
    rng = random.Random(seed)
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    for k in range(30):
        deps = sorted(rng.sample(range(k), min(k, rng.randint(0, 3))))
        names = [f"u{d}" for d in deps]
        fails = rng.choice([0, 0, 0, 1, 2, 9])  # attempts that fail (9: every one)
        retries = rng.choice([0, 1, 2])
        metadata = {"fallback_value": -k} if rng.random() < 0.3 else None

        def unit(ctx, k=k, names=names, fails=fails):
            if ctx.attempt <= fails:
                raise ValueError(f"u{k} attempt {ctx.attempt}")
            return k + sum(ctx[name] for name in names)

        p.add_unit(unit, names, name=f"u{k}", retries=retries, metadata=metadata)
    return p


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_graphs_end_as_in_sequential_mode(backend, seed):
    """Random graphs with failures, retries and fallbacks: same states and results."""
    reference = _random_partitioner(seed)
    expected = reference.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    p = _random_partitioner(seed)

    results = p.execute(backend=backend)

    assert results == expected
    assert states(p) == states(reference)
    assert {n: u.attempt for n, u in p.units.items()} == {
        n: u.attempt for n, u in reference.units.items()
    }


# -- order, metrics, callbacks ----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread_client():
    """A client of a cluster with one worker thread, where the order of starts is exact."""
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            scheduler_kwargs=NO_FIXED_PORT,
        ) as one_thread,
        distributed.Client(one_thread) as one_thread_client,
    ):
        yield one_thread_client


@pytest.mark.parametrize("lookahead", [True, False], ids=["lookahead", "no-lookahead"])
def test_ready_units_start_in_priority_order(one_thread_client, lookahead):
    """Units released together start by priority, then by longer remaining path (one thread)."""
    #            gate
    #   /  /  /  |  \  \   \
    # p1 p2 p3 p4 p5 p6 long0 -> long1      (p<k>: priority k; long0 has the longest path)
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: time.sleep(0.1), name="gate")
    for priority in range(1, 7):
        p.add_unit(units.started_at, ["gate"], name=f"p{priority}", priority=priority)
    p.add_unit(units.started_at, ["gate"], name="long0")
    p.add_unit(units.started_at, ["gate"], name="short")
    p.add_unit(lambda ctx: 0, ["long0"], name="long1")

    results = p.execute(backend=DaskBackend(one_thread_client, lookahead=lookahead))

    started = sorted(["long0", "short"] + [f"p{k}" for k in range(1, 7)], key=results.__getitem__)
    assert started == ["p6", "p5", "p4", "p3", "p2", "p1", "long0", "short"]


def test_record_metric_and_worker_come_back_per_unit(client, cluster):
    """ctx.record_metric on a worker shows in unit_metrics; unit_times names the worker."""
    p = QuantumPartitioner()
    p.add_unit(units.counting, name="counting")
    p.add_unit(lambda ctx: 1, name="silent")

    p.execute(backend=DaskBackend(client))

    metrics = p.last_execution_metrics
    assert metrics["unit_metrics"] == {"counting": {"rows": 42, "source": "db"}}
    assert metrics["execution_mode"] == "dask"
    workers = set(client.scheduler_info()["workers"])
    for name in ("counting", "silent"):
        times = metrics["unit_times"][name]
        assert times["worker"] in workers
        assert times["start"] <= times["end"]


def test_callbacks_run_here_with_values(backend):
    """on_unit_start/complete/error/retry/skip run in this process; complete gets values."""
    # boom -> skipped      flaky (fails once) -> after
    calls = []
    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_unit(units.exploding_unit, name="boom")
    p.add_unit(lambda ctx: "never", ["boom"], name="skipped")
    p.add_unit(units.fails_once, name="flaky", retries=1)
    p.add_unit(lambda ctx: "after ok", ["flaky"], name="after")
    p.on_unit_start = lambda unit_id: calls.append(("start", unit_id, os.getpid()))
    p.on_unit_complete = lambda unit_id, result: calls.append(("complete", unit_id, result))
    p.on_unit_error = lambda unit_id, error: calls.append(("error", unit_id, str(error)))
    p.on_unit_retry = lambda unit_id, attempt, error: calls.append(("retry", unit_id, attempt))
    p.on_unit_skip = lambda unit_id, reason: calls.append(("skip", unit_id, type(reason)))

    results = p.execute(backend=backend)

    starts = sorted(call[1] for call in calls if call[0] == "start")
    assert starts == ["after", "boom", "flaky", "flaky"]
    assert {call[2] for call in calls if call[0] == "start"} == {os.getpid()}
    completes = {call[1]: call[2] for call in calls if call[0] == "complete"}
    assert completes == {"flaky": results["flaky"], "after": "after ok"}
    assert ("error", "boom", "boom exploded") in calls
    assert ("retry", "flaky", 1) in calls
    assert ("skip", "skipped", UnitSkippedError) in calls


def test_complete_callback_of_a_unit_left_on_the_cluster_gets_its_future(client):
    """With gather=[...], other units' on_unit_complete receives their Dask future."""
    seen = {}
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 21, name="a")
    p.add_unit(lambda ctx: ctx["a"] * 2, ["a"], name="b")
    p.on_unit_complete = lambda unit_id, result: seen.update({unit_id: result})

    results = p.execute(backend=DaskBackend(client, gather=["b"]))

    assert results == {"b": 42}
    assert seen["b"] == 42
    assert isinstance(seen["a"], distributed.Future)


# -- fail_fast, cancel(), Ctrl-C --------------------------------------------------------------


def test_fail_fast_cancels_units_handed_over_ahead_before_they_run(backend, tmp_path):
    """fail_fast: units that had not started are CANCELED and never run on the cluster."""
    # boom (fails at once)     gate (0.5 s) -> y (would leave a marker file)
    marker = tmp_path / "y-ran"
    p = QuantumPartitioner()
    p.add_unit(units.exploding_unit, name="boom", priority=10)
    p.add_unit(units.sleep_then, name="gate")
    p.add_unit(units.touch, ["gate"], name="y")

    p.execute({"seconds": 0.5, "marker": str(marker)}, backend=backend, fail_fast=True)

    assert p.units["boom"].state is UnitState.FAILED
    assert p.units["y"].state is UnitState.CANCELED
    assert "fail_fast" in str(p.units["y"].error)
    assert p.units["gate"].state in {UnitState.COMPLETED, UnitState.CANCELED}
    time.sleep(0.7)  # gate has surely finished on its worker: y would have run by now
    assert not marker.exists()


def _cancel_when_running(partitioner, name, action):
    def watch():
        if wait_for(lambda: partitioner.units[name].state is UnitState.RUNNING):
            time.sleep(0.1)
            action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_cancel_from_another_thread_leaves_nothing_on_the_cluster(client):
    """cancel() mid-run: execute() returns completed results and the run's tasks are gone."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "done", name="quick")
    p.add_unit(units.sleep_then, ["quick"], name="cslow")
    p.add_unit(lambda ctx: 1, ["cslow"], name="cafter")
    watcher = _cancel_when_running(p, "cslow", p.cancel)

    started = time.monotonic()
    results = p.execute({"seconds": 1.0}, backend=DaskBackend(client))
    elapsed = time.monotonic() - started
    watcher.join()

    assert results == {"quick": "done"}
    assert p.units["cslow"].state is UnitState.CANCELED
    assert p.units["cafter"].state is UnitState.CANCELED
    assert isinstance(p.units["cafter"].error, UnitCancelledError)
    assert elapsed < 0.9
    assert wait_for(lambda: not run_keys(client, "cslow-") and not run_keys(client, "cafter-"))
    time.sleep(0.8)  # let the cancelled task's thread finish


def test_ctrl_c_cancels_the_run_on_the_cluster_and_keeps_results(client):
    """SIGINT mid-run: KeyboardInterrupt, unfinished units CANCELED, no task left queued."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "done", name="quick")
    p.add_unit(units.sleep_then, ["quick"], name="islow")
    p.add_unit(lambda ctx: 1, ["islow"], name="iafter")
    main = threading.main_thread().ident
    watcher = _cancel_when_running(p, "islow", lambda: signal.pthread_kill(main, signal.SIGINT))

    with pytest.raises(KeyboardInterrupt):
        p.execute({"seconds": 1.0}, backend=DaskBackend(client))
    watcher.join()

    assert states(p) == {
        "quick": UnitState.COMPLETED,
        "islow": UnitState.CANCELED,
        "iafter": UnitState.CANCELED,
    }
    assert p.get_partial_results() == {"quick": "done"}
    assert wait_for(lambda: not run_keys(client, "islow-") and not run_keys(client, "iafter-"))
    time.sleep(0.8)


# -- stream() --------------------------------------------------------------------------------


def test_stream_yields_records_with_results_gathered_or_futures(client):
    """On Dask a record carries the result when gathered, the unit's future otherwise."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 21, name="streamed_a")
    p.add_unit(lambda ctx: ctx["streamed_a"] * 2, ["streamed_a"], name="streamed_b")
    p.add_unit(units.exploding_unit, name="streamed_boom")
    with p.stream(backend=DaskBackend(client, gather=["streamed_b"])) as results:
        records = {done.name: done for done in results}
    assert set(records) == set(p.units)
    assert records["streamed_b"].result == 42
    assert isinstance(records["streamed_a"].result, distributed.Future)
    assert records["streamed_boom"].state is UnitState.FAILED
    assert not records["streamed_boom"].ok


def test_breaking_out_of_a_stream_leaves_nothing_on_the_cluster(backend, client, tmp_path):
    """break: the units not finished are CANCELED, their tasks leave the cluster, none runs."""
    marker = tmp_path / "after-ran"
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "done", name="squick", priority=10)
    p.add_unit(units.sleep_then, name="sslow")
    p.add_unit(units.touch, ["sslow"], name="safter")
    with p.stream({"seconds": 1.0, "marker": str(marker)}, backend=backend) as results:
        for done in results:
            assert done.name == "squick"
            break
    assert p._active_run is None
    assert states(p) == {
        "squick": UnitState.COMPLETED,
        "sslow": UnitState.CANCELED,
        "safter": UnitState.CANCELED,
    }
    assert p.get_partial_results() == {"squick": "done"}
    assert wait_for(lambda: not run_keys(client, "sslow-") and not run_keys(client, "safter-"))
    time.sleep(1.2)  # sslow's thread has finished on its worker: safter would have run
    assert not marker.exists()


# -- results stay on the workers ----------------------------------------------------------------


def test_intermediate_results_move_worker_to_worker_never_to_the_caller(client):
    """gather=["measure"]: the 4 MB result feeds its dependent on the cluster, never here."""
    units.UNPICKLED = 0
    p = QuantumPartitioner()
    p.add_unit(units.make_big, name="big")
    p.add_unit(units.measure_big, ["big"], name="measure")

    results = p.execute(backend=DaskBackend(client, gather=["measure"]))

    assert results == {"measure": 4_000_000}
    assert units.UNPICKLED == 0  # the big value was never unpickled in this process
    assert p.units["big"].state is UnitState.COMPLETED
    assert p.units["big"].result is None
    assert p.get_partial_results() == {"measure": 4_000_000}
    # Its metrics still come back, read where the result is.
    assert p.last_execution_metrics["unit_metrics"] == {"big": {"bytes": 4_000_000}}


def test_gathering_everything_does_bring_the_big_result_here(client):
    """The counter of the previous test works: gather="all" unpickles the value here."""
    units.UNPICKLED = 0
    p = QuantumPartitioner()
    p.add_unit(units.make_big, name="big")

    results = p.execute(backend=DaskBackend(client))

    assert len(results["big"].payload) == 4_000_000
    assert units.UNPICKLED == 1


def test_gather_none_returns_no_results(client):
    """gather=None: every unit runs; no result comes back, fallbacks included."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")
    p.add_unit(units.exploding_unit, name="soft", metadata={"fallback_value": 0})

    assert p.execute(backend=DaskBackend(client, gather=None)) == {}
    assert p.units["a"].state is UnitState.COMPLETED


def test_gather_of_an_unknown_unit_is_refused_before_anything_runs(client, tmp_path):
    """gather names a unit the graph lacks: ValueError naming it, and no unit ran."""
    p = QuantumPartitioner()
    p.add_unit(units.touch, name="a")

    with pytest.raises(ValueError, match="nope"):
        p.execute({"marker": str(tmp_path / "a")}, backend=DaskBackend(client, gather=["nope"]))

    assert not (tmp_path / "a").exists()


def test_nothing_of_a_finished_run_stays_on_the_cluster(client):
    """After a run, its results and its scattered context are released from the cluster."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"], name="released_a")
    p.add_unit(lambda ctx: ctx["released_a"], ["released_a"], name="released_b")

    assert p.execute({"x": 1}, backend=DaskBackend(client)) == {"released_a": 1, "released_b": 1}

    assert wait_for(lambda: not run_keys(client, "released_"))
    gc.collect()  # futures that earlier tests left in reference cycles
    assert wait_for(lambda: not run_keys(client, "")), run_keys(client, "")


# -- resources, bad input ---------------------------------------------------------------------


def test_resource_type_becomes_a_dask_resource_only_if_workers_declare_it(client):
    """resource_type "cpu" (declared by the workers) asks for {"cpu": 1}; "io" asks nothing."""
    p = QuantumPartitioner()
    p.add_unit(units.where_am_i, name="cpu_unit", metadata={"resource_type": "cpu"})
    p.add_unit(units.where_am_i, name="io_unit", metadata={"resource_type": "io"})

    results = p.execute(backend=DaskBackend(client))

    assert results["cpu_unit"]["resources"] == {"cpu": 1}
    assert results["io_unit"]["resources"] == {}


def test_context_that_cannot_be_sent_is_refused_naming_the_key(client):
    """A context value that cannot be pickled: TypeError naming the key; the run is refused
    before it begins, like bad input: no unit ran or was cancelled."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="a")

    with pytest.raises(TypeError, match="'lock'"):
        p.execute({"lock": threading.Lock(), "fine": 1}, backend=DaskBackend(client))

    assert p.units["a"].state is UnitState.PENDING


def test_unit_that_cannot_be_sent_fails_naming_it_and_the_run_goes_on(client):
    """A unit whose function cannot be pickled is FAILED naming it; other units run."""
    lock = threading.Lock()
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: lock.locked(), name="locked")
    p.add_unit(lambda ctx: ctx["locked"], ["locked"], name="after")
    p.add_unit(lambda ctx: "fine", name="fine")

    results = p.execute(backend=DaskBackend(client))

    assert results == {"fine": "fine"}
    error = p.units["locked"].error
    assert isinstance(error, TypeError)
    assert "unit 'locked' cannot be sent to the Dask cluster" in str(error)
    assert "lock" in str(error)
    assert p.units["after"].state is UnitState.SKIPPED


def test_a_run_served_from_the_cache_runs_and_writes_nothing(backend, tmp_path):
    """Cache hits on Dask complete without a task and are never written back (defect 11's
    sibling): the second run hits every unit, the store's entries stay as they were."""
    with CachingQuantumPartitioner(cache_path=tmp_path / "results.sqlite") as p:
        p.add_unit(lambda ctx: ctx["n"] * 2, name="a", metadata={"cacheable": True})
        p.add_unit(lambda ctx: ctx["a"] + 1, ["a"], name="b", metadata={"cacheable": True})
        assert p.execute({"n": 3}, backend=backend) == {"a": 6, "b": 7}
        created = {entry.unit: entry.created for entry in p.cache.entries()}
        assert p.execute({"n": 3}, backend=backend) == {"a": 6, "b": 7}
        stats = p.cache_stats()
        assert (stats.hits, stats.misses, stats.writes) == (2, 2, 2)
        assert {entry.unit: entry.created for entry in p.cache.entries()} == created


def test_map_items_are_cached_one_by_one(client, tmp_path):
    """On Dask too: one element appended recomputes its item and item-wise child only."""
    cacheable = {"cacheable": True, "cache_keys": []}
    with CachingQuantumPartitioner(cache_path=tmp_path / "results.sqlite") as p:
        p.add_unit(lambda ctx: ctx["docs"], name="plan", metadata={"cacheable": True})
        p.add_map(lambda ctx: ctx.item * 10, over="plan", name="tool", metadata=cacheable)
        p.add_map(lambda ctx: ctx.item + 1, over="tool", name="summary", metadata=cacheable)
        backend = DaskBackend(client)
        assert p.execute({"docs": [1, 2]}, backend=backend)["summary"] == [11, 21]
        assert p.execute({"docs": [1, 2, 3]}, backend=backend)["summary"] == [11, 21, 31]
        assert (p.cache_hits, p.cache_misses) == (4, 5 + 3)  # plan, tool[2], summary[2]


def closure_returning(value):
    """A closure of one code object per call (``make_unit(k)``)."""

    def unit(ctx):
        return value

    return unit


def test_closures_keyed_in_the_caller_serve_a_build_in_the_other_order(client, tmp_path):
    """Closures after the first of a build keep their values until the run needs their keys.

    A Dask run computes the keys in the caller: a build in the other order (where another
    closure is the one taken the long way) finds every result; True and 1 are two keys.
    """
    values = [1, True, -0.0, "a", b"a", 10**5000]
    path = tmp_path / "results.sqlite"
    with CachingQuantumPartitioner(cache_path=path) as p:
        for k, value in enumerate(values):
            p.add_unit(closure_returning(value), name=f"u{k}", metadata={"cacheable": True})
        assert p.execute(backend=DaskBackend(client))["u1"] is True
        assert (p.cache_hits, p.cache_misses) == (0, len(values))
    with CachingQuantumPartitioner(cache_path=path) as q:
        for k, value in reversed(list(enumerate(values))):
            q.add_unit(closure_returning(value), name=f"u{k}", metadata={"cacheable": True})
        expected = {f"u{k}": value for k, value in enumerate(values)}
        assert q.execute(execution_mode=ExecutionMode.SEQUENTIAL) == expected
        assert (q.cache_hits, q.cache_misses) == (len(values), 0)


class _Heard(Instrument):
    """Keeps the name of each run event it hears."""

    def __init__(self):
        self.heard = []

    def _keep(self, event):
        self.heard.append(type(event).__name__)

    run_started = unit_cancelled = run_finished = _keep


def test_a_closed_client_is_refused_before_anything_runs(client, cluster, tmp_path):
    """A run on a closed client raises BrokenBackendError; so does one whose context cannot
    be sent a TypeError: no unit ran, nothing was cancelled, no hook heard of the run (they
    heard run_started and run_finished), and the last run's record stays."""
    closed = distributed.Client(cluster, set_as_default=False)
    closed.close()
    heard = _Heard()
    p = QuantumPartitioner(instruments=[heard])
    p.add_unit(units.touch, name="a")
    assert p.execute({"marker": str(tmp_path / "first")}, ExecutionMode.SEQUENTIAL)
    heard.heard.clear()

    with pytest.raises(BrokenBackendError, match="closed"):
        p.execute({"marker": str(tmp_path / "a")}, backend=DaskBackend(closed))
    with pytest.raises(TypeError, match="context key 'lock'"):
        p.execute({"lock": threading.Lock()}, backend=DaskBackend(client))

    # Refused before it started: nothing ran and nothing was cancelled.
    assert heard.heard == []
    assert p.units["a"].state is UnitState.COMPLETED  # the last run's
    assert p.last_execution_metrics["execution_mode"] == "sequential"
    assert not (tmp_path / "a").exists()


def test_bad_arguments_are_refused():
    """gather must be "all", None or names; client must be a distributed.Client."""
    with pytest.raises(ValueError, match="gather"):
        DaskBackend(gather="some")
    with pytest.raises(TypeError, match="gather"):
        DaskBackend(gather=[1, 2])
    with pytest.raises(TypeError, match="Client"):
        DaskBackend(object())


def test_missing_distributed_says_which_extra_to_install(monkeypatch):
    """Without distributed, DaskBackend() raises ImportError naming the [dask] extra."""
    monkeypatch.setitem(sys.modules, "distributed", None)

    with pytest.raises(ImportError, match=r"pip install 'quantum-partitioner\[dask\]'"):
        DaskBackend()


def test_importing_the_package_does_not_import_dask():
    """import quantum_partitioner (and naming DaskBackend) imports neither dask nor distributed."""
    code = (
        "import sys, quantum_partitioner as qp\n"
        "dask = {'dask', 'distributed'}\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.split('.')[0] in dask)\n"
        "assert loaded() == [], loaded()\n"
        "from quantum_partitioner import DaskBackend\n"
        "from quantum_partitioner.backends import DaskBackend as same\n"
        "assert DaskBackend is same and DaskBackend.__module__ == 'quantum_partitioner'\n"
        "assert loaded() == [], loaded()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- workers and clusters that die ------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_its_unit_rescheduled_by_dask(client, tmp_path):
    """A unit whose worker dies mid-run is rescheduled by Dask and completes; nothing hangs."""
    # Both workers up first: the run's context is scattered to every worker there is, and
    # with one (another test's restarted worker still joining) it would die with it.
    client.wait_for_workers(2, timeout=30)
    p = QuantumPartitioner()
    p.add_unit(units.dies_once, name="fragile")
    p.add_unit(lambda ctx: ctx["fragile"] + "!", ["fragile"], name="after")
    p.add_unit(lambda ctx: "fine", name="other")

    results = p.execute({"marker": str(tmp_path / "died")}, backend=DaskBackend(client))

    assert results == {"fragile": "survived", "after": "survived!", "other": "fine"}
    assert p.units["fragile"].attempt == 1  # Dask's rescheduling is not a partitioner retry
    assert (tmp_path / "died").exists()
    client.wait_for_workers(2, timeout=30)


def test_a_unit_that_kills_every_worker_fails_with_the_reason(client):
    """A unit that kills each worker running it is FAILED with Dask's KilledWorker reason."""
    client.wait_for_workers(2, timeout=30)  # see the test above
    p = QuantumPartitioner()
    p.add_unit(units.always_dies, name="killer")
    p.add_unit(lambda ctx: 0, ["killer"], name="after")
    p.add_unit(lambda ctx: "fine", name="other")

    results = p.execute(backend=DaskBackend(client))

    assert results == {"other": "fine"}
    assert p.units["killer"].state is UnitState.FAILED
    assert type(p.units["killer"].error).__name__ == "KilledWorker"
    assert "killer" in str(p.units["killer"].error)
    assert p.units["after"].state is UnitState.SKIPPED
    client.wait_for_workers(2, timeout=30)


def test_cluster_going_away_mid_run_fails_what_is_unfinished_and_keeps_results():
    """The scheduler dies mid-run: in-flight units FAILED saying so, gathered results kept."""
    # A cluster of its own, whose scheduler is shut down under the client's feet. Short
    # connect timeouts let the orphaned worker and the client give up quickly afterwards.
    completed = threading.Event()
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
            scheduler_kwargs=NO_FIXED_PORT,
        ) as doomed,
        distributed.Client(doomed) as doomed_client,
    ):
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: "kept", name="quick")
        p.add_unit(lambda ctx: time.sleep(2), ["quick"], name="slow")
        p.add_unit(lambda ctx: 1, ["slow"], name="after")
        # A complete callback makes results come back as units complete (see docs/dask.md).
        p.on_unit_complete = lambda unit_id, result: completed.set()

        def kill_scheduler_when_running():
            wait_for(lambda: p.units["slow"].state is UnitState.RUNNING and completed.is_set())
            doomed.sync(doomed.scheduler.close)

        with ThreadPoolExecutor(1) as pool:
            killing = pool.submit(kill_scheduler_when_running)
            started = time.monotonic()
            results = p.execute(backend=DaskBackend(doomed_client))
            elapsed = time.monotonic() - started
            killing.result()

        assert results == {"quick": "kept"}
        assert p.units["slow"].state is UnitState.FAILED
        error = p.units["slow"].error
        assert isinstance(error, BrokenBackendError)
        assert "Dask cluster went away" in str(error)
        assert p.units["after"].state is UnitState.SKIPPED
        assert elapsed < 1.5


# -- the simple path: CUSTOM mode with the client's executor ------------------------------------


def test_custom_mode_with_the_clients_executor_keeps_working(client):
    """ExecutionMode.CUSTOM with client.get_executor() runs the graph, metrics included."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: ctx["x"] + 1, name="a")
    p.add_unit(units.counting, ["a"], name="counting")
    p.add_unit(lambda ctx: ctx["a"] + ctx["counting"], ["a", "counting"], name="total")

    results = p.execute({"x": 1}, ExecutionMode.CUSTOM, custom_executor=client.get_executor())

    assert results == {"a": 2, "counting": 42, "total": 44}
    assert p.last_execution_metrics["unit_metrics"] == {"counting": {"rows": 42, "source": "db"}}


def test_custom_mode_with_the_clients_executor_fails_base_exceptions_promptly(client):
    """Defect 8 in CUSTOM mode on a Dask executor: a BaseException raised on a worker FAILS
    its unit at once, with that exception (it gave KilledWorker after 21 s)."""
    p = QuantumPartitioner()
    for name in units.BASE_EXCEPTIONS:
        p.add_unit(units.raise_base_exception, name=name)
    p.add_unit(lambda ctx: "ok", name="fine")

    start = time.monotonic()
    results = p.execute({}, ExecutionMode.CUSTOM, custom_executor=client.get_executor())

    assert time.monotonic() - start < 5
    assert results == {"fine": "ok"}
    for name, kind in units.BASE_EXCEPTIONS.items():
        assert type(p.units[name].error) is kind, name


# -- the document pipeline, unchanged, on the cluster -----------------------------------------

extract_text = units.extract_text
chunk_text = units.chunk_text
generate_embeddings = units.generate_embeddings
index_embeddings = units.index_embeddings


def create_document_pipeline(documents, embedding_model):
    """Create parallel document processing pipeline."""
    # Copied from the original "Document Processing Pipeline" example, lambdas unchanged.
    partitioner = QuantumPartitioner(max_workers=4)

    # Add extraction units for each document
    for i, doc in enumerate(documents):
        partitioner.add_unit(
            fn=lambda ctx, d=doc: extract_text(d),
            dependencies=[],  # No dependencies
            name=f"extract_{i}",
            metadata={"document_id": doc.id, "resource_type": "cpu"},
        )

        # Add chunking units depending on extraction
        partitioner.add_unit(
            fn=lambda ctx, i=i: chunk_text(ctx[f"extract_{i}"]),
            dependencies=[f"extract_{i}"],
            name=f"chunk_{i}",
            metadata={"document_id": doc.id, "resource_type": "cpu"},
        )

        # Add embedding units depending on chunking
        partitioner.add_unit(
            fn=lambda ctx, i=i, model=embedding_model: generate_embeddings(
                ctx[f"chunk_{i}"], model
            ),
            dependencies=[f"chunk_{i}"],
            name=f"embed_{i}",
            metadata={"document_id": doc.id, "resource_type": "io"},
        )

    # Add final indexing unit depending on all embedding units
    embedding_units = [f"embed_{i}" for i in range(len(documents))]
    partitioner.add_unit(
        fn=lambda ctx: index_embeddings(ctx),  # noqa: PLW0108 - the original API's code, unchanged
        dependencies=embedding_units,
        name="index_embeddings",
    )

    return partitioner


def test_original_document_pipeline_runs_unchanged_on_the_cluster(client):
    """The original API's document pipeline runs on the cluster and indexes every document."""
    documents = [
        units.Document("d1", "The quick brown fox jumps over the lazy dog"),
        units.Document("d2", "A journey of a thousand miles begins with a single step"),
        units.Document("d3", "To be or not to be"),
    ]
    model = units.EmbeddingModel()
    partitioner = create_document_pipeline(documents, model)

    results = partitioner.execute(backend=DaskBackend(client, gather=["index_embeddings"]))

    index = results["index_embeddings"]
    assert list(results) == ["index_embeddings"]
    assert index["documents"] == 3
    assert index["chunks"] == sum(len(chunk_text(extract_text(doc))) for doc in documents)
    expected = [0] * 5
    for doc in documents:
        for chunk in chunk_text(extract_text(doc)):
            expected = [a + b for a, b in zip(expected, model.embed(chunk), strict=True)]
    assert index["total"] == expected
    assert all(unit.state is UnitState.COMPLETED for unit in partitioner.units.values())
    workers = {t["worker"] for t in partitioner.last_execution_metrics["unit_times"].values()}
    assert workers <= set(client.scheduler_info()["workers"])


# -- decisions: conditions and skips -----------------------------------------------------------


def test_conditions_read_only_what_they_need_and_skips_are_decisions(backend):
    """when= reads a dependency's value here; ctx.skip on a worker is SKIPPED, not FAILED."""
    #   route ──> search (when route == "search")
    #         └─> calc   (when route == "calc") ──> show
    #   idle (ctx.skip) ──> after_idle
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: "search", name="route")
    p.add_unit(lambda ctx: "found", ["route"], name="search", when=lambda c: c["route"] == "search")
    p.add_unit(lambda ctx: 42, ["route"], name="calc", when=lambda c: c["route"] == "calc")
    p.add_unit(lambda ctx: ctx["calc"], ["calc"], name="show")
    p.add_unit(lambda ctx: ctx.skip("nothing to do"), name="idle", retries=2)
    p.add_unit(lambda ctx: 1, ["idle"], name="after_idle")

    results = p.execute(backend=backend)

    assert results == {"route": "search", "search": "found"}
    assert p.units["calc"].error.cause is SkipCause.CONDITION
    assert p.units["show"].error.cause is SkipCause.JOIN_RULE
    assert p.units["idle"].error.cause is SkipCause.DECISION
    assert p.units["idle"].error.reason == "nothing to do"
    assert p.units["idle"].attempt == 1
    assert p.units["after_idle"].state is UnitState.SKIPPED
    assert p.get_failed_units() == {}


def test_join_rules_hand_a_unit_only_the_results_that_exist(backend):
    """all_done and none_failed on the cluster: inputs that exist, and why the rest does not."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 1, name="ok")
    p.add_unit(units.exploding_unit, name="boom")
    p.add_unit(lambda ctx: ctx.skip("no"), name="lazy")
    p.add_unit(
        lambda ctx: [sorted(ctx.unit_results.items()), sorted(ctx.upstream_errors)],
        ["ok", "boom", "lazy"],
        name="report",
        run_if="all_done",
    )
    p.add_unit(
        lambda ctx: sorted(ctx.unit_results), ["ok", "lazy"], name="join", run_if="none_failed"
    )
    p.add_unit(lambda ctx: 0, ["ok", "boom"], name="blocked", run_if="none_failed")

    results = p.execute(backend=backend)

    assert results["report"] == [[("ok", 1)], ["boom", "lazy"]]
    assert results["join"] == ["ok"]
    assert p.units["blocked"].error.cause is SkipCause.UPSTREAM_FAILED


def test_subgraph_units_read_inner_names_on_the_workers(backend):
    """A subgraph on the cluster: inner names in ctx, when= and upstream_errors; a sink dict."""
    inner = QuantumPartitioner()
    inner.add_unit(lambda ctx: ctx["config"] + 1, name="load")
    inner.add_unit(lambda ctx: ctx["load"] * 10, ["load"], name="clean")
    inner.add_unit(units.exploding_unit, ["load"], name="boom")
    inner.add_unit(lambda ctx: 0, ["load"], name="never", when=lambda ctx: ctx["load"] > 99)
    inner.add_unit(
        lambda ctx: [sorted(ctx.unit_results.items()), sorted(ctx.upstream_errors)],
        ["clean", "boom", "never"],
        name="report",
        run_if="all_done",
    )
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: 2, name="config")
    p.add_subgraph(inner, "ingest", ["config"])
    p.add_unit(lambda ctx: ctx["ingest"]["report"][0], ["ingest"], name="after")

    results = p.execute(backend=backend)

    assert results["ingest.clean"] == 30
    assert results["ingest.report"] == [[("clean", 30)], ["boom", "never"]]
    assert results["ingest"] == {"report": results["ingest.report"]}
    assert results["after"] == [("clean", 30)]
    assert p.units["ingest.never"].error.cause is SkipCause.CONDITION


# -- maps --------------------------------------------------------------------------------------


def test_maps_run_item_by_item_on_the_cluster(client):
    """A map, an item-wise map over it and a dependent of that: values, not futures, come back.

    The Dask driver used to fail with IndexError as soon as a map made its items (and sent
    the map itself to the cluster as if it were a unit).
    """

    def fails_on_two(ctx):
        if ctx.item == 2:
            raise ValueError("two")
        return ctx.item * 10

    p = QuantumPartitioner()
    p.add_unit(lambda ctx: [1, 2, 3], name="xs")
    p.add_map(fails_on_two, over="xs", name="tens", metadata={"fallback_value": -1})
    p.add_map(lambda ctx: (ctx.index, ctx.item + 1), over="tens", name="plus")
    p.add_unit(lambda ctx: ctx["plus"], ["plus"], name="seen")
    results = p.execute(backend=DaskBackend(client))
    assert results["tens"] == [10, -1, 30]
    assert results["plus"] == [(0, 11), (1, 0), (2, 31)]
    assert results["seen"] == results["plus"]
    assert results["plus[2]"] == (2, 31)
    assert p.last_execution_metrics["unit_times"]["tens[1]"]["state"] == "failed"
    only = p.execute(backend=DaskBackend(client, gather=["seen"]))
    assert only == {"seen": [(0, 11), (1, 0), (2, 31)]}


def test_maps_expand_on_the_cluster(client):
    """The contract's map cases in one run: an agent chain (a map, an item-wise map over it,
    a unit over that), zero items, a failed item skipping only its own item-wise child, a
    result that is not iterable, and max_items. (Lookahead is on: it must leave maps and
    their items alone, and hand over the dependents of a completed map.)"""
    import _contract_units as u  # noqa: PLC0415 - the same directory, on every worker's path

    p = QuantumPartitioner()
    p.add_unit(u.const(["search", "calc", "weather"]), name="plan")
    p.add_map(u.tagged_item("tool"), over="plan", name="tool", retries=1)
    p.add_map(u.tagged_item("summary"), over="tool", name="summary")
    p.add_unit(u.seen, ["summary"], name="answer")
    # A condition reads the map's list: its items' values are brought here, not futures.
    p.add_unit(
        u.const("ran"), ["tool"], name="gated", when=lambda ctx: "tool:1:calc" in ctx["tool"]
    )
    p.add_unit(u.const([]), name="nothing")
    p.add_map(u.item_view, over="nothing", name="none")
    p.add_unit(u.seen, ["none"], name="after_none")
    p.add_unit(u.const([1, 0, 3]), name="numbers")
    p.add_map(u.item_times(10), over="numbers", name="scaled")
    p.add_map(u.item_times(2), over="scaled", name="doubled", dependencies=["plan"])
    p.add_unit(u.seen, ["doubled"], name="report", run_if="all_done")
    p.add_unit(u.const(42), name="number")
    p.add_map(u.item_view, over="number", name="over_int")
    p.add_map(u.item_view, over="plan", name="bounded", max_items=2)
    p.add_unit(u.const(u.Paged(1000)), name="pages")  # read on the cluster up to the bound
    p.add_map(u.item_view, over="pages", name="lazy_bounded", max_items=3)
    # Read on a worker, a KeyboardInterrupt fails the map (it used to stop the worker's
    # loop: the run hung).
    p.add_unit(u.const(u.Paged(1, KeyboardInterrupt)), name="interrupting")
    p.add_map(u.item_view, over="interrupting", name="not_interrupted")
    # A fallback value is here, not on the cluster: its items are handed over as values.
    p.add_unit(u.explode, name="broken", metadata={"fallback_value": ["a", "b"]})
    p.add_map(u.item_view, over="broken", name="over_fallback")

    results = p.execute(backend=DaskBackend(client))

    tools = ["tool:0:search", "tool:1:calc", "tool:2:weather"]
    summaries = [f"summary:{i}:{tool}" for i, tool in enumerate(tools)]
    assert results["tool"] == tools
    assert [results[f"summary[{i}]"] for i in range(3)] == summaries
    assert results["answer"]["results"] == {"summary": summaries}
    assert results["gated"] == "ran"
    assert [view["item"] for view in results["over_fallback"]] == ["a", "b"]
    assert results["none"] == []
    assert results["after_none"]["results"] == {"none": []}
    assert (results["doubled[0]"], results["doubled[2]"]) == (20, 60)
    assert results["report"] == {"results": {"doubled": [20, 60]}, "upstream_errors": ["doubled"]}
    failed = p.get_failed_units()
    assert failed["scaled"].failed_items == ["scaled[1]"]
    assert failed["doubled"].failed_items == ["doubled[1]"]
    trace = p.last_execution_metrics["execution_trace"]
    assert {"doubled[1]"} == {r["unit"] for r in trace if r["event"] == "skip"}
    assert "map 'over_int': the result of 'number' is not iterable (int)" in str(failed["over_int"])
    assert isinstance(failed["over_int"], TypeError)
    assert "'plan' gave 3 items, more than max_items=2" in str(failed["bounded"])
    assert "'pages' gave more than max_items=3 items" in str(failed["lazy_bounded"])
    assert "raised KeyboardInterrupt: page 2 failed" in str(failed["not_interrupted"])
    assert p.last_execution_metrics["total_units"] == 21 + 3 + 3 + 3 + 3 + 2


def test_the_mapped_list_never_travels_to_the_client(client):
    """The list a map maps over is measured and picked from on the cluster: the client
    unpickles none of it, while the items, the map's list and its dependents come back."""
    p = QuantumPartitioner()
    p.add_unit(units.plan_of, name="plan")
    p.add_map(lambda ctx: f"{ctx.index}:{ctx.item}", over="plan", name="probe")
    p.add_map(lambda ctx: ctx.item.upper(), over="probe", name="loud")
    p.add_unit(lambda ctx: len(ctx["loud"]), ["loud"], name="answer")
    before = units.LISTS_UNPICKLED

    results = p.execute({"count": 3}, backend=DaskBackend(client, gather=["probe", "answer"]))

    assert before == units.LISTS_UNPICKLED
    assert results == {
        "probe": ["0:tool-0", "1:tool-1", "2:tool-2"],
        "probe[0]": "0:tool-0",
        "probe[1]": "1:tool-1",
        "probe[2]": "2:tool-2",
        "answer": 3,
    }
    assert p.units["loud"].state is UnitState.COMPLETED
    # The tasks that listed and picked the items are released with the run's other futures.
    # (A name no other test uses: their maps' keys may live on in reference cycles.)
    assert wait_for(lambda: not run_keys(client, "probe"))


# -- named limits and run deadlines ---------------------------------------------------------


def test_a_unit_with_limits_is_submitted_only_when_it_holds_its_slots(backend):
    """concurrency=1 on a 2-worker cluster: limited units never overlap, lookahead or not."""
    p = QuantumPartitioner()
    p.add_limit("gpu", concurrency=1)
    names = [f"g{k}" for k in range(4)]
    for name in names:  # each behind its own root, so Dask would spread them over workers
        p.add_unit(units.started_at, name=f"root_{name}")
        p.add_unit(units.started_at, [f"root_{name}"], name=name, limits=["gpu"])
    results = p.execute(backend=backend)
    began = sorted(results[name] for name in names)  # when each really started, on a worker
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(began))  # each takes 0.05 s
    assert p.limit_stats()["gpu"].peak == 1


@pytest.mark.parametrize("fails", [True, False], ids=["then-fails", "then-completes"])
def test_a_pause_on_a_worker_holds_back_its_limit_during_the_run(client, fails):
    """ctx.pause_limit on a worker holds this run's next starts, whether the attempt fails.

    A 429 handler pauses, then raises to be retried: the retry waits for the pause. One
    that completes keeps its result (and metrics) on the cluster: the pause is not held
    until the end of the run, it reaches the caller at once.
    """

    def calls(ctx):
        if ctx.attempt == 1:
            ctx.pause_limit("api", 0.6)
            if fails:
                raise ConnectionError("429 Too Many Requests")
        return ctx.attempt

    p = QuantumPartitioner(retry_policy=FAST_RETRIES)
    p.add_limit("api", concurrency=1)
    p.add_unit(calls, name="calls", limits=["api"], retries=1, priority=1)
    p.add_unit(lambda ctx: "other", name="other", limits=["api"])
    backend = DaskBackend(client, gather=None)  # results stay on the cluster
    assert p.execute(backend=backend) == {}
    metrics = p.last_execution_metrics
    times = metrics["unit_times"]
    # The pause arrives while the attempt ends, a moment before its outcome is recorded.
    if fails:
        [ended] = [e["time"] for e in metrics["execution_trace"] if e["event"] == "retry"]
        assert times["calls"]["start"] - ended >= 0.3
    else:
        ended = times["calls"]["end"]
    assert times["other"]["start"] - ended >= 0.3
    assert times["calls"]["attempts"] == (2 if fails else 1)


def test_deadline_cancels_what_runs_on_the_cluster(client):
    """deadline=: unfinished units are CANCELED, their tasks leave the cluster."""
    warm = QuantumPartitioner()
    warm.add_unit(lambda ctx: "ok", name="warm")
    warm.execute(backend=DaskBackend(client))  # the timed run below pays no first-use costs
    p = QuantumPartitioner()
    p.add_unit(units.sleep_then, name="slow")
    p.add_unit(lambda ctx: "ok", name="quick", priority=1)
    started = time.monotonic()
    results = p.execute({"seconds": 3.0}, backend=DaskBackend(client), deadline=1.5)
    assert time.monotonic() - started < 2.6
    assert results == {"quick": "ok"}
    assert p.units["slow"].state is UnitState.CANCELED
    assert "deadline" in str(p.units["slow"].error)
    assert p.last_execution_metrics["stop_reason"] == "deadline"
    assert wait_for(lambda: not run_keys(client, "slow-"))
    time.sleep(1.6)  # let the worker thread finish sleeping before the next test


def test_a_run_interrupted_before_it_is_driven_lets_go_of_the_cluster(client):
    """A run_started hook's Ctrl-C after the backend claimed the run (its context sent to
    the cluster): the claim is let go of, every unit is CANCELED, and the next run on the
    same backend runs."""

    backend = DaskBackend(client)
    p = QuantumPartitioner(instruments=[InterruptOnFirstRunStart()])
    p.add_unit(lambda ctx: ctx["x"], name="a")
    with pytest.raises(KeyboardInterrupt):
        p.execute({"x": 1}, backend=backend)
    assert p.units["a"].state is UnitState.CANCELED
    assert not backend._claimed  # its context left the cluster
    assert p.execute({"x": 2}, backend=backend) == {"a": 2}
