"""The original API document's usage examples, run as written with small real functions.

Each test copies one example's code (its "Usage Patterns" and the TaskMap calls of its
implementation sketch) and checks what its reader would expect. The original document imports
``taskmap`` and ``taskmap.exceptions``; here they are ``quantum_partitioner.taskmap`` and
``quantum_partitioner.taskmap.exceptions``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from quantum_partitioner import ExecutionMode, QuantumPartitioner, UnitState
from quantum_partitioner.taskmap import (
    CircularDependency,
    TaskError,
    TaskMap,
    build_graph,
    run_parallel_threads,
)

# -- the functions the examples call ---------------------------------------------------------


def load_data(ctx):
    return [int(x) for x in ctx["input_data"]]


def process_data(ctx):
    return [x * x for x in ctx["load_data"]]


def validate_data(ctx):
    return all(x >= 0 for x in ctx["load_data"])


def store_results(ctx):
    return {"stored": len(ctx["process_data"]), "valid": ctx["validate_data"]}


def fetch_data_from_api(ctx):
    raise ConnectionError(f"cannot reach {ctx['api_url']}")


def process(data):
    return [item.upper() for item in data]


def add_example_units(partitioner):
    partitioner.add_unit(fn=load_data, dependencies=[], name="load_data")
    partitioner.add_unit(fn=process_data, dependencies=["load_data"], name="process_data")
    partitioner.add_unit(fn=validate_data, dependencies=["load_data"], name="validate_data")
    partitioner.add_unit(
        fn=store_results,
        dependencies=["process_data", "validate_data"],
        name="store_results",
    )


# -- Usage Patterns --------------------------------------------------------------------------


def test_basic_parallel_execution(capsys):
    """The "Basic Parallel Execution" example plans, runs and returns each unit's result."""
    data = ["1", "2", "3"]

    # Create partitioner instance
    partitioner = QuantumPartitioner(max_workers=4)

    # Add computational units with dependencies
    partitioner.add_unit(fn=load_data, dependencies=[], name="load_data")  # No dependencies
    partitioner.add_unit(
        fn=process_data,
        dependencies=["load_data"],  # Depends on load_data
        name="process_data",
    )
    partitioner.add_unit(
        fn=validate_data,
        dependencies=["load_data"],  # Depends on load_data
        name="validate_data",
    )
    partitioner.add_unit(
        fn=store_results,
        dependencies=["process_data", "validate_data"],  # Depends on both
        name="store_results",
    )

    # Build and visualize the execution plan
    plan = partitioner.build_execution_plan()
    print(f"Execution levels: {plan.levels}")
    print(f"Critical path: {plan.critical_path}")

    # Execute with context
    results = partitioner.execute({"input_data": data})

    # Access individual results
    processed_data = results["process_data"]
    validation_result = results["validate_data"]

    assert processed_data == [1, 4, 9]
    assert validation_result is True
    assert results["store_results"] == {"stored": 3, "valid": True}
    assert plan.levels == [["load_data"], ["process_data", "validate_data"], ["store_results"]]
    assert plan.critical_path in (
        ["load_data", "process_data", "store_results"],
        ["load_data", "validate_data", "store_results"],
    )
    out = capsys.readouterr().out
    assert "Execution levels: [['load_data'], ['process_data', 'validate_data']" in out
    assert "Critical path: ['load_data'" in out


