"""The TaskMap engine: task maps, callbacks, run_tasks, run_parallel_threads, build_graph."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from quantum_partitioner import (
    ExecutionPlan,
    Limit,
    UnitSkippedError,
    UnitState,
    UnknownDependencyError,
    at_least,
)
from quantum_partitioner.taskmap import (
    CircularDependency,
    CircularDependencyError,
    TaskError,
    TaskMap,
    build_graph,
    run_parallel_threads,
    run_tasks,
)


def fail(ctx):
    raise ValueError("task failed")


def diamond():
    # a -> (b, c) -> d
    return {
        "a": (lambda ctx: ctx["n"], []),
        "b": (lambda ctx: ctx["a"] + 1, ["a"]),
        "c": (lambda ctx: ctx["a"] * 2, ["a"]),
        "d": (lambda ctx: (ctx["b"], ctx["c"]), ["b", "c"]),
    }


DIAMOND_RESULTS = {"a": 3, "b": 4, "c": 6, "d": (4, 6)}


# -- TaskMap ---------------------------------------------------------------------------------


def test_task_map_accepts_pairs_and_bare_functions():
    """Tasks are (fn, dependencies) pairs, or a bare fn meaning no dependencies."""
    task_map = TaskMap({"a": lambda ctx: 1, "b": (lambda ctx: ctx["a"] + 1, ("a",))})

    assert task_map.tasks["a"][1] == []
    assert task_map.tasks["b"][1] == ["a"]
    assert task_map.run() == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param([("a", lambda ctx: 1)], id="not-a-mapping"),
        pytest.param({"a": 5}, id="not-callable"),
        pytest.param({"a": (fail, "b")}, id="dependencies-as-string"),
        pytest.param({"a": (fail, [], "extra")}, id="triple"),
    ],
)
def test_task_map_rejects_malformed_tasks(tasks):
    """A TaskMap of the wrong shape raises TypeError at construction."""
    with pytest.raises(TypeError):
        TaskMap(tasks)


BAD_DEPENDENCIES = [
    pytest.param("load", "got 'load'", id="string"),
    pytest.param(None, "got None", id="none"),
    pytest.param(5, "got 5", id="int"),
    pytest.param({"load": 1}, "got {'load': 1}", id="mapping"),
    pytest.param([1], "dependency names must be strings, got 1", id="int-name"),
]


@pytest.mark.parametrize(("deps", "message"), BAD_DEPENDENCIES)
def test_defect_14_bad_dependencies_name_the_task(deps, message):
    """Issue 9 defect 14: each bad dependency shape is a TypeError naming the task."""
    with pytest.raises(TypeError, match=rf"^unit 'report': .*{re.escape(message)}"):
        build_graph({"load": [], "report": deps})
    with pytest.raises(TypeError, match=rf"^unit 'report': .*{re.escape(message)}"):
        TaskMap({"load": fail, "report": (fail, deps)})


def test_defect_14_a_list_instead_of_a_mapping_is_a_type_error():
    """Issue 9 defect 14: build_graph and TaskMap of a list say a dict is expected."""
    with pytest.raises(TypeError, match="must be a dict of name -> "):
        build_graph([("a", [])])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a dict of name -> "):
        run_tasks([("a", fail)])  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", [build_graph, TaskMap, run_tasks, run_parallel_threads])
def test_defect_14_an_integer_task_name_is_refused_when_the_map_is_built(entry):
    """Issue 9 defect 14: a non-string task name is refused before anything runs."""
    ran = []
    with pytest.raises(TypeError, match="unit name must be a non-empty string, got 1"):
        entry({1: (lambda ctx: ran.append(1), [])})
    assert ran == []


def test_task_map_plan_describes_the_graph():
    """TaskMap.plan() validates the map and returns its ExecutionPlan."""
    plan = TaskMap(diamond()).plan()

    assert isinstance(plan, ExecutionPlan)
    assert plan.levels == [["a"], ["b", "c"], ["d"]]


def test_task_map_run_returns_every_result():
    """TaskMap.run(ctx) runs every task in order and returns their results."""
    assert TaskMap(diamond()).run({"n": 3}) == DIAMOND_RESULTS


def test_task_map_can_run_again_with_another_context():
    """A TaskMap runs again with a new context."""
    task_map = TaskMap(diamond())
    task_map.run({"n": 3})

    assert task_map.run({"n": 0})["d"] == (1, 0)


# -- callbacks -------------------------------------------------------------------------------


class Calls:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def attach(self, task_map):
        task_map.on_task_start = lambda name: self._add("start", name)
        task_map.on_task_complete = lambda name, result: self._add("complete", name, result)
        task_map.on_task_error = lambda name, error: self._add("error", name, error)

    def _add(self, *call):
        with self.lock:
            self.calls.append(call)


def test_callbacks_on_task_start_complete_error():
    """on_task_start(name), on_task_complete(name, result), on_task_error(name, error) fire."""
    calls = Calls()
    task_map = TaskMap({"ok": lambda ctx: 1, "bad": fail, "after": (lambda ctx: 2, ["bad"])})
    calls.attach(task_map)

    with pytest.raises(TaskError):
        task_map.run()

    by_kind = {}
    for kind, *args in calls.calls:
        by_kind.setdefault(kind, []).append(args)
    assert sorted(by_kind["start"]) == [["bad"], ["ok"]]  # 'after' was skipped: never started
    assert by_kind["complete"] == [["ok", 1]]
    [[name, error]] = by_kind["error"]
    assert name == "bad"
    assert isinstance(error, ValueError)
    # Each task's start comes before its own outcome.
    assert calls.calls.index(("start", "ok")) < calls.calls.index(("complete", "ok", 1))
    assert calls.calls.index(("start", "bad")) < calls.calls.index(("error", "bad", error))


def test_callbacks_set_after_a_run_are_used_by_the_next_run():
    """Callbacks assigned between runs take effect on the next run."""
    task_map = TaskMap({"a": lambda ctx: 1})
    task_map.run()
    calls = Calls()
    calls.attach(task_map)

    task_map.run()

    assert calls.calls == [("start", "a"), ("complete", "a", 1)]


def test_callbacks_with_run_parallel_threads():
    """The callbacks fire for every task in a threaded run too."""
    calls = Calls()
    task_map = TaskMap(diamond())
    calls.attach(task_map)

    run_parallel_threads(task_map, {"n": 3}, max_workers=2)

    assert sorted(c[1] for c in calls.calls if c[0] == "start") == ["a", "b", "c", "d"]
    completed = {c[1]: c[2] for c in calls.calls if c[0] == "complete"}
    assert completed == DIAMOND_RESULTS


# -- run_tasks -------------------------------------------------------------------------------


def test_run_tasks_accepts_a_task_map_or_a_plain_dict():
    """run_tasks takes a TaskMap or the dict it would be built from."""
    assert run_tasks(TaskMap(diamond()), {"n": 3}) == DIAMOND_RESULTS
    assert run_tasks(diamond(), {"n": 3}) == DIAMOND_RESULTS


def test_run_tasks_runs_in_the_calling_thread():
    """run_tasks is sequential: every task runs in the caller's thread."""
    tasks = {name: (lambda ctx: threading.get_ident(), []) for name in ("a", "b", "c")}

    results = run_tasks(tasks)

    assert set(results.values()) == {threading.get_ident()}


