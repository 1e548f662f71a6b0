"""databricks-dolly-15k from the Hugging Face hub (or a local copy) as train/valid/test JSON Lines in MiniLLM's
layout."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_bytes
from .gpt2 import filter_long_prompts, gpt2_token_count
from .records import DataError, build_prompt, text_field
from .sets import DOLLY_HUB_NAME, HUB_DOLLY_FILES


def load_dolly_from_hub(out_dir: str | os.PathLike, *, seed: int = 0, name: str = DOLLY_HUB_NAME,
                        n_valid: int = 1000, n_test: int = 500, max_prompt_tokens: int = 256,
                        count_tokens: Callable[[str], int] | None = None,
                        cache_dir: str | None = None) -> dict[str, Path]:
    """Build train/valid/test JSON Lines from databricks-dolly-15k in MiniLLM's layout.

    `name` is a hub id, or a local JSON Lines file / folder with Dolly's fields (instruction, context,
    response, category). context -> input, response -> output, category -> topic; prompts over
    `max_prompt_tokens` GPT-2 tokens (or `count_tokens`) are dropped first. Then a seeded shuffle, and
    the test set is the first `n_test` rows, valid the next `n_valid`, train the rest (MiniLLM also
    splits by position after shuffling, but with its own shuffle: these are not MiniLLM's exact rows).

    `out_dir`: the data folder; files go to out_dir/HUB_DOLLY_FILES[role].
    `name`: a hub dataset id, or a local JSON Lines file / folder.
    `count_tokens`: the token counter; None = GPT-2's.
    `cache_dir`: the `datasets` cache folder.
    Returns role -> written file, for 'train', 'valid' and 'DollyEval'.
    """
    rows = _load_hub_rows(name, cache_dir)
    examples = [_dolly_example(row, name, i + 1) for i, row in enumerate(rows)]
    kept, _ = filter_long_prompts(examples, max_prompt_tokens, count_tokens or gpt2_token_count, name=str(name))
    splits = _split_shuffled(kept, seed=seed, n_valid=n_valid, n_test=n_test, name=str(name))
    paths = {}
    for role, split in splits.items():
        paths[role] = Path(out_dir) / HUB_DOLLY_FILES[role]
        text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in split)
        atomic_write_bytes(paths[role], text.encode("utf-8"))
    return paths


def _load_hub_rows(name: str, cache_dir: str | None) -> list[dict]:
    """Rows of the hub dataset `name`, or of a local JSON Lines file (for offline use and tests)."""
    import datasets

    if Path(name).is_file():
        dataset = datasets.load_dataset("json", data_files=str(name), split="train", cache_dir=cache_dir)
    else:
        dataset = datasets.load_dataset(name, split="train", cache_dir=cache_dir)
    return list(dataset)


def _dolly_example(row: dict, name: str, line: int) -> dict:
    """One Dolly row (instruction, context, response, category) in MiniLLM's layout."""
    row = {key: value for key, value in row.items() if value is not None}  # `datasets` fills absent keys with None
    instruction = text_field(row, "instruction", name, line)
    response = text_field(row, "response", name, line)
    for key, value in (("instruction", instruction), ("response", response)):
        if value is None:
            raise DataError("missing required field", path=name, line=line, field=key)
    context = text_field(row, "context", name, line, allow_empty=True) or ""
    topic = text_field(row, "category", name, line, allow_empty=True) or ""
    return {"instruction": instruction, "input": context, "output": response,
            "prompt": build_prompt(instruction, context), "topic": topic}


def _split_shuffled(examples: list[dict], *, seed: int, n_valid: int, n_test: int, name: str) -> dict[str, list]:
    """Seeded shuffle, then test = first n_test, valid = next n_valid, train = the rest."""
    if n_valid < 0 or n_test < 0:
        raise ValueError(f"n_valid and n_test must be >= 0, got {n_valid} and {n_test}")
    if n_valid + n_test >= len(examples):
        raise DataError(f"only {len(examples)} examples after filtering: cannot take {n_valid} valid + "
                        f"{n_test} test and keep a training set", path=name)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    return {"train": shuffled[n_test + n_valid:], "valid": shuffled[n_test:n_test + n_valid],
            "DollyEval": shuffled[:n_test]}

