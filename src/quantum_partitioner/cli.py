"""The ``quantum-partitioner`` command (also ``python -m quantum_partitioner``).

Subcommands:
    ``demo``: run the bundled document-ingestion pipeline and print what happened.
    ``plan MODULE:FACTORY``: describe the graph a factory builds (levels, critical path),
    as text, Graphviz DOT or Mermaid.

Each subcommand is one ``_add_<name>`` function that adds its parser and sets the handler
that runs it; a handler returns the exit status. Bad input a user can fix (a module that
does not import, a factory that is missing or returns no partitioner, an invalid graph)
raises :class:`CommandError`, which :func:`main` prints as one line on stderr with exit
status 2, without a traceback.

This module is the only part of the package that writes to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from ._errors import GraphError
from ._graph import ExecutionMode, UnitState
from ._partitioner import QuantumPartitioner
from .taskmap import TaskMap

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from ._demo import DemoReport
    from ._plan import ExecutionPlan

__all__ = [
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
#: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

#: The modes ``demo --mode`` offers (CUSTOM needs an executor object, not a name).
_DEMO_MODES = ("sequential", "thread", "process", "async")
#: How many names ``plan`` lists per level before it only counts the rest.
_LEVEL_NAMES_SHOWN = 8


class CommandError(Exception):
    """Input a user can fix; :func:`main` prints it as one line and exits with status 2."""


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    Args:
        argv: The arguments after the program name.

    Returns:
        0 on success, 1 if a run left some unit not completed, 2 for bad input, 130 if
        interrupted.
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
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a graph of Python callables at the highest concurrency it allows.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_plan(commands)
    return parser


def _write(lines: Iterable[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _one_line(error: BaseException) -> str:
    """``Type: message``, first line of the message only."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


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
        choices=_DEMO_MODES,
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
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # noqa: PLC0415 - only this subcommand needs it

    report = run_demo(ExecutionMode(args.mode), args.workers)
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
            f"  {row.name:<18} {row.state.name:<10} {row.attempts:>8} {duration:>8}  {work}"
        )
    lines += ["", f"Query: {report.query!r}"]
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
            lines.append(f"  {rank}. {hit.score:.3f}  {chunk.title} #{chunk.position}: {snippet}")
    completed = sum(row.state is UnitState.COMPLETED for row in report.rows)
    lines += [
        "",
        f"{completed} of {len(report.rows)} units completed in {report.seconds * 1000:.1f} ms",
    ]
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
            "first."
        ),
    )
    parser.add_argument("target", metavar="MODULE:FACTORY", help="e.g. myproject.jobs:build")
    parser.add_argument(
        "--format",
        choices=("text", "dot", "mermaid"),
        default="text",
        help="text summary, Graphviz DOT, or a Mermaid flowchart (default: %(default)s)",
    )
    parser.set_defaults(handler=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
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
        _write(_plan_lines(plan))
    return EXIT_OK


def _plan_lines(plan: ExecutionPlan) -> list[str]:
    """The text description of a plan that ``plan`` and ``demo`` print."""
    levels = plan.levels
    lines = [
        f"units            {plan.unit_count}",
        f"levels           {plan.max_level}",
    ]
    for number, level in enumerate(levels):
        shown = ", ".join(level[:_LEVEL_NAMES_SHOWN])
        more = len(level) - _LEVEL_NAMES_SHOWN
        lines.append(f"  level {number:<8} {shown}{f' (+{more} more)' if more > 0 else ''}")
    path = plan.critical_path
    lines += [
        f"max parallelism  {plan.max_parallel_units}",
        (
            f"critical path    {' -> '.join(path) if path else '(empty)'}"
            f"  [{len(path)} units, length {plan.critical_path_length:g}]"
        ),
    ]
    return lines


def load_partitioner(target: str) -> QuantumPartitioner[Any, Any]:
    """Import ``MODULE:FACTORY`` and return the partitioner it names or builds.

    ``FACTORY`` is a dotted attribute path in ``MODULE``: a :class:`QuantumPartitioner` or a
    :class:`TaskMap`, or a callable taking no arguments that returns one.

    Raises:
        CommandError: The target is malformed, the module does not import, the attribute is
            missing, the factory raises, or what it gives is no partitioner.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"expected MODULE:FACTORY (e.g. myproject.jobs:build), got {target!r}")
    # A console script's sys.path starts with its bin directory; 'python -m' puts the
    # current directory first, which is where a user's module usually is.
    cwd = str(Path.cwd())
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise CommandError(f"cannot import module {module_name!r}: {_one_line(error)}") from error
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CommandError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, QuantumPartitioner | TaskMap):
        if not callable(found):
            raise CommandError(
                f"{target} is of type {type(found).__name__!r}, neither a QuantumPartitioner "
                "nor a function returning one"
            )
        try:
            found = found()
        except Exception as error:
            raise CommandError(f"{target}() raised {_one_line(error)}") from error
    if isinstance(found, TaskMap):
        found = found.partitioner()
    if not isinstance(found, QuantumPartitioner):
        raise CommandError(
            f"{target}() returned an object of type {type(found).__name__!r}, not a "
            "QuantumPartitioner"
        )
    return found
