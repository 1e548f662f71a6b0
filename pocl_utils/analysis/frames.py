"""Frames behind the figures and the small tables: the data sets per role, the difficulty ranking (scores, ranks,
subsets, agreement with the true difficulty), the curriculum's stages, one run's record among many, and the eval
rows' own scores (where POCL's difference sits: by true difficulty, and by whether a row needs words that training
shows only at its top level).

May import the method's `curriculum` and `stats`, `experiment.config` and `analysis.tables`; nothing of `training`,
`modeling` or `notebook`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..curriculum import partition
from ..experiment.config import RunSpec
from ..stats import mean_ci
from .tables import PROTOCOLS, row_label


def set_table(examples: pd.DataFrame) -> pd.DataFrame:
    """Per role: rows, rows kept after the length filter, families, levels, mean difficulty, token lengths.

    `examples`: one row per example with columns role, kept, family, level, difficulty, prompt_tokens and
    response_tokens (`notebook.examples_frame`).
    Returns a frame indexed by role with columns rows, kept, families, levels ("min-max", or "-" without levels),
    difficulty_mean, prompt_tokens_mean, prompt_tokens_max, response_tokens_mean, response_tokens_max.
    """
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

    `ranking`: the difficulty ranking (`difficulty.Ranking`); `ranking.ids` are positions in `rows`.
    `rows`: the training rows (= ws.sets["train"]), so the row fields join by id.
    `n_subsets`: n, the number of POCL subsets (`curriculum.partition` of the fusion order).
    Returns a frame with columns id, rouge_l (x 100), ce, fused, greedy (the greedy output, "" without texts),
    rank_rouge_l, rank_ce, rank_fusion, subset, family, level, instruction, input, output and true_difficulty.
    """
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


def ranking_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The committed `ranking_rows.csv` from a `ranking_frame`: columns index, family, true_difficulty, rouge_l, ce,
    rank_rouge_l, rank_ce, rank_fusion. Ranks are 1 = easiest; tied scores share their mean rank, so
    Spearman(rank_fusion, true_difficulty) is exactly premise P2's.
    """
    from scipy.stats import rankdata
    return pd.DataFrame({"index": frame["id"], "family": frame["family"], "true_difficulty": frame["true_difficulty"],
                         "rouge_l": frame["rouge_l"], "ce": frame["ce"],
                         "rank_rouge_l": rankdata(-frame["rouge_l"].to_numpy(), method="average"),
                         "rank_ce": rankdata(frame["ce"].to_numpy(), method="average"),
                         "rank_fusion": rankdata(-frame["fused"].to_numpy(), method="average")})


def rank_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho between each measurer and the true difficulty; rho > 0 = the measurer calls harder samples hard.

    Computed on the scores oriented harder = larger (-ROUGE-L, CE, -FR), so tied scores share their mean rank; the
    rank_* columns break ties by index (the order the curriculum uses) and would add index noise to rho.

    `frame`: a `ranking_frame`.
    Returns one row per measurer (ranking = "rouge_l", "ce", "fusion") with columns ranking, spearman_rho, p_value and
    n; rho and p are NaN when undefined (a NaN true difficulty, as for real data, or a constant score or truth).
    """
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
    """The n easiest and n hardest samples by one measurer, with the student's greedy output beside the reference.

    `frame`: a `ranking_frame`.
    `method`: the measurer: "fusion", "rouge_l" or "ce".
    Returns the n easiest then the n hardest rows, with columns which ("easiest" / "hardest"), rank_<method>,
    true_difficulty, family, instruction, input, output, greedy, rouge_l and ce.
    """
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
    """The first record of one (method, variant, seed) among runner.records_for pairs, or None; `variant` as `tidy`
    labels it (spec.variant, else "+POCL" or "baseline")."""
    for spec, rec in records:
        label = row_label(spec)
        if spec.method == method and label == variant and spec.seed == seed:
            return rec
    return None


# ---- per eval row -------------------------------------------------------------------------------------------------


def _row_words(row: Mapping) -> set[str]:
    """The lower-cased words of a row's instruction, input and right answer (`clean_output` where the reference is
    noisy): what the row asks about and what it must say."""
    answer = row.get("clean_output") or row.get("output") or ""
    return set(re.findall(r"[^\W_]+", f"{row.get('instruction', '')} {row.get('input', '')} {answer}".lower()))


