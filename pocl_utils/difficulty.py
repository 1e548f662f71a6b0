"""Difficulty measurer of POCL (paper §3.1, Eq. 2): rank samples with the student by ROUGE-L and cross-entropy.

For each training sample the student (1) decodes greedily from the prompt, scored by ROUGE-L against the reference
(higher = easier), and (2) is teacher-forced on the reference response, scored by its mean token cross-entropy
(lower = easier). The two rank lists are fused by reciprocal rank fusion (Cormack et al., 2009):

    FR_score = sum_i 1 / (k + r_i),  k = 60                                   (Eq. 2)

r_i = the sample's rank in list i, 1 = easiest. Higher FR_score = easier.

`score_samples` is the fast path: one teacher-forced forward over [prompt + reference] per batch gives the CE, the
logits for the first generated token and, cropped to the prompt, the KV cache greedy decoding continues from, so no
token is computed twice. `score_samples_naive` is the per-sample oracle (generate, then a separate loss forward).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from .atomic import atomic_write_text
from .data import Encoded
from .modeling.generate import (Sampling, check_backend, cut_at_eos, decode, decode_from_cache,
                                decode_with_transformers, eval_mode, kv_cache, max_positions, model_device, pad_batch,
                                position_ids)

RRF_K = 60  # Eq. 2's k, from Cormack et al. (2009)
METHODS = ("fusion", "rouge_l", "ce")  # the ranking ablation of §5.1 / Table 2
CSV_COLUMNS = ("id", "rouge_l", "ce", "fused", "text")


# ---------------------------------------------------------------------------------------------------------------
# ranks and orders
# ---------------------------------------------------------------------------------------------------------------

def _as_scores(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"difficulty: {name} must be 1-D, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"difficulty: {name}[{bad[0]}] = {arr[bad[0]]} is not finite")
    return arr


def fuse_ranks(rouge_l, ce, k: float = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion (Eq. 2): FR = 1/(k + r_rouge) + 1/(k + r_ce); higher = easier.

    Ranks start at 1 for the easiest sample (highest ROUGE-L, lowest CE); tied values share the mean of their ranks.
    Deviation from the blog's reference code, which uses 0-based argsort-of-argsort ranks and breaks ties by index:
    we follow the paper and Cormack et al. (1-based ranks) and treat ties symmetrically.

    `rouge_l`: [n] the student's greedy ROUGE-L per sample (higher = easier).
    `ce`: [n] the student's mean reference cross-entropy per sample (lower = easier).
    `k`: the fusion constant, >= 0 (the paper: 60).
    Returns [n] FR scores, higher = easier.
    """
    rouge_l, ce = _as_scores(rouge_l, "rouge_l"), _as_scores(ce, "ce")
    if rouge_l.shape != ce.shape:
        raise ValueError(f"difficulty: rouge_l has {rouge_l.size} values but ce has {ce.size}")
    if not k >= 0:
        raise ValueError(f"difficulty: k must be >= 0, got {k}")
    rank_rouge = rankdata(-rouge_l, method="average")  # 1 = highest ROUGE-L
    rank_ce = rankdata(ce, method="average")  # 1 = lowest CE
    return 1.0 / (k + rank_rouge) + 1.0 / (k + rank_ce)


def order_from_scores(scores, *, higher_is_easier: bool = True) -> np.ndarray:
    """Sample positions sorted easiest first; equal scores keep their index order (stable sort).

    `scores`: [n] finite scores.
    Returns [n] int64 positions, easiest first.
    """
    scores = _as_scores(scores, "scores")
    return np.argsort(-scores if higher_is_easier else scores, kind="stable").astype(np.int64)


def rank_order(rouge_l, ce, method: str = "fusion", k: float = RRF_K) -> np.ndarray:
    """Sample positions easiest first by fusion (Eq. 2), ROUGE-L only or CE only (the §5.1 ablation).

    rouge_l, ce, k: as in `fuse_ranks`.
    Returns [n] int64 positions, easiest first.
    """
    if method == "fusion":
        return order_from_scores(fuse_ranks(rouge_l, ce, k))
    if method == "rouge_l":
        return order_from_scores(rouge_l, higher_is_easier=True)
    if method == "ce":
        return order_from_scores(ce, higher_is_easier=False)
    raise ValueError(f"difficulty: unknown ranking method {method!r}; valid: {', '.join(METHODS)}")


def order_by_truth(ids, true_difficulty) -> np.ndarray:
    """[n] int64 ids easiest first by a known true difficulty (higher = harder; the oracle control); equal
    difficulties keep their id order."""
    ids, truth = np.asarray(ids, dtype=np.int64), _as_scores(true_difficulty, "true_difficulty")
    if ids.shape != truth.shape:
        raise ValueError(f"difficulty: {ids.size} ids but {truth.size} true difficulties")
    return ids[np.argsort(truth, kind="stable")]


