"""Tests for pocl_utils.evaluate.rouge_l: rouge-score's rougeL (stemmed F-measure) x 100, max over references."""
from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from pocl_utils.evaluate import rouge_l, rouge_l_batch

PAIRS = [
    ("the cat sat on the mat", "the cat lay on the mat"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("He was running quickly to the stores", "he runs to the store"),
    ("A short answer", "A considerably longer reference answer with many more words in it"),
    ("", "something"),
    ("numbers 1 2 3 and 2024", "2024 numbers: 3, 2, 1"),
]


@pytest.mark.parametrize("prediction, reference", PAIRS)
def test_matches_rouge_score(prediction, reference):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * scorer.score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)
    assert rouge_l(prediction, [reference]) == pytest.approx(expected, abs=1e-12)


def test_hand_worked_lcs():
    # 6 tokens each, LCS "the cat on the mat" = 5: P = R = 5/6, F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(500 / 6)
    # prediction 2 tokens, reference 4, LCS 2: P = 1, R = 1/2, F = 2/3.
    assert rouge_l("a c", "a b c d") == pytest.approx(200 / 3)


def test_stemming_and_case():
    assert rouge_l("Running DOGS", "run dog") == pytest.approx(100.0)
    assert rouge_l("running dogs", "ran doggy") == pytest.approx(0.0)  # 'ran' and 'doggy' stem elsewhere


def test_identical_and_disjoint():
    text = "Distillation transfers a teacher's knowledge to a student."
    assert rouge_l(text, text) == pytest.approx(100.0)
    assert rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert rouge_l("", "anything") == 0.0


def test_list_references_take_the_max():
    refs = ["completely different words", "the cat lay on the mat", "the cat sat on the mat"]
    scores = [rouge_l("the cat sat on the mat", r) for r in refs]
    assert rouge_l("the cat sat on the mat", refs) == max(scores) == pytest.approx(100.0)
    assert rouge_l("the cat sat on the mat", refs[:2]) == pytest.approx(500 / 6)


def test_batch_and_errors():
    predictions = [p for p, _ in PAIRS]
    references = [[r] for _, r in PAIRS]
    assert rouge_l_batch(predictions, references) == [rouge_l(p, r) for p, r in PAIRS]
    with pytest.raises(ValueError, match="predictions"):
        rouge_l_batch(predictions, references[:-1])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("x", [])
    with pytest.raises(TypeError):
        rouge_l(None, "x")
