"""The ``quantum-partitioner`` command (also ``python -m quantum_partitioner``).

Subcommands:
    ``demo``: run the bundled document-ingestion pipeline and print what happened.
    ``plan MODULE:FACTORY``: describe the graph a factory builds (levels, critical path,
    simulated makespan), as text, Graphviz DOT or Mermaid.
    ``run MODULE:FACTORY``: run the graph a factory builds and print each unit's outcome;
    exit status 1 if any unit failed or timed out, 3 if ``--deadline`` cancelled units.

Each subcommand is one ``_add_<name>`` function that adds its parser and sets the handler
that runs it; a handler returns the exit status. Bad input a user can fix (a module that
does not import, a factory that is missing or returns no partitioner, an invalid graph)
raises :class:`CommandError`, which :func:`main` prints as one line on stderr with exit
status 2, without a traceback. ``MODULE`` is a module name (found as ``python -m`` would,
the current directory first) or the path of a ``.py`` file.

``run`` keeps its options in argument groups and builds its run in small steps
(:func:`_run_instruments`, then ``execute``, then :func:`_run_lines`), so an option that
observes the run (a progress bar, a trace, a report) is an argument plus an instrument.

Every string that comes from the user (unit names, results, error messages, module
names) goes through :func:`_printable` before it is printed, so control characters in a
name cannot drive the terminal.

This module is the only part of the package that writes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from ._errors import GraphError, PartitionerError, error_text
from ._graph import ExecutionMode, UnitState
from ._partitioner import QuantumPartitioner
from ._strategies import RESOURCE_TYPES
from .observability._render import UNSAFE_CODE_POINTS
from .taskmap import TaskMap

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from ._demo import DemoReport
    from ._plan import ExecutionPlan
    from .observability._events import Instrument

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_DEADLINE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "build_parser",
    "load_partitioner",
    "main",
]

PROG = "quantum-partitioner"
#: Everything went as asked.
EXIT_OK = 0
#: The command ran, but some unit did not complete.
EXIT_FAILED = 1
#: Bad input: arguments, a module that does not import, a factory, a graph.
EXIT_USAGE = 2
#: ``run --deadline``: the deadline passed and cancelled the units that had not finished.
EXIT_DEADLINE = 3
#: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: The reader of the output went away (``| head``): 128 + SIGPIPE, as shells report a
#: command a closed pipe stopped. Not 1, which would say that a unit failed.
EXIT_BROKEN_PIPE = 141
#: What each exit status means: the epilog of ``--help``, written once.
_EXIT_STATUSES = (
    (EXIT_OK, "success: no unit failed or timed out"),
    (EXIT_FAILED, "a unit failed or timed out, or a unit stopped the run with sys.exit()"),
    (EXIT_USAGE, "bad input (arguments, module, factory, graph): one line on stderr"),
    (EXIT_DEADLINE, "run --deadline passed and cancelled the units not finished"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C"),
    (EXIT_BROKEN_PIPE, "the output's reader went away (| head), or stdout is closed"),
)

#: The modes ``demo --mode`` and ``run --mode`` offer (CUSTOM needs an executor object).
_MODES = ("sequential", "thread", "process", "async")
#: The strategies ``run --strategy`` offers (``priority`` is what every mode does).
_STRATEGIES = ("resource_balanced", "adaptive")
#: The help of the ``MODULE:FACTORY`` argument of ``plan`` and ``run``.
_TARGET_HELP = "e.g. myproject.jobs:build, or path/to/jobs.py:build"
#: How many names ``plan`` lists per level before it only counts the rest.
_LEVEL_NAMES_SHOWN = 8
#: The widest result (its repr) and error message ``run`` prints per unit.
_DETAIL_WIDTH = 60
_ERROR_WIDTH = 100
#: Unit states that make ``run`` exit with :data:`EXIT_FAILED`.
_FAILED_STATES = frozenset({UnitState.FAILED, UnitState.TIMEOUT})


class CommandError(Exception):
    """Input a user can fix; :func:`main` prints it as one line and exits with status 2."""


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {
    code: _NAMED_ESCAPES.get(chr(code)) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in UNSAFE_CODE_POINTS
}


def _printable(text: str) -> str:
    r"""``text`` with control characters written as escapes (``\x1b``, ``\n``, ``\u202e``).

    Names and messages come from the user's code: printed raw, an ANSI sequence in a unit
    name would drive the terminal, and a newline would forge a line of output.
    """
    return text.translate(_ESCAPES)


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    Args:
        argv: The arguments after the program name.

    Returns:
        The exit status: :data:`EXIT_OK`, :data:`EXIT_FAILED` (a unit failed or timed
        out), :data:`EXIT_USAGE` (bad input), :data:`EXIT_DEADLINE`,
        :data:`EXIT_INTERRUPTED` or :data:`EXIT_BROKEN_PIPE`.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error argparse reported
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as error:
        _tell(f"{PROG}: error: {_printable(str(error))}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _tell(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``). Point stdout at devnull so that the flush at
        # exit does not raise again, as the Python docs on SIGPIPE advise.
        if sys.stdout is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a graph of Python callables at the highest concurrency it allows.",
        epilog=_exit_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_plan(commands)
    _add_run(commands)
    return parser


def _exit_statuses() -> str:
    rows = (f"  {status:<4} {meaning}" for status, meaning in _EXIT_STATUSES)
    return "\n".join(["exit status:", *rows])


def _tell(line: str) -> None:
    """Write one line on stderr, unless it is closed (``2>&-``: Python has no stderr then)."""
    if sys.stderr is not None:
        sys.stderr.write(line + "\n")


def _write(lines: Iterable[str]) -> None:
    out = sys.stdout
    if out is None:  # started with stdout closed (``>&-``): no reader, as a closed pipe
        raise BrokenPipeError(errno.EPIPE, "standard output is closed")
    encoding = out.encoding or "utf-8"
    for line in lines:
        # A character the terminal cannot show (an ASCII or Latin-1 locale) is written as
        # its escape, as Python writes stderr, instead of a UnicodeEncodeError after the run.
        out.write((line + "\n").encode(encoding, "backslashreplace").decode(encoding))
    out.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def _one_line(error: BaseException) -> str:
    """``Type: message``, first line of the message only."""
    lines = error_text(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _result_text(value: object) -> str:
    """``repr(value)``, or a stand-in saying so when the result's ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception as problem:  # user code: shown, not handled
        return f"<repr() of {type(value).__name__} raised {type(problem).__name__}>"


