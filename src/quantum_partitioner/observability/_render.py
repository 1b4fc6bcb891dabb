"""Layer 1: text pictures of a graph, Graphviz DOT and Mermaid. Pure string building.

A map is drawn as one node however many items it created, so a graph of thousands of
items still draws: before a run it says what it maps over, after one how many of its items
ended in each state (:func:`map_note`).
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from typing import TYPE_CHECKING

from .._errors import UnitSkippedError
from .._graph import UnitState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._graph import Graph, QuantumUnit

__all__ = [
    "DECIDED_SKIP_COLOUR",
    "STATE_COLOURS",
    "UNSAFE_CODE_POINTS",
    "map_note",
    "to_dot",
    "to_mermaid",
    "unit_colour",
]

#: Fill colour of a unit by state, shared by every picture.
STATE_COLOURS = {
    UnitState.PENDING: "#f5f5f5",
    UnitState.RUNNING: "#fff3b0",
    UnitState.COMPLETED: "#c8f7c5",
    UnitState.FAILED: "#f7c5c5",
    UnitState.TIMEOUT: "#f7d9b0",
    UnitState.SKIPPED: "#dddddd",
    UnitState.CANCELED: "#c5d5f7",
}

#: A unit SKIPPED by a decision (a condition, ``ctx.skip``, a join rule): not a failure, so
#: lighter than a skip caused by one (``STATE_COLOURS[SKIPPED]``).
DECIDED_SKIP_COLOUR = "#eef4e6"

_CRITICAL = "#d62728"

#: Code points that must not reach a terminal or a picture as they are: C0, DEL and C1
#: controls and the marks that reorder or break a line (a viewer would obey them), and lone
#: surrogates (no encoding holds them). Names come from user code; every picture and the
#: command line write these as escapes.
UNSAFE_CODE_POINTS = frozenset(
    (*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F))
).union(range(0x2066, 0x206A), range(0xD800, 0xE000))


def unit_colour(state: UnitState, error: BaseException | None) -> str:
    """A unit's fill: its state's colour, told apart for skips by decision."""
    decided = isinstance(error, UnitSkippedError) and not error.cause.is_failure
    if state is UnitState.SKIPPED and decided:
        return DECIDED_SKIP_COLOUR
    return STATE_COLOURS[state]


def map_note(over: str, state: UnitState, items: Mapping[UnitState, int] | None) -> str:
    """The line under a map's name: its items by state, or what it maps over.

    ``items`` is how many of its items are in each state (None: draw the plan, not a run).
    A map that created no items says so once it completed; one that never expanded (still
    waiting, skipped, failed before it had items) says what it maps over.
    """
    if items is None or (not items and state is not UnitState.COMPLETED):
        return f"map over {over}"
    total = sum(items.values())
    counts = ", ".join(f"{items[s]} {s.value}" for s in STATE_COLOURS if items.get(s))
    return f"{total} item{'' if total == 1 else 's'}" + (f": {counts}" if counts else "")


def _map_notes(graph: Graph, *, states: bool) -> dict[int, str]:
    """Each map's note, by index (see :func:`map_note`)."""
    notes = {}
    names, units = graph.names, graph.units
    for m, over in graph.maps.items():
        unit: QuantumUnit[object, object] = units[m]
        items = unit.item_states if states else None
        notes[m] = map_note(names[over], unit.state, items)
    return notes


# DOT reads UTF-8 text as it is, so only the unsafe code points become ``\uXXXX`` escapes
# (drawn as text). ``json.dumps`` quotes the name and escapes the quote, the backslash and
# C0 controls; with ``ensure_ascii`` it would escape every non-ASCII letter too, and
# Graphviz would draw ``caf\u00e9`` for ``café``.
_DOT_ESCAPES = {code: f"\\u{code:04x}" for code in UNSAFE_CODE_POINTS if code >= 0x20}


def _dot_id(name: str) -> str:
    return json.dumps(name, ensure_ascii=False).translate(_DOT_ESCAPES)


