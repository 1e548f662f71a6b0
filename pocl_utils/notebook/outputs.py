"""Where a run's tables and figures go, and publishing a finished run as the committed reference results.

A run writes `results/<profile>/` and `figures/<profile>/` under its output root: $POCL_OUTPUT_DIR when set, else the
runs root ($POCL_RUNS_DIR, else ./runs), which git ignores, so a user's run never rewrites the committed reference in
the repository's own `results/<profile>/` and `figures/<profile>/`. A maintainer copies a finished run there with
`pocl-reproduce --profile P --publish` (`make publish`): both folders are staged beside the reference and swapped in
by rename, so a reader sees the old reference or the new one, never a mix. Files and subfolders of the reference that
the run does not have (history such as results/laptop/run1_3seeds/, a script's table) are kept. The run's executed
notebooks go with its tables, into results/<profile>/notebooks/ (replaced whole, with a README.md index), cleaned to
what a reader sees (`published_notebook`) and NOTEBOOKS_MAX_MB at most in all, so that the repository page shows every
table and figure of the reference run without running anything.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..experiment.results import REPO_ROOT
from ..experiment.workspace import RUNS_ROOT

KINDS = ("results", "figures")
UNFINISHED = ("failed", "interrupted")  # <stem>.<status>.ipynb beside the executed notebooks (see reproduce)
REQUIRED_TABLES = ("profile.json", "runs.csv", "claims_summary.csv")  # 00 and 10 write them; every profile has them
LAB_SOLUTIONS = "11_lab_solutions.ipynb"  # the executed lab with every exercise solved, published when the run has one
NOTEBOOKS_MAX_MB = 10.0  # the published executed notebooks, all together (git keeps every version of them)


class PublishError(RuntimeError):
    """The run cannot become the reference (unfinished, or a required table missing); nothing was touched."""


def output_root() -> Path:
    """Where a run's results/ and figures/ go: $POCL_OUTPUT_DIR if set, else the runs root."""
    return Path(os.environ.get("POCL_OUTPUT_DIR") or os.environ.get("POCL_RUNS_DIR") or RUNS_ROOT)


def results_dir(profile: str) -> Path:
    """The folder of a run's tables for one profile: results/<profile>/ under `output_root()`.

    Returns the folder's path (not created here).
    """
    return output_root() / "results" / profile


def figures_dir(profile: str) -> Path:
    """The folder of a run's figures for one profile: figures/<profile>/ under `output_root()`.

    Returns the folder's path (not created here).
    """
    return output_root() / "figures" / profile


def run_problem(profile: str, notebooks: list[Path], executed: Path, output: Path) -> str | None:
    """Why the run of `notebooks` (executed copies in `executed`, tables under `output`) is not finished, or None.

    A run is finished when no notebook left a `<stem>.failed.ipynb` or `<stem>.interrupted.ipynb` in `executed`, every
    notebook has its executed copy there, each of REQUIRED_TABLES is in `output`/results/<profile>/ and
    `output`/figures/<profile>/ holds at least one PNG.

    `output`: the output root holding the run's results/<profile>/ and figures/<profile>/.
    Returns a one-line reason naming the first problem found (an unfinished or missing notebook, a missing table, no
    figure), or None when the run is finished.
    """
    for nb in notebooks:
        for status in UNFINISHED:
            if (executed / f"{nb.stem}.{status}.ipynb").exists():
                return f"{nb.stem} {status} (see {executed / f'{nb.stem}.{status}.ipynb'})"
        if not (executed / nb.name).exists():
            return f"{nb.stem} has not run (no {executed / nb.name})"
    for name in REQUIRED_TABLES:
        if not (output / "results" / profile / name).is_file():
            return f"table {name} is missing from {output / 'results' / profile}"
    if not any((output / "figures" / profile).glob("*.png")):
        return f"no figure in {output / 'figures' / profile}"
    return None


