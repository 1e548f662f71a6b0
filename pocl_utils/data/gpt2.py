"""GPT-2 token counting offline (tiktoken + the BPE ranks shipped in openai-whisper's sdist), and the prompt-length
filter MiniLLM applies with it."""
from __future__ import annotations

import base64
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .records import DataError, MissingDataError
from .sets import REPO_ROOT, data_dir

WHISPER_VERSION = "20250625"  # PyPI sdist of openai-whisper holding whisper/assets/gpt2.tiktoken
GPT2_RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_N_RANKS = 50256  # byte-level BPE tokens; <|endoftext|> comes on top as id 50256
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOS = "<|endoftext|>"
GPT2_EOS_ID = 50256


def gpt2_ranks_path() -> Path:
    """Where the GPT-2 ranks file is: $POCL_GPT2_TIKTOKEN, else <data_dir>/cache/ or <repo>/data/cache/."""
    env = os.environ.get("POCL_GPT2_TIKTOKEN")
    if env:  # an explicit setting is never silently replaced by another file
        candidates = [Path(env).expanduser()]
    else:
        candidates = list(dict.fromkeys([data_dir() / "cache" / "gpt2.tiktoken",
                                         REPO_ROOT / "data" / "cache" / "gpt2.tiktoken"]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingDataError(
        f"GPT-2 BPE ranks not found (looked at {', '.join(map(str, candidates))}). Get them with "
        "`python -m pocl_utils.data fetch-gpt2-ranks` (downloads the openai-whisper sdist from PyPI and "
        "extracts whisper/assets/gpt2.tiktoken), or set POCL_GPT2_TIKTOKEN to a copy of that file, or pass "
        "count_tokens= a counter built on transformers.AutoTokenizer.from_pretrained('gpt2')."
    )


def gpt2_encoding():
    """The GPT-2 tokenizer as a tiktoken.Encoding, built from the local ranks file (no network)."""
    return _encoding_from(str(gpt2_ranks_path()))


@functools.lru_cache(maxsize=4)
def _encoding_from(path: str):
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=_read_ranks(Path(path)),
                             special_tokens={GPT2_EOS: GPT2_EOS_ID})


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one '<base64 token> <rank>' per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:  # also binascii.Error
                raise DataError("not a tiktoken ranks line ('<base64> <rank>')", path=path, line=lineno) from None
    if len(ranks) != GPT2_N_RANKS:
        raise DataError(f"expected {GPT2_N_RANKS} GPT-2 BPE ranks, found {len(ranks)}", path=path)
    return ranks


def gpt2_token_count(text: str) -> int:
    """Number of GPT-2 tokens of `text` (no BOS/EOS added), as MiniLLM's 256-token prompt filter counts.

    `text`: any string; a literal '<|endoftext|>' counts as one token.
    """
    # HF's GPT-2 tokenizer (used by MiniLLM) turns a literal '<|endoftext|>' into the special token; so do we.
    return len(gpt2_encoding().encode(text, allowed_special={GPT2_EOS}))


def filter_long_prompts(examples: Sequence[dict], max_prompt_tokens: int = 256,
                        count_tokens: Callable[[str], int] = gpt2_token_count, *,
                        name: str | None = None) -> tuple[list[dict], int]:
    """Drop examples whose prompt has more than `max_prompt_tokens` tokens (MiniLLM drops, not truncates).

    `examples`: records with a `prompt`.
    `count_tokens`: the token counter (default GPT-2's).
    Returns (kept, n_dropped).
    Raises DataError: naming the set (`name`, else the first example's id) when every example is dropped.
    """
    kept = [ex for ex in examples if count_tokens(ex["prompt"]) <= max_prompt_tokens]
    n_dropped = len(examples) - len(kept)
    if examples and not kept:
        where = name if name is not None else f"set starting with example {examples[0].get('id')!r}"
        raise DataError(f"all {len(examples)} prompts are longer than {max_prompt_tokens} tokens; nothing is left",
                        path=where, field="prompt")
    return kept, n_dropped

