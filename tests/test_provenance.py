"""The device on record and self-healing prepared steps: precision in the run key, environment in records and
STEP.json, a corrupt step rebuilt, an unreadable STEP.json named."""
import json

import pytest
import torch

from pocl_utils.experiment import pipeline, provenance, workspace
from pocl_utils.experiment.config import RUN3_SELECTION, baseline, get_profile, pocl as kd
from pocl_utils.experiment.workspace import StepError, Workspace, step_dir, step_info
from pocl_utils.experiment.runner import run_key


def test_precision_policy_follows_the_device():
    assert provenance.precision(torch.device("cuda")) == "bf16-autocast+fused"  # the GPU path's fused numerics
    assert provenance.precision(torch.device("cuda"), compile=True) == "bf16-autocast+fused+compiled"
    assert provenance.precision("cpu") == provenance.precision("cpu", compile=True) == "fp32"
    env = provenance.environment("cpu")
    assert env["device"] == "cpu" and env["precision"] == "fp32" and env["torch"] == torch.__version__
    assert env["transformers"] and "grad_accum" not in env  # the default, one batch a step, is not named
    assert provenance.environment("cpu", **get_profile("smoke", {"grad_accum": 4}).engine())["grad_accum"] == 4


def test_run_key_differs_between_a_cuda_bf16_and_a_cpu_fp32_run(tmp_path):
    ws = Workspace(get_profile("smoke"), tmp_path)  # no steps built: their keys are None, the same for both devices
    spec = kd("KLD")
    assert run_key(ws, spec, torch.device("cpu")) != run_key(ws, spec, torch.device("cuda"))
    assert run_key(ws, spec, torch.device("cpu")) == run_key(ws, spec, torch.device("cpu"))


def test_cpu_run_keys_are_unchanged_and_cuda_keys_carry_the_fused_tag(tmp_path):
    """The keys of main@7f0f3e1 (computed with its code, before the fused GPU path got its tag): CPU keys stay the
    same under run 3's protocol settings (the committed CPU results are still found); CUDA keys differ from that
    commit's, and again with compile."""
    ws = Workspace(get_profile("smoke", RUN3_SELECTION), tmp_path)  # no steps built: their keys are None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert run_key(ws, kd("KLD"), cpu) == "6bbaf0e07a041809"
    assert run_key(ws, baseline("GKD"), cpu) == "26f1c249a2a738c2"
    fused = run_key(ws, kd("KLD"), cuda)
    assert fused != "2761a61e3c934181"  # 7f0f3e1's CUDA key: its bf16 runs computed the loss unfused
    compiled = Workspace(get_profile("smoke", {**RUN3_SELECTION, "compile": True}), tmp_path)
    assert run_key(compiled, kd("KLD"), cuda) not in (fused, "2761a61e3c934181")
    assert run_key(compiled, kd("KLD"), cpu) == "6bbaf0e07a041809"  # compile never touches the CPU


def test_run_key_differs_when_the_teacher_was_built_in_another_precision(tmp_path):
    ws = Workspace(get_profile("smoke"), tmp_path)
    spec, cpu = kd("KLD"), torch.device("cpu")
    for prec in ("fp32", "bf16-autocast"):
        (tmp_path / "teacher").mkdir(exist_ok=True)
        (tmp_path / "teacher" / "STEP.json").write_text(json.dumps({"key": "k", "precision": prec}))
        if prec == "fp32":
            fp32_key = run_key(ws, spec, cpu)
    assert run_key(ws, spec, cpu) != fp32_key


def _builder(calls):
    def build(tmp):
        calls.append(1)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
        (tmp / "log.json").write_text("[]")
    return build


def test_step_records_environment_and_file_manifest(tmp_path):
    out = step_dir(tmp_path, "teacher", "k1", _builder([]), record=provenance.environment("cpu"), log=lambda s: None)
    info = step_info(out)
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["files"]["sub/model.safetensors"]["size"] == 1000
    assert set(info["files"]) == {"sub/model.safetensors", "log.json"}


