"""Claim verdicts come from the numbers; paired comparisons pick the right rows."""
import numpy as np
import pandas as pd
import pytest

from scipy import stats

from conftest import load_script
from pocl_utils.analysis import tables
from pocl_utils.analysis.findings import claim_table, claims_by_protocol, excluded_effects, verdict
from pocl_utils.stats import holm, p_value
from pocl_utils.stats import paired_diff
from pocl_utils.analysis.frames import rank_agreement


def test_verdict_from_the_adjusted_p_value():
    assert verdict(1.0, 0.01, 3) == "supported"
    assert verdict(-1.0, 0.01, 3) == "contradicted"
    assert verdict(0.2, 0.2, 3) == "not separable from noise (same direction)"
    assert verdict(-0.2, 0.06, 3) == "not separable from noise (opposite direction)"
    assert verdict(1.0, np.nan, 1) == "too few seeds"


def test_p_value_equals_scipys_paired_t_test():
    a = {0: 10.0, 1: 12.5, 2: 9.0, 3: 11.0, 4: 14.0}
    b = {0: 11.2, 1: 12.9, 2: 10.4, 3: 11.1, 4: 15.5}
    diff, half, n = paired_diff(a, b)
    expected = stats.ttest_rel([b[s] for s in range(5)], [a[s] for s in range(5)]).pvalue
    assert p_value(diff, half, n) == pytest.approx(expected, rel=1e-9)


def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, np.nan, 0.02])  # NaN is not counted: m = 2
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_excluded_effects_names_the_paper_gain_outside_the_interval():
    assert excluded_effects(0.2, 0.5, 1.6) == "effects above +0.70 or below -0.30 (the paper's +1.60 among them)"
    assert excluded_effects(0.2, 0.5, 0.4) == "effects above +0.70 or below -0.30"


def _df(rows):
    out = []
    for method, variant, seed, value in rows:
        for ds in ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI"):
            out.append({"method": method, "variant": variant, "seed": seed, "dataset": ds, "rouge_l": value})
    return pd.DataFrame(out)


def test_claim_a_paired_by_seed_and_paper_number():
    df = _df([("KLD", "baseline", 0, 10.0), ("KLD", "baseline", 1, 20.0), ("KLD", "baseline", 2, 30.0),
              ("KLD", "+POCL", 0, 11.0), ("KLD", "+POCL", 1, 22.0), ("KLD", "+POCL", 2, 33.0)])
    t = claim_table(df)
    row = t[t.claim == "a"].iloc[0]
    assert row.ours_diff == pytest.approx(2.0) and row.n_seeds == 3  # paired: (1 + 2 + 3) / 3
    assert row.verdict == "not separable from noise (same direction)"  # sd 1 -> CI 2.48 > 2
    assert row.p_value == pytest.approx(stats.ttest_rel([11, 22, 33], [10, 20, 30]).pvalue)
    assert row.p_holm == pytest.approx(row.p_value)  # the only comparison of claim a here
    # the paper's Table 1 GPT-2 KLD: Avg 18.10 -> 19.70
    assert row.paper_diff == pytest.approx(19.70 - 18.10)


def test_ranking_agreement_signs():
    frame = pd.DataFrame({"rouge_l": [90.0, 70, 50, 30, 10], "ce": [0.1, 0.2, 0.3, 0.4, 0.5],
                          "fused": [5.0, 4, 3, 2, 1], "true_difficulty": [1.0, 2, 3, 4, 5]})
    t = rank_agreement(frame)
    assert np.allclose(t.spearman_rho, 1.0)  # every measurer oriented harder = larger agrees with the truth