# ---------------------------------------------------------------------------------------------------------------
# the ranking table
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Ranking:
    """Per-sample difficulty scores. ids are the samples' dataset indices (Encoded.index); texts the greedy outputs."""

    ids: np.ndarray  # [n] int64
    rouge_l: np.ndarray  # [n] ROUGE-L F x 100 of the greedy output
    ce: np.ndarray  # [n] mean token cross-entropy (nats) of the reference response
    fused: np.ndarray  # [n] Eq. 2 score, higher = easier
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.rouge_l, self.ce = _as_scores(self.rouge_l, "rouge_l"), _as_scores(self.ce, "ce")
        self.fused = _as_scores(self.fused, "fused")
        sizes = {len(self.ids), len(self.rouge_l), len(self.ce), len(self.fused)}
        if self.texts is not None:
            sizes.add(len(self.texts))
        if len(sizes) != 1:
            raise ValueError(f"Ranking: columns have different lengths {sorted(sizes)}")
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("Ranking: ids must be unique")

    @classmethod
    def build(cls, ids, rouge_l, ce, texts: list[str] | None = None, k: float = RRF_K) -> Ranking:
        """A Ranking whose fused column is Eq. 2 (`fuse_ranks`, constant `k`) over the given ROUGE-L and CE.

        `ids`: [n] the samples' dataset indices, unique. `rouge_l`: [n] ROUGE-L F x 100 of each greedy output.
        `ce`: [n] mean token cross-entropy (nats) of each reference response. `texts`: None = not kept.
        Raises ValueError: columns of different lengths, repeated ids, a non-finite or non-1-D score, or k < 0.
        """
        return cls(ids, rouge_l, ce, fuse_ranks(rouge_l, ce, k), texts)

    def order(self, method: str = "fusion") -> np.ndarray:
        """[n] int64 sample ids (not positions) easiest first, by `method` "fusion", "rouge_l" or "ce" (`rank_order`);
        ties keep their position order. Raises ValueError for an unknown method."""
        if method == "fusion":
            return self.ids[order_from_scores(self.fused)]
        return self.ids[rank_order(self.rouge_l, self.ce, method)]

    def to_csv(self, path: str | Path) -> None:
        """Write atomically (temp file in the same folder, then rename; the folder created if missing). Columns
        CSV_COLUMNS (without "text" when texts is None); floats as repr(), which round-trips exactly (`from_csv`).
        """
        path = Path(path)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS if self.texts is not None else CSV_COLUMNS[:-1])
        for i in range(len(self.ids)):
            # repr() of a float round-trips exactly
            row = [int(self.ids[i]), repr(float(self.rouge_l[i])), repr(float(self.ce[i])), repr(float(self.fused[i]))]
            writer.writerow(row + ([self.texts[i]] if self.texts is not None else []))
        atomic_write_text(path, buf.getvalue())

    @classmethod
    def from_csv(cls, path: str | Path) -> Ranking:
        """A Ranking read back exactly from `to_csv`'s file (texts None without a text column).

        Raises ValueError: a wrong header, a row with the wrong number of fields or an unparsable number, naming its
        line; or columns the Ranking rejects.
        """
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or tuple(rows[0]) not in (CSV_COLUMNS, CSV_COLUMNS[:-1]):
            raise ValueError(f"{path}:1: header must be {','.join(CSV_COLUMNS)} (text optional), got {rows[:1]}")
        cols: list[list] = [[] for _ in rows[0]]
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(rows[0]):
                raise ValueError(f"{path}:{line}: expected {len(rows[0])} fields, got {len(row)}")
            try:
                values = [int(row[0])] + [float(v) for v in row[1:4]] + row[4:]
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {err}") from None
            for col, value in zip(cols, values):
                col.append(value)
        texts = cols[4] if len(cols) == 5 else None
        return cls(cols[0], cols[1], cols[2], cols[3], texts)


# ---------------------------------------------------------------------------------------------------------------
# scoring with the student: fast batched path
# ---------------------------------------------------------------------------------------------------------------

