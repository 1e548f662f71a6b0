"""Figures (seaborn): the curriculum, the rankings against the true difficulty, training curves, grouped bars with
their error bars, and the data sets. Each function returns a matplotlib Figure; save it with `save_figure` and close
it. matplotlib's backend is left to the application.

May import `analysis.frames`, `experiment.config` and `experiment.results`; nothing of `training`, `modeling` or
`notebook`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..experiment.config import RunSpec
from ..experiment.results import REPO_ROOT
from .frames import find_record, rank_agreement, stage_frame


FIGURES = REPO_ROOT / "figures"


def save_figure(fig, name: str, folder: Path | None = None) -> Path:
    """Save a matplotlib figure as PNG and PDF.

    Both at dpi 150 with a tight bounding box; the PDF has no creation date, so a re-run regenerates it exactly.

    `name`: the files' stem: `<name>.png` and `<name>.pdf`.
    `folder`: where to write them (created if missing); None = FIGURES (the repository's `figures/`).
    Returns the path of the PNG file.
    """
    folder = Path(folder or FIGURES)
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):  # no creation date in the PDF, so a re-run regenerates the committed file exactly
        metadata = {"CreationDate": None} if ext == "pdf" else None
        fig.savefig(folder / f"{name}.{ext}", bbox_inches="tight", dpi=150, metadata=metadata)
    return folder / f"{name}.png"


def _pyplot():
    """matplotlib.pyplot, imported when a figure is first drawn. The backend is matplotlib's choice (inline in Jupyter,
    Agg without a display, or MPLBACKEND): a library does not pick it for the application."""
    import matplotlib.pyplot as plt
    return plt


def curriculum_figure(stages: list, title: str = "POCL curriculum") -> Any:
    """Baby Step plan: per stage the samples stacked by subset d_j (steps on top), tau_i (Eq. 3) and alpha_i (Eq. 4).

    `stages`: curriculum.Stage objects or a record's stage dicts (as `frames.stage_frame` takes).
    """
    import seaborn as sns
    plt = _pyplot()
    plan = stage_frame(stages)
    sizes = np.diff(np.concatenate([[0], plan["n_samples"].to_numpy()]))  # |d_j| = |stage j| - |stage j-1|
    colors = sns.color_palette("crest", len(plan))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), gridspec_kw={"width_ratios": [2, 1, 1]})
    for i, stage in enumerate(plan["stage"]):
        bottom = 0
        for j in range(i + 1):
            label = f"d{j + 1}" if i == len(plan) - 1 else None  # one legend entry per subset
            axes[0].bar(stage, sizes[j], bottom=bottom, color=colors[j], label=label)
            bottom += sizes[j]
        axes[0].text(stage, bottom, f"{plan['steps'][i]} steps", ha="center", va="bottom", fontsize=8)
    axes[0].set(xlabel="stage i", ylabel="training samples", xticks=plan["stage"], title="samples: d1 ∪ … ∪ di")
    axes[0].legend(title="subset", fontsize=8)
    for ax, key, eq in ((axes[1], "tau", "Eq. 3"), (axes[2], "alpha", "Eq. 4")):
        sns.lineplot(data=plan, x="stage", y=key, marker="o", ax=ax)
        ax.set(xticks=plan["stage"], title=f"{key} per stage ({eq})")
    axes[2].set_ylim(-0.02, max(0.35, plan["alpha"].max() + 0.05))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


RANKING_NAMES = {"rouge_l": "ROUGE-L rank", "ce": "CE rank", "fusion": "fusion rank"}


def ranking_vs_truth_figure(frame: pd.DataFrame) -> Any:
    """Each measurer's rank (1 = easiest) against the world's true difficulty, one box per difficulty level, with
    Spearman's rho (rank_agreement) in each panel.

    `frame`: a `frames.ranking_frame` of a world (its true_difficulty must be defined: not for real data).
    """
    import seaborn as sns
    plt = _pyplot()
    rho = rank_agreement(frame).set_index("ranking")["spearman_rho"]
    frame = frame.assign(true_difficulty=frame["true_difficulty"].astype(int))  # labels 1, 2, ... not 1.0, 2.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for ax, method in zip(axes, ("rouge_l", "ce", "fusion")):
        sns.boxplot(data=frame, x="true_difficulty", y=f"rank_{method}", ax=ax, color="#9ecae1", fliersize=2)
        r = "undefined: all scores tie" if np.isnan(rho[method]) else f"{rho[method]:+.2f}"
        ax.set(title=f"{RANKING_NAMES[method]} (Spearman ρ = {r})", xlabel="true difficulty",
               ylabel="rank (1 = easiest)")
    fig.tight_layout()
    return fig


def subset_difficulty_figure(frame: pd.DataFrame) -> Any:
    """The true-difficulty mix of each POCL subset d_1..d_n (fused ranking): share of each level per subset.

    `frame`: a `frames.ranking_frame` of a world (its true_difficulty must be defined: not for real data).
    """
    import seaborn as sns
    plt = _pyplot()
    frame = frame.assign(true_difficulty=frame["true_difficulty"].astype(int))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.histplot(data=frame, x="subset", hue="true_difficulty", multiple="fill", discrete=True, shrink=0.8,
                 palette="flare", ax=ax)
    ax.set(xlabel="subset (1 = easiest by Eq. 2)", ylabel="share of samples", xticks=sorted(frame["subset"].unique()),
           title="true difficulty inside each subset")
    fig.tight_layout()
    return fig


def _curves(records: list[tuple[RunSpec, dict[str, Any]]], runs: list[tuple[str, str]], key: str,
            seed: int) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Rows of metrics.train[key] for each (method, variant), and each POCL run's stage boundaries (in steps)."""
    frames, bounds = [], {}
    for method, variant in runs:
        rec = find_record(records, method, variant, seed)
        if rec is None:
            continue
        train = rec["metrics"]["train"]
        frames.append(pd.DataFrame(train[key]).assign(run=f"{method} {variant}"))
        bounds[f"{method} {variant}"] = list(np.cumsum([s["steps"] for s in train["stages"]])[:-1])
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), bounds