def late_words(train_rows: Sequence[Mapping]) -> set[str]:
    """The words whose every training row has the top training level (e.g. the rarest words, which `level_pools`
    keeps to the longest lists); empty when no row has a level. Words of instruction, input and right answer count.
    """
    levels = [r["level"] for r in train_rows if r.get("level") is not None]
    if not levels:
        return set()
    top, below = max(levels), set()
    at_top: set[str] = set()
    for r in train_rows:
        (at_top if r.get("level") == top else below).update(_row_words(r))
    return at_top - below


def per_row_frame(records: list[tuple[RunSpec, dict[str, Any]]], sets: Mapping[str, Sequence[Mapping]],
                  protocol: str = "greedy") -> pd.DataFrame:
    """One row per (run, eval set, scored eval row): its ROUGE-L (`protocol` "sampled": mean over the sampling seeds),
    true difficulty and level, and whether it needs a late word (`late_words` of sets["train"]). Records without
    per-row scores give no rows.

    Returns columns method, variant, seed, dataset, index (the row's position in its set), rouge_l, level, difficulty
    (NaN where the data has none) and late_words (bool).
    Raises ValueError: an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"per_row_frame: protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    late, out = late_words(sets.get("train", [])), []
    for spec, rec in records:
        label = row_label(spec)
        for dataset, m in (rec["metrics"].get(PROTOCOLS[protocol]) or {}).items():
            if "per_row" not in m or "index" not in m:
                continue
            for index, score in zip(m["index"], m["per_row"]):
                row = sets[dataset][index]
                out.append({"method": spec.method, "variant": label, "seed": spec.seed, "dataset": dataset,
                            "index": int(index), "rouge_l": float(score), "level": row.get("level", np.nan),
                            "difficulty": float(row.get("difficulty", np.nan)),
                            "late_words": bool(_row_words(row) & late)})
    columns = ["method", "variant", "seed", "dataset", "index", "rouge_l", "level", "difficulty", "late_words"]
    return pd.DataFrame(out, columns=columns)


def per_row_gap(frame: pd.DataFrame, base: tuple[str, str], other: tuple[str, str], by: str) -> pd.DataFrame:
    """other - base on the eval rows, grouped by `by` ("difficulty", "level", "late_words" or "dataset"), paired by
    training seed and row: per seed the mean over the group's rows both runs scored, then the mean of those, with a
    t 95% CI over the seeds (the unit that repeats).

    Returns one row per group value (sorted): `by`, diff, ci95 (NaN with one seed), n_seeds, n_rows (rows per seed, the
    largest count).
    """
    keys = ["seed", "dataset", "index"]
    pick = lambda mv: frame[(frame.method == mv[0]) & (frame.variant == mv[1])]  # noqa: E731
    pairs = pick(base).merge(pick(other)[keys + ["rouge_l"]], on=keys, suffixes=("_base", "_other"))
    pairs = pairs.assign(diff=pairs.rouge_l_other - pairs.rouge_l_base)
    out = []
    for value, g in pairs.groupby(by, sort=True):
        per_seed = g.groupby("seed")["diff"].mean()
        m, half, n = mean_ci(per_seed.to_numpy())
        out.append({by: value, "diff": m, "ci95": half, "n_seeds": n,
                    "n_rows": int(g.groupby("seed").size().max())})
    return pd.DataFrame(out, columns=[by, "diff", "ci95", "n_seeds", "n_rows"])


def per_row_gaps(records: list[tuple[RunSpec, dict[str, Any]]], sets: Mapping[str, Sequence[Mapping]],
                 methods: Sequence[str], protocol: str, variant: str = "+POCL") -> dict[str, pd.DataFrame]:
    """`per_row_gap` of variant - baseline for each method, by true difficulty and by late words: {"difficulty": rows,
    "late_words": rows}, `per_row_gap`'s columns plus "comparison" (the method); empty frames when the records keep no
    per-row scores.
    """
    frame = per_row_frame(records, sets, protocol)
    return {by: pd.concat([per_row_gap(frame, (m, "baseline"), (m, variant), by).assign(comparison=m)
                           for m in methods], ignore_index=True)
            for by in ("difficulty", "late_words")}
