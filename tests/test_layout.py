"""The package's import graph: no cycles, no module reaching into another's private names, the method's modules
(the paper's equations, at the top of pocl_utils/) importing none of the machinery, and neither analysis nor modeling
importing training. Modules are named by their dotted path (`pocl_utils.experiment.runner`); a package's __init__.py
is the package itself (`pocl_utils.world`)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pocl_utils"
ROOT = "pocl_utils"
# the method: what README points readers to; it may import only what is listed here (difficulty and evaluate sample
# responses from a model, so they may use generation)
METHOD = {f"{ROOT}.{m}": {f"{ROOT}.{t}" for t in allowed} for m, allowed in {
    "losses": set(), "curriculum": set(), "data": {"atomic"}, "stats": set(),
    "evaluate": {"modeling.generate"},
    "difficulty": {"atomic", "data", "evaluate", "modeling.generate"}}.items()}
# cycles still open, each with the issue that removes it (issue 16 removed models <-> distributed:
# pocl_utils/modeling/heads.py)
KNOWN_CYCLES: set[frozenset[str]] = set()


def _name(path: Path) -> str:
    """A file's dotted module name; a package's __init__.py names the package."""
    parts = (ROOT, *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str, is_package: bool, node: ast.ImportFrom | ast.Import,
             modules: set[str]) -> list[tuple[str, list[str]]]:
    """[(imported package module, imported names)] of one import statement; names that are modules count as
    imports of those modules."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == ROOT]
    if node.level == 0:
        if not (node.module or "").split(".")[0] == ROOT:
            return []
        base = node.module
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    found, names = [], []
    for a in node.names:
        if f"{base}.{a.name}" in modules:
            found.append((f"{base}.{a.name}", []))
        else:
            names.append(a.name)
    return found + ([(base, names)] if names else [])


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported package module, imported names)], from every import of the package anywhere in the file
    (inside functions too: an import placed there still makes a cycle), relative or absolute. Importing a module also
    runs its packages' __init__.py, so those count as imported too (except the importing module's own packages)."""
    modules = _modules()
    out = {}
    for module, path in modules.items():
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found += _targets(module, path.name == "__init__.py", node, set(modules))
        parents = [(".".join(t.split(".")[:i]), []) for t, _ in found for i in range(2, t.count(".") + 1)]
        # a module's own packages ran before it, so importing a sibling adds no edge to them
        out[module] = found + [p for p in parents if p[0] in modules and p[0] != module
                               and not module.startswith(f"{p[0]}.")]
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


def _imported(module: str) -> set[str]:
    return {target for target, _ in _imports()[module]}


def _in(package: str, module: str) -> bool:
    return module == f"{ROOT}.{package}" or module.startswith(f"{ROOT}.{package}.")


def test_the_graph_sees_every_module_and_both_import_styles():
    imports = _imports()
    assert {"pocl_utils.losses", "pocl_utils.world", "pocl_utils.notebook", "pocl_utils.experiment.runner",
            "pocl_utils.modeling.generate", "pocl_utils.notebook.lab"} <= set(imports)
    assert "pocl_utils.training.distributed" in _imported("pocl_utils.experiment.runner")  # from ..training import x
    assert "pocl_utils.modeling.generate" in _imported("pocl_utils.difficulty")  # from .modeling.generate import (...)
    assert "pocl_utils.modeling" in _imported("pocl_utils.difficulty")  # .modeling.generate runs its __init__.py
    # a sibling's import runs no __init__.py again: notebook/__init__.py re-exports its modules without a cycle
    assert "pocl_utils.notebook" not in _imported("pocl_utils.notebook.grids")
    # a sibling's import runs no __init__.py again: data/__init__.py re-exports its modules without a cycle
    assert "pocl_utils.data" not in _imported("pocl_utils.data.sets")


def test_no_import_cycles():
    # a package's __init__ that re-exports its own submodules (pocl_utils.world) is no cycle: a submodule runs with
    # its package already initialising, so only the edges between modules count there
    edges = {m: {target for target, _ in found if not target.startswith(f"{m}.")} for m, found in _imports().items()}
    assert _cycles(edges) <= KNOWN_CYCLES


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


def test_no_module_imports_private_names_of_another():
    private = [f"{m} imports {target}.{name}" for m, found in _imports().items() for target, names in found
               for name in names if name.startswith("_")]
    assert private == []


def _method_modules() -> dict[str, str]:
    """Each module of the method -> its METHOD entry (a method package's submodules count as the package)."""
    return {m: key for m in _imports() for key in METHOD if m == key or m.startswith(f"{key}.")}


def test_the_method_imports_none_of_the_machinery():
    for module, key in _method_modules().items():
        allowed = METHOD[key]
        packages = {".".join(t.split(".")[:i]) for t in allowed for i in range(2, t.count(".") + 1)}
        own = {t for t in _imported(module) if t == key or t.startswith(f"{key}.")}  # a package's own modules
        assert _imported(module) - own <= allowed | packages, module


def test_the_method_never_imports_training_experiment_analysis_or_notebook():
    for module in _method_modules():
        bad = [t for t in _imported(module) for p in ("training", "experiment", "analysis", "notebook") if _in(p, t)]
        assert bad == [], module


def test_modeling_never_imports_training():
    """Only training knows about processes: models and generation never ask whether a model is sharded."""
    for module in (m for m in _imports() if _in("modeling", m)):
        assert [t for t in _imported(module) if _in("training", t)] == [], module


def test_analysis_never_imports_training():
    for module in (m for m in _imports() if _in("analysis", m)):
        assert [t for t in _imported(module) if _in("training", t)] == [], module


def test_readme_where_each_piece_lives_matches_the_tree():
    """Every dotted name in README's "where each piece lives" table resolves in the package, and the layout list of
    docs/layout.md names every subpackage and every module."""
    import importlib
    import re
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## What POCL does, and where each piece lives"):readme.index("## The notebooks")]
    docs = (PACKAGE.parent / "docs" / "layout.md").read_text(encoding="utf-8")
    layout = docs.split("The package layout", 1)[1]
    names = {n for row in table.splitlines() if row.startswith("|")
             for n in re.findall(r"`([\w.]+)`", row.split("|")[-2])}
    assert {"losses.divergence", "difficulty.fuse_ranks", "curriculum.partition", "evaluate.rouge_l"} <= names
    for name in names:
        parts = name.split(".")
        k = max((i for i in range(1, len(parts) + 1) if f"{ROOT}.{'.'.join(parts[:i])}" in _modules()), default=0)
        assert k > 0, f"README names {name}, but pocl_utils has no module {parts[0]}"
        obj = importlib.import_module(f"{ROOT}.{'.'.join(parts[:k])}")
        for attr in parts[k:]:
            obj = getattr(obj, attr)
    mentioned = set(re.findall(r"`([\w/]+)`", layout))
    for module in _modules():
        last = module.split(".")[-1]
        assert (f"{last}/" if (PACKAGE / last).is_dir() and module.count(".") == 1 else last) in mentioned, module


def test_no_line_of_the_package_is_over_120_characters():
    long = [f"{path.relative_to(PACKAGE.parent)}:{n}" for path in sorted(PACKAGE.rglob("*.py"))
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, f"lines over 120 characters: {', '.join(long)}"
