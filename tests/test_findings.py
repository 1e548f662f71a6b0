"""Claim verdicts come from the numbers; paired comparisons pick the right rows."""
import numpy as np
import pandas as pd
import pytest

from pocl_utils.findings import claim_table, verdict
from pocl_utils.report import rank_agreement


def test_verdict_from_ci():
    assert verdict(1.0, 0.5, 3) == "supported"
    assert verdict(-1.0, 0.5, 3) == "contradicted"
    assert verdict(0.2, 0.5, 3) == "not separable from noise (same direction)"
    assert verdict(-0.2, 0.5, 3) == "not separable from noise (opposite direction)"
    assert verdict(1.0, np.nan, 1) == "too few seeds"


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
    # the paper's Table 1 GPT-2 KLD: Avg 18.10 -> 19.70
    assert row.paper_diff == pytest.approx(19.70 - 18.10)


def test_ranking_agreement_signs():
    frame = pd.DataFrame({"rouge_l": [90.0, 70, 50, 30, 10], "ce": [0.1, 0.2, 0.3, 0.4, 0.5],
                          "fused": [5.0, 4, 3, 2, 1], "true_difficulty": [1.0, 2, 3, 4, 5]})
    t = rank_agreement(frame)
    assert np.allclose(t.spearman_rho, 1.0)  # every measurer oriented harder = larger agrees with the truth
