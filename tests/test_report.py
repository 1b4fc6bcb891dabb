"""The HTML run report: self-contained, complete, and drawn by a real headless browser."""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import zlib

import pytest

from quantum_partitioner import (
    ExecutionMode,
    ExponentialBackoff,
    QuantumPartitioner,
    RetryPolicy,
    UnitState,
)
from quantum_partitioner.observability._render import STATE_COLOURS
from quantum_partitioner.observability._report import MAX_GRAPH_UNITS

SEQ = ExecutionMode.SEQUENTIAL
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def story(workers=3):
    """A run with completed, retried, failed, timed-out and skipped units.

    extract --> chunk --> embed --> index      (embed fails once, then completes)
       |          \\-----> lint (fails) --> publish (skipped)
       \\-----> slow (times out)
    """
    failures = {"embed": 1}
    lock = threading.Lock()

    def work(seconds, value):
        def fn(ctx):
            time.sleep(seconds)
            return value

        return fn

    def embed(ctx):
        with lock:
            failures["embed"] -= 1
            if failures["embed"] >= 0:
                raise ConnectionError("embedding service busy")
        time.sleep(0.01)
        return "vectors"

    def lint(ctx):
        raise ValueError("style <violation> & more")

    qp = QuantumPartitioner(
        max_workers=workers,
        retry_policy=RetryPolicy(backoff=ExponentialBackoff(initial=0.005, jitter=0.0)),
    )
    qp.add_unit(work(0.01, "text"), name="extract")
    qp.add_unit(work(0.01, "chunks"), ["extract"], name="chunk")
    qp.add_unit(embed, ["chunk"], name="embed", retries=2)
    qp.add_unit(work(0.01, "index"), ["embed"], name="index")
    qp.add_unit(lint, ["chunk"], name="lint")
    qp.add_unit(work(0, "published"), ["lint"], name="publish")
    qp.add_unit(work(0.05, None), ["extract"], name="slow", timeout=0.02)
    return qp


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A THREAD run of the story, traced, and its report: (partitioner, path, text)."""
    qp = story()
    qp.execute(trace=True)
    path = qp.write_report(tmp_path_factory.mktemp("report") / "run.html", title="Story run")
    return qp, path, path.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    """No external resource: no http(s) URL, no <link>, no src= attribute, no @import."""
    _, _, text = report
    assert text.startswith("<!DOCTYPE html>")
    assert "http" not in text
    assert "<link" not in text
    assert " src=" not in text
    assert "@import" not in text
    assert "<style>" in text
    assert "<script>" in text


def test_report_has_graph_gantt_critical_path_and_table(report):
    """The report draws the graph and the Gantt chart, and lists the path and the units."""
    qp, _, text = report
    assert '<svg id="graph"' in text
    assert '<svg id="gantt"' in text
    assert "<title>Story run</title>" in text
    for name in qp.units:
        assert f">{name}<" in text, name
    path = re.search(r'<ol id="critical-path">(.*?)</ol>', text).group(1)
    assert re.findall(r"<b>(\w+)</b>", path) == ["extract", "chunk", "embed", "index"]


def test_report_table_matches_the_run(report):
    """One table row per unit with its state, attempts and, if it ran, a duration."""
    qp, _, text = report
    body = re.search(r'<table class="sortable" id="units">.*?<tbody>(.*?)</tbody>', text).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    assert len(rows) == len(qp.units)
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        unit = qp.units[html.unescape(cells[0])]
        assert cells[1] == unit.state.value
        assert int(cells[2]) == unit.attempt
        assert bool(cells[4]) == (unit.attempt > 0)
    assert qp.units["embed"].attempt == 2
    assert qp.units["slow"].state is UnitState.TIMEOUT
    assert qp.units["publish"].state is UnitState.SKIPPED


def test_report_gantt_has_one_row_per_worker_and_a_bar_per_attempt(report):
    """Gantt rows are the worker threads; every attempt is a bar, the retried one marked."""
    qp, _, text = report
    gantt = re.search(r'<svg id="gantt".*?</svg>', text).group(0)
    bars = re.findall(r'<g class="bar (\w+)"><title>([^<]*)</title>', gantt)
    assert len(bars) == sum(unit.attempt for unit in qp.units.values())
    outcomes = {html.unescape(title).split(" attempt ")[0] + f"#{kind}" for kind, title in bars}
    assert {"embed#retried", "embed#completed", "lint#failed", "slow#timeout"} <= outcomes
    rows = set(re.findall(r">(quantum-partitioner-\d+)<", gantt))
    assert 1 <= len(rows) <= 3


def test_report_escapes_names_and_errors(tmp_path):
    """Unit names and error messages are HTML-escaped, never markup."""
    qp = QuantumPartitioner()

    def bad(ctx):
        raise ValueError("<script>alert(1)</script>")

    qp.add_unit(bad, name="<b>bold</b>")
    qp.execute(execution_mode=SEQ)
    text = qp.write_report(tmp_path / "r.html").read_text()
    assert "<b>bold</b>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "<script>alert" not in text


def test_large_graphs_are_listed_not_drawn(tmp_path):
    """Beyond the drawing limit the graph is replaced by a note; the table lists every unit."""
    qp = QuantumPartitioner()
    for i in range(MAX_GRAPH_UNITS + 1):
        qp.add_unit(lambda ctx: None, name=f"u{i}")
    qp.execute(execution_mode=SEQ)
    text = qp.write_report(tmp_path / "r.html").read_text()
    assert '<svg id="graph"' not in text
    assert "render()" in text
    assert text.count("<tr") == MAX_GRAPH_UNITS + 2  # the header and one row per unit


def test_report_needs_a_finished_run(tmp_path):
    """write_report() before any run says to execute first."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: None, name="a")
    with pytest.raises(RuntimeError, match="execute"):
        qp.write_report(tmp_path / "r.html")


