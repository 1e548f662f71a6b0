"""The custom profile: a config file (YAML or JSON) with your own models and data, validated strictly; every profile key
documented (`--help-profile`, docs/profiles.md, help(Profile)); and README's "POCL on your own models and data" recipe,
followed verbatim on tiny local GPT-2 models that share a tokenizer trained here (no hub)."""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pocl_utils.experiment import profile_docs
from pocl_utils.experiment.config import (CUSTOM, ConfigError, Profile, eval_sets, get_profile, is_config_file,
                                          load_config)

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "sun", "tree", "milk", "road", "bird", "fish", "rain", "star", "lamp", "boat", "corn", "wolf",
         "snow", "leaf", "rock", "door", "bell", "kite"]


def _rows(n: int, seed: int) -> list[dict]:
    """Small instruction rows a tiny model can learn: repeat, capitalise or reverse a word."""
    rng = random.Random(seed)
    tasks = [("Repeat the word.", lambda w: w), ("Write the word in capitals.", str.upper),
             ("Write the word backwards.", lambda w: w[::-1])]
    rows = []
    for _ in range(n):
        (instruction, f), word = rng.choice(tasks), rng.choice(WORDS)
        rows.append({"instruction": instruction, "input": word, "output": f(word)})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _tiny_models(folder: Path, texts: list[str]) -> None:
    """models/teacher and models/student: GPT-2s of 2 and 1 blocks sharing a byte-level BPE tokenizer trained here."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pocl_utils.world import train_tokenizer
    tok = train_tokenizer(texts, 300)
    for name, layers, width in (("teacher", 2, 64), ("student", 1, 32)):
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_layer=layers, n_embd=width, n_head=2,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        GPT2LMHeadModel(cfg).save_pretrained(folder / name, safe_serialization=True)
        tok.save_pretrained(folder / name)


def _recipe() -> tuple[str, str, str]:
    """README's recipe: (config file name, its YAML, the command), as written there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("<!-- custom-recipe:start -->"):readme.index("<!-- custom-recipe:end -->")]
    assert len(section.splitlines()) <= 40
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    name = re.search(r"--config (\S+)", command).group(1)
    return name, config, command


def test_readme_recipe_runs_verbatim(tmp_path):
    name, config, command = _recipe()
    (tmp_path / name).write_text(config, encoding="utf-8")
    import yaml
    spec = yaml.safe_load(config)
    data = {"train_file": _rows(48, 0), "valid_file": _rows(8, 1), **{f"eval_files.{k}": _rows(8, 2 + i)
                                                                       for i, k in enumerate(spec["eval_files"])}}
    paths = {"train_file": spec["train_file"], "valid_file": spec["valid_file"],
             **{f"eval_files.{k}": v for k, v in spec["eval_files"].items()}}
    for key, rows in data.items():
        _write_jsonl(tmp_path / paths[key], rows)
    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for rows in data.values() for r in rows]
    models = tmp_path / Path(spec["teacher"]).parent
    assert Path(spec["student"]).parent == Path(spec["teacher"]).parent
    _tiny_models(models, texts)
    argv = shlex.split(command)
    assert argv[0] == "python"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POCL_RUNS_DIR": str(tmp_path / "runs")}  # ./runs of the recipe
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    where = re.search(r"The results land in `([^`]+)`", readme).group(1)
    csv = tmp_path / where
    assert csv.is_file(), (where, done.stdout[-2000:])
    assert str(csv) in done.stdout  # the end message names the file that exists
    frame = pd.read_csv(csv)
    assert set(frame.dataset) == set(spec["eval_files"])
    assert {("KLD", "baseline"), ("KLD", "+POCL")} <= set(zip(frame.method, frame.variant))
    assert frame.rouge_l.between(0, 100).all()
    assert (tmp_path / "runs" / Path(name).stem / "ranking" / "ranking.csv").is_file()
    assert "paper" not in " ".join(p.name for p in (tmp_path / "runs").iterdir())


# ---- the config file ----------------------------------------------------------------------------------------------

def _files(folder: Path) -> None:
    for name, seed in (("train", 0), ("valid", 1), ("test", 2)):
        _write_jsonl(folder / "data" / f"{name}.jsonl", _rows(6, seed))
    (folder / "models" / "student").mkdir(parents=True)


GOOD = """teacher: gpt2-xl
student: models/student
train_file: data/train.jsonl
valid_file: data/valid.jsonl
eval_files: {test: data/test.jsonl}
kd: {lr: 0.001}
teacher_sft.epochs: 2
"""


