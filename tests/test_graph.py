"""Layer 1: unit validation, graph compilation, levels and the critical path."""

from __future__ import annotations

import copy
import graphlib
import itertools
import math
import pickle
import sys

import pytest

from quantum_partitioner import (
    CircularDependency,
    CircularDependencyError,
    DuplicateUnitError,
    ExecutionMode,
    GraphError,
    JoinRule,
    QuantumPartitioner,
    QuantumUnit,
    RetryPolicy,
    UnitState,
    UnknownDependencyError,
    at_least,
)
from quantum_partitioner._graph import Graph, compile_graph, validate_unit
from quantum_partitioner._joins import ALL_SUCCESS, join_rule


def noop(ctx):
    return None


def other(ctx):
    return 1


def units_from(spec, **metadata_by_name):
    """QuantumUnits from ``{name: [dependencies]}``, in the dict's order."""
    return [
        QuantumUnit(name, noop, list(deps), metadata=metadata_by_name.get(name))
        for name, deps in spec.items()
    ]


def graph_of(spec, **metadata_by_name) -> Graph:
    return compile_graph(units_from(spec, **metadata_by_name))


def named_levels(graph):
    return [[graph.names[i] for i in level] for level in graph.levels()]


def named_path(graph):
    return [graph.names[i] for i in graph.critical_path()]


# -- duplicate names ------------------------------------------------------------------------


def test_add_unit_duplicate_name_raises_naming_the_unit():
    """Adding a second unit under an existing name raises DuplicateUnitError naming it."""
    p = QuantumPartitioner()
    first = p.add_unit(noop, name="load")
    with pytest.raises(DuplicateUnitError, match="'load'") as info:
        p.add_unit(other, name="load")
    assert info.value.unit_id == "load"
    assert isinstance(info.value, GraphError)
    assert isinstance(info.value, ValueError)
    assert p.units["load"] is first
    assert list(p.units) == ["load"]


def test_add_unit_replace_true_replaces_in_place():
    """replace=True swaps the unit but keeps its position in insertion order."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="a")
    p.add_unit(noop, name="b")
    p.add_unit(noop, ["b"], name="c")
    new = p.add_unit(other, ["a"], name="b", replace=True)
    assert list(p.units) == ["a", "b", "c"]
    assert p.units["b"] is new
    assert new.function is other
    assert new.dependencies == ["a"]
    assert p.build_execution_plan().levels == [["a"], ["b"], ["c"]]


def test_add_unit_replace_with_bad_arguments_keeps_the_old_unit():
    """A rejected replacement leaves the existing unit in place."""
    p = QuantumPartitioner()
    old = p.add_unit(noop, name="a")
    with pytest.raises(ValueError, match="'a'"):
        p.add_unit(other, name="a", timeout=-1, replace=True)
    assert p.units["a"] is old


def test_compile_graph_rejects_duplicate_unit_ids():
    """Two QuantumUnits with one id fail compilation with DuplicateUnitError naming it."""
    units = [QuantumUnit("x", noop), QuantumUnit("y", noop), QuantumUnit("x", other)]
    with pytest.raises(DuplicateUnitError, match="'x'") as info:
        compile_graph(units)
    assert info.value.unit_id == "x"


# -- unknown dependencies -------------------------------------------------------------------


def test_unknown_dependency_names_both_units():
    """A dependency on a missing unit raises UnknownDependencyError naming unit and dependency."""
    with pytest.raises(UnknownDependencyError) as info:
        graph_of({"a": [], "b": ["a", "ghost"]})
    error = info.value
    assert (error.unit_id, error.dependency) == ("b", "ghost")
    assert "'b'" in str(error)
    assert "'ghost'" in str(error)
    assert isinstance(error, GraphError)


def test_unknown_dependency_is_reported_by_the_plan_not_by_add_unit():
    """add_unit accepts a dependency added later; the plan rejects one that never comes."""
    p = QuantumPartitioner()
    p.add_unit(noop, ["later"], name="a")
    with pytest.raises(UnknownDependencyError, match="'later'"):
        p.build_execution_plan()
    p.add_unit(noop, name="later")
    assert p.build_execution_plan().levels == [["later"], ["a"]]


# -- cycles ---------------------------------------------------------------------------------

CYCLES = {
    # a -> a
    "self-loop": {"a": ["a"]},
    # a -> b -> a
    "two": {"a": ["b"], "b": ["a"]},
    # c -> a -> b -> c, units added out of order
    "three": {"a": ["c"], "b": ["a"], "c": ["b"]},
    # x depends on the cycle a <-> b; x is inserted first and is not on the cycle
    "reachable-only-from-non-cycle-node": {"x": ["a"], "a": ["b"], "b": ["a"]},
    # r -> x, and x also depends on the cycle a -> c -> b -> a
    "behind-a-root": {"r": [], "x": ["r", "a"], "a": ["b"], "b": ["c"], "c": ["a"]},
    # a -> b -> c -> d -> b: the tail a is not on the cycle
    "tail-into-cycle": {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["b"]},
    # a self-loop next to healthy units
    "self-loop-among-others": {"a": [], "b": ["a"], "c": ["b", "c"], "d": ["c"]},
}


def graphlib_cycle(spec):
    try:
        graphlib.TopologicalSorter(spec).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


@pytest.mark.parametrize("spec", CYCLES.values(), ids=CYCLES.keys())
def test_cycle_path_matches_graphlib(spec):
    """CircularDependencyError.cycle is graphlib's CycleError path for the same graph."""
    with pytest.raises(CircularDependencyError) as info:
        graph_of(spec)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    # Each unit is a dependency of the next one, as in graphlib.
    for dependency, dependent in itertools.pairwise(cycle):
        assert dependency in spec[dependent]
    assert cycle == graphlib_cycle(spec)