def publish(profile: str, notebooks: list[Path], executed: Path, output: Path, reference: Path = REPO_ROOT,
            log: Callable[[str], None] = print) -> list[Path]:
    """Copy a finished run's results/<profile>/ and figures/<profile>/ over `reference`'s.

    Each reference folder is rebuilt in a staging folder beside it (its present content, then the run's files over it)
    and swapped in by two renames, so files of the reference that the run does not have are kept. The executed
    notebooks replace results/<profile>/notebooks/ whole (`published_notebooks`), with the executed lab's solutions
    variant when the run folder holds one (<runs root>/<profile>/lab/11_lab_solutions.ipynb, from `pocl-reproduce --lab
    solutions`). What a publish killed between its two renames left behind is undone first.

    `notebooks`: the collection's notebooks; all must have finished (`run_problem`).
    `output`: the run's output root, holding results/<profile>/ and figures/<profile>/.
    `reference`: the root of the committed reference results (default: the repository's root).
    Returns the new folders: [reference/results/<profile>, reference/figures/<profile>].
    Raises PublishError: the run is unfinished (a notebook failed, was interrupted or has not run, a required table is
    missing or there is no figure), or its executed notebooks take more than NOTEBOOKS_MAX_MB; nothing was touched.
    """
    problem = run_problem(profile, notebooks, executed, output)
    if problem:
        raise PublishError(f"cannot publish {profile!r}: {problem}; finish the run first "
                           f"(pocl-reproduce --profile {profile})")
    lab = executed.parent / "lab" / LAB_SOLUTIONS  # `pocl-reproduce --lab solutions`: the lab's expected outputs
    pages = published_notebooks(profile, notebooks, executed, extra=[lab] if lab.is_file() else [])
    staged = []
    for kind in KINDS:
        src, dest = output / kind / profile, reference / kind / profile
        _recover(dest)
        stage = _stage(src, dest, log)
        if kind == "results":
            shutil.rmtree(stage / "notebooks", ignore_errors=True)  # the run's notebooks only, never a mix of two runs
            (stage / "notebooks").mkdir()
            for name, text in pages.items():
                (stage / "notebooks" / name).write_text(text, encoding="utf-8")
        staged.append((src, stage, dest))
    for src, stage, dest in staged:
        _swap(stage, dest)
        log(f"published {sum(1 for p in src.rglob('*') if p.is_file())} files from {src} into {dest}")
    return [dest for _, _, dest in staged]


def published_notebook(path: Path, root: Path = REPO_ROOT, runs_root: Path | None = None) -> str:
    """An executed notebook as published: its outputs as a reader sees them in JupyterLab, nothing else.

    Consecutive stream outputs of one name are joined, as JupyterLab shows them, and reduced to what a terminal shows
    (of each line, the text after its last carriage return: a progress bar's final state instead of its every update);
    a stream that then shows nothing (a cleared bar's empty red box) is dropped; papermill's per-cell timing metadata is
    left out (its notebook-level record stays); the repository's absolute path (`root`) becomes relative and the runs
    folder's (`runs_root`, when it lies outside `root`) becomes `<runs root>`, so the published copy does not name the
    machine it ran on.

    Returns the cleaned notebook's JSON text (nbformat.writes).
    """
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        joined: list = []
        for out in cell.outputs:
            if out.output_type == "stream" and joined and joined[-1].output_type == "stream" \
                    and joined[-1].name == out.name:
                joined[-1].text += out.text
            else:
                joined.append(out)
        for out in joined:
            if out.output_type == "stream":
                out.text = "\n".join(line.rsplit("\r", 1)[-1] for line in out.text.split("\n"))
        cell.outputs = [o for o in joined if o.output_type != "stream" or o.text.strip()]
    text = nbformat.writes(nb) + "\n"
    places = {str(root): "."}
    if runs_root is not None and not Path(runs_root).resolve().is_relative_to(Path(root).resolve()):
        places[str(runs_root)] = "<runs root>"
    for place in sorted(places, key=len, reverse=True):  # a folder before any folder that holds it
        text = text.replace(f"{place}/", f"{places[place]}/" if places[place] != "." else "")
        text = text.replace(place, places[place])
    return text


