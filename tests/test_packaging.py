"""What `make dist` builds: a wheel and an sdist that twine accepts and that work installed.

The distributions are built once per module, the way `make dist` builds them (the sdist,
then the wheel from it) but without an isolated build environment, so the test needs no
network: hatchling comes with the ``dev`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

#: Under pytest-xdist (``make test``), the module's tests share one worker, so the
#: distributions are built once.
pytestmark = pytest.mark.xdist_group("packaging-dist")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"wheel": path, "sdist": path}``, built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_accepts_the_wheel_and_the_sdist(dist):
    """`twine check --strict` passes: metadata complete, README renders as the description."""
    result = subprocess.run(
        [str(BIN / "twine"), "check", "--strict", str(dist["wheel"]), str(dist["sdist"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_ships_its_types_data_and_command(dist):
    """py.typed, the demo's documents and the console script are in the wheel."""
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        scripts = wheel.read(entry_points).decode()
        requires = [
            line for line in wheel.read(metadata).decode().splitlines() if "Requires-Dist" in line
        ]
    assert "quantum_partitioner/py.typed" in names
    assert any(n.startswith("quantum_partitioner/demo_data/") for n in names)
    assert not any(n.startswith(("tests/", "examples/")) for n in names)
    assert "quantum-partitioner = quantum_partitioner.cli:main" in scripts
    assert any("typing-extensions" in line and "python_version < " in line for line in requires)


def test_the_sdist_holds_what_a_checkout_needs_to_test_and_build(dist):
    """The sdist has the sources, tests, docs and examples, and nothing else at its top."""
    with tarfile.open(dist["sdist"]) as sdist:
        top = {name.split("/")[1] for name in sdist.getnames() if name.count("/") >= 1}
    assert top == {
        "src",
        "tests",
        "docs",
        "examples",
        "bench",
        "README.md",
        "Makefile",
        "mkdocs.yml",
        "pyproject.toml",
        "PKG-INFO",
        ".gitignore",
    }


def test_the_installed_wheel_runs_an_example_and_the_command(dist, tmp_path):
    """From the wheel's files (not this checkout), an example and the CLI run."""
    site = tmp_path / "site"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        wheel.extractall(site)  # a pure-Python wheel installs as its files
    env = {**os.environ, "PYTHONPATH": str(site)}

    def python(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *arguments],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=60,
            check=False,
        )

    where = python("-c", "import quantum_partitioner as qp; print(qp.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stderr
    script = python(str(EXAMPLES / "provider_fanout.py"), cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    plan = python("-m", "quantum_partitioner", "plan", "document_pipeline:build", cwd=EXAMPLES)
    assert plan.returncode == 0, plan.stderr
    assert "critical path" in plan.stdout.lower()