def test_run_tasks_raises_task_error_with_partial_results():
    """A failing task raises TaskError with the error, completed results and failed names."""
    tasks = {"ok": lambda ctx: "fine", "bad": fail, "after": (lambda ctx: 1, ["bad"])}

    with pytest.raises(TaskError) as info:
        run_tasks(tasks)

    assert info.value.partial_results == {"ok": "fine"}
    assert info.value.failed_tasks == ["bad"]
    assert isinstance(info.value.errors["bad"], ValueError)


def test_run_tasks_rejects_unknown_dependencies_before_running():
    """A dependency naming no task raises UnknownDependencyError before any task runs."""
    ran = []

    with pytest.raises(UnknownDependencyError, match="ghost"):
        run_tasks({"a": (lambda ctx: ran.append(1), ["ghost"])})

    assert ran == []


# -- run_parallel_threads --------------------------------------------------------------------


def test_run_parallel_threads_without_executor():
    """run_parallel_threads runs the map on its own threads."""
    assert run_parallel_threads(TaskMap(diamond()), {"n": 3}) == DIAMOND_RESULTS


def test_run_parallel_threads_runs_tasks_concurrently():
    """Independent tasks overlap: two tasks meet at a barrier only if they run at once."""
    barrier = threading.Barrier(2, timeout=10)
    tasks = {"x": lambda ctx: barrier.wait() >= 0, "y": lambda ctx: barrier.wait() >= 0}

    assert run_parallel_threads(tasks, max_workers=2) == {"x": True, "y": True}


