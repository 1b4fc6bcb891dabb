"""The documentation's sources: code that runs and type-checks, a complete API reference and nav.

Every fenced block of README.md and docs/*.md is checked as a reader would use it:

* ``python`` blocks run, each in a fresh interpreter in an empty directory, and their
  ``assert`` lines must hold. A block preceded by ``<!-- docs: continue -->`` goes on from
  the page's previous block (it runs appended to it), so a page can build an example up.
* The same programs pass mypy (``--strict`` except that functions need no annotations).
* ``sh`` blocks of commands that work offline (``python ...``, ``quantum-partitioner ...``,
  ``cd``) run with the test's virtual environment first on ``PATH``, as an activated one,
  in a copy of the checkout's examples; blocks that set a machine up (``make``, ``pip``,
  ``python -m venv``, ...) are recognised and left to their own tests.

``<!-- docs: skip REASON -->`` before a block leaves it out; the reason says what it needs
(a cluster, a network service). Keep it rare.

``make docs`` builds the site itself (it needs the ``docs`` extra); these tests need nothing
beyond the package, so they run with the rest of the suite.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import quantum_partitioner

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(
    r"^(?:<!-- docs: (?P<marker>continue|skip)\b(?P<reason>[^>]*)-->\n)?"
    r"^```(?P<lang>\w*)[^\n]*\n(?P<code>.*?)^```$",
    re.DOTALL | re.MULTILINE,
)
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
#: First words of commands that run offline, in seconds; these blocks run.
OFFLINE_COMMANDS = {"python", "quantum-partitioner", "cd"}
#: Commands that set a machine up or need the network; tested elsewhere (make dist, setup).
SETUP_COMMANDS = {"make", "pip", "git", ".", "source", "twine"}
SETUP_PYTHON_MODULES = {"venv", "pip", "build"}


@dataclass(frozen=True)
class Block:
    """A fenced block of a page: where it starts, its language, its code, its marker."""

    page: str
    line: int  # of the opening fence
    lang: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class Program:
    """A block and the blocks continuing it, and where each line of its code comes from."""

    where: str
    code: str
    origins: tuple[str, ...]  # "page:line" of each line of code


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("lang")) + 1
        marker = match.group("marker")
        if marker == "skip":
            assert match.group("reason").strip(), f"{page_name(page)}:{line}: say why it is skipped"
        found.append(Block(page_name(page), line, match["lang"], match["code"], marker))
    return found


def python_programs(page: Path) -> list[Program]:
    """The programs of ``page``: each block, with the blocks that continue it appended."""
    programs: list[Program] = []
    for block in blocks(page):
        if block.lang != "python" or block.marker == "skip":
            continue
        origins = tuple(
            f"{block.page}:{block.line + n}" for n in range(1, block.code.count("\n") + 1)
        )
        if block.marker == "continue":
            assert programs, f"{block.where}: nothing before it to continue"
            head = programs[-1]
            programs[-1] = Program(head.where, head.code + block.code, head.origins + origins)
        else:
            programs.append(Program(block.where, block.code, origins))
    return programs


PROGRAMS = [program for page in PAGES for program in python_programs(page)]
PROGRAM_IDS = [program.where for program in PROGRAMS]


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def is_setup(command: str) -> bool:
    words = shlex.split(command)
    if words[0] in SETUP_COMMANDS or words[0].endswith("/pip"):
        return True
    return (
        words[0] in {"python", "python3"}
        and words[1:2] == ["-m"]
        and (words[2] in SETUP_PYTHON_MODULES)
    )


def is_offline(command: str) -> bool:
    return shlex.split(command)[0] in OFFLINE_COMMANDS and not is_setup(command)


SHELL_BLOCKS = [
    block
    for page in PAGES
    for block in blocks(page)
    if block.lang in SHELL_LANGUAGES and block.marker != "skip"
]


def offline_shell_blocks() -> dict[tuple[str, ...], str]:
    """``commands -> where`` for the blocks that run offline, each command run only once.

    A command another block already runs (in the same directory) is left out: the pages
    repeat the CLI's examples.
    """
    found: dict[tuple[str, ...], str] = {}
    seen: set[tuple[str, str]] = set()
    for block in SHELL_BLOCKS:
        commands = shell_commands(block.code)
        if not all(is_offline(command) for command in commands):
            continue
        cwd, kept = ".", []
        for command in commands:
            if command.startswith("cd "):
                cwd = command
                kept.append(command)
            elif (cwd, command) not in seen:
                seen.add((cwd, command))
                kept.append(command)
        if any(not command.startswith("cd ") for command in kept):
            found[tuple(kept)] = block.where
    return found


OFFLINE_SHELL_BLOCKS = offline_shell_blocks()


@pytest.mark.parametrize("program", PROGRAMS, ids=PROGRAM_IDS)
def test_documented_code_runs_as_written(program, tmp_path):
    """Every Python program of README and docs runs and its asserts hold."""
    result = subprocess.run(
        [sys.executable, "-c", program.code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"{program.where}\n{result.stdout}\n{result.stderr}"


# mypy's own run bounds it (5 minutes); on a loaded machine it may need more than the
# suite's 2-minute test timeout.
@pytest.mark.timeout(300)
def test_documented_code_type_checks(tmp_path, mypy):
    """Every Python program of README and docs passes mypy, strict but for annotations."""
    files = {}
    for program in PROGRAMS:
        name = re.sub(r"\W", "_", program.where) + ".py"
        (tmp_path / name).write_text(program.code)
        files[name] = program
    errors = mypy(
        *sorted(files),
        "--allow-untyped-defs",
        "--allow-incomplete-defs",
        "--allow-untyped-calls",
        "--check-untyped-defs",
        cwd=tmp_path,
    )
    report = [f"{files[name].origins[line - 1]}: {message}" for name, line, message in errors]
    assert not report, "\n".join(report)


@pytest.mark.parametrize(
    "commands", list(OFFLINE_SHELL_BLOCKS), ids=list(OFFLINE_SHELL_BLOCKS.values())
)
def test_documented_commands_run_as_written(commands, tmp_path):
    """Every shell block that works offline runs, from a checkout's root, in an active venv."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    script = "set -e\n" + "\n".join(commands)
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, (
        f"{OFFLINE_SHELL_BLOCKS[commands]}\n{result.stdout}\n{result.stderr}"
    )


