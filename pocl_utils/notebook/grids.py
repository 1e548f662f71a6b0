"""The grids of runs behind the paper's tables: which runs a profile has (`specs_of`), training them (`run_grid`), and
their reports beside the paper (`grid_report`), the runs' frame, the claims, the agreement with the paper and the
premises."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..analysis import findings, paper, tables
from ..curriculum import PROTOCOLS, plan_rows
from ..experiment import experiments, pool, runner, scoring, training_run
from ..experiment.config import Profile, RunSpec, baseline, pocl
from ..experiment.experiments import GRIDS, GRIDS_OF_SIZE, grid, n_seeds_for
from ..experiment.workspace import Workspace
from .display import save_table
from .views import ranking_table


PROTOCOL_GRIDS = ("table1", "controls")  # the grids run under every training protocol of a profile

# Grid -> the stem of its files in results/<profile>/, named after the paper's tables it reproduces.
TABLE_FILES = {"table1": "table1_kd_methods", "ranking": "table2_5_ranking", "adaptive": "table3_6_adaptive",
               "order": "table7_order", "temperature": "table8_temperature", "ratio": "table9_ratio",
               "subsets": "beyond_n_subsets", "controls": "beyond_controls"}


def specs_of(ws: Workspace, name: str) -> list[RunSpec]:
    """The profile's runs of one grid; a profile whose grid is 'table1' (classroom) runs Table 1 only, one whose grid
    is 'headline' (laptop's main job) Table 1 and the controls (GRIDS_OF_SIZE).

    `name`: the grid, a key of GRIDS (table1, ranking, adaptive, order, temperature, ratio or subsets) or "controls".
    Returns the grid's RunSpecs at the profile's seed count, grid size and training protocol (the order and controls
    grids add the true-difficulty control on generated worlds); [] for a grid the profile's size leaves out.
    Raises ValueError: an unknown grid name (from experiments.grid).
    """
    p = ws.profile
    if name not in GRIDS_OF_SIZE.get(p.grid, (name,)):
        return []
    return grid(name, n_seeds_for(p, name), p.grid, oracle=p.data == "world", protocol=p.protocol)


def records(ws: Workspace, name: str) -> list[tuple[RunSpec, dict]]:
    """(spec, record) of the finished runs of one grid (nothing is trained).

    Returns (RunSpec, record) pairs of the grid's finished runs, in the grid's order; a record is a dict with the run's
    key, config, metrics, wall time (wall_s) and git commit.
    """
    return runner.records_for(ws, specs_of(ws, name))


run_grid = pool.run_grid  # run_grid(ws, specs): train every spec not finished yet (a notebook cell's one call to it)


def grid_runs(ws: Workspace, name: str) -> pd.DataFrame:
    """The finished runs of grid `name` as tables.tidy's frame (one row per run and eval set: method, variant, seed,
    dataset, rouge_l, sampling_std, run_key, wall_s, git_commit); nothing is trained. Empty, with a printed note, when
    the profile has no runs for the grid."""
    specs = specs_of(ws, name)
    if not specs:
        what = " and ".join(GRIDS_OF_SIZE.get(ws.profile.grid, ()))
        study = " (the paper's ablations: python scripts/ablations.py)" if ws.profile.grid == "headline" else ""
        print(f"profile {ws.profile.name!r} runs {what} only; no runs for {name!r}{study}")
        return pd.DataFrame(columns=["method", "variant", "seed", "dataset", "rouge_l"])
    return tables.tidy(runner.records_for(ws, specs))


@dataclass
class TableReport:
    """Everything one grid produces: the tidy runs, their summary (mean ± CI) as a table, the paired differences to
    the baseline beside the paper's (long and wide), and our numbers beside the paper's (long and wide)."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    wide: pd.DataFrame
    comparison: pd.DataFrame
    paired_wide: pd.DataFrame
    beside: pd.DataFrame
    beside_wide: pd.DataFrame


