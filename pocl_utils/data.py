"""Instruction data: the MiniLLM/POCL prompt template, JSON Lines loading, tokenization and batching.

Also: where the real data lives (POCL_DATA_DIR), offline GPT-2 token counting, the Dolly hub loader,
and a data card. Command line: `python -m pocl_utils.data {download-dolly,fetch-gpt2-ranks}`.
"""
from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def build_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - name fixed by the API
    """The MiniLLM/POCL prompt template (the `prompt` field of every MiniLLM-processed file).

    Args:
        instruction: the task.
        input: its context; empty = the template without an input section.

    Returns:
        The prompt, ending in "### Response:\\n".
    """
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass
class Encoded:
    """One tokenized example: prompt ids (never in the loss) and response ids (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]
    index: int = 0  # position in the example list it came from
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class DataError(ValueError):
    """Bad or missing data. The message names the file, the 1-based line and the field where known:
    ``dolly.jsonl, line 3, field 'output': missing required field``."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(_where(self.path, line, field) + problem)


class MissingDataError(DataError, FileNotFoundError):
    """A data file (a real set, the GPT-2 ranks) is not where it was looked for; the message says how to get it."""


def _where(path: str | None, line: int | None, field: str | None) -> str:
    parts = [part for part in (path,
                               None if line is None else f"line {line}",
                               None if field is None else f"field '{field}'") if part is not None]
    return ", ".join(parts) + ": " if parts else ""


def _json_type(value: Any) -> str:
    """JSON's name for a parsed value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# JSON Lines loading (MiniLLM / DistiLLM layouts)
# ---------------------------------------------------------------------------

def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed value) for each non-blank line of a UTF-8 JSON Lines file; DataError naming
    the file and line for bad UTF-8, malformed or too deeply nested JSON, and lone surrogates (e.g. "\\ud800")."""
    with open(path, "rb") as f:  # bytes, so a bad encoding can be pinned to its line
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a leading BOM
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 (byte {e.start + 1} of the line is 0x{raw[e.start]:02x}); "
                                "save the file as UTF-8", path=path, line=lineno) from None
            if not text.strip():
                continue  # blank lines are allowed and skipped
            try:
                value = json.loads(text)
                where = _lone_surrogate(value) if "\\u" in text else None  # only escapes make lone surrogates
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON at column {e.colno}: {e.msg}{_document_hint(path, lineno, text)}",
                                path=path, line=lineno) from None
            except RecursionError:
                raise DataError("JSON nested too deeply to read (a row is one flat JSON object)", path=path,
                                line=lineno) from None
            if where is not None:
                raise DataError(f"lone surrogate {where[1]!r} in a string (an unpaired \\ud800-\\udfff escape is not "
                                f"valid Unicode)", path=path, line=lineno, field=where[0]) from None
            yield lineno, value


JSONL_HINT = ("; JSON Lines is expected (one JSON object per line), and this looks like a whole JSON document, e.g. a "
              "pretty-printed .json file: write one object per line")


def _document_hint(path: Path, line: int, text: str) -> str:
    """A hint when a file fails on its first line the way a pretty-printed JSON document does."""
    start = text.strip()
    return JSONL_HINT if line == 1 and (path.suffix == ".json" or start in ("{", "[") or start.endswith(("{", "[")))\
        else ""


