"""POCL's premises, measured in a world before its grid is believed.

A curriculum-KD experiment says something about the method only if

    P1  the teacher is worth distilling: on every eval set it beats the SFT student by >= 3 ROUGE-L and every
        trivial rule (echo the input; the most frequent training answer) by >= 5; in distribution it scores >= 40;
    P2  the difficulty measurer can see difficulty: Spearman(fusion rank, true difficulty) >= 0.5 over the training
        rows, and the student's greedy ROUGE-L is 0 on at most half of them;
    P3  the grid has the power to see the paper's gains: for each Table-1 method, the minimum detectable effect
        (80% power, two-sided 5%, paired over the seeds used) beside the paper's gain three ways: scaled by our
        teacher - SFT gap over the paper's, scaled by the method's own KD - SFT gap over the paper's (what the
        teacher's soft targets add beyond the references; a gap <= 0 leaves nothing to scale, so the row fails), and
        as printed (the raw gain, no scaling);
    P4  the teacher is worth distilling rather than copying: the best KD baseline beats the SFT student by >= 2
        ROUGE-L Avg, paired over the seeds, with a Holm-adjusted p < 0.05 (over the KD methods), under each
        evaluation protocol (sampled at temperature 1, the paper's; and greedy).

This module computes each check from a prepared workspace's rows, ranking and scores; `premises_table` gives the
committed `premises.csv` (columns premise, value, threshold, holds).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ..data import EVAL_SETS
from ..evaluate import rouge_l_batch
from ..stats import holm, p_value
from .paper import paper_diff
from .tables import by_seed, paired

TEACHER_MARGIN_SFT = 3.0  # P1: teacher - SFT student, every eval set
TEACHER_MARGIN_RULE = 5.0  # P1: teacher - each trivial rule, every eval set
TEACHER_IN_DISTRIBUTION = 40.0  # P1: teacher on the in-distribution set
MEASURER_RHO = 0.5  # P2: Spearman(fusion rank, true difficulty)
MEASURER_ZERO_SHARE = 0.5  # P2: share of training rows with greedy ROUGE-L 0
PAPER_TEACHER_GAP = 6.64  # paper Table 1, GPT-2: teacher Avg - SFT student Avg (GPT-2 1.5B -> 0.1B)
KD_MARGIN_SFT = 2.0  # P4: best KD baseline - SFT student, Avg ROUGE-L, under each protocol
KD_ALPHA = 0.05  # P4: the Holm-adjusted p-value it must be below
COLUMNS = ("premise", "value", "threshold", "holds")


# ---- trivial rules ------------------------------------------------------------------------------------------------


def echo_answer(row: Mapping) -> str:
    """The echo rule: answer with the prompt's input, copied (the instruction when the input is empty).

    Args:
        row: a data row with `instruction` and optionally `input`.

    Returns:
        The rule's answer.
    """
    return row.get("input") or row["instruction"]


def most_frequent_answer(train_rows: Sequence[Mapping]) -> str:
    """The most frequent reference answer of the training rows (first seen wins a tie).

    Args:
        train_rows: the training rows; their `output` is counted.

    Returns:
        The most frequent `output`.

    Raises:
        ValueError: no training rows.
    """
    if not train_rows:
        raise ValueError("most_frequent_answer: no training rows")
    return Counter(r["output"] for r in train_rows).most_common(1)[0][0]


def rule_scores(sets: Mapping[str, Sequence[Mapping]], train_rows: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """rule -> eval set -> mean ROUGE-L of the rule's answers (deterministic: no model, no sampling).

    Args:
        sets: eval set name -> rows with `instruction`, `input` and `references` (or `output`).
        train_rows: the training rows (the frequent-answer rule reads their `output`).

    Returns:
        {"echo input": {set: score}, "most frequent answer": {set: score}}.
    """
    frequent = most_frequent_answer(train_rows)
    out: dict[str, dict[str, float]] = {"echo input": {}, "most frequent answer": {}}
    for name, rows in sets.items():
        refs = [r.get("references") or [r["output"]] for r in rows]
        out["echo input"][name] = float(np.mean(rouge_l_batch([echo_answer(r) for r in rows], refs)))
        out["most frequent answer"][name] = float(np.mean(rouge_l_batch([frequent] * len(rows), refs)))
    return out


# ---- P1: the teacher ------------------------------------------------------------------------------------------------


def teacher_rows(teacher: Mapping[str, float], sft: Mapping[str, float], rules: Mapping[str, Mapping[str, float]],
                 in_distribution: str = "DollyEval") -> list[dict]:
    """P1 rows: teacher - SFT and teacher - rule per eval set, and the in-distribution teacher score.

    Args:
        teacher: eval set -> the teacher's mean ROUGE-L (the paper's protocol).
        sft: eval set -> the SFT student's mean ROUGE-L (mean over training seeds).
        rules: rule -> eval set -> score, from `rule_scores`.
        in_distribution: the set held to TEACHER_IN_DISTRIBUTION.

    Returns:
        `premise_row` dicts: the in-distribution teacher score first, then per eval set (in EVAL_SETS order) teacher -
        SFT (threshold TEACHER_MARGIN_SFT) and teacher - each rule (threshold TEACHER_MARGIN_RULE).
    """
    rows = [premise_row(f"P1 teacher on {in_distribution}", teacher[in_distribution], TEACHER_IN_DISTRIBUTION)]
    for name in sorted(teacher, key=lambda k: EVAL_SETS.index(k) if k in EVAL_SETS else len(EVAL_SETS)):
        rows.append(premise_row(f"P1 teacher - SFT student on {name}", teacher[name] - sft[name], TEACHER_MARGIN_SFT))
        for rule, scores in rules.items():
            rows.append(premise_row(f"P1 teacher - {rule} on {name}", teacher[name] - scores[name],
                                    TEACHER_MARGIN_RULE))
    return rows


# ---- P2: the measurer ----------------------------------------------------------------------------------------------


def fusion_rank(fused: np.ndarray) -> np.ndarray:
    """1-based ranks of Eq. 2 scores, 1 = easiest (highest fused score); ties share their mean rank.

    Args:
        fused: the Eq. 2 scores, higher = easier.

    Returns:
        A float array of ranks, one per score.
    """
    return stats.rankdata(-np.asarray(fused, dtype=np.float64), method="average")


def measurer_rows(rouge_l, fused, true_difficulty) -> list[dict]:
    """P2 rows: Spearman(fusion rank, true difficulty) (only when the truth is known, i.e. not None) and the share of
    rows whose greedy ROUGE-L is 0.

    Args:
        rouge_l: the student's greedy ROUGE-L (x 100) per training row.
        fused: the Eq. 2 score per training row (same order).
        true_difficulty: the world's true difficulty per training row; None when unknown (real data).

    Returns:
        `premise_row` dicts: the Spearman row (threshold MEASURER_RHO) when the truth is known, then the zero share
        (at most MEASURER_ZERO_SHARE).
    """
    zero = float(np.mean(np.asarray(rouge_l) == 0.0))
    rows = [premise_row("P2 share of training rows with student greedy ROUGE-L 0", zero, MEASURER_ZERO_SHARE,
                        at_most=True)]
    if true_difficulty is not None:
        rho = float(stats.spearmanr(fusion_rank(fused), true_difficulty).statistic)
        rows.insert(0, premise_row("P2 Spearman(fusion rank, true difficulty)", rho, MEASURER_RHO))
    return rows


# ---- P3: power -------------------------------------------------------------------------------------------------------


def paired_power(effect_over_sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with n pairs when the true mean difference is effect_over_sd x SD.

    Args:
        effect_over_sd: the true mean difference in units of the paired differences' SD.
        n: the number of pairs.
        alpha: the test's two-sided level.

    Returns:
        The power, from the noncentral t (df n - 1, noncentrality effect_over_sd * sqrt(n)); NaN for n < 2, and 1
        where scipy's nct gives NaN far in the tail.
    """
    if n < 2:
        return math.nan
    df, crit, nc = n - 1, stats.t.ppf(1 - alpha / 2, n - 1), effect_over_sd * math.sqrt(n)
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    return float(np.nan_to_num(power, nan=1.0))  # scipy's nct gives NaN far in the tail, where power is 1


