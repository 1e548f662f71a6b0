"""Per-row analysis: per-row scores kept by the evaluation, the late words of a world, the per-row frame and the
POCL - baseline gap by the eval rows' true difficulty and late words, on hand-made rows and records."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pocl_utils import evaluate
from pocl_utils.analysis import figures, frames


def test_evaluate_set_and_greedy_keep_each_rows_score(monkeypatch):
    answers = {None: ["a b", "x"], 1: ["a b", "y"], 2: ["a c", "x"]}  # greedy (seed None) and two sampling seeds
    monkeypatch.setattr(evaluate, "responses", lambda model, tok, enc, seed=None, **k: answers[seed])
    refs = [["a b"], ["x"]]
    rows = [SimpleNamespace(index=7), SimpleNamespace(index=3)]  # Encoded-like: each row's position in its set
    out = evaluate.evaluate_set(None, None, rows, refs, seeds=(1, 2), max_new_tokens=4)
    # seed 1: 100, 0; seed 2: "a c" vs "a b" -> LCS 1 of 2 -> 50, 100
    assert out["per_row"] == pytest.approx([75.0, 50.0]) and out["index"] == [7, 3]
    assert out["per_seed"] == pytest.approx({1: 50.0, 2: 75.0}) and out["mean"] == pytest.approx(62.5)
    assert list(out) == ["per_seed", "mean", "std", "n", "per_row", "index"]  # the records' key order
    greedy = evaluate.greedy_rouge_rows(None, None, rows, refs, max_new_tokens=4)
    assert greedy == {"mean": 100.0, "n": 2, "per_row": [100.0, 100.0], "index": [7, 3]}
    assert list(greedy) == ["mean", "n", "per_row", "index"]
    assert evaluate.greedy_rouge(None, None, rows, refs, max_new_tokens=4) == 100.0


def _w(level, instruction, input_, output, difficulty=None, **extra):
    return {"level": level, "difficulty": level if difficulty is None else difficulty, "instruction": instruction,
            "input": input_, "output": output, **extra}


def test_late_words_are_those_seen_only_at_the_top_level():
    train = [_w(1, "Translate.", "cat dog", "kat dag"), _w(2, "Translate.", "cat owl", "kat ool"),
             _w(3, "Translate.", "owl bee", "ool bii"), _w(3, "Translate: yak", "", "yek", clean_output="yak!"),
             _w(3, "Translate.", "cat", "kat")]
    # 'yek' is only a noisy reference: the right answer 'yak' counts; the template's words come at every level
    assert frames.late_words(train) == {"bee", "bii", "yak"}
    assert frames.late_words([{"instruction": "x", "output": "y"}]) == set()  # real data: no levels


def _record(method, variant, seed, scores, protocol_key="greedy"):
    spec = SimpleNamespace(method=method, variant=None if variant in ("baseline", "+POCL") else variant,
                           pocl=variant != "baseline", seed=seed)
    return spec, {"metrics": {protocol_key: {ds: {"per_row": s, "index": list(range(len(s)))}
                                             for ds, s in scores.items()}}}


SETS = {"train": [_w(1, "T.", "cat", "kat"), _w(4, "T.", "cat owl", "kat ool")],
        "DollyEval": [_w(1, "T.", "cat", "kat"), _w(2, "T.", "cat cat", "kat kat", difficulty=3),
                      _w(2, "T.", "owl cat", "ool kat", difficulty=3)],
        "UnNI": [_w(5, "T.", "owl owl", "ool ool", difficulty=5)]}


def test_per_row_frame_and_gap_by_difficulty_and_late_words():
    records = [_record("KLD", "baseline", 0, {"DollyEval": [90.0, 60.0, 40.0], "UnNI": [20.0]}),
               _record("KLD", "+POCL", 0, {"DollyEval": [95.0, 50.0, 40.0], "UnNI": [10.0]}),
               _record("KLD", "baseline", 1, {"DollyEval": [80.0, 60.0, 50.0], "UnNI": [30.0]}),
               _record("KLD", "+POCL", 1, {"DollyEval": [85.0, 40.0, 40.0], "UnNI": [10.0]}),
               _record("KLD", "+POCL", 2, {"DollyEval": [0.0, 0.0, 0.0], "UnNI": [0.0]}),  # no baseline: unpaired
               (SimpleNamespace(method="KLD", variant=None, pocl=False, seed=3), {"metrics": {"greedy": {
                   "DollyEval": {"mean": 50.0, "n": 3}}}})]  # a record from before per-row scores: no rows
    frame = frames.per_row_frame(records, SETS)
    assert len(frame) == 5 * 4
    one = frame[(frame.seed == 0) & (frame.variant == "+POCL") & (frame.dataset == "DollyEval")]
    assert one.difficulty.tolist() == [1.0, 3.0, 3.0] and one.late_words.tolist() == [False, False, True]
    by_diff = frames.per_row_gap(frame, ("KLD", "baseline"), ("KLD", "+POCL"), "difficulty")
    # difficulty 1: +5, +5; difficulty 3: seed 0 mean(-10, 0) = -5, seed 1 mean(-20, -10) = -15; 5: -10, -20
    assert by_diff.difficulty.tolist() == [1.0, 3.0, 5.0]
    assert by_diff["diff"].tolist() == pytest.approx([5.0, -10.0, -15.0])
    assert by_diff.n_seeds.tolist() == [2, 2, 2] and by_diff.n_rows.tolist() == [1, 2, 1]
    assert by_diff.ci95[0] == pytest.approx(0.0) and by_diff.ci95[1] == pytest.approx(12.706 * 5.0, rel=1e-3)
    by_late = frames.per_row_gap(frame, ("KLD", "baseline"), ("KLD", "+POCL"), "late_words")
    # late ('owl'): seed 0 mean(0, -10) = -5, seed 1 mean(-10, -20) = -15; not late: seed 0 mean(5, -10), seed 1
    # mean(5, -20)
    assert by_late.late_words.tolist() == [False, True]
    assert by_late["diff"].tolist() == pytest.approx([(-2.5 - 7.5) / 2, -10.0])
    with pytest.raises(ValueError, match="protocol"):
        frames.per_row_frame(records, SETS, protocol="beam")
    both = frames.per_row_gaps(records, SETS, ("KLD", "GKD"), "greedy")
    assert both["difficulty"].comparison.tolist() == ["KLD"] * 3  # GKD has no runs: no rows
    assert both["late_words"]["diff"].tolist() == pytest.approx(by_late["diff"].tolist())
    sampled = frames.per_row_frame([_record("KLD", "baseline", 0, {"UnNI": [7.0]}, protocol_key="eval")], SETS,
                                   protocol="sampled")
    assert sampled.rouge_l.tolist() == [7.0]


def test_per_row_gap_figure_draws_each_groups_difference():
    import matplotlib
    matplotlib.use("Agg")
    d = pd.DataFrame({"difficulty": [1.0, 2.0], "diff": [1.5, -2.0], "ci95": [0.5, np.nan], "n_seeds": [5, 5],
                      "n_rows": [10, 10], "comparison": "KLD"})
    late = pd.DataFrame({"late_words": [False, True], "diff": [0.5, -4.0], "ci95": [0.2, 1.0], "n_seeds": [5, 5],
                         "n_rows": [30, 4], "comparison": "KLD"})
    fig = figures.per_row_gap_figure(d, late, "greedy")
    heights = [[p.get_height() for p in ax.patches] for ax in fig.axes]
    assert heights == [pytest.approx([1.5, -2.0]), pytest.approx([0.5, -4.0])]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["no", "yes"]
    assert fig.axes[1].get_xlabel() == "needs a word seen only at the top level"
    assert "n = 5 training seeds" in fig._suptitle.get_text()
    fig = figures.per_row_gap_figure(d, late[~late.late_words], "greedy")  # a world where no eval row needs one
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["no"]
    assert fig.axes[1].get_xlabel() == "needs a word seen only at the top level\n(no eval row does)"


def test_per_row_gap_figure_draws_empty_panels_for_data_without_true_difficulty():
    """Real data has no true difficulty: per_row_gaps gives empty frames, and the figure is drawn without bars."""
    import matplotlib
    matplotlib.use("Agg")
    columns = ["diff", "ci95", "n_seeds", "n_rows", "comparison"]
    fig = figures.per_row_gap_figure(pd.DataFrame(columns=["difficulty", *columns]),
                                     pd.DataFrame(columns=["late_words", *columns]), "sampled")
    assert [len(ax.patches) for ax in fig.axes] == [0, 0]
