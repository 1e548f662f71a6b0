"""README's result box and the main figure agree with the committed reference tables, and the functions that make
them compute what a hand-worked example says."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_script
from pocl_utils.analysis import figures, reference
from pocl_utils.stats import t_quantile

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "laptop"
SETS = ["DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI"]




@pytest.fixture(scope="module")
def avg() -> pd.DataFrame:
    return reference.avg_table(RESULTS)


def _minus2(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def _minus(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def test_readme_table_is_the_one_the_committed_csvs_give(avg):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert load_script("main_figure").between(readme) == reference.avg_markdown(avg).strip("\n"), \
        "README's result table differs from results/laptop: run scripts/main_figure.py"


def test_findings_summary_is_the_one_claims_csv_gives():
    script = load_script("main_figure")
    findings = (ROOT / "FINDINGS.md").read_text(encoding="utf-8")
    table = reference.claims_overview(pd.read_csv(RESULTS / "claims.csv"))
    assert script.between(findings, script.SUMMARY_START, script.SUMMARY_END) == table.strip("\n"), \
        "FINDINGS' summary table differs from results/laptop/claims.csv: run scripts/main_figure.py"


def test_avg_table_agrees_with_the_committed_table1_and_claims(avg):
    """Recomputed from runs.csv, the headline protocol's sampled means equal Table 1's committed Avg column, and the
    differences equal claim (a) in claims.csv under every training and evaluation protocol: the box reads the same
    run as every other table."""
    headline = avg.training.iloc[0]
    ours = pd.read_csv(RESULTS / "table1_kd_methods_ours.csv")
    for _, row in avg[(avg.protocol == "sampled") & (avg.training == headline)].iterrows():
        cell = ours[(ours.method == row.method) & (ours.variant == "baseline")].Avg.iloc[0]
        assert cell == f"{row.baseline:.2f} ± {row.baseline_ci:.2f}"
        if row.method not in ("SFT", "SeqKD"):
            cell = ours[(ours.method == row.method) & (ours.variant == "+POCL")].Avg.iloc[0]
            assert cell == f"{row.pocl:.2f} ± {row.pocl_ci:.2f}"
    claims = pd.read_csv(RESULTS / "claims.csv")
    a = claims[claims.claim == "a"]
    for _, c in a.iterrows():
        r = avg[(avg.training == c.training) & (avg.protocol == c.protocol)
                & (avg.method == c.comparison.split()[0])].iloc[0]
        assert r["diff"] == pytest.approx(c.ours_diff, abs=1e-9) and r["diff_ci"] == pytest.approx(c.ci95, abs=1e-9)
        assert r["verdict"] == c.verdict
    assert len(a) == 14 * avg.training.nunique() and set(avg.protocol) == {"sampled", "greedy"}
    assert list(avg.training.drop_duplicates()) == ["official", "paper-text"]  # the headline's protocol first


def test_the_box_lines_state_the_committed_ranges(avg):
    """The numbers of the box's prose: the range of +POCL − baseline per training and evaluation protocol, and the
    KD baselines − SFT range under each training protocol (sampled)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    box = readme[:readme.index("## Two commands")]
    for (training, protocol), d in avg.groupby(["training", "protocol"]):
        d = d["diff"].dropna()
        assert f"{_minus2(d.min())} to {_minus2(d.max())}" in box, (training, protocol)
    for training in ("official", "paper-text"):
        s = avg[(avg.protocol == "sampled") & (avg.training == training)].set_index("method")
        kd = s.drop(index=["SFT", "SeqKD"]).baseline - s.loc["SFT", "baseline"]
        assert f"{_minus2(kd.min())} to {_minus2(kd.max())} {training}" in box, training


def test_readme_and_findings_embed_the_committed_main_figure():
    for doc in ("README.md", "FINDINGS.md"):
        assert "figures/laptop/main_avg_rouge_l.png)" in (ROOT / doc).read_text(encoding="utf-8"), doc
    assert (ROOT / "figures" / "laptop" / "main_avg_rouge_l.png").stat().st_size > 10_000


def _runs(rows: list[tuple]) -> pd.DataFrame:
    """A runs.csv of (method, variant, seed, per-set sampled score, per-set greedy score or NaN), every set equal."""
    return pd.DataFrame([{"grid": "table1", "method": m, "variant": v, "seed": s, "dataset": ds, "rouge_l": x,
                          "greedy_rouge_l": g} for m, v, s, x, g in rows for ds in SETS])