def test_run_parallel_threads_with_an_executor():
    """run_parallel_threads(..., executor=pool) runs the tasks on that pool, left open."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="given") as pool:
        tasks = {"where": lambda ctx: threading.current_thread().name}

        results = run_parallel_threads(TaskMap(tasks), executor=pool)

        assert results["where"].startswith("given")
        assert pool.submit(lambda: "still open").result(timeout=10) == "still open"


@pytest.mark.parametrize("with_executor", [False, True], ids=["threads", "executor"])
def test_run_parallel_threads_raises_task_error(with_executor):
    """A failing task raises TaskError from run_parallel_threads too, skipped tasks excluded."""
    tasks = {"ok": lambda ctx: 1, "bad": fail, "after": (lambda ctx: 2, ["bad"])}

    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(TaskError) as info:
        run_parallel_threads(tasks, executor=pool if with_executor else None)

    assert info.value.partial_results == {"ok": 1}
    assert list(info.value.errors) == ["bad"]
    assert info.value.failed_tasks == ["bad"]


def test_task_error_message_names_the_failed_tasks():
    """str(TaskError) names the failed tasks and the first error."""
    with pytest.raises(TaskError, match=r"'bad'.*task failed"):
        run_tasks({"bad": fail})


# -- build_graph -----------------------------------------------------------------------------


def test_build_graph_returns_an_execution_plan():
    """build_graph(name -> dependencies) returns the plan with levels and critical path."""
    plan = build_graph({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []})

    assert isinstance(plan, ExecutionPlan)
    assert plan.levels == [["a", "e"], ["b", "c"], ["d"]]
    assert plan.critical_path in (["a", "b", "d"], ["a", "c", "d"])
    assert plan.dependencies["d"] == {"b", "c"}
    assert plan.dependents["a"] == {"b", "c"}


def test_build_graph_accepts_taskmap_style_pairs():
    """build_graph also accepts (fn, dependencies) pairs."""
    plan = build_graph(diamond())

    assert plan.levels == [["a"], ["b", "c"], ["d"]]


def test_build_graph_raises_circular_dependency_with_the_cycle():
    """A cycle raises CircularDependency (CircularDependencyError) naming its path."""
    with pytest.raises(CircularDependency) as info:
        build_graph({"a": ["b"], "b": ["a"], "c": []})

    assert CircularDependency is CircularDependencyError
    assert info.value.cycle in (["a", "b", "a"], ["b", "a", "b"])
    assert "'a'" in str(info.value)
    assert "'b'" in str(info.value)


def test_build_graph_self_dependency_is_a_cycle():
    """A task depending on itself is a cycle of one."""
    with pytest.raises(CircularDependency) as info:
        build_graph({"a": ["a"]})

    assert info.value.cycle == ["a", "a"]


def test_build_graph_rejects_unknown_dependencies():
    """build_graph raises UnknownDependencyError for a dependency that is no task."""
    with pytest.raises(UnknownDependencyError, match="'missing'"):
        build_graph({"a": ["missing"]})


def test_skipped_task_is_reported_with_the_failed_dependency():
    """A task downstream of a failure is skipped, naming the failed dependency."""
    task_map = TaskMap({"bad": fail, "after": (lambda ctx: 1, ["bad"])})

    with pytest.raises(TaskError):
        task_map.run()

    unit = task_map.partitioner().units["after"]
    assert isinstance(unit.error, UnitSkippedError)
    assert unit.error.failed_dependency == "bad"


def test_tasks_take_add_unit_options_and_the_map_takes_limits():
    """(fn, deps, options) passes add_unit keywords; TaskMap(limits=...) adds the limits."""

    def call(ctx):
        time.sleep(0.02)
        return ctx.unit_id

    tasks = {f"t{k}": (call, [], {"limits": ["api"], "timeout": 5}) for k in range(5)}
    task_map = TaskMap(tasks, limits={"api": {"concurrency": 2}})
    results = run_parallel_threads(task_map, max_workers=5)
    assert results == {name: name for name in tasks}
    assert task_map.partitioner().limit_stats()["api"].peak == 2
    assert task_map.partitioner().units["t0"].timeout == 5
    shared = Limit("api", concurrency=1)
    assert TaskMap(tasks, limits={"api": shared}).limits == {"api": shared}


def test_bad_task_options_and_limits_are_refused_naming_them():
    """Unknown options, bad values and bad limits raise when the map is built."""
    with pytest.raises(TypeError, match=r"task 'a': unknown options \['colour'\]"):
        TaskMap({"a": (lambda ctx: 1, [], {"colour": "red"})})
    with pytest.raises(ValueError, match=r"unit 'a': retries must be >= 0"):
        TaskMap({"a": (lambda ctx: 1, [], {"retries": -1})})
    with pytest.raises(TypeError, match=r"unit 'a': limits must be a list"):
        TaskMap({"a": (lambda ctx: 1, [], {"limits": "api"})})
    with pytest.raises(ValueError, match=r"limit 'api': concurrency must be positive"):
        TaskMap({}, limits={"api": {"concurrency": 0}})
    with pytest.raises(TypeError, match=r"limit 'api': expected a Limit"):
        TaskMap({}, limits={"api": 3})
    task_map = TaskMap({"a": (lambda ctx: 1, [], {"limits": ["nope"]})})
    with pytest.raises(ValueError, match=r"unit 'a' names the unknown limit 'nope'"):
        run_tasks(task_map)


def test_a_task_map_declares_maps_conditions_and_join_rules_through_options():
    """{"over": ...} makes a map; "when" and "run_if" are add_unit's condition and join rule."""
    tasks = {
        "plan": (lambda ctx: ["a", "b", "c"], []),
        "prefix": (lambda ctx: ">", []),
        "tool": (lambda ctx: ctx["prefix"] + ctx.item, ["prefix"], {"over": "plan"}),
        "shout": (lambda ctx: ctx.item.upper(), [], {"over": "tool", "max_items": 5}),
        "never": (lambda ctx: "ran", ["plan"], {"when": lambda ctx: len(ctx["plan"]) > 9}),
        "report": (
            lambda ctx: (ctx["shout"], sorted(ctx.upstream_errors)),
            ["shout", "never"],
            {"run_if": "none_failed"},
        ),
    }
    task_map = TaskMap(tasks)
    results = run_parallel_threads(task_map, max_workers=2)
    assert results["tool"] == [">a", ">b", ">c"]
    assert results["shout"] == [">A", ">B", ">C"]
    assert results["report"] == ([">A", ">B", ">C"], ["never"])
    assert "never" not in results
    p = task_map.partitioner()
    assert p.units["tool"].over == "plan"
    assert p.units["shout"].max_items == 5
    assert p.units["never"].state is UnitState.SKIPPED
    assert p.build_execution_plan().graph.maps == {2: 0, 3: 2}


