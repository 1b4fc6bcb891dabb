"""Pictures of the graph after a run: DOT and Mermaid coloured by state, rendered by Graphviz."""

from __future__ import annotations

import re
import shutil

import pytest

from quantum_partitioner import ExecutionMode, QuantumPartitioner, UnitState
from quantum_partitioner.observability._render import STATE_COLOURS

SEQ = ExecutionMode.SEQUENTIAL
RED = "#d62728"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is absent")


def boom(ctx):
    raise ValueError("no")


def after_a_run():
    """A run that leaves units in four states.

    a --> b --> c            (completed; the longest chain, so the critical path)
    a --> bad --> skipped    (failed, then skipped)
    """
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="a")
    qp.add_unit(lambda ctx: 2, ["a"], name="b", metadata={"estimated_duration": 5})
    qp.add_unit(lambda ctx: 3, ["b"], name="c", metadata={"estimated_duration": 5})
    qp.add_unit(boom, ["a"], name="bad", metadata={"estimated_duration": 1})
    qp.add_unit(lambda ctx: 4, ["bad"], name="skipped", metadata={"estimated_duration": 1})
    qp.execute(execution_mode=SEQ)
    return qp


def dot_nodes(dot):
    """``{name: attribute text}`` of each node statement of a DOT picture."""
    return dict(re.findall(r'^  "([^"]+)" \[(.*)\];$', dot, re.MULTILINE))


def test_dot_colours_each_unit_by_its_state_after_a_run():
    """After a run, visualize() fills each node with its unit's state colour."""
    qp = after_a_run()
    nodes = dot_nodes(qp.build_execution_plan().visualize())
    expected = {
        "a": UnitState.COMPLETED,
        "b": UnitState.COMPLETED,
        "c": UnitState.COMPLETED,
        "bad": UnitState.FAILED,
        "skipped": UnitState.SKIPPED,
    }
    for name, state in expected.items():
        assert f'fillcolor="{STATE_COLOURS[state]}"' in nodes[name], name
        assert f'tooltip="{state.value}"' in nodes[name]


def test_dot_legend_names_the_colour_of_each_state_drawn():
    """The picture carries a legend: one row per state drawn, with its colour, and the red path."""
    qp = after_a_run()
    dot = qp.build_execution_plan().visualize()
    legend = re.search(r"^  legend \[shape=plain, .*label=<(.*)>\];$", dot, re.MULTILINE)
    assert legend is not None
    rows = re.findall(r'<td bgcolor="([^"]+)"[^>]*></td><td[^>]*>(\w+)</td>', legend.group(1))
    assert rows == [
        (STATE_COLOURS[state], state.value)
        for state in (UnitState.COMPLETED, UnitState.FAILED, UnitState.SKIPPED)
    ]
    assert RED in legend.group(1)
    assert "critical path" in legend.group(1)
    assert "legend" not in dot_nodes(dot)  # not drawn as a unit
    assert "legend" not in qp.build_execution_plan().visualize(states=False)


def test_dot_legend_never_takes_a_units_name():
    """A unit named ``legend`` keeps its node; the legend takes another id."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="legend")
    dot = qp.build_execution_plan().visualize()
    assert dot_nodes(dot)["legend"].startswith('fillcolor="#f5f5f5"')
    assert re.search(r"^  _legend \[shape=plain", dot, re.MULTILINE)


def test_dot_marks_the_critical_path_after_a_run():
    """The critical path (a, b, c by estimated duration) is red, its edges too."""
    qp = after_a_run()
    dot = qp.build_execution_plan().visualize()
    nodes = dot_nodes(dot)
    assert [name for name, attrs in nodes.items() if RED in attrs] == ["a", "b", "c"]
    red_edges = re.findall(rf'"(\w+)" -> "(\w+)" \[color="{RED}"', dot)
    assert red_edges == [("a", "b"), ("b", "c")]


def test_mermaid_classes_each_unit_by_its_state_after_a_run():
    """to_mermaid() gives each node its state's class and the critical path a thick edge."""
    qp = after_a_run()
    text = qp.build_execution_plan().to_mermaid()
    classes = dict(re.findall(r"^  class u\d+_(\w+) (\w+)$", text, re.MULTILINE))
    assert classes == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
        "bad": "failed",
        "skipped": "skipped",
    }
    assert f"classDef failed fill:{STATE_COLOURS[UnitState.FAILED]}" in text
    assert re.search(r"u\d+_a ==> u\d+_b", text)
    assert re.search(r"u\d+_a --> u\d+_bad", text)


@needs_dot
def test_render_svg_colours_units_by_state(tmp_path):
    """render() writes an SVG drawn by dot with the state colours in it."""
    qp = after_a_run()
    path = qp.render(tmp_path / "graph.svg")
    assert path == tmp_path / "graph.svg"
    svg = path.read_text()
    assert "<svg" in svg
    assert STATE_COLOURS[UnitState.FAILED] in svg
    assert ">skipped<" in svg


