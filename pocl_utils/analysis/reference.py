"""A finished run read back from its published tables alone (`runs.csv`, `claims.csv`), with no run registry: Table 1's
Avg ROUGE-L per method, baseline beside +POCL, under each evaluation protocol, as a frame and as Markdown. README's
result box and the main figure (`figures.main_figure`) are drawn from it, so both regenerate from the committed
`results/<profile>/` without re-running anything. A new run's runs.csv is compared with the committed one run by run
(`compare_runs`), which `pocl-reproduce` reports at its end.

May import `analysis.tables` and the method's `stats`; nothing of `training`, `modeling` or `notebook`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables

PROTOCOL_COLUMNS = {"sampled": "rouge_l", "greedy": "greedy_rouge_l"}  # protocol -> its score column in runs.csv
POCL = "+POCL"
BASELINE = "baseline"


def runs_tidy(runs: pd.DataFrame, protocol: str = "sampled", grid: str = "table1",
              training: str | None = None) -> pd.DataFrame:
    """One grid's rows of a published runs.csv as a `tables.tidy` frame under one evaluation protocol and one
    training protocol (runs.csv's `training` column; None = its first, the headline's; a runs.csv without the column
    has one).

    `protocol`: "sampled" (the paper's: temperature 1, mean over sampling seeds) or "greedy".
    `grid`: the grid whose rows are kept (a run shared by several grids appears once per grid in runs.csv).
    Returns the grid's rows with `rouge_l` holding the protocol's score; rows without a score under it are dropped.
    Raises ValueError: an unknown protocol, or a runs.csv without the protocol's column or a `grid` column.
    """
    if protocol not in PROTOCOL_COLUMNS:
        raise ValueError(f"runs_tidy: protocol must be one of {sorted(PROTOCOL_COLUMNS)}, got {protocol!r}")
    column = PROTOCOL_COLUMNS[protocol]
    missing = {column, "grid", "method", "variant", "seed", "dataset"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs_tidy: runs.csv lacks the column(s) {sorted(missing)}")
    rows = runs[runs.grid == grid]
    if "training" in rows.columns:
        rows = rows[rows.training == (runs.training.iloc[0] if training is None else training)]
    out = rows.drop(columns=[c for c in PROTOCOL_COLUMNS.values() if c != column and c in rows.columns])
    out = out.rename(columns={column: "rouge_l"})
    return out.dropna(subset=["rouge_l"]).reset_index(drop=True)


def avg_table(results: Path) -> pd.DataFrame:
    """Table 1's Avg ROUGE-L (mean over the five eval sets, then over training seeds) per training protocol,
    evaluation protocol and method.

    Returns one row per (training, protocol, method) in runs.csv's order, with columns training ("" for a runs.csv
    without training protocols), protocol, method, n_seeds, baseline, baseline_ci, pocl, pocl_ci (NaN for a method
    without +POCL, i.e. SFT and SeqKD), diff and diff_ci (+POCL - baseline paired by training seed), p_holm and verdict
    (claim a's row in claims.csv; NaN / "" when absent). CI columns are 95% t half-widths, NaN for one seed. A protocol
    without scores (or without its column in runs.csv) gives no rows.
    Raises FileNotFoundError: runs.csv is missing (the message names it).
    """
    results = Path(results)
    if not (results / "runs.csv").exists():
        raise FileNotFoundError(f"avg_table: no runs.csv in {results}")
    runs = pd.read_csv(results / "runs.csv")
    claims_path = results / "claims.csv"
    claims = pd.read_csv(claims_path) if claims_path.exists() else pd.DataFrame(
        columns=["claim", "comparison", "protocol", "p_holm", "verdict"])
    if "training" not in claims.columns:
        claims = claims.assign(training="")
    out = []
    for training, protocol in _pairs(runs):
        column = PROTOCOL_COLUMNS[protocol]
        df = runs_tidy(runs, protocol, training=training or None) if column in runs.columns else runs.iloc[:0]
        if df.empty:
            continue
        means = tables.summary(df)
        means = means[means.dataset == "Avg"].set_index(["method", "variant"])
        for method in df.method.drop_duplicates():
            base = means.loc[(method, BASELINE)]
            row = {"training": training, "protocol": protocol, "method": method, "n_seeds": int(base["n_seeds"]),
                   "baseline": base["mean"], "baseline_ci": base["ci95"], "pocl": math.nan, "pocl_ci": math.nan,
                   "diff": math.nan, "diff_ci": math.nan, "p_holm": math.nan, "verdict": ""}
            if (method, POCL) in means.index:
                d = tables.paired(df, (method, BASELINE), (method, POCL)).set_index("dataset").loc["Avg"]
                claim = claims[(claims.claim == "a") & (claims.protocol == protocol) & (claims.training == training)
                               & (claims.comparison == f"{method} +POCL vs baseline")]
                row.update(pocl=means.loc[(method, POCL), "mean"], pocl_ci=means.loc[(method, POCL), "ci95"],
                           diff=d["diff"], diff_ci=d["ci95"])
                if len(claim):
                    row.update(p_holm=float(claim.p_holm.iloc[0]), verdict=str(claim.verdict.iloc[0]))
            out.append(row)
    return pd.DataFrame(out)


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(training protocol, evaluation protocol) pairs, training protocols in the frame's order ("" when it has no
    training column), then sampled before greedy."""
    trainings = list(frame.training.drop_duplicates()) if "training" in frame.columns else [""]
    return [(t, p) for t in trainings for p in PROTOCOL_COLUMNS]


def _label(training: str, protocol: str) -> str:
    return f"{training}, {protocol}" if training else protocol


def _cell(mean: float, half: float, signed: bool = False) -> str:
    """'56.07 ± 1.42' (a NaN half-width is left out; a NaN mean is '—'); signed puts '+' or '−' before the mean."""
    if np.isnan(mean):
        return "—"
    text = f"{mean:+.2f}".replace("-", "−") if signed else f"{mean:.2f}"
    return text if np.isnan(half) else f"{text} ± {half:.2f}"


def avg_markdown(table: pd.DataFrame) -> str:
    """`avg_table` as one Markdown table: a row per training protocol (a first column when there are several) and
    method, baseline / +POCL / difference (with Holm's verdict) for each evaluation protocol present, cells
    'mean ± 95% CI half-width'."""
    if "training" not in table.columns:
        table = table.assign(training="")
    trainings = list(table.training.drop_duplicates())
    protocols = list(table.protocol.drop_duplicates())
    head = (["training"] if len(trainings) > 1 else []) + ["method"] + [
        f"{p}: {c}" for p in protocols for c in ("baseline", "+POCL", "+POCL − baseline")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for training in trainings:
        rows = table[table.training == training]
        for method in rows.method.drop_duplicates():
            cells = ([training] if len(trainings) > 1 else []) + [method]
            for p in protocols:
                r = rows[(rows.protocol == p) & (rows.method == method)]
                if r.empty:
                    cells += ["—"] * 3
                    continue
                r = r.iloc[0]
                diff = _cell(r["diff"], r["diff_ci"], signed=True)
                if r["verdict"]:
                    diff += f" ({r['verdict']})"
                cells += [_cell(r["baseline"], r["baseline_ci"]), _cell(r["pocl"], r["pocl_ci"]), diff]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _range(values: pd.Series, half: pd.Series | None = None) -> str:
    """One value as '−1.57 ± 1.18' (with its CI when given), several as 'lowest to highest', none as '—'."""
    v = values.dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return _cell(float(v.iloc[0]), math.nan if half is None else float(half[v.index].iloc[0]), signed=True)
    return f"{_cell(float(v.min()), math.nan, True)} to {_cell(float(v.max()), math.nan, True)}"


def claims_overview(claims: pd.DataFrame) -> str:
    """A published claims.csv as one screen of Markdown: per claim, what the paper says and its printed difference,
    ours under each training and evaluation protocol (one comparison: difference ± 95% CI; several: the range of the
    differences; not judged there: '—') and the verdicts counted (`findings.claim_summary`).

    `claims`: claims.csv as read by pandas (columns claim, paper_says, comparison, ours_diff, ci95, verdict, paper_diff,
    protocol and, with several training protocols, training).
    Returns the Markdown table, ending in a newline.
    """
    from .findings import claim_summary
    if "training" not in claims.columns:
        claims = claims.assign(training="")
    counts = claim_summary(claims).set_index(["training", "protocol", "claim"])
    pairs = _pairs(claims)
    pairs = [(t, p) for t, p in pairs if ((claims.training == t) & (claims.protocol == p)).any()]
    head = ["claim", "the paper says", "paper"] + [f"ours, {_label(t, p)}" for t, p in pairs] + ["verdicts"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim in claims.claim.drop_duplicates():
        rows = claims[claims.claim == claim]
        cells = [claim, rows.paper_says.iloc[0], _range(rows.drop_duplicates("comparison").paper_diff)]
        verdicts = []
        for t, p in pairs:
            r = rows[(rows.training == t) & (rows.protocol == p)]
            cells.append(_range(r.ours_diff, r.ci95))
            if (t, p, claim) not in counts.index:
                continue
            c = counts.loc[(t, p, claim)]
            said = [f"{c[k]} {k}" for k in ("supported", "contradicted", "undecided") if c[k]]
            verdicts.append(f"{_label(t, p)}: {', '.join(said)}")
        lines.append("| " + " | ".join(cells + ["; ".join(verdicts)]) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(run: Path, reference: Path) -> dict:
    """A run's scores against a reference run's, run by run: `run`/runs.csv beside `reference`/runs.csv.

    Runs are matched by run_key (the spec and everything upstream of it; a run listed under several grids counts once),
    and a run is equal when every eval set's sampled and greedy score is the same float (a score absent from both
    counts as equal). The reference may hold more runs than a main job makes (its later studies), so runs found only
    on one side are counted, never compared.

    Returns {"both": runs in both, "equal": of those, the equal ones, "differ": the other run keys (sorted),
    "largest_diff": the largest |score difference| in ROUGE-L points over the runs in both (0.0 when all equal),
    "only_run": runs only in `run`, "only_reference": runs only in `reference`}.
    Raises ValueError: a runs.csv that is missing or lacks run_key, dataset or a score column (the message names it).
    """
    frames = []
    for folder in (Path(run), Path(reference)):
        path = folder / "runs.csv"
        if not path.exists():
            raise ValueError(f"compare_runs: no runs.csv in {folder}")
        frame = pd.read_csv(path)
        missing = {"run_key", "dataset", *PROTOCOL_COLUMNS.values()} - set(frame.columns)
        if missing:
            raise ValueError(f"compare_runs: {path} lacks the column(s) {sorted(missing)}")
        frames.append(frame[["run_key", "dataset", *PROTOCOL_COLUMNS.values()]].drop_duplicates(["run_key", "dataset"]))
    ours, ref = frames
    both = sorted(set(ours.run_key) & set(ref.run_key))
    joined = ours[ours.run_key.isin(both)].merge(ref[ref.run_key.isin(both)], on=["run_key", "dataset"], how="outer",
                                                 suffixes=("", "_ref"))
    differ, largest = set(), 0.0
    for column in PROTOCOL_COLUMNS.values():
        a, b = joined[column], joined[f"{column}_ref"]
        gaps = (a - b).abs().where(~(a.isna() ^ b.isna()), math.inf).fillna(0.0)  # a score on one side only: inf
        differ |= set(joined.run_key[gaps > 0])
        largest = max(largest, float(gaps.max()) if len(gaps) else 0.0)
    return {"both": len(both), "equal": len(both) - len(differ), "differ": sorted(differ), "largest_diff": largest,
            "only_run": len(set(ours.run_key) - set(ref.run_key)),
            "only_reference": len(set(ref.run_key) - set(ours.run_key))}


def comparison_line(c: dict) -> str:
    """`compare_runs`' result as the one line `pocl-reproduce` ends with."""
    if c["both"] == 0:
        return (f"scores: none of this run's {c['only_run']} runs is in the committed reference (other settings or "
                f"another profile)")
    extra = f"; {c['only_run']} of this run's runs are not in it" if c["only_run"] else ""
    if c["differ"]:
        return (f"scores: {len(c['differ'])} of the {c['both']} runs shared with the committed reference differ "
                f"(largest difference {c['largest_diff']:.3g} ROUGE-L): another CPU model or changed code, see "
                f"Determinism in docs/reproducibility.md{extra}")
    later = f"; its other {c['only_reference']} runs (its studies) were not run here" if c["only_reference"] else ""
    return (f"scores: equal to the committed reference's in all {c['both']} runs they share, every sampled and greedy "
            f"score to the last bit{extra}{later}")
