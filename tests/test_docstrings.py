"""Docstrings say what a reader needs (formulas, shapes, units, raise conditions), not what the signature already says:
the package's docstring weight stays near that of the codebases it is compared with (nanoGPT, TRL, Liger-Kernel:
0.2-0.5 docstring lines per code line), no module is mostly docstring, and no docstring has an `Args:` block (an
argument worth a note gets a "`name`: ..." line)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pocl_utils"
MAX_RATIO = 0.5  # docstring lines per code line, package-wide
MAX_MODULE_RATIO = 1.0  # per module, except the packages' __init__ files (a map of the package, next to no code)
SECTION_HEADERS = ("Args:", "Arguments:", "Parameters:")


def _docstrings(tree: ast.Module) -> list[ast.Expr]:
    """The docstring nodes of a module, its classes and its functions."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                out.append(first)
    return out


def line_counts(source: str) -> tuple[int, int]:
    """(docstring lines, code lines) of a module: lines inside module/class/function docstrings, and the other lines
    that are neither blank nor comments."""
    doc_lines: set[int] = set()
    for node in _docstrings(ast.parse(source)):
        doc_lines.update(range(node.lineno, node.end_lineno + 1))
    code = sum(1 for i, line in enumerate(source.splitlines(), 1)
               if i not in doc_lines and line.strip() and not line.strip().startswith("#"))
    return len(doc_lines), code


def _modules() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE.parent)): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def test_line_counts_of_a_small_module():
    source = '"""Module.\n\nMore."""\nimport os  # a comment\n\n# only a comment\n\n\ndef f(x):\n    """One line."""\n' \
             '    return x\n\n\nclass C:\n    """Two\n    lines."""\n    y = 1\n'
    assert line_counts(source) == (6, 5)


def test_the_package_docstring_weight_is_at_most_half_a_line_per_code_line():
    docs = code = 0
    for source in _modules().values():
        d, c = line_counts(source)
        docs, code = docs + d, code + c
    assert docs / code <= MAX_RATIO, (f"{docs} docstring lines for {code} code lines ({docs / code:.2f} > {MAX_RATIO}): "
                                      "say less of what the signature says")


def test_no_module_is_mostly_docstring():
    heavy = {}
    for name, source in _modules().items():
        d, c = line_counts(source)
        if not name.endswith("__init__.py") and d > MAX_MODULE_RATIO * max(c, 1):
            heavy[name] = round(d / max(c, 1), 2)
    assert not heavy, f"docstring lines per code line over {MAX_MODULE_RATIO}: {heavy}"


def test_no_docstring_has_an_args_block():
    found = [f"{name}:{node.lineno}" for name, source in _modules().items() for node in _docstrings(ast.parse(source))
             if any(line.strip() in SECTION_HEADERS for line in node.value.value.splitlines())]
    assert not found, f"Args blocks (note only what the signature cannot say, as '`name`: ...' lines): {found}"