def _mark_stages(ax, bounds: dict[str, list[int]], offset: float = 0.0) -> None:
    """Dotted line where each POCL stage ends (`offset` -0.5 puts it between 0-based step indices)."""
    for k, (run, steps) in enumerate(b for b in bounds.items() if b[1]):
        for s in steps:
            ax.axvline(s + offset, color=f"C{k + 1}", ls=":", lw=1)
        ax.plot([], [], color=f"C{k + 1}", ls=":", label=f"stage ends ({run})")
    ax.legend(fontsize=8)


def loss_figure(records: list[tuple[RunSpec, dict[str, Any]]], runs: list[tuple[str, str]], seed: int = 0) -> Any:
    """Training loss (left) and its cross-entropy part (right) over optimizer steps; dotted lines end POCL stages.

    `records`: (spec, record) pairs (`runner.records_for`).
    `runs`: the (method, variant) pairs to draw; those without a record are left out.
    """
    import seaborn as sns
    plt = _pyplot()
    data, bounds = _curves(records, runs, "loss", seed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for ax, y in zip(axes, ("loss", "ce")):
        if len(data):
            sns.lineplot(data=data, x="step", y=y, hue="run", ax=ax)
        _mark_stages(ax, bounds, offset=-0.5)  # loss rows are 0-based step indices
        ax.set(xlabel="optimizer step", title={"loss": "loss (Eq. 1)", "ce": "cross-entropy on the reference"}[y])
    fig.tight_layout()
    return fig


def validation_figure(records: list[tuple[RunSpec, dict[str, Any]]], runs: list[tuple[str, str]], seed: int = 0) -> Any:
    """Validation greedy ROUGE-L (the paper's Fig. 3), or the validation loss when checkpoints are selected on it
    (Profile.select_metric), over optimizer steps, KD vs KD+POCL.

    `records`: (spec, record) pairs (`runner.records_for`).
    `runs`: the (method, variant) pairs to draw; those without a record are left out.
    """
    import seaborn as sns
    plt = _pyplot()
    data, bounds = _curves(records, runs, "valid", seed)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    y = "loss" if "loss" in data and "rouge_l" not in data else "rouge_l"
    if len(data):
        sns.lineplot(data=data, x="step", y=y, hue="run", style="run", markers=True, dashes=False, ax=ax)
    _mark_stages(ax, bounds)  # validation rows count the steps finished
    name = {"rouge_l": "validation ROUGE-L", "loss": "validation loss (reference CE, nats)"}[y]
    ax.set(xlabel="optimizer steps done", ylabel=name, title=f"{name} during training")
    fig.tight_layout()
    return fig


def training_log_figure(logs: dict[str, list[dict]]) -> Any:
    """One panel per step log (e.g. teacher SFT, student pre-training): loss over steps.

    `logs`: panel title -> its step log, rows with "step" and "loss" (cross-entropy, nats/token).
    """
    import seaborn as sns
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 3.4), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        sns.lineplot(data=pd.DataFrame(log), x="step", y="loss", ax=ax)
        ax.set(title=name, xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
    fig.tight_layout()
    return fig


def error_bar_note(n_seeds: pd.Series) -> str:
    """What the error bars are, for the figure itself: 'error bars: 95% CI over n = 5 training seeds'.

    `n_seeds`: the seed count of each bar (a `tables.summary` frame's n_seeds); NaN entries are ignored.
    Returns the note, with the range of n when the bars differ and " (none where n = 1)" when some bar has one seed; "no
    runs" when no count is given.
    """
    n = sorted({int(v) for v in n_seeds.dropna()})
    if not n:
        return "no runs"
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    note = f"error bars: 95% CI (Student t) over n = {seeds} training seed{'s' if n[-1] > 1 else ''}"
    return note + (" (none where n = 1)" if n[0] == 1 else "")


def grouped_bars(summary_df: pd.DataFrame, dataset: str = "Avg", title: str = "") -> Any:
    """Mean ROUGE-L per method (groups) and variant (bars) with 95% CI error bars over training seeds.

    `summary_df`: a `tables.summary` frame.
    `dataset`: the eval set drawn, or "Avg".
    `title`: the figure's title; "" = "ROUGE-L on <dataset>". The error bars' note (`error_bar_note`) goes below it.
    """
    import seaborn as sns
    plt = _pyplot()
    d = summary_df[summary_df.dataset == dataset]
    methods, variants = list(d.method.drop_duplicates()), list(d.variant.drop_duplicates())
    width = 0.8 / len(variants)
    colors = sns.color_palette("deep", len(variants))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(methods) * max(1, len(variants) / 2)), 3.8))
    for k, variant in enumerate(variants):
        sel = d[d.variant == variant].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + (k - (len(variants) - 1) / 2) * width
        ax.bar(x, sel["mean"], width, yerr=sel["ci95"].fillna(0.0), capsize=3, color=colors[k], label=variant)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set(ylabel=f"ROUGE-L ({dataset})", title=f"{title or f'ROUGE-L on {dataset}'}\n{error_bar_note(d['n_seeds'])}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def family_level_figure(examples: pd.DataFrame) -> Any:
    """How many rows of each task family (left) and level (right) each role holds.

    `examples`: one row per example with columns role, family and level (`notebook.examples_frame`).
    """
    import seaborn as sns
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1]})
    for ax, key in zip(axes, ("family", "level")):
        counts = pd.crosstab(examples["role"], examples[key]).reindex(examples["role"].drop_duplicates())
        sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, annot_kws={"fontsize": 7})
        ax.set(title=f"rows per role and {key}", xlabel=key, ylabel="")
    fig.tight_layout()
    return fig


