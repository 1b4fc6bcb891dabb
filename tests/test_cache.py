"""CachingQuantumPartitioner: keys, invalidation, stores, corruption, management, every mode.

Units count their executions in a thread-safe :class:`Counter` they close over; it is listed
in ``metadata["cache_ignore"]`` since it does not affect their results. Graphs are drawn as
ASCII where their shape matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import math
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quantum_partitioner as qp
from quantum_partitioner import (
    CacheEntry,
    CacheStats,
    CachingQuantumPartitioner,
    ExecutionMode,
    ExponentialBackoff,
    Instrument,
    MemoryStore,
    QuantumPartitioner,
    RetryPolicy,
    SQLiteStore,
    UnitState,
)
from quantum_partitioner.caching import _fingerprint
from quantum_partitioner.caching import _partitioner as caching_partitioner

SEQUENTIAL = ExecutionMode.SEQUENTIAL
FAST_RETRY = RetryPolicy(backoff=ExponentialBackoff(initial=0.001, jitter=0))


class Counter:
    """Executions per unit name, safe to bump from several threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = {}

    def hit(self, name):
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def take(self):
        """The counts so far, then start again from zero."""
        with self._lock:
            counts, self.counts = self.counts, {}
        return counts


def cached(**metadata):
    """Metadata of a cacheable unit that counts its runs in a closed-over ``counter``."""
    return {"cacheable": True, "cache_ignore": ["counter"], **metadata}


def combining(counter, name, keys=()):
    """A unit that counts its run and returns its name, some context values and its inputs."""

    def unit(ctx):
        counter.hit(name)
        upstream = ctx.unit_results
        return (name, [ctx.get(k) for k in keys], [upstream[d] for d in sorted(upstream)])

    return unit


@pytest.fixture(params=["memory", "sqlite"])
def store_options(request, tmp_path):
    """Constructor keyword arguments selecting each kind of store."""
    if request.param == "memory":
        return {}
    return {"cache_path": tmp_path / "cache" / "results.sqlite"}


@pytest.fixture
def make(store_options):
    """Build caching partitioners on the chosen store; closes them after the test."""
    made = []

    def factory(**options):
        p = CachingQuantumPartitioner(**{**store_options, **options})
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def diamond(p, counter, **metadata):
    """Add the graph below; every unit reads context key "x".

          a
         / \\
        b   c      side (independent)
         \\ /
          d
    """
    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "side": []}
    for name, deps in graph.items():
        p.add_unit(combining(counter, name, ["x"]), deps, name=name, metadata=cached(**metadata))


# -- the original API's surface ----------------------------------------------------------------


def test_rerun_is_served_from_the_cache(make):
    """A second run with the same inputs runs nothing and returns equal results."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    diamond(p, counter)
    first = p.execute({"x": 1})
    assert counter.take() == dict.fromkeys(["a", "b", "c", "d", "side"], 1)
    assert (p.cache_hits, p.cache_misses) == (0, 5)
    assert p.execute({"x": 1}) == first
    assert counter.take() == {}
    assert (p.cache_hits, p.cache_misses) == (5, 5)
    assert all(unit.state is UnitState.COMPLETED for unit in p.units.values())


def test_only_cacheable_units_are_cached(make):
    """Units without metadata["cacheable"] run every time and are not counted."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "plain"), name="plain")
    p.add_unit(combining(counter, "kept"), name="kept", metadata=cached())
    p.execute()
    p.execute()
    assert counter.take() == {"plain": 2, "kept": 1}
    assert (p.cache_hits, p.cache_misses) == (1, 1)
    assert len(p.cache) == 1


def test_stats_record(make):
    """cache_stats() is a frozen record of the counters and the store's size."""
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(lambda ctx: "x" * 100, name="a", metadata={"cacheable": True})
    p.execute()
    p.execute()
    stats = p.cache_stats()
    assert isinstance(stats, CacheStats)
    assert (stats.hits, stats.misses, stats.writes, stats.entries) == (1, 1, 1, 1)
    assert (stats.skipped, stats.corrupt, stats.errors) == (0, 0, 0)
    assert stats.size_bytes > 100
    assert stats.hit_rate == 0.5
    with pytest.raises(AttributeError):
        stats.hits = 3  # type: ignore[misc]


def test_base_keyword_arguments_pass_through(make):
    """retry_policy and instruments reach QuantumPartitioner; a retried unit is cached once."""
    seen = []

    class Watch(Instrument):
        def unit_finished(self, event):
            seen.append(event.unit_id)

    attempts = Counter()

    def flaky(ctx):
        attempts.hit("flaky")
        if attempts.counts["flaky"] == 1:
            raise ValueError("first attempt fails")
        return 5

    p = make(max_workers=2, retry_policy=FAST_RETRY, instruments=[Watch()])
    p.add_unit(
        flaky, name="flaky", retries=1, metadata={"cacheable": True, "cache_ignore": ["attempts"]}
    )
    assert p.execute() == {"flaky": 5}
    assert p.execute() == {"flaky": 5}
    assert attempts.counts == {"flaky": 2}
    assert (p.cache_hits, p.cache_misses) == (1, 1)
    assert seen == ["flaky", "flaky"]


def test_decorator_form_fingerprints_too(make):
    """@add_unit(metadata=...) units are cached like the others."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)

    @p.add_unit(metadata=cached())
    def load(ctx):
        counter.hit("load")
        return 1

    p.execute()
    p.execute()
    assert counter.take() == {"load": 1}


# -- what invalidates what ---------------------------------------------------------------------


def test_a_context_change_recomputes_the_units_that_read_it(make):
    """cache_keys narrows the context: absent = all of it, [] = none, a list = those keys."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "all"), name="all", metadata=cached())
    p.add_unit(combining(counter, "none"), name="none", metadata=cached(cache_keys=[]))
    p.add_unit(combining(counter, "x", ["x"]), name="x", metadata=cached(cache_keys=["x"]))
    p.add_unit(combining(counter, "y", ["y"]), name="y", metadata=cached(cache_keys=["y"]))
    p.execute({"x": 1, "y": 1})
    counter.take()
    p.execute({"x": 2, "y": 1})
    assert counter.take() == {"all": 1, "x": 1}
    p.execute({"x": 2, "y": 1, "z": 0})
    assert counter.take() == {"all": 1}
    p.execute({"x": 2, "z": 0})  # "y" disappears: absent differs from any value
    assert counter.take() == {"all": 1, "y": 1}


def test_unhashable_context_values_are_fine(make):
    """Lists and dicts in the context (which broke the original API's hash()) key normally."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "a", ["rows"]), name="a", metadata=cached())
    p.execute({"rows": [{"id": 1}, {"id": 2}]})
    p.execute({"rows": [{"id": 1}, {"id": 2}]})
    p.execute({"rows": [{"id": 1}, {"id": 3}]})
    assert counter.take() == {"a": 2}


def test_an_upstream_change_recomputes_exactly_what_is_downstream(make):
    """Editing b's function recomputes b and d; a, c and side are served from the cache."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    diamond(p, counter)
    p.execute({"x": 1})
    counter.take()

    def new_b(ctx):
        counter.hit("b")
        return "edited"

    p.add_unit(new_b, ["a"], name="b", metadata=cached(), replace=True)
    results = p.execute({"x": 1})
    assert counter.take() == {"b": 1, "d": 1}
    assert results["b"] == "edited"
    assert results["d"][2] == ["edited", results["c"]]


def test_cache_version_bumps_by_hand(make):
    """Changing metadata["cache_version"] recomputes the unit (and what is downstream)."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "a"), name="a", metadata=cached(cache_version=1))
    p.add_unit(combining(counter, "b"), ["a"], name="b", metadata=cached())
    p.execute()
    p.units["a"].metadata["cache_version"] = 2
    p.execute()
    assert counter.take() == {"a": 2, "b": 2}


def test_non_cacheable_dependency_counts_by_its_result(make):
    """Downstream of a unit that always runs, the key follows its result's value."""
    counter = Counter()
    source = {"value": 1}
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(lambda ctx: source["value"], name="live")  # not cacheable: runs every time
    p.add_unit(combining(counter, "user"), ["live"], name="user", metadata=cached())
    p.execute()
    p.execute()
    assert counter.take() == {"user": 1}
    source["value"] = 2
    assert p.execute()["user"] == ("user", [], [2])
    assert counter.take() == {"user": 1}


def test_fallback_value_counts_by_value(make):
    """A failed dependency's fallback value keys its dependents like a result."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)

    def broken(ctx):
        raise RuntimeError("down")

    p.add_unit(broken, name="src", metadata={"cacheable": True, "fallback_value": 0})
    p.add_unit(combining(counter, "user"), ["src"], name="user", metadata=cached())
    p.execute()
    p.execute()
    assert counter.take() == {"user": 1}
    assert p.units["src"].state is UnitState.FAILED
    assert p.cache_stats().writes == 1  # failures are never stored


def test_closure_changing_during_runs_does_not_invalidate(make):
    """The function's fingerprint is taken by add_unit: a list it appends to changes nothing."""
    calls = []
    p = make(default_execution_mode=SEQUENTIAL)

    def unit(ctx):
        calls.append(1)
        return len(calls)

    p.add_unit(unit, name="a", metadata={"cacheable": True})
    assert p.execute() == {"a": 1}
    assert p.execute() == {"a": 1}
    assert calls == [1]


