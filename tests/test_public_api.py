"""The public surface: __all__, original API names, module paths and the error tree."""

from __future__ import annotations

import enum
import importlib
import inspect
import pickle
import pkgutil

import pytest

import quantum_partitioner as qp
from quantum_partitioner import taskmap, testing

# Names that private modules list in their __all__ for the package's own use. Anything else a
# private module declares public must be exported from the package (or added here, with why).
INTERNAL = {
    # Compiled graph and run record: reached through public objects (ExecutionPlan.graph,
    # Backend.run(run)), never built by users.
    "quantum_partitioner._graph": {"Graph", "compile_graph"},
    "quantum_partitioner._run": {"Run"},
    # Implementation of ExecutionPlan.visualize/to_mermaid/simulate and of metrics; the
    # code points the pictures and the CLI escape.
    "quantum_partitioner.observability._render": {
        "DECIDED_SKIP_COLOUR",
        "STATE_COLOURS",
        "UNSAFE_CODE_POINTS",
        "map_note",
        "to_dot",
        "to_mermaid",
        "unit_colour",
    },
    "quantum_partitioner._simulate": {"simulate"},
    # The scheduler's side of named limits and their argument checks (add_limit is public).
    "quantum_partitioner._limits": {
        "LimitGate",
        "LimitPlan",
        "check_limit_name",
        "compile_limits",
        "normalize_unit_limits",
    },
    "quantum_partitioner.observability._metrics": {"build_metrics"},
    # The join rules' definition, used by the scheduler; users name rules or call at_least.
    "quantum_partitioner._joins": {
        "ALL_DONE",
        "ALL_SUCCESS",
        "ANY_SUCCESS",
        "NONE_FAILED",
        "Verdict",
        "join_rule",
        "judge",
    },
    # Implementation of add_subgraph() (subgraph_result is the subgraph's own unit).
    "quantum_partitioner._subgraph": {"inline_subgraph", "subgraph_result"},
    # Implementation of execute_with_strategy().
    "quantum_partitioner._strategies": {
        "RESOURCE_TYPES",
        "AdaptiveBackend",
        "resource_balanced_backend",
    },
    # The CLI's bundled demo pipeline: application code, not library API.
    "quantum_partitioner._demo": "*",
    # Backend plumbing, shared between backends.
    "quantum_partitioner.backends._asyncio": {"PlainCalls", "call_async", "check_no_running_loop"},
    "quantum_partitioner.backends._base": {
        "CarriedBaseException",
        "carried_failure",
        "check_sendable",
        "pool_size",
        "root_cause",
    },
    "quantum_partitioner.backends._pool": {"DaemonPool", "default_thread_workers"},
    "quantum_partitioner.backends._executor": {"call_unit"},
    "quantum_partitioner.backends._lanes": {"FutureLane", "Outcome", "Post"},
}


def private_modules():
    """Every private module of the package (``_x``, not ``__main__``), imported."""
    return [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(qp.__path__, "quantum_partitioner.")
        if info.name.rsplit(".", 1)[-1].startswith("_")
        and not info.name.rsplit(".", 1)[-1].startswith("__")
    ]


def test_all_is_sorted_and_unique():
    """quantum_partitioner.__all__ is sorted with no duplicates."""
    assert list(qp.__all__) == sorted(set(qp.__all__))


def test_every_name_in_all_exists():
    """Every name in __all__ is an attribute of the package."""
    missing = [name for name in qp.__all__ if not hasattr(qp, name)]
    assert missing == []


def test_all_is_complete():
    """Every name a private module declares public is exported, unless listed as internal."""
    missing = {}
    for module in private_modules():
        name = module.__name__
        if INTERNAL.get(name) == "*":
            continue
        public = "quantum_partitioner.backends" if ".backends." in name else "quantum_partitioner"
        exported = set(importlib.import_module(public).__all__)
        declared = set(getattr(module, "__all__", ()))
        left = declared - exported - INTERNAL.get(name, set())
        if left:
            missing[name] = sorted(left)
    assert missing == {}, (
        "export these from the public package, or list them in INTERNAL (in this file) with why"
    )


def test_internal_list_is_not_stale():
    """Every name listed as internal still exists in its module's __all__."""
    for module_name, names in INTERNAL.items():
        module = importlib.import_module(module_name)
        if names != "*":
            assert names <= set(module.__all__), module_name


def test_no_package_object_is_public_without_being_in_all():
    """Every package-defined object bound to a public top-level name is listed in __all__."""
    extra = {
        name
        for name, value in vars(qp).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("quantum_partitioner")
        and name not in qp.__all__
    }
    assert extra == set()


def test_exported_classes_and_functions_say_they_live_in_the_package():
    """Every exported class and function has __module__ == "quantum_partitioner"."""
    wrong = {
        name: obj.__module__
        for name in qp.__all__
        if inspect.isclass(obj := getattr(qp, name)) or inspect.isfunction(obj)
        if obj.__module__ != "quantum_partitioner"
    }
    assert wrong == {}


