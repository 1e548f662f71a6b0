"""The preparation's thread count (profile key `prepare_threads`): the teacher, the warm start and the caches are built
with it whatever the machine's cores, the caller's count comes back afterwards, STEP.json records it, and a count other
than the committed default gets its own step keys."""
import json

import pytest
import torch

from pocl_utils.experiment.config import PREPARE_THREADS, ConfigError, get_profile
from pocl_utils.experiment.workspace import Workspace, build_steps, cpu_threads, prep_keys

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recorder(seen: dict, name: str, fail: bool = False):
    def build(ws, out, dev):
        seen[name] = torch.get_num_threads()
        if fail:
            raise RuntimeError("builder failed")
        (out / "artefact.txt").write_text(name, encoding="utf-8")
    return build


def test_steps_build_with_the_profiles_threads_and_the_callers_count_comes_back(tmp_path, one_thread):
    seen = {}
    ws = Workspace(get_profile("smoke", {"prepare_threads": 3}), tmp_path / "smoke")
    build_steps(ws, {"teacher": _recorder(seen, "teacher"), "student_init": _recorder(seen, "student_init")},
                {"teacher": "k1", "student_init": "k2"}, CPU, log=lambda s: None)
    assert seen == {"teacher": 3, "student_init": 3}
    assert torch.get_num_threads() == 1
    assert json.loads((ws.root / "teacher" / "STEP.json").read_text())["cpu_threads"] == 3


def test_a_failing_step_still_gives_the_callers_count_back(tmp_path, one_thread):
    seen = {}
    ws = Workspace(get_profile("smoke", {"prepare_threads": 2}), tmp_path / "smoke")
    with pytest.raises(RuntimeError, match="builder failed"):
        build_steps(ws, {"teacher": _recorder(seen, "teacher", fail=True)}, {"teacher": "k1"}, CPU,
                    log=lambda s: None)
    assert seen == {"teacher": 2} and torch.get_num_threads() == 1
    assert not (ws.root / "teacher").exists()


def test_zero_leaves_the_count_as_the_caller_set_it(one_thread):
    with cpu_threads(0):
        assert torch.get_num_threads() == 1
    with cpu_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1


def test_cpu_profiles_pin_the_default_and_gpu_profiles_leave_it():
    assert PREPARE_THREADS == 2
    for name in ("smoke", "classroom", "laptop", "laptop-run3", "laptop-run4", "laptop-run5", "laptop-run6",
                 "real-lite"):
        assert get_profile(name).prepare_threads == PREPARE_THREADS, name
    for name in ("gpu", "paper", "paper-opt"):
        assert get_profile(name).prepare_threads == 0, name


def test_another_count_gets_its_own_model_steps_and_the_default_keeps_the_committed_keys():
    default = prep_keys(get_profile("laptop"))
    assert prep_keys(get_profile("laptop", {"prepare_threads": 0})) == default
    other = prep_keys(get_profile("laptop", {"prepare_threads": 1}))
    assert [s for s in default if other[s] == default[s]] == ["data", "tokenizer"]


def test_a_negative_count_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as info:
        get_profile("smoke", {"prepare_threads": -1})
    assert info.value.key == "prepare_threads" and "must be >= 0" in str(info.value)