def special_ids(tokenizer) -> tuple[int, int]:
    """The tokenizer's EOS and pad ids; pad falls back to EOS as in GPT-2 setups.

    `tokenizer`: a tokenizer with `eos_token_id` (required) and `pad_token_id`.
    Returns (eos_id, pad_id).
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("difficulty: tokenizer has no eos_token_id")
    pad_id = tokenizer.pad_token_id
    return eos_id, eos_id if pad_id is None else pad_id


def check_encoded(encoded: list[Encoded], max_new_tokens: int, limit: int | None) -> None:
    """Clear errors for empty prompts/responses and samples too long for the model's positions.

    `limit`: the model's number of positions; None = unlimited.
    Raises ValueError: naming the first bad sample (its position and index).
    """
    for i, ex in enumerate(encoded):
        if not ex.prompt_ids or not ex.response_ids:
            raise ValueError(f"difficulty: encoded[{i}] (index {ex.index}) has an empty prompt or response")
        need = len(ex.prompt_ids) + max(len(ex.response_ids), max_new_tokens - 1)
        if limit is not None and need > limit:
            raise ValueError(f"difficulty: encoded[{i}] (index {ex.index}) needs {need} positions "
                             f"(prompt {len(ex.prompt_ids)}, response {len(ex.response_ids)}, max_new_tokens "
                             f"{max_new_tokens}) but the model has {limit}")


def response_ce(logits: torch.Tensor, response: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy per row [B] (nats), L_ce of Eq. 5 averaged over the real response tokens incl. EOS.

    `logits`: [B, R, V], column j predicts response token j; log-softmax runs in fp32.
    `response`: [B, R] right-padded token ids; `response_mask`: [B, R], 1 on real tokens.
    """
    labels = response.masked_fill(response_mask == 0, -100)  # [B, R]
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # [B, R]
    return nll.sum(-1) / response_mask.sum(-1).clamp(min=1)  # [B]


def _score_batch(model: torch.nn.Module, batch: list[Encoded], *, eos_id: int, pad_id: int,
                 max_new_tokens: int, backend: str = "pocl") -> tuple[list[list[int]], torch.Tensor]:
    """Greedy outputs and reference CE for one batch, from a single teacher-forced forward plus the decode loop."""
    device = model_device(model)
    prompt, prompt_mask = pad_batch([e.prompt_ids for e in batch], pad_id, device, left=True)  # [B, P]
    response, response_mask = pad_batch([e.response_ids for e in batch], pad_id, device, left=False)  # [B, R]
    # every prompt ends at column P-1, so the response columns line up across rows
    ids, mask = torch.cat([prompt, response], 1), torch.cat([prompt_mask, response_mask], 1)  # [B, P + R]
    n_resp = response.shape[1]
    # keep logits for columns P-1 .. P+R-1 only: column P-1+j predicts response token j
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                logits_to_keep=n_resp + 1)
    # the slice is a no-op when logits_to_keep is honoured, and keeps the columns right if a model ignores it
    logits, cache = out.logits[:, -(n_resp + 1):], kv_cache(out)  # [B, R + 1, V], KV for all P + R columns
    del out
    ce = response_ce(logits[:, :-1], response, response_mask)  # [B]
    first_logits = logits[:, 0].clone()  # [B, V] greedy's first step is the teacher-forced first prediction
    del logits  # the [B, R, V] block is the peak of memory; free it before decoding
    keys = torch.zeros(len(batch), dtype=torch.long, device=device)  # unused by greedy decoding
    if backend == "transformers":  # generate recomputes the last prompt column's logits from a P - 1 cache
        cache.crop(-(n_resp + 1))
        new = decode_with_transformers(model, prompt, prompt_mask, keys, eos_id=eos_id, pad_id=pad_id,
                                       max_new_tokens=max_new_tokens, sampling=Sampling(), cache=cache)
        return new, ce
    # causal attention: the prompt's keys/values do not depend on the response, so dropping the response
    # columns leaves exactly the cache a prompt-only prefill would build
    cache.crop(-n_resp)
    history = prompt.masked_fill(prompt_mask == 0, -1)
    new = decode_from_cache(model, cache, first_logits, prompt_mask, history, keys, eos_id=eos_id, pad_id=pad_id,
                            max_new_tokens=max_new_tokens, sampling=Sampling())
    return new, ce


def greedy_outputs_and_ce(model: torch.nn.Module, encoded: list[Encoded], *, eos_id: int, pad_id: int,
                          max_new_tokens: int, batch_size: int = 32,
                          backend: str = "pocl") -> tuple[list[list[int]], np.ndarray]:
    """Greedy continuation ids (cut at EOS) and mean reference CE (`response_ce`, [n]) per sample, in input order;
    batched, the decode continuing from the forward's cache (`backend`: "pocl" or "transformers")."""
    check_backend(backend)
    check_encoded(encoded, max_new_tokens, max_positions(model))
    if max_new_tokens < 1:
        raise ValueError(f"difficulty: max_new_tokens must be >= 1, got {max_new_tokens}")
    # sort by prompt length first (its padding costs on every decode step), then response length
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].prompt_ids), len(encoded[i].response_ids)))
    outputs: list[list[int]] = [[] for _ in encoded]
    ce_parts, positions = [], []
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            new, ce = _score_batch(model, [encoded[i] for i in batch], eos_id=eos_id, pad_id=pad_id,
                                   max_new_tokens=max_new_tokens, backend=backend)
            for i, tokens in zip(batch, new):
                outputs[i] = tokens
            ce_parts.append(ce)
            positions.extend(batch)
    ce_all = np.empty(len(encoded), dtype=np.float64)
    if encoded:
        ce_all[positions] = torch.cat(ce_parts).double().cpu().numpy()  # one transfer at the end
    return outputs, ce_all