@pytest.mark.parametrize("damage", ["truncate", "delete", "rewrite"])
def test_a_corrupt_step_is_rebuilt(tmp_path, damage):
    calls, said = [], []
    out = step_dir(tmp_path, "student_init", "k1", _builder(calls), log=said.append)
    f = out / "sub" / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(b"x" * 10)
    elif damage == "delete":
        f.unlink()
    else:
        f.write_bytes(b"y" * 1000)  # same size, other content: caught by sha256
    step_dir(tmp_path, "student_init", "k1", _builder(calls), log=said.append)
    assert len(calls) == 2 and f.read_bytes() == b"x" * 1000
    assert len(said) == 1 and str(out) in said[0] and "sub/model.safetensors" in said[0] and "rebuilding" in said[0]
    step_dir(tmp_path, "student_init", "k1", _builder(calls), log=said.append)
    assert len(calls) == 2  # healed: found as it is


def test_an_intact_step_is_not_rebuilt_and_another_key_is_silent(tmp_path):
    calls, said = [], []
    for key in ("k1", "k1", "k2"):
        step_dir(tmp_path, "data", key, _builder(calls), log=said.append)
    assert len(calls) == 2 and said == []


def test_truncated_step_json_names_the_file_and_the_folder_then_heals(tmp_path):
    calls, said = [], []
    out = step_dir(tmp_path, "teacher", "k1", _builder(calls), log=said.append)
    text = (out / "STEP.json").read_text()
    (out / "STEP.json").write_text(text[: len(text) // 2])
    with pytest.raises(StepError) as info:
        Workspace(get_profile("smoke"), tmp_path).step_keys()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{out / 'STEP.json'}: unreadable STEP.json")
    assert f"delete the folder {out} and re-run" in msg
    step_dir(tmp_path, "teacher", "k1", _builder(calls), log=said.append)
    assert len(calls) == 2 and step_info(out)["key"] == "k1"
    assert "unreadable STEP.json" in said[0]


def test_steps_without_a_manifest_are_trusted(tmp_path):
    """Steps finished before STEP.json listed files are not rebuilt just for that."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "STEP.json").write_text(json.dumps({"key": "k1"}))
    calls = []
    step_dir(tmp_path, "data", "k1", _builder(calls), log=lambda s: None)
    assert calls == []


def test_hash_limit_is_positive():
    assert workspace.HASH_LIMIT > 2**20


def test_checkpoint_error_inside_a_step_names_the_step_folder(tmp_path):
    from pocl_utils.modeling.models import checkpoint_error
    (tmp_path / "teacher" / "model").mkdir(parents=True)
    (tmp_path / "teacher" / "STEP.json").write_text("{}")
    msg = str(checkpoint_error(tmp_path / "teacher" / "model" / "model.safetensors", ValueError("short")))
    assert f"delete the folder {tmp_path / 'teacher'} and re-run" in msg
    loose = str(checkpoint_error(tmp_path / "x.safetensors", ValueError("short")))
    assert "delete it and re-run" in loose


def test_classroom_runs_table1_with_the_two_seeds_the_readme_states():
    from pocl_utils.experiment.experiments import n_seeds_for
    readme = (workspace.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    p = get_profile("classroom")
    assert n_seeds_for(p, "table1") == p.n_seeds == 2
    assert "Table 1 only, 2 training seeds" in readme


def test_a_truncated_student_checkpoint_heals_at_the_next_prepare(tmp_path):
    """The issue's case: a truncated student_init/model/model.safetensors. The next prepare() rebuilds the step (the
    same weights, bitwise, on CPU) instead of failing on it."""
    from pocl_utils.experiment.pipeline import prepare
    said: list[str] = []
    ws = prepare("smoke", runs_root=tmp_path, device="cpu", log=said.append)
    weights = ws.root / "student_init" / "model" / "model.safetensors"
    good = weights.read_bytes()
    keys = ws.step_keys()
    weights.write_bytes(good[: len(good) // 2])
    said.clear()
    ws = prepare("smoke", runs_root=tmp_path, device="cpu", log=said.append)
    assert any("student_init" in s and "model/model.safetensors has" in s and "rebuilding" in s for s in said), said
    assert weights.read_bytes() == good and ws.step_keys() == keys
    ws.load_student_init(torch.device("cpu"))
