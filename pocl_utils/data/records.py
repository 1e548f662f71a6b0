"""Instruction records: the MiniLLM/POCL prompt template, the data errors, and JSON Lines loading with strict
validation (MiniLLM / DistiLLM layouts)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
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


def build_prompt(instruction: str, input: str = "", template: str = "") -> str:  # noqa: A002 - name fixed by the API
    """The MiniLLM/POCL prompt template (the `prompt` field of every MiniLLM-processed file), or `template`.

    `input`: its context; empty = the template without an input section.
    `template`: a format string with the fields {instruction} and (optionally) {input}; "" = MiniLLM's.
    Returns the prompt; MiniLLM's ends in "### Response:\\n".
    """
    if template:
        return template.format(instruction=instruction, input=input)
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)



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


def json_type(value: Any) -> str:
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


def text_field(row: dict, key: str, path: Path, line: int, *, allow_empty: bool = False) -> str | None:
    """row[key] checked to be a (non-blank, unless allow_empty) string; None when the key is absent."""
    if key not in row:
        return None
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {json_type(value)}", path=path, line=line, field=key)
    if not allow_empty and not value.strip():
        raise DataError("empty string", path=path, line=line, field=key)
    return value


def _references(row: dict, path: Path, line: int) -> list[str]:
    """`output` as a non-empty list of non-blank strings (S-NI rows carry a list of references)."""
    if "output" not in row:
        raise DataError("missing required field", path=path, line=line, field="output")
    value = row["output"]
    if isinstance(value, str):
        return [text_field(row, "output", path, line)]
    if not isinstance(value, list):
        raise DataError(f"expected a string or a list of strings, got {json_type(value)}",
                        path=path, line=line, field="output")
    if not value:
        raise DataError("empty list of references", path=path, line=line, field="output")
    for i, ref in enumerate(value):
        if not isinstance(ref, str):
            raise DataError(f"expected a string, got {json_type(ref)}", path=path, line=line, field=f"output[{i}]")
        if not ref.strip():
            raise DataError("empty reference", path=path, line=line, field=f"output[{i}]")
    return list(value)


def _row_id(row: dict, path: Path, line: int) -> str:
    """The row's own `id` (str or int) as a string, else '<file stem>:<line>'."""
    if "id" not in row:
        return f"{path.stem}:{line}"
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise DataError(f"expected a non-empty string or an integer, got {json_type(value)} {value!r}",
                        path=path, line=line, field="id")
    return str(value)


STANDARD_FIELDS = ("id", "instruction", "input", "prompt", "references", "output")  # in every loaded record


def _normalize_row(row: Any, path: Path, line: int, template: str = "") -> dict:
    """Validate one parsed row and return it with the standard fields filled in (other fields kept)."""
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {json_type(row)}", path=path, line=line)
    instruction = text_field(row, "instruction", path, line)
    prompt = text_field(row, "prompt", path, line)
    input_text = text_field(row, "input", path, line, allow_empty=True) or ""  # Vicuna rows have no input
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
        prompt=prompt if prompt is not None else build_prompt(instruction, input_text, template),
        references=references,
        output=references[0],
    )
    return record


def load_instructions(path: str | os.PathLike, template: str = "") -> list[dict]:
    """Load a MiniLLM/DistiLLM-style JSON Lines file of instruction data.

    Rows hold `instruction` (+ optional `input`) and/or `prompt`, and `output` (a string, or a list of
    references as in S-NI). Each record gets `id`, `instruction`, `input`, `prompt`, `references`
    (list[str]) and `output` (the first reference); every other field of the row is kept.

    `template`: the prompt of rows without a `prompt` (`build_prompt`); "" = MiniLLM's.
    Returns one record per row, in file order.
    Raises MissingDataError: the file does not exist.
    Raises DataError: naming file, line and field, for a malformed row, a duplicate id or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError("no such file", path=path)
    records: list[dict] = []
    first_line_of: dict[str, int] = {}
    for line, row in _read_jsonl(path):
        record = _normalize_row(row, path, line, template)
        if record["id"] in first_line_of:
            raise DataError(f"duplicate id {record['id']!r} (first seen on line {first_line_of[record['id']]})",
                            path=path, line=line, field="id")
        first_line_of[record["id"]] = line
        records.append(record)
    if not records:
        raise DataError("empty file: no JSON Lines rows", path=path)
    return records