def test_version_is_a_string():
    """__version__ is the installed distribution's version string."""
    assert isinstance(qp.__version__, str)
    assert qp.__version__.count(".") >= 1


# -- original API names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "QuantumPartitioner",
        "QuantumUnit",
        "UnitState",
        "ExecutionMode",
        "ExecutionPlan",
        "ExecutionContext",
        "TaskError",
        "CircularDependency",
        "CircularDependencyError",
    ],
)
def test_original_names_are_importable(name):
    """The original API's names import from the package and are listed in __all__."""
    module = importlib.import_module("quantum_partitioner")
    assert getattr(module, name) is not None
    assert name in qp.__all__


def test_unit_state_has_the_original_seven_states():
    """UnitState is an Enum with exactly the original API's 7 states and values."""
    assert issubclass(qp.UnitState, enum.Enum)
    assert {state.name: state.value for state in qp.UnitState} == {
        "PENDING": "pending",
        "RUNNING": "running",
        "COMPLETED": "completed",
        "FAILED": "failed",
        "SKIPPED": "skipped",
        "CANCELED": "canceled",
        "TIMEOUT": "timeout",
    }


def test_only_pending_and_running_are_not_terminal():
    """Exactly PENDING and RUNNING are non-terminal states."""
    assert {s for s in qp.UnitState if not s.is_terminal} == {
        qp.UnitState.PENDING,
        qp.UnitState.RUNNING,
    }


def test_execution_mode_has_the_original_five_modes():
    """ExecutionMode is an Enum with exactly the original API's 5 modes and values."""
    assert issubclass(qp.ExecutionMode, enum.Enum)
    assert {mode.name: mode.value for mode in qp.ExecutionMode} == {
        "SEQUENTIAL": "sequential",
        "PROCESS": "process",
        "THREAD": "thread",
        "ASYNC": "async",
        "CUSTOM": "custom",
    }


def test_circular_dependency_is_an_alias():
    """CircularDependency is the very class CircularDependencyError."""
    assert qp.CircularDependency is qp.CircularDependencyError


@pytest.mark.parametrize(
    "name",
    [
        "TaskMap",
        "run_tasks",
        "run_parallel_threads",
        "build_graph",
        "TaskError",
        "CircularDependency",
    ],
)
def test_taskmap_exports_the_original_engine_names(name):
    """quantum_partitioner.taskmap exports the original API's TaskMap names."""
    assert name in taskmap.__all__
    assert getattr(taskmap, name) is not None


def test_taskmap_exceptions_is_where_the_original_api_imports_its_errors_from():
    """``from taskmap.exceptions import TaskError, CircularDependency``, as the original API
    writes it, works with the package's taskmap and gives the package's own classes."""
    from quantum_partitioner.taskmap.exceptions import (  # noqa: PLC0415 - the import tested
        CircularDependency,
        TaskError,
    )

    assert TaskError is qp.TaskError
    assert CircularDependency is qp.CircularDependencyError


def test_taskmap_errors_are_the_packages_errors():
    """taskmap's TaskError and CircularDependency are the package's own classes."""
    assert taskmap.TaskError is qp.TaskError
    assert taskmap.CircularDependency is qp.CircularDependencyError
    assert list(taskmap.__all__) == sorted(set(taskmap.__all__))
    assert all(hasattr(taskmap, name) for name in taskmap.__all__)


def test_testing_module_exports_fake_clock():
    """quantum_partitioner.testing exports FakeClock in a sorted __all__."""
    assert "FakeClock" in testing.__all__
    assert list(testing.__all__) == sorted(set(testing.__all__))
    assert testing.FakeClock.__module__ == "quantum_partitioner.testing"


# -- the error tree (as drawn in _errors.py) ----------------------------------------------------

ERROR_TREE = [
    (qp.PartitionerError, Exception),
    (qp.GraphError, qp.PartitionerError),
    (qp.GraphError, ValueError),
    (qp.DuplicateUnitError, qp.GraphError),
    (qp.UnknownDependencyError, qp.GraphError),
    (qp.CircularDependencyError, qp.GraphError),
    (qp.TaskError, qp.PartitionerError),
    (qp.UnitTimeoutError, qp.PartitionerError),
    (qp.UnitTimeoutError, TimeoutError),
    (qp.UnitSkippedError, qp.PartitionerError),
    (qp.UnitCancelledError, qp.PartitionerError),
    (qp.MapItemsFailedError, qp.PartitionerError),
    (qp.WorkerDiedError, qp.PartitionerError),
    (qp.WorkerDiedError, RuntimeError),
    (qp.BrokenBackendError, qp.PartitionerError),
    (qp.BrokenBackendError, RuntimeError),
    (qp.InternalError, qp.PartitionerError),
    (qp.InternalError, RuntimeError),
    # Not an error: a unit's decision to skip, so outside PartitionerError on purpose.
    (qp.SkipUnit, Exception),
]


