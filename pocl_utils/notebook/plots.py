"""The named figures of the collection (`FIGURES`, drawn by `figure`) and `collect`, which builds every table, the
runs' CSV and every figure."""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from ..analysis import figures, tables
from ..experiment import training_run
from ..experiment.config import pocl
from ..experiment.experiments import GRIDS
from ..experiment.results import atomic_write_text
from ..experiment.workspace import Workspace
from .display import save_figure
from .grids import TableReport, grid_report, grid_runs, records, run_grid, runs_frame, specs_of
from .session import results_dir
from .views import examples_frame, ranking_table, training_logs


def _bars(name: str, dataset: str, title: str) -> Callable[[Workspace], Any]:
    def build(ws: Workspace) -> Any:
        runs = grid_runs(ws, name)
        if runs.empty:
            return None
        summary = tables.summary(runs)
        with_pocl = summary[summary.variant != "baseline"].method.unique()  # KD methods only (not SFT, SeqKD)
        if dataset not in set(summary.dataset):  # a config's own eval sets: their average
            return figures.grouped_bars(summary[summary.method.isin(with_pocl)], "Avg",
                                        title.replace(dataset, "the average of the eval sets"))
        return figures.grouped_bars(summary[summary.method.isin(with_pocl)], dataset, title)
    return build


def _with_truth(build: Callable[[pd.DataFrame], Any]) -> Callable[[Workspace], Any]:
    def wrapped(ws: Workspace) -> Any:
        frame = ranking_table(ws)
        return None if frame["true_difficulty"].isna().any() else build(frame)  # real data has no true difficulty
    return wrapped


def _families_levels(ws: Workspace) -> Any:
    return figures.family_level_figure(examples_frame(ws)) if ws.profile.data == "world" else None  # real: none


FIG3_RUNS = [("KLD", "baseline"), ("KLD", "+POCL"), ("GKD", "baseline"), ("GKD", "+POCL")]


# name -> builder(ws) returning a Figure, or None when the profile has nothing to draw. Notebooks call figure(ws, name).
FIGURES: dict[str, Callable[[Workspace], Any]] = {
    "data_families_levels": _families_levels,
    "data_token_lengths": lambda ws: figures.token_length_figure(examples_frame(ws)),
    "training_logs": lambda ws: figures.training_log_figure(training_logs(ws)) if training_logs(ws) else None,
    "ranking_vs_true_difficulty": _with_truth(figures.ranking_vs_truth_figure),
    "subset_difficulty": _with_truth(figures.subset_difficulty_figure),
    "fig1_pocl_by_method": _bars("table1", "DollyEval", "Fig. 1: KD vs KD+POCL on DollyEval"),
    "curriculum_kld": lambda ws: figures.curriculum_figure(
        training_run.stages_for(ws, pocl("KLD"), ws.encoded("train")), "KLD+POCL curriculum"),
    "loss_by_stage": lambda ws: figures.loss_figure(records(ws, "table1"), FIG3_RUNS[:2]),
    "fig3_validation": lambda ws: figures.validation_figure(records(ws, "table1"), FIG3_RUNS),
    "table2_ranking_bars": _bars("ranking", "Avg", "Tables 2/5: difficulty measurer"),
    "table3_adaptive_bars": _bars("adaptive", "Avg", "Tables 3/6: adaptive tau and alpha"),
    "fig4a_order": _bars("order", "Avg", "Fig. 4a: order of the subsets"),
    "fig4b_temperature": _bars("temperature", "Avg", "Fig. 4b: temperature schedule"),
    "fig4c_ratio": _bars("ratio", "Avg", "Fig. 4c: SFT-ratio schedule"),
    "n_subsets_bars": _bars("subsets", "Avg", "Beyond the paper: number of subsets n"),
}


def figure(ws: Workspace, name: str) -> None:
    """Draw the named figure (see FIGURES), save it to figures/<profile>/<name>.{png,pdf}, show it and close it.

    A bar chart draws a grid's finished runs (`grid_runs`; `run_grid` trains them). When the profile has nothing to
    draw (e.g. no true difficulty on real data), a note is printed instead.

    Raises KeyError: an unknown figure name (the message lists the valid ones).
    """
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; valid: {', '.join(FIGURES)}")
    fig = FIGURES[name](ws)
    if fig is None:
        print(f"{name}: nothing to draw for profile {ws.profile.name!r}")
        return
    save_figure(ws, fig, name)


def collect(ws: Workspace, family: str = "gpt2") -> dict[str, TableReport]:
    """Every table (beside the paper), results/<profile>/runs.csv and every figure of the collection.

    Runs whatever of every grid is not finished yet (`run_grid`) and saves its tables (`grid_report`), writes runs.csv
    (`runs_frame`) when a run has finished, and draws and saves every figure of FIGURES (`figure`).

    `family`: the paper's model family to compare with: "gpt2" or "opt".
    Returns the TableReport of every grid, by grid name.
    """
    for name in GRIDS:
        if specs_of(ws, name):
            run_grid(ws, specs_of(ws, name))
    reports = {name: grid_report(ws, name, family) for name in GRIDS}
    runs = runs_frame(ws)
    if len(runs):
        atomic_write_text(results_dir(ws.profile) / "runs.csv", runs.to_csv(index=False))
    for name in FIGURES:
        figure(ws, name)
    return reports
