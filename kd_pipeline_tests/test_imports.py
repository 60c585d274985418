"""kd_pipeline's modules import each other without a cycle, and runtime code never imports
the sample generator when it is imported.

The graph is read from the source with `ast`: an edge A -> B for every import of a
kd_pipeline module B that runs when A is imported (statements of the module's body, those
under a top-level `if`/`try`/`with` included; imports inside functions and classes, and
under `if TYPE_CHECKING:`, excluded: they run later, or never). A stricter graph counts the
imports inside functions too: there the one edge allowed to close a loop is the fetch
layer's import of the sample generator, made in the one function that writes the sample.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import kd_pipeline

PACKAGE_ROOT = Path(kd_pipeline.__file__).parent
PACKAGE = "kd_pipeline"


def module_names(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when a module is imported, descending into top-level
    if/try/with blocks but not into functions, classes or `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name != "TYPE_CHECKING":
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _import_time_statements(block)
            for handler in node.handlers:
                yield from _import_time_statements(handler.body)
        elif isinstance(node, ast.With):
            yield from _import_time_statements(node.body)
        else:
            yield node


def imported_modules(
    name: str, path: Path, known: Mapping[str, Path], *, in_functions: bool = False
) -> set[str]:
    """The kd_pipeline modules `name` imports when it is imported (in_functions: anywhere
    in it, function bodies included)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if in_functions else _import_time_statements(tree.body)
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known}


def import_graph(root: Path = PACKAGE_ROOT, *, in_functions: bool = False) -> dict[str, set[str]]:
    """module -> the kd_pipeline modules it imports at import time (in_functions: anywhere)."""
    known = module_names(root)
    return {
        name: imported_modules(name, path, known, in_functions=in_functions)
        for name, path in known.items()
    }


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none (depth-first
    search, modules and their imports visited in name order)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def check_no_cycle(graph: Mapping[str, set[str]]) -> None:
    """AssertionError printing one cycle (`import cycle: a -> b -> a`) when there is one."""
    cycle = find_cycle(graph)
    if cycle is not None:
        raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_package_imports_without_a_cycle() -> None:
    graph = import_graph()
    assert {"kd_pipeline.settings", "kd_pipeline.fetch", "kd_pipeline.sample"} <= graph.keys()
    assert "kd_pipeline.fetch" in graph["kd_pipeline.families.upstream"]  # edges are read
    check_no_cycle(graph)


def test_imports_inside_functions_close_no_loop_but_the_sample_download() -> None:
    """Counting the imports inside functions, the graph is acyclic once the fetch layer's
    import of the sample generator (`fetch.generate_sample_mirror`) is set aside: the
    settings -> sample import this package had (inside `sample_rows_per_config`) fails here."""
    graph = import_graph(in_functions=True)
    assert "kd_pipeline.sample" in graph["kd_pipeline.fetch"]
    graph["kd_pipeline.fetch"].discard("kd_pipeline.sample")
    check_no_cycle(graph)


def test_the_cycle_finder_finds_a_cycle_and_names_it() -> None:
    """The finder on the cycle this package had (settings -> sample -> families.upstream ->
    fetch -> settings), on a graph without one, and on a module importing itself."""
    had = {
        "settings": {"sample"},
        "sample": {"families.upstream", "fetch"},
        "families.upstream": {"fetch", "settings"},
        "fetch": {"settings"},
        "cli": {"settings", "sample"},
    }
    expected = "import cycle: sample -> families.upstream -> fetch -> settings -> sample"
    with pytest.raises(AssertionError, match=re.escape(expected)):
        check_no_cycle(had)
    check_no_cycle({**had, "settings": set()})
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_reads_every_form_of_import(tmp_path: Path) -> None:
    """`import x.y`, `from x import y` (a module or a name), relative imports, top-level
    if/try blocks count; imports in functions and under TYPE_CHECKING do not."""
    root = tmp_path / PACKAGE
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import kd_pipeline.b\nfrom kd_pipeline.sub import c\n",
        "b.py": "from . import sub\ntry:\n    from .sub.c import NAME\nexcept ImportError:\n"
        "    pass\n",
        "sub/__init__.py": "from .c import NAME\n",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    import kd_pipeline.a\n\ndef later():\n    import kd_pipeline.a\nNAME = 1\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    expected = {
        "kd_pipeline": set(),
        "kd_pipeline.a": {"kd_pipeline.b", "kd_pipeline.sub.c"},
        "kd_pipeline.b": {"kd_pipeline.sub", "kd_pipeline.sub.c"},
        "kd_pipeline.sub": {"kd_pipeline.sub.c"},
        "kd_pipeline.sub.c": set(),
    }
    assert import_graph(root) == expected
    everywhere = import_graph(root, in_functions=True)
    assert everywhere == {**expected, "kd_pipeline.sub.c": {"kd_pipeline.a"}}
    assert " -> ".join(find_cycle(everywhere) or []) == (
        "kd_pipeline.a -> kd_pipeline.b -> kd_pipeline.sub -> kd_pipeline.sub.c -> kd_pipeline.a"
    )


def test_runtime_modules_never_import_the_sample_generator() -> None:
    """Only the sample package itself imports it at import time (the fetch layer and the
    CLI import it inside the function that writes the sample); loading the code location
    leaves it unimported."""
    graph = import_graph()
    importers = {
        module
        for module, targets in graph.items()
        if not module.startswith("kd_pipeline.sample")
        and any(t == "kd_pipeline.sample" or t.startswith("kd_pipeline.sample.") for t in targets)
    }
    assert importers == set()
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, kd_pipeline.definitions, kd_pipeline.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('kd_pipeline.sample')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