# -- a real browser -----------------------------------------------------------------------------


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def decode_png(data):
    """``(width, height, rows)`` of an 8-bit RGB or RGBA PNG; rows are bytes of pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert depth == 8, depth
    assert interlace == 0
    assert colour in {2, 6}, colour
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    previous = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:  # Average
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + previous[x]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                b = previous[x]
                c = previous[x - bpp] if x >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(
            bytes(line) if bpp == 3 else bytes(line[i] for i in range(stride) if i % 4 != 3)
        )
        previous = line
    return width, height, rows


def hex_rgb(colour):
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_report_renders_in_a_headless_browser(report, tmp_path):
    """Chromium draws the report: the screenshot is not blank and shows the state colours."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium or Chrome found (CI installs Debian's chromium)")
    _, path, _ = report
    shot = tmp_path / "report.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        path.resolve().as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, timeout=90, check=False, env=env)
    assert shot.exists(), done.stderr.decode(errors="replace")[-2000:]
    if os.environ.get("QP_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["QP_KEEP_SCREENSHOT"])
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1200, 900)
    pixels = [row[i : i + 3] for row in rows[::3] for i in range(0, len(row), 9)]
    greys = [sum(p) / 3 for p in pixels]
    mean = sum(greys) / len(greys)
    variance = sum((g - mean) ** 2 for g in greys) / len(greys)
    assert variance > 100, f"the screenshot looks blank (variance {variance:.1f})"
    not_white = sum(1 for p in pixels if p != b"\xff\xff\xff") / len(pixels)
    assert not_white > 0.02, f"only {not_white:.1%} of the page is drawn"
    colours = {bytes(p) for p in pixels}
    for state in (UnitState.COMPLETED, UnitState.FAILED, UnitState.TIMEOUT, UnitState.SKIPPED):
        assert bytes(hex_rgb(STATE_COLOURS[state])) in colours, state


def test_a_map_of_ten_thousand_items_is_drawn_as_one_node_with_its_counts(tmp_path):
    """The report draws the declared units: a 10,000-item map is one node, items by state."""

    def check(ctx):
        if ctx.item == 7:
            raise ValueError("seven")
        return ctx.item

    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: range(10_000), name="plan")
    qp.add_map(check, over="plan", name="check")
    qp.add_unit(lambda ctx: len(ctx["check"]), ["check"], name="count", run_if="all_done")
    qp.execute(execution_mode=SEQ)
    text = qp.write_report(tmp_path / "r.html").read_text(encoding="utf-8")
    graph = re.search(r'<svg id="graph".*?</svg>', text, re.DOTALL)
    assert graph is not None  # 10,003 units, 3 of them declared: it draws
    nodes = re.findall(r"<g class=\"(unit|map)\"><title>([^<]*)</title>", graph[0])
    assert [kind for kind, _ in nodes] == ["unit", "map", "unit"]
    assert nodes[1][1] == "check (map): failed; 10000 items: 9999 completed, 1 failed"
    assert "10000 items: 9999 completed, 1 failed</text>" in graph[0]
    assert "check[" not in graph[0]
    assert "check[7]" in text  # the table and the timeline still list every item
    path = re.search(r'<ol id="critical-path">(.*?)</ol>', text, re.DOTALL)[1]
    assert "<b>check[" in path  # the item the path went through, not the map
