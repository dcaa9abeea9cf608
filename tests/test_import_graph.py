"""The package's modules import each other without cycles (scripts/import_graph.py)."""

from __future__ import annotations

from conftest import load_script


def _script():
    return load_script("scripts/import_graph.py")


def test_the_package_has_no_import_cycles():
    graph = _script()
    edges = graph.graph()
    assert "streamingt2v.training.config" in edges["streamingt2v.training.stages"]
    assert graph.cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = _script()
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert graph.cycles(edges) == [["a", "b", "c"]]
