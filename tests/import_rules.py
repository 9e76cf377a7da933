"""The import rules of docs/architecture.md, checked by walking the source with `ast`.

Why an AST walk and not import-linter: the stage folders (`producers/`, `projector/`,
`query/`, `webhooks/`) are mapped into the `memstream` namespace by pyproject's
`package-dir`, and grimp (import-linter's engine) finds a package's modules by walking the
directory of `memstream/__init__.py`, so it would not see the stages at all. Here the same
mapping is read from pyproject.toml, so a new stage folder is covered once it is packaged.

Every import counts, also one inside a function (a lazy import that hides a circle is still
a circle), except those under `if TYPE_CHECKING:`, which never run.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Groups, from the top of the house down. A module belongs to the first group one of whose
# prefixes it starts with; everything else under `memstream` is the kernel.
GROUPS: dict[str, tuple[str, ...]] = {
    "faces": (
        "memstream.cli",
        "memstream.server",
        "memstream.dashboard",
        "memstream.mcp",
        "memstream.integrations",
        "memstream.client",
    ),
    "service": ("memstream.service", "memstream.light_reads", "memstream.light_writes"),
    "producers": ("memstream.producers",),
    "query": ("memstream.query",),
    "webhooks": ("memstream.webhooks",),
    "projector": ("memstream.projector",),
}

# Which groups each group may import (its own included).
ALLOWED: dict[str, frozenset[str]] = {
    "kernel": frozenset({"kernel"}),
    "projector": frozenset({"kernel", "projector"}),
    "webhooks": frozenset({"kernel", "webhooks"}),
    "query": frozenset({"kernel", "projector", "query"}),
    "producers": frozenset({"kernel", "projector", "query", "producers"}),
    "service": frozenset({"kernel", "projector", "webhooks", "query", "producers", "service"}),
    # Faces go through the service; of the stages they may use the read side's public
    # values (filters, export formats), never the projector's or the writers' internals.
    "faces": frozenset({"kernel", "service", "query", "faces"}),
}

# Kernel modules a face must not reach into even though the kernel is otherwise open to it:
# the log and key-store implementations (faces use the `EventLog`/`KeyStore` interfaces).
FACE_FORBIDDEN = (
    "memstream.log.file",
    "memstream.log.kafka",
    "memstream.keystore.file",
    "memstream.keystore.kafka",
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int


def group_of(module: str) -> str:
    if module == "memstream":  # the front door: `memstream.Client` is the HTTP client, a face
        return "faces"
    for group, prefixes in GROUPS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return group
    return "kernel"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """`memstream.x` -> folder, from pyproject's `package-dir` (the installed layout)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the package, named as it is imported."""
    found: dict[str, Path] = {}
    # longest package names first, so `memstream.query` claims `query/` before `memstream`
    # would claim a folder of the same name under `memstream/`
    claimed: set[Path] = set()
    for name, folder in sorted(dirs.items(), key=lambda kv: -kv[0].count(".")):
        for path in sorted(folder.rglob("*.py")):
            if path in claimed or ".venv" in path.parts:
                continue
            claimed.add(path)
            rel = path.relative_to(folder).with_suffix("").parts
            parts = [p for p in rel if p != "__init__"]
            found[".".join([name, *parts])] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imports(found: dict[str, Path]) -> Iterator[Import]:
    """Each import of a `memstream` module by a `memstream` module (not under TYPE_CHECKING)."""
    for name, path in found.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the module pkg.sub when there is one
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in found]
                targets = subs or [module]
            for target in targets:
                if not target.startswith("memstream"):
                    continue
                while target not in found and "." in target:  # `memstream.x.y.Name` -> module
                    target = target.rpartition(".")[0]
                if target in found and target != name:
                    yield Import(name, target, path, node.lineno)


def layer_violations(found: dict[str, Path]) -> list[str]:
    bad = []
    for imp in imports(found):
        src, dst = group_of(imp.importer), group_of(imp.imported)
        rel = imp.path.relative_to(ROOT) if imp.path.is_relative_to(ROOT) else imp.path
        if dst not in ALLOWED[src]:
            bad.append(f"{rel}:{imp.line}: {imp.importer} ({src}) imports {imp.imported} ({dst})")
        elif src == "faces" and any(
            imp.imported == f or imp.imported.startswith(f + ".") for f in FACE_FORBIDDEN
        ):
            bad.append(
                f"{rel}:{imp.line}: {imp.importer} (faces) reaches into {imp.imported}: "
                "go through the service or the log/key-store interface"
            )
    return bad


def cycles(found: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in found}
    for imp in imports(found):
        graph[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result
