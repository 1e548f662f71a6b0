"""Tests for pocl_utils.evaluate.rouge_l: rouge-score's rougeL (stemmed F-measure) x 100, max over references."""
from __future__ import annotations

import itertools
import re

import pytest
from nltk.stem.porter import PorterStemmer

from pocl_utils.evaluate import rouge_l, rouge_l_batch

PAIRS = [
    ("the cat sat on the mat", "the cat lay on the mat"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("He was running quickly to the stores", "he runs to the store"),
    ("A short answer", "A considerably longer reference answer with many more words in it"),
    ("", "something"),
    ("numbers 1 2 3 and 2024", "2024 numbers: 3, 2, 1"),
]


def naive_rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 x 100 from its definition (Lin 2004): LCS over tokens, P = LCS/|prediction|, R = LCS/|reference|.

    Tokens as rouge-score makes them: lower-case, runs of non-[a-z0-9] split, Porter stem on words over 3 letters."""
    stem = PorterStemmer().stem

    def tokens(text: str) -> list[str]:
        return [stem(w) if len(w) > 3 else w for w in re.sub(r"[^a-z0-9]+", " ", text.lower()).split()]

    p, r = tokens(prediction), tokens(reference)
    lcs = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]  # lcs[i][j]: LCS of p[:i] and r[:j]
    for i, j in itertools.product(range(1, len(p) + 1), range(1, len(r) + 1)):
        lcs[i][j] = lcs[i - 1][j - 1] + 1 if p[i - 1] == r[j - 1] else max(lcs[i - 1][j], lcs[i][j - 1])
    n = lcs[len(p)][len(r)]
    if n == 0:
        return 0.0
    precision, recall = n / len(p), n / len(r)
    return 100 * 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("prediction, reference", PAIRS)
def test_matches_the_definition(prediction, reference):
    expected = naive_rouge_l(prediction, reference)
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-9)
    assert rouge_l(prediction, [reference]) == pytest.approx(expected, abs=1e-9)


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