def published_notebooks(profile: str, notebooks: list[Path], executed: Path,
                        extra: list[Path] = ()) -> dict[str, str]:
    """The files of results/<profile>/notebooks/: each executed notebook, cleaned (`published_notebook`), and a
    README.md that lists them with their titles and wall times (from timings.json when the run wrote one).

    `notebooks`: the collection's notebooks (their names are looked up in `executed`).
    Returns {file name: text}.
    Raises PublishError: the notebooks take more than NOTEBOOKS_MAX_MB together (the message names the largest).
    """
    import nbformat
    runs_root = executed.parent.parent  # <runs root>/<profile>/<executed>
    pages = {path.name: published_notebook(path, runs_root=runs_root)
             for path in [executed / nb.name for nb in notebooks] + list(extra)}
    size = {name: len(text.encode("utf-8")) for name, text in pages.items()}
    if sum(size.values()) > NOTEBOOKS_MAX_MB * 2**20:
        largest = ", ".join(f"{n} {size[n] / 2**20:.1f} MB" for n in sorted(size, key=size.get, reverse=True)[:3])
        raise PublishError(f"cannot publish {profile!r}: its executed notebooks take {sum(size.values()) / 2**20:.1f} "
                           f"MB, over the {NOTEBOOKS_MAX_MB:g} MB limit (largest: {largest}); show fewer or smaller "
                           f"figures or tables in them")
    try:
        timings = json.loads((executed / "timings.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        timings = {}
    lines = [f"# The executed notebooks of the `{profile}` reference run", "",
             "Every table and figure of the run, as the notebooks printed them (`pocl-reproduce --publish` writes this "
             "folder; the notebooks in `notebooks/` are the same ones, stored without outputs).", "",
             "| notebook | what it shows | wall time |", "|---|---|---|"]
    for name, text in pages.items():
        cells = nbformat.reads(text, as_version=4).cells
        title = next((c.source.splitlines()[0].lstrip("# ") for c in cells
                      if c.cell_type == "markdown" and c.source.startswith("# ")), name)
        wall = f"{timings[name] / 60:.1f} min" if isinstance(timings.get(name), (int, float)) else ""
        lines.append(f"| [{name}]({name}) | {title} | {wall} |")
    if isinstance(timings.get("total"), (int, float)):
        lines += ["", f"The whole collection: {timings['total'] / 60:.1f} min in this execution (an execution skips "
                  "the runs a previous one finished, so this is the time of the last one, not of a run from a fresh "
                  "clone)."]
    pages["README.md"] = "\n".join(lines) + "\n"
    return pages


def _side(dest: Path, what: str) -> Path:
    return dest.with_name(f".{dest.name}.publish.{what}")


def _recover(dest: Path) -> None:
    """Undo what a publish killed between its two renames left: the old reference back in place, no stale stage."""
    old, stage = _side(dest, "old"), _side(dest, "tmp")
    if old.exists() and not dest.exists():
        os.replace(old, dest)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def _stage(src: Path, dest: Path, log: Callable[[str], None]) -> Path:
    """The reference as it will be: `dest`'s content (history kept) with `src`'s files copied over it."""
    stage = _side(dest, "tmp")
    if dest.exists():
        shutil.copytree(dest, stage, symlinks=True)
        kept = sorted(p.name for p in dest.iterdir() if p.is_file() and not (src / p.name).exists())
        if kept:
            log(f"kept in {dest} (not written by this run): {', '.join(kept)}")
    shutil.copytree(src, stage, dirs_exist_ok=True)
    return stage


def _swap(stage: Path, dest: Path) -> None:
    """Put `stage` in place of `dest`; between the two renames the old reference waits as .<name>.publish.old."""
    old = _side(dest, "old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(stage, dest)
    shutil.rmtree(old, ignore_errors=True)