def token_length_figure(examples: pd.DataFrame) -> Any:
    """Distribution of prompt and response lengths (tokens of the profile's tokenizer) per role.

    `examples`: one row per example with columns role, prompt_tokens and response_tokens (`notebook.examples_frame`);
    rows with NaN lengths (dropped as too long) are left out.
    """
    import seaborn as sns
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, key in zip(axes, ("prompt_tokens", "response_tokens")):
        sns.boxplot(data=examples.dropna(subset=[key]), x=key, y="role", color="#9ecae1", fliersize=2, ax=ax)
        ax.set(title=key.replace("_", " ") + (" (without EOS)" if key == "response_tokens" else ""), xlabel="tokens",
               ylabel="")
    fig.tight_layout()
    return fig


def prompt_length_figure(lengths: pd.DataFrame, limit: int = 256) -> Any:
    """Histogram of GPT-2 prompt lengths per real set, with MiniLLM's cut-off (prompts over `limit` are dropped).

    `lengths`: one row per prompt with columns role and gpt2_prompt_tokens.
    `limit`: the cut-off in GPT-2 tokens, drawn as a dashed line.
    """
    import seaborn as sns
    roles = list(lengths["role"].drop_duplicates())
    grid = sns.displot(data=lengths, x="gpt2_prompt_tokens", col="role", col_wrap=4, col_order=roles, bins=40,
                       height=2.4, aspect=1.3, facet_kws={"sharey": False})
    for ax in grid.axes.flat:
        ax.axvline(limit, color="crimson", linestyle="--", linewidth=1)
    grid.set_axis_labels("prompt length (GPT-2 tokens)", "rows")
    grid.figure.suptitle(f"Prompt lengths per set; dashed: MiniLLM's {limit}-token cut-off", y=1.02)
    return grid.figure