def test_cycle_message_shows_the_path():
    """The cycle error's message lists the cycle's units in order."""
    with pytest.raises(CircularDependencyError) as info:
        graph_of({"a": ["c"], "b": ["a"], "c": ["b"]})
    assert "'a' -> 'b' -> 'c' -> 'a'" in str(info.value)
    assert isinstance(info.value, GraphError)


def test_cycle_raised_by_plan_under_original_alias_before_any_unit_runs():
    """A cycle fails build_execution_plan and execute (as CircularDependency) with no unit run."""
    calls = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: calls.append("root"), name="root")
    p.add_unit(lambda ctx: calls.append("a"), ["root", "b"], name="a")
    p.add_unit(lambda ctx: calls.append("b"), ["a"], name="b")
    with pytest.raises(CircularDependency) as info:
        p.build_execution_plan()
    assert info.value.cycle == ["a", "b", "a"]
    with pytest.raises(CircularDependency):
        p.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    assert calls == []


# -- argument validation: every message names the unit ---------------------------------------

BAD_ADD_UNIT_ARGUMENTS = [
    pytest.param({"timeout": -1}, ValueError, "timeout", id="negative-timeout"),
    pytest.param({"timeout": 0}, ValueError, "timeout", id="zero-timeout"),
    pytest.param({"timeout": math.nan}, ValueError, "timeout", id="nan-timeout"),
    # None means "no limit"; an infinite deadline crashes the thread driver's wait.
    pytest.param({"timeout": math.inf}, ValueError, "timeout", id="inf-timeout"),
    pytest.param({"timeout": "5"}, TypeError, "timeout", id="str-timeout"),
    pytest.param({"timeout": True}, TypeError, "timeout", id="bool-timeout"),
    pytest.param({"retries": -1}, ValueError, "retries", id="negative-retries"),
    pytest.param({"retries": 1.5}, TypeError, "retries", id="float-retries"),
    pytest.param({"retries": 2.0}, TypeError, "retries", id="integral-float-retries"),
    pytest.param({"retries": "2"}, TypeError, "retries", id="str-retries"),
    pytest.param({"retries": True}, TypeError, "retries", id="bool-retries"),
    pytest.param({"retries": False}, TypeError, "retries", id="bool-false-retries"),
    pytest.param({"dependencies": "a"}, TypeError, "dependencies", id="deps-as-str"),
    pytest.param({"dependencies": {"a"}}, TypeError, "dependencies", id="deps-as-set"),
    pytest.param({"dependencies": [1]}, TypeError, "dependency names", id="int-dep"),
    pytest.param({"dependencies": ["a", None]}, TypeError, "dependency names", id="none-dep"),
    pytest.param({"priority": "high"}, TypeError, "priority", id="str-priority"),
    pytest.param({"priority": math.nan}, ValueError, "priority", id="nan-priority"),
    pytest.param({"metadata": [("k", 1)]}, TypeError, "metadata", id="list-metadata"),
    pytest.param(
        {"metadata": {"estimated_duration": -1}}, ValueError, "estimated_duration", id="neg-est"
    ),
    pytest.param(
        {"metadata": {"estimated_duration": math.nan}},
        ValueError,
        "estimated_duration",
        id="nan-est",
    ),
    pytest.param(
        {"metadata": {"estimated_duration": "1s"}}, TypeError, "estimated_duration", id="str-est"
    ),
    pytest.param(
        {"metadata": {"estimated_duration": True}},
        TypeError,
        "estimated_duration",
        id="bool-est",
    ),
    pytest.param({"retry_policy": "fast"}, TypeError, "retry_policy", id="str-retry-policy"),
    pytest.param({"when": 5}, TypeError, "when=", id="non-callable-when"),
    pytest.param({"cancel_rest": 0}, TypeError, "cancel_rest", id="int-cancel-rest"),
    pytest.param({"cancel_rest": None}, TypeError, "cancel_rest", id="none-cancel-rest"),
    pytest.param({"cancel_rest": True}, ValueError, "cancel_rest", id="cancel-rest-no-quorum"),
    pytest.param({"limits": "api"}, TypeError, "limits", id="str-limits"),
    pytest.param({"run_if": "most"}, ValueError, "join rule", id="unknown-run-if"),
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("most",), "unknown join rule 'most'"),
        (("at_least", 0), r"needs an int k >= 1, got 0"),
        (("at_least", True), r"needs an int k >= 1, got True"),
        (("all_done", 2), "join rule 'all_done' takes no k, got k=2"),
    ],
)
def test_join_rule_built_by_hand_is_checked_as_run_if_checks_a_name(args, message):
    """JoinRule(...) with an unknown name or a bad k is refused (it ran the unit at once)."""
    with pytest.raises(ValueError, match=message):
        JoinRule(*args)
    assert str(JoinRule("at_least", 2)) == "at_least(2)"
    assert JoinRule("all_done") == join_rule("all_done")


