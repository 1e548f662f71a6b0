"""POCL's premises: trivial rules, P1/P2 rows from hand-worked numbers, and the power calculation of P3."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pocl_utils.analysis import premises


def _row(instruction, input_, output):
    return {"instruction": instruction, "input": input_, "output": output, "references": [output]}


def test_rules_hand_worked():
    train = [_row("a", "", "x y"), _row("b", "", "z"), _row("c", "", "x y")]
    assert premises.most_frequent_answer(train) == "x y"
    sets = {"S": [_row("Reverse.", "p q", "q p"), _row("Say x y", "", "x y")]}
    rules = premises.rule_scores(sets, train)
    # echo: "p q" vs "q p" -> LCS 1 of 2 -> F 50; "Say x y" vs "x y" -> P 2/3, R 1 -> F 80. Mean 65.
    assert rules["echo input"]["S"] == pytest.approx(65.0)
    # frequent "x y": 0 on the first, 100 on the second
    assert rules["most frequent answer"]["S"] == pytest.approx(50.0)


def test_teacher_rows_check_every_set_against_sft_and_rules():
    rows = premises.teacher_rows({"DollyEval": 45.0, "UnNI": 20.0}, {"DollyEval": 40.0, "UnNI": 18.0},
                                 {"echo input": {"DollyEval": 10.0, "UnNI": 16.0}})
    table = premises.premises_table(rows).set_index("premise")
    assert table.loc["P1 teacher on DollyEval", "holds"]  # 45 >= 40
    assert table.loc["P1 teacher - SFT student on DollyEval", "value"] == pytest.approx(5.0)
    assert not table.loc["P1 teacher - SFT student on UnNI", "holds"]  # 2 < 3
    assert not table.loc["P1 teacher - echo input on UnNI", "holds"]  # 4 < 5
    assert list(table.columns) == ["value", "threshold", "holds"]


def test_measurer_rows():
    rouge = np.array([100.0, 50.0, 0.0, 0.0])
    fused = np.array([4.0, 3.0, 2.0, 1.0])  # easiest first
    rows = premises.premises_table(premises.measurer_rows(rouge, fused, np.array([1, 2, 3, 4])))
    assert rows.value.tolist() == pytest.approx([1.0, 0.5])  # rho +1 (easy = easy); half the rows score 0
    assert rows.holds.tolist() == [True, True]
    assert premises.premises_table(premises.measurer_rows(rouge, fused, None)).premise.tolist() == [
        "P2 share of training rows with student greedy ROUGE-L 0"]  # real data: no truth, no rho row


def test_mde_matches_a_simulated_paired_t_test():
    n, factor = 5, premises.mde_factor(5)
    assert factor == pytest.approx(1.68, abs=0.01)
    rng = np.random.default_rng(0)
    d = rng.normal(factor, 1.0, size=(20000, n))  # true mean difference = factor x SD
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    assert np.mean(p < 0.05) == pytest.approx(0.80, abs=0.015)
    assert premises.mde_factor(3) > premises.mde_factor(5) > premises.mde_factor(10)


def test_power_rows_scale_the_paper_gain_by_the_teacher_gap():
    rows = premises.premises_table(premises.power_rows({"KLD": 0.5}, 5, {"KLD": 1.6}, teacher_gap=3.32))
    assert len(rows) == 2 and rows.threshold[1] == pytest.approx(1.6)  # no KD gap given: teacher-gap and raw rows
    r = rows.iloc[0]
    assert r.value == pytest.approx(premises.mde_factor(5) * 0.5)
    assert r.threshold == pytest.approx(1.6 * 3.32 / 6.64)
    assert r.holds == (r.value <= r.threshold)


def test_table1_power_rows_from_tidy_runs():
    import pandas as pd
    rows = []
    for seed, gain in enumerate((1.0, 2.0, 3.0)):  # paired differences 1, 2, 3: SD 1
        rows += [{"method": "KLD", "variant": "baseline", "seed": seed, "dataset": "Avg", "rouge_l": 10.0},
                 {"method": "KLD", "variant": "+POCL", "seed": seed, "dataset": "Avg", "rouge_l": 10.0 + gain},
                 {"method": "RKL", "variant": "baseline", "seed": seed, "dataset": "Avg", "rouge_l": 10.0}]
    out = premises.premises_table(premises.table1_power_rows(pd.DataFrame(rows), 12.0, 8.68, 3, ("KLD", "RKL")))
    assert len(out) == 2  # RKL has no +POCL runs: no row; no SFT runs: no KD - SFT row (teacher gap, raw)
    assert out.value.tolist() == pytest.approx([premises.mde_factor(3) * 1.0] * 2)
    assert out.threshold[0] == pytest.approx((19.70 - 18.10) * (12.0 - 8.68) / 6.64)  # paper Table 1 KLD Avg gain
    assert out.threshold[1] == pytest.approx(19.70 - 18.10)  # as printed
    rows += [{"method": "SFT", "variant": "baseline", "seed": s, "dataset": "Avg", "rouge_l": 7.0} for s in range(3)]
    out = premises.premises_table(premises.table1_power_rows(pd.DataFrame(rows), 12.0, 8.68, 3, ("KLD",)))
    # our KLD baseline - SFT = 10 - 7 = 3; the paper's 18.10 - 16.80 = 1.30: the gain 1.60 scales by 3 / 1.3
    assert "KLD - SFT gap" in out.premise[1] and out.threshold[1] == pytest.approx(1.60 * 3.0 / 1.30)
    assert out.holds.tolist() == [False, True, False]  # MDE 3.26 (3 seeds, SD 1): above 0.80, below 3.69, above 1.60


def test_power_rows_with_a_kd_gap_at_or_below_zero_fail():
    rows = premises.premises_table(premises.power_rows({"KLD": 0.1}, 5, {"KLD": 1.6}, teacher_gap=6.64,
                                                       kd_gap={"KLD": -0.5}, paper_kd_gap={"KLD": 1.3}))
    assert rows.threshold.tolist() == pytest.approx([1.6, 1.6 * -0.5 / 1.3, 1.6])
    assert rows.holds.tolist() == [True, False, True]  # no detectable gain when KD adds nothing over SFT


def _kd_frame(gains: dict[str, list[float]], sft: list[float]):
    """Tidy rows: SFT and each method's baseline per seed, every eval set at the same score (so Avg = that score)."""
    import pandas as pd
    from pocl_utils.data import EVAL_SETS
    rows = [{"method": "SFT", "variant": "baseline", "seed": s, "dataset": d, "rouge_l": v}
            for s, v in enumerate(sft) for d in EVAL_SETS]
    rows += [{"method": m, "variant": "baseline", "seed": s, "dataset": d, "rouge_l": sft[s] + g}
             for m, gs in gains.items() for s, g in enumerate(gs) for d in EVAL_SETS]
    return pd.DataFrame(rows)