def loss_curves_figure(logs: dict[str, list[dict]], title: str) -> Any:
    """Loss per optimizer step of several short runs on one axis (e.g. teacher SFT and a short KD run).

    `logs`: curve label -> its step log, rows with "loss" (one per optimizer step, in order).
    """
    import seaborn as sns
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, log in logs.items():
        sns.lineplot(x=np.arange(len(log)), y=[row["loss"] for row in log], ax=ax, label=name, marker="o", markersize=3)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    fig.tight_layout()
    return fig


# ---- The main figure: Table 1's Avg ROUGE-L per method, baseline beside +POCL, under each protocol ----------------

def main_figure(avg: pd.DataFrame, title: str = "") -> Any:
    """The collection's designated main figure: Avg ROUGE-L (mean over the five eval sets) of every Table 1 method,
    its baseline and +POCL as paired bars with 95% CI error bars over training seeds, one panel per evaluation
    protocol (a row of panels per training protocol when `avg` has several), and +POCL − baseline (paired by seed)
    written above each pair.

    `avg`: a `reference.avg_table` frame (columns protocol, method, n_seeds, baseline, baseline_ci, pocl, pocl_ci, diff,
    diff_ci, verdict); methods without +POCL (SFT, SeqKD) get one bar.
    `title`: the figure's title; "" = "Avg ROUGE-L over the five eval sets: baseline vs +POCL".
    Returns the matplotlib Figure.
    Raises ValueError: `avg` has no rows.
    """
    import seaborn as sns
    if avg.empty:
        raise ValueError("main_figure: the Avg table has no rows (no finished Table 1 runs)")
    plt = _pyplot()
    if "training" not in avg.columns:
        avg = avg.assign(training="")
    trainings = list(avg.training.drop_duplicates())
    protocols = list(avg.protocol.drop_duplicates())
    methods = list(avg.method.drop_duplicates())
    base_color, pocl_color = sns.color_palette("deep", 2)
    fig, axes = plt.subplots(len(trainings), len(protocols), figsize=(5.2 * len(protocols), 3.9 * len(trainings)),
                             sharey=True, squeeze=False)
    width = 0.38
    for row, training in zip(axes, trainings):
        for ax, protocol in zip(row, protocols):
            d = avg[(avg.training == training) & (avg.protocol == protocol)].set_index("method").reindex(methods)
            x = np.arange(len(methods))
            has_pocl = d["pocl"].notna().to_numpy()
            base_x = np.where(has_pocl, x - width / 2, x)
            ax.bar(base_x, d["baseline"], width, yerr=d["baseline_ci"].fillna(0.0), capsize=2.5, color=base_color,
                   label="baseline")
            ax.bar(x[has_pocl] + width / 2, d["pocl"][has_pocl], width, yerr=d["pocl_ci"][has_pocl].fillna(0.0),
                   capsize=2.5, color=pocl_color, label="+POCL")
            for xi, (_, r) in zip(x, d.iterrows()):
                if not np.isnan(r["diff"]):
                    top = max(r["baseline"] + np.nan_to_num(r["baseline_ci"]),
                              r["pocl"] + np.nan_to_num(r["pocl_ci"]))
                    ax.annotate(f"{r['diff']:+.1f}".replace("-", "−"), (xi, top), textcoords="offset points",
                                xytext=(0, 3), ha="center", fontsize=7)
            ax.set_xticks(x, methods, rotation=45, ha="right")
            panel = "sampled protocol (the paper's)" if protocol == "sampled" else f"{protocol} protocol"
            ax.set_title(f"training: {training}; {panel}" if training else panel, fontsize=10)
            ax.set_ylabel("Avg ROUGE-L" if ax is row[0] else "")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    head = title or "Avg ROUGE-L over the five eval sets: baseline vs +POCL"
    fig.suptitle(f"{head}\n{error_bar_note(avg['n_seeds'])}; numbers: +POCL − baseline, paired by seed",
                 fontsize=9)
    fig.tight_layout()
    return fig


