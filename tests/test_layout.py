"""The package's import graph: no cycles, no module reaching into another's private names, and the method's modules
(the paper's equations) importing none of the machinery."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pocl_utils"
# the method: what README points readers to; it may import only what is listed here
METHOD = {"losses": set(), "difficulty": set(), "curriculum": set(), "data": set(), "stats": set(),
          "evaluate": {"generate"}}  # evaluate_set samples responses from a model
# cycles still open, each with the issue that removes it (issue 16 removed models <-> distributed: pocl_utils/heads.py)
KNOWN_CYCLES: set[frozenset[str]] = set()


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported sibling module, imported names)], from every `from . import` / `from .x import` anywhere
    in the file (inside functions too: an import placed there still makes a cycle)."""
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.append((node.module.split(".")[0], [a.name for a in node.names]))
                else:
                    found += [(a.name, []) for a in node.names]
        out[path.stem] = found
    return out


def _cycles(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """The module sets of the graph's cycles (strongly connected components with more than one module)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = {m: {target for target, _ in found} for m, found in _imports().items()}
    assert _cycles(edges) <= KNOWN_CYCLES


def test_no_module_imports_private_names_of_another():
    private = [f"{m} imports {target}.{name}" for m, found in _imports().items() for target, names in found
               for name in names if name.startswith("_")]
    assert private == []


def test_the_method_imports_none_of_the_machinery():
    imports = _imports()
    for module, allowed in METHOD.items():
        assert {target for target, _ in imports[module]} <= allowed, module