@pytest.mark.parametrize(("kwargs", "error", "field"), BAD_ADD_UNIT_ARGUMENTS)
def test_add_unit_rejects_bad_argument_naming_the_unit(kwargs, error, field):
    """add_unit rejects a bad argument with TypeError/ValueError naming the unit and field."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="a")
    with pytest.raises(error) as info:
        p.add_unit(noop, name="bad_unit", **kwargs)
    message = str(info.value)
    assert "'bad_unit'" in message
    assert field in message
    assert "bad_unit" not in p.units


@pytest.mark.parametrize(("kwargs", "error", "field"), BAD_ADD_UNIT_ARGUMENTS)
def test_add_units_rejects_what_add_unit_rejects_adding_none(kwargs, error, field):
    """add_units raises add_unit's very error for a bad entry, and adds none of its units."""
    options = dict(kwargs)
    deps = options.pop("dependencies", [])
    with pytest.raises(error) as expected:
        QuantumPartitioner().add_unit(noop, deps, "bad_unit", **options)
    p = QuantumPartitioner()
    with pytest.raises(error) as info:
        p.add_units({"good": noop, "bad_unit": (noop, deps, options), "after": noop})
    assert str(info.value) == str(expected.value)
    assert p.units == {}


def test_add_units_builds_what_add_unit_builds():
    """Each entry shape gives the unit add_unit would: dependencies deduplicated, options set."""
    policy = RetryPolicy(retry_on=(OSError,))
    p = QuantumPartitioner()
    p.add_units(
        {
            "a": noop,
            "b": (noop, ["a", "a"]),
            "c": (other, ("a", "b"), {"timeout": 2, "retries": 1, "retry_policy": policy}),
            "d": (noop, ["c"], {"priority": 3, "metadata": {"k": 1}, "limits": ["api"]}),
        }
    )
    p.add_limit("api", concurrency=1)
    a, b, c, d = (p.units[name] for name in "abcd")
    assert list(p.units) == ["a", "b", "c", "d"]
    assert (a.function, a.dependencies, b.dependencies) == (noop, [], ["a"])
    assert (c.function, c.dependencies, c.timeout, c.retries) == (other, ["a", "b"], 2, 1)
    assert c.retry_policy is policy
    assert (d.priority, d.metadata, d.limits) == (3, {"k": 1}, {"api": 1})
    assert p.execute(execution_mode=ExecutionMode.SEQUENTIAL) == {
        "a": None,
        "b": None,
        "c": 1,
        "d": None,
    }


class _Name(str):
    """A str subclass: a valid unit or dependency name that is not exactly a str."""

    __slots__ = ()