def test_a_build_fingerprints_a_shared_function_once_and_after_a_run_afresh(monkeypatch):
    """Units of one build that run one function share its fingerprint; a later build rereads.

    The units added after a run see a global rebound since: their keys are what a new
    process would compute, so its results serve (and are served by) a fresh partitioner.
    """
    taken = []
    take = _fingerprint._function_fingerprint
    monkeypatch.setattr(
        _fingerprint, "_function_fingerprint", lambda *args: taken.append(1) or take(*args)
    )
    namespace = {"OFFSET": 1}
    exec("def unit(ctx):\n    return OFFSET\n", namespace)
    store = MemoryStore()
    p = CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL)
    for k in range(50):
        p.add_unit(namespace["unit"], name=f"u{k}", metadata={"cacheable": True})
    assert len(taken) == 1
    assert p.execute()["u0"] == 1
    namespace["OFFSET"] = 2
    p.add_unit(namespace["unit"], name="later", metadata={"cacheable": True})
    assert len(taken) == 2
    assert p.execute()["later"] == 2
    fresh = CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL)
    fresh.add_unit(namespace["unit"], name="later", metadata={"cacheable": True})
    fresh.execute()
    assert (fresh.cache_hits, fresh.cache_misses) == (1, 0)


def make_closure(value):
    """A closure of one code object per call (``make_unit(k)``); ``rebind`` sets its cell."""

    def unit(ctx):
        return value

    def rebind(new):
        nonlocal value
        value = new

    return unit, rebind


def test_closures_after_the_first_keep_their_values_and_take_their_digests_at_the_run(
    tmp_path, monkeypatch
):
    """Plain closure values are kept by add_unit; the run's key is what the long way makes.

    Each closure is then served to a partitioner of a new build that adds it alone (the
    long way), so the keys are equal; a cell rebound or a list mutated after add_unit
    changes nothing, and different values give different keys.
    """
    taken = []
    digest_of = _fingerprint.snapshot_fingerprint
    monkeypatch.setattr(
        caching_partitioner,
        "snapshot_fingerprint",
        lambda snapshot: taken.append(1) or digest_of(snapshot),
    )
    path = tmp_path / "results.sqlite"
    values = (1, 2, 3, "three", None)
    made = [make_closure(k) for k in values]
    listed = []

    def over_a_list(ctx):
        return list(listed)

    with CachingQuantumPartitioner(cache_path=path, default_execution_mode=SEQUENTIAL) as p:
        for k, (unit, _) in enumerate(made):
            p.add_unit(unit, name=f"u{k}", metadata={"cacheable": True})
        p.add_unit(over_a_list, name="listed", metadata={"cacheable": True})
        assert taken == []  # add_unit kept the values; no digest yet
        made[2][1](30)  # rebound after add_unit: the unit keeps the value it had
        listed.append(1)  # mutated after add_unit: encoded then (not plain), as before
        assert p.execute() == {"u0": 1, "u1": 2, "u2": 30, "u3": "three", "u4": None, "listed": [1]}
        assert len(taken) == 4  # the closures after the first (whose template they use)
        assert p.execute()["u2"] == 30
        assert len(taken) == 4  # each taken once
        assert p.cache_stats().entries == 6
    listed.clear()
    for k, value in enumerate(values):
        with CachingQuantumPartitioner(cache_path=path, default_execution_mode=SEQUENTIAL) as q:
            q.add_unit(make_closure(value)[0], name=f"u{k}", metadata={"cacheable": True})
            q.add_unit(over_a_list, name="listed", metadata={"cacheable": True})
            # u2 ran with 30 under the key of 3, the value it had when it was added.
            assert q.execute() == {f"u{k}": 30 if k == 2 else value, "listed": [1]}
            assert (q.cache_hits, q.cache_misses) == (2, 0)


def test_a_closure_kept_by_add_unit_is_dropped_with_its_unit(tmp_path):
    """remove_unit and replace=True drop a unit's kept closure; a lock is refused at once."""
    path = tmp_path / "results.sqlite"
    made = [make_closure(k)[0] for k in range(4)]
    with CachingQuantumPartitioner(cache_path=path, default_execution_mode=SEQUENTIAL) as p:
        for k in range(4):
            p.add_unit(made[k], name=f"u{k}", metadata={"cacheable": True})
        gone = weakref.ref(made.pop(3))
        p.remove_unit("u3")
        gc.collect()
        assert gone() is None  # nothing of the removed unit is kept
        p.add_unit(make_closure(20)[0], name="u2", metadata={"cacheable": True}, replace=True)
        with pytest.raises(TypeError, match=r"unit 'u1'.*closure variable 'value'.*cache_ignore"):
            p.add_unit(
                make_closure(threading.Lock())[0],
                name="u1",
                metadata={"cacheable": True},
                replace=True,
            )
        assert p.execute() == {"u0": 0, "u1": 1, "u2": 20}
    with CachingQuantumPartitioner(cache_path=path, default_execution_mode=SEQUENTIAL) as q:
        q.add_unit(make_closure(20)[0], name="u2", metadata={"cacheable": True})
        q.execute()
        assert (q.cache_hits, q.cache_misses) == (1, 0)  # keyed on the replacing closure


# -- values that cannot be fingerprinted -------------------------------------------------------


def test_unfingerprintable_context_value_fails_before_anything_runs(make):
    """A lock in the context: TypeError naming the unit and the key, and nothing ran."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "first"), name="first")
    p.add_unit(combining(counter, "a"), ["first"], name="a", metadata=cached())
    with pytest.raises(TypeError, match=r"unit 'a'.*context key 'lock'.*cache_keys"):
        p.execute({"lock": threading.Lock(), "x": 1})
    assert counter.take() == {}
    p.units["a"].metadata["cache_keys"] = ["x"]  # the explicit opt-out
    p.execute({"lock": threading.Lock(), "x": 1})
    assert counter.take() == {"first": 1, "a": 1}


def nested(depth, leaf):
    """``[[...[leaf]...]]`` with a dict every tenth level: deeper than the stack allows."""
    value = leaf
    for level in range(depth):
        value = {"level": value} if level % 10 == 0 else [value]
    return value


def test_defect_15_deeply_nested_context_values_and_results_are_fingerprinted(make):
    """Issue 9 defect 15: plain data 2,000 levels deep is fingerprinted, not RecursionError.

    Both as a context value and as a dependency's result that keys its dependent.
    """
    counter = Counter()

    def small(ctx):  # a result that pickles: the tree is too deep for pickle
        counter.hit(ctx.unit_id)
        return ctx.unit_id

    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(lambda ctx: nested(2000, ctx["leaf"]), name="tree")  # not cacheable
    p.add_unit(small, name="a", metadata=cached())
    p.add_unit(small, ["tree"], name="b", metadata=cached(cache_keys=[]))
    for leaf, runs in ((1, {"a": 1, "b": 1}), (1, {}), (2, {"a": 1, "b": 1})):
        p.execute({"deep": nested(2000, leaf), "leaf": leaf}, raise_on_error=True)
        assert counter.take() == runs


@dataclass
class Link:
    next: object


def test_defect_15_a_deeply_nested_object_names_the_unit_and_key_before_anything_runs(make):
    """Issue 9 defect 15: objects nested past the stack give TypeError naming unit and key."""
    counter = Counter()
    chain = None
    for _ in range(3000):
        chain = Link(chain)
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "first"), name="first")
    p.add_unit(combining(counter, "a"), ["first"], name="a", metadata=cached())
    with pytest.raises(TypeError, match=r"unit 'a'.*context key 'chain'.*nested deeper"):
        p.execute({"chain": chain})
    assert counter.take() == {}


def test_unfingerprintable_closure_is_refused_by_add_unit(make):
    """A closed-over lock: TypeError naming unit and variable; the unit is not added."""
    lock = threading.Lock()
    p = make()
    p.add_unit(lambda ctx: 0, name="keep", metadata={"cacheable": True})

    def unit(ctx):
        with lock:
            return 1

    with pytest.raises(TypeError, match=r"unit 'new'.*closure variable 'lock'.*cache_ignore"):
        p.add_unit(unit, name="new", metadata={"cacheable": True})
    assert "new" not in p.units
    with pytest.raises(TypeError, match="closure variable 'lock'"):
        p.add_unit(unit, name="keep", metadata={"cacheable": True}, replace=True)
    assert p.units["keep"].function is not unit
    p.add_unit(unit, name="new", metadata={"cacheable": True, "cache_ignore": ["lock"]})
    assert p.execute(execution_mode=SEQUENTIAL) == {"keep": 0, "new": 1}


def test_add_units_fingerprints_as_add_unit_does(make):
    """add_units refuses an unfingerprintable cacheable unit (adding none) and caches the rest."""
    lock = threading.Lock()
    counter = Counter()

    def unit(ctx):
        with lock:
            return 1

    p = make(default_execution_mode=SEQUENTIAL)
    with pytest.raises(TypeError, match=r"unit 'new'.*closure variable 'lock'"):
        p.add_units(
            {
                "a": (combining(counter, "a"), [], {"metadata": cached()}),
                "new": (unit, [], {"metadata": {"cacheable": True}}),
            }
        )
    assert p.units == {}
    p.add_units({"a": (combining(counter, "a"), [], {"metadata": cached()})})
    p.execute()
    p.execute()
    assert (counter.take(), p.cache_hits) == ({"a": 1}, 1)


def test_bad_cache_metadata_is_a_type_error(make):
    """cache_keys and cache_ignore must be lists of names, not a string."""
    p = make()
    with pytest.raises(TypeError, match=r"unit 'a'.*cache_ignore"):
        p.add_unit(lambda ctx: 0, name="a", metadata={"cacheable": True, "cache_ignore": "x"})
    p.add_unit(lambda ctx: 0, name="b", metadata={"cacheable": True, "cache_keys": "x"})
    with pytest.raises(TypeError, match=r"unit 'b'.*cache_keys"):
        p.execute()


def test_unfingerprintable_dependency_result_runs_uncached(make, caplog):
    """A dependency handing over a lock: the unit runs without the cache, with a warning."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(lambda ctx: threading.Lock(), name="lock")
    p.add_unit(combining(counter, "user"), ["lock"], name="user", metadata=cached())
    with caplog.at_level(logging.WARNING, logger="quantum_partitioner"):
        p.execute()
        p.execute()
    assert counter.take() == {"user": 2}
    assert p.cache_stats().skipped == 2
    assert "unit 'user' runs without the cache" in caplog.text
    assert "'lock'" in caplog.text