def test_holm_applies_within_a_claim_family():
    # claim c has two comparisons (GKD, KLD), each with p < 0.05 alone (0.031, 0.041); Holm: 2 x 0.031 = 0.062 and
    # max(0.062, 0.041) = 0.062, so neither is supported after adjustment. A strong one (p = 0.007) would survive.
    def table(gkd_diffs):
        rows = []
        for seed, (g, k) in enumerate(zip(gkd_diffs, (1.0, 0.6, 1.3))):
            rows += [("GKD", "+POCL (H2E)", seed, 10.0), ("GKD", "+POCL (E2H)", seed, 10.0 + g),
                     ("KLD", "+POCL (H2E)", seed, 10.0), ("KLD", "+POCL (E2H)", seed, 10.0 + k)]
        return claim_table(_df(rows)).query("claim == 'c'").set_index("comparison")

    gkd, kld = "GKD +POCL (E2H) vs +POCL (H2E)", "KLD +POCL (E2H) vs +POCL (H2E)"
    c = table((1.0, 0.65, 1.25))
    assert c.p_value.to_numpy() == pytest.approx([0.0309, 0.0413], abs=5e-4)
    assert c.p_holm.to_numpy() == pytest.approx(holm(c.p_value.to_numpy()))
    assert (c.p_holm > 0.05).all() and c.verdict.str.startswith("not separable").all()
    c = table((5.0, 6.0, 4.5))
    assert c.loc[gkd].verdict == "supported" and c.loc[kld].verdict == "supported"  # 0.014 and 0.041


def test_claim_i_compares_one_schedule_with_the_baseline_and_has_no_paper_number():
    one = "+POCL (n=4, one schedule)"
    rows = []
    for seed, gap in enumerate((-3.0, -2.0, -4.0)):
        rows += [("KLD", "baseline", seed, 50.0), ("KLD", one, seed, 50.0 + gap), ("KLD", "+POCL (n=4)", seed, 40.0)]
    t = claim_table(_df(rows)).set_index("claim")
    assert t.loc["i", "comparison"] == f"KLD {one} vs baseline"
    assert t.loc["i", "ours_diff"] == pytest.approx(-3.0) and t.loc["i", "verdict"] == "contradicted"
    assert np.isnan(t.loc["i", "paper_diff"])  # the paper has no one-schedule row
    assert t.loc["h", "ours_diff"] == pytest.approx(7.0)  # one schedule vs restarts: (7 + 8 + 6) / 3


def test_claims_h_and_i_take_every_kd_method_that_has_the_runs_and_holm_over_them():
    """The subsets grid has KLD's and GKD's one-schedule runs; scripts/restarts_all_methods.py adds the other five:
    each method present becomes one comparison of claims h and i, and Holm adjusts over those present only."""
    one = "+POCL (n=4, one schedule)"
    rows = []
    for seed, gap in enumerate((2.0, 3.0, 2.5)):
        for method in ("KLD", "TVD"):
            rows += [(method, "baseline", seed, 50.0), (method, one, seed, 50.0 + gap),
                     (method, "+POCL (n=4)", seed, 45.0)]
    t = claim_table(_df(rows))
    h = t[t.claim == "h"].set_index("comparison")
    assert list(h.index) == [f"KLD {one} vs +POCL (n=4)", f"TVD {one} vs +POCL (n=4)"]  # Table 1's order
    assert (h.p_holm == h.p_value * 2).all()  # two equal p-values: Holm multiplies both by the family size, 2
    t = claim_table(_df([r for r in rows if r[0] == "KLD"]))
    assert t[t.claim == "h"].p_holm.tolist() == t[t.claim == "h"].p_value.tolist()  # a family of one


def test_claims_by_protocol_and_arm_means_average_per_seed_from_records():
    """findings.claims_by_protocol and tables.arm_means (the restarts and temperature-residual studies' tables) on
    hand-made records: claims h and i under both protocols, and per seed the Avg over the five sets."""
    from pocl_utils.data import EVAL_SETS
    from pocl_utils.experiment.config import baseline, pocl
    records = []
    for seed in range(3):
        for spec, score in ((baseline("RKL", seed), 50.0), (pocl("RKL", seed, variant="+POCL (n=4)"), 40.0 + seed),
                            (pocl("RKL", seed, restarts=False, variant="+POCL (n=4, one schedule)"), 45.0)):
            per_set = {ds: {"mean": score + (2.0 if ds == EVAL_SETS[0] else 0.0), "std": 0.0} for ds in EVAL_SETS}
            records.append((spec, {"metrics": {"eval": per_set, "greedy": per_set}, "key": f"{spec.variant}{seed}",
                                   "wall_s": 0.0, "git_commit": ""}))
    t = claims_by_protocol(records, claims=("h", "i")).set_index(["claim", "protocol"])
    assert set(t.index) == {(c, p) for c in ("h", "i") for p in ("sampled", "greedy")}
    assert t.loc[("h", "sampled"), "ours_diff"] == pytest.approx(4.0)  # 45 - (40, 41, 42)
    assert t.loc[("i", "greedy"), "ours_diff"] == pytest.approx(-5.0)
    means = tables.arm_means(records).set_index(["protocol", "variant"])
    assert means.loc[("sampled", "+POCL (n=4)"), "avg"] == pytest.approx(41.0 + 2.0 / len(EVAL_SETS))
    assert means.loc[("sampled", "+POCL (n=4)"), "sd"] == pytest.approx(1.0)
    assert (means.n_seeds == 3).all()