def test_map_and_decision_options_are_checked_as_add_map_and_add_unit_check_them():
    """Bad options for a map or a decision raise when the task map is built, naming the task."""
    with pytest.raises(
        TypeError, match=r"task 'm': unknown options \['cancel_rest'\]; use add_map"
    ):
        TaskMap({"m": (lambda ctx: 1, [], {"over": "p", "cancel_rest": True})})
    with pytest.raises(
        TypeError, match=r"task 'a': unknown options \['max_items'\]; use add_unit"
    ) as no_map:
        TaskMap({"a": (lambda ctx: 1, [], {"max_items": 3})})
    assert str(no_map.value).endswith("(with over, add_map's: a map)")  # a forgotten over=
    with pytest.raises(ValueError, match=r"'m'.*at_least"):
        TaskMap({"m": (lambda ctx: 1, ["x"], {"over": "p", "run_if": at_least(1)})})
    with pytest.raises(ValueError, match=r"'m': a map cannot map over itself"):
        TaskMap({"m": (lambda ctx: 1, [], {"over": "m"})})
    with pytest.raises(ValueError, match=r"'a': unknown join rule 'most'"):
        TaskMap({"a": (lambda ctx: 1, [], {"run_if": "most"})})
    with pytest.raises(TypeError, match=r"'a': when= must be callable"):
        TaskMap({"a": (lambda ctx: 1, [], {"when": True})})


def test_a_task_map_in_place_of_a_function_is_a_subgraph():
    """(TaskMap, deps) inlines its tasks as name.<task>; its limits come along; no options."""
    # config -> ingest.load -> ingest.clean -> ingest -> use;  lone.x -> lone
    inner = TaskMap(
        {
            "load": (lambda ctx: ctx["config"] + 1, [], {"limits": ["api"]}),
            "clean": (lambda ctx: ctx["load"] * 10, ["load"]),
        },
        limits={"api": {"concurrency": 1}},
    )
    task_map = TaskMap(
        {
            "config": lambda ctx: 2,
            "ingest": (inner, ["config"]),
            "lone": TaskMap({"x": lambda ctx: 5}).partitioner(),
            "use": (lambda ctx: ctx["ingest"]["clean"], ["ingest"]),
        }
    )
    results = run_tasks(task_map)
    assert results["ingest.load"] == 3
    assert results["ingest"] == {"clean": 30}
    assert results["use"] == 30
    assert results["lone"] == {"x": 5}  # a bare partitioner: a subgraph without dependencies
    assert task_map.partitioner().limits["api"] is inner.limits["api"]
    with pytest.raises(TypeError, match=r"task 'sub': a subgraph takes no options"):
        TaskMap({"sub": (inner, [], {"timeout": 1})})