def test_avg_table_by_hand(tmp_path):
    """Two seeds: KLD baseline 10, 20; +POCL 14, 18 (every set alike, so Avg = the set score). Means 15 and 16, the
    paired difference +4 and −2, mean +1 with half-width t(0.975, 1) · sd / √2 = 12.706 · 3√2 / √2. No greedy scores:
    no greedy rows. A grid other than table1 is ignored."""
    runs = _runs([("KLD", "baseline", 0, 10.0, math.nan), ("KLD", "baseline", 1, 20.0, math.nan),
                  ("KLD", "+POCL", 0, 14.0, math.nan), ("KLD", "+POCL", 1, 18.0, math.nan)])
    other = _runs([("KLD", "baseline", 0, 99.0, math.nan)]).assign(grid="order")
    pd.concat([runs, other]).to_csv(tmp_path / "runs.csv", index=False)
    t = reference.avg_table(tmp_path)
    assert list(t.protocol) == ["sampled"] and list(t.method) == ["KLD"]
    r = t.iloc[0]
    assert (r.baseline, r.pocl, r["diff"], r.n_seeds) == (15.0, 16.0, 1.0, 2)
    assert r.diff_ci == pytest.approx(t_quantile(1) * 3.0 * math.sqrt(2) / math.sqrt(2))
    assert r.baseline_ci == pytest.approx(t_quantile(1) * np.std([10, 20], ddof=1) / math.sqrt(2))
    assert math.isnan(r.p_holm) and r.verdict == ""  # no claims.csv
    md = reference.avg_markdown(t)
    assert md.splitlines()[2] == f"| KLD | 15.00 ± {r.baseline_ci:.2f} | 16.00 ± {r.pocl_ci:.2f} | +1.00 ± {r.diff_ci:.2f} |"


def test_one_seed_and_a_method_without_pocl_give_no_interval(tmp_path):
    _runs([("SFT", "baseline", 0, 30.0, 40.0), ("KLD", "baseline", 0, 10.0, 12.0),
           ("KLD", "+POCL", 0, 8.0, 11.0)]).to_csv(tmp_path / "runs.csv", index=False)
    t = reference.avg_table(tmp_path)
    assert list(t.protocol) == ["sampled", "sampled", "greedy", "greedy"]
    sft = t[(t.method == "SFT") & (t.protocol == "greedy")].iloc[0]
    assert sft.baseline == 40.0 and math.isnan(sft.baseline_ci) and math.isnan(sft.pocl)
    lines = reference.avg_markdown(t).splitlines()
    assert lines[2] == "| SFT | 30.00 | — | — | 40.00 | — | — |"
    assert lines[3] == "| KLD | 10.00 | 8.00 | −2.00 | 12.00 | 11.00 | −1.00 |"