def test_every_shell_command_is_run_or_known_as_set_up():
    """A documented command is either run above or one that sets a machine up."""
    unknown = [
        f"{block.where}: {command}"
        for block in SHELL_BLOCKS
        for command in shell_commands(block.code)
        if not (is_offline(command) or is_setup(command))
    ]
    assert not unknown, "run these in the test above, or mark the block skipped:\n" + "\n".join(
        unknown
    )


def test_the_pages_have_runnable_blocks():
    """The examples are found (a changed fence would silently test nothing); skips are rare."""
    assert len(python_programs(DOCS / "guide.md")) >= 10
    assert len(PROGRAMS) >= 20
    assert len(OFFLINE_SHELL_BLOCKS) >= 3
    skipped = [b.where for page in PAGES for b in blocks(page) if b.marker == "skip"]
    assert len(skipped) <= 3, f"too many skipped blocks: {skipped}"


def test_reference_documents_every_public_name():
    """docs/reference.md has a `::: quantum_partitioner.NAME` entry for each name in __all__."""
    reference = (DOCS / "reference.md").read_text()
    documented = set(re.findall(r"^::: quantum_partitioner\.(\w+)\s*$", reference, re.MULTILINE))
    missing = sorted(set(quantum_partitioner.__all__) - documented)
    assert not missing, f"add to docs/reference.md: {', '.join(missing)}"


def test_every_docs_page_is_in_the_nav():
    """Each docs/*.md is listed in mkdocs.yml's nav, and each nav entry exists."""
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:") :]
    nav = nav[: nav.index("\n\n")]
    listed = re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE)
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(listed) == pages, "mkdocs.yml nav and docs/*.md differ"


def test_user_facing_text_never_says_seed():
    """README, docs, the package's source (docstrings, messages) and the examples say what
    the API is, never "the seed"; the command line's help neither."""
    sources = [*PAGES, *sorted((ROOT / "src").rglob("*.py")), *sorted(EXAMPLES.glob("*.py"))]
    found = [
        f"{page_name(path)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"seed", line, re.IGNORECASE)
    ]
    for command in ([], ["run"], ["plan"], ["demo"]):
        result = subprocess.run(
            [sys.executable, "-m", "quantum_partitioner", *command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        if re.search(r"seed", result.stdout, re.IGNORECASE):
            found.append(f"quantum-partitioner {' '.join(command)} --help")
    assert not found, "\n".join(found)
