"""The student lab (notebook 11): what its notebook calls, and the generator of its two variants.

The notebook imports this module only. The checks of its four exercises live in `lab_checks` (check, pick,
check_*), the pieces of its closing experiment in `lab_experiment` (easy_first, plan, plan_table, ...); both are
re-exported here. This module itself builds the notebook's two variants.

One source, two variants. notebooks/lab/11_lab_source.ipynb holds each solution between `# BEGIN SOLUTION` and
`# END SOLUTION` lines, in code cells tagged `exercise`:

    python -m pocl_utils.notebook.lab build                  # notebooks/11_lab.ipynb, the student variant (committed)
    python -m pocl_utils.notebook.lab solutions OUT.ipynb    # the solutions variant, anywhere (e.g. runs/lab/)

In the student variant each block becomes its `# hint:` lines plus `raise NotImplementedError("your code here")`;
in the solutions variant only the marker lines go.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import nbformat

from .lab_checks import (CHECKS, FORMULAS, NotImplementedYet, WrongAnswer, check, check_divergence, check_rrf,
                         check_schedules, check_stages, pick, reference)
from .lab_experiment import easy_first, kd_by_subset, kd_figure, plan, plan_table, same_stages
from ..experiment.results import REPO_ROOT

__all__ = ["CHECKS", "FORMULAS", "NotImplementedYet", "WrongAnswer", "check", "check_divergence", "check_rrf",
           "check_schedules", "check_stages", "pick", "reference",
           "easy_first", "kd_by_subset", "kd_figure", "plan", "plan_table", "same_stages",
           "BEGIN", "END", "HINT", "TODO", "SOURCE", "STUDENT", "LabSourceError", "variant", "render", "write", "main"]

SOURCE = REPO_ROOT / "notebooks" / "lab" / "11_lab_source.ipynb"
STUDENT = REPO_ROOT / "notebooks" / "11_lab.ipynb"
BEGIN, END, HINT = "# BEGIN SOLUTION", "# END SOLUTION", "# hint:"
TODO = 'raise NotImplementedError("your code here")'


class LabSourceError(ValueError):
    """The lab's source notebook breaks the marker rules (the message names the cell and line)."""


# ---- one source, two variants ------------------------------------------------------------------------------------


def _strip(source: str, solutions: bool, where: str) -> str:
    """A cell's source with each solution block kept (markers dropped) or replaced by its hints and TODO."""
    out: list[str] = []
    inside, block_indent = False, ""
    for n, line in enumerate(source.splitlines(), 1):
        text, indent = line.strip(), line[: len(line) - len(line.lstrip())]
        if text.startswith(BEGIN) or text.startswith(END):
            if inside == text.startswith(BEGIN):
                raise LabSourceError(f"{where} line {n}: {text!r} without a matching "
                                     f"{'END' if inside else 'BEGIN'} line")
            inside = not inside
            if inside:
                block_indent = indent  # the TODO goes where the solution was
            elif not solutions:  # the block's hint lines are already out; the TODO ends it
                out.append(f"{block_indent}{TODO}")
        elif solutions or not inside or text.startswith(HINT):
            out.append(line)
    if inside:
        raise LabSourceError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def variant(source_nb: Any, solutions: bool, source_name: str = "11_lab_source.ipynb") -> Any:
    """The student (solutions=False) or solutions variant of the source notebook, clean (no outputs or counts).

    In each code cell tagged `exercise`, every `# BEGIN SOLUTION` ... `# END SOLUTION` block becomes its `# hint:` lines
    plus `raise NotImplementedError("your code here")` in the student variant; in the solutions variant only the marker
    lines go. The copy's metadata records the variant (`pocl_lab`) and the project's kernel spec; `source_nb` itself is
    not changed.

    `source_nb`: the lab's source notebook (an nbformat v4 notebook node).
    Returns a new notebook node (a modified deep copy of `source_nb`).
    Raises LabSourceError: a cell breaks the marker rules: markers outside a code cell tagged `exercise`, a tagged cell
    without a block, or a marker without its partner (the message names the cell and line).
    """
    nb = copy.deepcopy(source_nb)
    for k, cell in enumerate(nb.cells):
        where = f"{source_name}: cell {k} (id {cell.get('id', '?')})"
        tagged = "exercise" in cell.metadata.get("tags", [])
        marked = BEGIN in cell.source or END in cell.source
        if marked and not (tagged and cell.cell_type == "code"):
            raise LabSourceError(f"{where}: has solution markers but is not a code cell tagged 'exercise'")
        if tagged and not marked:
            raise LabSourceError(f"{where}: tagged 'exercise' but has no {BEGIN} ... {END} block")
        if tagged:
            cell.source = _strip(cell.source, solutions, where)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata["pocl_lab"] = {"variant": "solutions" if solutions else "student",
                               "generated_from": "notebooks/lab/11_lab_source.ipynb"}
    nb.metadata["kernelspec"] = dict(KERNELSPEC)  # JupyterLab opens it with the project's kernel (`make install`)
    return nb


KERNELSPEC = {"name": "pocl", "display_name": "pocl (.venv)", "language": "python"}  # as the Makefile registers it


def render(solutions: bool, source: Path = SOURCE) -> str:
    """The variant as the exact text `write` puts on disk.

    `source`: the source notebook's path (default notebooks/lab/11_lab_source.ipynb).
    Returns the variant's notebook JSON (nbformat.writes), ending with a newline.
    Raises LabSourceError: the source breaks the marker rules (see `variant`).
    """
    text = nbformat.writes(variant(nbformat.read(source, as_version=4), solutions, Path(source).name))
    return text if text.endswith("\n") else text + "\n"


def write(out: Path, solutions: bool, source: Path = SOURCE) -> Path:
    """Write the student or the solutions variant of the lab's source notebook.

    `out`: the notebook file to write; its parent folders are created.
    `source`: the source notebook's path (default notebooks/lab/11_lab_source.ipynb).
    Returns `out`, as a Path.
    Raises LabSourceError: the source breaks the marker rules (see `variant`); `out` is not written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(solutions, source), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line `python -m pocl_utils.notebook.lab {build [OUT] | solutions OUT} [--source SOURCE]`.

    `build` writes the student variant (default notebooks/11_lab.ipynb), `solutions` the solutions variant to OUT; each
    prints the path it wrote.

    `argv`: the arguments after the program's name; None = sys.argv[1:].
    Returns the exit status: 0 when the variant was written, 2 when the source breaks the marker rules (the reason is
    printed).
    """
    ap = argparse.ArgumentParser(prog="python -m pocl_utils.notebook.lab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help=f"write the student variant (default {STUDENT.relative_to(REPO_ROOT)})")
    build.add_argument("out", nargs="?", default=STUDENT, type=Path)
    sol = sub.add_parser("solutions", help="write the solutions variant to OUT")
    sol.add_argument("out", type=Path)
    for p in (build, sol):
        p.add_argument("--source", default=SOURCE, type=Path)
    args = ap.parse_args(argv)
    try:
        path = write(args.out, args.command == "solutions", args.source)
    except LabSourceError as e:
        print(f"pocl_utils.notebook.lab: {e}")
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