def test_avg_table_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs.csv"):
        reference.avg_table(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        reference.runs_tidy(pd.DataFrame(), "beam")
    with pytest.raises(ValueError, match="greedy_rouge_l"):
        reference.runs_tidy(_runs([("KLD", "baseline", 0, 1.0, 1.0)]).drop(columns="greedy_rouge_l"), "greedy")


def test_main_figure_draws_every_method_and_its_difference(avg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = figures.main_figure(avg)
    try:
        axes = fig.axes
        panels = [(t, p) for t in avg.training.drop_duplicates() for p in ("sampled", "greedy")]
        assert [a.get_title() for a in axes] == [
            f"training: {t}; " + ("sampled protocol (the paper's)" if p == "sampled" else "greedy protocol")
            for t, p in panels]
        for ax, (training, protocol) in zip(axes, panels):
            d = avg[(avg.training == training) & (avg.protocol == protocol)]
            heights = sorted(round(p.get_height(), 6) for p in ax.patches)
            assert heights == sorted(round(x, 6) for x in list(d.baseline) + list(d.pocl.dropna()))
            assert [t.get_text() for t in ax.texts] == [_minus(x) for x in d["diff"].dropna()]
            assert [t.get_text() for t in ax.get_xticklabels()] == list(d.method)
        head, note = fig._suptitle.get_text().split("\n")
        assert head == "Avg ROUGE-L over the five eval sets: baseline vs +POCL"  # not a panel's title
        assert "n = 5 training seeds" in note
    finally:
        plt.close(fig)
    fig = figures.main_figure(avg, title="mine")
    assert fig._suptitle.get_text().startswith("mine\n")
    plt.close(fig)
    with pytest.raises(ValueError, match="no rows"):
        figures.main_figure(avg.iloc[:0])


def test_the_script_replaces_only_the_table():
    script = load_script("main_figure")
    text = f"a\n{script.START}\nold\n{script.END}\nb\n"
    assert script.with_table(text, "| new |\n") == f"a\n{script.START}\n| new |\n{script.END}\nb\n"
    assert script.between(script.with_table(text, "| new |\n")) == "| new |"
    with pytest.raises(ValueError, match="markers"):
        script.with_table("no markers", "x")


def test_claims_overview_by_hand():
    """Two comparisons of one claim: the range of the differences; one comparison: difference ± CI; verdicts
    counted per protocol, 'not separable' counted as undecided."""
    claims = pd.DataFrame([
        {"claim": "a", "paper_says": "P beats B", "comparison": "X", "ours_diff": -2.0, "ci95": 1.0,
         "verdict": "contradicted", "paper_diff": 1.5, "protocol": "sampled"},
        {"claim": "a", "paper_says": "P beats B", "comparison": "Y", "ours_diff": 0.5, "ci95": 1.0,
         "verdict": "not separable from noise (same direction)", "paper_diff": 2.0, "protocol": "sampled"},
        {"claim": "h", "paper_says": "ours", "comparison": "Z", "ours_diff": 3.25, "ci95": 0.5,
         "verdict": "supported", "paper_diff": math.nan, "protocol": "sampled"}])
    lines = reference.claims_overview(claims).splitlines()
    assert lines[0] == "| claim | the paper says | paper | ours, sampled | verdicts |"
    assert lines[2] == "| a | P beats B | +1.50 to +2.00 | −2.00 to +0.50 | sampled: 1 contradicted, 1 undecided |"
    assert lines[3] == "| h | ours | — | +3.25 ± 0.50 | sampled: 1 supported |"


def test_avg_table_and_markdown_keep_training_protocols_apart(tmp_path):
    """runs.csv with a training column: each training protocol's Table 1 is summarised on its own rows (the same
    labels name other runs there), runs_tidy defaults to the first (the headline's), the claim's verdict is the one
    of its training protocol, and the Markdown gets a training column."""
    official = _runs([("KLD", "baseline", 0, 10.0, math.nan), ("KLD", "+POCL", 0, 14.0, math.nan)])
    text = _runs([("KLD", "baseline", 0, 20.0, math.nan), ("KLD", "+POCL", 0, 15.0, math.nan)])
    pd.concat([official.assign(training="official"), text.assign(training="paper-text")]).to_csv(
        tmp_path / "runs.csv", index=False)
    pd.DataFrame([{"claim": "a", "comparison": "KLD +POCL vs baseline", "protocol": "sampled", "p_holm": p,
                   "verdict": v, "training": t} for t, p, v in (("official", 0.5, "undecided"),
                                                                 ("paper-text", 0.01, "contradicted"))]).to_csv(
        tmp_path / "claims.csv", index=False)
    t = reference.avg_table(tmp_path)
    assert list(t.training) == ["official", "paper-text"]
    assert list(t["diff"]) == [4.0, -5.0] and list(t.verdict) == ["undecided", "contradicted"]
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(reference.runs_tidy(runs).rouge_l.unique()) == [10.0, 14.0]
    assert list(reference.runs_tidy(runs, training="paper-text").rouge_l.unique()) == [20.0, 15.0]
    lines = reference.avg_markdown(t).splitlines()
    assert lines[0].startswith("| training | method | sampled: baseline")
    assert lines[2] == "| official | KLD | 10.00 | 14.00 | +4.00 (undecided) |"
    assert lines[3] == "| paper-text | KLD | 20.00 | 15.00 | −5.00 (contradicted) |"


def test_claims_overview_has_a_column_per_training_and_evaluation_protocol():
    """A claim judged under one training protocol only shows '—' under the other."""
    rows = [{"claim": c, "paper_says": "s", "comparison": "X", "ours_diff": d, "ci95": 1.0, "verdict": "supported",
             "paper_diff": 1.0, "protocol": "sampled", "training": t}
            for c, t, d in (("a", "official", 2.0), ("a", "paper-text", -1.0), ("b", "official", 3.0))]
    lines = reference.claims_overview(pd.DataFrame(rows)).splitlines()
    assert lines[0] == ("| claim | the paper says | paper | ours, official, sampled | ours, paper-text, sampled "
                        "| verdicts |")
    assert lines[2] == ("| a | s | +1.00 | +2.00 ± 1.00 | −1.00 ± 1.00 | official, sampled: 1 supported; "
                        "paper-text, sampled: 1 supported |")
    assert lines[3].split(" | ")[4] == "—"


def test_main_figure_has_a_row_of_panels_per_training_protocol(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [("KLD", "baseline", s, 10.0 + s, 11.0) for s in (0, 1)] + [("KLD", "+POCL", s, 12.0 + s, 9.0)
                                                                        for s in (0, 1)]
    pd.concat([_runs(rows).assign(training=t) for t in ("official", "paper-text")]).to_csv(
        tmp_path / "runs.csv", index=False)
    fig = figures.main_figure(reference.avg_table(tmp_path))
    try:
        assert [a.get_title() for a in fig.axes] == [
            "training: official; sampled protocol (the paper's)", "training: official; greedy protocol",
            "training: paper-text; sampled protocol (the paper's)", "training: paper-text; greedy protocol"]
    finally:
        plt.close(fig)


def test_findings_paper_text_ablation_rows_are_the_studys_claims():
    """Every 'difference ± CI' in a claim row of FINDINGS' paper-text ablations table is that claim's row of
    results/laptop/ablations_paper-text/claims.csv (paper-text, sampled or greedy), so the prose table cannot drift
    from the study's tables."""
    findings = (ROOT / "FINDINGS.md").read_text(encoding="utf-8")
    section = findings.split("## The ablations under paper-text", 1)[1].split("\n## ", 1)[0]
    claims = pd.read_csv(RESULTS / "ablations_paper-text" / "claims.csv").query("training == 'paper-text'")
    checked = 0
    for line in section.splitlines():
        m = re.search(r", claim ([a-n])\s*\|", line)
        if not m:
            continue
        rows = claims[claims.claim == m.group(1)]
        published = {f"{_minus2(d)} ± {h:.2f}" for d, h in zip(rows.ours_diff, rows.ci95)}
        for cell in re.findall(r"[+−]\d+\.\d\d ± \d+\.\d\d", line):
            assert cell in published, (m.group(1), cell)
            checked += 1
    assert checked >= 16  # claims a, c, d, g and n, four cells each


def test_findings_temperature_residual_numbers_are_the_studys():
    """FINDINGS' split of +POCL's distance to the tau = 2 baseline (scripts/temperature_residual.py) quotes
    results/laptop/ablations_paper-text/temperature_residual.csv: each 'METHOD ±d ± h' is that method's row of the family
    it is quoted for (sampled), each range the family's lowest and highest difference."""
    findings = " ".join((ROOT / "FINDINGS.md").read_text(encoding="utf-8").split())
    text = findings.split("`scripts/temperature_residual.py` splits", 1)[1].split("Under greedy", 1)[0]
    table = pd.read_csv(RESULTS / "ablations_paper-text" / "temperature_residual.csv").query("protocol == 'sampled'")
    labels = {"order": "**the order**", "alpha": "**the α schedule**", "staging": "**the staging at equal α**"}
    starts = sorted((text.index(label), family) for family, label in labels.items())
    quoted = {family: text[start:end] for (start, family), (end, _) in zip(starts, [*starts[1:], (len(text), "")])}
    checked = 0
    for family, part in quoted.items():
        rows = table[table.claim == family]
        diffs = dict(zip(rows.comparison.str.split().str[0], rows.ours_diff))
        for method, d, h in re.findall(r"([A-Z]{3,4}) ([+−]\d+\.\d) ± (\d+\.\d)", part):
            half = rows[rows.comparison.str.startswith(method + " ")].ci95.iloc[0]
            assert (d, h) == (_minus(diffs[method]), f"{half:.1f}"), (family, method)
            checked += 1
        for lo, hi in re.findall(r"([+−]\d+\.\d) to ([+−]\d+\.\d)", part):
            assert (lo, hi) == (_minus(min(diffs.values())), _minus(max(diffs.values()))), family
            checked += 1
    assert checked == 6  # the three families' ranges; GKD's and TVD's order, RKL's staging