@needs_dot
def test_render_png_by_suffix_or_format(tmp_path):
    """A .png path, or format="png", gives a PNG image."""
    qp = after_a_run()
    by_suffix = qp.render(tmp_path / "graph.png")
    by_format = qp.render(tmp_path / "graph.image", format="png")
    for path in (by_suffix, by_format):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_graphviz_says_how_to_install_it(tmp_path, monkeypatch):
    """With no dot on PATH, render() raises FileNotFoundError naming Graphviz and how to get it."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    qp = after_a_run()
    with pytest.raises(FileNotFoundError) as caught:
        qp.render(tmp_path / "graph.svg")
    message = str(caught.value)
    assert "Graphviz" in message
    assert "apt-get install graphviz" in message
    assert "write_report()" in message
    assert not (tmp_path / "graph.svg").exists()


def test_render_rejects_an_unknown_format(tmp_path):
    """An unknown format is a ValueError naming the known ones, before dot is looked for."""
    qp = after_a_run()
    with pytest.raises(ValueError, match="svg"):
        qp.render(tmp_path / "graph.gif", format="gif")


@needs_dot
def test_render_before_any_run_draws_the_plan(tmp_path):
    """Without a run, render() still draws the plan (every unit pending)."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="only")
    svg = qp.render(tmp_path / "plan.svg").read_text()
    assert ">only<" in svg
    assert STATE_COLOURS[UnitState.PENDING] in svg


# -- maps: one node, its items by state ------------------------------------------------------


def mapped(values):
    """plan -> halve (a map: odd items fail) -> total (all_done)."""

    def halve(ctx):
        if ctx.item % 2:
            raise ValueError("odd")
        return ctx.item // 2

    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: values, name="plan")
    qp.add_map(halve, over="plan", name="halve")
    qp.add_unit(lambda ctx: sum(ctx["halve"]), ["halve"], name="total", run_if="all_done")
    return qp


def test_a_map_is_one_node_marked_as_a_map_before_a_run():
    """Before a run the DOT and Mermaid pictures draw a map as one node saying what it maps over."""
    plan = mapped([1, 2]).build_execution_plan()
    nodes = dot_nodes(plan.visualize())
    assert set(nodes) == {"plan", "halve", "total"}
    assert 'shape=box3d, label="halve\\nmap over plan"' in nodes["halve"]
    assert 'u1_halve[["halve<br/>map over plan"]]' in plan.to_mermaid()


def test_after_a_run_a_map_of_thousands_of_items_is_one_node_with_its_counts_by_state():
    """5,000 items: the pictures keep three nodes; the map's counts each state of its items."""
    qp = mapped(list(range(5000)))
    qp.execute(execution_mode=SEQ)
    plan = qp.build_execution_plan()
    dot = plan.visualize()
    nodes = dot_nodes(dot)
    assert set(nodes) == {"plan", "halve", "total"}
    assert 'label="halve\\n5000 items: 2500 completed, 2500 failed"' in nodes["halve"]
    assert f'fillcolor="{STATE_COLOURS[UnitState.FAILED]}"' in nodes["halve"]
    assert "halve[" not in dot
    mermaid = plan.to_mermaid()
    assert '[["halve<br/>5000 items: 2500 completed, 2500 failed"]]' in mermaid
    assert "halve[0]" not in mermaid
    assert qp.units["halve"].item_states == {UnitState.COMPLETED: 2500, UnitState.FAILED: 2500}
    assert qp.units["plan"].item_states == {}


def test_a_map_with_no_items_or_that_never_expanded_says_so():
    """Zero items: "0 items"; a map skipped because its input failed: what it maps over."""
    qp = mapped([])
    qp.execute(execution_mode=SEQ)
    assert 'label="halve\\n0 items"' in dot_nodes(qp.build_execution_plan().visualize())["halve"]
    qp.add_unit(boom, name="plan", replace=True)
    qp.execute(execution_mode=SEQ)
    node = dot_nodes(qp.build_execution_plan().visualize())["halve"]
    assert 'label="halve\\nmap over plan"' in node
    assert f'fillcolor="{STATE_COLOURS[UnitState.SKIPPED]}"' in node


@needs_dot
def test_render_draws_a_map_of_thousands_of_items(tmp_path):
    """Graphviz draws the collapsed picture of a 5,000-item map."""
    qp = mapped(list(range(5000)))
    qp.execute(execution_mode=SEQ)
    svg = qp.render(tmp_path / "g.svg").read_text()
    assert "5000 items: 2500 completed, 2500 failed" in svg


def test_dot_keeps_non_ascii_names_and_escapes_unsafe_code_points():
    """DOT holds a name's letters as they are, and controls, bidi marks, surrogates escaped."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="café")
    qp.add_unit(lambda ctx: 1, ["café"], name="\x1b[2J\u202e\x85\udc80")
    dot = qp.build_execution_plan().visualize(states=False)
    assert '  "café" -> "\\u001b[2J\\u202e\\u0085\\udc80"' in dot
    dot.encode()  # no lone surrogate left: any UTF-8 reader takes it
    assert "\\u00e9" not in dot


@needs_dot
def test_render_draws_non_ascii_names_as_letters(tmp_path):
    """Graphviz draws ``café`` for a unit named ``café``, not its escape."""
    qp = QuantumPartitioner()
    qp.add_unit(lambda ctx: 1, name="café")
    svg = qp.render(tmp_path / "g.svg").read_text(encoding="utf-8")
    assert ">café</text>" in svg
