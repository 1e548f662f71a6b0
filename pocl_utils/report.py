"""Tables and figures from finished runs: tidy frames, mean +- 95% CI over training seeds, paired POCL-vs-baseline
differences, and the paper's numbers beside ours (always labelled as the paper's)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import RunSpec
from .data import EVAL_SETS
from .results import REPO_ROOT, atomic_write_text, mean_ci, paired_diff

FIGURES = REPO_ROOT / "figures"


def tidy(records: list[tuple[RunSpec, dict[str, Any]]]) -> pd.DataFrame:
    """One row per (run, eval set): method, variant (the table's label), seed, dataset, rouge_l (mean over sampling seeds)."""
    rows = []
    for spec, rec in records:
        for dataset in EVAL_SETS:
            m = rec["metrics"]["eval"][dataset]
            rows.append({"method": spec.method, "variant": spec.variant or ("+POCL" if spec.pocl else "baseline"),
                         "seed": spec.seed, "dataset": dataset, "rouge_l": m["mean"], "sampling_std": m["std"],
                         "run_key": rec["key"], "wall_s": rec["wall_s"], "git_commit": rec["git_commit"]})
    return pd.DataFrame(rows)


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
    table = cells.pivot_table(index=["method", "variant"], columns="dataset", values="cell", aggfunc="first", sort=False)
    cols = [c for c in list(EVAL_SETS) + ["Avg"] if c in table.columns]
    return table[cols]


def paired(df: pd.DataFrame, base: tuple[str, str], other: tuple[str, str]) -> pd.DataFrame:
    """other - base per dataset (+ Avg), paired by training seed, with its 95% CI and the seed count."""
    d = with_average(df)
    out = []
    for dataset in list(EVAL_SETS) + ["Avg"]:
        sel = d[d.dataset == dataset]
        a = _by_seed(sel, *base)
        b = _by_seed(sel, *other)
        m, half, n = paired_diff(a, b)
        out.append({"comparison": f"{other[0]} {other[1]} − {base[0]} {base[1]}", "dataset": dataset,
                    "diff": m, "ci95": half, "n_pairs": n,
                    "significant": bool(n > 1 and not np.isnan(half) and abs(m) > half)})
    return pd.DataFrame(out)


def _by_seed(df: pd.DataFrame, method: str, variant: str) -> dict[int, float]:
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
        theirs = paper_diff(table, (base[0], rename.get(base[1], base[1])), (other[0], rename.get(other[1], other[1])), family)
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
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}", bbox_inches="tight", dpi=150)
    return folder / f"{name}.png"
