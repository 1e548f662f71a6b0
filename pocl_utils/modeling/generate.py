"""Batched decoding with a KV cache: greedy or seeded sampling, length-sorted left-padded batches.

Used for the student's greedy outputs in the difficulty measurer (§3.1), for student-generated outputs (SGOs) and for
evaluation with MiniLLM's test-time settings (temperature 1, top_k 0, top_p 1, no_repeat_ngram_size 6).

Sampling is independent of batch composition: the Gumbel noise for token t of sequence `key` is a pure integer hash
of (seed, key, t, vocabulary id), so the same prompt with the same key gives the same tokens in any batch, at any
batch size, on any device (up to float round-off in the logits at an exact probability boundary).

Two backends return the same tokens on the CPU: "pocl", this module's loop (the default; it drops finished rows from
the batch), and "transformers", `model.generate` with the n-gram ban and the Gumbel noise as LogitsProcessors
(`NgramBan`, `GumbelNoise`; greedy argmax over the noised scores is the sample).
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .heads import position_ids
from .models import autocast

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # odd multiplier < 2**27, so a 32-bit value times it stays inside int64
BACKENDS = ("pocl", "transformers")  # the decoding loop: ours (default), or transformers' generate + our processors


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. do_sample=False is greedy (argmax); the others then only matter for no_repeat_ngram_size."""

    do_sample: bool = False
    temperature: float = 1.0  # sampling temperature, > 0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    no_repeat_ngram_size: int = 0  # 0 = off; counts prompt tokens too, like HF generate
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"generate: top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generate: top_p must be in (0, 1], got {self.top_p}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"generate: no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")


# ---------------------------------------------------------------------------------------------------------------
# padding and positions
# ---------------------------------------------------------------------------------------------------------------

def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device | str, *, left: bool) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Pad token lists to one length, on the left or on the right.

    `seqs`: the token lists, at least one.
    Returns (ids [B, L], mask [B, L]) with mask 1 on real tokens, L = the longest list.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids.to(device), mask.to(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def max_positions(model: torch.nn.Module) -> int | None:
    """Longest sequence the model's position embeddings allow (GPT-2 n_positions, Llama max_position_embeddings).

    Returns the number of positions, or None when the config does not say.
    """
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout), no autograd and the device's autocast for the block; the training flag is restored after.

    The autocast is `models.autocast`: bf16 on a GPU, nothing on the CPU. `no_grad`, not `inference_mode`: the tensors
    made here may meet autograd later (an FSDP-sharded model gathers its weights into buffers that later training steps
    reuse, and those cannot be inference tensors).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(model_device(model)):
            yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------------
# token choice: n-gram ban, top-k / top-p, counter-based Gumbel noise
# ---------------------------------------------------------------------------------------------------------------

def ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """Set to -inf every token of `scores` [B, V] that would complete an n-gram (`n`, 0 = off) already in the row's
    `history` [B, L] (-1 on pad slots, pads on the left only); the input itself when nothing can be banned."""
    if n <= 0 or history.shape[1] < n:
        return scores
    windows = history.unfold(1, n, 1)  # [B, W, n], W = L - n + 1
    tail = history[:, history.shape[1] - n + 1:]  # [B, n-1] the current (n-1)-gram
    # windows starting on a pad contain a pad; pads are left-aligned so checking the first slot suffices
    match = (windows[:, :, :-1] == tail[:, None, :]).all(-1) & (windows[:, :, 0] >= 0)  # [B, W]
    hits = torch.zeros(scores.shape, dtype=torch.long, device=scores.device)  # [B, V]
    # scatter_add rather than scatter: several windows may ban the same token, and add is order-independent
    hits.scatter_add_(1, windows[:, :, -1].clamp(min=0), match.long())
    return scores.masked_fill(hits > 0, float("-inf"))


def filter_top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k highest scores (0 = off), then the smallest set of tokens whose probability reaches top_p
    (1.0 = off); the others of `scores` [B, V] go to -inf."""
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)  # [B, V]
        probs = sorted_scores.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # [B, V] probability of strictly better tokens
        drop_sorted = mass_before >= top_p  # the best token always stays (mass_before = 0 < top_p)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # back to vocabulary order
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer mixer (xorshift-multiply), on int64 tensors holding values in [0, 2**32)."""
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    x = ((x >> 16) ^ x) * _MIX & _MASK32
    return (x >> 16) ^ x