def grid_report(ws: Workspace, name: str, family: str = "gpt2", save: bool = True) -> TableReport:
    """Summarise grid `name`'s finished runs and set them beside the paper (model `family`: gpt2 or opt; not for a
    config's own data, whose beside_wide is empty and which has no vs_paper table); trains nothing (`run_grid` does).

    With `save`, the tables go to results/<profile>/<TABLE_FILES[name]>_{ours,paired,vs_paper,long}.{csv,md} (`long`:
    every number, tidy). Table 1's summary also holds the teacher and the untrained student.

    `family`: the paper's model family to compare with: "gpt2" or "opt".
    Returns the grid's TableReport; all seven frames are empty when the profile has no runs for the grid (nothing is
    saved then).
    """
    runs = grid_runs(ws, name)
    if runs.empty:
        return TableReport(*(pd.DataFrame() for _ in range(7)))
    rows = runs
    if name == "table1":  # Table 1 prints the teacher; the untrained student shows what KD adds
        rows = pd.concat([tables.reference_tidy(scoring.reference_scores(ws)), runs], ignore_index=True)
    summary = tables.summary(rows)
    own = ws.profile.data == "files"  # a config's own data: the paper printed nothing to set beside it
    comparison = paper.paper_comparison(runs, "" if own else name, family)
    beside = summary if own else paper.beside_paper(summary, comparison, name, family)
    out = TableReport(runs, summary, tables.wide(summary), comparison, paper.paired_wide(comparison), beside,
                      pd.DataFrame() if own else paper.beside_wide(beside))
    if save:
        stem = TABLE_FILES[name]
        for suffix, df in (("ours", out.wide), ("paired", out.paired_wide), ("vs_paper", out.beside_wide),
                           ("long", beside)):
            if not (own and suffix == "vs_paper"):
                save_table(ws, df, f"{stem}_{suffix}")
    return out


ENVIRONMENT = ("device", "device_name", "precision", "torch", "transformers")  # provenance.environment's fields


def _protocol_records(ws: Workspace) -> dict[str, dict[str, list[tuple[RunSpec, dict]]]]:
    """Training protocol -> grid -> its finished runs: every grid of GRIDS and the controls under the headline's
    protocol, Table 1 and the controls under the profile's other `protocols` (`protocols_of`)."""
    by_grid = {name: protocol_records(ws, name) for name in PROTOCOL_GRIDS}
    out = {}
    for protocol in protocols_of(ws.profile):
        names = [*GRIDS, "controls"] if protocol == ws.profile.protocol else PROTOCOL_GRIDS
        out[protocol] = {name: by_grid[name][protocol] if name in by_grid else records(ws, name) for name in names}
    return out


def runs_frame(ws: Workspace) -> pd.DataFrame:
    """Every finished run of every grid (`_protocol_records`), tidy, with its spec, config hash and what it ran on.

    One row per training protocol, grid, run and eval set. A run shared by two tables appears under both, with the
    same run_key. Nothing is trained.

    Returns tables.tidy's columns plus greedy_rouge_l, pocl, ranking, order, n_subsets, tau_0, tau_n, alpha_0, alpha_n,
    device, device_name, precision, torch, transformers, grid and training (the training protocol); empty when no run
    has finished.
    """
    parts = []
    for protocol, grids in _protocol_records(ws).items():
        for name, recs in grids.items():
            if not recs:
                continue
            specs = pd.DataFrame([{"run_key": rec["key"], "pocl": s.pocl, "ranking": s.ranking, "order": s.order,
                                   "n_subsets": s.n_subsets, "tau_0": s.tau[0], "tau_n": s.tau[1],
                                   "alpha_0": s.alpha[0], "alpha_n": s.alpha[1],
                                   **{k: rec["config"].get(k) for k in ENVIRONMENT}}
                                  for s, rec in recs]).drop_duplicates("run_key")
            greedy = tables.tidy(recs, "greedy")[["run_key", "dataset", "rouge_l"]].drop_duplicates(
                ["run_key", "dataset"])
            frame = tables.tidy(recs).merge(greedy.rename(columns={"rouge_l": "greedy_rouge_l"}), how="left",
                                            on=["run_key", "dataset"])
            parts.append(frame.merge(specs, on="run_key").assign(grid=name, training=protocol))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def claims(ws: Workspace) -> pd.DataFrame:
    """Every claim of findings.CLAIMS, judged per training protocol under the paper's sampled protocol and under
    greedy decoding.

    Each training protocol's runs (`_protocol_records`: every grid and the controls under the headline's, Table 1
    and the controls under the others) are judged apart, a run shared by two grids under one label counted once;
    Holm within each training and evaluation protocol. Nothing is trained.

    Returns findings.claim_table's rows (claim, paper_says, comparison, ours_diff, ci95, n_seeds, p_value, p_holm,
    verdict, excludes, paper_diff) with the columns protocol ("sampled" or "greedy") and training; empty when no run has
    finished.
    """
    return findings.claims_by_training({protocol: [rec for recs in grids.values() for rec in recs]
                                        for protocol, grids in _protocol_records(ws).items()})


