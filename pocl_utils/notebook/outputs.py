"""Where a run's tables and figures go, and publishing a finished run as the committed reference results.

A run writes `results/<profile>/` and `figures/<profile>/` under its output root: $POCL_OUTPUT_DIR when set, else the
runs root ($POCL_RUNS_DIR, else ./runs), which git ignores, so a user's run never rewrites the committed reference in
the repository's own `results/<profile>/` and `figures/<profile>/`. A maintainer copies a finished run there with
`pocl-reproduce --profile P --publish` (`make publish`): both folders are staged beside the reference and swapped in
by rename, so a reader sees the old reference or the new one, never a mix. Files and subfolders of the reference that
the run does not have (history such as results/laptop/run1_3seeds/, a script's table) are kept.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from ..experiment.results import REPO_ROOT
from ..experiment.workspace import RUNS_ROOT

KINDS = ("results", "figures")
UNFINISHED = ("failed", "interrupted")  # <stem>.<status>.ipynb beside the executed notebooks (see reproduce)
REQUIRED_TABLES = ("profile.json", "runs.csv", "claims_summary.csv")  # 00 and 10 write them; every profile has them


class PublishError(RuntimeError):
    """The run cannot become the reference (unfinished, or a required table missing); nothing was touched."""


def output_root() -> Path:
    """Where a run's results/ and figures/ go: $POCL_OUTPUT_DIR if set, else the runs root."""
    return Path(os.environ.get("POCL_OUTPUT_DIR") or os.environ.get("POCL_RUNS_DIR") or RUNS_ROOT)


def results_dir(profile: str) -> Path:
    """The folder of a run's tables for one profile: results/<profile>/ under `output_root()`.

    Args:
        profile: the profile's name.

    Returns:
        The folder's path (not created here).
    """
    return output_root() / "results" / profile


def figures_dir(profile: str) -> Path:
    """The folder of a run's figures for one profile: figures/<profile>/ under `output_root()`.

    Args:
        profile: the profile's name.

    Returns:
        The folder's path (not created here).
    """
    return output_root() / "figures" / profile


def run_problem(profile: str, notebooks: list[Path], executed: Path, output: Path) -> str | None:
    """Why the run of `notebooks` (executed copies in `executed`, tables under `output`) is not finished, or None.

    A run is finished when no notebook left a `<stem>.failed.ipynb` or `<stem>.interrupted.ipynb` in `executed`, every
    notebook has its executed copy there, each of REQUIRED_TABLES is in `output`/results/<profile>/ and
    `output`/figures/<profile>/ holds at least one PNG.

    Args:
        profile: the profile's name.
        notebooks: the collection's notebooks (only their names are used).
        executed: the folder of the executed notebooks.
        output: the output root holding the run's results/<profile>/ and figures/<profile>/.

    Returns:
        A one-line reason naming the first problem found (an unfinished or missing notebook, a missing table, no
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
    and swapped in by two renames, so files of the reference that the run does not have are kept. What a publish killed
    between its two renames left behind is undone first.

    Args:
        profile: the profile's name.
        notebooks: the collection's notebooks; all must have finished (`run_problem`).
        executed: the folder of their executed copies.
        output: the run's output root, holding results/<profile>/ and figures/<profile>/.
        reference: the root of the committed reference results (default: the repository's root).
        log: receives the progress lines (files kept in the reference, files published).

    Returns:
        The new folders: [reference/results/<profile>, reference/figures/<profile>].

    Raises:
        PublishError: the run is unfinished (a notebook failed, was interrupted or has not run, a required table is
            missing or there is no figure); nothing was touched.
    """
    problem = run_problem(profile, notebooks, executed, output)
    if problem:
        raise PublishError(f"cannot publish {profile!r}: {problem}; finish the run first "
                           f"(pocl-reproduce --profile {profile})")
    staged = []
    for kind in KINDS:
        src, dest = output / kind / profile, reference / kind / profile
        _recover(dest)
        staged.append((src, _stage(src, dest, log), dest))
    for src, stage, dest in staged:
        _swap(stage, dest)
        log(f"published {sum(1 for p in src.rglob('*') if p.is_file())} files from {src} into {dest}")
    return [dest for _, _, dest in staged]


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