def _shorten(text: str, width: int = _DETAIL_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# -- demo ----------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the bundled document-ingestion pipeline",
        description=(
            "Ingest the bundled documents (extract -> chunk -> embed per document, then one "
            "index over all of them), answer a sample query, and print the plan, each "
            "unit's outcome and timing, and the query's best hits."
        ),
    )
    parser.add_argument(
        "--mode",
        choices=_MODES,
        default="thread",
        help="where units run (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=4,
        metavar="N",
        help="units that may run at once (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="DIR",
        help="where to write the trace, report and picture (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # noqa: PLC0415 - only this subcommand needs it

    try:
        report = run_demo(
            ExecutionMode(args.mode),
            args.workers,
            output_dir=args.out,
            progress=not args.no_progress,
        )
    except OSError as error:  # the units' errors never escape a run: this is --out
        raise CommandError(f"--out {str(args.out)!r}: {_one_line(error)}") from error
    _write(_demo_lines(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _demo_lines(report: DemoReport) -> list[str]:
    lines = [
        (
            f"Document ingestion: {report.documents} bundled documents, "
            f"{report.mode.value} mode, {report.workers} workers"
        ),
        "",
        "Plan",
        *(f"  {line}" for line in _plan_lines(report.plan)),
        "",
        "Units",
        f"  {'unit':<18} {'state':<10} {'attempts':>8} {'ms':>8}  work",
    ]
    for row in report.rows:
        duration = "-" if row.duration is None else f"{row.duration * 1000:.2f}"
        work = ", ".join(f"{name}={value}" for name, value in row.metrics.items())
        lines.append(
            f"  {_printable(row.name):<18} {row.state.name:<10} {row.attempts:>8} "
            f"{duration:>8}  {_printable(work)}"
        )
    lines += ["", f"Query: {_printable(repr(report.query))}"]
    index = report.index
    if index is None:
        lines.append("  (no answer: index_embeddings did not complete)")
    else:
        lines.append(
            f"  {index.chunks} chunks, {index.terms} terms, {index.dimensions}-dim hashed vectors"
        )
        for rank, hit in enumerate(index.hits, 1):
            chunk = hit.chunk
            words = chunk.text.split()
            snippet = " ".join(words[:9]) + (" ..." if len(words) > 9 else "")
            lines.append(
                f"  {rank}. {hit.score:.3f}  {_printable(chunk.title)} #{chunk.position}: "
                f"{_printable(snippet)}"
            )
    completed = sum(row.state is UnitState.COMPLETED for row in report.rows)
    lines += [
        "",
        f"{completed} of {len(report.rows)} units completed in {report.seconds * 1000:.1f} ms",
    ]
    if report.artifacts:
        lines += ["", "Wrote"]
        lines += (f"  {what:<8} {_printable(str(path))}" for what, path in report.artifacts)
    return lines


# -- plan ----------------------------------------------------------------------------------


def _add_plan(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "plan",
        help="describe the graph a factory builds",
        description=(
            "Import MODULE, call FACTORY() (or take it as is if it is a partitioner) and "
            "describe the graph of the QuantumPartitioner or TaskMap it returns, without "
            "running any unit. MODULE is found as 'python -m' would, the current directory "
            "first, or is the path of a .py file."
        ),
    )
    parser.add_argument("target", metavar="MODULE:FACTORY", help=_TARGET_HELP)
    parser.add_argument(
        "--format",
        choices=("text", "dot", "mermaid"),
        default="text",
        help="text summary, Graphviz DOT, or a Mermaid flowchart (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help=(
            "also print the makespan simulated on N workers, from each unit's "
            "metadata['estimated_duration'] (a unit without one counts as the mean of those "
            "given, 1 when none is); text format only"
        ),
    )
    parser.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    if args.workers is not None and args.format != "text":
        raise CommandError(f"--workers is shown by --format text only, not {args.format}")
    partitioner = load_partitioner(args.target)
    try:
        plan = partitioner.build_execution_plan()
    except GraphError as error:
        raise CommandError(f"{args.target}: {error}") from error
    if args.format == "dot":
        _write([plan.visualize(states=False).rstrip("\n")])
    elif args.format == "mermaid":
        _write([plan.to_mermaid(states=False).rstrip("\n")])
    else:
        lines = _plan_lines(plan)
        if args.workers is not None:
            simulation = plan.simulate(args.workers)
            workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
            lines.append(
                f"makespan         {simulation.makespan:g} on {workers}"
                f"  [utilisation {simulation.utilisation:.0%}]"
            )
        _write(lines)
    return EXIT_OK


def _plan_lines(plan: ExecutionPlan) -> list[str]:
    """The text description of a plan that ``plan`` and ``demo`` print."""
    levels = plan.levels
    lines = [
        f"units            {plan.unit_count}",
        f"levels           {plan.max_level}",
    ]
    for number, level in enumerate(levels):
        shown = ", ".join(map(_printable, level[:_LEVEL_NAMES_SHOWN]))
        more = len(level) - _LEVEL_NAMES_SHOWN
        lines.append(f"  level {number:<8} {shown}{f' (+{more} more)' if more > 0 else ''}")
    maps = plan.maps
    if maps:
        shown = ", ".join(
            f"{_printable(m)} over {_printable(o)}" for m, o in list(maps.items())[:5]
        )
        lines.append(
            f"maps             {shown}{f' (+{len(maps) - 5} more)' if len(maps) > 5 else ''}"
        )
    subgraphs = plan.subgraphs
    if subgraphs:
        shown = ", ".join(
            f"{_printable(s)} ({len(inner)} units)" for s, inner in list(subgraphs.items())[:5]
        )
        more = len(subgraphs) - 5
        lines.append(f"subgraphs        {shown}{f' (+{more} more)' if more > 0 else ''}")
    path = plan.critical_path
    lines += [
        f"max parallelism  {plan.max_parallel_units}",
        (
            f"critical path    {' -> '.join(map(_printable, path)) if path else '(empty)'}"
            f"  [{len(path)} units, length {plan.critical_path_length:g}]"
        ),
    ]
    return lines


# -- run -----------------------------------------------------------------------------------


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run the graph a factory builds",
        description=(
            "Import MODULE (as 'plan' does), call FACTORY() (or take it as is if it is a "
            "partitioner), run the QuantumPartitioner or TaskMap it returns, and print each "
            "unit's state, attempts, duration and result or error."
        ),
        epilog=_exit_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="MODULE:FACTORY", help=_TARGET_HELP)
    where = parser.add_argument_group("where units run")
    placement = where.add_mutually_exclusive_group()
    placement.add_argument(
        "--mode",
        choices=_MODES,
        help="execution mode (default: the partitioner's default_execution_mode)",
    )
    placement.add_argument(
        "--strategy",
        choices=_STRATEGIES,
        help=(
            "resource_balanced: place each unit by metadata['resource_type'] "
            f"({', '.join(RESOURCE_TYPES)}); adaptive: threads that follow the machine's load"
        ),
    )
    where.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="units that may run at once (default: the partitioner's max_workers)",
    )
    how = parser.add_argument_group("how the run goes")
    how.add_argument(
        "--context",
        metavar="JSON",
        default="{}",
        help='a JSON object every unit sees in ctx, e.g. \'{"query": "..."}\'',
    )
    how.add_argument(
        "--fail-fast",
        action="store_true",
        help="once a unit fails for good, cancel every unit that has not started",
    )
    how.add_argument(
        "--deadline",
        type=_positive_seconds,
        metavar="SECONDS",
        help=(
            "stop the run after SECONDS: units not finished by then are cancelled and "
            f"the exit status is {EXIT_DEADLINE}"
        ),
    )
    parser.set_defaults(handler=_run_run)