def test_distillation_rows_best_method_holm_and_both_protocols():
    sft = [50.0, 52.0, 51.0, 49.0, 50.0]
    sampled = _kd_frame({"KLD": [3.0, 3.2, 2.8, 3.1, 2.9], "RKL": [1.0, -1.0, 0.5, 0.0, 0.5]}, sft)
    greedy = _kd_frame({"KLD": [1.0, 1.2, 0.8, 1.1, 0.9], "RKL": [0.0, 0.1, -0.1, 0.0, 0.0]}, sft)
    table = premises.premises_table(premises.distillation_rows({"sampled": sampled, "greedy": greedy}, ("KLD", "RKL")))
    assert table.value.tolist() == pytest.approx([3.0, 1.0])  # the best method's mean paired difference
    assert "(KLD)" in table.premise[0] and "sampled" in table.premise[0] and "greedy" in table.premise[1]
    assert table.holds.tolist() == [True, False]  # greedy: significant but 1.0 < 2
    # Holm by hand: KLD's paired t-test (differences 3, 3.2, 2.8, 3.1, 2.9), times 2 (the smaller of two p-values)
    p_kld = stats.ttest_1samp([3.0, 3.2, 2.8, 3.1, 2.9], 0.0).pvalue
    assert f"Holm p {min(1.0, 2 * p_kld):.3g}" in table.premise[0]


def test_distillation_rows_need_significance_and_pairs():
    sft = [50.0, 52.0, 51.0]
    noisy = _kd_frame({"KLD": [9.0, -4.0, 5.0]}, sft)  # mean 3.33 >= 2 but p ~ 0.5: fails
    table = premises.premises_table(premises.distillation_rows({"sampled": noisy}, ("KLD",)))
    assert table.value[0] == pytest.approx(10 / 3) and not table.holds[0]
    lonely = _kd_frame({"KLD": [5.0]}, [50.0])  # one seed: no test
    table = premises.premises_table(premises.distillation_rows({"greedy": lonely}, ("KLD",)))
    assert np.isnan(table.value[0]) and not table.holds[0] and "no paired runs" in table.premise[0]


def test_distillation_rows_of_a_protocol_without_runs_fail():
    """A training protocol whose Table 1 has not run (an empty frame) gets the failing "no paired runs" row."""
    empty = pd.DataFrame(columns=["method", "variant", "seed", "dataset", "rouge_l"])
    table = premises.premises_table(premises.distillation_rows({"paper-text, sampled": empty}, ("KLD",)))
    assert np.isnan(table.value[0]) and not table.holds[0]
    assert "paper-text, sampled: no paired runs" in table.premise[0]


def test_convergence_frame_reads_each_runs_curve_end_beside_its_avg():
    """Two SFT seeds, one converged (flat at the end), one still falling; a KLD run without a loss curve gets NaN.
    Avg is the mean of the run's eval sets, hand-worked."""
    from pocl_utils.analysis import tables
    from pocl_utils.experiment.config import baseline

    def rec(key, scores, valid):
        return {"key": key, "wall_s": 1.0, "git_commit": "x",
                "metrics": {"eval": {ds: {"mean": v} for ds, v in scores.items()},
                            "train": {"steps": 625, "valid": valid}}}
    records = [
        (baseline("SFT", 0), rec("a", {"A": 40.0, "B": 60.0}, [{"loss": 1.9, "step": 313}, {"loss": 0.64, "step": 469},
                                                               {"loss": 0.60, "step": 625}])),
        (baseline("SFT", 1), rec("b", {"A": 20.0, "B": 40.0}, [{"loss": 1.5, "step": 313}, {"loss": 1.07, "step": 469},
                                                               {"loss": 0.95, "step": 625}])),
        (baseline("KLD", 0), rec("c", {"A": 50.0, "B": 50.0}, [{"rouge_l": 90.0, "step": 625}])),
    ]
    out = premises.convergence_frame(records, tables.with_average(tables.tidy(records))).set_index(["method", "seed"])
    assert out.loc[("SFT", 0), "valid_end"] == pytest.approx(0.60)
    assert out.loc[("SFT", 0), "valid_fall"] == pytest.approx(0.04)
    assert out.loc[("SFT", 1), "valid_fall"] == pytest.approx(0.12)
    assert out.loc[("SFT", 0), "avg"] == pytest.approx(50.0) and out.loc[("SFT", 1), "avg"] == pytest.approx(30.0)
    assert np.isnan(out.loc[("KLD", 0), "valid_end"]) and out.loc[("KLD", 0), "avg"] == pytest.approx(50.0)
    assert (out.variant == "baseline").all() and (out.steps == 625).all()