def agreement(reports: dict[str, TableReport]) -> pd.DataFrame:
    """Per grid: how many paired differences the paper also prints, and in how many the sign agrees.

    `reports`: TableReports by grid name (`collect`, or `grid_report` per grid).
    Returns one row per grid, with the columns grid, tables (its TABLE_FILES stem), compared_cells, same_direction and
    share (same_direction / compared_cells; NaN when nothing was compared).
    """
    rows = []
    for name, rep in reports.items():
        flags = rep.comparison["direction_agrees"] if len(rep.comparison) else pd.Series(dtype=str)
        compared = int((flags != "").sum())
        rows.append({"grid": name, "tables": TABLE_FILES[name], "compared_cells": compared,
                     "same_direction": int((flags == "yes").sum()),
                     "share": (flags == "yes").sum() / compared if compared else np.nan})
    return pd.DataFrame(rows)


def premises_table(ws: Workspace, with_power: bool = False) -> pd.DataFrame:
    """POCL's premises in this workspace (pocl_utils.analysis.premises), saved as results/<profile>/premises.{csv,md}.

    P1: the teacher against the SFT student (Table 1's SFT runs, trained here if not yet) and the trivial rules, on the
    eval rows the paper's protocol scores. P2: the measurer (the Spearman row on generated worlds only, where the true
    difficulty is known). P3 (`with_power`, once Table 1 has run): each method's minimum detectable effect beside the
    paper's gain scaled to our teacher - SFT gap, to the method's KD - SFT gap, and as printed; P4 (with P3): the best
    KD baseline against SFT under each training protocol the profile runs (`protocols_of`) and each evaluation protocol
    (a training protocol without Table 1's runs gets P4's failing "no paired runs" rows).

    `with_power`: add P3's rows (needs Table 1's finished runs).
    Returns one row per premise check, with the columns premise, value, threshold and holds.
    """
    from ..analysis import premises
    from ..experiment.experiments import KD_METHODS
    p = ws.profile
    sft_specs = [baseline("SFT", s) for s in range(n_seeds_for(p, "table1"))]
    pool.run_grid(ws, sft_specs)
    sft = tables.with_average(tables.tidy(runner.records_for(ws, sft_specs))).groupby("dataset").rouge_l.mean()
    teacher = {k: v["mean"] for k, v in scoring.reference_score(ws, "Teacher")["metrics"]["eval"].items()}
    evals = {role: [ws.sets[role][e.index] for e in scoring.eval_data(ws, role, p.eval_max_examples)[0]]
             for role in teacher}
    rows = premises.teacher_rows(teacher, sft.to_dict(), premises.rule_scores(evals, ws.sets["train"]))
    frame = ranking_table(ws)
    if frame["true_difficulty"].isna().any():
        rows += premises.measurer_rows(frame.rouge_l, frame.fused, None)
    else:
        rows += premises.measurer_rows(frame.rouge_l, frame.fused, frame.true_difficulty.to_numpy())
    if with_power:
        recs = records(ws, "table1")
        runs = tables.with_average(tables.tidy(recs))
        rows += premises.table1_power_rows(runs, float(np.mean(list(teacher.values()))), float(sft["Avg"]),
                                           n_seeds_for(p, "table1"), KD_METHODS)
        for training in protocols_of(p):  # P4 under each training protocol, each evaluation protocol
            recs = records(under_protocol(ws, training), "table1")
            rows += premises.distillation_rows(
                {f"{training}, {proto}": tables.tidy(recs, proto) for proto in tables.PROTOCOLS}, KD_METHODS)
    table = premises.premises_table(rows)
    save_table(ws, table, "premises")
    return table


