"""Tables and figures from finished runs: tidy frames, mean +- 95% CI over training seeds, paired POCL-vs-baseline
differences, and the paper's numbers beside ours (always labelled as the paper's)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..experiment.config import RunSpec
from ..data import EVAL_SETS
from ..experiment.results import REPO_ROOT, atomic_write_text
from ..stats import mean_ci, paired_diff

FIGURES = REPO_ROOT / "figures"


def tidy(records: list[tuple[RunSpec, dict[str, Any]]], protocol: str = "sampled") -> pd.DataFrame:
    """One row per (run, eval set): method, variant (the table's label), seed, dataset, rouge_l.

    protocol "sampled": the paper's (mean over sampling seeds at temperature 1); "greedy": the deterministic greedy
    ROUGE-L (runner.greedy_scores), for the runs that have it."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"tidy: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows = []
    for spec, rec in records:
        metrics = rec["metrics"].get(PROTOCOLS[protocol]) or {}
        for dataset in EVAL_SETS if metrics else ():
            m = metrics[dataset]
            rows.append({"method": spec.method, "variant": spec.variant or ("+POCL" if spec.pocl else "baseline"),
                         "seed": spec.seed, "dataset": dataset, "rouge_l": m["mean"], "sampling_std": m.get("std", 0.0),
                         "run_key": rec["key"], "wall_s": rec["wall_s"], "git_commit": rec["git_commit"]})
    columns = ["method", "variant", "seed", "dataset", "rouge_l", "sampling_std", "run_key", "wall_s", "git_commit"]
    return pd.DataFrame(rows, columns=columns)


PROTOCOLS = {"sampled": "eval", "greedy": "greedy"}  # protocol -> the key of a record's metrics


def with_average(df: pd.DataFrame) -> pd.DataFrame:
    """Add the per-run average over the five eval sets as dataset 'Avg' (as Tables 1 and 4 print)."""
    keys = ["method", "variant", "seed"]
    avg = df.groupby(keys, sort=False, as_index=False)["rouge_l"].mean().assign(dataset="Avg")
    return pd.concat([df, avg], ignore_index=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% CI half-width and seed count per (method, variant, dataset)."""
    out = []
    for (method, variant, dataset), g in with_average(df).groupby(["method", "variant", "dataset"], sort=False):
        m, half, n = mean_ci(g["rouge_l"].to_numpy())
        out.append({"method": method, "variant": variant, "dataset": dataset, "mean": m, "ci95": half, "n_seeds": n})
    return pd.DataFrame(out)


def wide(summary_df: pd.DataFrame, fmt: str = "{mean:.2f} ± {ci95:.2f}") -> pd.DataFrame:
    """Rows = method/variant, columns = datasets (+ Avg), cells 'mean ± CI'."""
    cells = summary_df.assign(cell=[fmt.format(mean=r["mean"], ci95=0.0 if np.isnan(r["ci95"]) else r["ci95"])
                                    for _, r in summary_df.iterrows()])
    table = cells.pivot_table(index=["method", "variant"], columns="dataset", values="cell", aggfunc="first",
                              sort=False)
    cols = [c for c in list(EVAL_SETS) + ["Avg"] if c in table.columns]
    return table[cols]


def paired(df: pd.DataFrame, base: tuple[str, str], other: tuple[str, str]) -> pd.DataFrame:
    """other - base per dataset (+ Avg), paired by training seed, with its 95% CI and the seed count."""
    d = with_average(df)
    out = []
    for dataset in list(EVAL_SETS) + ["Avg"]:
        sel = d[d.dataset == dataset]
        a = by_seed(sel, *base)
        b = by_seed(sel, *other)
        m, half, n = paired_diff(a, b)
        out.append({"comparison": f"{other[0]} {other[1]} − {base[0]} {base[1]}", "dataset": dataset,
                    "diff": m, "ci95": half, "n_pairs": n,
                    "significant": bool(n > 1 and not np.isnan(half) and abs(m) > half)})
    return pd.DataFrame(out)


def by_seed(df: pd.DataFrame, method: str, variant: str) -> dict[int, float]:
    """seed -> rouge_l of one (method, variant) in a tidy frame already cut to one dataset."""
    g = df[(df.method == method) & (df.variant == variant)]
    return dict(zip(g.seed.astype(int), g.rouge_l.astype(float)))


# ---- the paper's numbers -----------------------------------------------------------------------------------------


def paper_table(n: int, family: str = "gpt2") -> pd.DataFrame:
    """Table n of the paper as printed (long form), for one model family."""
    with resources.files("pocl_utils").joinpath(f"paper/table{n}.csv").open() as f:
        t = pd.read_csv(f, dtype={"rouge_l": str})
    t["rouge_l"] = t["rouge_l"].astype(float)
    return t[t.family == family]


def paper_diff(table: int, base: tuple[str, str], other: tuple[str, str], family: str = "gpt2") -> dict[str, float]:
    """The paper's other - base per dataset, from its printed table (NaN where it prints no such cell)."""
    t = paper_table(table, family)
    get = lambda m, v: t[(t.method == m) & (t.variant == v)].set_index("dataset")["rouge_l"]  # noqa: E731
    a, b = get(*base), get(*other)
    out = {ds: float(b[ds] - a[ds]) if ds in a and ds in b else np.nan for ds in list(EVAL_SETS) + ["Avg"]}
    if np.isnan(out["Avg"]) and all(ds in a and ds in b for ds in EVAL_SETS):
        out["Avg"] = float(np.mean([b[ds] - a[ds] for ds in EVAL_SETS]))  # derived: the mean of its five differences
    return out


def compare_with_paper(df: pd.DataFrame, table: int, comparisons: list[tuple[tuple[str, str], tuple[str, str]]],
                       paper_variants: dict[str, str] | None = None, family: str = "gpt2") -> pd.DataFrame:
    """Our paired differences beside the paper's, per dataset, with whether the direction agrees.

    `paper_variants` maps our variant labels to the paper's where they differ (e.g. our "+POCL (ratio 0-0)" is the
    paper's GKD default)."""
    rename = paper_variants or {}
    out = []
    for base, other in comparisons:
        ours = paired(df, base, other)
        theirs = paper_diff(table, (base[0], rename.get(base[1], base[1])), (other[0], rename.get(other[1], other[1])),
                            family)
        for _, r in ours.iterrows():
            p = theirs.get(r["dataset"], np.nan)
            agree = "" if np.isnan(p) or np.isnan(r["diff"]) else ("yes" if np.sign(p) == np.sign(r["diff"]) else "no")
            out.append({**r.to_dict(), "paper_diff": p, "direction_agrees": agree})
    return pd.DataFrame(out)


# ---- writing -----------------------------------------------------------------------------------------------------


def save_table(df: pd.DataFrame, name: str, folder: Path) -> Path:
    """Write a table as CSV and Markdown (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.csv", df.to_csv(index=not isinstance(df.index, pd.RangeIndex)))
    atomic_write_text(folder / f"{name}.md", df.to_markdown(floatfmt=".2f") + "\n")
    return folder / f"{name}.csv"


def save_figure(fig, name: str, folder: Path | None = None) -> Path:
    """Save a matplotlib figure as PNG and PDF."""
    folder = Path(folder or FIGURES)
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):  # no creation date in the PDF, so a re-run regenerates the committed file exactly
        metadata = {"CreationDate": None} if ext == "pdf" else None
        fig.savefig(folder / f"{name}.{ext}", bbox_inches="tight", dpi=150, metadata=metadata)
    return folder / f"{name}.png"


# =================================================================================================================
# Beside the paper: which printed table holds each grid, and our rows next to its numbers
# =================================================================================================================

# Grid name (experiments.GRIDS) -> the paper's tables that print it. Table 1 is GPT-2 and Table 4 the same for OPT,
# so filtering by family picks the right one; Tables 2/5 and 3/6 split one ablation over datasets or methods.
PAPER_TABLES: dict[str, tuple[int, ...]] = {"table1": (1, 4), "ranking": (2, 5), "adaptive": (3, 6), "order": (7,),
                                            "temperature": (8,), "ratio": (9,), "subsets": ()}
NOT_IN_PAPER = "(not in the paper)"
# Our variant label -> the paper's, per (grid, method), where the paper prints the same run under another name.
# GKD's default is alpha = 0 -> 0, and Table 9's GKD row "ratio 0.3-0" carries the default numbers (Table 1's
# GKD+POCL row, up to rounding), so it is our "ratio 0-0"; our GKD "ratio 0.3-0" (the off-policy schedule on GKD)
# has no printed counterpart.
PAPER_VARIANTS: dict[tuple[str, str], dict[str, str]] = {
    ("ratio", "GKD"): {"+POCL (ratio 0-0)": "+POCL (ratio 0.3-0)", "+POCL (ratio 0.3-0)": NOT_IN_PAPER}}


def reference_tidy(refs: dict[str, dict[str, Any]], protocol: str = "sampled") -> pd.DataFrame:
    """runner.reference_scores(ws) as tidy rows (method = 'Teacher' / 'Student (init)', variant 'baseline', seed 0)."""
    key = PROTOCOLS[protocol]
    rows = [{"method": name, "variant": "baseline", "seed": 0, "dataset": ds,
             "rouge_l": rec["metrics"][key][ds]["mean"], "sampling_std": rec["metrics"][key][ds].get("std", 0.0),
             "run_key": rec["key"], "wall_s": rec["wall_s"], "git_commit": rec["git_commit"]}
            for name, rec in refs.items() if rec["metrics"].get(key) for ds in EVAL_SETS]
    return pd.DataFrame(rows)


def baseline_comparisons(df: pd.DataFrame) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Every (method, variant) of a tidy frame against the same method's baseline, in order of appearance."""
    pairs = df[["method", "variant"]].drop_duplicates()
    have = set(map(tuple, pairs.to_numpy()))
    return [((m, "baseline"), (m, v)) for m, v in pairs.to_numpy() if v != "baseline" and (m, "baseline") in have]


def _direction(ours: float, paper: float) -> str:
    if np.isnan(ours) or np.isnan(paper):
        return ""
    return "yes" if np.sign(ours) == np.sign(paper) else "no"


def paper_comparison(df: pd.DataFrame, name: str, family: str = "gpt2") -> pd.DataFrame:
    """Paired differences variant - baseline (95% CI over training seeds) for grid `name`, beside the paper's own
    difference from whichever of its tables prints that cell, and whether the two have the same sign."""
    out = []
    for method in df.method.drop_duplicates():
        comps = [c for c in baseline_comparisons(df) if c[0][0] == method]
        if not comps:
            continue
        rename = PAPER_VARIANTS.get((name, method))
        tables = [compare_with_paper(df, t, comps, rename, family) for t in PAPER_TABLES[name]]
        if not tables:  # beyond the paper: our differences only
            tables = [pd.concat([paired(df, b, o) for b, o in comps], ignore_index=True).assign(paper_diff=np.nan)]
        frame = tables[0]
        for other in tables[1:]:  # same rows in the same order; take the first table that prints the cell
            frame["paper_diff"] = frame["paper_diff"].fillna(other["paper_diff"])
        frame["paper_diff"] = _fill_avg(frame, len(comps))
        frame["method"] = method
        frame["variant"] = np.repeat([o[1] for _, o in comps], len(frame) // len(comps))
        out.append(frame)
    if not out:
        return pd.DataFrame(columns=["comparison", "dataset", "diff", "ci95", "n_pairs", "paper_diff",
                                     "direction_agrees", "method", "variant"])
    frame = pd.concat(out, ignore_index=True)
    frame["direction_agrees"] = [_direction(o, p) for o, p in zip(frame["diff"], frame["paper_diff"])]
    return frame


def _fill_avg(frame: pd.DataFrame, n_comps: int) -> np.ndarray:
    """Per comparison (blocks of five sets + Avg): a missing Avg becomes the mean of the five paper differences, as
    paper_diff derives it inside one table (Tables 2 and 5 split one comparison's sets between them)."""
    diffs = frame["paper_diff"].to_numpy(dtype=float).reshape(n_comps, -1).copy()  # [comparison, dataset]
    avg = list(frame["dataset"][: diffs.shape[1]]).index("Avg")
    five = np.delete(diffs, avg, axis=1)
    fill = np.isnan(diffs[:, avg]) & ~np.isnan(five).any(axis=1)
    diffs[fill, avg] = five[fill].mean(axis=1)
    return diffs.reshape(-1)


def paired_wide(comparison: pd.DataFrame) -> pd.DataFrame:
    """Rows = comparison, columns = datasets; cells 'diff ± CI | paper x' with ✓/✗ when the signs agree/differ."""
    def cell(r) -> str:
        text = f"{r['diff']:+.2f} ± {0.0 if np.isnan(r['ci95']) else r['ci95']:.2f}"
        if not np.isnan(r["paper_diff"]):
            text += f" | paper {r['paper_diff']:+.2f}" + {"yes": " ✓", "no": " ✗"}.get(r["direction_agrees"], "")
        return text
    table = comparison.assign(cell=[cell(r) for _, r in comparison.iterrows()]).pivot_table(
        index="comparison", columns="dataset", values="cell", aggfunc="first", sort=False)
    return table[[c for c in list(EVAL_SETS) + ["Avg"] if c in table.columns]]


def paper_values(name: str, family: str = "gpt2") -> dict[tuple[str, str, str], float]:
    """(method, paper variant, dataset) -> the paper's ROUGE-L over the tables of grid `name`; 'Avg' is derived as
    the mean of the five sets where the paper does not print it."""
    values: dict[tuple[str, str, str], float] = {}
    for t in PAPER_TABLES[name]:
        for r in paper_table(t, family).itertuples():
            values.setdefault((r.method, r.variant, r.dataset), float(r.rouge_l))
    for m, v in {(m, v) for m, v, _ in values}:
        cells = [values.get((m, v, ds)) for ds in EVAL_SETS]
        if (m, v, "Avg") not in values and all(c is not None for c in cells):
            values[(m, v, "Avg")] = float(np.mean(cells))
    return values


def beside_paper(summary_df: pd.DataFrame, comparison: pd.DataFrame, name: str, family: str = "gpt2") -> pd.DataFrame:
    """Long table: our mean ± CI, the paper's number, and (for non-baseline rows) both differences to the baseline."""
    values = paper_values(name, family)
    paper = [values.get((m, PAPER_VARIANTS.get((name, m), {}).get(v, v), ds), np.nan)
             for m, v, ds in summary_df[["method", "variant", "dataset"]].to_numpy()]
    out = summary_df.assign(paper=paper)
    if len(comparison):
        diffs = comparison[["method", "variant", "dataset", "diff", "ci95", "paper_diff", "direction_agrees"]]
        out = out.merge(diffs.rename(columns={"ci95": "diff_ci95"}), on=["method", "variant", "dataset"], how="left")
    return out


def beside_wide(beside: pd.DataFrame) -> pd.DataFrame:
    """Rows = method/variant, columns = datasets; cells 'ours ± CI | paper x', ✓/✗ for the direction of the
    difference to the baseline."""
    def cell(r) -> str:
        text = f"{r['mean']:.2f} ± {0.0 if np.isnan(r['ci95']) else r['ci95']:.2f}"
        if not np.isnan(r["paper"]):
            text += f" | paper {r['paper']:.2f}"
        agrees = r.get("direction_agrees")  # NaN for baselines (no difference to take)
        return text + ({"yes": " ✓", "no": " ✗"}.get(agrees, "") if isinstance(agrees, str) else "")
    table = beside.assign(cell=[cell(r) for _, r in beside.iterrows()]).pivot_table(
        index=["method", "variant"], columns="dataset", values="cell", aggfunc="first", sort=False)
    return table[[c for c in list(EVAL_SETS) + ["Avg"] if c in table.columns]]


# =================================================================================================================
# Frames behind the figures: examples, rankings, stages
# =================================================================================================================


def set_table(examples: pd.DataFrame) -> pd.DataFrame:
    """Per role: rows, rows kept after the length filter, families, levels, mean difficulty, token lengths."""
    g = examples.groupby("role", sort=False)
    return pd.DataFrame({
        "rows": g.size(), "kept": g["kept"].sum(), "families": g["family"].nunique(),
        "levels": g["level"].agg(lambda s: f"{s.min():.0f}-{s.max():.0f}" if s.notna().any() else "-"),
        "difficulty_mean": g["difficulty"].mean(), "prompt_tokens_mean": g["prompt_tokens"].mean(),
        "prompt_tokens_max": g["prompt_tokens"].max(), "response_tokens_mean": g["response_tokens"].mean(),
        "response_tokens_max": g["response_tokens"].max()})


def ranking_frame(ranking, rows: list[dict], n_subsets: int) -> pd.DataFrame:
    """One row per ranked training sample: its scores, its rank under each measurer (1 = easiest), its POCL subset
    (1..n by the fused ranking), the world's true difficulty (NaN for real data) and its text.

    `ranking.ids` are positions in `rows` (= ws.sets["train"]), so the row fields join by id."""
    from ..curriculum import partition
    ids = np.asarray(ranking.ids)
    frame = pd.DataFrame({"id": ids, "rouge_l": ranking.rouge_l, "ce": ranking.ce, "fused": ranking.fused,
                          "greedy": ranking.texts if ranking.texts is not None else [""] * len(ids)})
    for method in ("rouge_l", "ce", "fusion"):
        position = pd.Series(np.arange(1, len(ids) + 1), index=ranking.order(method))
        frame[f"rank_{method}"] = position.loc[ids].to_numpy()
    subset = {int(i): k + 1 for k, part in enumerate(partition(ranking.order("fusion"), n_subsets)) for i in part}
    frame["subset"] = [subset[int(i)] for i in ids]
    for key in ("family", "level", "instruction", "input", "output"):
        frame[key] = [rows[i].get(key, "") for i in ids]
    frame["true_difficulty"] = [float(rows[i].get("difficulty", np.nan)) for i in ids]
    return frame


def rank_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho between each measurer and the true difficulty; rho > 0 = the measurer calls harder samples hard.

    Computed on the scores oriented harder = larger (-ROUGE-L, CE, -FR), so tied scores share their mean rank; the
    rank_* columns break ties by index (the order the curriculum uses) and would add index noise to rho."""
    from scipy.stats import spearmanr
    out = []
    truth = frame["true_difficulty"].to_numpy()
    harder = {"rouge_l": -frame["rouge_l"], "ce": frame["ce"], "fusion": -frame["fused"]}
    for method, score in harder.items():
        score = score.to_numpy()
        ok = not np.isnan(truth).any() and np.ptp(truth) > 0 and np.ptp(score) > 0  # rho is undefined otherwise
        rho, p = spearmanr(score, truth) if ok else (np.nan, np.nan)
        out.append({"ranking": method, "spearman_rho": float(rho), "p_value": float(p), "n": len(frame)})
    return pd.DataFrame(out)


def extremes(frame: pd.DataFrame, n: int, method: str = "fusion") -> pd.DataFrame:
    """The n easiest and n hardest samples by one measurer, with the student's greedy output beside the reference."""
    cols = ["which", f"rank_{method}", "true_difficulty", "family", "instruction", "input", "output", "greedy",
            "rouge_l", "ce"]
    ranked = frame.sort_values(f"rank_{method}")
    return pd.concat([ranked.head(n).assign(which="easiest"), ranked.tail(n).assign(which="hardest")])[cols]


def stage_frame(stages: list) -> pd.DataFrame:
    """curriculum.Stage objects, or a record's metrics.train.stages dicts, as rows: stage, n_samples, tau, alpha,
    steps."""
    rows = []
    for s in stages:
        if isinstance(s, dict):
            rows.append({k: s[k] for k in ("stage", "n_samples", "tau", "alpha", "steps")})
        else:
            rows.append({"stage": s.index, "n_samples": len(s.samples), "tau": s.tau, "alpha": s.alpha,
                         "steps": s.steps})
    return pd.DataFrame(rows)


def find_record(records: list[tuple[RunSpec, dict[str, Any]]], method: str, variant: str, seed: int = 0) -> dict | None:
    """The record of one (method, variant, seed) among runner.records_for pairs, or None."""
    for spec, rec in records:
        label = spec.variant or ("+POCL" if spec.pocl else "baseline")  # as tidy() labels it
        if spec.method == method and label == variant and spec.seed == seed:
            return rec
    return None


# =================================================================================================================
# Figures (seaborn). Each function returns a matplotlib Figure; save it with save_figure and close it.
# =================================================================================================================


def _pyplot():
    """matplotlib.pyplot, imported when a figure is first drawn. The backend is matplotlib's choice (inline in Jupyter,
    Agg without a display, or MPLBACKEND): a library does not pick it for the application."""
    import matplotlib.pyplot as plt
    return plt


def curriculum_figure(stages: list, title: str = "POCL curriculum") -> Any:
    """Baby Step plan: per stage the samples stacked by subset d_j (steps on top), tau_i (Eq. 3) and alpha_i (Eq. 4)."""
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
    Spearman's rho (rank_agreement) in each panel."""
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


def ranking_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The committed `ranking_rows.csv`: one row per training example with its family, true difficulty, the student's
    greedy ROUGE-L and CE, and its rank under each measurer (1 = easiest; tied scores share their mean rank, so
    Spearman(rank_fusion, true_difficulty) is exactly premise P2's)."""
    from scipy.stats import rankdata
    return pd.DataFrame({"index": frame["id"], "family": frame["family"], "true_difficulty": frame["true_difficulty"],
                         "rouge_l": frame["rouge_l"], "ce": frame["ce"],
                         "rank_rouge_l": rankdata(-frame["rouge_l"].to_numpy(), method="average"),
                         "rank_ce": rankdata(frame["ce"].to_numpy(), method="average"),
                         "rank_fusion": rankdata(-frame["fused"].to_numpy(), method="average")})


def subset_difficulty_figure(frame: pd.DataFrame) -> Any:
    """The true-difficulty mix of each POCL subset d_1..d_n (fused ranking): share of each level per subset."""
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
    """Training loss (left) and its cross-entropy part (right) over optimizer steps; dotted lines end POCL stages."""
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
    """Validation greedy ROUGE-L over optimizer steps (the paper's Fig. 3), KD vs KD+POCL."""
    import seaborn as sns
    plt = _pyplot()
    data, bounds = _curves(records, runs, "valid", seed)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(data):
        sns.lineplot(data=data, x="step", y="rouge_l", hue="run", style="run", markers=True, dashes=False, ax=ax)
    _mark_stages(ax, bounds)  # validation rows count the steps finished
    ax.set(xlabel="optimizer steps done", ylabel="validation ROUGE-L", title="validation ROUGE-L during training")
    fig.tight_layout()
    return fig


def training_log_figure(logs: dict[str, list[dict]]) -> Any:
    """One panel per step log (e.g. teacher SFT, student pre-training): loss over steps."""
    import seaborn as sns
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 3.4), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        sns.lineplot(data=pd.DataFrame(log), x="step", y="loss", ax=ax)
        ax.set(title=name, xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
    fig.tight_layout()
    return fig


def error_bar_note(n_seeds: pd.Series) -> str:
    """What the error bars are, for the figure itself: 'error bars: 95% CI over n = 5 training seeds'."""
    n = sorted({int(v) for v in n_seeds.dropna()})
    if not n:
        return "no runs"
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}"
    note = f"error bars: 95% CI (Student t) over n = {seeds} training seed{'s' if n[-1] > 1 else ''}"
    return note + (" (none where n = 1)" if n[0] == 1 else "")


def grouped_bars(summary_df: pd.DataFrame, dataset: str = "Avg", title: str = "") -> Any:
    """Mean ROUGE-L per method (groups) and variant (bars) with 95% CI error bars over training seeds."""
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
    """How many rows of each task family (left) and level (right) each role holds."""
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
    """Distribution of prompt and response lengths (tokens of the profile's tokenizer) per role."""
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
    """Histogram of GPT-2 prompt lengths per real set, with MiniLLM's cut-off (prompts over `limit` are dropped)."""
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
    """Loss per optimizer step of several short runs on one axis (e.g. teacher SFT and a short KD run)."""
    import seaborn as sns
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, log in logs.items():
        sns.lineplot(x=np.arange(len(log)), y=[row["loss"] for row in log], ax=ax, label=name, marker="o", markersize=3)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    fig.tight_layout()
    return fig