def to_dot(graph: Graph, critical_path: Sequence[str], *, states: bool = True) -> str:
    """Graphviz DOT source: one node per unit, one edge per dependency.

    Edges point from a dependency to its dependent. Critical-path nodes and edges are bold
    and red; with ``states``, nodes are filled by their unit's state in the last run, and a
    legend names the colours of the states drawn (and the critical path's red). A map is one
    3-D box, labelled with its items by state (see :func:`map_note`).
    """
    critical = set(critical_path)
    critical_edges = set(pairwise(critical_path))
    drawn: set[UnitState] = set()
    lines = [
        "digraph ExecutionPlan {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    notes = _map_notes(graph, states=states)
    for i, unit in enumerate(graph.units):
        attrs = []
        note = notes.get(i) if notes else None
        if note is not None:
            attrs += ["shape=box3d", f"label={_dot_id(unit.id + chr(10) + note)}"]
        if states:
            state = unit.state
            drawn.add(state)
            attrs.append(f'fillcolor="{unit_colour(state, unit.error)}"')
            if state is not UnitState.PENDING:
                tip = state.value if note is None else f"{state.value}; {note}"
                attrs.append(f"tooltip={_dot_id(tip)}")
        if unit.id in critical:
            attrs.append(f'color="{_CRITICAL}", penwidth=2.5')
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_dot_id(unit.id)}{suffix};")
    names = graph.names
    for i, row in enumerate(graph.deps):
        for j in row:
            edge = (names[j], names[i])
            style = f' [color="{_CRITICAL}", penwidth=2.5]' if edge in critical_edges else ""
            lines.append(f"  {_dot_id(edge[0])} -> {_dot_id(edge[1])}{style};")
    if drawn:
        lines.append(_dot_legend(graph, [s for s in STATE_COLOURS if s in drawn], critical))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_legend(graph: Graph, states: list[UnitState], critical: set[str]) -> str:
    """One table node, outside the graph's flow, naming each state's fill colour."""
    node = "legend"
    while node in graph.index:  # DOT ids are names: never take a unit's
        node = f"_{node}"
    rows = ['<tr><td colspan="2"><b>state</b></td></tr>']
    rows.extend(
        f'<tr><td bgcolor="{STATE_COLOURS[state]}" width="24"></td>'
        f'<td align="left">{state.value}</td></tr>'
        for state in states
    )
    if critical:
        rows.append(
            f'<tr><td><font color="{_CRITICAL}"><b>&#8212;&#8212;</b></font></td>'
            '<td align="left">critical path</td></tr>'
        )
    table = '<table border="0" cellborder="1" cellspacing="0" cellpadding="4">'
    return f"  {node} [shape=plain, style=solid, label=<{table}{''.join(rows)}</table>>];"


_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# Characters a Mermaid label cannot hold as they are, written as entity codes: the quote
# that ends it, and the unsafe code points.
_MERMAID_ESCAPES = {code: f"#{code};" for code in UNSAFE_CODE_POINTS} | {ord('"'): "#quot;"}


def _mermaid_label(name: str) -> str:
    return name.translate(_MERMAID_ESCAPES)


def to_mermaid(graph: Graph, critical_path: Sequence[str], *, states: bool = True) -> str:
    """Mermaid flowchart source; critical-path edges are thick, nodes classed by state.

    A map is one subroutine-shaped node, labelled with its items by state.
    """
    node_ids = [f"u{i}_{_MERMAID_UNSAFE.sub('_', name)[:40]}" for i, name in enumerate(graph.names)]
    critical = set(critical_path)
    critical_edges = set(pairwise(critical_path))
    lines = ["flowchart LR"]
    notes = _map_notes(graph, states=states)
    for i, unit in enumerate(graph.units):
        note = notes.get(i) if notes else None
        if note is None:
            lines.append(f'  {node_ids[i]}["{_mermaid_label(unit.id)}"]')
        else:
            label = f"{_mermaid_label(unit.id)}<br/>{_mermaid_label(note)}"
            lines.append(f'  {node_ids[i]}[["{label}"]]')
    names = graph.names
    for i, row in enumerate(graph.deps):
        for j in row:
            arrow = "==>" if (names[j], names[i]) in critical_edges else "-->"
            lines.append(f"  {node_ids[j]} {arrow} {node_ids[i]}")
    if states:
        for state, colour in STATE_COLOURS.items():
            lines.append(f"  classDef {state.value} fill:{colour}")
        for i, unit in enumerate(graph.units):
            lines.append(f"  class {node_ids[i]} {unit.state.value}")
    if critical:
        lines.append(f"  classDef critical stroke:{_CRITICAL},stroke-width:3px")
        ids = ",".join(node_ids[graph.index[name]] for name in critical_path)
        lines.append(f"  class {ids} critical")
    return "\n".join(lines) + "\n"
