"""The shape of the code: imports flow one way, and only the CLI's own module imports the CLI."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.imports import cycles, import_graph

ROOT = Path(__file__).resolve().parents[1]
# What may import what, between greenr's sub-packages: serving libraries run models, so backends/
# sits above model/ (the torch backend runs a checkpoint), never the other way round.
LAYERS = ("greenr.backends", "greenr.model")


def test_no_import_cycles_in_greenr_and_serve() -> None:
    assert cycles(import_graph(ROOT, ("greenr", "serve"))) == []


def test_only_greenr_cli_imports_the_cli() -> None:
    graph = import_graph(ROOT, ("greenr", "serve", "stages"))
    assert [name for name, targets in graph.items() if "greenr.cli" in targets and name != "greenr.cli"] == []


def test_sub_packages_import_each_other_one_way_only() -> None:
    graph = import_graph(ROOT, ("greenr",))

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges = {(package(a), package(b)) for a, targets in graph.items() for b in targets if package(a) != package(b)}
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert both_ways == []
    upper, lower = LAYERS
    assert (upper, lower) in edges and (lower, upper) not in edges


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checks above are only as good as this."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