def test_unpicklable_result_is_not_stored(make, caplog):
    """A result pickle cannot save is returned but not cached, with a warning."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)

    def unit(ctx):
        counter.hit("gen")
        return threading.Lock()

    p.add_unit(unit, name="gen", metadata=cached())
    with caplog.at_level(logging.WARNING, logger="quantum_partitioner"):
        p.execute()
        p.execute()
    assert counter.take() == {"gen": 2}
    assert p.cache_stats().skipped == 2
    assert len(p.cache) == 0
    assert "cannot be pickled" in caplog.text


# -- every execution mode ----------------------------------------------------------------------


def square(ctx):
    return ctx["n"] ** 2


def plus_upstream(ctx):
    return ctx["sq"] + 1


@pytest.mark.parametrize("mode", list(ExecutionMode), ids=lambda m: m.name)
def test_every_mode_serves_hits(make, mode):
    """Each mode stores on the first run and serves every unit on the second."""
    options = {"execution_mode": mode}
    with ThreadPoolExecutor(2) as executor:
        if mode is ExecutionMode.CUSTOM:
            options["custom_executor"] = executor
        p = make(max_workers=2)
        p.add_unit(square, name="sq", metadata={"cacheable": True, "cache_keys": ["n"]})
        p.add_unit(plus_upstream, ["sq"], name="up", metadata={"cacheable": True})
        p.add_unit(lambda ctx: ctx["up"] * 2, ["up"], name="plain")
        assert p.execute({"n": 3}, **options) == {"sq": 9, "up": 10, "plain": 20}
        assert p.execute({"n": 3}, **options) == {"sq": 9, "up": 10, "plain": 20}
        assert (p.cache_hits, p.cache_misses) == (2, 2)
        assert p.execute({"n": 4}, **options) == {"sq": 16, "up": 17, "plain": 34}
        assert (p.cache_hits, p.cache_misses) == (2, 4)


@pytest.mark.parametrize(
    "how", [*(m.name for m in ExecutionMode), "resource_balanced"], ids=lambda how: how
)
def test_a_hit_is_never_written_back(tmp_path, how):
    """Defect 11: a run served from the cache writes nothing, in every mode and lane."""
    with (
        ThreadPoolExecutor(2) as executor,
        CachingQuantumPartitioner(cache_path=tmp_path / "results.sqlite", max_workers=2) as p,
    ):
        kinds = ["cpu", "io", "async"]
        for k, kind in enumerate(kinds):  # one unit per lane of a resource_balanced run
            p.add_unit(square, name=f"sq{k}", metadata={"cacheable": True, "resource_type": kind})

        def run():
            if how == "resource_balanced":
                return p.execute_with_strategy({"n": 3}, "resource_balanced")
            mode = ExecutionMode[how]
            options = {"custom_executor": executor} if mode is ExecutionMode.CUSTOM else {}
            return p.execute({"n": 3}, execution_mode=mode, **options)

        assert run() == {"sq0": 9, "sq1": 9, "sq2": 9}
        assert p.cache_stats().writes == 3
        created = {entry.unit: entry.created for entry in p.cache.entries()}
        assert run() == {"sq0": 9, "sq1": 9, "sq2": 9}
        stats = p.cache_stats()
        assert (stats.hits, stats.writes) == (3, 3)
        assert {entry.unit: entry.created for entry in p.cache.entries()} == created


def one(ctx):
    return 1


def pair(ctx):
    return [1, 2]


def a_plus_one(ctx):
    return ctx["a"] + 1


def times_ten(ctx):
    return ctx.item * 10


@pytest.mark.parametrize(
    "how", [*(m.name for m in ExecutionMode), "resource_balanced"], ids=lambda how: how
)
def test_a_hit_releases_a_map_and_a_conditioned_unit_in_every_mode(how):
    """A hit that makes a map expand or a condition due, with nothing else running, goes on
    (PROCESS and CUSTOM stopped with "no unit is ready, running or waiting")."""
    with ThreadPoolExecutor(2) as executor, CachingQuantumPartitioner(max_workers=2) as p:
        p.add_unit(one, name="a", metadata={"cacheable": True})
        p.add_unit(a_plus_one, ["a"], name="b", when=lambda ctx: ctx["a"] == 1)
        p.add_unit(pair, name="plan", metadata={"cacheable": True})
        p.add_map(times_ten, over="plan", name="items")
        expected = {"a": 1, "b": 2, "plan": [1, 2], "items": [10, 20]}
        for _ in range(2):
            if how == "resource_balanced":
                results = p.execute_with_strategy({}, "resource_balanced")
            else:
                mode = ExecutionMode[how]
                options = {"custom_executor": executor} if mode is ExecutionMode.CUSTOM else {}
                results = p.execute({}, execution_mode=mode, **options)
            assert {name: results[name] for name in expected} == expected
        assert p.cache_hits == 2


def test_aexecute_uses_the_cache(make):
    """await aexecute() consults the cache like execute()."""
    counter = Counter()
    p = make()

    async def unit(ctx):
        counter.hit("a")
        return 1

    p.add_unit(unit, name="a", metadata=cached())
    assert asyncio.run(p.aexecute()) == {"a": 1}
    assert asyncio.run(p.aexecute()) == {"a": 1}
    assert counter.take() == {"a": 1}


def test_mixed_lanes_use_the_cache(make):
    """resource_balanced runs (processes, threads and a loop in one run) hit too."""
    p = make(max_workers=2)
    p.add_unit(square, name="cpu", metadata={"cacheable": True, "resource_type": "cpu"})
    p.add_unit(plus_upstream, name="io", metadata={"cacheable": True, "resource_type": "io"})
    p.execute_with_strategy({"n": 2, "sq": 1}, "resource_balanced")
    assert p.execute_with_strategy({"n": 2, "sq": 1}, "resource_balanced") == {"cpu": 4, "io": 2}
    assert (p.cache_hits, p.cache_misses) == (2, 2)


# -- maps: one key per item -------------------------------------------------------------------
# plan -> tool (a map over plan, also declaring cfg) -> summary (item-wise) -> answer; count
# (a dependent of the whole tool map). Every unit appends a line to the file ctx["log"] when
# it runs (processes too), which is not one of its cache keys.


def logged(ctx, line):
    with open(ctx["log"], "a", encoding="utf-8") as log:  # noqa: PTH123 - O_APPEND: whole lines
        log.write(line + "\n")


def map_plan(ctx):
    logged(ctx, "plan")
    return list(ctx["docs"])


def map_cfg(ctx):
    logged(ctx, "cfg")
    return ctx["suffix"]


def map_tool(ctx):
    logged(ctx, f"tool:{ctx.item}")
    return ctx.item.upper() + ctx["cfg"]


def map_tool_edited(ctx):
    logged(ctx, f"tool:{ctx.item}")
    return ctx.item.upper() + ctx["cfg"] + "*"


def map_summary(ctx):
    logged(ctx, f"summary:{ctx.item}")
    return ctx.item.lower()


def map_answer(ctx):
    logged(ctx, "answer")
    return "|".join(ctx["summary"])


def map_count(ctx):
    logged(ctx, "count")
    return len(ctx["tool"])


def mapped_agent(p):
    p.add_unit(map_plan, name="plan", metadata={"cacheable": True, "cache_keys": ["docs"]})
    p.add_unit(map_cfg, name="cfg", metadata={"cacheable": True, "cache_keys": ["suffix"]})
    p.add_map(
        map_tool, over="plan", name="tool", dependencies=["cfg"], metadata=cached(cache_keys=[])
    )
    p.add_map(map_summary, over="tool", name="summary", metadata=cached(cache_keys=[]))
    p.add_unit(map_answer, ["summary"], name="answer", metadata=cached(cache_keys=[]))
    p.add_unit(map_count, ["tool"], name="count", metadata=cached(cache_keys=[]))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_map_items_are_keyed_by_their_item_not_their_index_nor_the_whole_list(tmp_path, mode):
    """Appending a document recomputes its item (and item-wise downstream) only; reordering
    recomputes no item; a declared dependency or the map's function recomputes every item; a
    dependent of the map recomputes whenever its list changes."""
    log = tmp_path / "log.txt"

    def run(p, docs, suffix="-x"):
        before = log.read_text().splitlines() if log.exists() else []
        results = p.execute({"docs": docs, "suffix": suffix, "log": str(log)}, execution_mode=mode)
        return results, sorted(log.read_text().splitlines()[len(before) :])

    with CachingQuantumPartitioner(max_workers=2, cache_path=tmp_path / "c.sqlite") as p:
        mapped_agent(p)
        results, ran = run(p, ["a", "b"])
        assert (results["answer"], results["count"]) == ("a-x|b-x", 2)
        assert ran == sorted(
            ["plan", "cfg", "tool:a", "tool:b", "summary:A-x", "summary:B-x", "answer", "count"]
        )
        assert run(p, ["a", "b"]) == (results, [])

        results, ran = run(p, ["a", "b", "c"])
        assert results["answer"] == "a-x|b-x|c-x"
        assert ran == ["answer", "count", "plan", "summary:C-x", "tool:c"]

        results, ran = run(p, ["c", "a", "b"])  # the same items at other indices
        assert results["summary"] == ["c-x", "a-x", "b-x"]
        assert ran == ["answer", "count", "plan"]  # the map's list is in a new order

        results, ran = run(p, ["c", "a", "b"], suffix="-y")  # the map's declared dependency
        assert results["answer"] == "c-y|a-y|b-y"
        assert ran == sorted(
            [
                "cfg",
                "tool:a",
                "tool:b",
                "tool:c",
                "summary:A-y",
                "summary:B-y",
                "summary:C-y",
                "answer",
                "count",
            ]
        )

        p.add_map(
            map_tool_edited,
            over="plan",
            name="tool",
            dependencies=["cfg"],
            metadata=cached(cache_keys=[]),
            replace=True,
        )
        results, ran = run(p, ["c", "a", "b"], suffix="-y")
        assert results["answer"] == "c-y*|a-y*|b-y*"
        assert ran == sorted(
            [
                "tool:a",
                "tool:b",
                "tool:c",
                "summary:A-y*",
                "summary:B-y*",
                "summary:C-y*",
                "answer",
                "count",
            ]
        )

        entries = {entry.unit for entry in p.cache_entries()}
        assert entries == {"plan", "cfg", "tool", "summary", "answer", "count"}
        assert p.clear_cache("tool") == 9  # 3 items, 3 versions: their entries are their map's
        assert run(p, ["c", "a", "b"], suffix="-y") == (results, ["tool:a", "tool:b", "tool:c"])
    assert p.cache_stats().skipped == 0


def test_items_of_a_map_on_incomplete_inputs_or_unfingerprintable_items_run_uncached(
    tmp_path, caplog
):
    """A map that started without all its inputs (a join rule) caches no item; an item with
    no fingerprint runs uncached, logged once for its map and counted per item."""
    log = tmp_path / "log.txt"
    context = {"log": str(log)}

    def broken(ctx):
        raise RuntimeError("no config")

    with CachingQuantumPartitioner() as p:
        p.add_unit(lambda ctx: ["a", "b"], name="plan")
        p.add_unit(broken, name="cfg")
        p.add_map(
            map_summary,
            over="plan",
            name="partial",
            dependencies=["cfg"],
            run_if="all_done",
            metadata=cached(cache_keys=[]),
        )
        p.add_unit(lambda ctx: [threading.Lock(), threading.Lock()], name="locks")
        p.add_map(lambda ctx: 1, over="locks", name="opaque", metadata=cached(cache_keys=[]))
        for _ in range(2):
            results = p.execute(context, execution_mode=SEQUENTIAL)
            assert (results["partial"], results["opaque"]) == (["a", "b"], [1, 1])
        assert sorted(log.read_text().splitlines()) == [
            "summary:a",
            "summary:a",
            "summary:b",
            "summary:b",
        ]
        stats = p.cache_stats()
        assert (stats.hits, stats.writes, stats.skipped) == (0, 0, 4)
    assert sum("map 'opaque'" in record.message for record in caplog.records) == 2  # once a run


# -- properties --------------------------------------------------------------------------------

CONTEXT_KEYS = ("k0", "k1", "k2")


@dataclass(frozen=True)
class Spec:
    """A random graph of cacheable units: deps[i] < i, and the context keys each one reads."""

    deps: tuple[tuple[int, ...], ...]
    reads: tuple[tuple[str, ...] | None, ...]  # None: no cache_keys (the whole context)

    def downstream(self, roots):
        found = set(roots)
        for i, row in enumerate(self.deps):  # deps point backwards: one pass suffices
            if found.intersection(row):
                found.add(i)
        return found


@st.composite
def specs(draw):
    n = draw(st.integers(1, 7))
    deps = tuple(
        tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        for i in range(n)
    )
    reads = tuple(
        draw(st.none() | st.lists(st.sampled_from(CONTEXT_KEYS), unique=True).map(tuple))
        for _ in range(n)
    )
    return Spec(deps, reads)


def salted(counter, name, keys, salt):
    """A unit whose code is the same for every salt, but whose closure is not."""

    def unit(ctx):
        counter.hit(name)
        upstream = ctx.unit_results
        return (name, salt, [ctx.get(k) for k in keys], [upstream[d] for d in sorted(upstream)])

    return unit


def build(partitioner, spec, counter, salts):
    for i, row in enumerate(spec.deps):
        keys = CONTEXT_KEYS if spec.reads[i] is None else spec.reads[i]
        metadata = cached() if spec.reads[i] is None else cached(cache_keys=list(spec.reads[i]))
        partitioner.add_unit(
            salted(counter, f"u{i}", keys, salts[i]),
            [f"u{j}" for j in row],
            name=f"u{i}",
            metadata=metadata,
        )


def uncached(spec, context, salts):
    plain = QuantumPartitioner()
    build(plain, spec, Counter(), salts)
    return plain.execute(context, execution_mode=SEQUENTIAL)


PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY_SETTINGS
@given(
    spec=specs(),
    values=st.tuples(*(st.integers(0, 3) for _ in CONTEXT_KEYS)),
    change=st.tuples(
        st.sampled_from(["context", "function"]), st.integers(0, 6), st.integers(4, 6)
    ),
    mode=st.sampled_from([ExecutionMode.SEQUENTIAL, ExecutionMode.THREAD]),
)
def test_property_reruns_and_changes_recompute_exactly_what_they_should(spec, values, change, mode):
    """Re-runs equal uncached runs and run nothing; one change reruns its unit and downstream.

    The change is either one context value (recomputing every unit that reads it) or one
    unit's function (its closure changes), and then exactly those units and every unit
    downstream of them run again, once each.
    """
    counter = Counter()
    salts = [0] * len(spec.deps)
    context = dict(zip(CONTEXT_KEYS, values, strict=True))
    with CachingQuantumPartitioner(max_workers=3, default_execution_mode=mode) as p:
        build(p, spec, counter, salts)
        first = p.execute(context)
        assert first == uncached(spec, context, salts)
        assert counter.take() == {f"u{i}": 1 for i in range(len(spec.deps))}
        assert p.execute(context) == first
        assert counter.take() == {}

        kind, index, new_value = change
        if kind == "context":
            key = CONTEXT_KEYS[index % len(CONTEXT_KEYS)]
            context = {**context, key: new_value}
            changed = {i for i, reads in enumerate(spec.reads) if reads is None or key in reads}
        else:
            unit = index % len(spec.deps)
            salts[unit] = 1
            keys = CONTEXT_KEYS if spec.reads[unit] is None else spec.reads[unit]
            p.add_unit(
                salted(counter, f"u{unit}", keys, 1),
                [f"u{j}" for j in spec.deps[unit]],
                name=f"u{unit}",
                metadata=p.units[f"u{unit}"].metadata,
                replace=True,
            )
            changed = {unit}
        after = p.execute(context)
        assert after == uncached(spec, context, salts)
        assert counter.take() == {f"u{i}": 1 for i in spec.downstream(changed)}


@PROPERTY_SETTINGS
@given(runs=st.lists(st.lists(st.integers(0, 4), max_size=5), min_size=1, max_size=4))
def test_property_a_map_recomputes_exactly_the_items_of_elements_it_has_not_seen(runs):
    """Runs over changing lists (appends, removals, reorderings, duplicates, empty lists):
    results equal an uncached run's; an element's item (and its item-wise child) runs once
    ever, the first time it is met; the dependent of the map runs once per distinct list."""
    counter = Counter()

    def tool(ctx):
        counter.hit(f"tool:{ctx.item}")
        return ctx.item * 10

    def summary(ctx):
        counter.hit(f"summary:{ctx.item}")
        return ctx.item + 1

    def answer(ctx):
        counter.hit("answer")
        return sum(ctx["summary"])

    metadata = cached(cache_keys=[])
    with CachingQuantumPartitioner(default_execution_mode=SEQUENTIAL) as p:
        p.add_unit(lambda ctx: ctx["docs"], name="plan", metadata={"cacheable": True})
        p.add_map(tool, over="plan", name="tool", metadata=metadata)
        p.add_map(summary, over="tool", name="summary", metadata=metadata)
        p.add_unit(answer, ["summary"], name="answer", metadata=metadata)
        seen: set[int] = set()
        lists: set[tuple[int, ...]] = set()
        for docs in runs:
            results = p.execute({"docs": docs})
            assert results["summary"] == [d * 10 + 1 for d in docs]
            assert results["answer"] == sum(d * 10 + 1 for d in docs)
            new = set(docs) - seen
            expected = {f"tool:{d}": 1 for d in new} | {f"summary:{d * 10}": 1 for d in new}
            if tuple(docs) not in lists:
                expected["answer"] = 1
            assert counter.take() == expected
            seen |= new
            lists.add(tuple(docs))


# -- the SQLite store: damage, format, permissions ---------------------------------------------


def sqlite_partitioner(path, counter):
    p = CachingQuantumPartitioner(cache_path=path, default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "a"), name="a", metadata=cached())
    p.add_unit(combining(counter, "b"), ["a"], name="b", metadata=cached())
    return p


def damage(path, unit, how):
    with sqlite3.connect(path) as db:
        payload, checksum = db.execute(
            "SELECT payload, checksum FROM entries WHERE unit = ?", (unit,)
        ).fetchone()
        if how == "flip":
            payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
        elif how == "torn":
            payload = payload[: len(payload) // 2]
        elif how == "checksum":
            checksum ^= 1
        elif how == "garbage":  # a valid checksum over bytes that are no pickle
            from quantum_partitioner.caching._stores import checksum as make_checksum  # noqa: PLC0415

            key = db.execute("SELECT key FROM entries WHERE unit = ?", (unit,)).fetchone()[0]
            payload = b"not a pickle"
            checksum = make_checksum(key, payload)
        db.execute(
            "UPDATE entries SET payload = ?, checksum = ? WHERE unit = ?",
            (payload, checksum, unit),
        )
    db.close()


@pytest.mark.parametrize("how", ["flip", "torn", "checksum", "garbage"])
def test_damaged_entry_is_recomputed_not_returned(tmp_path, how, caplog):
    """A damaged payload is detected, recomputed and overwritten; downstream still hits."""
    path = tmp_path / "c.sqlite"
    counter = Counter()
    with sqlite_partitioner(path, counter) as p:
        first = p.execute()
    damage(path, "a", how)
    counter.take()
    with sqlite_partitioner(path, counter) as p, caplog.at_level(logging.WARNING):
        assert p.execute() == first
        assert counter.take() == {"a": 1}
        assert p.cache_stats().corrupt == 1
        assert p.execute() == first
        assert counter.take() == {}
    assert "recomputed" in caplog.text


# The schema of format versions 1 and 2 (they differed only in their checksum).
_OLD_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    (
        "CREATE TABLE entries (key BLOB PRIMARY KEY, unit TEXT NOT NULL, payload BLOB NOT NULL,"
        " checksum BLOB NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,"
        " accessed REAL NOT NULL)"
    ),
    "CREATE INDEX entries_unit ON entries (unit)",
    "CREATE INDEX entries_accessed ON entries (accessed)",
)


def _old_checksum(version, key, payload):
    if version == 1:
        return hashlib.blake2b(key + payload, digest_size=16).digest()
    return zlib.crc32(payload, zlib.crc32(key)).to_bytes(4, "big")


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_store_is_upgraded_keeping_its_valid_entries(tmp_path, version):
    """A store of format version 1 (BLAKE2b-128 checksums) or 2 (CRC-32 as 4 bytes, an index
    on unit) is upgraded in place when opened: an entry whose old checksum holds is served,
    a damaged one is recomputed, and the file then has this version's schema."""
    counter = Counter()

    def build(path):
        p = CachingQuantumPartitioner(cache_path=path)
        for name in ("a", "b"):
            p.add_unit(combining(counter, name), name=name, metadata=cached())
        return p

    with build(tmp_path / "new.sqlite") as p:  # the entries, as this version writes them
        first = p.execute()
    assert counter.take() == {"a": 1, "b": 1}
    with contextlib.closing(sqlite3.connect(tmp_path / "new.sqlite")) as db:
        rows = db.execute("SELECT key, unit, payload, size, created, accessed FROM entries")
        rows = rows.fetchall()
    path = tmp_path / "old.sqlite"
    path.touch(mode=0o600)
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # a real old file, "b" damaged
        for statement in _OLD_SCHEMA:
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(version),))
        for key, unit, payload, size, created, accessed in rows:
            stored = _old_checksum(version, key, payload if unit == "a" else payload + b"!")
            db.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, unit, payload, stored, size, created, accessed),
            )
    with build(path) as p:
        assert p.execute() == first
        assert counter.take() == {"b": 1}
        assert p.execute() == first  # b's new entry is served
        assert counter.take() == {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("3",)
        indexes = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        assert ("entries_unit",) not in indexes
        assert "entries_old" not in {
            name for (name,) in db.execute("SELECT name FROM sqlite_master")
        }
        assert {type(c) for (c,) in db.execute("SELECT checksum FROM entries")} == {int}


def test_a_new_store_has_no_index_but_its_key_until_a_size_limit_needs_one(tmp_path):
    """Each index costs every write: a store made without a size limit has only its key's;
    opening it with a limit adds the one on ``accessed`` that eviction reads."""
    path = tmp_path / "c.sqlite"

    def indexes():
        with contextlib.closing(sqlite3.connect(path)) as db:
            query = "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            return {name for (name,) in db.execute(query)}

    with SQLiteStore(path) as store:
        store.put(b"k" * 32, "u", b"payload")
    assert indexes() == set()
    with SQLiteStore(path, 10_000) as store:
        assert store.get(b"k" * 32) == b"payload"
    assert indexes() == {"entries_accessed"}


def test_upgrading_a_version_1_store_holds_a_few_entries_in_memory_not_all(tmp_path):
    """A store of many large results is upgraded a few rows at a time: reading it whole
    could not open a cache larger than the memory."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        for i in range(64):
            store.put(b"%032d" % i, "u", bytes([i]) * (1 << 19))  # 32 MiB in all
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, payload FROM entries").fetchall()
        old = [(hashlib.blake2b(key + data, digest_size=16).digest(), key) for key, data in rows]
        db.executemany("UPDATE entries SET checksum = ? WHERE key = ?", old)
        db.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
    db.close()
    del rows, old
    tracemalloc.start()
    try:
        store = SQLiteStore(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with store:
        assert peak < 4 << 20  # a 512 KiB entry or two at a time; 32 MiB at once
        assert store.get(b"%032d" % 63) == bytes([63]) * (1 << 19)
        assert len(store) == 64


def test_other_format_version_is_a_clear_error(tmp_path):
    """A store of another format version raises ValueError naming both versions, and is
    left as it was, its entries too."""
    version = "99"
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        store.put(b"k" * 32, "u", b"payload")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (version,))
    db.close()
    with pytest.raises(ValueError, match=rf"format version {version}.*reads version 3"):
        CachingQuantumPartitioner(cache_path=path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == (version,)
        assert db.execute("SELECT unit, payload FROM entries").fetchall() == [("u", b"payload")]
    db.close()


def test_files_that_are_not_stores_are_refused(tmp_path):
    """A text file or someone else's SQLite database is refused, untouched."""
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 100)
    with pytest.raises(ValueError, match="not a quantum-partitioner cache"):
        SQLiteStore(text)
    assert text.read_text() == "hello " * 100
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    with pytest.raises(ValueError, match=r"not a quantum-partitioner cache.*users"):
        SQLiteStore(other)


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_store_file_is_private_to_its_owner(tmp_path, umask):
    """The file (and its WAL) is created with mode 0o600 whatever the umask."""
    path = tmp_path / "c.sqlite"
    old = os.umask(umask)
    try:
        store = SQLiteStore(path)
        store.put(b"k" * 32, "a", b"payload")
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in tmp_path.iterdir()
            if p.name.startswith("c.sqlite")
        }
        store.close()
    finally:
        os.umask(old)
    assert modes["c.sqlite"] == 0o600
    assert set(modes.values()) == {0o600}


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling", "to-a-store"])
def test_defect_13_a_symlinked_cache_path_is_refused(tmp_path, dangling):
    """Issue 9 defect 13: a cache_path that is a symbolic link is refused, naming it.

    Followed, a dangling link made the store wherever it pointed, with the umask's mode.
    """
    target = tmp_path / "target.sqlite"
    if not dangling:
        SQLiteStore(target).close()
    link = tmp_path / "link.sqlite"
    link.symlink_to(target)
    with pytest.raises(ValueError, match=rf"cache_path '{link}' is a symbolic link"):
        CachingQuantumPartitioner(cache_path=link)
    assert target.exists() is not dangling