# ---- the controls grid (issue 23): hand-worked paired table and claims j-m ----------------------------------------
# KLD, three seeds, one Avg score per run (every eval set the same): arm -> scores of seeds 0, 1, 2
CONTROL_SCORES = {"baseline": (10.0, 12.0, 14.0), "+POCL": (11.0, 12.0, 16.0),
                  "+POCL (random subsets)": (10.0, 13.0, 14.0), "baseline (POCL's optimizer)": (11.0, 13.0, 16.0),
                  "baseline (restarts, all data)": (8.0, 10.0, 11.0)}


def _controls_df(scores=CONTROL_SCORES, method="KLD"):
    return _df([(method, v, s, x) for v, xs in scores.items() for s, x in enumerate(xs)])


def _t_half(diffs):
    d = np.asarray(diffs, dtype=float)
    return stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))


def test_controls_labels_are_the_grids():
    from pocl_utils.experiment import experiments
    assert set(CONTROL_SCORES) <= set(experiments.CONTROL_LABELS)


def test_paired_to_hand_worked_vs_baseline_and_vs_pocl():
    from pocl_utils.analysis.tables import paired_to
    t = paired_to(_controls_df()).set_index("variant")
    opt = t.loc["baseline (POCL's optimizer)"]
    assert opt["mean"] == pytest.approx(40.0 / 3) and opt.n_seeds == 3
    assert opt["vs baseline"] == pytest.approx(4.0 / 3)  # (1, 1, 2)
    assert opt["vs baseline ci95"] == pytest.approx(_t_half([1, 1, 2]))
    assert opt["vs +POCL"] == pytest.approx(1.0 / 3) and opt["vs +POCL n"] == 3  # (0, 1, 0)
    assert t.loc["baseline (restarts, all data)", "vs baseline"] == pytest.approx(-7.0 / 3)  # (-2, -2, -3)
    assert t.loc["+POCL", "vs baseline"] == pytest.approx(1.0)  # (1, 0, 2)
    assert np.isnan(t.loc["baseline", "vs baseline"]) and t.loc["baseline", "vs baseline n"] == 0  # not itself
    assert t.loc["baseline", "vs +POCL"] == pytest.approx(-1.0)
    assert np.isnan(t.loc["+POCL", "vs +POCL"])


def test_paired_to_never_pairs_across_training_protocols():
    from pocl_utils.analysis.tables import paired_to
    official = {"baseline": (20.0, 20.0, 20.0), "+POCL": (25.0, 26.0, 27.0)}
    df = pd.concat([_controls_df().assign(training="paper-text"), _controls_df(official).assign(training="official")])
    t = paired_to(df).set_index(["training", "variant"])
    assert t.loc[("official", "+POCL"), "vs baseline"] == pytest.approx(6.0)  # (5, 6, 7), its own baseline
    assert t.loc[("paper-text", "+POCL"), "vs baseline"] == pytest.approx(1.0)
    assert ("official", "baseline (POCL's optimizer)") not in t.index  # nothing borrowed from paper-text
    # one method's runs never pair with another's baseline
    two = pd.concat([_controls_df(), _controls_df({"+POCL": (1.0, 2.0, 3.0)}, method="GKD")])
    assert paired_to(two).set_index(["method", "variant"]).loc[("GKD", "+POCL"), "vs baseline n"] == 0