def convergence_table(ws: Workspace) -> pd.DataFrame:
    """Table 1's baselines at the end of their budget (`premises.convergence_frame`) under each training protocol the
    profile runs, saved as results/<profile>/convergence.{csv,md}: whether a seed was still converging when it stopped,
    beside its Avg ROUGE-L under each evaluation protocol (nothing is trained).

    Returns one row per (protocol, method, seed): valid_end, valid_fall, steps, sampled and greedy (Avg ROUGE-L).
    """
    from ..analysis import premises
    frames = []
    for training in protocols_of(ws.profile):
        recs = [(s, r) for s, r in records(under_protocol(ws, training), "table1") if not s.pocl]
        per = {proto: premises.convergence_frame(recs, tables.tidy(recs, proto)) for proto in tables.PROTOCOLS}
        frame = per["sampled"].rename(columns={"avg": "sampled"}).assign(greedy=per["greedy"]["avg"].to_numpy())
        frames.append(frame.drop(columns="variant").assign(protocol=training))
    cols = ["protocol", "method", "seed", "valid_end", "valid_fall", "steps", "sampled", "greedy"]
    table = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    save_table(ws, table.round(3), "convergence")
    return table


# ---- the training protocols (issue 23): the stage plans, and the Table 1 and controls grids under each ---------------


def protocols_of(p: Profile) -> tuple[str, ...]:
    """The training protocols a profile's Table 1 and controls grids run under: its `protocol` (the headline's) first,
    then the others of `protocols`."""
    return (p.protocol, *(x for x in p.protocols if x != p.protocol))


def under_protocol(ws: Workspace, protocol: str) -> Workspace:
    """The workspace with its profile's training protocol set to `protocol`: the same prepared steps and the data
    already loaded from them (no protocol setting is upstream of either), the runs keyed under that protocol
    (`config.protocol_key`)."""
    out = replace(ws, profile=replace(ws.profile, protocol=protocol))
    out.__dict__.update({k: v for k, v in vars(ws).items() if k not in ("profile", "root")})  # loaded sets, ranking
    return out


def protocol_plans(ws: Workspace, method: str = "KLD") -> pd.DataFrame:
    """The stage plan of the baseline, +POCL and the two optimizer controls of `method` under each training protocol
    (`curriculum.PROTOCOLS`), for the profile's training set; nothing is trained.

    `method`: the KD method (under official its baseline and controls train at alpha 0).
    Returns `curriculum.plan_rows` per run (stage, rows, batch, epochs, steps, lr, warmup, restart, tau, alpha, and a
    "total" row), with the columns protocol and run first.
    """
    enc = ws.encoded("train")
    runs = {"baseline": baseline(method), "+POCL": pocl(method),
            experiments.POCL_OPTIMIZER: experiments.pocl_optimizer(method),
            experiments.RESTARTS: experiments.restarts_control(method)}
    out = []
    for protocol in PROTOCOLS:
        w = under_protocol(ws, protocol)
        for label, spec in runs.items():
            out += [{"protocol": protocol, "run": label, **row}
                    for row in plan_rows(training_run.stages_for(w, spec, enc))]
    return pd.DataFrame(out)


