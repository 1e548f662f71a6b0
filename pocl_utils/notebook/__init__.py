"""Glue between the notebooks and the package: set-up, one call per table, named figures, output folders, display.

Each notebook starts with `ws = setup(profile, **overrides)` and then only calls functions from here, `analysis`,
`experiment` and the method's modules, so no notebook defines anything another one needs. Tables go to
`results/<profile>/` and figures (PNG + PDF) to `figures/<profile>/`, under the run folder (./runs, or
$POCL_RUNS_DIR) or under $POCL_OUTPUT_DIR when set; the committed reference results in the repository's own
`results/` and `figures/` change only through `pocl-reproduce --publish` (see `outputs`).

The subpackage `pocl_utils.notebook`, the top layer, holds this facade, `reproduce` (the papermill runner behind
`pocl-reproduce`) and the lab (`lab` builds notebook 11's variants, `lab_checks` grades the exercises,
`lab_experiment` runs its closing experiment). It may import anything in the package; nothing outside it imports it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# tqdm.auto (imported by transformers) falls back to text bars in a kernel without ipywidgets; the fallback is
# fine and its warning is noise in every notebook. Set before the imports below trigger it.
warnings.filterwarnings("ignore", message="IProgress not found")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..training import distributed  # noqa: E402
from ..analysis import figures, findings, frames, paper, tables  # noqa: E402
from ..experiment import pool, runner, scoring, training_run  # noqa: E402
from ..experiment.config import DEFAULT_PROFILE, ConfigError, ModelSpec, Profile, RunSpec, baseline, get_profile, pocl
from ..data import DataError
from ..modeling.models import CheckpointError
from ..experiment.experiments import GRIDS, grid, n_seeds_for
from ..experiment.pipeline import prepare
from ..experiment.provenance import describe
from ..experiment.results import REPO_ROOT, RegistryError, atomic_write_json, atomic_write_text
from ..experiment.workspace import StepError, Workspace
from . import outputs
from .outputs import output_root  # noqa: F401 - part of the facade

# Grid -> the stem of its files in results/<profile>/, named after the paper's tables it reproduces.
TABLE_FILES = {"table1": "table1_kd_methods", "ranking": "table2_5_ranking", "adaptive": "table3_6_adaptive",
               "order": "table7_order", "temperature": "table8_temperature", "ratio": "table9_ratio",
               "subsets": "beyond_n_subsets"}


# ---- folders, set-up, display ------------------------------------------------------------------------------------


def _name(profile: str | Profile) -> str:
    return profile if isinstance(profile, str) else profile.name


def results_dir(profile: str | Profile) -> Path:
    """This run's tables: results/<profile>/ under the output root (see outputs.output_root).

    Args:
        profile: a Profile or a profile's name.

    Returns:
        The folder's path (not created here).
    """
    return outputs.results_dir(_name(profile))


def figures_dir(profile: str | Profile) -> Path:
    """This run's figures: figures/<profile>/ under the output root.

    Args:
        profile: a Profile or a profile's name.

    Returns:
        The folder's path (not created here).
    """
    return outputs.figures_dir(_name(profile))


def _model_text(spec: ModelSpec) -> str:
    return spec.name_or_path if spec.arch == "hub" else f"{spec.arch} {spec.n_layer}L×{spec.n_embd}"


def setup(profile: str = DEFAULT_PROFILE, **overrides: Any) -> Workspace:
    """Set up a notebook for one profile and return its prepared workspace.

    Resolves the profile strictly (unknown name or key raises), prints the device it runs on (the notebook's first
    output), prepares its cached workspace (building whatever is not cached yet), sets the plot theme, saves the
    resolved profile to results/<profile>/profile.json and prints a one-line summary. In a notebook, our input errors
    are then shown as one line instead of a traceback (`short_errors`).

    Args:
        profile: the profile's name, one of PROFILES.
        **overrides: profile keys to change, dotted for nested settings (the notebooks pass their `overrides` parameter,
            e.g. {"kd.lr": 0.001}).

    Returns:
        The prepared Workspace: the profile's data sets, models, difficulty ranking and caches.

    Raises:
        ConfigError: an unknown profile, an unknown key or a bad value.
    """
    import seaborn as sns
    short_errors()
    p = get_profile(profile, overrides)
    print(f"profile {p.name!r} on {describe(distributed.device())}", flush=True)
    ws = prepare(p)
    sns.set_theme(style="whitegrid", context="notebook")
    atomic_write_json(results_dir(p) / "profile.json", {"profile": p.to_dict(), "overrides": overrides})
    print(f"profile {p.name!r}: {p.data} data, {len(ws.sets['train'])} training rows; "
          f"teacher {_model_text(p.teacher)}, "
          f"student {_model_text(p.student)}; {n_seeds_for(p, 'table1')} training seed(s) in Table 1, "
          f"{p.n_seeds} in the ablations, × {len(p.eval_seeds)} sampling seeds; "
          f"grid {p.grid!r}; workspace {ws.root}")
    return ws


def require_real(ws: Workspace) -> None:
    """Stop with a one-line error unless the workspace holds real data (the real-models notebook needs it).

    Args:
        ws: the notebook's workspace (`setup`).

    Raises:
        ConfigError: the profile has generated data (the message names the real-data profiles).
    """
    if ws.profile.data != "real":
        raise ConfigError(f"profile {ws.profile.name!r} has generated data; this notebook needs a real-data profile "
                          f"(real-lite, paper or paper-opt)")


def real_data_card(ws: Workspace) -> pd.DataFrame:
    """The card of the real data sets: sources, sizes, filtering, use and licence.

    real.data_card, saved as results/<profile>/data_card.{csv,md} and figures/<profile>/real_prompt_lengths.{png,pdf}
    (the histograms of every source prompt's GPT-2 length; shown in a notebook).

    Args:
        ws: a workspace of a real-data profile.

    Returns:
        One row per real set, with the columns role, file, rows, fields, dropped_over_256_gpt2_tokens, in_workspace,
        used, licence and source.
    """
    from ..experiment.real import data_card
    card, lengths = data_card(ws)
    save_table(ws, card, "data_card")
    save_figure(ws, figures.prompt_length_figure(lengths), "real_prompt_lengths")
    return card


USER_ERRORS = (ConfigError, DataError, CheckpointError, StepError, RegistryError, FileNotFoundError)


def short_errors() -> None:
    """In a notebook, show our input errors (bad parameter, bad data file, missing model) as a one-line error
    instead of a traceback wall; papermill still stops there and reports the error's name and message."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        stb = [f"{etype.__name__}: {value}"]  # a one-line "traceback": the error output papermill reports
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc(USER_ERRORS, handler)


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _cell(value: Any, width: int = 120) -> Any:
    """Markdown-safe cell: one line, pipes escaped, long text cut."""
    if not isinstance(value, str):
        return value
    text = value.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def show(df: pd.DataFrame, floatfmt: str = ".2f") -> None:
    """Display a table as Markdown in a notebook (printed elsewhere); text cells are kept to one line.

    Text cells have their newlines shown as ⏎ and pipes escaped, and are cut at 120 characters; a MultiIndex is joined
    into one label per row ("KLD +POCL"); a plain integer index (row numbers) is left out. An empty table (or None)
    shows "*(no rows for this profile)*".

    Args:
        df: the table.
        floatfmt: the format of float cells, as in DataFrame.to_markdown.
    """
    if df is None or len(df) == 0:
        text = "*(no rows for this profile)*"
    else:
        if isinstance(df.index, pd.MultiIndex):  # ("KLD", "+POCL") -> "KLD +POCL"
            df = df.set_axis([" ".join(map(str, key)) for key in df.index])
        clean = df.apply(lambda col: col.map(_cell)) if len(df.columns) else df
        plain = pd.api.types.is_integer_dtype(df.index) and df.index.name is None  # row numbers say nothing
        text = clean.to_markdown(index=not plain, floatfmt=floatfmt)
    if in_notebook():
        from IPython.display import Markdown, display
        display(Markdown(text))
    else:
        print(text)


def save_table(ws: Workspace, df: pd.DataFrame, name: str) -> Path:
    """Save a table as results/<profile>/<name>.csv and .md.

    Written atomically; the CSV keeps the index unless it is a plain RangeIndex.

    Args:
        ws: the notebook's workspace (its profile names the folder).
        df: the table.
        name: the files' name, without extension.

    Returns:
        The CSV file's path.
    """
    return tables.save_table(df, name, results_dir(ws.profile))


def save_figure(ws: Workspace, fig: Any, name: str) -> Path:
    """Save a figure as figures/<profile>/<name>.png and .pdf; shows the figure in a notebook, then closes it.

    Args:
        ws: the notebook's workspace (its profile names the folder).
        fig: a matplotlib Figure.
        name: the files' name, without extension.

    Returns:
        The PNG file's path.
    """
    import matplotlib.pyplot as plt
    path = figures.save_figure(fig, name, figures_dir(ws.profile))
    if in_notebook():
        from IPython.display import display
        display(fig)
    plt.close(fig)
    return path


# ---- the frames the notebooks look at ----------------------------------------------------------------------------


def examples_frame(ws: Workspace) -> pd.DataFrame:
    """One row per example of every role: family, level, difficulty, token lengths (NaN if dropped as too long).

    Args:
        ws: the notebook's workspace.

    Returns:
        A DataFrame with the columns role, family ("-" when the row has none), level and difficulty (NaN when the row
        has none), prompt_tokens and response_tokens (without EOS; NaN if dropped as too long) and kept (whether the
        example survived encoding).
    """
    rows = []
    for role, data in ws.sets.items():
        lengths = {e.index: (len(e.prompt_ids), len(e.response_ids) - 1) for e in ws.encoded(role)}  # minus EOS
        for i, r in enumerate(data):
            p_len, r_len = lengths.get(i, (np.nan, np.nan))
            rows.append({"role": role, "family": r.get("family", "-"), "level": r.get("level", np.nan),
                         "difficulty": r.get("difficulty", np.nan), "prompt_tokens": p_len, "response_tokens": r_len,
                         "kept": i in lengths})
    return pd.DataFrame(rows)


def sample_rows(ws: Workspace, n: int) -> pd.DataFrame:
    """The first n rows of every role (instruction, input, reference output, family, level, difficulty).

    Args:
        ws: the notebook's workspace.
        n: the number of rows per role.

    Returns:
        A DataFrame with the columns role, family, level, difficulty, instruction, input and output ("" where a row
        lacks the field).
    """
    keys = ("family", "level", "difficulty", "instruction", "input", "output")
    return pd.DataFrame([{"role": role, **{k: r.get(k, "") for k in keys}} for role, data in ws.sets.items()
                         for r in data[:n]])


def greedy_examples(ws: Workspace, role: str, n: int) -> pd.DataFrame:
    """The teacher's and the initial student's greedy responses to the first n (kept) prompts of a role.

    Both models run on the CPU, up to the profile's max_new_tokens.

    Args:
        ws: the notebook's workspace.
        role: a data set: "train", "valid" or an eval set's name.
        n: the number of prompts.

    Returns:
        A DataFrame with one row per prompt and the columns instruction, input, output (the reference), teacher and
        student (init).
    """
    from ..evaluate import responses
    enc = ws.encoded(role)[:n]
    out = pd.DataFrame([{k: ws.sets[role][e.index][k] for k in ("instruction", "input", "output")} for e in enc])
    for name, load in (("teacher", ws.load_teacher), ("student (init)", ws.load_student_init)):
        out[name] = responses(load("cpu").eval(), ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens)
    return out


def subset_examples(ws: Workspace, n: int, seed: int = 0) -> pd.DataFrame:
    """Samples of the easiest and of the hardest POCL subset, with the reference and both models' greedy answers.

    n seeded samples of the easiest and of the hardest POCL subset (d_1, d_n by the fused ranking), with the reference,
    the teacher's and the initial student's greedy answers, and each answer's ROUGE-L. The teacher runs on the CPU; the
    student's answers and ROUGE-L are the ones cached with the difficulty ranking.

    Args:
        ws: the notebook's workspace.
        n: the number of samples per subset (all of a smaller subset).
        seed: the sampling seed.

    Returns:
        A DataFrame, d_1's rows first, with the columns subset, true_difficulty (NaN on real data), instruction, input,
        output (the reference), teacher, student (init), ROUGE-L teacher and ROUGE-L student.
    """
    from ..evaluate import responses, rouge_l
    frame = ranking_table(ws)
    ends = [frame.subset.min(), frame.subset.max()]
    picked = pd.concat([frame[frame.subset == s].sample(min(n, int((frame.subset == s).sum())), random_state=seed)
                        for s in ends])
    by_index = {e.index: e for e in ws.encoded("train")}
    enc = [by_index[i] for i in picked["id"]]
    teacher = responses(ws.load_teacher("cpu"), ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens)
    out = picked[["subset", "true_difficulty", "instruction", "input", "output"]].reset_index(drop=True)
    out["teacher"], out["student (init)"] = teacher, list(picked["greedy"])
    out["ROUGE-L teacher"] = [rouge_l(t, r) for t, r in zip(out["teacher"], out["output"])]
    out["ROUGE-L student"] = list(picked["rouge_l"])
    return out


def model_sizes(ws: Workspace) -> pd.DataFrame:
    """Teacher and student: architecture and parameter count.

    Both models (the student before training) are loaded on the CPU to count their parameters.

    Args:
        ws: the notebook's workspace.

    Returns:
        Two rows (teacher, student) with the columns model, spec (architecture, layers × width, or the hub name), heads
        (None for hub models), parameters (M) and teacher ÷ this (the teacher's parameter count over this model's).
    """
    from ..modeling.models import n_params
    out = []
    for role, spec, load in (("teacher", ws.profile.teacher, ws.load_teacher), ("student", ws.profile.student,
                                                                                 ws.load_student_init)):
        out.append({"model": role, "spec": _model_text(spec), "heads": spec.n_head if spec.arch != "hub" else None,
                    "parameters (M)": n_params(load("cpu")) / 1e6})
    out = pd.DataFrame(out)
    out["teacher ÷ this"] = out["parameters (M)"].iloc[0] / out["parameters (M)"]
    return out


def training_logs(ws: Workspace) -> dict[str, list[dict]]:
    """The cached step logs of teacher SFT and student pre-training, titled with their build time (STEP.json).

    A step that trained nothing has no log (real-lite's teacher is used as its authors released it).

    Args:
        ws: the notebook's workspace.

    Returns:
        {title: log}: "teacher SFT (<wall> s)" and "student LM pre-training (<wall> s)", each mapped to the step's
        log.json (a list of dicts), for the steps that have one.
    """
    import json
    read = lambda step, name: json.loads((ws.root / step / name).read_text())  # noqa: E731
    return {f"{title} ({read(step, 'STEP.json')['wall_s']:.3g} s)": read(step, "log.json")
            for title, step in (("teacher SFT", "teacher"), ("student LM pre-training", "student_init"))
            if (ws.root / step / "log.json").exists()}


def ranking_table(ws: Workspace) -> pd.DataFrame:
    """frames.ranking_frame of the workspace's cached difficulty ranking (Eq. 2).

    Args:
        ws: the notebook's workspace.

    Returns:
        One row per ranked training sample, with the columns id, rouge_l, ce, fused, greedy (the student's greedy
        answer), rank_rouge_l, rank_ce, rank_fusion (1 = easiest), subset (1..n by the fused ranking), family, level,
        instruction, input, output and true_difficulty (NaN on real data).
    """
    return frames.ranking_frame(ws.ranking, ws.sets["train"], ws.profile.n_subsets)


def premises_table(ws: Workspace, with_power: bool = False) -> pd.DataFrame:
    """POCL's premises in this workspace (pocl_utils.analysis.premises), saved as results/<profile>/premises.{csv,md}.

    P1: the teacher against the SFT student (Table 1's SFT runs, trained here if not yet) and the trivial rules, on the
    eval rows the paper's protocol scores. P2: the measurer (the Spearman row on generated worlds only, where the true
    difficulty is known). P3 (`with_power`, once Table 1 has run): each method's minimum detectable effect beside the
    paper's gain scaled to our teacher - SFT gap.

    Args:
        ws: the notebook's workspace.
        with_power: add P3's rows (needs Table 1's finished runs).

    Returns:
        One row per premise check, with the columns premise, value, threshold and holds.
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
        runs = tables.with_average(tables.tidy(records(ws, "table1")))
        rows += premises.table1_power_rows(runs, float(np.mean(list(teacher.values()))), float(sft["Avg"]),
                                           n_seeds_for(p, "table1"), KD_METHODS)
    table = premises.premises_table(rows)
    save_table(ws, table, "premises")
    return table


def ranking_verdict(agreement: pd.DataFrame) -> str:
    """One line on frames.rank_agreement's table: does the fused ranking find the true difficulty (premise P2)?

    Args:
        agreement: frames.rank_agreement's table (one row per ranking, with its spearman_rho).

    Returns:
        A sentence: whether the fused ranking's Spearman ρ reaches premises.MEASURER_RHO, and the best single measurer
        with its ρ; or, when no ρ is known (real data), that the ranking cannot be checked.
    """
    from ..analysis.premises import MEASURER_RHO
    rho = agreement.set_index("ranking")["spearman_rho"]
    if rho.isna().all():
        return "No true difficulty is known for these rows (real data), so the ranking cannot be checked against it."
    best = rho.idxmax()
    verdict = "finds" if rho["fusion"] >= MEASURER_RHO else "does not find"
    return (f"The fused ranking {verdict} the true difficulty (Spearman ρ = {rho['fusion']:+.2f}; P2 asks for "
            f"≥ {MEASURER_RHO}); the single best measurer here is {figures.RANKING_NAMES[best]} "
            f"(ρ = {rho[best]:+.2f}).")


def stage_table(ws: Workspace, specs: list[RunSpec]) -> pd.DataFrame:
    """The curriculum of each distinct (method, variant) among `specs`, stage by stage.

    Per stage its size, the mean true difficulty of the samples it adds (NaN on real data), tau, alpha and optimizer
    steps. Nothing is trained.

    Args:
        ws: the notebook's workspace.
        specs: runs; the first of each (method, variant) gives its plan.

    Returns:
        One row per stage, with the columns method, variant, stage, n_samples, added_difficulty, tau, alpha and steps.
    """
    enc, rows = ws.encoded("train"), ws.sets["train"]
    out, seen = [], set()
    for spec in specs:
        if (spec.method, spec.variant) in seen:
            continue
        seen.add((spec.method, spec.variant))
        done = 0
        for s in training_run.stages_for(ws, spec, enc):
            added = s.samples[done:]  # Baby Step: stage i = stage i-1's samples followed by d_i
            done = len(s.samples)
            truth = [rows[enc[k].index].get("difficulty", np.nan) for k in added]
            out.append({"method": spec.method, "variant": spec.variant, "stage": s.index, "n_samples": len(s.samples),
                        "added_difficulty": float(np.mean(truth)), "tau": s.tau, "alpha": s.alpha, "steps": s.steps})
    return pd.DataFrame(out)


# ---- tables ------------------------------------------------------------------------------------------------------


def specs_of(ws: Workspace, name: str) -> list[RunSpec]:
    """The profile's runs of one grid; a profile whose grid is 'table1' (classroom) runs Table 1 only.

    Args:
        ws: the notebook's workspace.
        name: the grid, a key of GRIDS: table1, ranking, adaptive, order, temperature, ratio or subsets.

    Returns:
        The grid's RunSpecs at the profile's seed count and grid size (the order grid adds the true-difficulty control
        on generated worlds); [] for any grid but table1 under a 'table1' profile.

    Raises:
        ValueError: an unknown grid name (from experiments.grid).
    """
    p = ws.profile
    if p.grid == "table1" and name != "table1":
        return []
    return grid(name, n_seeds_for(p, name), p.grid, oracle=p.data == "world")


def records(ws: Workspace, name: str) -> list[tuple[RunSpec, dict]]:
    """(spec, record) of the finished runs of one grid (nothing is trained).

    Args:
        ws: the notebook's workspace.
        name: the grid, a key of GRIDS.

    Returns:
        (RunSpec, record) pairs of the grid's finished runs, in the grid's order; a record is a dict with the run's key,
        config, metrics, wall time (wall_s) and git commit.
    """
    return runner.records_for(ws, specs_of(ws, name))


run_grid = pool.run_grid  # run_grid(ws, specs): train every spec not finished yet (a notebook cell's one call to it)


def grid_runs(ws: Workspace, name: str) -> pd.DataFrame:
    """The finished runs of grid `name` as tables.tidy's frame (one row per run and eval set: method, variant, seed,
    dataset, rouge_l, sampling_std, run_key, wall_s, git_commit); nothing is trained. Empty, with a printed note, when
    the profile has no runs for the grid."""
    specs = specs_of(ws, name)
    if not specs:
        print(f"profile {ws.profile.name!r} runs Table 1 only; no runs for {name!r}")
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
    """Summarise grid `name`'s finished runs and set them beside the paper (model `family`: gpt2 or opt); trains
    nothing (`run_grid` does).

    With `save`, the tables go to results/<profile>/<TABLE_FILES[name]>_{ours,paired,vs_paper,long}.{csv,md} (`long`:
    every number, tidy). Table 1's summary also holds the teacher and the untrained student.

    Args:
        ws: the notebook's workspace.
        name: the grid, a key of GRIDS (and of TABLE_FILES).
        family: the paper's model family to compare with: "gpt2" or "opt".
        save: whether to write the four tables.

    Returns:
        The grid's TableReport; all seven frames are empty when the profile has no runs for the grid (nothing is saved
        then).
    """
    runs = grid_runs(ws, name)
    if runs.empty:
        return TableReport(*(pd.DataFrame() for _ in range(7)))
    rows = runs
    if name == "table1":  # Table 1 prints the teacher; the untrained student shows what KD adds
        rows = pd.concat([tables.reference_tidy(scoring.reference_scores(ws)), runs], ignore_index=True)
    summary = tables.summary(rows)
    comparison = paper.paper_comparison(runs, name, family)
    beside = paper.beside_paper(summary, comparison, name, family)
    out = TableReport(runs, summary, tables.wide(summary), comparison, paper.paired_wide(comparison), beside,
                      paper.beside_wide(beside))
    if save:
        stem = TABLE_FILES[name]
        for suffix, df in (("ours", out.wide), ("paired", out.paired_wide), ("vs_paper", out.beside_wide),
                           ("long", beside)):
            save_table(ws, df, f"{stem}_{suffix}")
    return out


ENVIRONMENT = ("device", "device_name", "precision", "torch", "transformers")  # provenance.environment's fields


def runs_frame(ws: Workspace) -> pd.DataFrame:
    """Every finished run of every grid, tidy, with its spec, config hash and what it ran on.

    One row per grid, run and eval set, with its spec, config hash (run_key), git commit, wall time and what it ran on
    (device, precision policy, torch/transformers versions). A run shared by two tables appears under both, with the
    same run_key. Nothing is trained.

    Args:
        ws: the notebook's workspace.

    Returns:
        A DataFrame with tables.tidy's columns plus greedy_rouge_l, pocl, ranking, order, n_subsets, tau_0, tau_n,
        alpha_0, alpha_n, device, device_name, precision, torch, transformers and grid; empty when no run has finished.
    """
    parts = []
    for name in GRIDS:
        recs = records(ws, name)
        if not recs:
            continue
        specs = pd.DataFrame([{"run_key": rec["key"], "pocl": s.pocl, "ranking": s.ranking, "order": s.order,
                               "n_subsets": s.n_subsets, "tau_0": s.tau[0], "tau_n": s.tau[1], "alpha_0": s.alpha[0],
                               "alpha_n": s.alpha[1], **{k: rec["config"].get(k) for k in ENVIRONMENT}}
                              for s, rec in recs]).drop_duplicates("run_key")
        greedy = tables.tidy(recs, "greedy")[["run_key", "dataset", "rouge_l"]].drop_duplicates(["run_key", "dataset"])
        frame = tables.tidy(recs).merge(greedy.rename(columns={"rouge_l": "greedy_rouge_l"}), how="left",
                                        on=["run_key", "dataset"])
        parts.append(frame.merge(specs, on="run_key").assign(grid=name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def claims(ws: Workspace) -> pd.DataFrame:
    """Every claim of findings.CLAIMS, judged under the paper's sampled protocol and under greedy decoding.

    Each claim is judged from the finished runs of every grid (a run shared by two grids under one label counts once),
    once per protocol (column `protocol`). Nothing is trained.

    Args:
        ws: the notebook's workspace.

    Returns:
        findings.claim_table's rows (one per comparison of every claim: claim, paper_says, comparison, ours_diff, ci95,
        n_seeds, p_value, p_holm, verdict, excludes, paper_diff) with the column protocol ("sampled" or "greedy"); empty
        when no run has finished.
    """
    return findings.claims_by_protocol([rec for name in GRIDS for rec in records(ws, name)])


# ---- figures -----------------------------------------------------------------------------------------------------


def _bars(name: str, dataset: str, title: str) -> Callable[[Workspace], Any]:
    def build(ws: Workspace) -> Any:
        runs = grid_runs(ws, name)
        if runs.empty:
            return None
        summary = tables.summary(runs)
        with_pocl = summary[summary.variant != "baseline"].method.unique()  # KD methods only (not SFT, SeqKD)
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

    Args:
        ws: the notebook's workspace.
        name: the figure, a key of FIGURES.

    Raises:
        KeyError: an unknown figure name (the message lists the valid ones).
    """
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; valid: {', '.join(FIGURES)}")
    fig = FIGURES[name](ws)
    if fig is None:
        print(f"{name}: nothing to draw for profile {ws.profile.name!r}")
        return
    save_figure(ws, fig, name)