def _rouge_scores(texts: list[str], references: list[list[str]]) -> np.ndarray:
    from .evaluate import rouge_l  # imported here: evaluate pulls in rouge-score only when scoring

    return np.array([rouge_l(text, refs) for text, refs in zip(texts, references)], dtype=np.float64)


def _check_unique_indices(encoded: list[Encoded]) -> None:
    """The Ranking is keyed by Encoded.index; check before the expensive pass, not after."""
    seen: dict[int, int] = {}
    for i, ex in enumerate(encoded):
        if ex.index in seen:
            raise ValueError(f"difficulty: encoded[{i}] and encoded[{seen[ex.index]}] share index {ex.index}; "
                             "the ranking needs unique sample indices")
        seen[ex.index] = i


def _references(tokenizer, encoded: list[Encoded], references: list[list[str]] | None) -> list[list[str]]:
    if references is None:
        return [[text] for text in decode(tokenizer, [e.response_ids for e in encoded])]
    if len(references) != len(encoded):
        raise ValueError(f"difficulty: {len(references)} reference lists for {len(encoded)} samples")
    return [[r] if isinstance(r, str) else list(r) for r in references]


def score_samples(model: torch.nn.Module, tokenizer, encoded: list[Encoded], *, max_new_tokens: int,
                  batch_size: int = 32, references: list[list[str]] | None = None, k: float = RRF_K) -> Ranking:
    """Score every sample with the student and fuse the ranks (Eq. 2); batched fast path. Returns a Ranking with each
    sample's ROUGE-L, CE, fused score and greedy text; ids = the samples' `index` values, which must be unique.

    `references`: each sample's reference strings (ROUGE-L takes the max over them); None = the decoded response.
    """
    eos_id, pad_id = special_ids(tokenizer)
    _check_unique_indices(encoded)
    refs = _references(tokenizer, encoded, references)
    outputs, ce = greedy_outputs_and_ce(model, encoded, eos_id=eos_id, pad_id=pad_id,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = decode(tokenizer, outputs)
    return Ranking.build([e.index for e in encoded], _rouge_scores(texts, refs), ce, texts, k)


# ---------------------------------------------------------------------------------------------------------------
# naive oracle: one sample at a time, HF generate then a separate loss forward (as the blog's reference code)
# ---------------------------------------------------------------------------------------------------------------

def greedy_outputs_and_ce_naive(model: torch.nn.Module, encoded: list[Encoded], *, eos_id: int, pad_id: int,
                                max_new_tokens: int) -> tuple[list[list[int]], np.ndarray]:
    """Per-sample oracle for greedy_outputs_and_ce (same result; no batch_size, no backend): unpadded HF generate,
    then a full forward for the CE.

    Raises ValueError: from `check_encoded`: an empty prompt or response, or a sample too long for the model's
    positions.
    """
    check_encoded(encoded, max_new_tokens, max_positions(model))
    device = model_device(model)
    outputs, ce = [], np.empty(len(encoded), dtype=np.float64)
    with eval_mode(model):
        for i, ex in enumerate(encoded):
            prompt = torch.tensor([ex.prompt_ids], device=device)  # [1, P]
            full = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
            outputs.append(cut_at_eos([full[0, prompt.shape[1]:].tolist()], eos_id)[0])
            seq = torch.tensor([ex.prompt_ids + ex.response_ids], device=device)  # [1, P + R]
            logits = model(input_ids=seq).logits[0, len(ex.prompt_ids) - 1:-1]  # [R, V]
            target = torch.tensor(ex.response_ids, device=device)  # [R]
            ce[i] = F.cross_entropy(logits.float(), target).item()
    return outputs, ce


def score_samples_naive(model: torch.nn.Module, tokenizer, encoded: list[Encoded], *, max_new_tokens: int,
                        references: list[list[str]] | None = None, k: float = RRF_K) -> Ranking:
    """Slow reference for score_samples: same arguments (no batch_size) and result, one sample at a time.

    Raises ValueError: repeated sample indices, a number of reference lists other than the number of samples, or a
    sample `check_encoded` rejects.
    """
    eos_id, pad_id = special_ids(tokenizer)
    _check_unique_indices(encoded)
    refs = _references(tokenizer, encoded, references)
    outputs, ce = greedy_outputs_and_ce_naive(model, encoded, eos_id=eos_id, pad_id=pad_id,
                                              max_new_tokens=max_new_tokens)
    texts = decode(tokenizer, outputs)
    return Ranking.build([e.index for e in encoded], _rouge_scores(texts, refs), ce, texts, k)
