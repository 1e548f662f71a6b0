"""The paper's printed numbers (pocl_utils/paper/table*.csv) and ours beside them: which printed table holds each
grid, the paper's differences, our paired differences next to them and whether their directions agree. The paper's
numbers are always labelled as the paper's.

May import the method's `data` and `analysis.tables`; nothing of `training`, `modeling` or `notebook`.
"""
from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd

from ..data import EVAL_SETS
from .tables import dataset_columns, paired


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


def paper_table(n: int, family: str = "gpt2") -> pd.DataFrame:
    """Table n of the paper as printed (long form), for one model family.

    `n`: the paper's table number (pocl_utils/paper/table<n>.csv).
    `family`: the model family, e.g. "gpt2".
    Returns its rows of that family, columns table, family, teacher_params, student_params, method, variant, dataset and
    rouge_l (the printed ROUGE-L, float).
    """
    with resources.files("pocl_utils").joinpath(f"paper/table{n}.csv").open() as f:
        t = pd.read_csv(f, dtype={"rouge_l": str})
    t["rouge_l"] = t["rouge_l"].astype(float)
    return t[t.family == family]


def paper_diff(table: int, base: tuple[str, str], other: tuple[str, str], family: str = "gpt2") -> dict[str, float]:
    """The paper's other - base per dataset, from its printed table (NaN where it prints no such cell).

    `base`: the (method, paper variant) subtracted.
    `other`: the (method, paper variant) compared with it.
    Returns dataset -> difference for the five eval sets and "Avg"; where the table prints no Avg but all five sets,
    "Avg" is derived as the mean of the five differences.
    """
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

    `df`: a tidy frame (`tables.tidy`).
    `paper_variants`: maps our variant labels to the paper's where they differ (e.g. our "+POCL (ratio 0-0)" is the
    paper's GKD default); None = the same labels.
    Returns `tables.paired`'s rows for each comparison plus paper_diff (NaN where the paper prints no cell) and
    direction_agrees ("yes", "no", or "" when either difference is NaN).
    """
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


def baseline_comparisons(df: pd.DataFrame) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Every (method, variant) of a tidy frame against the same method's baseline, in order of appearance.

    `df`: a tidy frame (`tables.tidy`).
    Returns ((method, "baseline"), (method, variant)) pairs for every non-baseline variant whose method has a baseline.
    """
    pairs = df[["method", "variant"]].drop_duplicates()
    have = set(map(tuple, pairs.to_numpy()))
    return [((m, "baseline"), (m, v)) for m, v in pairs.to_numpy() if v != "baseline" and (m, "baseline") in have]


def _direction(ours: float, paper: float) -> str:
    if np.isnan(ours) or np.isnan(paper):
        return ""
    return "yes" if np.sign(ours) == np.sign(paper) else "no"


def paper_comparison(df: pd.DataFrame, name: str, family: str = "gpt2") -> pd.DataFrame:
    """Paired differences variant - baseline (95% CI over training seeds) for grid `name`, beside the paper's own
    difference from whichever of its tables prints that cell, and whether the two have the same sign.

    A missing paper Avg is the mean of the comparison's five paper differences (even when two tables split them).

    `df`: a tidy frame (`tables.tidy`) of the grid's runs.
    `name`: the grid (a key of PAPER_TABLES); a grid the paper does not print gets NaN paper differences.
    Returns `tables.paired`'s rows for each comparison with the baseline, plus paper_diff, direction_agrees ("yes",
    "no", or "" when either is NaN), method and variant; an empty frame when no method has a baseline and another
    variant.
    """
    out = []
    for method in df.method.drop_duplicates():
        comps = [c for c in baseline_comparisons(df) if c[0][0] == method]
        if not comps:
            continue
        rename = PAPER_VARIANTS.get((name, method))
        tables = [compare_with_paper(df, t, comps, rename, family) for t in PAPER_TABLES.get(name, ())]
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
    """Rows = comparison, columns = datasets; cells 'diff ± CI | paper x' with ✓/✗ when the signs agree/differ.

    `comparison`: a `compare_with_paper` or `paper_comparison` frame.
    Returns a frame indexed by comparison, one string column per eval set present, then 'Avg'; a NaN CI is written as 0,
    and the paper's part only where it prints the cell.
    """
    def cell(r) -> str:
        text = f"{r['diff']:+.2f} ± {0.0 if np.isnan(r['ci95']) else r['ci95']:.2f}"
        if not np.isnan(r["paper_diff"]):
            text += f" | paper {r['paper_diff']:+.2f}" + {"yes": " ✓", "no": " ✗"}.get(r["direction_agrees"], "")
        return text
    table = comparison.assign(cell=[cell(r) for _, r in comparison.iterrows()]).pivot_table(
        index="comparison", columns="dataset", values="cell", aggfunc="first", sort=False)
    return table[dataset_columns(table.columns)]


def paper_values(name: str, family: str = "gpt2") -> dict[tuple[str, str, str], float]:
    """(method, paper variant, dataset) -> the paper's ROUGE-L over the tables of grid `name`; 'Avg' is derived as
    the mean of the five sets where the paper does not print it.

    Returns the dict; where several tables print a cell, the first in PAPER_TABLES[name] wins. Empty for a grid the
    paper does not print.
    """
    values: dict[tuple[str, str, str], float] = {}
    for t in PAPER_TABLES.get(name, ()):
        for r in paper_table(t, family).itertuples():
            values.setdefault((r.method, r.variant, r.dataset), float(r.rouge_l))
    for m, v in {(m, v) for m, v, _ in values}:
        cells = [values.get((m, v, ds)) for ds in EVAL_SETS]
        if (m, v, "Avg") not in values and all(c is not None for c in cells):
            values[(m, v, "Avg")] = float(np.mean(cells))
    return values


def beside_paper(summary_df: pd.DataFrame, comparison: pd.DataFrame, name: str, family: str = "gpt2") -> pd.DataFrame:
    """Long table: our mean ± CI, the paper's number, and (for non-baseline rows) both differences to the baseline.

    `summary_df`: a `tables.summary` frame of the grid's runs.
    `comparison`: its `paper_comparison` frame (may be empty: no difference columns are added then).
    Returns `summary_df` plus paper (the paper's ROUGE-L, NaN where not printed) and, when `comparison` has rows, diff,
    diff_ci95, paper_diff and direction_agrees (NaN on baseline rows).
    """
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
    difference to the baseline.

    `beside`: a `beside_paper` frame.
    Returns a frame indexed by (method, variant), one string column per eval set present, then 'Avg'.
    """
    def cell(r) -> str:
        text = f"{r['mean']:.2f} ± {0.0 if np.isnan(r['ci95']) else r['ci95']:.2f}"
        if not np.isnan(r["paper"]):
            text += f" | paper {r['paper']:.2f}"
        agrees = r.get("direction_agrees")  # NaN for baselines (no difference to take)
        return text + ({"yes": " ✓", "no": " ✗"}.get(agrees, "") if isinstance(agrees, str) else "")
    table = beside.assign(cell=[cell(r) for _, r in beside.iterrows()]).pivot_table(
        index=["method", "variant"], columns="dataset", values="cell", aggfunc="first", sort=False)
    return table[dataset_columns(table.columns)]
