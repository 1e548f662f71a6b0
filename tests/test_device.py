"""The profile's `device` setting (issue 24): "auto" or a torch device, checked by name and by what the machine has,
honoured by preparation and scoring, and an engine setting that no key names."""
import pytest
import torch

from pocl_utils.experiment import scoring
from pocl_utils.experiment.config import RUN3_SELECTION, ConfigError, get_profile, pocl as kd
from pocl_utils.experiment.job import run_job
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.runner import run_key
from pocl_utils.experiment.workspace import Workspace, prep_keys, step_info
from pocl_utils.modeling.models import available_devices, pick_device
from pocl_utils.notebook.reproduce import check_extra

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def test_default_is_auto_and_resolves_to_the_cpu_here(tmp_path):
    p = get_profile("smoke")
    assert p.device == "auto" and all(get_profile(n).device == "auto" for n in ("laptop", "gpu", "paper"))
    assert pick_device("auto") == torch.device("cpu") and Workspace(p, tmp_path).device == torch.device("cpu")
    assert available_devices()[0] == "cpu" and not any(d.startswith("cuda") for d in available_devices())


@pytest.mark.parametrize("bad", ["gpu0", "GPU", "cuda1", "cuda:x", ""])
def test_a_string_that_is_no_device_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError) as info:
        get_profile("smoke", {"device": bad})
    assert info.value.key == "device" and "device must be 'auto' or a torch device" in str(info.value)
    assert repr(bad) in str(info.value)
    with pytest.raises(ConfigError, match="device must be"):
        pick_device(bad)


def test_a_config_file_sets_the_device_and_a_bad_one_is_named(tmp_path):
    good, bad = tmp_path / "mine.yaml", tmp_path / "bad.yaml"
    good.write_text("base: smoke\ndevice: cpu\n", encoding="utf-8")
    bad.write_text("base: smoke\ndevice: gpu0\n", encoding="utf-8")
    assert get_profile(str(good)).device == "cpu"
    assert get_profile(str(good), {"device": "auto"}).device == "auto"
    with pytest.raises(ConfigError, match="device"):
        get_profile(str(bad))


def test_cuda_without_cuda_is_refused_early_naming_the_field_and_what_there_is(tmp_path):
    p = get_profile("smoke", {"device": "cuda"})  # a valid name: whether the machine has it is checked at start
    with pytest.raises(ConfigError) as info:
        Workspace(p, tmp_path).device
    msg = str(info.value)
    assert info.value.key == "device" and "device 'cuda' is not available" in msg and "available: cpu" in msg
    for name in ("cuda:1", "mps"):
        if name not in available_devices():
            with pytest.raises(ConfigError, match=f"device '{name}' is not available"):
                pick_device(name)
    # preparation, the job and pocl-reproduce stop before any step is built or any kernel starts
    with pytest.raises(ConfigError, match="device 'cuda' is not available"):
        prepare(p, runs_root=tmp_path / "prep", log=lambda s: None)
    with pytest.raises(ConfigError, match="device 'cuda' is not available"):
        prepare("smoke", runs_root=tmp_path / "prep", device="cuda", log=lambda s: None)
    with pytest.raises(ConfigError, match="device 'cuda' is not available"):
        run_job("smoke", "table1", runs_root=tmp_path / "job", overrides={"device": "cuda"}, log=lambda s: None)
    with pytest.raises(ConfigError, match="device 'cuda' is not available"):
        check_extra("smoke", {"overrides": {"device": "cuda"}})
    check_extra("smoke", {"overrides": {"device": "cpu"}})
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]  # nothing was built


def test_run_and_step_keys_are_the_same_for_auto_and_cpu(tmp_path):
    auto, cpu = (get_profile("smoke", {**RUN3_SELECTION, "device": d}) for d in ("auto", "cpu"))
    a, c = Workspace(auto, tmp_path), Workspace(cpu, tmp_path)
    assert run_key(a, kd("KLD")) == run_key(c, kd("KLD")) == "6bbaf0e07a041809"  # test_provenance's committed key
    assert prep_keys(auto) == prep_keys(cpu) and scoring.eval_key(auto) == scoring.eval_key(cpu)
    assert auto.engine() == cpu.engine()


def test_cpu_is_honoured_end_to_end_where_auto_would_pick_cuda(tmp_path, monkeypatch):
    """With CUDA faked present, "auto" means CUDA; device "cpu" must keep the smoke workspace's preparation (teacher
    SFT, student pre-training) and a reference scoring on the CPU: a code path that ignored the setting would pick CUDA
    and fail on this machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    ws = prepare(get_profile("smoke", {"device": "cpu"}), runs_root=tmp_path, until="student_init",
                 log=lambda s: None)
    assert ws.device == torch.device("cpu")
    assert next(ws.load_student_init(ws.device).parameters()).device == torch.device("cpu")
    assert step_info(ws.root / "teacher")["device"] == step_info(ws.root / "student_init")["device"] == "cpu"
    record = scoring.reference_score(ws, "Student (init)")
    assert record["config"]["device"] == "cpu" and record["config"]["precision"] == "fp32"