def test_advanced_execution_control(capsys):
    """The "Advanced Execution Control" example's callbacks time every unit of a THREAD run."""
    data = ["4", "5"]

    # Create partitioner with custom execution strategy
    partitioner = QuantumPartitioner(
        max_workers=8,
        default_execution_mode=ExecutionMode.PROCESS,
    )

    # Add computation units
    # ... [units added as in previous example]
    add_example_units(partitioner)

    # Execute with monitoring
    metrics = {}

    def start_monitor(unit_id):
        metrics[unit_id] = {"start_time": time.time()}

    def end_monitor(unit_id, result):
        metrics[unit_id]["end_time"] = time.time()
        metrics[unit_id]["duration"] = metrics[unit_id]["end_time"] - metrics[unit_id]["start_time"]

    # Set up monitoring callbacks
    partitioner.on_unit_start = start_monitor
    partitioner.on_unit_complete = end_monitor

    # Execute with specific mode
    results = partitioner.execute(
        context={"input_data": data},
        execution_mode=ExecutionMode.THREAD,  # Override default mode
        max_workers=4,  # Override default worker count
    )

    # Analyze execution metrics
    total_time = sum(m["duration"] for m in metrics.values())
    max_time = max(m["duration"] for m in metrics.values())
    print(f"Total execution time: {total_time:.2f}s")
    print(f"Critical path time: {max_time:.2f}s")
    print(f"Parallelism efficiency: {total_time / max_time:.2f}x")

    assert results["store_results"] == {"stored": 2, "valid": True}
    assert set(metrics) == {"load_data", "process_data", "validate_data", "store_results"}
    assert partitioner.last_execution_metrics["execution_mode"] == "thread"
    assert partitioner.last_execution_metrics["max_workers"] == 4
    assert "Parallelism efficiency" in capsys.readouterr().out


def test_error_handling_and_recovery(capsys):
    """The "Error Handling and Recovery" example: retries, then the fallback feeds process_data."""
    # Create partitioner with retry capabilities
    partitioner = QuantumPartitioner(max_workers=4)

    # Add units with retry and timeout configuration
    partitioner.add_unit(
        fn=fetch_data_from_api,
        dependencies=[],
        name="fetch_data",
        retries=3,  # Retry up to 3 times
        timeout=5.0,  # 5-second timeout
        metadata={"fallback_value": {"status": "error", "data": []}, "resource_type": "io"},
    )

    # Add error handling to function
    def process_with_error_handling(context):
        try:
            data = context["fetch_data"]
            if data["status"] == "error":
                # Handle error case
                return {"processed": False}
            # Normal processing
            return {"processed": True, "result": process(data["data"])}
        except Exception as e:
            # Log error and return safe result
            print(f"Error in processing: {e}")
            return {"processed": False, "error": str(e)}

    partitioner.add_unit(
        fn=process_with_error_handling,
        dependencies=["fetch_data"],
        name="process_data",
    )

    # Execute with error handling
    partial_results = failed_units = None
    try:
        results = partitioner.execute({"api_url": "https://example.com/api"})
        # Use results
    except Exception as e:
        # Handle execution failure
        print(f"Execution failed: {e}")
        # Check partial results
        partial_results = partitioner.get_partial_results()
        # Check failed units
        failed_units = partitioner.get_failed_units()

    assert (partial_results, failed_units) == (None, None), "execute() should not raise"
    assert results["process_data"] == {"processed": False}
    assert results["fetch_data"] == {"status": "error", "data": []}
    fetch = partitioner.units["fetch_data"]
    assert fetch.state is UnitState.FAILED
    assert fetch.attempt == 4  # 1 + retries=3
    assert isinstance(fetch.error, ConnectionError)
    assert list(partitioner.get_failed_units()) == ["fetch_data"]
    assert "Error in processing" not in capsys.readouterr().out


def test_error_handling_example_succeeds_when_the_api_answers():
    """The same graph with a working API processes the fetched data."""
    partitioner = QuantumPartitioner(max_workers=4)
    partitioner.add_unit(
        fn=lambda ctx: {"status": "ok", "data": ["a", "b"]},
        dependencies=[],
        name="fetch_data",
        retries=3,
        timeout=5.0,
        metadata={"fallback_value": {"status": "error", "data": []}, "resource_type": "io"},
    )
    partitioner.add_unit(
        fn=lambda ctx: {"processed": True, "result": process(ctx["fetch_data"]["data"])},
        dependencies=["fetch_data"],
        name="process_data",
    )

    results = partitioner.execute({"api_url": "https://example.com/api"})

    assert results["process_data"] == {"processed": True, "result": ["A", "B"]}


# -- the TaskMap calls of the original API's implementation sketch ---------------------------


def sketch_tasks():
    return {
        "load_data": (load_data, []),
        "process_data": (process_data, ["load_data"]),
        "validate_data": (validate_data, ["load_data"]),
        "store_results": (store_results, ["process_data", "validate_data"]),
    }


EXPECTED = {
    "load_data": [1, 2],
    "process_data": [1, 4],
    "validate_data": True,
    "store_results": {"stored": 2, "valid": True},
}