def counter_uniform(seed: int, keys: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """Uniform noise [B, V] float64, strictly inside (0, 1), a pure function of (seed, key, step, vocabulary id), so a
    sequence's draws do not depend on its batch neighbours or on earlier draws. `keys`: [B] int64, taken mod 2**32.
    """
    seed_h = _mix32(torch.tensor(seed & _MASK32, device=keys.device))
    row = _mix32(_mix32(seed_h ^ (keys & _MASK32)) ^ (step & _MASK32))  # [B]
    row2 = _mix32(row ^ 0x9E3779B9)  # [B] second row key, so two rows never share a permuted noise vector
    vocab = torch.arange(vocab_size, device=keys.device)  # [V]
    bits = _mix32(_mix32(row[:, None] ^ vocab[None, :]) ^ row2[:, None])  # [B, V] in [0, 2**32)
    return (bits.double() + 0.5) / 2.0 ** 32  # strictly inside (0, 1)


def gumbel_scores(scores: torch.Tensor, keys: torch.Tensor, step: int, sampling: Sampling) -> torch.Tensor:
    """Scores [B, V] (float64) whose argmax is the sampled token: temperature, top-k/top-p, then Gumbel noise.

    Gumbel-max: argmax_v (s_v + g_v), g_v = -log(-log u_v), u_v ~ U(0, 1), is a draw from softmax(s).
    `scores`: [B, V]; `keys`: [B] int64 (`counter_uniform`).
    """
    scores = filter_top_k_top_p(scores / sampling.temperature, sampling.top_k, sampling.top_p)
    u = counter_uniform(sampling.seed, keys, step, scores.shape[-1])  # [B, V] float64
    gumbel = -torch.log(-torch.log(u))
    return scores.double() + gumbel


def pick_next_token(logits: torch.Tensor, history: torch.Tensor, keys: torch.Tensor, step: int,
                    sampling: Sampling) -> torch.Tensor:
    """Next token per row [B]: n-gram ban, then argmax (greedy), or `gumbel_scores`' argmax (a sample).

    `logits`: [B, V]; `history`: [B, L] prompt + generated tokens, -1 on pads; `keys`: [B] int64.
    """
    scores = ban_repeated_ngrams(logits.float(), history, sampling.no_repeat_ngram_size)  # [B, V]
    if not sampling.do_sample:
        return scores.argmax(-1)
    return gumbel_scores(scores, keys, step, sampling).argmax(-1)


# ---------------------------------------------------------------------------------------------------------------
# the decoding loop
# ---------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model: torch.nn.Module, cache: object) -> dict[str, object]:
    """{name: cache}: the keyword that hands a KV cache to `model`'s forward or `generate`: `cache` from transformers
    5.25, `past_key_values` before (deprecated there, to be removed from forward in 5.40)."""
    return {_cache_keyword(type(model)): cache}


def kv_cache(out: dict) -> object:
    """The KV cache of a forward's output (`out.cache` from transformers 5.25, `out.past_key_values` before).

    `out`: the model's output, computed with use_cache=True.
    """
    return out["cache"] if "cache" in out else out["past_key_values"]


def prefill(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[object, torch.Tensor]:
    """One forward over left-padded prompts `ids` [B, P] (`mask` 1 on real tokens): (KV cache, next-token logits
    [B, V])."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                logits_to_keep=1)
    return kv_cache(out), out.logits[:, -1]


def decode_from_cache(model: torch.nn.Module, cache: object, next_logits: torch.Tensor, mask: torch.Tensor,
                      history: torch.Tensor, keys: torch.Tensor, *, eos_id: int, pad_id: int,
                      max_new_tokens: int, sampling: Sampling) -> list[list[int]]:
    """Continue B left-padded sequences from their cache; returns the new tokens per row, cut at (excluding) EOS.

    Finished rows are dropped from the batch (and cache) so a long straggler does not drag them through every step.

    `cache`: the KV cache of exactly the prompts (length P = mask.shape[1]); modified in place.
    `next_logits`: [B, V] the logits that predict the first new token.
    `mask`: [B, P], 1 on real tokens; `history`: [B, P] the prompts with -1 on pads; `keys`: [B] int64.
    """
    device = next_logits.device
    out = torch.full((next_logits.shape[0], max_new_tokens), pad_id, dtype=torch.long, device=device)  # [B, T]
    rows = torch.arange(next_logits.shape[0], device=device)  # [b] original row of each live row
    next_pos = mask.sum(-1)  # [b] position of the first new token
    for step in range(max_new_tokens):
        token = pick_next_token(next_logits, history, keys, step, sampling)  # [b]
        out[rows, step] = token
        if step == max_new_tokens - 1:
            break
        done = token == eos_id  # [b]
        if bool(done.any()):  # the one host sync per step, needed to stop early
            live = (~done).nonzero().squeeze(1)  # [b']
            if live.numel() == 0:
                break
            cache.batch_select_indices(live)
            rows, mask, next_pos, history, keys, token = (
                t[live] for t in (rows, mask, next_pos, history, keys, token))
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [b, P + step + 1]
        history = torch.cat([history, token[:, None]], dim=1)
        step_out = model(input_ids=token[:, None], attention_mask=mask, position_ids=(next_pos + step)[:, None],
                         **with_cache(model, cache), use_cache=True)
        next_logits = step_out.logits[:, -1]  # [b, V]
    return cut_at_eos(out.tolist(), eos_id)


# ---------------------------------------------------------------------------------------------------------------
# the same choice inside transformers' generate: two LogitsProcessors, greedy argmax picks
# ---------------------------------------------------------------------------------------------------------------

class NgramBan(LogitsProcessor):
    """`ban_repeated_ngrams` as a LogitsProcessor: left pads of the prompt (`prompt_mask` [B, P] 0) never count as
    tokens, unlike in transformers' NoRepeatNGramLogitsProcessor, which also loops over rows in Python."""

    def __init__(self, n: int, prompt_mask: torch.Tensor) -> None:
        self.n, self.pads = n, prompt_mask == 0  # [B, P]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        history = input_ids.clone()  # [B, P + t]
        history[:, :self.pads.shape[1]].masked_fill_(self.pads, -1)
        return ban_repeated_ngrams(scores, history, self.n)


class GumbelNoise(LogitsProcessor):
    """`gumbel_scores` as a LogitsProcessor, so that greedy argmax draws the sample; step = tokens generated so far.

    `keys`: [B] int64 names of the sequences.
    """

    def __init__(self, sampling: Sampling, keys: torch.Tensor, prompt_len: int) -> None:
        self.sampling, self.keys, self.prompt_len = sampling, keys, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return gumbel_scores(scores, self.keys, input_ids.shape[1] - self.prompt_len, self.sampling)


def decode_with_transformers(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor, *,
                             eos_id: int, pad_id: int, max_new_tokens: int, sampling: Sampling,
                             cache: object | None = None) -> list[list[int]]:
    """`decode_from_cache`'s tokens from transformers' `model.generate` with `NgramBan` and `GumbelNoise`.

    `ids`, `mask`, `keys`: as in `decode_from_cache`; the rest as in `generate`.
    `cache`: optional KV cache of the first P - 1 prompt columns (generate then runs only the last one).
    """
    processors = LogitsProcessorList()
    if sampling.no_repeat_ngram_size > 0:
        processors.append(NgramBan(sampling.no_repeat_ngram_size, mask))
    if sampling.do_sample:
        processors.append(GumbelNoise(sampling, keys, ids.shape[1]))
    given = {} if cache is None else with_cache(model, cache)
    # greedy argmax over the processed scores; the settings a checkpoint's generation_config could add are switched off
    out = model.generate(input_ids=ids, attention_mask=mask, **given, logits_processor=processors, do_sample=False,
                         num_beams=1, no_repeat_ngram_size=0, repetition_penalty=1.0, min_new_tokens=0,
                         max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id)
    return cut_at_eos(out[:, ids.shape[1]:].tolist(), eos_id)


def cut_at_eos(seqs: list[list[int]], eos_id: int) -> list[list[int]]:
    """Drop the first EOS and everything after it.

    Returns the lists cut before their first EOS (unchanged where there is none).
    """
    return [s[:s.index(eos_id)] if eos_id in s else s for s in seqs]


def check_backend(backend: str) -> None:
    """A clear error for a backend that is not one of `BACKENDS`.

    Raises ValueError: naming the valid backends.
    """
    if backend not in BACKENDS:
        raise ValueError(f"generate: backend must be one of {BACKENDS}, got {backend!r}")


def check_prompts(prompt_ids: list[list[int]], max_new_tokens: int, limit: int | None) -> None:
    """Raises ValueError for a negative max_new_tokens, or naming the first empty prompt or the first too long for the
    model's `limit` positions (None = unlimited)."""
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    for i, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise ValueError(f"generate: prompt_ids[{i}] is empty; a prompt needs at least one token")
        # the last new token is never fed back, so the model sees len(prompt) + max_new_tokens - 1 positions
        if limit is not None and len(prompt) + max_new_tokens - 1 > limit:
            raise ValueError(f"generate: prompt_ids[{i}] has {len(prompt)} tokens; with max_new_tokens="
                             f"{max_new_tokens} it exceeds the model's {limit} positions")


def generate(model: torch.nn.Module, prompt_ids: list[list[int]], *, eos_id: int, pad_id: int | None,
             max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             no_repeat_ngram_size: int = 0, seed: int | None = None, batch_size: int = 32,
             keys: list[int] | None = None, backend: str = "pocl") -> list[list[int]]:
    """Continue each prompt; returns only the new tokens, cut at (excluding) EOS, in the input order.

    Prompts are sorted by length into batches of batch_size and left-padded; run in eval mode without gradients
    (`eval_mode`). On the CPU both backends return the same tokens.

    `pad_id`: None = eos_id (GPT-2 tokenizers have no pad token).
    `do_sample`: False = greedy (argmax); `temperature` > 0, `top_k` 0 = off, `top_p` 1.0 = off apply when sampling.
    `no_repeat_ngram_size`: ban repeating n-grams of this size (prompt tokens count too); 0 = off.
    `seed`: None with do_sample draws one from torch's global generator.
    `keys`: names of the sequences for the sampling noise; default: position in prompt_ids (pass dataset indices to
    make a sample's draw independent of which other prompts are in the call).
    `backend`: "pocl" (this module's loop, the default) or "transformers" (`decode_with_transformers`).
    Raises ValueError: an unknown backend, a bad sampling setting, an empty or too long prompt, or keys not one per
    prompt.
    """
    check_backend(backend)
    pad_id = eos_id if pad_id is None else pad_id  # GPT-2 tokenizers have no pad token; pads are masked anyway
    if seed is None:
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) if do_sample else 0
    sampling = Sampling(do_sample, temperature, top_k, top_p, no_repeat_ngram_size, seed)
    check_prompts(prompt_ids, max_new_tokens, max_positions(model))
    if keys is not None and len(keys) != len(prompt_ids):
        raise ValueError(f"generate: {len(keys)} keys for {len(prompt_ids)} prompts")
    if max_new_tokens == 0:
        return [[] for _ in prompt_ids]
    keys = list(range(len(prompt_ids))) if keys is None else keys
    device = model_device(model)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            ids, mask = pad_batch([prompt_ids[i] for i in batch], pad_id, device, left=True)  # [B, P]
            batch_keys = torch.tensor([keys[i] for i in batch], dtype=torch.long, device=device)  # [B]
            kw = dict(eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens, sampling=sampling)
            if backend == "transformers":
                new = decode_with_transformers(model, ids, mask, batch_keys, **kw)
            else:
                cache, next_logits = prefill(model, ids, mask)
                new = decode_from_cache(model, cache, next_logits, mask, ids.masked_fill(mask == 0, -1), batch_keys,
                                        **kw)
            for i, tokens in zip(batch, new):
                results[i] = tokens
    return results


def decode(tokenizer, ids_list: list[list[int]]) -> list[str]:
    """Token ids to text, special tokens dropped (as MiniLLM decodes responses for ROUGE-L).

    Returns one string per list.
    """
    if not ids_list:  # batch_decode([]) returns [""] in transformers 5: it reads [] as one empty sequence
        return []
    return tokenizer.batch_decode(ids_list, skip_special_tokens=True)
