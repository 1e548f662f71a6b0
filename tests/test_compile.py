"""The opt-in `torch.compile` of the student's step (the profile's `compile`, CUDA only in runs): the compiled step gives the
eager step's loss and gradients. Checked on the CPU, where inductor needs a C compiler."""
import shutil
import time

import numpy as np
import pytest
import torch

from pocl_utils.data import Encoded
from pocl_utils.experiment import provenance
from pocl_utils.experiment.config import ConfigError, ModelSpec, get_profile
from pocl_utils.experiment.job import engine_overrides
from pocl_utils.modeling import models
from pocl_utils.modeling.models import COMPILED_AT, Precision, build_model, precision_for
from pocl_utils.training.batches import make_batch
from pocl_utils.training.step import step_loss

VOCAB = 48
EAGER = Precision(None, fused_loss=True)  # the GPU's step path, in fp32 on the CPU
COMPILED = Precision(None, fused_loss=True, compile=True)


def _batches() -> list:
    """Two batches of different lengths (the compiled step must follow the shape change)."""
    rng = np.random.default_rng(0)
    ex = [Encoded(rng.integers(1, VOCAB, size=3).tolist(), rng.integers(1, VOCAB, size=n).tolist() + [0], i, {})
          for i, n in enumerate([4, 9, 2, 6, 11])]
    return [make_batch(ex[:3], 0), make_batch(ex[2:], 0)]


def _step(precision: Precision, batch) -> tuple[float, torch.Tensor]:
    torch.manual_seed(1)
    teacher_rows = 3 * torch.randn(int(batch.target_positions().numel()), VOCAB)  # [N, V]
    student = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), VOCAB, 64, seed=0)
    loss, _ = step_loss(student, batch, teacher_rows, kind="fkl", tau=2.0, alpha=0.3, precision=precision)
    loss.backward()
    assert (getattr(student, COMPILED_AT, None) is not None) == precision.compile
    return float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in student.parameters()])


@pytest.mark.slow
def test_compiled_student_step_equals_the_eager_step():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C compiler; none on PATH")
    torch.set_num_threads(1)
    t0 = time.time()
    for batch in _batches():
        want_loss, want_grad = _step(EAGER, batch)
        got_loss, got_grad = _step(COMPILED, batch)
        assert got_loss == pytest.approx(want_loss, rel=1e-5)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    print(f"compiled vs eager: {time.time() - t0:.0f}s")


def test_compile_is_opt_in_and_only_on_cuda(monkeypatch):
    assert not get_profile("laptop").compile and not models.policy_for("cuda").compile  # opt-in
    compiled = get_profile("laptop", {"compile": True})
    assert precision_for(torch.device("cpu"), compiled.compile) == models.CPU_PRECISION  # the CPU never compiles
    cuda = models.policy_for("cuda", compiled.compile)
    assert cuda.compile and cuda.tag == "bf16-autocast+fused+compiled"
    assert provenance.precision("cuda", compiled.compile) == "bf16-autocast+fused+compiled"  # what run keys record
    assert models.policy_for("cpu", True) == models.CPU_PRECISION
    monkeypatch.setenv("POCL_COMPILE", "1")  # the environment counts only where the job's entry point reads it
    assert not models.policy_for("cuda").compile
    assert engine_overrides({"POCL_COMPILE": "1", "POCL_GRAD_ACCUM": "4"}) == {"compile": True, "grad_accum": 4}
    assert engine_overrides({"POCL_COMPILE": "0"}) == {"compile": False} and engine_overrides({}) == {}
    for bad in ({"POCL_COMPILE": "yes please"}, {"POCL_GRAD_ACCUM": "0"}, {"POCL_GRAD_ACCUM": "two"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            engine_overrides(bad)