def _lone_surrogate(value: Any, field: str | None = None) -> tuple[str | None, str] | None:
    """(field, character) of the first string holding an unpaired UTF-16 surrogate, else None."""
    if isinstance(value, str):
        bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
        return None if bad is None else (field, bad)
    if isinstance(value, dict):
        children = ((k if field is None else f"{field}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{field or ''}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for name, v in children if (found := _lone_surrogate(v, name)) is not None), None)


def _text_field(row: dict, key: str, path: Path, line: int, *, allow_empty: bool = False) -> str | None:
    """row[key] checked to be a (non-blank, unless allow_empty) string; None when the key is absent."""
    if key not in row:
        return None
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {_json_type(value)}", path=path, line=line, field=key)
    if not allow_empty and not value.strip():
        raise DataError("empty string", path=path, line=line, field=key)
    return value


def _references(row: dict, path: Path, line: int) -> list[str]:
    """`output` as a non-empty list of non-blank strings (S-NI rows carry a list of references)."""
    if "output" not in row:
        raise DataError("missing required field", path=path, line=line, field="output")
    value = row["output"]
    if isinstance(value, str):
        return [_text_field(row, "output", path, line)]
    if not isinstance(value, list):
        raise DataError(f"expected a string or a list of strings, got {_json_type(value)}",
                        path=path, line=line, field="output")
    if not value:
        raise DataError("empty list of references", path=path, line=line, field="output")
    for i, ref in enumerate(value):
        if not isinstance(ref, str):
            raise DataError(f"expected a string, got {_json_type(ref)}", path=path, line=line, field=f"output[{i}]")
        if not ref.strip():
            raise DataError("empty reference", path=path, line=line, field=f"output[{i}]")
    return list(value)


def _row_id(row: dict, path: Path, line: int) -> str:
    """The row's own `id` (str or int) as a string, else '<file stem>:<line>'."""
    if "id" not in row:
        return f"{path.stem}:{line}"
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"expected a non-empty string or an integer, got {_json_type(value)} {value!r}",
                        path=path, line=line, field="id")
    return str(value)


STANDARD_FIELDS = ("id", "instruction", "input", "prompt", "references", "output")  # in every loaded record


def _normalize_row(row: Any, path: Path, line: int) -> dict:
    """Validate one parsed row and return it with the standard fields filled in (other fields kept)."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {_json_type(row)}", path=path, line=line)
    instruction = _text_field(row, "instruction", path, line)
    prompt = _text_field(row, "prompt", path, line)
    input_text = _text_field(row, "input", path, line, allow_empty=True) or ""  # Vicuna rows have no input
    if instruction is None and prompt is None:
        raise DataError("missing required field (a row needs 'instruction', or 'prompt' for prompt-only rows)",
                        path=path, line=line, field="instruction")
    references = _references(row, path, line)
    record = dict(row)  # keeps topic, category, ... in the row's order
    record.update(
        id=_row_id(row, path, line),
        instruction=instruction or "",
        input=input_text,
        # A given prompt wins even if it differs from the template: the file is the ground truth.
        prompt=prompt if prompt is not None else build_prompt(instruction, input_text),
        references=references,
        output=references[0],
    )
    return record


def load_instructions(path: str | os.PathLike) -> list[dict]:
    """Load a MiniLLM/DistiLLM-style JSON Lines file of instruction data.

    Rows hold `instruction` (+ optional `input`) and/or `prompt`, and `output` (a string, or a list of
    references as in S-NI). Each record gets `id`, `instruction`, `input`, `prompt`, `references`
    (list[str]) and `output` (the first reference); every other field of the row is kept.

    Args:
        path: the JSON Lines file.

    Returns:
        One record per row, in file order.

    Raises:
        MissingDataError: the file does not exist.
        DataError: naming file, line and field, for a malformed row, a duplicate id or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError("no such file", path=path)
    records: list[dict] = []
    first_line_of: dict[str, int] = {}
    for line, row in _read_jsonl(path):
        record = _normalize_row(row, path, line)
        if record["id"] in first_line_of:
            raise DataError(f"duplicate id {record['id']!r} (first seen on line {first_line_of[record['id']]})",
                            path=path, line=line, field="id")
        first_line_of[record["id"]] = line
        records.append(record)
    if not records:
        raise DataError("empty file: no JSON Lines rows", path=path)
    return records


# ---------------------------------------------------------------------------
# Where the data lives
# ---------------------------------------------------------------------------

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# role -> path inside the data directory, as in MiniLLM's processed data (see data/README.md).
REAL_SETS: dict[str, str] = {
    "train": "dolly/dolly_train_11425.jsonl",
    "valid": "dolly/dolly_dev_1000.jsonl",
    "DollyEval": "dolly/dolly_test_500.jsonl",
    "SelfInst": "self-inst/self_inst_test_242.jsonl",
    "VicunaEval": "vicuna/vicuna_test_80.jsonl",
    "S-NI": "sinst/sinst_11__test_1694.jsonl",
    "UnNI": "uinst/uinst_11__first460.jsonl",
}
EVAL_SETS = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
# What `download-dolly` writes; real_data_path falls back to these for the Dolly roles.
HUB_DOLLY_FILES: dict[str, str] = {
    "train": "dolly/hub_train.jsonl",
    "valid": "dolly/hub_valid.jsonl",
    "DollyEval": "dolly/hub_test.jsonl",
}
DOLLY_HUB_NAME = "databricks/databricks-dolly-15k"


def data_dir() -> Path:
    """The data directory: $POCL_DATA_DIR if set, else <repo root>/data."""
    env = os.environ.get("POCL_DATA_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def real_data_path(role: str, root: str | os.PathLike | None = None) -> Path:
    """Path of a real set (a key of REAL_SETS) under `root` (default: data_dir()).

    For the Dolly roles the file written by `download-dolly` is accepted when MiniLLM's is absent.

    Args:
        role: a key of REAL_SETS.
        root: the data folder; None = data_dir().

    Returns:
        The set's JSON Lines file.

    Raises:
        DataError: an unknown role.
        MissingDataError: (a DataError and a FileNotFoundError) no file, with how to get the data.
    """
    if role not in REAL_SETS:
        raise DataError(f"unknown data role {role!r}; valid roles: {', '.join(REAL_SETS)}")
    root = Path(root) if root is not None else data_dir()
    for relative in (REAL_SETS[role], HUB_DOLLY_FILES.get(role)):
        if relative is not None and (root / relative).is_file():
            return root / relative
    raise MissingDataError(_missing_set_message(role, root))


def _missing_set_message(role: str, root: Path) -> str:
    message = (
        f"real data set {role!r} not found: expected {root / REAL_SETS[role]}. "
        "The real instruction data is not shipped with the repository. Set POCL_DATA_DIR to a folder "
        "holding the MiniLLM-processed data (dolly/, self-inst/, vicuna/, sinst/, uinst/; see data/README.md)"
    )
    if role in HUB_DOLLY_FILES:
        message += (", or get Dolly from the Hugging Face hub with `python -m pocl_utils.data download-dolly "
                    "--out DIR` and set POCL_DATA_DIR=DIR")
    return message + "."


def load_real(role: str, root: str | os.PathLike | None = None) -> list[dict]:
    """load_instructions(real_data_path(role, root)).

    Args:
        role, root: as in `real_data_path`.

    Returns:
        The set's records (`load_instructions`).
    """
    return load_instructions(real_data_path(role, root))


# ---------------------------------------------------------------------------
# GPT-2 token counting offline (tiktoken + the BPE ranks shipped in openai-whisper's sdist)
# ---------------------------------------------------------------------------

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

    Args:
        text: any string; a literal '<|endoftext|>' counts as one token.

    Returns:
        The token count.
    """
    # HF's GPT-2 tokenizer (used by MiniLLM) turns a literal '<|endoftext|>' into the special token; so do we.
    return len(gpt2_encoding().encode(text, allowed_special={GPT2_EOS}))


def fetch_gpt2_ranks(dest: str | os.PathLike | None = None) -> Path:
    """Download openai-whisper's sdist from PyPI, extract gpt2.tiktoken, check its sha256 and write it atomically.

    Args:
        dest: the destination file; None = <data_dir>/cache/gpt2.tiktoken.

    Returns:
        The written file.
    """
    dest = Path(dest) if dest is not None else data_dir() / "cache" / "gpt2.tiktoken"
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _pip_download_sdist(Path(tmp))
        content = _tar_member(sdist, GPT2_RANKS_MEMBER)
    digest = hashlib.sha256(content).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise DataError(f"sha256 {digest} differs from the pinned {GPT2_RANKS_SHA256}", path=sdist.name,
                        field=GPT2_RANKS_MEMBER)
    _atomic_write_bytes(dest, content)
    return dest


def _pip_download_sdist(folder: Path) -> Path:
    """`pip download` the pinned openai-whisper source distribution (no dependencies) into `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"openai-whisper=={WHISPER_VERSION}", "--dest", str(folder)]
    subprocess.run(command, check=True)
    found = sorted(folder.glob("openai*whisper-*.tar.gz"))
    if not found:
        raise MissingDataError(f"pip download left no openai-whisper sdist in {folder}")
    return found[0]


def _tar_member(archive: Path, suffix: str) -> bytes:
    """Bytes of the one member of a .tar.gz whose name ends with `suffix` (read, never extracted to disk)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith("/" + suffix):
                return tar.extractfile(member).read()
    raise MissingDataError(f"no member ending in {suffix}", path=archive)


def _atomic_write_bytes(path: Path, content: bytes) -> None:
    """Write via a temporary file in the same folder + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Prompt-length filter and the Dolly hub loader
# ---------------------------------------------------------------------------

def filter_long_prompts(examples: Sequence[dict], max_prompt_tokens: int = 256,
                        count_tokens: Callable[[str], int] = gpt2_token_count, *,
                        name: str | None = None) -> tuple[list[dict], int]:
    """Drop examples whose prompt has more than `max_prompt_tokens` tokens (MiniLLM drops, not truncates).

    Args:
        examples: records with a `prompt`.
        max_prompt_tokens: the longest prompt kept.
        count_tokens: the token counter (default GPT-2's).
        name: the set's name for the error message.

    Returns:
        (kept, n_dropped).

    Raises:
        DataError: naming the set (`name`, else the first example's id) when every example is dropped.
    """
    kept = [ex for ex in examples if count_tokens(ex["prompt"]) <= max_prompt_tokens]
    n_dropped = len(examples) - len(kept)
    if examples and not kept:
        where = name if name is not None else f"set starting with example {examples[0].get('id')!r}"
        raise DataError(f"all {len(examples)} prompts are longer than {max_prompt_tokens} tokens; nothing is left",
                        path=where, field="prompt")
    return kept, n_dropped


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

    Args:
        out_dir: the data folder; files go to out_dir/HUB_DOLLY_FILES[role].
        seed: the shuffle's seed.
        name: a hub dataset id, or a local JSON Lines file / folder.
        n_valid, n_test: the sizes of the validation and test sets.
        max_prompt_tokens: the longest prompt kept.
        count_tokens: the token counter; None = GPT-2's.
        cache_dir: the `datasets` cache folder.

    Returns:
        role -> written file, for 'train', 'valid' and 'DollyEval'.
    """
    rows = _load_hub_rows(name, cache_dir)
    examples = [_dolly_example(row, name, i + 1) for i, row in enumerate(rows)]
    kept, _ = filter_long_prompts(examples, max_prompt_tokens, count_tokens or gpt2_token_count, name=str(name))
    splits = _split_shuffled(kept, seed=seed, n_valid=n_valid, n_test=n_test, name=str(name))
    paths = {}
    for role, split in splits.items():
        paths[role] = Path(out_dir) / HUB_DOLLY_FILES[role]
        text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in split)
        _atomic_write_bytes(paths[role], text.encode("utf-8"))
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
    instruction = _text_field(row, "instruction", name, line)
    response = _text_field(row, "response", name, line)
    for key, value in (("instruction", instruction), ("response", response)):
        if value is None:
            raise DataError("missing required field", path=name, line=line, field=key)
    context = _text_field(row, "context", name, line, allow_empty=True) or ""
    topic = _text_field(row, "category", name, line, allow_empty=True) or ""
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


# ---------------------------------------------------------------------------
# Tokenization for training and batching
# ---------------------------------------------------------------------------

IGNORE_INDEX = -100  # label value the losses skip (prompt and padding positions)


def close_response(generated: Sequence[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """A generated response as training targets: EOS appended only when the model stopped by itself.

    `generated` is cut at EOS (which it excludes). A response that used the whole `max_new_tokens` budget was
    truncated, so it gets no EOS, as a cut reference loses its EOS in `encode_examples` (MiniLLM); otherwise the
    student would be taught to stop where the budget, not the teacher, ended the answer. An empty one is [EOS].

    Args:
        generated: the generated ids, cut at (excluding) EOS.
        max_new_tokens: the generation budget.
        eos_id: the EOS token id.

    Returns:
        The response ids: `generated` + [eos_id], or `generated` alone when it used the whole budget.
    """
    ids = list(generated)
    truncated = len(ids) >= max_new_tokens
    return ids if truncated else ids + [eos_id]


def encode_examples(examples: Sequence[dict], tokenizer, *, max_prompt_len: int, max_len: int,
                    drop_long: bool = True) -> tuple[list[Encoded], int]:
    """Tokenize examples: prompt ids, and response ids = tokens(output) + [eos].

    Prompts longer than `max_prompt_len` are dropped and counted (MiniLLM), or truncated to it when
    drop_long=False (DistiLLM). The response is cut so prompt + response <= max_len; a cut response
    loses its EOS, as in MiniLLM.

    Args:
        examples: records with `prompt` and `output` (`load_instructions`).
        tokenizer: a Hugging Face tokenizer with an EOS token.
        max_prompt_len: the longest prompt in tokens, < max_len.
        max_len: the longest prompt + response in tokens.
        drop_long: drop longer prompts (True) or truncate them (False).

    Returns:
        (encoded, n_dropped); Encoded.index is the position in `examples`, Encoded.meta['id'] the example's id.
    """
    if max_prompt_len >= max_len:
        raise ValueError(f"max_prompt_len ({max_prompt_len}) must be < max_len ({max_len}) "
                         "to leave room for a response")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    # Prompt and response are tokenized apart (MiniLLM tokenizes prompt + response and cuts): the template
    # ends in "\n", where GPT-2's pre-tokenizer splits anyway, so with GPT-2 the ids differ only when the
    # response starts with whitespace (1 of the 15,401 real rows).
    prompt_ids = _token_ids(tokenizer, [ex["prompt"] for ex in examples])
    output_ids = _token_ids(tokenizer, [ex["output"] for ex in examples])
    encoded, n_dropped = [], 0
    for i, (ex, prompt, output) in enumerate(zip(examples, prompt_ids, output_ids)):
        if len(prompt) > max_prompt_len:
            if drop_long:
                n_dropped += 1
                continue
            prompt = prompt[:max_prompt_len]
        response = (output + [eos])[: max_len - len(prompt)]
        encoded.append(Encoded(prompt_ids=prompt, response_ids=response, index=i, meta={"id": ex.get("id", str(i))}))
    return encoded, n_dropped


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------
# Data card
# ---------------------------------------------------------------------------

def describe_sets(sets: Mapping[str, Sequence[dict]], count_tokens: Callable[[str], int] = gpt2_token_count):
    """A data card: per set its rows, extra fields, prompt lengths and reference lengths.

    Args:
        sets: set name -> records (`load_instructions`).
        count_tokens: the prompt token counter (default GPT-2's).

    Returns:
        A DataFrame indexed by set: rows, extra fields (beyond STANDARD_FIELDS), prompt tokens (mean/median/max),
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


# ---------------------------------------------------------------------------
# Command line: python -m pocl_utils.data {download-dolly,fetch-gpt2-ranks}
# ---------------------------------------------------------------------------

def _hf_token_counter(name: str) -> Callable[[str], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: `download-dolly` (load_dolly_from_hub) and `fetch-gpt2-ranks` (fetch_gpt2_ranks).

    `download-dolly` prints one "role<TAB>path" line per file written; `fetch-gpt2-ranks` prints the ranks file's
    path.

    Args:
        argv: the command-line arguments; None = sys.argv[1:] (argparse's default).

    Raises:
        SystemExit: from argparse, on a missing command, bad arguments or --help.
    """
    parser = argparse.ArgumentParser(prog="python -m pocl_utils.data", description=__doc__)
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


if __name__ == "__main__":
    main()
