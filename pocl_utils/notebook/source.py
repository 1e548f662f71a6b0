"""Show the package's own code beside the paper's equations, as d2l does: the source is read from pocl_utils with
`inspect` when the notebook runs, never copied into it, so what a reader sees is what the runs executed.

    nb.show_source("difficulty.fuse_ranks")                   # Eq. 2
    nb.show_source("losses.log_probs", "losses.divergence")   # several, one block each

A name is a dotted path below `pocl_utils` to a function, class or method, or to a module-level constant (e.g.
"losses.DIVERGENCES", found by its assignment in the module's source).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "pocl_utils"


class SourceError(LookupError):
    """A name that does not lead to code in pocl_utils (the message names it and what is missing)."""


@dataclass(frozen=True)
class Source:
    """One piece of the package's code: its text and where it lives.

    `first`: the first line's number in the file (1-based).
    `text`: the code, dedented; without its docstring unless asked.
    """

    name: str
    path: str
    first: int
    last: int
    text: str

    def markdown(self) -> str:
        """A Markdown block: a one-line caption (file, lines) and the code, fenced as Python."""
        return f"`{self.path}`, lines {self.first}–{self.last}:\n\n```python\n{self.text}\n```"


def _resolve(name: str) -> tuple[Any, Any, str]:
    """(module, object, attribute path) for a dotted name below pocl_utils; the longest importable module wins."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join([PACKAGE, *parts[:cut]]))
        except ModuleNotFoundError:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise SourceError(f"show_source: {PACKAGE}.{name}: {PACKAGE}.{'.'.join(parts[:cut])} has no "
                                  f"{'.'.join(parts[cut:])!r}")
            obj = getattr(obj, attr)
        return module, obj, ".".join(parts[cut:])
    raise SourceError(f"show_source: {PACKAGE}.{name}: no such module in {PACKAGE}")


def _assignment(module: Any, attr: str) -> tuple[int, int]:
    """The line span of the module-level assignment to `attr` (for constants, which inspect cannot locate)."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
            return node.lineno, node.end_lineno
    raise SourceError(f"show_source: {PACKAGE}.{module.__name__.split('.', 1)[1]}.{attr} is a value, not code, and "
                      f"no assignment to it is in {module.__name__}")


def _without_docstring(text: str) -> str:
    """`text` (one def or class) without its docstring lines."""
    tree = ast.parse(text)
    node = tree.body[0] if tree.body else None
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines = text.splitlines()
        return "\n".join(lines[: body[0].lineno - 1] + lines[body[0].end_lineno:])
    return text


def source(name: str, *, docstring: bool = False) -> Source:
    """The code of one dotted name below pocl_utils ("difficulty.fuse_ranks", "curriculum.Stage"), read from the
    installed package.

    `docstring`: keep the function's or class's docstring (default: left out, the notebook's prose says it).
    Returns the Source: its text, file and line span.
    Raises SourceError: the name leads to no module, attribute or code in pocl_utils.
    """
    module, obj, attr = _resolve(name)
    file = Path(inspect.getsourcefile(module))
    root = Path(importlib.import_module(PACKAGE).__file__).parent.parent
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
        lines, first = inspect.getsourcelines(obj)
        text = textwrap.dedent("".join(lines)).rstrip("\n")
        last = first + len(lines) - 1
        if not docstring:
            text = _without_docstring(text)
    elif attr and "." not in attr:
        first, last = _assignment(module, attr)
        text = "\n".join(file.read_text(encoding="utf-8").splitlines()[first - 1: last])
    else:
        raise SourceError(f"show_source: {PACKAGE}.{name} is a {type(obj).__name__}, not a function, class or "
                          f"module-level constant")
    return Source(name, file.resolve().relative_to(root.resolve()).as_posix(), first, last, text)


@dataclass(frozen=True)
class Sources:
    """Pieces of code to show: a notebook renders them as Markdown (`_repr_markdown_`), a terminal prints their text."""

    items: tuple[Source, ...]

    def markdown(self) -> str:
        return "\n\n".join(item.markdown() for item in self.items)

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        return self.markdown()


def show_source(*names: str, docstring: bool = False) -> Sources:
    """The code of each name (see `source`) under a caption naming its file and lines, to show as a cell's value.

    As the last line of a notebook cell it renders as one Markdown block per name (syntax-highlighted); printed, or
    as a value in a terminal, it gives the same text.

    Returns the pieces of code, as a Sources value.
    Raises SourceError: a name leads to no code in pocl_utils.
    """
    return Sources(tuple(source(n, docstring=docstring) for n in names))