def test_defect_13_a_path_swapped_for_a_link_while_opening_is_refused(tmp_path, monkeypatch):
    """A link planted between the check and SQLite's open (a race) is caught after it."""
    path, elsewhere = tmp_path / "c.sqlite", tmp_path / "elsewhere.sqlite"
    connect = sqlite3.connect

    def planting_connect(target, *args, **kwargs):  # the attacker wins the race
        path.unlink()
        path.symlink_to(elsewhere)
        return connect(target, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", planting_connect)
    with pytest.raises(ValueError, match=r"was replaced .* while it was being opened"):
        SQLiteStore(path)


def test_defect_13_a_store_others_may_write_is_warned_about(tmp_path):
    """Issue 9 defect 13: opening an existing store writable by group or others warns."""
    path = tmp_path / "c.sqlite"
    SQLiteStore(path).close()
    path.chmod(0o664)
    with pytest.warns(qp.InsecureCacheWarning, match=rf"'{path}' is writable by its group"):
        SQLiteStore(path).close()
    path.chmod(0o600)
    SQLiteStore(path).close()  # no warning: pytest turns warnings into errors


def test_defect_16_a_directory_as_cache_path_is_an_os_error_naming_it(tmp_path):
    """Issue 9 defect 16: a directory gives IsADirectoryError with the path, not sqlite3's."""
    with pytest.raises(IsADirectoryError, match="cache_path is a directory") as info:
        CachingQuantumPartitioner(cache_path=tmp_path)
    assert info.value.filename == str(tmp_path)


def test_defect_16_a_place_that_cannot_hold_a_store_is_an_os_error_naming_it(tmp_path):
    """Issue 9 defect 16: a path SQLite cannot use (here: its -wal is a directory) names it."""
    (tmp_path / "c.sqlite-wal").mkdir()
    with pytest.raises(OSError, match="cannot open the cache store") as info:
        CachingQuantumPartitioner(cache_path=tmp_path / "c.sqlite")
    assert not isinstance(info.value, sqlite3.Error)
    assert info.value.filename == str(tmp_path / "c.sqlite")
    beneath_a_file = tmp_path / "file"
    beneath_a_file.write_text("")
    with pytest.raises(OSError, match=rf"cannot create the cache store '{beneath_a_file}/c"):
        CachingQuantumPartitioner(cache_path=beneath_a_file / "c.sqlite")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any file")
def test_defect_16_an_unwritable_store_is_a_permission_error_naming_it(tmp_path):
    """Issue 9 defect 16: a store this process may not write gives PermissionError."""
    path = tmp_path / "c.sqlite"
    SQLiteStore(path).close()
    path.chmod(0o400)
    with pytest.raises(PermissionError, match="not readable and writable") as info:
        CachingQuantumPartitioner(cache_path=path)
    assert info.value.filename == str(path)


def test_killed_writer_mid_transaction_leaves_no_entry(tmp_path):
    """A transaction that never commits (the writer died) leaves the store as it was."""
    path = tmp_path / "c.sqlite"
    store = SQLiteStore(path)
    store.put(b"a" * 32, "a", b"kept")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM entries")
    db.execute(
        "INSERT INTO entries VALUES (?, 'b', X'00', X'00', 1, 0, 0)",
        (b"b" * 32,),
    )
    db.close()  # closing without COMMIT rolls back, as the death of the process does
    assert store.get(b"a" * 32) == b"kept"
    assert store.get(b"b" * 32) is None
    store.close()


# -- management --------------------------------------------------------------------------------


def test_clear_all_or_one_unit(make):
    """clear_cache() empties the store; clear_cache(unit) drops that unit's entries only."""
    counter = Counter()
    p = make(default_execution_mode=SEQUENTIAL)
    diamond(p, counter)
    p.execute({"x": 1})
    p.execute({"x": 2})
    assert len(p.cache) == 10
    assert p.clear_cache("b") == 2
    assert {e.unit for e in p.cache_entries()} == {"a", "c", "d", "side"}
    counter.take()
    p.execute({"x": 2})
    assert counter.take() == {"b": 1}  # d's key depends on b's key, which did not change
    assert p.clear_cache() == 9
    assert len(p.cache) == 0
    p.cache.clear()  # the original API's dict-like call still works


def test_entries_list_sizes_and_ages(make):
    """cache_entries() lists unit, key, payload size and times, most recently used first."""
    p = make(default_execution_mode=SEQUENTIAL)
    p.add_unit(lambda ctx: b"x" * 1000, name="big", metadata={"cacheable": True})
    p.add_unit(lambda ctx: 1, name="small", metadata={"cacheable": True})
    p.execute()
    p.execute()
    entries = p.cache_entries()
    assert all(isinstance(e, CacheEntry) for e in entries)
    by_unit = {e.unit: e for e in entries}
    assert set(by_unit) == {"big", "small"}
    assert by_unit["big"].size > 1000 > by_unit["small"].size
    assert len(by_unit["big"].key) == 64
    for entry in entries:
        assert 0 <= entry.age < 60
        assert 0 <= entry.idle <= entry.age
        assert entry.accessed >= entry.created
    assert [e.unit for e in p.cache_entries("small")] == ["small"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_size_limit_evicts_least_recently_used(tmp_path, kind):
    """Over the limit, the entry read or written longest ago goes first."""
    store = MemoryStore(2500) if kind == "memory" else SQLiteStore(tmp_path / "c.sqlite", 2500)
    with store:
        for name in "abc":  # two fit
            store.put(name.encode() * 32, name, b"x" * 1000)
        assert {e.unit for e in store.entries()} == {"b", "c"}
        assert store.get(b"b" * 32) == b"x" * 1000  # b is now more recent than c
        store.put(b"d" * 32, "d", b"x" * 1000)
        assert {e.unit for e in store.entries()} == {"b", "d"}
        assert store.total_size() == 2000
        store.put(b"e" * 32, "e", b"x" * 3000)  # bigger than the limit: not stored
        assert len(store) == 2


def test_size_limit_through_the_partitioner(make):
    """cache_size_limit keeps the store under its limit while runs go on."""
    p = make(default_execution_mode=SEQUENTIAL, cache_size_limit=3000)
    for i in range(6):
        p.add_unit(lambda ctx: b"y" * 900, name=f"u{i}", metadata={"cacheable": True})
    p.execute()
    assert p.cache_stats().size_bytes <= 3000
    assert len(p.cache) == 3
    assert {e.unit for e in p.cache_entries()} == {"u3", "u4", "u5"}


def test_constructor_checks_its_cache_arguments(tmp_path):
    """Bad limits and conflicting store arguments are plain TypeError/ValueError."""
    with pytest.raises(ValueError, match="greater than 0"):
        CachingQuantumPartitioner(cache_size_limit=0)
    with pytest.raises(TypeError, match="cache_size_limit"):
        CachingQuantumPartitioner(cache_size_limit=1.5)
    with pytest.raises(ValueError, match="not both"):
        CachingQuantumPartitioner(cache_store=MemoryStore(), cache_path=tmp_path / "x")
    with pytest.raises(TypeError, match="CacheStore"):
        CachingQuantumPartitioner(cache_store={})


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(math.nan, ValueError), (math.inf, ValueError), (-1, ValueError), (True, TypeError)],
)
def test_sqlite_store_checks_its_timeout_naming_it(tmp_path, timeout, error):
    """A NaN, infinite, negative or bool timeout is refused naming it, before the file is made."""
    with pytest.raises(error, match="SQLiteStore: timeout must be"):
        SQLiteStore(tmp_path / "c.db", timeout=timeout)
    assert not (tmp_path / "c.db").exists()


