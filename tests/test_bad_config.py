"""Bad configuration, parameters and checkpoints: each raises one clear error that names the key, field or file, and
leaves no partial output behind. (The malformed data files of tests/bad_inputs/*.jsonl are tested in test_data.py.)"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pocl_utils.experiment.job import main as batch_main
from pocl_utils.experiment.config import ConfigError, ModelSpec, RunSpec, get_profile, pocl
from pocl_utils.data import DataError
from pocl_utils.modeling.models import CheckpointError, build_model, load_checkpoint, load_weights, save_checkpoint
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.workspace import step_dir
from pocl_utils.notebook.reproduce import check_parameters, collection
from pocl_utils.experiment.results import Registry
from pocl_utils.training.teacher_cache import TeacherCache

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "bad_inputs"

# (overrides of the smoke profile, words the message must contain)
BAD_PROFILES = [
    ({"kd.lrr": 1}, ["unknown key 'kd.lrr'", "valid keys:", "lr"]),
    ({"n_subset": 4}, ["unknown key 'n_subset'", "n_subsets"]),
    ({"kd.lr": "fast"}, ["kd.lr: expected float", "'fast'"]),
    ({"n_seeds": 2.5}, ["n_seeds: expected int"]),
    ({"n_subsets": 0}, ["profile 'smoke'", "n_subsets must be >= 1"]),
    ({"kd.lr": math.nan}, ["kd.lr must be > 0"]),
    ({"teacher_sft.epochs": 0}, ["teacher_sft.epochs must be > 0"]),
    ({"gkd_lambda": 1.5}, ["gkd_lambda must be in [0, 1]"]),
    ({"max_prompt_len": 64}, ["max_prompt_len must be in (0, max_len)"]),
    ({"teacher_cache": "top-0"}, ["teacher_cache must be 'exact', 'live' or 'top-<k>'", "'top-0'"]),
]


@pytest.mark.parametrize("overrides, words", BAD_PROFILES, ids=[str(o) for o, _ in BAD_PROFILES])
def test_bad_profile_override_names_the_key(overrides, words):
    with pytest.raises(ConfigError) as info:
        get_profile("smoke", overrides)
    for word in words:
        assert word in str(info.value)


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown profile 'smok'; valid profiles: smoke, classroom, laptop"):
        get_profile("smok")


BAD_RUNS = [
    (dict(n_subsets=0), "n_subsets must be >= 1, got 0"),
    (dict(tau=(0.0, 2.0)), "tau must be two finite values > 0, got (0.0, 2.0)"),
    (dict(tau=(-1.0, 2.0)), "tau must be two finite values > 0"),
    (dict(tau=(math.nan, 2.0)), "tau must be two finite values > 0, got (nan, 2.0)"),
    (dict(tau=(1.0, 2.0, 3.0)), "tau must be two finite values > 0"),
    (dict(alpha=(1.5, 0.0)), "alpha must be two values in [0, 1], got (1.5, 0.0)"),
    (dict(alpha=(0.3, -0.1)), "alpha must be two values in [0, 1]"),
    (dict(alpha=(math.nan, 0.0)), "alpha must be two values in [0, 1]"),
    (dict(ranking="rougel"), "ranking 'rougel' unknown; valid: fusion, rouge_l, ce"),
    (dict(order="easy"), "order 'easy' unknown; valid: easy_to_hard"),
]


@pytest.mark.parametrize("changes, message", BAD_RUNS, ids=[str(c) for c, _ in BAD_RUNS])
def test_bad_run_spec_names_the_field(changes, message):
    with pytest.raises(ConfigError) as info:
        pocl("KLD", **changes)
    assert message in str(info.value)


def test_bad_method_and_pocl_on_sft():
    with pytest.raises(ConfigError, match="method 'KLDD' unknown; valid: SFT, SeqKD, GKD, KLD"):
        RunSpec("KLDD")
    with pytest.raises(ConfigError, match="POCL applies to the KD methods, not SFT"):
        RunSpec("SFT", pocl=True)


# ---- notebook parameters and command lines -----------------------------------------------------------------------


def test_notebook_parameter_typo_lists_the_valid_ones():
    notebook = collection()[0]
    with pytest.raises(ConfigError) as info:
        check_parameters(notebook, {"profle": "smoke"})
    message = str(info.value)
    assert message.startswith(f"{notebook.name}: unknown parameter 'profle'; valid parameters: ")
    assert "profile" in message.split("valid parameters: ")[1].split(", ")


@pytest.mark.parametrize("argv, message", [
    (["-p", "profle", "smoke"], "pocl-reproduce: unknown parameter 'profle' (in no notebook); valid parameters: "),
    (["--profile", "smok"], "pocl-reproduce: unknown profile 'smok'; valid profiles: smoke, "),
])
def test_reproduce_command_exits_2_without_traceback(argv, message):
    proc = subprocess.run([sys.executable, "-m", "pocl_utils.notebook.reproduce", *argv], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


def test_batch_command_bad_profile_exits_2(tmp_path, capsys):
    assert batch_main(["--profile", "smok", "--runs-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("pocl-job: unknown profile 'smok'; valid profiles:")
    assert list(tmp_path.iterdir()) == []


# ---- truncated checkpoints ---------------------------------------------------------------------------------------


def test_truncated_weights_file_names_it_and_says_to_delete():
    """tests/bad_inputs/truncated_weights.safetensors: the first half of a 1-layer GPT-2's save_weights file."""
    path = BAD / "truncated_weights.safetensors"
    model = build_model(ModelSpec(n_layer=1, n_embd=8, n_head=2), 16, 8)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    assert str(info.value).startswith(f"{path}: unreadable checkpoint")
    assert "delete it and re-run" in str(info.value)


