"""The layer rule, read from the source: `simulacra` → `world`, `agents`, `viewer` → `inference`.

Every import that runs is counted, at module level or inside a function: an import moved into a
function to dodge a cycle is still a cycle in the design. Imports under `if TYPE_CHECKING:` are
counted for the layer rule (a lower layer must not even name a higher one's types) but not for
cycles: a type named in an annotation (a `Resident`'s `Town`) is a reference, not a dependency of
loading.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
# folder -> the name it is installed as (pyproject.toml's package-dir)
PACKAGES = {
    "simulacra": "simulacra",
    "world": "simulacra.world",
    "agents": "simulacra.agents",
    "viewer": "simulacra.viewer",
    "inference": "simulacra.inference",
}
LAYER_OF = {"simulacra.world": "world", "simulacra.agents": "agents", "simulacra.viewer": "viewer"}
# what each lower layer may import from the project, besides itself
ALLOWED = {
    "inference": set(),
    "world": set(),
    "agents": {"world", "inference.port"},
    "viewer": {"world", "inference"},
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out |= set(ast.walk(child))
    return out


def imports(name: str, path: Path, known: set[str], *, typing_only: bool = True) -> set[str]:
    """Project modules `name` imports (a `from pkg import x` of a submodule names the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = set() if typing_only else _type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def layer(module: str) -> str:
    """'inference', 'world', 'agents', 'viewer' or 'simulacra' (the top: CLI, runs, storage)."""
    for prefix, name in LAYER_OF.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    if module == "simulacra.inference" or module.startswith("simulacra.inference."):
        return "inference"
    return "simulacra"


def graph(*, typing_only: bool = True) -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    for name, path in mods.items():
        g.add_node(name)
        for target in imports(name, path, set(mods), typing_only=typing_only):
            g.add_edge(name, target)
    return g


def test_lower_layers_import_nothing_above_them() -> None:
    g = graph()
    bad = []
    for a, b in g.edges:
        la, lb = layer(a), layer(b)
        if la == "simulacra" or la == lb:
            continue
        allowed = ALLOWED[la]
        rel = b.removeprefix("simulacra.")
        if lb not in allowed and rel not in allowed:
            bad.append(f"{a} imports {b}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    # a package's __init__ re-exporting its own modules is not a cycle of design
    g = graph(typing_only=False)
    g.remove_edges_from([(a, b) for a, b in g.edges if b.startswith(a + ".") or a.startswith(b + ".")])
    cycles = [c for c in nx.simple_cycles(g) if len(c) > 1]
    assert not cycles, "\n".join(" -> ".join([*c, c[0]]) for c in cycles[:10])


def test_the_rule_sees_imports() -> None:
    """The reader itself: it must find the imports it is meant to police, or the tests above prove nothing."""
    g = graph()
    assert g.has_edge("simulacra.agents.mind", "simulacra.agents.society")
    assert any(layer(b) == "world" for b in g.successors("simulacra.agents.mind"))
    assert len(g) > 60


def test_no_function_over_80_lines_without_a_reason() -> None:
    """A long function must say in its docstring why it stays one ("long because ...")."""
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                doc = (ast.get_docstring(node) or "").lower()
                if "long because" not in doc:
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
