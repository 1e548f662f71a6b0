"""The world's byte-level BPE tokenizer (digits single, the MiniLLM template's pieces one token each)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

EOS = "<|endoftext|>"  # eos, bos and pad, as in GPT-2


def template_phrases() -> tuple[str, ...]:
    """The fixed pieces of the MiniLLM template: both headers, the input marker and the response marker."""
    head_plain, response = PROMPT_NO_INPUT.split("{instruction}")
    head_input, rest = PROMPT_WITH_INPUT.split("{instruction}")
    input_marker, response2 = rest.split("{input}")
    assert response == response2, "the two MiniLLM templates end differently"
    return head_plain, head_input, input_marker, response


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer for world text (transformers.PreTrainedTokenizerFast).

    Lossless: decode(encode(x)) == x for any text. Digits are single tokens (so column arithmetic is
    learnable); words split GPT-2 style (' cat' is one token). The template boilerplate (~30 words) costs
    one token per piece: its 4 pieces are added tokens, removed from the BPE training text so they use no
    merges. `<|endoftext|>` is eos, bos and pad. Saved with save_pretrained when out_dir is given.

    `texts`: the training text (e.g. `pretrain_corpus`); the template pieces are cut out of it before BPE training.
    `vocab_size`: the vocabulary size, the 4 template pieces included; an int in [262, 65536].
    `out_dir`: where to save it; None = not saved.
    Returns the transformers.PreTrainedTokenizerFast.
    Raises ValueError: a vocab_size that is not an int in that range.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    phrases = template_phrases()
    n_min = 256 + 1 + len(phrases) + 1  # byte alphabet + eos + template pieces + at least one merge
    if not isinstance(vocab_size, int) or not n_min <= vocab_size <= 65536:
        raise ValueError(f"train_tokenizer: vocab_size must be an int in [{n_min}, 65536], got {vocab_size!r}")
    strip = re.compile("|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])  # add_prefix_space would break round-trips
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(phrases), special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((strip.sub("\n", t) for t in texts), trainer)
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in phrases])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                 clean_up_tokenization_spaces=False)  # cleanup would rewrite " ." and break round-trips
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf


def token_stats(world: Mapping[str, list[dict]], tokenizer) -> dict[str, dict[str, dict[str, float]]]:
    """role -> family (and "all") -> mean/max token counts of prompt and response (response without EOS).

    `world`: role -> rows with prompt, output and family (`generate_world`).
    Returns role -> family or "all" -> {"n", "prompt_mean", "prompt_max", "response_mean", "response_max"}.
    """
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for role, rows in world.items():
        enc = lambda key: tokenizer([r[key] for r in rows], add_special_tokens=False)["input_ids"]  # noqa: E731
        p_len = np.array([len(x) for x in enc("prompt")])
        r_len = np.array([len(x) for x in enc("output")])
        fam = np.array([r["family"] for r in rows])
        stats[role] = {}
        for name in [*sorted({r["family"] for r in rows}), "all"]:
            m = fam == name if name != "all" else np.ones(len(rows), bool)
            stats[role][name] = {"n": int(m.sum()), "prompt_mean": float(p_len[m].mean()),
                                 "prompt_max": int(p_len[m].max()), "response_mean": float(r_len[m].mean()),
                                 "response_max": int(r_len[m].max())}
    return stats
