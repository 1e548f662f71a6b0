"""GKD's on-policy step and generated responses as training targets.

- With alpha > 0 (the ratio ablation), an on-policy step's SFT term is the CE of the ground-truth responses, and the
  divergence is on the student's own samples (Eq. 9 with GKD's SGOs; DistiLLM's and GKD's code).
- SeqKD's teacher responses and GKD's student samples end in EOS only when the model stopped by itself.
"""
import numpy as np
import pytest
import torch

from pocl_utils.experiment.config import ModelSpec
from pocl_utils.data import Encoded, close_response
from pocl_utils.losses import divergence
from pocl_utils.modeling.models import build_model
from pocl_utils.training.batches import make_batch
from pocl_utils.training.kd import KDContext, kd_loss_fn, student_generated

V = 40


def _setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    encoded = [Encoded(rng.integers(1, V, 3).tolist(), rng.integers(1, V, int(n)).tolist() + [0], i)
               for i, n in enumerate((2, 5, 1, 4))]
    student = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), V, 32, seed=0)
    teacher = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), V, 32, seed=1).eval()
    ctx = KDContext(encoded, pad_id=0, eos_id=0, teacher=teacher, on_policy_frac=1.0, max_new_tokens=4)
    return student, teacher, ctx


def _masked_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, V] logits at the response targets and the [N] targets, from a plain forward (float64)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    keep = batch.labels != -100  # labels are aligned with logit positions (make_batch)
    return logits[keep], batch.labels[keep]


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_on_policy_ce_is_on_the_ground_truth_and_kd_on_the_samples(alpha):
    student, teacher, ctx = _setup()
    idx, tau = [0, 1, 2, 3], 2.0
    loss, parts = kd_loss_fn(student, ctx, kind="fkl", tau=tau, alpha=alpha, rng=np.random.default_rng(5))(idx, 0, idx)

    draw = np.random.default_rng(5)
    draw.random()  # the on-policy coin (always heads at on_policy_frac = 1)
    samples = student_generated(student, [ctx.encoded[i] for i in idx], ctx, seed=int(draw.integers(2**31)))
    student.eval()  # dropout is 0 in build_model; eval() only to be explicit
    with torch.no_grad():
        sampled = make_batch(samples, 0)
        s_logits, _ = _masked_logits(student, sampled)
        t_logits, _ = _masked_logits(teacher, sampled)
        kd = divergence(s_logits[None], t_logits[None], "fkl", temperature=tau)
        truth = make_batch([ctx.encoded[i] for i in idx], 0)
        g_logits, targets = _masked_logits(student, truth)
        ce = torch.nn.functional.cross_entropy(g_logits, targets)
    expected = alpha * ce + (1 - alpha) * kd
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    if alpha > 0:  # the ground truth's CE differs from the samples' CE, so taking it on the samples would fail here
        s_ce = torch.nn.functional.cross_entropy(*_masked_logits(student, sampled))
        assert abs(float(s_ce.detach()) - float(ce)) > 1e-3
        assert parts["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_close_response_appends_eos_only_when_the_model_stopped():
    assert close_response([5, 6], max_new_tokens=4, eos_id=0) == [5, 6, 0]  # stopped after 2 tokens
    assert close_response([5, 6, 7, 8], max_new_tokens=4, eos_id=0) == [5, 6, 7, 8]  # cut by the budget
    assert close_response([], max_new_tokens=4, eos_id=0) == [0]  # EOS first


def test_student_samples_and_seqkd_responses_share_the_rule():
    student, _, ctx = _setup()
    ctx.max_new_tokens = 2  # short budget: a random student hits it
    outs = student_generated(student, ctx.encoded, ctx, seed=3)
    cut = [o for o in outs if o.response_ids[-1] != 0]
    assert cut, "expected at least one sample cut by the budget"
    assert all(len(o.response_ids) == 2 for o in cut)
    assert all(len(o.response_ids) <= 3 for o in outs)