def test_taskmap_run_is_the_sequential_mode():
    """TaskMap(tasks).run(context), the original API's SEQUENTIAL path, returns every result."""
    task_map = TaskMap(sketch_tasks())

    results = task_map.run({"input_data": ["1", "2"]})

    assert results == EXPECTED


def test_taskmap_run_parallel_threads_with_executor():
    """run_parallel_threads(task_map, context, executor=executor): the original THREAD path."""
    task_map = TaskMap(sketch_tasks())

    with ThreadPoolExecutor(max_workers=4) as executor:
        results = run_parallel_threads(task_map, {"input_data": ["1", "2"]}, executor=executor)

    assert results == EXPECTED


def test_taskmap_run_parallel_threads_with_max_workers_and_callbacks():
    """The original monitoring call: callbacks on the TaskMap, run_parallel_threads(max_workers)."""
    started, completed, errors = [], [], []
    task_map = TaskMap(sketch_tasks())
    task_map.on_task_start = started.append
    task_map.on_task_complete = lambda name, result: completed.append((name, result))
    task_map.on_task_error = lambda name, error: errors.append(name)

    results = run_parallel_threads(task_map, {"input_data": ["1", "2"]}, max_workers=2)

    assert results == EXPECTED
    assert errors == []
    assert sorted(started) == sorted(EXPECTED)
    assert sorted(completed, key=lambda item: item[0]) == sorted(EXPECTED.items())


def test_build_graph_on_the_original_task_dict():
    """build_graph({unit_id: dependencies}) validates the graph, as build_execution_plan does."""
    task_dict = {name: deps for name, (_, deps) in sketch_tasks().items()}

    plan = build_graph(task_dict)

    assert plan.levels == [["load_data"], ["process_data", "validate_data"], ["store_results"]]


def test_build_graph_raises_circular_dependency():
    """A cycle raises CircularDependency, which the original code catches to re-raise its own."""
    task_dict = {"a": ["c"], "b": ["a"], "c": ["b"]}

    with pytest.raises(CircularDependency) as info:
        build_graph(task_dict)

    assert set(info.value.cycle) == {"a", "b", "c"}
    assert info.value.cycle[0] == info.value.cycle[-1]
    assert "circular dependency" in str(info.value)


def test_task_error_carries_errors_partial_results_and_failed_tasks():
    """A failing task raises TaskError with errors, partial_results and failed_tasks."""
    tasks = sketch_tasks()
    tasks["fetch"] = (fetch_data_from_api, [])
    task_map = TaskMap(tasks)

    try:
        run_parallel_threads(task_map, {"input_data": ["3"], "api_url": "http://x"})
    except TaskError as e:
        errors, partial, failed = e.errors, e.partial_results, e.failed_tasks
    else:
        pytest.fail("TaskError not raised")

    assert list(errors) == ["fetch"]
    assert isinstance(errors["fetch"], ConnectionError)
    assert partial == {
        "load_data": [3],
        "process_data": [9],
        "validate_data": True,
        "store_results": {"stored": 1, "valid": True},
    }
    assert failed == ["fetch"]


# -- the original signatures, called positionally --------------------------------------------


def test_add_unit_and_execute_take_the_original_positional_arguments():
    """add_unit(fn, dependencies, name, timeout, retries, metadata) and execute(context,
    execution_mode, max_workers, custom_executor), in the original order, as written."""
    partitioner = QuantumPartitioner(4, ExecutionMode.THREAD)
    partitioner.add_unit(fetch_data_from_api, [], "fetch", 5.0, 1, {"fallback_value": []})
    partitioner.add_unit(lambda ctx: len(ctx["fetch"]), ["fetch"], "count")

    with ThreadPoolExecutor(max_workers=2) as executor:
        results = partitioner.execute({"api_url": "x"}, ExecutionMode.CUSTOM, 2, executor)

    assert results == {"fetch": [], "count": 0}
    fetch = partitioner.units["fetch"]
    assert (fetch.timeout, fetch.retries, fetch.priority) == (5.0, 1, 0)
    assert fetch.metadata == {"fallback_value": []}
    assert fetch.attempt == 2
