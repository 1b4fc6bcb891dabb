"""The command line as a user runs it: ``python -m quantum_partitioner ...``, a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

ERROR_PREFIX = "quantum-partitioner: error: "

# A module a user might point `plan` at, written into each test's own directory.
#
#   load_data --> process_data --> store_results
#        \                        /
#         +--> validate_data ----+
FACTORIES = textwrap.dedent(
    """
    from quantum_partitioner import QuantumPartitioner
    from quantum_partitioner.taskmap import TaskMap

    def build():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: 1, name="load_data")
        p.add_unit(lambda ctx: 2, ["load_data"], name="process_data")
        p.add_unit(lambda ctx: 3, ["load_data"], name="validate_data")
        p.add_unit(lambda ctx: 4, ["process_data", "validate_data"], name="store_results")
        return p

    PARTITIONER = build()

    def task_map():
        return TaskMap({"a": (lambda ctx: 1, []), "b": (lambda ctx: 2, ["a"])})

    def not_a_partitioner():
        return 42

    def raises():
        raise RuntimeError("no database\\nsecond line")

    def needs_an_argument(name):
        return QuantumPartitioner()

    def cycle():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: 1, ["b"], name="a")
        p.add_unit(lambda ctx: 1, ["a"], name="b")
        return p

    NUMBER = 3
    """
)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_partitioner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "factories.py").write_text(FACTORIES)
    (tmp_path / "broken_import.py").write_text("import a_module_that_does_not_exist_xyz\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "raises_on_import.py").write_text("raise ValueError('bad config')\n")
    return tmp_path


# -- demo ----------------------------------------------------------------------------------


def unit_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of the demo's unit table, by unit name."""
    rows = {}
    for line in stdout.splitlines():
        fields = line.split()
        if fields and fields[0].startswith(("extract_", "chunk_", "embed_", "index_embeddings")):
            rows[fields[0]] = fields
    return rows


def test_demo_completes_every_unit_and_prints_the_summary():
    """`demo` exits 0 and lists the plan, 16 completed units, the query's hits and the time."""
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "thread mode, 4 workers" in out
    assert "units            16" in out
    assert "levels           4" in out
    assert "max parallelism  5" in out
    assert "critical path    extract_0 -> chunk_0 -> embed_0 -> index_embeddings" in out
    rows = unit_rows(out)
    assert len(rows) == 16
    for name, fields in rows.items():
        assert fields[1] == "COMPLETED", name
        assert fields[2] == "1", name
        float(fields[3])  # a duration in ms
    assert "Failure and Recovery" in out  # the sample query finds the document about it
    assert "16 of 16 units completed in" in out
    assert len(out.splitlines()) <= 60


@pytest.mark.parametrize("mode", ["sequential", "thread"])
def test_demo_mode_and_workers_options(mode):
    """`demo --mode M --workers N` runs in that mode and says so."""
    result = run_cli("demo", "--mode", mode, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"{mode} mode, 2 workers" in result.stdout
    assert all(fields[1] == "COMPLETED" for fields in unit_rows(result.stdout).values())


def test_demo_rejects_a_worker_count_below_one():
    """`demo --workers 0` is a usage error: exit status 2, nothing run."""
    result = run_cli("demo", "--workers", "0")
    assert result.returncode == 2
    assert "--workers: must be at least 1" in result.stderr
    assert result.stdout == ""


# -- plan: good input ----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["factories:build", "factories:PARTITIONER"])
def test_plan_prints_levels_and_critical_path(project, target):
    """`plan MODULE:FACTORY` takes a factory or a partitioner and describes its graph."""
    result = run_cli("plan", target, cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "units            4",
        "levels           3",
        "  level 0        load_data",
        "  level 1        process_data, validate_data",
        "  level 2        store_results",
        "max parallelism  2",
        "critical path    load_data -> process_data -> store_results  [3 units, length 3]",
    ]


def test_plan_accepts_a_task_map(project):
    """A factory may return a TaskMap; its graph is planned the same way."""
    result = run_cli("plan", "factories:task_map", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "critical path    a -> b" in result.stdout


def test_plan_dot_and_mermaid(project):
    """`--format dot` prints Graphviz source, `--format mermaid` a Mermaid flowchart."""
    dot = run_cli("plan", "factories:build", "--format", "dot", cwd=project)
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith("digraph")
    assert '"load_data" -> "process_data"' in dot.stdout
    mermaid = run_cli("plan", "factories:build", "--format", "mermaid", cwd=project)
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart")
    assert "store_results" in mermaid.stdout


def test_plan_of_the_bundled_demo_pipeline():
    """The demo's own factory can be planned from anywhere: it is part of the package."""
    result = run_cli("plan", "quantum_partitioner._demo:create_document_pipeline")
    assert result.returncode == 0, result.stderr
    assert "units            16" in result.stdout


# -- plan: bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
        ("broken_import:build", "No module named 'a_module_that_does_not_exist_xyz'"),
        ("broken_syntax:build", "SyntaxError"),
        ("raises_on_import:build", "ValueError: bad config"),
        ("factories:missing", "module 'factories' has no attribute 'missing'"),
        ("factories:not_a_partitioner", "returned an object of type 'int'"),
        ("factories:NUMBER", "neither a QuantumPartitioner nor a function"),
        ("factories:raises", "factories:raises() raised RuntimeError: no database"),
        ("factories:needs_an_argument", "raised TypeError"),
        ("factories:cycle", "circular dependency: 'a' -> 'b' -> 'a'"),
        ("factories", "expected MODULE:FACTORY"),
        ("factories:", "expected MODULE:FACTORY"),
    ],
)
def test_plan_bad_input_is_one_line_and_exit_status_2(project, target, message):
    """Bad input gets one clear line on stderr, exit status 2 and no traceback."""
    result = run_cli("plan", target, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX)
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_no_command_is_a_usage_error():
    """Without a subcommand the CLI prints its usage and exits with status 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "usage: quantum-partitioner" in result.stderr


def test_help_lists_the_subcommands():
    """`--help` exits 0 and names every subcommand."""
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert "plan" in result.stdout
