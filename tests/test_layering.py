"""The package's modules import downward only: no module reaches, directly or through others,
back to itself, counting imports inside functions too (a circle they hide is still a circle)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(src: Path) -> dict[str, Path]:
    """menet module name -> file, for every .py under src/menet (packages by their __init__)."""
    out = {}
    for path in sorted((src / "menet").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(src: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (module level or in a
    function). ``from P import x`` counts as importing P.x when that is a module, else P;
    ``import a.b`` as importing a.b. Importing a module from outside its package counts as
    importing the package too (Python runs the package's ``__init__`` first, so a circle through
    it is real); from inside it does not (the package is already being imported, and a package
    that re-exports its submodules would otherwise be on a circle with each of them)."""
    modules = module_names(src)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from package (minus level - 1 parts)
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                while target and target not in modules:  # import a.b.c of a non-module attribute path
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                parent = target.rpartition(".")[0]
                while parent:  # packages above the target that the importer is not inside
                    if parent in modules and name != parent and not name.startswith(parent + "."):
                        graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def test_the_graph_finds_imports_of_every_kind(tmp_path):
    """The walker itself: module-level, function-local, relative and `from package import module`."""
    pkg = tmp_path / "menet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from menet.b import x\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import menet.a\n")
    graph = import_graph(tmp_path)
    assert graph["menet.a"] == {"menet.b"} and graph["menet.b"] == {"menet.sub.c", "menet.sub"} and graph["menet.sub.c"] == {"menet.a"}
    assert find_cycle(graph) == ["menet.a", "menet.b", "menet.sub.c", "menet.a"]
    (pkg / "sub" / "c.py").write_text("import menet\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_a_circle_through_a_package_init_is_found(tmp_path):
    """Importing menet.sub.c runs menet/sub/__init__.py first: a circle through it is a circle."""
    pkg = tmp_path / "menet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    import menet.sub.c\n")
    (pkg / "sub" / "__init__.py").write_text("from menet.a import f\n")
    (pkg / "sub" / "c.py").write_text("from menet.sub import d\n")  # inside its package: no edge to it
    (pkg / "sub" / "d.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["menet.a"] == {"menet.sub.c", "menet.sub"} and graph["menet.sub.c"] == {"menet.sub.d"}
    assert find_cycle(graph) == ["menet.a", "menet.sub", "menet.a"]


def test_the_package_imports_downward_only():
    graph = import_graph(SRC)
    assert len(graph) > 40 and graph["menet.cli"]  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_importing_the_defense_stays_light():
    """The package top is lazy: the defense loads neither training, YAML, matplotlib nor the report."""
    import subprocess

    code = ("import sys, menet.defense; heavy = [m for m in ('menet.training', 'yaml', 'matplotlib', 'menet.report', "
            "'menet.reproduce', 'menet.recipe') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


@pytest.mark.parametrize("module", ["recipe", "scaling"])
def test_the_recipe_layer_is_pure_data(module):
    """The recipe schema and its scales import, at module level, no torch and nothing of the
    package but the training config (which imports torch only while it checks model options;
    attacks are imported only while a recipe is checked)."""
    tree = ast.parse((SRC / "menet" / f"{module}.py").read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in imported if name.split(".")[0] == "torch"}
    assert {name for name in imported if name.startswith("menet")} <= {"menet.config", "menet.recipe"}


def test_importing_the_recipe_layer_loads_no_torch():
    """Reading and scaling recipes is pure data: torch is not even imported (issue 15)."""
    import subprocess

    code = "import sys, menet.recipe, menet.scaling, menet.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", out


def test_every_module_opens_with_a_docstring():
    """Each file says its one job in its opening docstring."""
    missing = [str(path.relative_to(SRC)) for path in module_names(SRC).values() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, missing


def test_the_command_is_split_into_files_a_reader_can_hold():
    """No file of the `menet` command is over 400 lines (issue 15); ``menet.cli`` stays the entry point."""
    files = [*(SRC / "menet").glob("cli.py"), *(SRC / "menet" / "cli").rglob("*.py")]
    lengths = {str(path.relative_to(SRC)): len(path.read_text().splitlines()) for path in files}
    assert lengths and max(lengths.values()) <= 400, lengths
    from menet.cli import build_parser, main

    assert callable(main) and build_parser().prog == "menet"
