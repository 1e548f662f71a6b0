"""A data card: per set its rows, extra fields, prompt lengths and reference lengths."""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from .gpt2 import gpt2_token_count
from .records import STANDARD_FIELDS


def describe_sets(sets: Mapping[str, Sequence[dict]], count_tokens: Callable[[str], int] = gpt2_token_count):
    """A data card: per set its rows, extra fields, prompt lengths and reference lengths.

    `sets`: set name -> records (`load_instructions`).
    `count_tokens`: the prompt token counter (default GPT-2's).
    Returns a DataFrame indexed by set: rows, extra fields (beyond STANDARD_FIELDS), prompt tokens (mean/median/max),
    mean words per reference, references per row.
    """
    import pandas as pd

    table = {name: _describe_one(records, count_tokens) for name, records in sets.items()}
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.index.name = "set"
    return frame


def _describe_one(records: Sequence[dict], count_tokens: Callable[[str], int]) -> dict:
    tokens = [count_tokens(r["prompt"]) for r in records]
    ref_words = [len(ref.split()) for r in records for ref in r["references"]]
    nan = float("nan")
    return {
        "rows": len(records),
        # load_instructions gives every record the STANDARD_FIELDS; the rest says what the set adds.
        "extra_fields": ", ".join(sorted(set().union(*(r.keys() for r in records)) - set(STANDARD_FIELDS))),
        "prompt_tokens_mean": statistics.fmean(tokens) if tokens else nan,
        "prompt_tokens_median": statistics.median(tokens) if tokens else nan,
        "prompt_tokens_max": max(tokens) if tokens else nan,
        "reference_words_mean": statistics.fmean(ref_words) if ref_words else nan,
        "references_per_row": len(ref_words) / len(records) if records else nan,
    }