def test_a_store_can_be_shared_by_partitioners():
    """Two partitioners on one MemoryStore serve each other's results."""
    store = MemoryStore()
    counter = Counter()
    for _ in range(2):
        p = CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL)
        p.add_unit(combining(counter, "a"), name="a", metadata=cached())
        p.execute()
    assert counter.take() == {"a": 1}
    assert "MemoryStore" in repr(p)


def test_concurrent_lookups_and_writes_on_threads(make):
    """Many units on 8 threads: every result stored once, then every one served."""
    p = make(max_workers=8, default_execution_mode=ExecutionMode.THREAD)
    for i in range(200):
        p.add_unit(square, name=f"u{i}", metadata={"cacheable": True, "cache_keys": ["n"]})
    first = p.execute({"n": 3})
    assert p.execute({"n": 3}) == first
    stats = p.cache_stats()
    assert (stats.hits, stats.misses, stats.writes, stats.entries) == (200, 200, 200, 200)


@pytest.mark.parametrize("mode", [ExecutionMode.SEQUENTIAL, ExecutionMode.THREAD])
def test_a_timed_out_attempt_leaves_nothing_in_the_cache(mode):
    """A result that arrives after the unit's timeout is neither cached nor kept as a metric."""

    def slow(ctx):
        ctx.record_metric("late", value=1)
        time.sleep(0.4)
        return 42

    p = CachingQuantumPartitioner()
    p.add_unit(slow, name="slow", timeout=0.1, metadata={"cacheable": True})
    for _ in range(2):
        assert p.execute({}, execution_mode=mode) == {}
        assert p.units["slow"].state is UnitState.TIMEOUT
    assert p.cache_hits == 0
    assert "slow" not in (p.last_execution_metrics or {})["unit_metrics"]