def _fields(unit):
    """Every slot and public attribute of ``unit``, to compare two units field by field."""
    slots = {slot: getattr(unit, slot) for slot in type(unit).__slots__}
    public = {
        name: getattr(unit, name)
        for name in dir(type(unit))
        if not name.startswith("_") and not callable(getattr(unit, name))
    }
    return slots, public, type(unit)


@pytest.mark.parametrize(
    "dependencies",
    [
        pytest.param([], id="empty-list"),
        pytest.param(None, id="none"),
        pytest.param((), id="empty-tuple"),
        pytest.param(["a"], id="one"),
        pytest.param(["a", "b", "a"], id="repeated"),
        pytest.param(("b", "a"), id="tuple"),
        pytest.param([_Name("a"), "b"], id="str-subclass"),
    ],
)
def test_add_units_builds_the_very_unit_add_unit_builds(dependencies):
    """A (fn, dependencies) entry gives a unit equal to add_unit's in every slot and field."""
    one, bulk = QuantumPartitioner(), QuantumPartitioner()
    for p in (one, bulk):
        p.add_units({"a": noop, "b": noop})
    one.add_unit(other, dependencies, "u")
    bulk.add_units({"u": (other, dependencies)})
    built, added = bulk.units["u"], one.units["u"]
    assert _fields(built) == _fields(added)
    assert type(built._dependencies) is type(added._dependencies)
    assert built._options is added._options  # the shared default record
    if dependencies:
        assert built.dependencies is not dependencies  # the unit's own list


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param((noop, "a"), id="deps-as-str"),
        pytest.param((noop, {"a"}), id="deps-as-set"),
        pytest.param((noop, ""), id="deps-as-empty-str"),
        pytest.param((noop, {}), id="deps-as-empty-dict"),
        pytest.param((noop, [1]), id="int-dep"),
        pytest.param((noop, ["a", None]), id="none-dep"),
        pytest.param((5, ["a"]), id="non-callable"),
        pytest.param((5, [1]), id="non-callable-and-int-dep"),
    ],
)
def test_add_units_raises_add_unit_error_for_a_bad_pair_adding_none(entry):
    """A bad (fn, dependencies) entry raises add_unit's very error; none of the units is added."""
    with pytest.raises(TypeError) as expected:
        QuantumPartitioner().add_unit(entry[0], entry[1], "bad_unit")
    p = QuantumPartitioner()
    later_error = {"later": (5, [])}  # a later bad entry: the first one raises
    with pytest.raises(TypeError) as info:
        p.add_units({"a": (noop, []), "b": (noop, ["a"]), "bad_unit": entry, **later_error})
    assert str(info.value) == str(expected.value)
    assert p.units == {}


@pytest.mark.parametrize(
    ("name", "error"),
    [("", ValueError), (1, TypeError), (None, TypeError)],
    ids=["empty", "int", "none"],
)
def test_add_units_refuses_a_bad_name_among_pairs(name, error):
    """A bad name among (fn, dependencies) entries raises, naming it, and adds none."""
    p = QuantumPartitioner()
    with pytest.raises(error, match=f"unit name must be a non-empty string, got {name!r}"):
        p.add_units({"a": (noop, []), name: (noop, ["a"]), "later": (5, [])})
    assert p.units == {}


@pytest.mark.parametrize(
    ("units", "message"),
    [
        pytest.param([("a", noop)], "add_units() takes a dict", id="not-a-mapping"),
        pytest.param({"a": 5}, "unit 'a': expected fn, (fn, dependencies)", id="not-callable"),
        pytest.param({"a": (noop,)}, "unit 'a': expected fn", id="one-tuple"),
        pytest.param({"a": (noop, [], {}, 1)}, "unit 'a': expected fn", id="four-tuple"),
        pytest.param({"a": (noop, [], [])}, "unit 'a': options must be a dict", id="options"),
        pytest.param({"a": (noop, [], {"name": "b"})}, "unit 'a': unknown options", id="name"),
        pytest.param({1: noop}, "unit name must be a non-empty string", id="int-name"),
    ],
)
def test_add_units_rejects_bad_entries_naming_the_unit(units, message):
    """A bad mapping or entry raises TypeError naming the unit; nothing is added."""
    p = QuantumPartitioner()
    with pytest.raises(TypeError) as info:
        p.add_units(units)
    assert message in str(info.value)
    assert p.units == {}


