"""Tests for pocl_utils.losses: every kind against an independent float64 probability-space reference,
properties (D(p,p)=0, symmetry, bounds), temperature, masking, extreme logits, chunked == naive, the
alpha mix of `kd_loss` (the fused GPU path is tested in test_objective.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pocl_utils.losses import (
    DIVERGENCES,
    KINDS,
    divergence,
    divergence_naive,
    kd_loss,
    log_probs,
    token_divergence,
)

# (kind, beta) cases, including the explicit beta = 0 / 1 edges
CASES = [
    ("fkl", None), ("rkl", None), ("tvd", None),
    ("jsd", None), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0),
    ("skl", None), ("skl", 0.6), ("skl", 0.0), ("skl", 1.0),
    ("srkl", None), ("srkl", 0.6), ("srkl", 0.0), ("srkl", 1.0),
]
DEFAULT_BETA = {"jsd": 0.5, "skl": 0.1, "srkl": 0.1}
PATHS = {"naive": divergence_naive, "chunked": lambda *a, **k: divergence(*a, chunk_size=3, **k)}


# ---------------------------------------------------------------------------------------------------------
# independent reference: float64 probabilities, written straight from Appendix A.2.4


def ref_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum a log(a / b) for strictly positive probabilities [N, V] -> [N]."""
    return (a * (a / b).log()).sum(-1)


def ref_token(q: torch.Tensor, p: torch.Tensor, kind: str, beta: float | None) -> torch.Tensor:
    beta = DEFAULT_BETA.get(kind) if beta is None else beta
    if kind == "fkl":
        return ref_kl(p, q)
    if kind == "rkl":
        return ref_kl(q, p)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "jsd":
        if beta == 0.0:  # GKD/TRL convention at the edges
            return ref_kl(p, q)
        if beta == 1.0:
            return ref_kl(q, p)
        m = beta * p + (1 - beta) * q
        return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
    if kind == "skl":
        return ref_kl(p, beta * p + (1 - beta) * q)
    return ref_kl(q, (1 - beta) * p + beta * q)  # srkl


def ref_divergence(student, teacher, kind, tau=1.0, mask=None, beta=None):
    """float64 mean over masked tokens of tau^2 * D(softmax(t / tau), softmax(s / tau))."""
    q = torch.softmax(student.double() / tau, -1).reshape(-1, student.shape[-1])
    p = torch.softmax(teacher.double() / tau, -1).reshape(-1, student.shape[-1])
    per_token = tau**2 * ref_token(q, p, kind, beta)  # [N]
    if mask is None:
        return per_token.mean()
    keep = mask.reshape(-1).bool()
    return per_token[keep].sum() / max(int(keep.sum()), 1)


def make_logits(*shape, seed=0, scale=2.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return s, t


def value_and_grad(fn, student, teacher, kind, **kw):
    student = student.detach().clone().requires_grad_(True)
    value = fn(student, teacher, kind, **kw)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


# ---------------------------------------------------------------------------------------------------------
# correctness against the reference


@pytest.mark.parametrize("kind,beta", CASES)
@pytest.mark.parametrize("path", list(PATHS))
def test_matches_float64_reference(kind, beta, path):
    s, t = make_logits(3, 5, 17, seed=1)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) > 0.3
    ref_value, ref_grad = value_and_grad(
        ref_divergence, s.double(), t.double(), kind, tau=1.7, mask=mask, beta=beta
    )
    value, grad = value_and_grad(PATHS[path], s, t, kind, temperature=1.7, mask=mask, beta=beta)
    assert value.dtype == torch.float32
    assert abs(value.item() - ref_value.item()) <= 1e-5 * max(1.0, abs(ref_value.item()))
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,beta", CASES)
def test_hand_derived_gradients_pass_gradcheck(kind, beta):
    s, t = make_logits(2, 3, 7, seed=3, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    s.requires_grad_(True)
    fn = lambda x: divergence(x, t, kind, temperature=0.8, mask=mask, beta=beta, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s,))