# -- bulk reads before a run -------------------------------------------------------------------


def test_prefetch_serves_from_memory_until_flush(tmp_path):
    """Prefetched entries are served without a query, misses known up front too, until flush."""
    path = tmp_path / "c.sqlite"
    present, absent = b"p" * 32, b"a" * 32
    with SQLiteStore(path) as store:
        store.put(present, "p", b"payload")
        store.flush()
        store.prefetch([present, absent])
        with sqlite3.connect(path) as other:  # another process changes the file meanwhile
            other.execute("DELETE FROM entries")
        other.close()
        store.put(b"x" * 32, "x", b"new")  # written by this process: seen at once
        assert store.get(present) == b"payload"  # read ahead: still served
        assert store.get(absent) is None
        assert store.get(b"x" * 32) == b"new"
        store.prefetch([present])
        store.flush()  # the end of a run: what was read ahead is dropped
        assert store.get(present) is None


def test_prefetched_damaged_entry_is_dropped_not_served(tmp_path):
    """A damaged entry read ahead is checked at the lookup: dropped, counted, never returned."""
    path = tmp_path / "c.sqlite"
    key = b"k" * 32
    with SQLiteStore(path) as store:
        store.put(key, "k", b"payload")
        store.flush()
        with sqlite3.connect(path) as other:
            other.execute("UPDATE entries SET payload = ?", (b"payloaD",))
        other.close()
        store.prefetch([key])
        assert store.get(key) is None
        assert (store.corrupt, len(store)) == (1, 0)