def test_add_units_refuses_existing_names_unless_replacing():
    """An existing name raises DuplicateUnitError and adds nothing; replace=True replaces."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="b")
    with pytest.raises(DuplicateUnitError, match="'b'"):
        p.add_units({"a": noop, "b": other})
    assert list(p.units) == ["b"]
    p.add_units({"a": noop, "b": other}, replace=True)
    assert (list(p.units), p.units["b"].function) == (["b", "a"], other)


def test_add_units_invalidates_the_compiled_graph():
    """Units added in bulk after a plan are in the next plan and run."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="a")
    assert len(p.build_execution_plan().levels) == 1
    p.add_units({"b": (other, ["a"])})
    assert len(p.build_execution_plan().levels) == 2
    assert p.execute(execution_mode=ExecutionMode.SEQUENTIAL) == {"a": None, "b": 1}


@pytest.mark.parametrize("fn", [5, "noop", object()], ids=["int", "str", "object"])
def test_add_unit_rejects_non_callable_naming_the_unit(fn):
    """A non-callable fn raises TypeError naming the unit, and the unit is not added."""
    p = QuantumPartitioner()
    with pytest.raises(TypeError, match=r"'bad_unit'.*callable"):
        p.add_unit(fn, name="bad_unit")
    assert p.units == {}


def test_validate_unit_rejects_non_callable_function():
    """validate_unit rejects a QuantumUnit whose function is None, naming the unit."""
    with pytest.raises(TypeError, match=r"'bad_unit'.*callable"):
        validate_unit(QuantumUnit("bad_unit", None))


def test_add_unit_non_callable_with_default_name_names_the_default():
    """Without a name, the error names the default unit_<n> the unit would get."""
    p = QuantumPartitioner()
    p.add_unit(noop)
    with pytest.raises(TypeError, match="'unit_1'"):
        p.add_unit(42)


@pytest.mark.parametrize("name", [5, b"bytes", ("a",)], ids=["int", "bytes", "tuple"])
def test_add_unit_rejects_non_string_name(name):
    """A name that is not a str raises TypeError showing the name."""
    p = QuantumPartitioner()
    with pytest.raises(TypeError, match="name") as info:
        p.add_unit(noop, name=name)
    assert repr(name) in str(info.value)
    assert p.units == {}


def test_add_unit_rejects_empty_name():
    """An empty name raises ValueError."""
    p = QuantumPartitioner()
    with pytest.raises(ValueError, match="empty"):
        p.add_unit(noop, name="")
    assert p.units == {}


@pytest.mark.parametrize(
    ("unit_id", "error"), [(5, TypeError), ("", ValueError), (None, TypeError)]
)
def test_validate_unit_rejects_bad_ids(unit_id, error):
    """validate_unit rejects a non-string id with TypeError and an empty one with ValueError."""
    with pytest.raises(error, match="name"):
        validate_unit(QuantumUnit(unit_id, noop))


def test_validate_unit_accepts_good_units():
    """A fully specified valid unit passes validate_unit and keeps its fields."""
    unit = QuantumUnit(
        "ok",
        noop,
        ["a"],
        timeout=0.5,
        retries=3,
        priority=-2,
        metadata={"estimated_duration": 0},
        retry_policy=RetryPolicy(),
    )
    validate_unit(unit)
    assert (unit.timeout, unit.retries, unit.priority) == (0.5, 3, -2)


@pytest.mark.parametrize(
    ("max_workers", "error"),
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_max_workers_must_be_positive_int_or_none(max_workers, error):
    """max_workers other than a positive int or None is rejected by the partitioner."""
    with pytest.raises(error, match="max_workers"):
        QuantumPartitioner(max_workers=max_workers)


def test_max_workers_accepts_positive_int_and_none():
    """max_workers=None and positive ints are stored as given."""
    assert QuantumPartitioner().max_workers is None
    assert QuantumPartitioner(max_workers=3).max_workers == 3


def test_partitioner_rejects_retry_policy_that_is_not_a_policy():
    """QuantumPartitioner(retry_policy=...) must be a RetryPolicy or None (TypeError otherwise)."""
    assert QuantumPartitioner(retry_policy=None).retry_policy is None
    with pytest.raises(TypeError, match="retry_policy"):
        QuantumPartitioner(retry_policy="fast")


@pytest.mark.parametrize("max_workers", [0, -1, 1.5, True])
def test_execute_rejects_bad_max_workers_before_running(max_workers):
    """execute(max_workers=...) is checked before any unit runs."""
    calls = []
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: calls.append(1), name="a")
    with pytest.raises((TypeError, ValueError), match="max_workers"):
        p.execute(execution_mode=ExecutionMode.SEQUENTIAL, max_workers=max_workers)
    assert calls == []


