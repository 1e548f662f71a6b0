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