def test_truncated_model_folder_names_the_weights_file(tmp_path):
    save_checkpoint(build_model(ModelSpec(n_layer=1, n_embd=8, n_head=2), 16, 8), tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: unreadable checkpoint .*delete it and re-run"):
        load_checkpoint(tmp_path / "model")


def test_truncated_teacher_cache_names_the_file(tmp_path):
    path = tmp_path / "cache.safetensors"
    TeacherCache(torch.randn(6, 5), np.array([0, 2, 6])).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{path}: unreadable checkpoint .*delete it and re-run"):
        TeacherCache.load(path)


def test_corrupt_result_file_names_it(tmp_path):
    reg = Registry(tmp_path)
    reg.save("runs", "k", {}, {}, 1.0)
    reg.result_path("runs", "k").write_text('{"kind": "runs", "ke')
    with pytest.raises(RuntimeError, match=f"{reg.result_path('runs', 'k')}: corrupt result file .*delete it"):
        reg.load("runs", "k")


# ---- no partial output -------------------------------------------------------------------------------------------


def test_failed_step_leaves_nothing_behind(tmp_path):
    def build(out: Path) -> None:
        (out / "half.json").write_text("{")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        step_dir(tmp_path, "teacher", "key1", build)
    assert [p.name for p in tmp_path.iterdir()] == [".teacher.lock"]  # the lock file only; no temp folder, no output
    step_dir(tmp_path, "teacher", "key1", lambda out: (out / "ok.json").write_text("{}"))
    assert json.loads((tmp_path / "teacher" / "STEP.json").read_text())["key"] == "key1"


def test_every_prompt_too_long_is_a_data_error_naming_the_file(tmp_path):
    """max_prompt_len = 2 drops every smoke prompt: the first step that encodes the data says so, and stops clean."""
    profile = get_profile("smoke", {"max_prompt_len": 2})
    with pytest.raises(DataError) as info:
        prepare(profile, runs_root=tmp_path, log=lambda s: None, device="cpu")
    err, root = info.value, tmp_path / "smoke"
    assert Path(err.path) == root / "data" / "train.jsonl" and err.field == "prompt"
    assert "prompts are longer than max_prompt_len = 2 tokens" in str(err)
    assert not (root / "teacher").exists() and not list(root.glob(".*.tmp"))