def run_protocols(ws: Workspace, name: str, log=print) -> None:
    """Train grid `name` under each of the profile's training protocols (`protocols_of`), each arm at its learning rate
    chosen on validation when the profile has lr_factors (`pool.at_chosen_lrs`); finished runs are skipped.

    `name`: the grid, "table1" or "controls" (any key of GRIDS works).
    """
    for protocol in protocols_of(ws.profile):
        w = under_protocol(ws, protocol)
        specs, _ = pool.at_chosen_lrs(w, specs_of(w, name), log=log)
        pool.run_grid(w, specs, log=log)


def protocol_records(ws: Workspace, name: str) -> dict[str, list[tuple[RunSpec, dict]]]:
    """Training protocol -> the finished runs of grid `name` under it (at the chosen learning rates when the profile
    has lr_factors; a protocol whose choice is not made yet gives []). Nothing is trained."""
    out = {}
    for protocol in protocols_of(ws.profile):
        w = under_protocol(ws, protocol)
        specs = specs_of(w, name)
        if ws.profile.lr_factors:
            picked = experiments.chosen_lrs(runner.records_for(w, experiments.lr_candidates(specs,
                                                                                              ws.profile.lr_factors)))
            try:
                specs = experiments.with_chosen_lr(specs, picked)
            except ValueError:  # some arm's lr is not chosen yet: its runs cannot be named
                specs = []
        out[protocol] = runner.records_for(w, specs)
    return out


@dataclass
class ControlsReport:
    """The controls grid under each training protocol: the tidy runs (column `training`), each arm's Avg ROUGE-L with
    its paired differences to the baseline and to +POCL, and the claims the controls decide (with their summary)."""

    runs: pd.DataFrame
    table: pd.DataFrame
    claims: pd.DataFrame
    summary: pd.DataFrame


def controls_report(ws: Workspace, save: bool = True) -> ControlsReport:
    """The controls grid's finished runs under each of the profile's training protocols, summarised; nothing is trained
    (`run_protocols(ws, "controls")` trains them).

    `table`: per training protocol, method and arm (experiments.CONTROL_LABELS), the Avg ROUGE-L (sampled, the paper's
    protocol) ± 95% CI and the paired differences arm − baseline and arm − +POCL by training seed
    (`tables.paired_to`). `claims`: findings.CLAIMS' control claims (findings.CONTROL_CLAIMS) judged per training
    protocol and evaluation protocol (`findings.claims_by_training`), Holm within each. With `save` they go to
    results/<profile>/beyond_controls_{paired,claims,claims_summary}.{csv,md}.

    Returns the ControlsReport; its frames are empty when no control has finished (nothing is saved then).
    """
    recs = protocol_records(ws, "controls")
    parts = [tables.tidy(r).assign(training=t) for t, r in recs.items() if r]
    if not parts:
        return ControlsReport(*(pd.DataFrame() for _ in range(4)))
    runs = pd.concat(parts, ignore_index=True).drop_duplicates(["training", "method", "variant", "seed", "dataset"])
    order = {v: k for k, v in enumerate(experiments.CONTROL_LABELS)}
    table = tables.paired_to(runs)
    table = table.sort_values(["training", "method", "variant"], key=lambda c: c.map(order) if c.name == "variant"
                              else c.map({t: k for k, t in enumerate(recs)}) if c.name == "training" else c,
                              kind="stable").reset_index(drop=True)
    claims = findings.claims_by_training(recs, findings.CONTROL_CLAIMS)
    summary = findings.claim_summary(claims) if len(claims) else pd.DataFrame()
    if save:
        stem = TABLE_FILES["controls"]
        for suffix, df in (("paired", table), ("claims", claims), ("claims_summary", summary)):
            if len(df):
                save_table(ws, df, f"{stem}_{suffix}")
    return ControlsReport(runs, table, claims, summary)
