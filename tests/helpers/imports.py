"""The project modules a script imports, found by reading the source (nothing is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT_PACKAGES = ("greenr", "serve", "stages")


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (`greenr.data.images` -> greenr/data/images.py), if any."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in `path`, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from greenr.model import checkpoint` imports the module greenr.model.checkpoint.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_imports(root: Path, script: Path) -> set[Path]:
    """Files of every project module `script` imports, directly or through other project modules.

    Package `__init__.py` files are left out: they hold docstrings only.
    """
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for module in _imported_modules(path):
            if module.split(".")[0] not in PROJECT_PACKAGES:
                continue
            target = module_file(root, module)
            if target is None or target in seen or target.name == "__init__.py":
                continue
            seen.add(target)
            todo.append(target)
    return seen


def stage_dep_problems(root: Path, dvc_yaml: dict) -> dict[str, list[str]]:
    """Per stage run as `python -m stages.X`: project files it imports that its `deps` lack (a
    listed folder covers every file in it), and `deps` under greenr/ or stages/ that do not exist
    (empty lists everywhere = all good)."""
    problems: dict[str, list[str]] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        cmd = stage.get("cmd", "")
        if not cmd.startswith("python -m stages."):
            continue
        script = root / "stages" / f"{cmd.split('stages.', 1)[1].split()[0]}.py"
        deps = set(stage.get("deps") or [])
        needed = {script} | project_imports(root, script)
        missing = sorted(
            rel
            for rel in (p.relative_to(root).as_posix() for p in needed)
            if not any(rel == d or rel.startswith(f"{d.rstrip('/')}/") for d in deps)
        )
        stale = sorted(d for d in deps if d.startswith(("greenr/", "stages/")) and not (root / d).exists())
        problems[name] = [f"imports {m} but does not list it in deps" for m in missing] + [
            f"lists {s} in deps, which does not exist" for s in stale
        ]
    return problems


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at any depth in its source, lazy imports too),
    for every module of `packages` under `root`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module in _imported_modules(path):
            while module and module not in modules:  # `from greenr.x import function`
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (each group holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