def test_hand_worked_two_token_vocab():
    # teacher p = [1/4, 3/4], student q = [1/2, 1/2]
    s = torch.tensor([[[0.0, 0.0]]])
    t = torch.tensor([[[0.0, math.log(3.0)]]])
    fkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    rkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    m = [0.375, 0.625]
    jsd = 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])) + 0.5 * (
        0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    )
    expected = {"fkl": fkl, "rkl": rkl, "jsd": jsd, "tvd": 0.25}
    for kind, value in expected.items():
        assert divergence(s, t, kind).item() == pytest.approx(value, abs=1e-6)
    # forward KL is F.kl_div(input=log q, target=p): the argument order is the usual trap
    kl_div = F.kl_div(torch.log_softmax(s, -1), torch.softmax(t, -1), reduction="sum")
    assert kl_div.item() == pytest.approx(fkl, abs=1e-6)
    assert fkl != pytest.approx(rkl, abs=1e-3)


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_every_registered_gradient_is_the_derivative_of_its_value(name):
    """Each entry's hand-written gradient equals autograd through its own value, so a new entry is checked too."""
    entry = DIVERGENCES[name]
    s, t = make_logits(4, 13, seed=12, dtype=torch.float64)
    logp = log_probs(t, 1.0)  # [4, 13]
    for beta in {entry.default_beta, 0.3}:
        s_grad = s.clone().requires_grad_(True)
        value = entry.value(log_probs(s_grad), logp, beta)  # [4]
        (expected,) = torch.autograd.grad(value.sum(), s_grad)  # d sum_n D_n / ds
        got_value, got_grad = entry.value_and_grad(log_probs(s), logp.clone(), beta)
        torch.testing.assert_close(got_value, value.detach(), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(got_grad, expected, atol=1e-12, rtol=1e-10)


def test_config_methods_and_lab_formulas_come_from_the_registry():
    from pocl_utils.experiment import config
    from pocl_utils.notebook import lab

    assert set(DIVERGENCES) == set(config.DIVERGENCE_OF.values()) == set(lab.FORMULAS)
    assert all(config.DIVERGENCE_OF[d.method] == d.name for d in DIVERGENCES.values())


def test_token_divergence_is_per_token_without_reduction():
    s, t = make_logits(6, 11, seed=4)
    per_token = token_divergence(log_probs(s), log_probs(t), "fkl")
    assert per_token.shape == (6,)
    expected = ref_token(torch.softmax(s.double(), -1), torch.softmax(t.double(), -1), "fkl", None)
    torch.testing.assert_close(per_token.double(), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# properties


@pytest.mark.parametrize("kind,beta", CASES)
def test_identical_distributions_give_zero_and_nonnegative_otherwise(kind, beta):
    s, t = make_logits(4, 6, 19, seed=5)
    value, grad = value_and_grad(divergence, s, s.clone(), kind, beta=beta)
    assert abs(value.item()) < 1e-6 and grad.abs().max().item() < 1e-7
    for seed in range(3):
        s, t = make_logits(4, 6, 19, seed=10 + seed, scale=3.0)
        assert divergence(s, t, kind, beta=beta).item() >= 0.0


def test_jsd_symmetric_and_bounded_tvd_bounded():
    s, t = make_logits(4, 6, 19, seed=6, scale=4.0)
    jsd_st, jsd_ts = divergence(s, t, "jsd").item(), divergence(t, s, "jsd").item()
    assert jsd_st == pytest.approx(jsd_ts, abs=1e-6) and 0.0 < jsd_st <= math.log(2)
    assert 0.0 < divergence(s, t, "tvd").item() <= 1.0
    # disjoint supports reach the bounds: JSD = log 2, TVD = 1
    a, b = torch.tensor([[[30.0, -30.0]]]), torch.tensor([[[-30.0, 30.0]]])
    assert divergence(a, b, "jsd").item() == pytest.approx(math.log(2), abs=1e-6)
    assert divergence(a, b, "tvd").item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_softens_both_and_scales_by_tau_squared(kind):
    s, t = make_logits(2, 4, 13, seed=7)
    tau = 2.5
    tempered = divergence(s, t, kind, temperature=tau).item()
    by_hand = tau**2 * divergence(s / tau, t / tau, kind).item()
    assert tempered == pytest.approx(by_hand, rel=1e-5)
    assert tempered == pytest.approx(ref_divergence(s, t, kind, tau=tau).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# numerics: extreme logits, -inf entries, low precision


@pytest.mark.parametrize("kind,beta", CASES)
@pytest.mark.parametrize("path", list(PATHS))
def test_extreme_logits_finite(kind, beta, path):
    s, t = make_logits(2, 3, 9, seed=8, scale=1e4)
    s, t = s.clamp(-1e4, 1e4), t.clamp(-1e4, 1e4)
    value, grad = value_and_grad(PATHS[path], s, t, kind, beta=beta)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # disjoint one-hot-like rows at +-1e4: forward KL = 2e4 exactly (log q = -2e4 at the teacher's token)
    a, b = torch.tensor([[[1e4, -1e4]]]), torch.tensor([[[-1e4, 1e4]]])
    assert PATHS[path](a, b, "fkl").item() == pytest.approx(2e4, rel=1e-6)


@pytest.mark.parametrize("kind,beta", CASES)
@pytest.mark.parametrize("path", list(PATHS))
def test_minus_inf_vocab_entries_drop_out(kind, beta, path):
    s, t = make_logits(2, 3, 10, seed=9)
    dead = torch.tensor([1, 4, 9])
    keep = torch.tensor([i for i in range(10) if i not in dead.tolist()])
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[..., dead], t_inf[..., dead] = -math.inf, -math.inf
    value, grad = value_and_grad(PATHS[path], s_inf, t_inf, kind, temperature=1.3, beta=beta)
    small_value, small_grad = value_and_grad(
        PATHS[path], s[..., keep], t[..., keep], kind, temperature=1.3, beta=beta
    )
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert value.item() == pytest.approx(small_value.item(), abs=1e-6)
    assert (grad[..., dead] == 0).all()
    torch.testing.assert_close(grad[..., keep], small_grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["fkl", "jsd", "srkl"])
def test_low_precision_inputs_computed_in_fp32(dtype, kind):
    s, t = make_logits(2, 8, 64, seed=10)
    s_low, t_low = s.to(dtype), t.to(dtype)
    value, grad = value_and_grad(divergence, s_low, t_low, kind)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    # same rounded inputs in fp32 give (nearly) the same number: the math itself ran in fp32
    exact, exact_grad = value_and_grad(divergence, s_low.float(), t_low.float(), kind)
    assert value.item() == pytest.approx(exact.item(), rel=1e-6)
    torch.testing.assert_close(grad.float(), exact_grad, atol=1e-4, rtol=1e-2)
    assert value.item() == pytest.approx(divergence(s, t, kind).item(), rel=3e-2)


# ---------------------------------------------------------------------------------------------------------
# masking


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", list(PATHS))
def test_masked_tokens_change_nothing(kind, path):
    s, t = make_logits(3, 6, 12, seed=11)
    mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(12)) > 0.5
    value, grad = value_and_grad(PATHS[path], s, t, kind, mask=mask)
    s2, t2 = s.clone(), t.clone()
    noise_s, noise_t = make_logits(3, 6, 12, seed=13, scale=50.0)
    s2[~mask], t2[~mask] = noise_s[~mask], noise_t[~mask]
    value2, grad2 = value_and_grad(PATHS[path], s2, t2, kind, mask=mask.long())  # 0/1 mask works like bool
    assert value2.item() == value.item()
    assert (grad[~mask] == 0).all() and (grad2[~mask] == 0).all()
    torch.testing.assert_close(grad2, grad, atol=0, rtol=0)
    # same as computing on the selected rows only
    assert value.item() == pytest.approx(PATHS[path](s[mask], t[mask], kind).item(), abs=1e-6)


def test_non_contiguous_logits_same_result():
    s, t = make_logits(2, 6, 9, seed=24)
    sliced = s.clone().requires_grad_(True)
    value = divergence(sliced[:, :-1], t[:, :-1], "rkl", chunk_size=4)  # a shifted, non-contiguous view
    value.backward()
    ref_value, ref_grad = value_and_grad(ref_divergence, s[:, :-1].double(), t[:, :-1].double(), "rkl")
    assert value.item() == pytest.approx(ref_value.item(), abs=1e-6)
    torch.testing.assert_close(sliced.grad[:, :-1].double(), ref_grad, atol=1e-7, rtol=1e-5)
    assert (sliced.grad[:, -1] == 0).all()


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_batch_is_finite_zero(path):
    s, t = make_logits(2, 3, 5, seed=14)
    value, grad = value_and_grad(PATHS[path], s, t, "jsd", mask=torch.zeros(2, 3, dtype=torch.bool))
    assert value.item() == 0.0 and (grad == 0).all()


# ---------------------------------------------------------------------------------------------------------
# chunked == naive


@pytest.mark.parametrize(
    "kind,beta", [("fkl", None), ("rkl", None), ("jsd", 0.3), ("tvd", None), ("skl", None), ("srkl", None)]
)
def test_chunked_equals_naive_for_any_chunk_size(kind, beta):
    s, t = make_logits(3, 7, 33, seed=15)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(16)) > 0.25
    ref_value, ref_grad = value_and_grad(divergence_naive, s, t, kind, temperature=1.5, mask=mask, beta=beta)
    for chunk_size in (1, 4, 5, 21, 1000, None):  # 4, 5 do not divide the 21 rows / selected rows
        for m in (mask, None):
            if m is None:
                ref_value_m, ref_grad_m = value_and_grad(divergence_naive, s, t, kind, temperature=1.5, beta=beta)
            else:
                ref_value_m, ref_grad_m = ref_value, ref_grad
            value, grad = value_and_grad(
                divergence, s, t, kind, temperature=1.5, mask=m, beta=beta, chunk_size=chunk_size
            )
            assert abs(value.item() - ref_value_m.item()) <= 1e-5 * max(1.0, abs(ref_value_m.item()))
            torch.testing.assert_close(grad, ref_grad_m, atol=1e-6, rtol=1e-5)


def test_chunked_gradcheck_and_repeated_backward():
    gen = torch.Generator().manual_seed(18)
    student = torch.randn(7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 9, generator=gen, dtype=torch.float64)
    fn = lambda x: divergence(x, teacher, "srkl", temperature=1.2, chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (student,))
    # a retained graph can be backpropagated twice when the loss's incoming gradient is 1 ...
    s, t = make_logits(2, 3, 5, seed=19)
    s.requires_grad_(True)
    loss = divergence(s, t, "jsd")
    g1 = torch.autograd.grad(loss, s, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, s)[0]
    torch.testing.assert_close(g1, g2, atol=0, rtol=0)
    # ... and a scaled one (gradient rescaled in place) refuses loudly instead of returning wrong values
    scaled = 3.0 * divergence(s, t, "jsd")
    g3 = torch.autograd.grad(scaled, s, retain_graph=True)[0]
    torch.testing.assert_close(g3, 3.0 * g1)
    with pytest.raises(RuntimeError, match="inplace"):
        torch.autograd.grad(scaled, s)


def test_gradient_reaches_student_only():
    s, t = make_logits(2, 3, 6, seed=20)
    for fn in (divergence, divergence_naive):
        student, teacher = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
        fn(student, teacher, "jsd").backward()
        assert student.grad is not None and teacher.grad is None


# ---------------------------------------------------------------------------------------------------------
# the combined objective


def test_kd_loss_is_alpha_mix_of_ce_and_divergence():
    s, t = make_logits(2, 5, 9, seed=21)
    labels = torch.tensor([[-100, 3, 1, 8, -100], [0, -100, 2, 2, 5]])
    keep = labels != -100
    log_q = torch.log_softmax(s.double(), -1)
    ce = -log_q[keep].gather(-1, labels[keep][:, None]).mean()  # mean -log q(label) over kept tokens
    kd = ref_divergence(s, t, "skl", tau=2.0, mask=keep, beta=0.3)
    student = s.clone().requires_grad_(True)
    got_ce = F.cross_entropy(student[keep], labels[keep])
    got_kd = divergence(student, t, "skl", temperature=2.0, mask=keep, beta=0.3)
    loss = kd_loss(got_ce, got_kd, 0.3)
    assert loss.item() == pytest.approx(0.3 * ce.item() + 0.7 * kd.item(), abs=1e-5)
    loss.backward()
    by_hand = s.clone().requires_grad_(True)
    ref_loss = 0.3 * F.cross_entropy(by_hand.reshape(-1, 9), labels.reshape(-1)) + 0.7 * divergence_naive(
        by_hand, t, "skl", temperature=2.0, mask=keep, beta=0.3
    )
    ref_loss.backward()
    torch.testing.assert_close(student.grad, by_hand.grad, atol=1e-6, rtol=1e-5)
    assert kd_loss(got_ce, got_kd, 0.0) is got_kd  # alpha = 0: the KD term alone, no 0 * CE in the graph
    assert kd_loss(got_ce, got_kd, 1.0).item() == pytest.approx(got_ce.item(), abs=0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            kd_loss(got_ce, got_kd, bad)


# ---------------------------------------------------------------------------------------------------------
# bad arguments


def test_bad_arguments_raise():
    s, t = make_logits(2, 3, 5, seed=22)
    with pytest.raises(ValueError, match="fkl, rkl, jsd, tvd, skl, srkl"):
        divergence(s, t, "kl")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            divergence(s, t, "jsd", beta=bad)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            divergence_naive(s, t, "fkl", temperature=bad)
    with pytest.raises(ValueError, match="same shape"):
        divergence(s, t[..., :4], "fkl")
    with pytest.raises(ValueError, match="mask shape"):
        divergence(s, t, "fkl", mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        divergence(s, t, "fkl", mask=torch.full((2, 3), 2))
    with pytest.raises(ValueError, match="chunk_size"):
        divergence(s, t, "fkl", chunk_size=0)


# ---------------------------------------------------------------------------------------------------------
# an external oracle: TRL's GKD trainer


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_equals_trl_generalized_jsd(beta):
    """TRL's `GKDTrainer.generalized_jsd_loss` (batchmean over labels != -100, no tau^2) is our jsd / tau^2, at
    the same beta (both weigh the teacher by beta in the mixture), the limits beta = 0 and 1 included."""
    gkd = pytest.importorskip("trl.experimental.gkd")
    s, t = make_logits(2, 6, 11, seed=30)
    labels = torch.tensor([[-100, 3, 1, 8, -100, 2], [0, -100, 2, 2, 5, -100]])
    want = gkd.GKDTrainer.generalized_jsd_loss(s.double(), t.double(), labels=labels, beta=beta, temperature=1.7)
    got = divergence(s.double(), t.double(), "jsd", temperature=1.7, mask=labels != -100, beta=beta)
    assert got.item() / 1.7**2 == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
