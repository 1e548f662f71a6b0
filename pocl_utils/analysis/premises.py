"""POCL's premises, measured in a world before its grid is believed.

    P1  the teacher is worth distilling: on every eval set it beats the SFT student by >= 3 ROUGE-L and every
        trivial rule (echo the input; the most frequent training answer) by >= 5; in distribution it scores >= 40;
    P2  the difficulty measurer can see difficulty: Spearman(fusion rank, true difficulty) >= 0.5 over the training
        rows, and the student's greedy ROUGE-L is 0 on at most half of them;
    P3  the grid has the power to see the paper's gains: per Table-1 method, the minimum detectable effect (80% power,
        two-sided 5%, paired over seeds) beside the paper's gain scaled by our teacher - SFT gap, by the method's own
        KD - SFT gap (a gap <= 0 fails the row), and as printed;
    P4  distilling beats copying: the best KD baseline beats the SFT student by >= 2 ROUGE-L Avg, paired over seeds,
        Holm-adjusted p < 0.05, under both protocols (sampled at temperature 1, and greedy).

`premises_table` gives `premises.csv` (columns premise, value, threshold, holds); `convergence_frame` shows, per
seed, whether a baseline was still converging when its budget ended (what makes P4's seeds spread).
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
from .tables import by_seed, paired, row_label, with_average

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

    `row`: a data row with `instruction` and optionally `input`.
    """
    return row.get("input") or row["instruction"]


def most_frequent_answer(train_rows: Sequence[Mapping]) -> str:
    """The most frequent `output` of the training rows (first seen wins a tie).

    Raises ValueError: no training rows.
    """
    if not train_rows:
        raise ValueError("most_frequent_answer: no training rows")
    return Counter(r["output"] for r in train_rows).most_common(1)[0][0]


def rule_scores(sets: Mapping[str, Sequence[Mapping]], train_rows: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """{"echo input": {set: score}, "most frequent answer": {set: score}}: mean ROUGE-L of each trivial rule's answers
    on eval sets of rows with `instruction`, `input` and `references` (or `output`); no model, no sampling."""
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
    """P1 rows (eval set -> mean ROUGE-L inputs; `sft` mean over training seeds, `rules` from `rule_scores`): the
    in-distribution teacher score first, then per eval set (EVAL_SETS order) teacher - SFT (threshold
    TEACHER_MARGIN_SFT) and teacher - each rule (TEACHER_MARGIN_RULE).
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
    """1-based float ranks of Eq. 2 scores, 1 = easiest (highest fused score); ties share their mean rank."""
    return stats.rankdata(-np.asarray(fused, dtype=np.float64), method="average")


def measurer_rows(rouge_l, fused, true_difficulty) -> list[dict]:
    """P2 rows: Spearman(fusion rank of `fused`, true difficulty) with threshold MEASURER_RHO (only when the truth is
    known: not for real data), then the share of training rows whose greedy ROUGE-L is 0 (at most MEASURER_ZERO_SHARE).
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
    """Power of a two-sided paired t-test with n pairs when the true mean difference is effect_over_sd x the paired SD,
    from the noncentral t (df n - 1, noncentrality effect_over_sd * sqrt(n)); NaN for n < 2, 1 where scipy's nct gives
    NaN far in the tail.
    """
    if n < 2:
        return math.nan
    df, crit, nc = n - 1, stats.t.ppf(1 - alpha / 2, n - 1), effect_over_sd * math.sqrt(n)
    power = stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)
    return float(np.nan_to_num(power, nan=1.0))  # scipy's nct gives NaN far in the tail, where power is 1


