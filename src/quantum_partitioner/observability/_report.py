"""Pictures of a run: a self-contained HTML report, and DOT rendered by Graphviz.

The report is one HTML file with everything inline (CSS, a few lines of JavaScript to sort
the table, SVG drawn here), so it opens anywhere, offline, and can be attached to a ticket.
It holds:

* a summary: mode, workers, duration, units by state;
* the graph, laid out by levels (left to right, each level's units ordered by where their
  dependencies sit), units filled by state, the run's critical path in red; a map is one
  node with its items counted by state, so thousands of items still draw;
* a Gantt chart of the attempts, one row per worker (see :mod:`._trace` for how rows are
  found), retries, failures and timeouts in their own colours;
* the critical path as measured: from the unit that finished last, back through the
  dependency each unit waited for longest;
* a table of every unit: state, attempts, start, duration, worker, error.

Large graphs are drawn up to a limit (the table and the Gantt chart go further) and the
report says what it left out. Rendering DOT to SVG or PNG needs Graphviz's ``dot`` program;
its absence is reported with how to install it.
"""

from __future__ import annotations

import html
import logging
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._graph import UnitState
from ._render import DECIDED_SKIP_COLOUR, STATE_COLOURS, map_note, unit_colour
from ._trace import describe_error, layout, observed_critical_path, workers_text

if TYPE_CHECKING:
    from .._limits import LimitGate
    from .._run import Run
    from ._trace import Attempt, Layout, TraceRecorder

__all__: list[str] = []

LOGGER = logging.getLogger("quantum_partitioner")

#: Beyond this many declared units the report does not draw the graph (a map is one unit
#: there, however many items it created).
MAX_GRAPH_UNITS = 300
#: Beyond this many worker rows the Gantt chart shows the first ones only.
MAX_GANTT_ROWS = 120
#: Beyond this many units the table lists the first ones (by start time) only.
MAX_TABLE_ROWS = 5000

_CRITICAL = "#d62728"
#: Gantt fill by attempt outcome: the unit state colours, plus one for retried attempts.
_OUTCOME_FILL = {
    "completed": STATE_COLOURS[UnitState.COMPLETED],
    "failed": STATE_COLOURS[UnitState.FAILED],
    "timeout": STATE_COLOURS[UnitState.TIMEOUT],
    "canceled": STATE_COLOURS[UnitState.CANCELED],
    "skipped": DECIDED_SKIP_COLOUR,
    "retried": "#ffe08a",
}
_OUTCOME_STROKE = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "timeout": "#e65100",
    "canceled": "#1565c0",
    "skipped": "#7c8f63",
    "retried": "#b28704",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;margin-bottom:12px}