def test_controls_claims_hand_worked():
    t = claim_table(_controls_df()).set_index("claim")
    expected = {"j": [1, -1, 2],  # +POCL - random subsets: the order beyond the staging
                "k": [1, 1, 2],  # POCL's optimizer - baseline: the hyperparameters' part
                "l": [0, -1, 0],  # +POCL - POCL's optimizer: the curriculum beyond the hyperparameters
                "m": [-2, -2, -3]}  # restarts on all data - baseline: the restarts' cost (below zero)
    for claim, diffs in expected.items():
        row = t.loc[claim]
        assert row.ours_diff == pytest.approx(np.mean(diffs)) and row.n_seeds == 3, claim
        assert row.ci95 == pytest.approx(_t_half(diffs)), claim
        assert row.p_holm == pytest.approx(row.p_value)  # one method: a family of one
        assert np.isnan(row.paper_diff)  # the paper prints no control
    assert t.loc["k", "p_value"] == pytest.approx(stats.ttest_1samp([1, 1, 2], 0).pvalue)
    assert t.loc["m", "verdict"] == "contradicted"  # t = -7, p = 0.020: the restarts cost, significantly
    assert t.loc["k", "verdict"] == "not separable from noise (same direction)"  # t = 4, p = 0.057
    assert t.loc["l", "verdict"] == "not separable from noise (opposite direction)"


def test_claims_by_training_judges_each_protocol_apart_and_summary_counts_per_training():
    """findings.claims_by_training on hand-made records: the same labels under two training protocols are two
    families, and claim_summary keeps the training column."""
    from pocl_utils.analysis.findings import CONTROL_CLAIMS, claim_summary, claims_by_training
    from pocl_utils.data import EVAL_SETS
    from pocl_utils.experiment.config import baseline, pocl
    from pocl_utils.experiment.experiments import pocl_optimizer

    def recs(base, gain):
        out = []
        for seed in range(3):
            for spec, score in ((baseline("KLD", seed), base + seed), (pocl("KLD", seed), base + seed + gain[seed]),
                                (pocl_optimizer("KLD", seed), base + seed + 1.0)):
                per_set = {ds: {"mean": score, "std": 0.0} for ds in EVAL_SETS}
                out.append((spec, {"metrics": {"eval": per_set}, "key": f"{spec.variant}{seed}{base}", "wall_s": 0.0,
                                   "git_commit": ""}))
        return out
    t = claims_by_training({"official": recs(10.0, (3.0, 4.0, 5.0)), "paper-text": recs(30.0, (-1.0, 0.0, -2.0))},
                           CONTROL_CLAIMS)
    t = t.set_index(["training", "claim"])
    assert t.loc[("official", "a"), "ours_diff"] == pytest.approx(4.0)
    assert t.loc[("paper-text", "a"), "ours_diff"] == pytest.approx(-1.0)
    assert t.loc[("official", "l"), "ours_diff"] == pytest.approx(3.0)  # +POCL - POCL's optimizer: (2, 3, 4)
    assert set(t.reset_index().protocol) == {"sampled"}  # no greedy metrics in these records
    summary = claim_summary(t.reset_index()).set_index(["training", "protocol", "claim"])
    assert summary.loc[("official", "sampled", "a"), "supported"] == 1
    assert summary.loc[("paper-text", "sampled", "a"), "supported"] == 0


def test_hot_baseline_is_the_baseline_at_tau_2_and_claim_n_pairs_it_with_pocl_1_to_2():
    """The temperature grid's baseline at tau = 2 (no curriculum, one stage at tau 2 with the baseline's steps) and
    claim n, hand-worked: +POCL (temp. 1-2) - that baseline per seed (3, -1, 1) -> mean 1, one method a family of one."""
    from pocl_utils.curriculum import Protocol, plan_run
    from pocl_utils.experiment.config import baseline
    from pocl_utils.experiment.experiments import HOT_BASELINE, table1, temperature_ablation
    hot = [s for s in temperature_ablation(2) if s.variant == HOT_BASELINE]
    assert [(s.method, s.seed) for s in hot] == [(m, seed) for m in ("GKD", "KLD", "RKL", "JSD", "TVD", "SKL", "SRKL")
                                                 for seed in (0, 1)]
    table1_keys = [s.key() for s in table1(2)]  # +POCL (temp. 1-2) is Table 1's +POCL run: the same key
    pocl_12 = [s for s in temperature_ablation(2) if s.variant == "+POCL (temp. 1-2)"]
    assert len(pocl_12) == 14 and all(s.key() in table1_keys for s in pocl_12)
    assert all(not s.pocl and s.tau == (2.0, 2.0) and s.alpha == baseline(s.method).alpha for s in hot)
    stages = plan_run(np.arange(100), Protocol("paper-text", epochs=2, batch=10, lr=1e-3), pocl=False, n_subsets=4,
                      tau=hot[2].tau, alpha=hot[2].alpha)
    assert [(s.tau, s.alpha, s.steps, len(s.samples)) for s in stages] == [(2.0, 0.3, 20, 100)]
    df = _df([("KLD", HOT_BASELINE, 0, 10.0), ("KLD", HOT_BASELINE, 1, 12.0), ("KLD", HOT_BASELINE, 2, 11.0),
              ("KLD", "+POCL (temp. 1-2)", 0, 13.0), ("KLD", "+POCL (temp. 1-2)", 1, 11.0),
              ("KLD", "+POCL (temp. 1-2)", 2, 12.0)])
    row = claim_table(df).set_index("claim").loc["n"]
    assert row.comparison == "KLD +POCL (temp. 1-2) vs baseline (temp. 2)"
    assert row.ours_diff == pytest.approx(1.0) and row.ci95 == pytest.approx(_t_half([3, -1, 1]))
    assert row.p_holm == pytest.approx(row.p_value) and np.isnan(row.paper_diff)