def agreement(reports: dict[str, TableReport]) -> pd.DataFrame:
    """Per grid: how many paired differences the paper also prints, and in how many the sign agrees.

    Args:
        reports: TableReports by grid name (`collect`, or `grid_report` per grid).

    Returns:
        One row per grid, with the columns grid, tables (its TABLE_FILES stem), compared_cells, same_direction and share
        (same_direction / compared_cells; NaN when nothing was compared).
    """
    rows = []
    for name, rep in reports.items():
        flags = rep.comparison["direction_agrees"] if len(rep.comparison) else pd.Series(dtype=str)
        compared = int((flags != "").sum())
        rows.append({"grid": name, "tables": TABLE_FILES[name], "compared_cells": compared,
                     "same_direction": int((flags == "yes").sum()),
                     "share": (flags == "yes").sum() / compared if compared else np.nan})
    return pd.DataFrame(rows)


def collect(ws: Workspace, family: str = "gpt2") -> dict[str, TableReport]:
    """Every table (beside the paper), results/<profile>/runs.csv and every figure of the collection.

    Runs whatever of every grid is not finished yet (`run_grid`) and saves its tables (`grid_report`), writes runs.csv
    (`runs_frame`) when a run has finished, and draws and saves every figure of FIGURES (`figure`).

    Args:
        ws: the notebook's workspace.
        family: the paper's model family to compare with: "gpt2" or "opt".

    Returns:
        The TableReport of every grid, by grid name.
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