@pytest.mark.parametrize(
    ("cls", "base"), ERROR_TREE, ids=[f"{c.__name__}-{b.__name__}" for c, b in ERROR_TREE]
)
def test_error_hierarchy(cls, base):
    """Each error derives from its parent in the tree and from its matching builtin."""
    assert issubclass(cls, base)


@pytest.mark.parametrize(
    ("cls", "not_base"),
    [
        (qp.TaskError, ValueError),
        (qp.UnitSkippedError, RuntimeError),
        (qp.UnitCancelledError, RuntimeError),
        (qp.UnitTimeoutError, ValueError),
        (qp.GraphError, RuntimeError),
    ],
)
def test_error_hierarchy_has_no_extra_builtin_bases(cls, not_base):
    """Errors derive only from the builtins drawn in the tree."""
    assert not issubclass(cls, not_base)


def test_every_exported_exception_is_in_the_tree():
    """Every exception class exported by the package appears in the drawn tree.

    Warnings are not errors: the one warning category is a UserWarning.
    """
    in_tree = {cls for cls, _ in ERROR_TREE}
    exported = {
        obj
        for name in qp.__all__
        if inspect.isclass(obj := getattr(qp, name)) and issubclass(obj, BaseException)
    }
    assert exported - in_tree == {qp.InsecureCacheWarning}
    assert in_tree <= exported
    assert issubclass(qp.InsecureCacheWarning, UserWarning)


ERRORS = [
    qp.DuplicateUnitError("a"),
    qp.UnknownDependencyError("a", "b"),
    qp.CircularDependencyError(["a", "b", "a"]),
    qp.TaskError({"a": ValueError("x")}, {"b": 1}, ["a"]),
    qp.UnitTimeoutError("a", 1.5),
    qp.UnitSkippedError("b", "a"),
    qp.UnitSkippedError("b", None, qp.SkipCause.DECISION, "nothing to do"),
    qp.SkipUnit("nothing to do"),
    qp.UnitCancelledError("a", "fail_fast"),
    qp.WorkerDiedError("a", -9),
    qp.MapItemsFailedError("tool", ["tool[1]", "tool[3]"]),
]


@pytest.mark.parametrize("error", ERRORS, ids=[type(e).__name__ for e in ERRORS])
def test_errors_survive_pickling(error):
    """Errors round-trip through pickle (they cross process boundaries) with message and fields."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert {k: repr(v) for k, v in vars(copy).items()} == {
        k: repr(v) for k, v in vars(error).items()
    }


# -- types: what mypy rejects (tests/typing/ holds what it accepts) ------------------------------

REJECTED = """
from typing import Any

from quantum_partitioner import ExecutionContext, QuantumPartitioner
from quantum_partitioner.taskmap import TaskMap, run_tasks

partitioner = QuantumPartitioner()


def takes_nothing() -> int:
    return 1


@partitioner.add_unit()
def doubles(ctx: ExecutionContext) -> int:
    return 2


partitioner.add_unit(takes_nothing)  # E: arg-type
partitioner.add_unit(lambda: 1)  # E: arg-type
partitioner.execute({}, execution_mode="processes")  # E: arg-type
QuantumPartitioner(default_execution_mode="threads")  # E: arg-type
partitioner.execute_with_strategy({}, "fastest")  # E: arg-type
partitioner.stream({}, strategy="fastest")  # E: arg-type
partitioner.add_unit(doubles, name="limited", limits="api")  # E: call-overload
partitioner.execute({}, deadline="5 s")  # E: arg-type
doubles(3)  # E: arg-type
typed: QuantumPartitioner[Any, int] = QuantumPartitioner()
typed.add_unit(lambda ctx: "text")  # E: arg-type
typed.add_unit(doubles)
run_tasks({"a": takes_nothing})  # E: dict-item
TaskMap({"a": (takes_nothing, [])})  # E: dict-item
TaskMap({"a": (lambda ctx: 1, []), "b": lambda ctx: 2, "c": (doubles, ["a"])})
"""


# mypy's own run bounds it (5 minutes); on a loaded machine it may need more than the
# suite's 2-minute test timeout.
@pytest.mark.timeout(300)
def test_mypy_rejects_units_without_ctx_unknown_modes_and_wrong_result_types(tmp_path, mypy):
    """A unit or task taking no ctx, a misspelt mode or strategy, a wrong result type: errors."""
    (tmp_path / "rejected.py").write_text(REJECTED)
    expected = {
        number: set(line.split("# E: ")[1].split())
        for number, line in enumerate(REJECTED.splitlines(), start=1)
        if "# E: " in line
    }
    found: dict[int, set[str]] = {}
    for _, number, message in mypy("rejected.py", cwd=tmp_path):
        found.setdefault(number, set()).add(message.rsplit("[", 1)[-1].rstrip("]"))
    assert set(found) == set(expected), found
    for number, codes in expected.items():
        assert codes <= found[number], (number, found[number])