# ---- scripts/temperature_residual.py: what +POCL keeps over the baseline at tau = 2 -------------------------------
def test_temperature_residual_arms_are_the_grids_runs_so_finished_runs_are_reused():
    """Its +POCL, baseline at tau = 2, random-subset and w/o-ratio runs have the keys of Table 1's, the temperature
    grid's, the controls' and the adaptive ablation's runs; GKD (alpha = 0 throughout) gets no w/o-ratio arm."""
    from pocl_utils.experiment import experiments as e
    script = load_script("temperature_residual")
    mine = script.specs(("GKD", "JSD", "TVD"), 2)
    assert len(mine) == 2 * (4 + 5 + 5)
    assert not [s for s in mine if s.method == "GKD" and s.variant == e.WITHOUT_RATIO]
    grids = e.table1(2) + e.temperature_ablation(2) + e.controls(2, methods=e.KD_METHODS) + e.adaptive_ablation(2)
    known = {(repr(s.key()), s.variant) for s in grids}
    relabel = {"+POCL (temp. 1-2)": "+POCL"}  # the temperature grid names Table 1's +POCL after its schedule
    known |= {(k, relabel.get(v, v)) for k, v in known}
    assert {(repr(s.key()), s.variant) for s in mine if s.method != "TVD" or s.variant != e.WITHOUT_RATIO} <= known
    tvd = [s for s in mine if s.method == "TVD" and s.variant == e.WITHOUT_RATIO]  # no grid has it: new runs
    assert [(s.alpha, s.tau, s.order) for s in tvd] == [((0.3, 0.3), (1.0, 2.0), "easy_to_hard")] * 2


def test_temperature_residual_families_split_the_gain_over_the_hot_baseline_hand_worked():
    """Hand-worked, one method, three seeds: +POCL 50, random subsets 49, w/o ratio 46, the baseline at tau = 2 45
    (+POCL with a little noise by seed): the order's part +1, the alpha schedule's +4, the staging's +1, and claim n the
    alpha's and the staging's parts together, +5."""
    from pocl_utils.experiment.experiments import HOT_BASELINE, RANDOM_SUBSETS, WITHOUT_RATIO
    script = load_script("temperature_residual")
    arms = {"+POCL": 50.0, RANDOM_SUBSETS: 49.0, WITHOUT_RATIO: 46.0, HOT_BASELINE: 45.0, "baseline": 40.0}
    noise = (0.0, 0.3, -0.2)
    df = _df([("SKL", v, seed, x + noise[seed] * (v == "+POCL")) for v, x in arms.items() for seed in range(3)])
    t = claim_table(df, families=script.families(("SKL", "KLD"))).set_index("claim")
    assert list(t.index) == ["n", "order", "alpha", "staging"]  # KLD has no runs: its comparisons are left out
    assert t.ours_diff.to_dict() == pytest.approx({"n": 5.0 + 0.1 / 3, "order": 1.0 + 0.1 / 3,
                                                   "alpha": 4.0 + 0.1 / 3, "staging": 1.0})
    assert t.loc["staging", "comparison"] == f"SKL {WITHOUT_RATIO} vs {HOT_BASELINE}"
    assert t.loc["staging", "ci95"] == pytest.approx(0.0)  # the same +1 at every seed