.chips span{display:inline-block;padding:2px 10px;margin:2px 6px 2px 0;border-radius:12px;
border:1px solid #bbb}
.box{border:1px solid #ddd;border-radius:6px;overflow:auto;max-height:640px;padding:8px}
.note{color:#8a6d00;font-size:13px}
svg text{font:12px system-ui,Helvetica,Arial,sans-serif;fill:#222}
svg text.items{font-size:10px;fill:#555}
svg .edge{fill:none;stroke:#9e9e9e;stroke-width:1.2}
svg .crit{fill:none;stroke:#d62728;stroke-width:2.6}
svg .grid{stroke:#eee}svg .axis{fill:#666;font-size:11px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6;cursor:pointer;user-select:none;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.err{color:#b00020;max-width:420px;overflow-wrap:anywhere}
tr.crit td:first-child{font-weight:600;color:#d62728}
ol li{margin:2px 0}
"""

_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.dataset.dir !== "up";
    th.dataset.dir = up ? "up" : "down";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def format_seconds(seconds: float) -> str:
    """A duration with a unit that fits it (µs, ms, s)."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _nice_step(span: float, target: int = 8) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``target`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / target
    power: float = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power  # pragma: no cover - the loop always returns


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


# -- the graph -----------------------------------------------------------------------------


def graph_svg(run: Run, critical: set[int]) -> str:
    """The graph as inline SVG, laid out by levels, or a note if it is too large.

    It draws the declared units: a map is one node (stacked), with its items by state
    under its name; an item on the critical path puts its map on it.
    """
    graph = run.graph
    n = run.declared_units
    sched = run.scheduler
    maps = sched.maps
    if maps:
        item_of = sched.item_of
        critical = {item_of[i][0] if i in item_of else i for i in critical}
    if n == 0:
        return '<p class="note">The graph has no units.</p>'
    if n > MAX_GRAPH_UNITS:
        return (
            f'<p class="note">The graph has {n:,} units, more than the {MAX_GRAPH_UNITS} this '
            "report draws: use <code>render()</code> or <code>visualize()</code> "
            "(Graphviz) for the whole picture.</p>"
        )
    levels = graph.levels()
    row: list[float] = [0.0] * n
    ordered: list[list[int]] = []
    for level in levels:
        if ordered:  # order each level by the mean row of its dependencies (fewer crossings)
            level = sorted(  # noqa: PLW2901 - the level, reordered
                level,
                key=lambda i: (sum(row[j] for j in graph.deps[i]) / len(graph.deps[i]), i),
            )
        for r, i in enumerate(level):
            row[i] = r
        ordered.append(level)
    names = graph.names
    notes = {
        m: map_note(names[over], sched.state[m], run.item_states_of(m)) for m, over in maps.items()
    }
    # A note is in a smaller font: 6 px a character, not 7.
    longest = max([*map(len, names[:n]), *(len(note) * 6 // 7 for note in notes.values())])
    width = min(280 if maps else 200, max(90, 7 * longest + 24))
    chars = (width - 16) // 7
    note_chars = (width - 16) // 6  # the item counts are in a smaller font
    height, hgap, vgap, pad = (40 if maps else 28), 56, 12, 10
    tallest = max(len(level) for level in ordered)
    svg_w = pad * 2 + len(ordered) * width + (len(ordered) - 1) * hgap
    svg_h = pad * 2 + tallest * height + (tallest - 1) * vgap
    x = [0.0] * n
    y = [0.0] * n
    for col, level in enumerate(ordered):
        offset = (tallest - len(level)) * (height + vgap) / 2  # centre short levels
        for r, i in enumerate(level):
            x[i] = pad + col * (width + hgap)
            y[i] = pad + offset + r * (height + vgap)
    plain: list[str] = []
    bold: list[str] = []
    for i, deps in enumerate(graph.deps[:n]):
        for j in deps:
            x1, y1 = x[j] + width, y[j] + height / 2
            x2, y2 = x[i], y[i] + height / 2
            bend = hgap / 2
            d = (
                f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} "
                f"{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            )
            on_path = i in critical and j in critical
            (bold if on_path else plain).append(
                f'<path class="{"crit" if on_path else "edge"}" d="{d}" '
                f'marker-end="url(#{"ac" if on_path else "ae"})"/>'
            )
    nodes = []
    for i, name in enumerate(names[:n]):
        state = sched.state[i]
        stroke = f'stroke="{_CRITICAL}" stroke-width="2.6"' if i in critical else 'stroke="#777"'
        fill = unit_colour(state, sched.errors.get(i))
        note = notes.get(i)
        middle = x[i] + width / 2
        if note is None:
            tip = f"{name}: {state.value}, {sched.attempts[i]} attempt(s)"
            if state.is_terminal and sched.attempts[i]:
                tip += f", {format_seconds(sched.ended[i] - sched.started[i])}"
            text = (
                f'<text x="{middle:.1f}" y="{y[i] + height / 2 + 4:.1f}" '
                f'text-anchor="middle">{_e(_shorten(name, chars))}</text>'
            )
            behind = ""
        else:  # a map: a stack of cards, its name over its items by state
            tip = f"{name} (map): {state.value}; {note}"
            text = (
                f'<text x="{middle:.1f}" y="{y[i] + height / 2 - 3:.1f}" '
                f'text-anchor="middle">{_e(_shorten(name, chars))}</text>'
                f'<text class="items" x="{middle:.1f}" y="{y[i] + height / 2 + 11:.1f}" '
                f'text-anchor="middle">{_e(_shorten(note, note_chars))}</text>'
            )
            behind = (
                f'<rect x="{x[i] + 3:.1f}" y="{y[i] - 3:.1f}" width="{width}" '
                f'height="{height}" rx="6" fill="{fill}" stroke="#777"/>'
            )
        nodes.append(
            f'<g class="{"map" if note is not None else "unit"}"><title>{_e(tip)}</title>'
            f'{behind}<rect x="{x[i]:.1f}" y="{y[i]:.1f}" width="{width}" '
            f'height="{height}" rx="6" fill="{fill}" {stroke}/>{text}</g>'
        )
    markers = (
        "<defs>"
        '<marker id="ae" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#9e9e9e"/></marker>'
        '<marker id="ac" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        f'markerHeight="6" orient="auto"><path d="M0,0L10,5L0,10z" fill="{_CRITICAL}"/></marker>'
        "</defs>"
    )
    return (
        f'<svg id="graph" width="{svg_w:.0f}" height="{svg_h:.0f}" '
        f'viewBox="0 0 {svg_w:.0f} {svg_h:.0f}" role="img" aria-label="dependency graph">'
        f"{markers}{''.join(plain)}{''.join(bold)}{''.join(nodes)}</svg>"
    )


# -- the Gantt chart -----------------------------------------------------------------------


def gantt_svg(run: Run, lay: Layout, critical: set[int]) -> str:
    """The attempts as inline SVG, one row per worker track."""
    if not lay.attempts:
        return '<p class="note">No unit ran.</p>'
    origin = run.started_at
    end = max(run.ended_at, *(a.end for a in lay.attempts))
    span = max(end - origin, 1e-6)
    rows = lay.tracks[:MAX_GANTT_ROWS]
    has_marks = bool(lay.marks)
    label_w, chart_w, row_h, top = 190, 900, 22, 24
    first_row = 1 if has_marks else 0
    svg_h = top + (len(rows) + first_row) * row_h + 6
    scale = chart_w / span
    parts = []
    step = _nice_step(span)
    tick = 0.0
    while tick <= span + 1e-12:
        tx = label_w + tick * scale
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{svg_h}"/>'
            f'<text class="axis" x="{tx:.1f}" y="{top - 8}" text-anchor="middle">'
            f"{_e(format_seconds(tick) if tick else '0')}</text>"
        )
        tick += step
    if has_marks:
        parts.append(f'<text x="4" y="{top + row_h * 0.7:.1f}">skipped / cancelled</text>')
        for i, when, state, error in lay.marks:
            mx = label_w + (when - origin) * scale
            my = top + 4
            tip = f"{run.graph.names[i]}: {state.value} ({describe_error(error)})"
            parts.append(
                f"<g><title>{_e(tip)}</title>"
                f'<path d="M{mx - 5:.1f},{my} L{mx + 5:.1f},{my} L{mx:.1f},{my + 12}z" '
                f'fill="{unit_colour(state, error)}" stroke="#555"/></g>'
            )
    for r, name in enumerate(rows):
        ry = top + (r + first_row) * row_h
        if r % 2:
            parts.append(
                f'<rect x="0" y="{ry}" width="{label_w + chart_w}" height="{row_h}" '
                'fill="#fafafa"/>'
            )
        parts.append(f'<text x="4" y="{ry + row_h * 0.7:.1f}">{_e(_shorten(name, 26))}</text>')
    for track, start, ready in lay.startups:  # a worker process starting, before its work
        if track < MAX_GANTT_ROWS:
            sx = label_w + (start - origin) * scale
            sy = top + (track + first_row) * row_h + 3
            parts.append(
                f'<g class="bar startup"><title>worker start-up: '
                f"{_e(format_seconds(ready - start))}</title>"
                f'<rect x="{sx:.1f}" y="{sy}" width="{max(1.0, (ready - start) * scale):.1f}" '
                f'height="{row_h - 6}" rx="2" fill="#e8e8e8" stroke="#999" '
                'stroke-dasharray="3 2" stroke-width="0.8"/></g>'
            )
    last = {a.unit_index: a.attempt for a in lay.attempts}
    next_start = {(a.unit_index, a.attempt): a.start for a in lay.attempts}
    for a, track in zip(lay.attempts, lay.track_of, strict=True):
        if track >= MAX_GANTT_ROWS:
            continue
        bar = _bar(
            a,
            track + first_row,
            origin=origin,
            scale=scale,
            geometry=(label_w, top, row_h),
            on_path=a.unit_index in critical and last[a.unit_index] == a.attempt,
        )
        parts.append(bar)
        resumed = next_start.get((a.unit_index, a.attempt + 1)) if a.retried else None
        if resumed is not None and resumed > a.end:  # the wait before the retry
            wy = top + (track + first_row) * row_h + row_h / 2
            parts.append(
                f'<line x1="{label_w + (a.end - origin) * scale:.1f}" y1="{wy:.1f}" '
                f'x2="{label_w + (resumed - origin) * scale:.1f}" y2="{wy:.1f}" '
                f'stroke="{_OUTCOME_STROKE["retried"]}" stroke-dasharray="4 3">'
                f"<title>{_e(a.unit_id)} waits to retry</title></line>"
            )
    note = ""
    if len(lay.tracks) > MAX_GANTT_ROWS:
        note = (
            f'<p class="note">Showing {MAX_GANTT_ROWS} of {len(lay.tracks)} worker rows '
            "(export_trace() has them all).</p>"
        )
    return (
        f'<svg id="gantt" width="{label_w + chart_w + 10}" height="{svg_h}" role="img" '
        f'aria-label="Gantt chart">{"".join(parts)}</svg>{note}'
    )


def _bar(
    a: Attempt,
    row: int,
    *,
    origin: float,
    scale: float,
    geometry: tuple[int, int, int],
    on_path: bool,
) -> str:
    label_w, top, row_h = geometry
    bx = label_w + (a.start - origin) * scale
    bw = max(3.0, (a.end - a.start) * scale)  # an instant failure stays visible
    by = top + row * row_h + 3
    outcome = a.outcome
    stroke = (
        f'stroke="{_CRITICAL}" stroke-width="2"'
        if on_path
        else f'stroke="{_OUTCOME_STROKE[outcome]}" stroke-width="0.8"'
    )
    tip = f"{a.unit_id} attempt {a.attempt}: {outcome}, {format_seconds(a.end - a.start)}"
    if a.error is not None:
        tip += f" ({describe_error(a.error)})"
    label = ""
    if bw > 40:
        label = (
            f'<text x="{bx + 3:.1f}" y="{by + row_h - 10:.1f}" font-size="10">'
            f"{_e(_shorten(a.unit_id, int(bw / 6.5)))}</text>"
        )
    return (
        f'<g class="bar {outcome}"><title>{_e(tip)}</title><rect x="{bx:.1f}" y="{by}" '
        f'width="{bw:.1f}" height="{row_h - 6}" rx="2" fill="{_OUTCOME_FILL[outcome]}" '
        f"{stroke}/>{label}</g>"
    )


# -- the page ------------------------------------------------------------------------------


def build_report(
    run: Run, recorder: TraceRecorder | None = None, *, title: str = "quantum-partitioner run"
) -> str:
    """The HTML report of a finished run (see the module docstring)."""
    names = run.graph.names
    lay = layout(run, recorder)
    path = observed_critical_path(run)
    critical = set(path)
    counts = run.counts()
    origin = run.started_at
    duration = (run.ended_at - origin) if run.ended_at else 0.0
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.to_epoch(origin)))
    chips = "".join(
        f'<span style="background:{STATE_COLOURS[state]}">{state.value} {counts[state]:,}</span>'
        for state in UnitState
        if counts[state]
    )
    decided = sum(n for cause, n in run.skip_causes().items() if not cause.is_failure)
    if decided:
        chips += (
            f'<span style="background:{DECIDED_SKIP_COLOUR}">of which by decision {decided:,}'
            "</span>"
        )

    legend = "".join(
        f'<span style="background:{fill}">{outcome}</span>'
        for outcome, fill in _OUTCOME_FILL.items()
    )
    if lay.startups:
        legend += '<span style="background:#e8e8e8">worker start-up</span>'
    sections = [
        f"<h1>{_e(title)}</h1>",
        (
            f'<div class="sub">{_e(run.mode)} mode, {workers_text(run)} &middot; '
            f"started {_e(started)} &middot; took {_e(format_seconds(duration))} &middot; "
            f"{len(names):,} units</div>"
        ),
        f'<div class="chips" id="summary">{chips}</div>',
        "<h2>Graph</h2>",
        (
            '<div class="sub">Left to right by level; filled by state; the critical path '
            "of this run in red.</div>"
        ),
        f'<div class="box">{graph_svg(run, critical)}</div>',
        "<h2>Timeline</h2>",
        (
            '<div class="sub">One row per worker; one bar per attempt (hover for details); '
            "the critical path outlined in red.</div>"
        ),
        f'<div class="chips">{legend}</div>',
        f'<div class="box">{gantt_svg(run, lay, critical)}</div>',
        "<h2>Critical path</h2>",
        _critical_section(run, path),
        "<h2>Units</h2>",
        _table(run, lay, critical),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + f"<script>{_JS}</script></body></html>\n"
    )


def _critical_section(run: Run, path: list[int]) -> str:
    if not path:
        return '<p class="note">No unit ran.</p>'
    sched = run.scheduler
    names = run.graph.names
    origin = run.started_at
    items = "".join(
        f"<li><b>{_e(names[i])}</b>: {sched.state[i].value}, started at "
        f"{_e(format_seconds(sched.started[i] - origin))}, took "
        f"{_e(format_seconds(sched.ended[i] - sched.started[i]))}</li>"
        for i in path
    )
    span = sched.ended[path[-1]] - origin
    return (
        f'<div class="sub">{len(path)} units; the last one ended '
        f"{_e(format_seconds(span))} after the run started. Each unit here is the "
        "dependency its successor waited for longest.</div>"
        f'<ol id="critical-path">{items}</ol>'
    )


def _table(run: Run, lay: Layout, critical: set[int]) -> str:
    sched = run.scheduler
    names = run.graph.names
    origin = run.started_at
    worker: dict[int, str] = {}
    for a, track in zip(lay.attempts, lay.track_of, strict=True):
        worker[a.unit_index] = lay.tracks[track]
    order = sorted(
        range(len(names)),
        key=lambda i: (not sched.attempts[i], sched.started[i] if sched.attempts[i] else 0.0, i),
    )
    gate = sched.gate
    waited = None if gate is None else gate.unit_waited  # the column shows only with limits
    rows = []
    for i in order[:MAX_TABLE_ROWS]:
        state = sched.state[i]
        ran = bool(sched.attempts[i]) and state.is_terminal and i in worker
        start = sched.started[i] - origin if ran else None
        took = sched.ended[i] - sched.started[i] if ran else None
        rows.append(
            f"<tr{' class=crit' if i in critical else ''}>"
            f"<td>{_e(names[i])}</td>"
            f'<td style="background:{unit_colour(state, sched.errors.get(i))}">'
            f"{state.value}</td>"
            f'<td class="num">{sched.attempts[i]}</td>'
            f'<td class="num" data-v="{"" if start is None else f"{start:.9f}"}">'
            f"{'' if start is None else _e(format_seconds(start))}</td>"
            f'<td class="num" data-v="{"" if took is None else f"{took:.9f}"}">'
            f"{'' if took is None else _e(format_seconds(took))}</td>"
            + ("" if waited is None else _waited_cell(waited.get(i), gate, i))
            + f"<td>{_e(worker.get(i, ''))}</td>"
            f'<td class="err">{_e(describe_error(sched.errors.get(i)))}</td></tr>'
        )
    note = ""
    if len(names) > MAX_TABLE_ROWS:
        note = f'<p class="note">Showing the first {MAX_TABLE_ROWS:,} of {len(names):,} units.</p>'
    return (
        '<div class="box"><table class="sortable" id="units"><thead><tr>'
        "<th>unit</th><th>state</th><th>attempts</th><th>start</th><th>duration</th>"
        + ("" if waited is None else "<th>waited for a limit</th>")
        + "<th>worker</th><th>error</th></tr></thead><tbody>"
        + "".join(rows)
        + f"</tbody></table></div>{note}"
    )


def _waited_cell(seconds: float | None, gate: LimitGate | None, i: int) -> str:
    """How long unit ``i`` waited for its named limits, and for which one last."""
    if seconds is None or gate is None:
        return '<td class="num" data-v=""></td>'
    text = f"{format_seconds(seconds)} ({gate.unit_waited_for[i]})"
    return f'<td class="num" data-v="{seconds:.9f}">{_e(text)}</td>'


def write_report(
    run: Run,
    path: str | Path,
    recorder: TraceRecorder | None = None,
    *,
    title: str = "quantum-partitioner run",
) -> Path:
    """Write :func:`build_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(build_report(run, recorder, title=title), encoding="utf-8")
    LOGGER.debug("wrote a run report of %d units to %s", len(run.graph), path)
    return path


# -- Graphviz ------------------------------------------------------------------------------

#: What :func:`render_dot` can produce.
RENDER_FORMATS = ("svg", "png", "pdf")


def render_dot(source: str, path: str | Path, fmt: str | None = None) -> Path:
    """Render DOT ``source`` to ``path`` with Graphviz's ``dot``.

    Args:
        source: Graphviz DOT text.
        path: The file to write.
        fmt: ``svg``, ``png`` or ``pdf``; None takes it from ``path``'s suffix (else svg).

    Raises:
        ValueError: ``fmt`` is not one of those.
        FileNotFoundError: ``dot`` is not installed (the message says how to install it).
        RuntimeError: ``dot`` failed (its message is included).
    """
    path = Path(path)
    if fmt is None:
        suffix = path.suffix.lstrip(".").lower()
        fmt = suffix if suffix in RENDER_FORMATS else "svg"
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"format must be one of {list(RENDER_FORMATS)}, got {fmt!r}")
    dot = shutil.which("dot")
    if dot is None:
        raise FileNotFoundError(
            "rendering the graph needs Graphviz's 'dot' program, which is not on PATH; "
            "install Graphviz (Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
            "graphviz; conda: conda install graphviz), or use visualize() for the DOT "
            "source or write_report() for an HTML picture that needs nothing"
        )
    completed = subprocess.run(  # noqa: S603 - a fixed program found on PATH, no shell
        [dot, f"-T{fmt}", "-o", str(path)],
        input=source.encode(),
        capture_output=True,
        check=False,
        timeout=300,
    )
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"Graphviz dot failed (exit status {completed.returncode}): {message}")
    LOGGER.debug("rendered the graph as %s to %s", fmt, path)
    return path