def mde_factor(n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The minimum detectable effect of a paired t-test in units of the paired SD (n = 5: 1.68).

    Args:
        n: the number of pairs.
        power: the power the effect must be detected with.
        alpha: the test's two-sided level.

    Returns:
        The effect / SD at which `paired_power` reaches `power` (solved on [1e-6, 20]); inf for n < 2.
    """
    if n < 2:
        return math.inf
    return float(optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 1e-6, 20.0))


def power_rows(paired_sd: Mapping[str, float], n_seeds: int, paper_gain: Mapping[str, float],
               teacher_gap: float, kd_gap: Mapping[str, float] | None = None,
               paper_kd_gap: Mapping[str, float] | None = None) -> list[dict]:
    """P3 rows: per method, the MDE (80% power) against the paper's gain scaled three ways.

    MDE = mde_factor(n_seeds) x SD of the paired differences. Thresholds: paper gain x teacher_gap / PAPER_TEACHER_GAP;
    paper gain x kd_gap[m] / paper_kd_gap[m] (only for methods in both maps; a scale <= 0 gives threshold <= 0, which
    no MDE meets); and the paper gain as printed. `holds` says whether the grid could see the paper's effect at that
    scale; a method where it does not is one whose null result says little.

    Args:
        paired_sd: method -> SD of its paired differences (+POCL - baseline) over the seeds.
        n_seeds: the number of seeds (pairs) the MDE is computed for.
        paper_gain: method -> the paper's gain, in ROUGE-L points.
        teacher_gap: our teacher - SFT student gap (Avg ROUGE-L).
        kd_gap: method -> our KD baseline - SFT student (Avg ROUGE-L, mean over seeds); None: no such rows.
        paper_kd_gap: method -> the paper's KD baseline - SFT (Table 1 Avg).

    Returns:
        `premise_row` dicts, per method of `paired_sd`: the teacher-gap row, the KD-gap row (where both gaps are
        known), the raw row; value = the MDE, threshold = the (scaled) paper gain, holds = MDE <= threshold and
        threshold > 0.
    """
    factor, scale, rows = mde_factor(n_seeds), teacher_gap / PAPER_TEACHER_GAP, []
    label = f"MDE (80% power, {n_seeds} seeds) vs paper gain"
    for m, sd in paired_sd.items():
        rows.append(premise_row(f"P3 {m}: {label} x {scale:.2f} (teacher - SFT gap)", factor * sd,
                                paper_gain[m] * scale, at_most=True))
        if kd_gap is not None and paper_kd_gap is not None and m in kd_gap and m in paper_kd_gap:
            k = kd_gap[m] / paper_kd_gap[m]
            row = premise_row(f"P3 {m}: {label} x {k:.2f} ({m} - SFT gap)", factor * sd, paper_gain[m] * k,
                              at_most=True)
            rows.append({**row, "holds": bool(row["holds"] and row["threshold"] > 0)})
        rows.append(premise_row(f"P3 {m}: {label} as printed", factor * sd, paper_gain[m], at_most=True))
    return rows


def table1_power_rows(table1: pd.DataFrame, teacher_avg: float, sft_avg: float, n_seeds: int,
                      methods: Sequence[str]) -> list[dict]:
    """P3 rows from Table 1's tidy runs (tables.with_average applied): each method's paired SD of +POCL - baseline on
    Avg over the seeds both have (methods with fewer than 2 pairs are left out), the paper's Table 1 Avg gain, and
    our teacher - SFT gap on Avg.

    Args:
        table1: tidy rows of the Table 1 grid with the 'Avg' dataset (`tables.with_average`).
        teacher_avg: our teacher's Avg ROUGE-L.
        sft_avg: our SFT student's Avg ROUGE-L.
        n_seeds: the number of seeds the MDE is computed for.
        methods: the methods to check (each with variants "baseline" and "+POCL").

    Returns:
        `power_rows` for the methods with at least 2 pairs (the paper's GPT-2 Table 1 gain), with the KD - SFT rows
        when `table1` holds SFT baseline runs (our gap: the mean over seeds of the method's baseline Avg minus the
        SFT runs' mean).
    """
    avg = table1[table1.dataset == "Avg"]
    sd, gain, kd_gap, paper_kd_gap = {}, {}, {}, {}
    sft = by_seed(avg, "SFT", "baseline")
    for m in methods:
        base, other = by_seed(avg, m, "baseline"), by_seed(avg, m, "+POCL")
        diffs = [other[s] - base[s] for s in sorted(set(base) & set(other))]
        if len(diffs) >= 2:
            sd[m] = float(np.std(diffs, ddof=1))
            gain[m] = paper_diff(1, (m, "baseline"), (m, "+POCL"))["Avg"]
            if sft:
                kd_gap[m] = float(np.mean(list(base.values())) - np.mean(list(sft.values())))
                paper_kd_gap[m] = paper_diff(1, ("SFT", "baseline"), (m, "baseline"))["Avg"]
    return power_rows(sd, n_seeds, gain, teacher_avg - sft_avg, kd_gap, paper_kd_gap)


# ---- P4: distilling beats copying ------------------------------------------------------------------------------------


def distillation_rows(table1: Mapping[str, pd.DataFrame], methods: Sequence[str]) -> list[dict]:
    """P4 rows: per protocol, the best KD baseline - SFT on Avg, paired by seed, Holm-adjusted over the methods.

    For each protocol the KD methods' baselines are each compared with the SFT runs (`tables.paired`, Avg: mean
    difference, t CI, the paired t-test's p via `stats.p_value`); Holm's adjustment runs over the methods compared;
    the best is the largest mean difference. It holds when that difference is >= KD_MARGIN_SFT and its adjusted p is
    below KD_ALPHA. A protocol without SFT runs or without a method of two paired seeds gets a NaN row that fails.

    Args:
        table1: protocol ("sampled", "greedy") -> tidy rows of the Table 1 grid (`tables.tidy` of that protocol; Avg
            rows, if any, are recomputed).
        methods: the KD methods (each with variant "baseline").

    Returns:
        One `premise_row` dict per protocol: value = the best difference, threshold = KD_MARGIN_SFT, the method and
        its adjusted p in the premise's text, holds as above.
    """
    rows = []
    for protocol, df in table1.items():
        found = []
        for m in methods:
            r = paired(df[df.dataset != "Avg"], ("SFT", "baseline"), (m, "baseline")).set_index("dataset").loc["Avg"]
            if r.n_pairs >= 2:
                found.append((m, float(r["diff"]), p_value(float(r["diff"]), float(r.ci95), int(r.n_pairs))))
        if not found:
            rows.append({**premise_row(f"P4 best KD baseline - SFT student, {protocol}: no paired runs", math.nan,
                                       KD_MARGIN_SFT), "holds": False})
            continue
        p_adj = holm([p for _, _, p in found])
        best = max(range(len(found)), key=lambda i: found[i][1])
        m, diff = found[best][:2]
        row = premise_row(f"P4 best KD baseline ({m}) - SFT student, {protocol} (Holm p {p_adj[best]:.3g}, "
                          f"needs < {KD_ALPHA})", diff, KD_MARGIN_SFT)
        rows.append({**row, "holds": bool(row["holds"] and p_adj[best] < KD_ALPHA)})
    return rows


# ---- the table ------------------------------------------------------------------------------------------------------


def premise_row(premise: str, value: float, threshold: float, at_most: bool = False) -> dict:
    """One row of the premises table.

    Args:
        premise: the check, in words.
        value: the measured value.
        threshold: the bound it is held to.
        at_most: True: holds when value <= threshold; False: when value >= threshold.

    Returns:
        {"premise", "value", "threshold", "holds"}, the numbers as floats and holds as a bool.
    """
    holds = value <= threshold if at_most else value >= threshold
    return {"premise": premise, "value": float(value), "threshold": float(threshold), "holds": bool(holds)}


def premises_table(rows: list[dict]) -> pd.DataFrame:
    """The premise rows as a DataFrame with COLUMNS, in the order given.

    Args:
        rows: `premise_row` dicts (from `teacher_rows`, `measurer_rows`, `power_rows`, ...).

    Returns:
        The frame, columns premise, value, threshold, holds.
    """
    return pd.DataFrame(rows, columns=list(COLUMNS))