def test_unknown_execution_mode_string_is_rejected():
    """An unknown mode string raises ValueError naming it; known names work in any case."""
    with pytest.raises(ValueError, match="'warp'"):
        QuantumPartitioner(default_execution_mode="warp")
    p = QuantumPartitioner(default_execution_mode="Sequential")
    assert p.default_execution_mode is ExecutionMode.SEQUENTIAL
    calls = []
    p.add_unit(lambda ctx: calls.append(1), name="a")
    with pytest.raises(ValueError, match="'warp'"):
        p.execute(execution_mode="warp")
    assert calls == []


# -- compilation: order, duplicates ----------------------------------------------------------


def test_units_added_out_of_topological_order_compile():
    """Units listed before their dependencies compile (Kahn's path) to a topological order."""
    #
    #   d -> c -> b -> a      (listed as a, b, c, d: every unit before its dependency)
    #
    graph = graph_of({"a": ["b"], "b": ["c"], "c": ["d"], "d": []})
    assert [graph.names[i] for i in graph.order] == ["d", "c", "b", "a"]
    assert named_levels(graph) == [["d"], ["c"], ["b"], ["a"]]
    assert named_path(graph) == ["d", "c", "b", "a"]


def test_out_of_order_compile_gives_a_valid_order_on_a_wider_graph():
    """Kahn's order puts every unit after all of its dependencies."""
    spec = {"f": ["d", "e"], "e": ["c"], "d": ["a"], "c": ["a", "b"], "b": [], "a": []}
    graph = graph_of(spec)
    position = {graph.names[i]: k for k, i in enumerate(graph.order)}
    assert sorted(position) == sorted(spec)
    for name, deps in spec.items():
        for dep in deps:
            assert position[dep] < position[name]


def test_in_order_units_keep_insertion_order():
    """Units added after their dependencies keep insertion order as the topological order."""
    graph = graph_of({"a": [], "b": ["a"], "c": [], "d": ["c", "b"]})
    assert list(graph.order) == [0, 1, 2, 3]


def test_duplicate_dependency_entries_count_once():
    """A dependency listed twice is one edge: one dependent entry, one wait."""
    graph = compile_graph([QuantumUnit("a", noop), QuantumUnit("b", noop, ["a", "a", "a"])])
    assert graph.deps == [[], [0]]
    assert graph.dependents == [[1], []]
    assert graph.level == [0, 1]