def test_config_file_yaml_and_json_give_the_same_profile(tmp_path):
    _files(tmp_path)
    (tmp_path / "mine.yaml").write_text(GOOD, encoding="utf-8")
    import yaml
    (tmp_path / "mine.json").write_text(json.dumps(yaml.safe_load(GOOD), indent=2), encoding="utf-8")
    a, b = get_profile(str(tmp_path / "mine.yaml")), get_profile(str(tmp_path / "mine.json"), {"kd.batch_size": 4})
    assert a.name == "mine" and a.data == "files" and a.kd.lr == 1e-3 and a.teacher_sft.epochs == 2.0
    assert a.teacher.arch == "hub" and a.teacher.name_or_path == "gpt2-xl"  # no such folder: a hub id
    assert a.student.name_or_path == str((tmp_path / "models" / "student").resolve())  # a folder: made absolute
    assert a.train_file == str((tmp_path / "data" / "train.jsonl").resolve())
    assert eval_sets(a) == ("test",) and a.config_file == str((tmp_path / "mine.yaml").resolve())
    assert b.kd.batch_size == 4 and b.kd.lr == a.kd.lr and b.eval_files == a.eval_files
    assert a.kd.epochs == CUSTOM.kd.epochs and a.max_len == CUSTOM.max_len  # the rest from the custom base
    assert is_config_file("x/y.YML") and not is_config_file("laptop")


def test_config_without_eval_files_scores_the_validation_set_and_base_works(tmp_path):
    _files(tmp_path)
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("eval_files"))
    (tmp_path / "c.yaml").write_text(text + "\nname: my-run\nbase: real-lite\nteacher: {arch: hub, name_or_path: x}\n"
                                     "data: files\n", encoding="utf-8")
    p = load_config(tmp_path / "c.yaml")
    assert eval_sets(p) == ("valid",) and p.name == "my-run" and p.max_len == 416  # real-lite's
    assert eval_sets(get_profile("smoke"))[0] == "DollyEval"


BAD = [  # (what replaces or extends GOOD, the error's words: file, line, key and the problem)
    ("valid_file: data/nope.jsonl", r"c\.yaml, line 4, key 'valid_file': no such file: .*nope\.jsonl"),
    ("kd: {lr: fast}", r"line 7, key 'kd\.lr': .*expected float, got str 'fast'"),
    ("kd:\n  lr: -1", r"line 8, key 'kd\.lr': .*must be > 0"),
    ("n_subset: 3", r"line 8, key 'n_subset': unknown key; valid keys: .*n_subsets"),
    ("prompt_template: 'Q: {question}'", r"line 8, key 'prompt_template': .*must hold \{instruction\}"),
    ("eval_files: {train: data/test.jsonl}", r"line 7, key 'eval_files\.train': .*not train, valid or Avg"),
    ("student: [1", r"c\.yaml, line \d+: malformed YAML"),
    ("base: lapto", r"line 8, key 'base': unknown profile 'lapto'"),
    ("teacher: ''", r"line 1, key 'teacher\.name_or_path': .*must name a hub id or a local model folder"),
]


