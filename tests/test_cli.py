"""The command line as a user runs it: ``python -m quantum_partitioner ...``, a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
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
    import os
    import sys
    import time

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

    def exits():
        raise SystemExit(0)

    # Unit names and messages that would drive a terminal printed raw (issue 9, defect 18).
    def hostile_names():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: "\\x1b[31mred", name="\\x1b[2Jclear")
        p.add_unit(lambda ctx: 1 / 0, ["\\x1b[2Jclear"], name="bidi\\u202etxt.exe")
        p.add_unit(lambda ctx: 1, name="two\\nlines")
        return p

    def non_ascii():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: "résumé ✓", name="café")
        p.add_unit(lambda ctx: 1, ["café"], name="lone\\udc80surrogate")
        return p

    class BadRepr:
        def __repr__(self):
            raise RuntimeError("repr is broken")

    class UnprintableError(Exception):
        def __str__(self):
            raise RuntimeError("str is broken")

    def raise_unprintable(ctx):
        raise UnprintableError

    def unprintable():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: BadRepr(), name="bad_repr")
        p.add_unit(raise_unprintable, name="bad_str")
        return p

    def factory_raises_unprintable():
        raise UnprintableError

    def hostile_error():
        raise RuntimeError("\\x1b]0;owned\\x07 title")

    def unit_exits():
        p = QuantumPartitioner(default_execution_mode="sequential")
        p.add_unit(lambda ctx: 1, name="first")
        p.add_unit(lambda ctx: sys.exit(0), ["first"], name="quits")
        return p

    # -- for `run` ---------------------------------------------------------------------------
    #
    #   boom --> after_boom          slow (timeout 0.05 s)          fine
    #
    def boom(ctx):
        raise ValueError("the disk is full\\nand a second line")

    def failing():
        p = QuantumPartitioner(max_workers=2)
        p.add_unit(boom, name="boom")
        p.add_unit(lambda ctx: 1, ["boom"], name="after_boom")
        p.add_unit(lambda ctx: time.sleep(2), name="slow", timeout=0.05)
        p.add_unit(lambda ctx: "fine", name="fine")
        return p

    def skipping():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: ctx.skip("nothing new"), name="fetch")
        p.add_unit(lambda ctx: 1, ["fetch"], name="parse")
        p.add_unit(lambda ctx: 2, name="other", when=lambda ctx: False)
        p.add_unit(lambda ctx: "fine", name="fine")
        return p

    def handled():
        p = QuantumPartitioner()
        p.add_unit(boom, name="saved", metadata={"fallback_value": 0})
        p.add_unit(boom, name="lost")
        p.add_unit(lambda ctx: 1, ["saved", "lost"], name="report", run_if="all_done")
        return p

    def needs_context():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: ctx["n"] * 2, name="double")
        p.add_unit(lambda ctx: ctx["double"] + ctx.get("extra", 0), ["double"], name="plus")
        return p

    def custom_mode():
        return QuantumPartitioner(default_execution_mode="custom")

    def bad_resource_type():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: 1, name="gpu_job", metadata={"resource_type": "gpu"})
        return p

    def placed():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: os.getpid(), name="cpu_job", metadata={"resource_type": "cpu"})
        p.add_unit(lambda ctx: os.getpid(), name="io_job", metadata={"resource_type": "io"})
        return p

    def stuck():
        p = QuantumPartitioner()
        p.add_unit(lambda ctx: "done", name="quick")

        def wait_forever(ctx):
            print("READY", file=sys.stderr, flush=True)
            while not ctx.cancelled:
                time.sleep(0.01)

        p.add_unit(wait_forever, ["quick"], name="waits")
        p.add_unit(lambda ctx: 2, ["waits"], name="after")
        return p

    # load_data (3) --> process_data (5) --> store_results (1)
    #      \\                                 /
    #       +--------> validate_data (1) ---+
    def weighted():
        p = QuantumPartitioner()
        for name, deps, seconds in [
            ("load_data", [], 3),
            ("process_data", ["load_data"], 5),
            ("validate_data", ["load_data"], 1),
            ("store_results", ["process_data", "validate_data"], 1),
        ]:
            p.add_unit(lambda ctx: 0, deps, name, metadata={"estimated_duration": seconds})
        return p
    """
)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_partitioner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "factories.py").write_text(FACTORIES)
    (tmp_path / "broken_import.py").write_text("import a_module_that_does_not_exist_xyz\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "raises_on_import.py").write_text("raise ValueError('bad config')\n")
    (tmp_path / "exits_on_import.py").write_text("raise SystemExit(3)\n")
    (tmp_path / "clash").mkdir()  # not the current directory, which would shadow the stdlib
    (tmp_path / "clash" / "json.py").write_text("def build():\n    pass\n")
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


def test_demo_writes_its_trace_report_and_picture(tmp_path):
    """`demo --out DIR` writes a loadable trace, an HTML report and a picture, and names them."""
    result = run_cli("demo", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    trace = json.loads((tmp_path / "demo-trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    assert sum(1 for e in events if e.get("ph") == "X" and "extract_0" in e.get("name", "")) == 1
    assert "<html" in (tmp_path / "demo-report.html").read_text().lower()
    pictures = list(tmp_path.glob("demo-graph.*"))
    assert len(pictures) == 1
    for name in ("demo-trace.json", "demo-report.html", pictures[0].name):
        assert name in result.stdout


def test_demo_out_that_cannot_be_a_directory_is_exit_status_2_before_the_run(tmp_path):
    """`demo --out` at a file: one line naming --out, exit 2, before any unit runs."""
    (tmp_path / "a_file").write_text("")
    result = run_cli("demo", "--out", str(tmp_path / "a_file" / "out"), "--no-progress")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{ERROR_PREFIX}--out ")
    assert "NotADirectoryError" in lines[0]


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
        ("factories:exits", "factories:exits() raised SystemExit: 0"),  # issue 9, defect 18
        ("exits_on_import:build", "cannot import module 'exits_on_import': SystemExit: 3"),
        ("factories:hostile_error", r"RuntimeError: \x1b]0;owned\x07 title"),
        ("factories:needs_an_argument", "raised TypeError"),
        ("factories:cycle", "circular dependency: 'a' -> 'b' -> 'a'"),
        ("factories", "expected MODULE:FACTORY"),
        ("missing_file.py:build", "cannot import module 'missing_file.py': no such file"),
        ("clash/json.py:build", "as module 'json': that name is taken by"),
        ("factories:", "expected MODULE:FACTORY"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_factory_is_one_line_and_exit_status_2(project, command, target, message):
    """`plan` and `run`: bad input gets one clear line on stderr, exit 2, no traceback."""
    result = run_cli(command, target, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX)
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_defect_18_names_are_printed_with_control_characters_escaped(project):
    """Issue 9 defect 18: no control character of a unit's name reaches the terminal."""
    outputs = [
        run_cli(*args, "factories:hostile_names", cwd=project)
        for args in (["plan"], ["plan", "--format", "mermaid"], ["run"])
    ]
    for result in outputs:
        assert result.returncode in {0, 1}, result.stderr
        assert not any(ch in result.stdout for ch in "\x1b\u202e\r"), result.stdout
    plan, mermaid, run = (result.stdout for result in outputs)
    assert r"level 0        \x1b[2Jclear, two\nlines" in plan
    assert r"critical path    \x1b[2Jclear -> bidi\u202etxt.exe" in plan
    assert '["#27;[2Jclear"]' in mermaid
    rows = {line.split()[0]: line for line in run.splitlines()[3:-2]}
    assert set(rows) == {r"\x1b[2Jclear", r"bidi\u202etxt.exe", r"two\nlines"}
    assert r"'\x1b[31mred'" in rows[r"\x1b[2Jclear"]


def test_results_and_errors_whose_repr_or_str_raises_are_shown_as_such(project):
    """A result whose repr() raises, an error whose str() raises: rows say so, no traceback."""
    result = run_cli("run", "factories:unprintable", cwd=project)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[3:-2]}
    assert rows["bad_repr"].endswith("<repr() of BadRepr raised RuntimeError>")
    assert rows["bad_str"].endswith(
        "UnprintableError: <str() of UnprintableError raised RuntimeError>"
    )
    plan = run_cli("plan", "factories:factory_raises_unprintable", cwd=project)
    assert plan.returncode == 2
    raised = "raised UnprintableError: <str() of UnprintableError raised RuntimeError>"
    assert plan.stderr.splitlines() == [
        f"{ERROR_PREFIX}factories:factory_raises_unprintable() {raised}"
    ]


def test_defect_18_a_unit_calling_sys_exit_is_no_success(project):
    """A unit's SystemExit stops the run: rows printed, one line on stderr, exit status 1."""
    result = run_cli("run", "factories:unit_exits", cwd=project)
    assert result.returncode == 1
    assert "first" in result.stdout
    assert "COMPLETED" in result.stdout
    assert result.stderr == "quantum-partitioner: the run was stopped: SystemExit: 0\n"


@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
def test_output_a_terminal_cannot_encode_is_written_as_escapes(project, encoding):
    """An ASCII terminal, or a lone surrogate on UTF-8: escapes, not a UnicodeEncodeError."""
    env = {"PYTHONIOENCODING": encoding}
    outputs = [
        run_cli(*args, "factories:non_ascii", cwd=project, env=env)
        for args in (["run"], ["plan", "--format", "dot"], ["plan", "--format", "mermaid"])
    ]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    run, dot, mermaid = (result.stdout for result in outputs)
    assert r"lone\udc80surrogate" in run
    assert r'"lone\udc80surrogate"' in dot
    assert '["lone#56448;surrogate"]' in mermaid
    if encoding == "utf-8":
        assert "café" in run
        assert "'résumé ✓'" in run
    else:
        assert r"caf\xe9" in run
        assert r"'r\xe9sum\xe9 \u2713'" in run


def test_output_to_a_closed_pipe_exits_141(project):
    """The output's reader gone (`| head`): exit 141 (128 + SIGPIPE), no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for args in (["run", "factories:build"], ["plan", "factories:build"]):
            result = subprocess.run(
                [sys.executable, "-m", "quantum_partitioner", *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                cwd=project,
                check=False,
            )
            assert result.returncode == 141, result.stderr
            assert result.stderr == ""
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    ("redirect", "args", "status"),
    [(">&-", ["run", "factories:build"], 141), ("2>&-", ["run", "missing:build"], 2)],
    ids=["stdout", "stderr"],
)
def test_started_with_stdout_or_stderr_closed_exits_with_its_status(
    project, redirect, args, status
):
    """Python has no sys.stdout (or stderr) when it starts with it closed: same statuses."""
    command = f'exec "$0" -m quantum_partitioner "$@" {redirect}'
    result = subprocess.run(
        ["sh", "-c", command, sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project,
        check=False,
    )
    assert result.returncode == status, result.stderr
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
    assert "run" in result.stdout


@pytest.mark.parametrize("command", [[], ["run"]])
def test_help_lists_every_exit_status(command):
    """`--help` and `run --help` list each exit status the command can end with."""
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    statuses = result.stdout.split("exit status:\n", 1)[1]
    codes = [int(line.split()[0]) for line in statuses.splitlines() if line.strip()]
    assert codes == [0, 1, 2, 3, 130, 141]


# -- plan --workers ------------------------------------------------------------------------


def test_plan_workers_prints_the_simulated_makespan(project):
    """`plan --workers N` adds the makespan simulated on N workers from estimated durations."""
    one = run_cli("plan", "factories:weighted", "--workers", "1", cwd=project)
    two = run_cli("plan", "factories:weighted", "--workers", "2", cwd=project)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "critical path    load_data -> process_data -> store_results" in two.stdout
    assert "[3 units, length 9]" in two.stdout
    assert one.stdout.splitlines()[-1] == "makespan         10 on 1 worker  [utilisation 100%]"
    # validate_data runs beside process_data: two workers reach the critical path's 9.
    assert two.stdout.splitlines()[-1] == "makespan         9 on 2 workers  [utilisation 56%]"


def test_plan_without_workers_prints_no_makespan(project):
    """Without `--workers`, `plan` prints no simulation."""
    result = run_cli("plan", "factories:weighted", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "makespan" not in result.stdout


def test_plan_workers_needs_the_text_format(project):
    """`--workers` with `--format dot` is a usage error (one line, exit 2)."""
    result = run_cli("plan", "factories:build", "--format", "dot", "--workers", "2", cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{ERROR_PREFIX}--workers is shown by --format text only, not dot"
    ]


# -- run: good runs ------------------------------------------------------------------------


def table(stdout: str) -> dict[str, list[str]]:
    """The rows of `run`'s unit table by unit name: [state, attempts, ms, detail...]."""
    lines = stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:2] == ["unit", "state"])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, *fields = line.split()
        rows[name] = fields
    return rows


def test_run_completes_and_prints_a_row_per_unit(project):
    """`run` exits 0 when every unit completes and prints state, attempts, ms and result."""
    result = run_cli("run", "factories:build", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "factories:build: 4 units, thread mode"
    rows = table(result.stdout)
    assert list(rows) == ["load_data", "process_data", "validate_data", "store_results"]
    for name, (state, attempts, ms, *_) in rows.items():
        assert (state, attempts) == ("COMPLETED", "1"), name
        assert float(ms) >= 0
    assert rows["store_results"][3:] == ["4"]  # the unit's result, as its repr
    assert lines[-1].startswith("4 completed in ")
    assert lines[-1].endswith(" ms")


def test_run_columns_line_up_when_every_name_is_shorter_than_the_header(project):
    """Unit names shorter than "unit": each row's state starts under the "state" header."""
    result = run_cli("run", "factories:task_map", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["unit", "state"])
    rows = [line for line in lines if line.split()[:1] in (["a"], ["b"])]
    assert len(rows) == 2
    assert all(row.index("COMPLETED") == header.index("state") for row in rows)


@pytest.mark.parametrize("mode", ["sequential", "thread", "process", "async"])
def test_run_in_each_mode(project, mode):
    """`run --mode M --workers 2` runs every unit in that mode and says so."""
    result = run_cli("run", "factories:build", "--mode", mode, "--workers", "2", cwd=project)
    assert result.returncode == 0, result.stderr
    workers = "" if mode == "sequential" else ", 2 workers"
    assert result.stdout.splitlines()[0] == f"factories:build: 4 units, {mode} mode{workers}"
    assert {fields[0] for fields in table(result.stdout).values()} == {"COMPLETED"}


def test_run_takes_a_task_map(project):
    """A factory returning a TaskMap is run like a partitioner."""
    result = run_cli("run", "factories:task_map", "--mode", "sequential", cwd=project)
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert [(name, fields[0], fields[3:]) for name, fields in rows.items()] == [
        ("a", "COMPLETED", ["1"]),
        ("b", "COMPLETED", ["2"]),
    ]


def test_run_passes_the_json_context_to_units(project):
    """`--context` is a JSON object every unit sees in ctx."""
    result = run_cli(
        "run", "factories:needs_context", "--context", '{"n": 21, "extra": 0.5}', cwd=project
    )
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert rows["double"][3:] == ["42"]
    assert rows["plus"][3:] == ["42.5"]


def test_run_a_factory_by_file_path(project, tmp_path_factory):
    """MODULE may be the path of a .py file, run from another directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    target = f"{project / 'factories.py'}:build"
    result = run_cli("run", target, "--mode", "process", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{target}: 4 units, process mode"


def test_run_strategy_resource_balanced_places_units(project):
    """`--strategy resource_balanced` runs cpu units in a worker process, io units here."""
    result = run_cli("run", "factories:placed", "--strategy", "resource_balanced", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "resource_balanced strategy" in result.stdout.splitlines()[0]
    rows = table(result.stdout)
    assert rows["cpu_job"][3] != rows["io_job"][3]  # two process ids


# -- run: failures -------------------------------------------------------------------------


def test_run_exits_1_and_explains_failed_skipped_and_timed_out_units(project):
    """A failed or timed-out unit makes `run` exit 1; each row says what happened."""
    result = run_cli("run", "factories:failing", cwd=project)
    assert result.returncode == 1
    assert result.stderr == ""
    rows = table(result.stdout)
    assert rows["boom"][:2] == ["FAILED", "1"]
    assert " ".join(rows["boom"][3:]) == "ValueError: the disk is full"  # first line only
    assert rows["after_boom"][:3] == ["SKIPPED", "0", "-"]
    assert " ".join(rows["after_boom"][3:]) == "skipped: dependency 'boom' failed"
    assert rows["slow"][:2] == ["TIMEOUT", "1"]
    assert " ".join(rows["slow"][3:]) == "timed out after 0.05 s"
    assert rows["fine"][0] == "COMPLETED"
    last = result.stdout.splitlines()[-1]
    assert last.startswith("1 completed, 1 failed, 1 skipped, 1 timeout in ")


def test_run_exits_0_when_units_are_skipped_by_decision(project):
    """Skips by decision (ctx.skip, a false condition) are no failure: `run` exits 0."""
    result = run_cli("run", "factories:skipping", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert rows["fetch"][0] == "SKIPPED"
    assert " ".join(rows["fetch"][3:]) == "skipped: nothing new"
    assert rows["parse"][0] == rows["other"][0] == "SKIPPED"
    assert rows["fine"][0] == "COMPLETED"


def test_run_exits_1_even_when_a_fallback_or_a_join_rule_handled_the_failure(project):
    """A FAILED unit makes `run` exit 1 though its fallback and an all_done unit went on."""
    result = run_cli("run", "factories:handled", cwd=project)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["saved"][0] == rows["lost"][0] == "FAILED"
    assert rows["report"][0] == "COMPLETED"


def test_run_fail_fast_cancels_what_has_not_started(project):
    """`--fail-fast` in sequential mode: after the first failure the rest is CANCELED."""
    result = run_cli("run", "factories:failing", "--mode", "sequential", "--fail-fast", cwd=project)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["boom"][0] == "FAILED"
    assert rows["after_boom"][0] == "SKIPPED"
    assert rows["slow"][0] == rows["fine"][0] == "CANCELED"
    assert " ".join(rows["fine"][3:]) == "cancelled: fail_fast after 'boom' failed"


def test_run_deadline_cancels_what_has_not_finished_and_exits_3(project):
    """`--deadline S`: unfinished units are CANCELED saying why; the exit status is 3."""
    result = run_cli("run", "factories:stuck", "--deadline", "0.5", cwd=project)
    assert result.returncode == 3, result.stderr
    rows = table(result.stdout)
    assert rows["quick"][0] == "COMPLETED"
    assert rows["waits"][0] == rows["after"][0] == "CANCELED"
    assert "the deadline of 0.5 s passed" in result.stdout
    bad = run_cli("run", "factories:stuck", "--deadline", "0", cwd=project)
    assert bad.returncode == 2
    assert "must be positive and finite" in bad.stderr


def test_run_without_the_context_a_unit_needs_fails_the_unit(project):
    """A missing context key fails the unit that reads it (exit 1), naming the key."""
    result = run_cli("run", "factories:needs_context", cwd=project)
    assert result.returncode == 1
    rows = table(result.stdout)
    assert " ".join(rows["double"][3:]).startswith("KeyError: 'n' is neither a context key")
    assert rows["plus"][0] == "SKIPPED"


# -- run: bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ('{"n": 1', "--context is not valid JSON: Expecting ',' delimiter: line 1 column 8"),
        ("", "--context is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("n=1", "--context is not valid JSON"),
        ("[1, 2]", "--context must be a JSON object, got a JSON array"),
        ('"text"', "--context must be a JSON object, got a JSON string"),
        ("3", "--context must be a JSON object, got a JSON number"),
        ("true", "--context must be a JSON object, got a JSON boolean"),
        ("null", "--context must be a JSON object, got a JSON null"),
    ],
)
def test_run_bad_context_is_one_line_and_exit_status_2(project, context, message):
    """Bad `--context` JSON gets one clear line on stderr and exit status 2; nothing runs."""
    result = run_cli("run", "factories:needs_context", "--context", context, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX + message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["factories:custom_mode"], "ExecutionMode.CUSTOM needs custom_executor"),
        (
            ["factories:bad_resource_type", "--strategy", "resource_balanced"],
            "unit 'gpu_job': resource_type must be one of ['cpu', 'io', 'async'], got 'gpu'",
        ),
    ],
)
def test_run_partitioner_that_cannot_run_is_exit_status_2(project, args, message):
    """A partitioner rejected before any unit runs is bad input: one line, exit 2."""
    result = run_cli("run", *args, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--mode", "thread", "--strategy", "adaptive"],
        ["--mode", "threads"],
        ["--workers", "0"],
    ],
)
def test_run_bad_options_are_usage_errors(project, args):
    """Unknown modes, a zero worker count or both --mode and --strategy: exit 2."""
    result = run_cli("run", "factories:build", *args, cwd=project)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: quantum-partitioner run" in result.stderr


# -- run: Ctrl-C ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_run_interrupted_prints_what_completed_and_exits_130(project, mode):
    """Ctrl-C during `run`: the table shows completed and CANCELED units, exit status 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantum_partitioner", "run", "factories:stuck", "--mode", mode],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == "READY"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert elapsed < 10
    assert err.splitlines() == ["quantum-partitioner: interrupted"]
    rows = table(out)
    assert rows["quick"][0] == "COMPLETED"
    assert rows["waits"][0] == rows["after"][0] == "CANCELED"
    assert out.splitlines()[-1].startswith("1 completed, 2 canceled in ")


def test_help_of_run_lists_its_options():
    """`run --help` documents the mode, strategy, workers, context and fail-fast options."""
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for option in ("--mode", "--strategy", "--workers", "--context", "--fail-fast"):
        assert option in result.stdout
