"""Evaluation of generated responses.

ROUGE-L comes first: the metric of MiniLLM, DistiLLM and POCL (paper Sec. 5, and the Rouge-L half of the
difficulty measurer, Eq. 2).
"""
from __future__ import annotations

import numpy as np

import functools
from collections.abc import Sequence

# ---------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    """One shared RougeScorer (building it loads the Porter stemmer)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F-measure x 100 of `prediction`, the max over `references` (a string or a non-empty list of them).

    LCS-based F1 on rouge-score's tokens: lower-cased, Porter-stemmed, non-ASCII-alphanumerics dropped (the rouge-score
    default that MiniLLM/POCL use, so text in other scripts scores 0).
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    for text in [prediction, *refs]:
        if not isinstance(text, str):
            raise TypeError(f"rouge_l takes strings, got {type(text).__name__}: {text!r}")
    scorer = _rouge_scorer()
    best = max(scorer.score(target=ref, prediction=prediction)["rougeL"].fmeasure for ref in refs)
    return 100.0 * best


def rouge_l_batch(predictions: Sequence[str], references_list: Sequence[str | Sequence[str]]) -> list[float]:
    """rouge_l of each (prediction, references) pair, in [0, 100]."""
    if len(predictions) != len(references_list):
        raise ValueError(f"{len(predictions)} predictions but {len(references_list)} reference entries")
    return [rouge_l(p, r) for p, r in zip(predictions, references_list)]


# ---- evaluating a model: sampled responses -> ROUGE-L per set (MiniLLM / POCL protocol, A.2.3) -----------------

MINILLM_SAMPLING = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=6)


def subset(n: int, max_examples: int, seed: int = 0) -> list[int]:
    """Sorted positions in [0, n) of a seeded subset (all of them when max_examples is 0 or >= n)."""
    if not max_examples or max_examples >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_examples, replace=False).tolist())


def responses(model, tokenizer, encoded: list, *, max_new_tokens: int, seed: int | None = None,
              batch_size: int = 64, sampling: dict | None = None) -> list[str]:
    """One decoded response per example (`data.Encoded`; its `index` keys the row's sampling noise), cut at EOS:
    greedy, or sampled with `sampling` (e.g. MINILLM_SAMPLING) and `seed`."""
    from .modeling.generate import decode, generate
    outs = generate(model, [e.prompt_ids for e in encoded], eos_id=tokenizer.eos_token_id,
                    pad_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens, seed=seed,
                    batch_size=batch_size, keys=[e.index for e in encoded], **(sampling or {}))
    return decode(tokenizer, outs)


def evaluate_set(model, tokenizer, encoded: list, references: list[list[str]], *, seeds: tuple[int, ...],
                 max_new_tokens: int, batch_size: int = 64) -> dict:
    """Mean ROUGE-L of responses sampled with MINILLM_SAMPLING (temperature 1) for each seed, and their mean and std
    over seeds (paper: 5 seeds, A.2.3); other arguments as in `responses`.

    Returns {"per_seed": {seed: mean ROUGE-L}, "mean", "std": sample std over seeds (0 for one seed), "n": examples,
    "per_row": each example's ROUGE-L, mean over the seeds, "index": each example's `index` (its position in its set),
    in per_row's order}.
    """
    per_seed, per_row = {}, []
    for seed in seeds:
        texts = responses(model, tokenizer, encoded, max_new_tokens=max_new_tokens, seed=seed,
                          batch_size=batch_size, sampling=MINILLM_SAMPLING)
        scores = rouge_l_batch(texts, references)
        per_seed[int(seed)] = float(np.mean(scores))
        per_row.append(scores)
    values = np.array(list(per_seed.values()))
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    rows = np.mean(np.asarray(per_row, dtype=np.float64), axis=0).tolist() if encoded else []
    return {"per_seed": per_seed, "mean": float(values.mean()), "std": std, "n": len(encoded), "per_row": rows,
            "index": [e.index for e in encoded]}


def greedy_rouge_rows(model, tokenizer, encoded: list, references: list[list[str]], *, max_new_tokens: int,
                      batch_size: int = 64) -> dict:
    """ROUGE-L of each example's greedy response, the greedy protocol's record for a set (arguments as in
    `evaluate_set`): {"mean" in [0, 100], "n", "per_row": each example's ROUGE-L, "index": each example's `index` (its
    position in its set), in per_row's order}.
    """
    texts = responses(model, tokenizer, encoded, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = [float(x) for x in rouge_l_batch(texts, references)]
    return {"mean": float(np.mean(rows)), "n": len(encoded), "per_row": rows, "index": [e.index for e in encoded]}


def greedy_rouge(model, tokenizer, encoded: list, references: list[list[str]], *, max_new_tokens: int,
                 batch_size: int = 64) -> float:
    """Mean ROUGE-L in [0, 100] of greedy responses (`greedy_rouge_rows`' "mean"): the validation score used for
    checkpoint selection (A.2.2)."""
    return greedy_rouge_rows(model, tokenizer, encoded, references, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)["mean"]