def _parse_context(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"--context is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise CommandError(f"--context must be a JSON object, got a JSON {_json_kind(value)}")
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _run_instruments(args: argparse.Namespace) -> list[Instrument]:
    """The instruments the options of ``run`` ask for (progress, traces, ... go here)."""
    del args
    return []


def _run_run(args: argparse.Namespace) -> int:
    context = _parse_context(args.context)  # before the import: the cheaper mistake first
    partitioner = load_partitioner(args.target)
    try:
        partitioner.build_execution_plan()
    except GraphError as error:
        raise CommandError(f"{args.target}: {error}") from error
    partitioner.instruments.extend(_run_instruments(args))
    options: dict[str, Any] = {
        "max_workers": args.workers,
        "fail_fast": args.fail_fast,
        "deadline": args.deadline,
    }
    started = time.perf_counter()
    try:
        if args.strategy is not None:
            partitioner.execute_with_strategy(context, args.strategy, **options)
        else:
            partitioner.execute(context, execution_mode=args.mode, **options)
    except (GraphError, TypeError, ValueError, ImportError) as error:
        # Raised before any unit runs (a unit's error never escapes execute): bad input, or
        # an optional dependency a strategy needs.
        raise CommandError(f"{args.target}: {_one_line(error)}") from error
    except KeyboardInterrupt:
        # Every unit is terminal by now; show what completed, then report the interrupt.
        _write(_run_lines(args, partitioner, time.perf_counter() - started))
        raise
    except SystemExit as stop:
        # A unit in this process called sys.exit(): the run stopped as on Ctrl-C. Show
        # what completed, and say so; exit status 0 would claim every unit completed.
        _write(_run_lines(args, partitioner, time.perf_counter() - started))
        _tell(f"{PROG}: the run was stopped: {_printable(_one_line(stop))}")
        return EXIT_FAILED
    seconds = time.perf_counter() - started
    _write(_run_lines(args, partitioner, seconds))
    metrics = partitioner.last_execution_metrics
    if metrics is not None and metrics["stop_reason"] == "deadline":
        _write([f"the deadline of {args.deadline:g} s passed: unfinished units were cancelled"])
        return EXIT_DEADLINE
    failed = any(unit.state in _FAILED_STATES for unit in partitioner.units.values())
    return EXIT_FAILED if failed else EXIT_OK


def _error_detail(name: str, error: BaseException) -> str:
    """``Type: message`` (the library's own errors without a type), minus the unit's name.

    The row already names the unit, so a message's leading ``unit 'name':`` is dropped.
    """
    text = error_text(error)
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]  # str(KeyError) is the repr of its key
    lines = text.strip().splitlines()
    message = lines[0].removeprefix(f"unit {name!r}").lstrip(": ") if lines else ""
    if isinstance(error, PartitionerError) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _run_lines(
    args: argparse.Namespace, partitioner: QuantumPartitioner[Any, Any], seconds: float
) -> list[str]:
    """The header, one row per unit, and a summary line with the count of each state."""
    metrics = partitioner.last_execution_metrics or {}
    mode = metrics.get("execution_mode", "?")
    where = f"{mode} {'strategy' if mode in _STRATEGIES else 'mode'}"
    # Only a count someone chose: each mode has its own default (threads, CPUs, ...).
    workers = args.workers or partitioner.max_workers
    if workers is not None and mode != ExecutionMode.SEQUENTIAL.value:
        where += f", {workers} worker{'' if workers == 1 else 's'}"
    units = partitioner.units
    shown = {name: _printable(name) for name in units}
    width = min(40, max(len("unit"), *map(len, shown.values())))
    lines = [
        f"{_printable(args.target)}: {len(units)} units, {where}",
        "",
        f"  {'unit':<{width}} {'state':<9} {'attempts':>8} {'ms':>9}  result or error",
    ]
    for name, unit in units.items():
        state = unit.state
        duration = unit.execution_time
        ms = "-" if duration is None else f"{duration * 1000:.2f}"
        if state is UnitState.COMPLETED:
            detail = _shorten(_result_text(unit.result))
        elif unit.error is not None:
            detail = _shorten(_error_detail(name, unit.error), _ERROR_WIDTH)
        else:
            detail = ""
        lines.append(
            f"  {shown[name]:<{width}} {state.name:<9} {unit.attempt:>8} {ms:>9}  "
            f"{_printable(detail)}".rstrip()
        )
    counts = dict.fromkeys(UnitState, 0)
    for unit in units.values():
        counts[unit.state] += 1
    summary = ", ".join(
        f"{count} {state.value}" for state, count in counts.items() if count and state.is_terminal
    )
    lines += ["", f"{summary or 'no units'} in {seconds * 1000:.1f} ms"]
    return lines


