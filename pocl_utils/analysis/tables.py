"""Tables of finished runs: tidy frames (one row per run and eval set), mean +- 95% CI over training seeds, paired
differences by training seed, and writing a table as CSV and Markdown.

May import the method's `data` and `stats`, and `experiment.config` / `experiment.results` (run specs, atomic
writes); nothing of `training`, `modeling` or `notebook`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import EVAL_SETS
from ..experiment.config import RunSpec
from ..experiment.results import atomic_write_text
from ..stats import mean_ci, paired_diff


def row_label(spec: RunSpec) -> str:
    """A run's variant as the tables print it: the spec's own label, else "+POCL" or "baseline"."""
    return spec.variant or ("+POCL" if spec.pocl else "baseline")


def tidy(records: list[tuple[RunSpec, dict[str, Any]]], protocol: str = "sampled") -> pd.DataFrame:
    """One row per (run, eval set): method, variant (the table's label), seed, dataset, rouge_l.

    `records`: (spec, record) pairs of finished runs (`runner.records_for`).
    `protocol`: "sampled": the paper's (mean over sampling seeds at temperature 1); "greedy": the deterministic greedy
    ROUGE-L (scoring.greedy_scores), for the runs that have it (the others give no rows).
    Returns a tidy frame with columns method, variant (`row_label`), seed, dataset, rouge_l
    (ROUGE-L x 100), sampling_std (the std over sampling seeds, 0.0 when absent), run_key, wall_s, git_commit.
    Raises ValueError: a protocol not in PROTOCOLS.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"tidy: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows = []
    for spec, rec in records:
        metrics = rec["metrics"].get(PROTOCOLS[protocol]) or {}
        for dataset in metrics:  # the eval sets, in the order they were scored
            m = metrics[dataset]
            rows.append({"method": spec.method, "variant": row_label(spec),
                         "seed": spec.seed, "dataset": dataset, "rouge_l": m["mean"], "sampling_std": m.get("std", 0.0),
                         "run_key": rec["key"], "wall_s": rec["wall_s"], "git_commit": rec["git_commit"]})
    columns = ["method", "variant", "seed", "dataset", "rouge_l", "sampling_std", "run_key", "wall_s", "git_commit"]
    return pd.DataFrame(rows, columns=columns)


PROTOCOLS = {"sampled": "eval", "greedy": "greedy"}  # protocol -> the key of a record's metrics


def tidy_once(records: list[tuple[RunSpec, dict[str, Any]]], protocol: str = "sampled") -> pd.DataFrame:
    """`tidy`, with a run listed twice under one label (a spec shared by two grids) counted once."""
    return tidy(records, protocol).drop_duplicates(["method", "variant", "seed", "dataset"])


def reference_tidy(refs: dict[str, dict[str, Any]], protocol: str = "sampled") -> pd.DataFrame:
    """scoring.reference_scores(ws) as tidy rows (method = 'Teacher' / 'Student (init)', variant 'baseline', seed 0).

    `refs`: model name -> its score record, as `scoring.reference_scores` returns.
    `protocol`: "sampled" or "greedy" (a key of PROTOCOLS); a model without that protocol's metrics gives no rows.
    Returns a frame with `tidy`'s columns, one row per (reference model, eval set).
    """
    key = PROTOCOLS[protocol]
    rows = [{"method": name, "variant": "baseline", "seed": 0, "dataset": ds,
             "rouge_l": rec["metrics"][key][ds]["mean"], "sampling_std": rec["metrics"][key][ds].get("std", 0.0),
             "run_key": rec["key"], "wall_s": rec["wall_s"], "git_commit": rec["git_commit"]}
            for name, rec in refs.items() if rec["metrics"].get(key) for ds in rec["metrics"][key]]
    return pd.DataFrame(rows)


def with_average(df: pd.DataFrame) -> pd.DataFrame:
    """Add the per-run average over the five eval sets as dataset 'Avg' (as Tables 1 and 4 print).

    `df`: a tidy frame (`tidy`).
    Returns `df` followed by one 'Avg' row per (method, variant, seed) whose rouge_l is the mean over its eval sets; the
    Avg rows carry only method, variant, seed, rouge_l and dataset.
    """
    keys = ["method", "variant", "seed"]
    avg = df.groupby(keys, sort=False, as_index=False)["rouge_l"].mean().assign(dataset="Avg")
    return pd.concat([df, avg], ignore_index=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% CI half-width and seed count per (method, variant, dataset).

    `df`: a tidy frame (`tidy`); the 'Avg' dataset is added here (`with_average`).
    Returns one row per (method, variant, dataset) with columns method, variant, dataset, mean (of rouge_l over the
    training seeds), ci95 (t CI half-width; NaN for one seed) and n_seeds.
    """
    out = []
    for (method, variant, dataset), g in with_average(df).groupby(["method", "variant", "dataset"], sort=False):
        m, half, n = mean_ci(g["rouge_l"].to_numpy())
        out.append({"method": method, "variant": variant, "dataset": dataset, "mean": m, "ci95": half, "n_seeds": n})
    return pd.DataFrame(out)


def wide(summary_df: pd.DataFrame, fmt: str = "{mean:.2f} ± {ci95:.2f}") -> pd.DataFrame:
    """Rows = method/variant, columns = datasets (+ Avg), cells 'mean ± CI'.

    `summary_df`: a `summary` frame.
    `fmt`: the cell's format, with fields `mean` and `ci95` (a NaN ci95 is written as 0).
    Returns a frame indexed by (method, variant), one string column per eval set present, then 'Avg'.
    """
    cells = summary_df.assign(cell=[fmt.format(mean=r["mean"], ci95=0.0 if np.isnan(r["ci95"]) else r["ci95"])
                                    for _, r in summary_df.iterrows()])
    table = cells.pivot_table(index=["method", "variant"], columns="dataset", values="cell", aggfunc="first",
                              sort=False)
    return table[dataset_columns(table.columns)]


def dataset_columns(columns) -> list[str]:
    """Eval-set columns in table order: the paper's five in its order, then a config's own sets, then 'Avg'."""
    columns = list(columns)
    own = [c for c in columns if c not in (*EVAL_SETS, "Avg")]
    return [c for c in EVAL_SETS if c in columns] + own + (["Avg"] if "Avg" in columns else [])


def paired(df: pd.DataFrame, base: tuple[str, str], other: tuple[str, str]) -> pd.DataFrame:
    """other - base per dataset (+ Avg), paired by training seed, with its 95% CI and the seed count.

    `df`: a tidy frame (`tidy`).
    Returns one row per eval set and 'Avg' with columns comparison (its label), dataset, diff (mean of other - base over
    the shared seeds), ci95, n_pairs and significant (more than one pair and |diff| > ci95).
    """
    d = with_average(df)
    out = []
    for dataset in [*dict.fromkeys(d.dataset[d.dataset != "Avg"]), "Avg"]:  # the eval sets in the frame's order
        sel = d[d.dataset == dataset]
        a = by_seed(sel, *base)
        b = by_seed(sel, *other)
        m, half, n = paired_diff(a, b)
        out.append({"comparison": f"{other[0]} {other[1]} − {base[0]} {base[1]}", "dataset": dataset,
                    "diff": m, "ci95": half, "n_pairs": n,
                    "significant": bool(n > 1 and not np.isnan(half) and abs(m) > half)})
    return pd.DataFrame(out)


def paired_to(df: pd.DataFrame, refs: tuple[str, ...] = ("baseline", "+POCL"), dataset: str = "Avg") -> pd.DataFrame:
    """Each (method, variant) on one eval set: its mean ± 95% CI over training seeds and its paired difference to each
    reference variant of the same method, variant − ref by training seed (`paired`), e.g. the controls grid's table.

    A frame with a `training` column (the training protocol) is split by it first: runs of one protocol are never
    paired with another's.

    `df`: a tidy frame (`tidy`), optionally with a `training` column.
    `dataset`: the eval set, or "Avg" (the mean over the run's eval sets, `with_average`).
    Returns one row per ([training,] method, variant) in the frame's order, with the columns [training,] method,
    variant, n_seeds, mean, ci95 and, per reference r, `vs r` (the mean paired difference), `vs r ci95` and `vs r n`
    (the shared seeds); the differences are NaN for the reference itself and where the method has no run of r.
    """
    groups = df.groupby("training", sort=False) if "training" in df.columns else [(None, df)]
    rows = []
    for training, part in groups:
        runs = part.drop(columns=["training"], errors="ignore")
        summ = summary(runs)
        for r in summ[summ.dataset == dataset].itertuples():
            row = ({"training": training} if training is not None else {}) | {
                "method": r.method, "variant": r.variant, "n_seeds": r.n_seeds, "mean": r.mean, "ci95": r.ci95}
            for ref in refs:
                got = paired(runs, (r.method, ref), (r.method, r.variant))
                got = got[got.dataset == dataset].iloc[0]
                none = ref == r.variant or got["n_pairs"] == 0
                row[f"vs {ref}"] = np.nan if none else got["diff"]
                row[f"vs {ref} ci95"] = np.nan if none else got["ci95"]
                row[f"vs {ref} n"] = 0 if none else int(got["n_pairs"])
            rows.append(row)
    return pd.DataFrame(rows)


def by_seed(df: pd.DataFrame, method: str, variant: str) -> dict[int, float]:
    """seed -> rouge_l of one (method, variant) in a tidy frame already cut to one dataset.

    Returns a dict seed (int) -> rouge_l (float); empty when the pair has no rows.
    """
    g = df[(df.method == method) & (df.variant == variant)]
    return dict(zip(g.seed.astype(int), g.rouge_l.astype(float)))


def arm_means(records: list[tuple[RunSpec, dict[str, Any]]]) -> pd.DataFrame:
    """Each (method, variant)'s Avg ROUGE-L over the five sets, mean and SD over training seeds, under both evaluation
    protocols (a run listed twice under one label counts once).

    Returns a frame with columns protocol, method, variant, avg (the mean over seeds of each seed's Avg), sd and
    n_seeds, in PROTOCOLS' order.
    """
    parts = []
    for protocol in PROTOCOLS:
        per_seed = tidy_once(records, protocol).groupby(["method", "variant", "seed"], sort=False).rouge_l.mean()
        stats = per_seed.groupby(["method", "variant"], sort=False).agg(avg="mean", sd="std", n_seeds="count")
        parts.append(stats.reset_index().assign(protocol=protocol))
    return pd.concat(parts, ignore_index=True)[["protocol", "method", "variant", "avg", "sd", "n_seeds"]]


def save_table(df: pd.DataFrame, name: str, folder: Path) -> Path:
    """Write a table as CSV and Markdown (atomically).

    The CSV keeps the index unless it is a plain RangeIndex; the Markdown prints floats with 2 decimals.

    `name`: the files' stem: `<name>.csv` and `<name>.md`.
    `folder`: where to write them (created if missing).
    Returns the path of the CSV file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.csv", df.to_csv(index=not isinstance(df.index, pd.RangeIndex)))
    atomic_write_text(folder / f"{name}.md", df.to_markdown(floatfmt=".2f") + "\n")
    return folder / f"{name}.csv"