# ---- per eval row: where POCL's difference sits -------------------------------------------------------------------


def per_row_gap_figure(by_difficulty: pd.DataFrame, by_late: pd.DataFrame, protocol: str, title: str = "") -> Any:
    """POCL - baseline on the eval rows, by true difficulty (left) and by whether a row needs a word training shows
    only at its top level (right; its label says so when no row does); one bar colour per comparison, 95% CI error
    bars over the training seeds.

    `by_difficulty`: `frames.per_row_gap(..., by="difficulty")` rows of each comparison, with a column "comparison"
    (e.g. "KLD").
    `by_late`: the same with by="late_words".
    `protocol`: the evaluation protocol the scores come from ("greedy" or "sampled"), for the axis label.
    `title`: the figure's title; "" = "+POCL − baseline per eval row".
    """
    import seaborn as sns
    plt = _pyplot()
    comparisons = list(pd.concat([by_difficulty, by_late]).comparison.drop_duplicates())
    colors = sns.color_palette("deep", max(1, len(comparisons)))
    width = 0.8 / max(1, len(comparisons))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), gridspec_kw={"width_ratios": [3, 1.4]}, sharey=True)
    for ax, frame, by, names in ((axes[0], by_difficulty, "difficulty", None),
                                 (axes[1], by_late, "late_words", {False: "no", True: "yes"})):
        groups = sorted(frame[by].drop_duplicates()) if len(frame) else []
        for k, comp in enumerate(comparisons):
            sel = frame[frame.comparison == comp].set_index(by).reindex(groups)
            x = np.arange(len(groups)) + (k - (len(comparisons) - 1) / 2) * width
            ax.bar(x, sel["diff"], width, yerr=sel["ci95"].fillna(0.0), capsize=3, color=colors[k], label=comp)
        ax.set_xticks(np.arange(len(groups)), [names[g] if names else f"{g:g}" for g in groups])
        ax.axhline(0.0, color="0.3", lw=0.8)
    axes[0].set(xlabel="true difficulty of the eval row", ylabel=f"+POCL − baseline, ROUGE-L ({protocol})")
    none_late = len(by_late) > 0 and not by_late["late_words"].astype(bool).any()  # a world without such words
    axes[1].set(xlabel="needs a word seen only at the top level" + ("\n(no eval row does)" if none_late else ""))
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    both = pd.concat([by_difficulty, by_late])
    n = both["n_seeds"] if len(both) else pd.Series([], dtype=float)  # real data: no true difficulty, no groups
    fig.suptitle(f"{title or '+POCL − baseline per eval row'}\n{error_bar_note(n)}", fontsize=10)
    fig.tight_layout()
    return fig