@contextlib.contextmanager
def _raised_by_user_code(prefix: str) -> Iterator[None]:
    """Turn what user code raises (an import, a factory) into a one-line CommandError.

    ``SystemExit`` too (a factory that calls ``sys.exit(0)`` must not look like success),
    and any other ``BaseException``; only Ctrl-C stays an interrupt.
    """
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # reported as bad input, exit status 2
        raise CommandError(f"{prefix}{_one_line(error)}") from error


def load_partitioner(target: str) -> QuantumPartitioner[Any, Any]:
    """Import ``MODULE:FACTORY`` and return the partitioner it names or builds.

    ``MODULE`` is a module name, imported with the current directory first on the path as
    ``python -m`` would, or the path of a ``.py`` file, imported under its stem with its
    directory first on the path (so worker processes can import it too). ``FACTORY`` is a
    dotted attribute path in ``MODULE``: a :class:`QuantumPartitioner` or a
    :class:`TaskMap`, or a callable taking no arguments that returns one.

    Raises:
        CommandError: The target is malformed, the module does not import, the attribute is
            missing, the factory raises, or what it gives is no partitioner.
    """
    module_name, sep, attribute = target.rpartition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"expected MODULE:FACTORY (e.g. myproject.jobs:build), got {target!r}")
    path: Path | None = None
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise CommandError(f"cannot import module {module_name!r}: no such file")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_name = path.stem
    else:
        # A console script's sys.path starts with its bin directory; 'python -m' puts the
        # current directory first, which is where a user's module usually is.
        cwd = str(Path.cwd())
        if "" not in sys.path and cwd not in sys.path:
            sys.path.insert(0, cwd)
    with _raised_by_user_code(f"cannot import module {module_name!r}: "):
        module = importlib.import_module(module_name)
    if path is not None and Path(getattr(module, "__file__", None) or "").resolve() != path:
        raise CommandError(
            f"cannot import {str(path)!r} as module {module_name!r}: that name is taken by "
            f"{getattr(module, '__file__', None) or 'a built-in module'}; rename the file"
        )
    found: object = module
    for part in attribute.split("."):
        try:
            with _raised_by_user_code(f"{target}: reading {part!r} raised "):
                found = getattr(found, part)
        except CommandError as error:
            if isinstance(error.__cause__, AttributeError):
                message = f"module {module_name!r} has no attribute {attribute!r}"
                raise CommandError(message) from None
            raise
    if not isinstance(found, QuantumPartitioner | TaskMap):
        if not callable(found):
            raise CommandError(
                f"{target} is of type {type(found).__name__!r}, neither a QuantumPartitioner "
                "nor a function returning one"
            )
        with _raised_by_user_code(f"{target}() raised "):
            found = found()
    if isinstance(found, TaskMap):
        found = found.partitioner()
    if not isinstance(found, QuantumPartitioner):
        raise CommandError(
            f"{target}() returned an object of type {type(found).__name__!r}, not a "
            "QuantumPartitioner"
        )
    return found
