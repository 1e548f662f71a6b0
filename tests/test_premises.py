"""POCL's premises: trivial rules, P1/P2 rows from hand-worked numbers, and the power calculation of P3."""
import numpy as np
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
    assert len(out) == 1  # RKL has no +POCL runs: no row
    assert out.value[0] == pytest.approx(premises.mde_factor(3) * 1.0)
    assert out.threshold[0] == pytest.approx((19.70 - 18.10) * (12.0 - 8.68) / 6.64)  # paper Table 1 KLD Avg gain