def mde_factor(n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The minimum detectable effect of a paired t-test with n pairs, in units of the paired SD (n = 5: 1.68): where
    `paired_power` reaches `power` (solved on [1e-6, 20]); inf for n < 2."""
    if n < 2:
        return math.inf
    return float(optimize.brentq(lambda d: paired_power(d, n, alpha) - power, 1e-6, 20.0))


def power_rows(paired_sd: Mapping[str, float], n_seeds: int, paper_gain: Mapping[str, float],
               teacher_gap: float, kd_gap: Mapping[str, float] | None = None,
               paper_kd_gap: Mapping[str, float] | None = None) -> list[dict]:
    """P3 rows: per method of `paired_sd` (SD of +POCL - baseline over the seeds), the MDE (80% power) against the
    paper's gain (ROUGE-L points) scaled three ways.

    MDE = mde_factor(n_seeds) x paired SD. Thresholds: paper gain x teacher_gap / PAPER_TEACHER_GAP (our teacher - SFT
    gap); paper gain x kd_gap[m] / paper_kd_gap[m] (KD baseline - SFT, Avg; only for methods in both maps, None = no
    such rows; a scale <= 0 gives a threshold no MDE meets); and the paper gain as printed. holds = MDE <= threshold
    and threshold > 0: where it fails, a null result says little.
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
    """P3 rows (`power_rows`) from Table 1's tidy rows with the 'Avg' dataset (`tables.with_average`): each method's
    paired SD of +POCL - baseline on Avg over the seeds both have (methods with fewer than 2 pairs are left out), the
    paper's GPT-2 Table 1 Avg gain, our teacher - SFT gap, and, when `table1` holds SFT runs, each method's KD - SFT
    gap (the mean over seeds of its baseline Avg minus the SFT runs' mean).
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

    Each KD method's baseline is compared with the SFT runs (`tables.paired` on Avg: mean difference, t CI, p via
    `stats.p_value`); the best is the largest mean difference. It holds when that is >= KD_MARGIN_SFT with adjusted
    p < KD_ALPHA. A protocol without SFT runs or without a method of two paired seeds gets a NaN row that fails.

    `table1`: a label naming the protocol(s) (e.g. "sampled", or "official, greedy") -> tidy rows of the Table 1 grid
    scored under it (Avg rows, if any, are recomputed); an empty frame gives the failing "no paired runs" row.
    Returns one `premise_row` per protocol, the method and its adjusted p in the premise's text.
    """
    rows = []
    for protocol, df in table1.items():
        found = []
        for m in methods if len(df) else ():
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
    """One row of the premises table: {"premise", "value", "threshold", "holds"}, numbers as floats, holds a bool
    (value <= threshold with `at_most`, else value >= threshold)."""
    holds = value <= threshold if at_most else value >= threshold
    return {"premise": premise, "value": float(value), "threshold": float(threshold), "holds": bool(holds)}


def premises_table(rows: list[dict]) -> pd.DataFrame:
    """The `premise_row` dicts as a DataFrame with COLUMNS (premise, value, threshold, holds), in the order given."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def convergence_frame(records: Sequence[tuple], table1: pd.DataFrame) -> pd.DataFrame:
    """Per run: where its validation curve ended and how fast it was still falling, beside its Avg ROUGE-L.

    A run whose checkpoint-selection loss (the references' cross-entropy under the student, profile key
    select_metric "loss") still falls over its last check interval had not converged when its budget ran out; when
    that happens in some seeds of a method and not in others, the seeds spread, and a paired test over them loses its
    power (P4's SFT student).

    `records`: (spec, record) pairs (`runner.records_for`); runs whose record has no "loss" curve get NaN.
    `table1`: the same runs' tidy rows (`tables.tidy`, one protocol); their Avg is recomputed.
    Returns one row per (method, variant, seed): valid_end (the last check's loss), valid_fall (the check before it
    minus the last; > 0 = still falling), steps, and avg (mean ROUGE-L over the eval sets).
    """
    curves = {}
    for spec, rec in records:
        valid = [v for v in rec["metrics"].get("train", {}).get("valid", []) if "loss" in v]
        end = valid[-1]["loss"] if valid else math.nan
        fall = valid[-2]["loss"] - end if len(valid) >= 2 else math.nan
        label = (spec.method, row_label(spec), spec.seed)
        curves[label] = {"valid_end": end, "valid_fall": fall, "steps": rec["metrics"].get("train", {}).get("steps")}
    avg = with_average(table1[table1.dataset != "Avg"])
    avg = avg[avg.dataset == "Avg"].set_index(["method", "variant", "seed"]).rouge_l
    rows = [{"method": m, "variant": v, "seed": s, **c, "avg": float(avg.get((m, v, s), math.nan))}
            for (m, v, s), c in curves.items()]
    return pd.DataFrame(rows, columns=["method", "variant", "seed", "valid_end", "valid_fall", "steps", "avg"])