def test_add_unit_stores_duplicate_dependencies_once():
    """add_unit drops repeated dependency names, keeping first-seen order."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="a")
    p.add_unit(noop, name="b")
    unit = p.add_unit(noop, ["b", "a", "b", "a"], name="c")
    assert unit.dependencies == ["b", "a"]
    assert p.build_execution_plan().dependencies["c"] == {"a", "b"}


def test_empty_graph_compiles():
    """No units compile to an empty graph with no levels and no critical path."""
    graph = compile_graph([])
    assert len(graph) == 0
    assert graph.levels() == []
    assert graph.critical_path() == []


# -- levels and the critical path ----------------------------------------------------------


def test_levels_of_a_diamond_with_a_tail():
    """Levels group units by their longest distance from a root."""
    #
    #   a   b
    #   |\ /
    #   | c
    #   |  \
    #   d   e
    #    \ /
    #     f
    #
    graph = graph_of({"a": [], "b": [], "c": ["a", "b"], "d": ["a"], "e": ["c"], "f": ["d", "e"]})
    assert named_levels(graph) == [["a", "b"], ["c", "d"], ["e"], ["f"]]
    assert graph.level == [0, 0, 1, 1, 2, 3]


def test_levels_of_independent_chains():
    """Independent chains share levels by depth; each level keeps insertion order."""
    #
    #   a -> b -> c
    #   x -> y
    #   z
    #
    graph = graph_of({"x": [], "a": [], "y": ["x"], "b": ["a"], "z": [], "c": ["b"]})
    assert named_levels(graph) == [["x", "a", "z"], ["y", "b"], ["c"]]


def test_unweighted_critical_path_is_the_longest_chain():
    """Without estimates every unit weighs 1 and the longest chain is critical."""
    #
    #   a ------> d
    #    \        \
    #     b -> c -> e
    #
    graph = graph_of({"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]})
    assert named_path(graph) == ["a", "b", "c", "e"]
    assert max(graph.finish) == 4.0


def test_critical_path_weighted_by_estimated_duration():
    """A heavy unit on a short chain beats a long chain of light units."""
    #
    #   a ------> d (10 s)
    #    \        \
    #     b -> c -> e
    #
    spec = {"a": [], "b": ["a"], "c": ["b"], "d": ["a"], "e": ["c", "d"]}
    graph = graph_of(
        spec,
        b={"estimated_duration": 1},
        c={"estimated_duration": 1},
        d={"estimated_duration": 10},
    )
    # a and e have no estimate: each weighs the mean of the given ones, (1 + 1 + 10) / 3.
    assert named_path(graph) == ["a", "d", "e"]
    assert max(graph.finish) == 18.0
    assert graph.rank[graph.index["a"]] == 18.0
    assert graph.rank[graph.index["b"]] == 6.0


def test_units_without_an_estimate_weigh_the_mean_of_the_given_ones():
    """One unit without an estimate does not swamp estimates given in milliseconds."""
    #
    #   load (3 ms) -> parse (2 ms) -> fit (90 ms) -> publish (no estimate)
    #
    spec = {"load": [], "parse": ["load"], "fit": ["parse"], "publish": ["fit"]}
    graph = graph_of(
        spec,
        load={"estimated_duration": 0.003},
        parse={"estimated_duration": 0.002},
        fit={"estimated_duration": 0.09},
    )
    mean = (0.003 + 0.002 + 0.09) / 3
    assert graph.default_weight == pytest.approx(mean)
    assert graph.weight[graph.index["publish"]] == pytest.approx(mean)
    assert max(graph.finish) == pytest.approx(0.095 + mean)
    assert graph_of(spec).default_weight == 1.0  # no estimate at all: every unit weighs 1


def test_critical_path_counts_zero_and_fractional_estimates():
    """Estimates of 0 and fractions are used as given."""
    #
    #   p (0.5) -> q (0) -> r (0.25)
    #   s (0.6)
    #
    graph = graph_of(
        {"p": [], "q": ["p"], "r": ["q"], "s": []},
        p={"estimated_duration": 0.5},
        q={"estimated_duration": 0},
        r={"estimated_duration": 0.25},
        s={"estimated_duration": 0.6},
    )
    assert named_path(graph) == ["p", "q", "r"]
    assert max(graph.finish) == 0.75
    assert list(graph.weight) == [0.5, 0.0, 0.25, 0.6]


def test_critical_path_of_independent_units_is_the_heaviest_unit():
    """Without edges the critical path is the single heaviest unit."""
    graph = graph_of(
        {"a": [], "b": [], "c": []},
        a={"estimated_duration": 1},
        b={"estimated_duration": 3},
        c={"estimated_duration": 2},
    )
    assert named_path(graph) == ["b"]
    assert graph.level == [0, 0, 0]


def test_add_units_takes_at_least_over_a_map_as_add_unit_does():
    """at_least(k) over a map counts its items: k above the dependency count is accepted."""
    p = QuantumPartitioner()
    p.add_unit(lambda ctx: [1, 2, 3], name="source")
    p.add_map(noop, over="source", name="each")
    p.add_units({"quorum": (noop, ["each"], {"run_if": at_least(2)})})
    assert p.units["quorum"].run_if == at_least(2)
    with pytest.raises(ValueError, match="at_least"):
        p.add_units({"other": (noop, ["source"], {"run_if": at_least(2)})})


def test_a_unit_without_dependencies_owns_the_list_it_hands_out():
    """Each root's dependencies list is its own: appending to one changes only that unit."""
    p = QuantumPartitioner()
    p.add_units({"a": noop, "b": noop})
    p.add_unit(noop, name="c")
    p.units["a"].dependencies.append("b")
    assert (p.units["b"].dependencies, p.units["c"].dependencies) == ([], [])
    assert p.build_execution_plan().dependencies == {"a": {"b"}, "b": set(), "c": set()}


_OPTION_VALUES = {
    "timeout": 2.5,
    "retries": 3,
    "priority": 7,
    "retry_policy": RetryPolicy(retry_on=(OSError,)),
    "condition": noop,
    "run_if": at_least(1),
    "cancel_rest": True,
    "limits": {"api": 1},
    "over": "source",
    "max_items": 4,
    "view_keys": {"a": "x"},
}


