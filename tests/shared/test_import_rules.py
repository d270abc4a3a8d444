"""Who may import whom (docs/design.md, The packages): no import cycles, not even through imports inside
functions; the encoder client and `shared` import no diffusers; the server and the client never import each other.
Read from the source with `ast`, so an import hidden in a function counts too (`if TYPE_CHECKING:` blocks do not)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("encoder_server", "diffusion_client", "shared", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "protocol" not in path.parts:
                found[module_name(path)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports, anywhere but under `if TYPE_CHECKING:`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = {imported for imported in imported_names(path) if imported in known and imported != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


# The tiny-snapshot builders write diffusers' DiT and VAE by nature (for tests and demos, never on a server), and
# `quiet_model_libraries` sets diffusers' log level when a side that loads diffusers calls it.
DIFFUSERS_ALLOWED = ("shared.tiny_snapshot", "shared.tiny_klein", "shared.tiny_model_cli", "shared.library_logs")


def test_the_encoder_client_and_shared_import_no_diffusers():
    for name, path in modules().items():
        if name.startswith(("diffusion_client.encoder_client", "shared")) and name not in DIFFUSERS_ALLOWED:
            assert not {imported for imported in imported_names(path) if imported.split(".")[0] == "diffusers"}, name


def test_the_server_and_the_client_never_import_each_other():
    for name, targets in graph().items():
        side = name.split(".")[0]
        other = {"encoder_server": "diffusion_client", "diffusion_client": "encoder_server"}.get(side)
        if other is not None:
            assert not [target for target in targets if target.split(".")[0] == other], name


def test_shared_imports_neither_side():
    for name, targets in graph().items():
        if name.startswith("shared"):
            assert not [target for target in targets if target.startswith(("encoder_server", "diffusion_client"))], name