@pytest.mark.parametrize("others", [0, 300, 2_000], ids=["alone", "read-whole", "read-by-key"])
def test_prefetch_serves_the_same_whether_it_reads_the_store_whole_or_by_key(tmp_path, others):
    """600 keys read ahead from a store holding them and ``others`` more: a store up to twice
    their number is read whole, a larger one by key. Either way every entry is served from
    memory (another process deletes them meanwhile), large payloads too, the absent keys are
    known absent, and a damaged entry is dropped, never served."""
    path = tmp_path / "c.sqlite"
    keys = [b"%032d" % i for i in range(600)]
    large = b"L" * (40 << 10)  # over what a whole read takes: read by key after it
    with SQLiteStore(path) as store:
        for i, key in enumerate(keys[:500]):
            store.put(key, f"u{i}", large if i == 7 else b"p%d" % i)
        for i in range(others):
            store.put(b"o%031d" % i, f"o{i}", b"other")
        store.flush()
        with sqlite3.connect(path) as other:  # damage one entry
            other.execute("UPDATE entries SET payload = ? WHERE key = ?", (b"pX", keys[3]))
        other.close()
        store.prefetch(keys)
        with sqlite3.connect(path) as other:  # another process deletes the rest meanwhile
            other.execute("DELETE FROM entries WHERE key != ?", (keys[3],))
        other.close()
        assert store.get(keys[7]) == large
        assert store.get(keys[3]) is None
        assert store.corrupt == 1
        assert [store.get(key) for key in keys[8:500]] == [b"p%d" % i for i in range(8, 500)]
        assert all(store.get(key) is None for key in keys[500:])


def test_a_burst_of_writes_shares_transactions_and_each_is_committed_soon(tmp_path):
    """Writes 1 ms apart share transactions (the writer lets a burst gather for 10 ms), and
    each is committed without a flush, readable by another process soon after."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        transactions = []
        store._connection().set_trace_callback(
            lambda sql: transactions.append(sql) if sql == "BEGIN IMMEDIATE" else None
        )
        for i in range(100):
            store.put(b"%032d" % i, "u", b"payload")
            time.sleep(0.001)
        deadline = time.monotonic() + 30
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as other:
            while other.execute("SELECT COUNT(*) FROM entries").fetchone()[0] < 100:
                assert time.monotonic() < deadline, "the writes were never committed"
                time.sleep(0.005)
        assert len(transactions) <= 40  # one per write would be 100


def test_a_commit_of_many_rows_stores_each_one_whole(tmp_path):
    """250 writes committed together (several rows per INSERT, and the rest one by one):
    each entry is stored with its own unit, payload and size."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        for i in range(250):
            store.put(b"%032d" % i, f"u{i}", b"x" * i)
        store.flush()
        entries = {entry.unit: entry for entry in store.entries()}
        assert len(entries) == 250
        assert all(entries[f"u{i}"].size == i for i in range(250))
        assert all(entries[f"u{i}"].key == (b"%032d" % i).hex() for i in range(250))
    with SQLiteStore(path) as store:  # a fresh process's view: read from the file
        assert [store.get(b"%032d" % i) for i in range(250)] == [b"x" * i for i in range(250)]


def test_a_unit_name_sqlite_cannot_store_costs_only_that_unit_its_entry(tmp_path, caplog):
    """A name with a lone surrogate (``os.fsdecode`` of a bad file name) cannot be written as
    UTF-8: that unit runs uncached, the others of its batch are committed."""
    path = tmp_path / "c.sqlite"
    bad = "file-\udcff"

    def build():
        p = CachingQuantumPartitioner(cache_path=path)
        for name in ("a", bad, "b"):
            p.add_unit(lambda ctx, name=name: name, name=name, metadata={"cacheable": True})
        return p

    with build() as p:
        assert p.execute({}, SEQUENTIAL)[bad] == bad
        assert p.cache_stats().errors == 1
    assert repr(bad) in caplog.text
    with build() as p:
        p.execute({}, SEQUENTIAL)
        assert (p.cache_hits, p.cache_misses) == (2, 1)
        assert (p.cache_entries(bad), p.clear_cache(bad)) == ([], 0)
        assert len(p.cache_entries()) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_through_its_own_connection(tmp_path):
    """A child forked from a process using the store writes its own results (its own
    connection and queue, set up at its first write); the parent's stay as they were."""
    path = tmp_path / "c.sqlite"
    with SQLiteStore(path) as store:
        store.put(b"p" * 32, "parent", b"mine")
        store.flush()
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                store.put(b"c" * 32, "child", b"yours")
                store.flush()
                code = 0 if store.get(b"c" * 32) == b"yours" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get(b"c" * 32) == b"yours"
        assert store.get(b"p" * 32) == b"mine"


def test_a_warm_run_sees_every_change_to_a_unit_s_fixed_part():
    """The fixed key parts a run computed are reused by the next run of the same graph only
    while the function, the context part and the version are the same: a function swapped
    in, a ``cache_keys`` list changed in place and a context change each recompute."""
    counter = Counter()
    p = CachingQuantumPartitioner(default_execution_mode=SEQUENTIAL)
    p.add_unit(combining(counter, "a", ["x"]), name="a", metadata=cached(cache_keys=["x"]))
    p.add_unit(combining(counter, "b"), ["a"], name="b", metadata=cached(cache_keys=[]))
    p.execute({"x": 1, "y": 1})
    p.execute({"x": 1, "y": 2})
    assert counter.take() == {"a": 1, "b": 1}
    p.units["a"].metadata["cache_keys"].append("y")  # the same list, now longer
    p.execute({"x": 1, "y": 2})
    assert counter.take() == {"a": 1, "b": 1}
    p.execute({"x": 1, "y": 3})
    assert counter.take() == {"a": 1, "b": 1}
    p.units["b"].function = combining(counter, "b2")
    p.execute({"x": 1, "y": 3})
    assert counter.take() == {"b2": 1}
    stats = p.cache_stats()
    assert (stats.hits, stats.misses, stats.writes) == (3, 7, 7)
    p.units["a"].metadata["cacheable"] = False  # b now keys on a's result, not a's key
    p.execute({"x": 1, "y": 3})
    assert counter.take() == {"a": 1, "b2": 1}
    p.execute({"x": 1, "y": 3})
    assert counter.take() == {"a": 1}
    p.units["a"].metadata["cacheable"] = True  # and back: both served
    p.execute({"x": 1, "y": 3})
    assert counter.take() == {}


class RecordingStore(MemoryStore):
    """A memory store that records the keys prefetched and looked up."""

    def __init__(self):
        super().__init__()
        self.prefetched = []
        self.looked_up = []

    def prefetch(self, keys):
        self.prefetched.extend(keys)

    def get(self, key):
        self.looked_up.append(key)
        return super().get(key)


def test_run_prefetches_the_keys_it_looks_up():
    """Before a run, every key known up front is prefetched: those it then looks up.

    a -> b -> c are cacheable (known), e depends on the non-cacheable d (known at run time).
    """
    store = RecordingStore()
    p = CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL)
    counter = Counter()
    for name, deps in (("a", []), ("b", ["a"]), ("c", ["b", "a"]), ("e", ["d"])):
        p.add_unit(combining(counter, name), deps, name=name, metadata=cached())
    p.add_unit(combining(counter, "d"), name="d")
    p.execute()
    assert len(store.prefetched) == 3
    assert set(store.prefetched) < set(store.looked_up)
    assert len(store.looked_up) == 4
    store.prefetched.clear()
    store.looked_up.clear()
    p.execute()
    assert counter.take() == {"a": 1, "b": 1, "c": 1, "d": 2, "e": 1}
    assert set(store.prefetched) < set(store.looked_up)