@pytest.mark.parametrize(("option", "value"), list(_OPTION_VALUES.items()))
def test_unit_options_read_and_write_as_attributes_unit_by_unit(option, value):
    """Each option reads back as given or set; setting it on one unit leaves the others alone."""
    given = QuantumUnit("given", noop, ["a"], **{option: value})
    p = QuantumPartitioner()
    first, second = p.add_unit(noop, name="first"), p.add_unit(noop, name="second")
    default = getattr(second, option)
    setattr(first, option, value)
    assert getattr(given, option) == value
    assert getattr(first, option) == value
    assert getattr(second, option) == default
    assert getattr(QuantumUnit("plain", noop), option) == getattr(
        QuantumUnit("other", noop), option
    )


def test_default_options_read_as_before():
    """A unit's options default as the original API's fields did; add_unit names its join rule."""
    built = QuantumUnit("a", noop)
    added = QuantumPartitioner().add_unit(noop, name="a")
    for unit in (built, added):
        assert (unit.timeout, unit.retries, unit.priority, unit.retry_policy) == (None, 0, 0, None)
        assert (unit.condition, unit.cancel_rest, unit.limits) == (None, False, None)
        assert (unit.over, unit.max_items, unit.view_keys, unit.metadata) == (None, None, None, {})
    assert built.run_if is None
    assert added.run_if == ALL_SUCCESS


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"retries": False}, "retries"),
        ({"priority": True}, "priority"),
        ({"cancel_rest": 0}, "cancel_rest"),
    ],
)
def test_values_equal_to_a_default_are_still_checked(options, field):
    """retries=False or cancel_rest=0 equal a default but are not one: validation refuses them."""
    with pytest.raises(TypeError, match=field):
        validate_unit(QuantumUnit("a", noop, **options))


def test_a_unit_with_default_options_is_small():
    """A unit with every option at its default keeps them in one shared record, not 11 slots."""
    unit = QuantumPartitioner().add_unit(noop, name="a")
    assert sys.getsizeof(unit) <= 96  # 7 slots and the object header; 17 slots were 168


def test_metadata_is_made_when_first_read_and_each_unit_owns_its_own():
    """A run reads no metadata into being; the dict a unit hands out is its own to change."""
    p = QuantumPartitioner()
    p.add_units({"a": noop, "b": (noop, ["a"])})
    p.add_unit(noop, ["b"], name="c")
    p.execute(execution_mode=ExecutionMode.SEQUENTIAL)
    assert all(unit._metadata is None for unit in p.units.values())
    p.units["a"].metadata["fallback_value"] = 1
    assert p.units["a"].metadata == {"fallback_value": 1}
    assert (p.units["b"].metadata, p.units["c"].metadata) == ({}, {})
    assert p.units["b"].metadata is p.units["b"].metadata


def test_a_unit_copies_and_pickles_after_a_run_as_a_new_unit_of_no_partitioner():
    """copy, deepcopy and pickle keep a unit's fields, not the run it was part of (whose
    record holds locks and every unit's results): the copy is PENDING, and its options its own."""
    p = QuantumPartitioner()
    p.add_unit(noop, name="a")
    unit = p.add_unit(noop, ["a"], name="b", timeout=2.0, metadata={"tag": [1]})
    p.execute(execution_mode=ExecutionMode.SEQUENTIAL)

    for copied in (copy.copy(unit), copy.deepcopy(unit), pickle.loads(pickle.dumps(unit))):
        assert (copied.id, copied.function, copied.dependencies) == ("b", noop, ["a"])
        assert (copied.timeout, copied.metadata, copied.run_if) == (2.0, {"tag": [1]}, ALL_SUCCESS)
        assert copied.state is UnitState.PENDING
        assert copied.result is None
        copied.timeout = 5.0
        assert unit.timeout == 2.0
    assert unit.state is UnitState.COMPLETED
    assert copy.deepcopy(unit).metadata["tag"] is not unit.metadata["tag"]


class _Admitting(QuantumPartitioner):
    """Refuses units named ``bad``, as a subclass's admission check does."""

    def _admit(self, unit):
        if unit.id == "bad":
            raise ValueError("refused: bad")


def test_a_subclass_admission_check_sees_every_new_unit():
    """add_unit and add_units call an overriding _admit (and a refused unit is not added)."""
    p = _Admitting()
    p.add_unit(noop, name="good")
    with pytest.raises(ValueError, match="refused"):
        p.add_unit(noop, name="bad")
    with pytest.raises(ValueError, match="refused"):
        p.add_units({"fine": noop, "bad": (noop, ["good"])})
    assert list(p.units) == ["good"]
    assert not QuantumPartitioner._admits
    assert _Admitting._admits