@pytest.mark.parametrize("change, words", BAD, ids=[c for c, _ in BAD])
def test_bad_config_names_file_line_and_key(tmp_path, change, words):
    _files(tmp_path)
    key = change.split(":")[0]
    lines = [line for line in GOOD.splitlines() if not line.startswith(key + ":")] if key in ("kd", "eval_files") \
        else GOOD.splitlines()
    if key in ("valid_file", "teacher", "student"):
        lines = [change if line.startswith(key + ":") else line for line in lines]
    else:
        lines.append(change)
    (tmp_path / "c.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=words):
        get_profile(str(tmp_path / "c.yaml"))


def test_bad_json_config_names_the_line(tmp_path):
    (tmp_path / "c.json").write_text('{\n  "teacher": "gpt2",\n  "kd": {"lr": 1e-3,}\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.json, line 3: malformed JSON"):
        get_profile(str(tmp_path / "c.json"))
    with pytest.raises(ConfigError, match="no such config file"):
        get_profile(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="custom profile is a config file's base"):
        get_profile("custom")


# ---- every key documented -----------------------------------------------------------------------------------------

def test_every_profile_key_has_a_description():
    rows = profile_docs.profile_keys()
    keys = {r["key"] for r in rows}
    assert {"kd.lr", "teacher.name_or_path", "train_file", "eval_files", "prompt_template", "n_subsets"} <= keys
    assert [r["key"] for r in rows if not r["help"]] == []
    text = profile_docs.profile_help()
    assert all(r["key"] in text for r in rows)
    assert "n_subsets (int): POCL's n" in (Profile.__doc__ or "")  # help(Profile)


def test_docs_profiles_page_is_generated_from_the_fields():
    page = ROOT / "docs" / "profiles.md"
    assert page.read_text(encoding="utf-8") == profile_docs.profile_markdown(), (
        "docs/profiles.md is stale: python -c 'from pocl_utils.experiment.profile_docs import write_page; write_page()'")


def test_job_help_is_whole_and_help_profile_lists_the_keys():
    from pocl_utils.experiment import job
    out = subprocess.run([sys.executable, "-m", "pocl_utils.experiment.job", "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert out.returncode == 0 and "--config FILE" in out.stdout and "-p overrides JSON" in out.stdout
    assert "without\nnotebooks, then write its results CSV" in out.stdout  # the description is no longer cut off
    assert "--help-profile" in out.stdout
    assert job.parse_overrides([["overrides", '{"kd.lr": 0.01}']]) == {"kd.lr": 0.01}
    with pytest.raises(ConfigError, match="JSON object"):
        job.parse_overrides([["overrides", "[1]"]])
    with pytest.raises(ConfigError, match="only -p overrides"):
        job.parse_overrides([["profile", "smoke"]])


# ---- preparing a config's own files, and pocl-reproduce --config -------------------------------------------------

def _config(folder: Path, extra: str = "") -> Path:
    texts = [f"{r['instruction']} {r['input']} {r['output']}" for r in _rows(40, 0)]
    _tiny_models(folder / "models", texts)
    for name, seed in (("train", 0), ("valid", 1), ("test", 2)):
        _write_jsonl(folder / "data" / f"{name}.jsonl", _rows(6, seed))
    path = folder / "mine.yaml"
    path.write_text("teacher: models/teacher\nstudent: models/student\ntrain_file: data/train.jsonl\n"
                    "valid_file: data/valid.jsonl\neval_files: {test: data/test.jsonl}\nmax_len: 64\n"
                    "max_prompt_len: 48\n" + extra, encoding="utf-8")
    return path


def test_files_workspace_uses_the_template_and_the_students_tokens(tmp_path):
    from pocl_utils.experiment.real import prepare_real
    path = _config(tmp_path, 'prompt_template: "Q: {instruction} [{input}]\\nA: "\n')
    ws = prepare_real(get_profile(str(path)), tmp_path / "runs", steps=("data", "tokenizer"), log=lambda s: None)
    assert ws.root == tmp_path / "runs" / "mine"
    assert set(ws.sets) == {"train", "valid", "test"}
    first = ws.sets["train"][0]
    assert first["prompt"] == f"Q: {first['instruction']} [{first['input']}]\nA: "
    student = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "models" / "student")
    assert ws.encoded("train")[0].prompt_ids == student(first["prompt"], add_special_tokens=False)["input_ids"]
    assert "GPT-2" not in (ws.root / "data" / "filter.json").read_text()  # no GPT-2 filter on a config's own data


def test_teacher_and_student_with_other_vocabularies_are_refused(tmp_path):
    from pocl_utils.experiment.real import prepare_real
    from pocl_utils.world import train_tokenizer
    path = _config(tmp_path)
    train_tokenizer([f"{r['output']} {r['input']}" for r in _rows(40, 5)], 280).save_pretrained(
        tmp_path / "models" / "student")
    with pytest.raises(ConfigError, match="different vocabularies"):
        prepare_real(get_profile(str(path)), tmp_path / "runs", steps=("data", "tokenizer"), log=lambda s: None)
    assert not (tmp_path / "runs" / "mine" / "tokenizer").exists()


def test_reproduce_takes_a_config_and_names_its_folders_after_it(tmp_path, monkeypatch, capsys):
    from pocl_utils.notebook import reproduce
    path = _config(tmp_path)
    assert [p.stem for p in reproduce.collection(profile=str(path))] == list(reproduce.FILES_NOTEBOOKS)
    assert reproduce.profile_name(str(path)) == "mine"
    monkeypatch.setenv("POCL_OUTPUT_DIR", str(tmp_path / "out"))
    lines: list[str] = []
    reproduce.where_outputs("mine", log=lines.append)
    assert lines == []  # nothing written: no folder to name
    (tmp_path / "out" / "results" / "mine").mkdir(parents=True)
    (tmp_path / "out" / "results" / "mine" / "table1.csv").write_text("x")
    lines.clear()
    reproduce.where_outputs("mine", log=lines.append)
    assert len(lines) == 1 and "tables in" in lines[0] and "figures" not in lines[0] and "publish" not in lines[0]
    assert reproduce.main(["--config", str(path), "--publish"]) == 1
    assert "not a committed reference" in capsys.readouterr().err
    assert reproduce.main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert reproduce.main(["--help-profile"]) == 0 and "kd.lr" in capsys.readouterr().out