@pytest.mark.parametrize("mode", [ExecutionMode.SEQUENTIAL, ExecutionMode.THREAD])
def test_keys_are_composed_as_the_key_format_says(mode):
    """Keys are content addresses kept in stores across versions: their composition is fixed.

    a, b1 and b2 are roots (b2 with a version, both reading no context), c depends on a
    and b1 (its key is known before the run), d on the non-cacheable plain (its key takes
    plain's result). Recomputed here from the parts as docs/caching.md spells them.
    """
    p = CachingQuantumPartitioner(default_execution_mode=mode, max_workers=2)
    counter = Counter()
    p.add_unit(combining(counter, "plain"), name="plain")
    for name, deps, extra in (
        ("a", [], {"cache_keys": []}),
        ("b1", [], {"cache_keys": []}),
        ("b2", [], {"cache_keys": [], "cache_version": 2}),
        ("c", ["b1", "a"], {"cache_keys": []}),
        ("d", ["plain"], {"cache_keys": []}),
    ):
        p.add_unit(combining(counter, name), deps, name=name, metadata=cached(**extra))
    results = p.execute({"unread": 1})

    def label(name):
        return b"%d:%s" % (len(name), name.encode())

    def fixed(name, version=b"0:"):
        function = p._fingerprints[name][2]
        no_context = _fingerprint.digest(b"")
        return _fingerprint.digest(
            b"quantum-partitioner cache key v1\0" + label(name) + function + no_context + version
        )

    two = _fingerprint.fingerprint(2)
    expected = {
        "a": fixed("a"),
        "b1": fixed("b1"),
        "b2": fixed("b2", b"%d:%s" % (len(two), two)),
    }
    expected["c"] = _fingerprint.digest(
        fixed("c") + label("a") + b"k" + expected["a"] + label("b1") + b"k" + expected["b1"]
    )
    plain_result = _fingerprint.fingerprint(results["plain"])
    expected["d"] = _fingerprint.digest(fixed("d") + label("plain") + b"v" + plain_result)
    assert {e.unit: bytes.fromhex(e.key) for e in p.cache_entries()} == expected


def test_a_map_prefetches_its_items_keys_as_it_expands(tmp_path):
    """plan -> tool (3 items) -> summary (item-wise) -> answer: every key the run looks up
    is prefetched, the items' as their map expands; the map itself is never looked up."""
    store = RecordingStore()
    with CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL) as p:
        mapped_agent(p)
        context = {"docs": ["a", "b", "c"], "suffix": "-x", "log": str(tmp_path / "log")}
        first = p.execute(context)
        assert len(store.looked_up) == 2 + 3 + 3 + 2  # plan, cfg; items; answer, count
        store.prefetched.clear()
        store.looked_up.clear()
        assert p.execute(context) == first
    assert p.cache_hits == 10
    assert len(store.prefetched) == 8  # answer and count key on the maps, known at run time
    assert set(store.prefetched) < set(store.looked_up)


def test_interpreter_exit_right_after_a_warm_run_writes_read_times(tmp_path):
    """Exiting at once after a run of hits: no crash, results and read times in the file."""
    path = tmp_path / "c.sqlite"
    program = f"""
import quantum_partitioner as qp
p = qp.CachingQuantumPartitioner(cache_path={str(path)!r}, default_execution_mode="sequential")
cacheable = {{"metadata": {{"cacheable": True}}}}
p.add_units({{f"u{{i}}": (lambda ctx: 1, [], cacheable) for i in range(300)}})
p.execute()
p.execute()
assert p.cache_hits == 300
"""
    done = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT count(*), sum(accessed > created) FROM entries").fetchone()
    db.close()
    assert rows == (300, 300)


def test_ints_longer_than_the_str_conversion_limit_are_fingerprinted_alike_everywhere():
    """An int of more digits than int-to-str conversion allows is a plain value like others.

    It was refused with Python's ValueError: at add_unit when taken the long way, at the run
    when a closure kept it for its digest, in the context at the run. Its key does not depend
    on the process's sys.set_int_max_str_digits either (a lowered limit is what a caller who
    guards its own parsing may have set).
    """
    huge, medium = 10**5000 + 7, -(10**1000) - 3
    store = MemoryStore()

    def build(values, context):
        p = CachingQuantumPartitioner(cache_store=store, default_execution_mode=SEQUENTIAL)
        for value in values:
            p.add_unit(make_closure(value)[0], name=f"u{value % 97}", metadata={"cacheable": True})
        result = p.execute(context)
        return result, (p.cache_hits, p.cache_misses)

    first = build([1, huge, medium], {"x": huge})  # the second and third are kept for the run
    assert first == ({"u1": 1, f"u{huge % 97}": huge, f"u{medium % 97}": medium}, (0, 3))
    assert build([huge], {"x": huge})[1] == (1, 0)  # taken the long way: the same key
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        assert build([medium], {"x": huge})[1] == (1, 0)
    finally:
        sys.set_int_max_str_digits(limit)
    assert build([huge + 1], {"x": huge})[1] == (0, 1)
    assert build([huge], {"x": huge - 1})[1] == (0, 1)
    assert _fingerprint.fingerprint(huge) != _fingerprint.fingerprint(-huge)
    assert _fingerprint.fingerprint(10**700) == _fingerprint.fingerprint(10**700)
    # the int parts of a Fraction and a range too
    assert _fingerprint.fingerprint(Fraction(huge, 3)) != _fingerprint.fingerprint(
        Fraction(huge, 7)
    )
    assert _fingerprint.fingerprint(range(huge)) != _fingerprint.fingerprint(range(huge + 1))


def make_over_a_closure(value):
    """A closure whose one closure value is another closure (of make_closure's code)."""
    inner = make_closure(value)[0]

    def unit(ctx):
        return inner(ctx)

    return unit


def make_unassigned():
    """A closure whose cell is never assigned (its variable is bound after the return)."""

    def unit(ctx):
        return later

    if unit:
        return unit
    later = 1  # never reached: the cell stays empty
    return unit


def test_closures_kept_for_the_run_are_keyed_as_the_long_way_for_every_kind_of_value():
    """Each closure of one build is keyed as the same closure taken alone, and no two alike.

    Values that compare equal but must not share a key (True and 1, -0.0 and 0.0, "a" and
    b"a"), an unassigned cell, a closure over a closure (which is encoded, not kept) and
    units of one code object of which only some leave a variable out (cache_ignore); a
    function replaced after add_unit is keyed as the new one.
    """
    values = [1, True, 0, False, 1.0, -0.0, 0.0, math.nan, 10**100, "a", b"a", "", b"", None]
    specs = [(make_closure(value)[0], frozenset()) for value in values]
    specs += [(make_over_a_closure(2), frozenset()), (make_over_a_closure(3), frozenset())]
    specs += [(make_unassigned(), frozenset()), (make_unassigned(), frozenset())]
    specs += [(make_closure(k)[0], frozenset({"value"})) for k in (4, 5)]
    p = CachingQuantumPartitioner(cache_store=MemoryStore(), default_execution_mode=SEQUENTIAL)
    for k, (function, ignore) in enumerate(specs):
        metadata = {"cacheable": True}
        if ignore:
            metadata["cache_ignore"] = sorted(ignore)
        p.add_unit(function, name=f"u{k}", metadata=metadata)
    p.add_unit(make_closure(98)[0], name="replaced", metadata={"cacheable": True})
    replacing = make_closure(99)[0]
    p.units["replaced"].function = replacing  # after add_unit: keyed as the new function
    keyed = [p._function_fingerprint(p.units[f"u{k}"]) for k in range(len(specs))]
    assert keyed == [_fingerprint.function_fingerprint(fn, ignore) for fn, ignore in specs]
    replaced = p._function_fingerprint(p.units["replaced"])
    assert replaced == _fingerprint.function_fingerprint(replacing)
    # every value its own key but the two unassigned cells and the two ignored values
    assert len(set(keyed)) == len(keyed) - 2


def test_read_times_of_many_entries_are_all_written(tmp_path):
    """Read times go to the file a few hundred keys per statement: every one of them."""
    path = tmp_path / "c.sqlite"
    keys = [i.to_bytes(32, "big") for i in range(1234)]
    with SQLiteStore(path) as store:
        for key in keys:
            store.put(key, "u", b"payload")
    time.sleep(0.01)  # the clock moves on between the writes and the reads
    with SQLiteStore(path) as store:
        store.prefetch(keys)
        assert all(store.get(key) == b"payload" for key in keys)
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT count(*), sum(accessed > created) FROM entries").fetchone()
    assert rows == (1234, 1234)


def test_an_entry_read_ahead_while_queued_is_found_once_committed(tmp_path):
    """A key put, then read ahead (a map's items, as it expands) before its batch commits,
    is not in the file yet; once the writer thread commits it, it is found, not missed."""
    with SQLiteStore(tmp_path / "c.sqlite") as store:
        with store._lock:  # the writer thread cannot commit in between
            store.put(b"k" * 32, "u", b"payload")
            store.prefetch([b"k" * 32])
        deadline = time.monotonic() + 30
        while store._queued or store._committing:  # the writer thread commits it
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert store.get(b"k" * 32) == b"payload"
