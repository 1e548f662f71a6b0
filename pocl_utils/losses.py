"""Token-level distillation losses (POCL paper Eq. 1 and 7-9, baselines of Appendix A.2.4).

Every divergence compares p_tau = softmax(teacher_logits / tau) with q_tau = softmax(student_logits / tau)
(Eq. 8-9), is scaled by tau**2 (Eq. 7) and averaged over the selected tokens: sum / clamp_min(count, 1).

Deviations from the printed paper (typos or conventions):
- Eq. 7 prints L_kd = -tau^2 * sum_i D(...); a divergence is minimised, so the sign here is +.
- Eq. 7 sums over tokens; we average over selected tokens (as MiniLLM/DistiLLM code does).
- Eq. 12 (RKL) and the student term of Eq. 13 (JSD) print an expectation under p; it is taken under q.

alpha * CE + (1 - alpha) * tau^2 * D is combined in one place, `kd_loss`. The same D, three ways:
`divergence_naive` (plain autograd; the test oracle), `divergence` (row chunks in a custom autograd Function with
a hand-derived gradient, no graph over [N, V] temporaries; the CPU step) and `training.objective.linear_objective`
(the GPU step's, LM head and CE folded in, as Liger-Kernel's fused linear JSD, with the same hand-derived
gradients). A new divergence is one `Divergence` entry in `DIVERGENCES` (formula, value, gradient); `config.METHODS`
and the lab derive from it.

Numerics: log-softmax in fp32 (fp64 stays fp64); mixtures in log space; log-probabilities floored at LOG_FLOOR so
entries -inf in both distributions give 0 instead of NaN, in values and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

LOG_FLOOR = -1e30  # exp(LOG_FLOOR) == 0 in fp32/fp64, yet differences of floored values stay finite
# rows * vocab per chunk, the one chunk setting of both training paths (`divergence`, `training.objective`):
CHUNK_ELEMENTS = {"cpu": 2**23,  # ~32 MB per fp32 [n, V] temporary
                  "cuda": 2**25}  # ~128 MB, ~670 rows of GPT-2's vocabulary, so each chunk's matmuls fill the GPU
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------------
# argument checks


def _check_kind_beta(kind: str, beta: float | None) -> float | None:
    """Valid kind and resolved beta (default per kind); raises ValueError naming the bad argument."""
    if kind not in DIVERGENCES:
        raise ValueError(f"losses: unknown kind={kind!r}; valid kinds: {', '.join(DIVERGENCES)}")
    if beta is None:
        return DIVERGENCES[kind].default_beta
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:  # also rejects NaN
        raise ValueError(f"losses: beta={beta} must lie in [0, 1] (kind={kind!r})")
    return beta


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0.0 or math.isinf(temperature):  # also rejects NaN
        raise ValueError(f"losses: temperature={temperature} must be a finite number > 0")
    return temperature


def chunk_rows(chunk_size: int | None, vocab: int, device: torch.device) -> int:
    """Rows per chunk: chunk_size itself, or None = CHUNK_ELEMENTS[device type] // vocab (at least 1).

    Raises ValueError unless chunk_size is None or a positive int.
    """
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cpu"]) // max(vocab, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"losses: chunk_size={chunk_size!r} must be a positive int or None (auto)")
    return chunk_size


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(
            f"losses: student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape [..., V]"
        )
    if not (student_logits.is_floating_point() and teacher_logits.is_floating_point()):
        raise ValueError("losses: student_logits and teacher_logits must be floating point tensors")


def _flat_mask(mask: torch.Tensor | None, lead_shape: torch.Size) -> torch.Tensor | None:
    """mask [...] (bool or 0/1) -> bool [N]; None stays None (every token counts)."""
    if mask is None:
        return None
    if mask.shape != lead_shape:
        raise ValueError(
            f"losses: mask shape {tuple(mask.shape)} must equal the logits' leading shape {tuple(lead_shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("losses: mask must be bool or hold only 0/1 values")
        mask = mask != 0
    return mask.reshape(-1)  # [N]


def _selected_rows(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Row indices [K] that count, or None when all rows count (then chunks are plain slices, no copies)."""
    if mask is None or bool(mask.all()):
        return None
    return mask.nonzero().squeeze(1)  # [K]


# ----------------------------------------------------------------------------------------------------------
# per-token divergences (autograd-friendly; no masking, no reduction)


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / tau) in fp32 (fp64 stays fp64), floored at LOG_FLOOR so -inf entries stay finite.

    `logits`: [..., V], any floating dtype.
    `temperature`: tau > 0.
    Returns floored log-probabilities, [..., V].
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    out = torch.log_softmax(logits, dim=-1)
    return out.clamp_min(LOG_FLOOR) if out.requires_grad else out.clamp_min_(LOG_FLOOR)  # in place when no graph


# ----------------------------------------------------------------------------------------------------------
# the divergences: one entry each, the formula beside its value and its gradient
# p = teacher, q = student (Appendix A.2.4); s = student_logits / tau, the tempered student logits.
# value(logq, logp, beta) -> D [n] by autograd-friendly ops; value_and_grad(logq, logp, beta) -> (D [n], dD/ds [n, V]).
# With g_v = dD/dlog q_v, the log-softmax chain rule gives dD/ds_v = g_v - q_v * sum_u g_u.
# value_and_grad may overwrite the tensors it creates, never its inputs.


@dataclass(frozen=True)
class Divergence:
    """One divergence D(p || q): its formula, its paper method, and its value and gradient side by side.

    `name`: the `kind` string callers pass (e.g. "fkl").
    `formula`: D(p || q) in words for people (p = teacher, q = student).
    `value`: per-token value for autograd, (logq [n, V], logp [n, V], beta) -> [n].
    `value_and_grad`: (logq, logp, beta) -> (value [n], dD/ds [n, V]) without autograd.
    `default_beta`: the mixing weight used when the caller passes none; None for kinds without beta.
    `limits`: beta -> the name of the divergence used at that beta, or None where this one is identically 0. GKD's JSD
    takes KL(p || q) at beta = 0 and KL(q || p) at beta = 1, where its literal formula is 0.
    """

    name: str
    method: str
    formula: str
    value: Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]
    value_and_grad: Callable[[torch.Tensor, torch.Tensor, float | None], tuple[torch.Tensor, torch.Tensor]]
    default_beta: float | None = None
    limits: dict[float, str | None] = field(default_factory=dict)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a (log a - log b) per row; inputs are floored log-probs [N, V] -> [N]."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b) for 0 < weight_a < 1, built in log space."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


# fkl: D = KL(p || q) = sum p (log p - log q)  (Eq. 11);  dD/ds = q - p
def _fkl(logq, logp, beta=None):
    return _kl(logp, logq)


def _fkl_grad(logq, logp, beta=None):
    p, q = logp.exp(), logq.exp()
    value = (p * (logp - logq)).sum(-1)  # [n]
    return value, q.sub_(p)


# rkl: D = KL(q || p) = sum q (log q - log p)  (Eq. 12; the paper prints E_p, a typo);
# dD/ds = q (log q - log p - D)
def _rkl(logq, logp, beta=None):
    return _kl(logq, logp)


def _rkl_grad(logq, logp, beta=None):
    q, r = logq.exp(), logq - logp
    value = (q * r).sum(-1)  # [n]
    return value, r.sub_(value[:, None]).mul_(q)


# jsd: D = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q  (Eq. 13 at beta = 0.5; GKD's
# generalized JSD, whose limits beta = 0 and 1 are KL(p || q) and KL(q || p));
# dD/ds = (1 - beta) q (log q/m - KL(q || m))
def _jsd(logq, logp, beta):
    logm = _log_mix(logp, logq, beta)  # [n, V]
    return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)


def _jsd_grad(logq, logp, beta):
    logm = _log_mix(logp, logq, beta)  # [n, V]
    q, r = logq.exp(), logq - logm
    kl_qm = (q * r).sum(-1)  # [n]
    value = beta * _kl(logp, logm) + (1.0 - beta) * kl_qm
    return value, r.sub_(kl_qm[:, None]).mul_(q).mul_(1.0 - beta)


# tvd: D = 0.5 sum |p - q|  (Eq. 14);  g = 0.5 sign(q - p) q
def _tvd(logq, logp, beta=None):
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


def _tvd_grad(logq, logp, beta=None):
    q = logq.exp()
    diff = q - logp.exp()  # [n, V]
    value = 0.5 * diff.abs().sum(-1)
    sign = diff.sign_()
    return value, sign.sub_((q * sign).sum(-1, keepdim=True)).mul_(q).mul_(0.5)


# skl: D = KL(p || m), m = beta p + (1 - beta) q  (Eq. 15);  w = (1 - beta) q / m, dD/ds = -p w + q sum(p w)
def _skl(logq, logp, beta):
    return _kl(logp, _log_mix(logp, logq, beta))


def _skl_grad(logq, logp, beta):
    logm = _log_mix(logp, logq, beta)  # [n, V]
    p = logp.exp()
    value = (p * (logp - logm)).sum(-1)  # [n]
    pw = (logq + math.log1p(-beta) - logm).exp_().mul_(p)  # [n, V]
    return value, logq.exp().mul_(pw.sum(-1, keepdim=True)).sub_(pw)


# srkl: D = KL(q || m), m = (1 - beta) p + beta q  (Eq. 16);  u = beta q / m, dD/ds = q (log q/m - u - D + sum q u)
def _srkl(logq, logp, beta):
    return _kl(logq, _log_mix(logq, logp, beta))


def _srkl_grad(logq, logp, beta):
    logm = _log_mix(logq, logp, beta)  # [n, V]
    q, r = logq.exp(), logq - logm
    value = (q * r).sum(-1)  # [n]
    u = (logq + math.log(beta) - logm).exp_()  # [n, V]
    shift = (q * u).sum(-1, keepdim=True) - value[:, None]  # [n, 1]
    return value, r.sub_(u).add_(shift).mul_(q)


DIVERGENCES: dict[str, Divergence] = {d.name: d for d in (
    Divergence("fkl", "KLD", "KL(p ‖ q) = Σ p (log p − log q)", _fkl, _fkl_grad),
    Divergence("rkl", "RKL", "KL(q ‖ p) = Σ q (log q − log p)", _rkl, _rkl_grad),
    Divergence("jsd", "JSD", "β KL(p ‖ m) + (1−β) KL(q ‖ m), m = β p + (1−β) q", _jsd, _jsd_grad,
               default_beta=0.5, limits={0.0: "fkl", 1.0: "rkl"}),
    Divergence("tvd", "TVD", "½ Σ |p − q|", _tvd, _tvd_grad),
    Divergence("skl", "SKL", "KL(p ‖ β p + (1−β) q)", _skl, _skl_grad,
               default_beta=0.1, limits={0.0: "fkl", 1.0: None}),
    Divergence("srkl", "SRKL", "KL(q ‖ (1−β) p + β q)", _srkl, _srkl_grad,
               default_beta=0.1, limits={0.0: "rkl", 1.0: None}),
)}
KINDS = tuple(DIVERGENCES)
DEFAULT_BETA = {d.name: d.default_beta for d in DIVERGENCES.values() if d.default_beta is not None}


def _at_beta(kind: str, beta: float | None) -> Divergence | None:
    """The divergence `kind` equals at this beta (its own entry unless beta is one of its limits); None if 0."""
    entry = DIVERGENCES[kind]
    if beta in entry.limits:
        target = entry.limits[beta]
        return None if target is None else DIVERGENCES[target]
    return entry


def _zero_grad(logq, logp, beta=None):
    return logq.new_zeros(logq.shape[0]), torch.zeros_like(logq)


# D = 0 for every token: skl and srkl at beta = 1, whose mixture is their first argument (`Divergence.limits`)
_ZERO = Divergence("zero", "", "0", lambda logq, logp, beta=None: logq.new_zeros(logq.shape[0]), _zero_grad)


def divergence_at(kind: str, beta: float | None = None) -> tuple[Divergence, float | None]:
    """The registry entry that computes `kind` at `beta`, and the resolved beta (None = the kind's default).

    At one of the kind's limits the entry is the limit's divergence, or one that is 0 for every token (`Divergence`).
    Raises ValueError: an unknown kind, or beta outside [0, 1].
    """
    beta = _check_kind_beta(kind, beta)
    entry = _at_beta(kind, beta)
    return (_ZERO if entry is None else entry), beta


def token_divergence(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, kind: str, beta: float | None = None
) -> torch.Tensor:
    """Per-token D(p || q), no tau**2, no mask, no reduction (the formulas are in `DIVERGENCES`).

    `student_logprobs`: log q [N, V], from `log_probs` (floored, so entries -inf in both give 0).
    `teacher_logprobs`: log p [N, V]; detached here.
    `beta`: mixing weight in [0, 1] for jsd/skl/srkl; None = the kind's default.
    Returns D(p || q) per row, [N].
    Raises ValueError: an unknown kind, or beta outside [0, 1].
    """
    entry, beta = divergence_at(kind, beta)
    if entry is _ZERO:  # the mixture equals the first argument: KL(x || x) = 0
        return student_logprobs.sum(-1) * 0.0  # keeps the graph so backward gives zeros
    return entry.value(student_logprobs, teacher_logprobs.detach(), beta)


# ----------------------------------------------------------------------------------------------------------
# naive path (test oracle)


def divergence_naive(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    beta: float | None = None,
) -> torch.Tensor:
    """Same value as `divergence`, by plain autograd over full [N, V] tensors (memory hungry; the test oracle).

    `student_logits`: [B, T, V] (any [..., V]).
    `teacher_logits`: same shape as student_logits.
    `temperature`: tau > 0, applied to both distributions.
    `mask`: [B, T] bool or 0/1; None = every token counts.
    `beta`: mixing weight in [0, 1] for jsd/skl/srkl; None = the kind's default.
    Returns the loss, a 0-d fp32 tensor (fp64 for fp64 input).
    Raises ValueError: as `divergence`, naming the bad argument.
    """
    beta, temperature = _check_kind_beta(kind, beta), _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    vocab = student_logits.shape[-1]
    flat_mask = _flat_mask(mask, student_logits.shape[:-1])  # [N] or None
    student, teacher = student_logits.reshape(-1, vocab), teacher_logits.detach().reshape(-1, vocab)  # [N, V]
    if flat_mask is not None:  # only selected rows are computed, so anything at masked rows is inert
        student, teacher = student[flat_mask], teacher[flat_mask]  # [K, V]
    per_token = token_divergence(log_probs(student, temperature), log_probs(teacher, temperature), kind, beta)
    return temperature**2 * per_token.sum() / max(per_token.shape[0], 1)


# ----------------------------------------------------------------------------------------------------------
# chunked path over given logits


def _row_chunks(rows: torch.Tensor | None, n_rows: int, chunk_size: int):
    """Yields, per chunk, either a slice (all rows count) or an index tensor [<= chunk_size]."""
    if rows is None:
        for start in range(0, n_rows, chunk_size):
            yield slice(start, min(start + chunk_size, n_rows))
    else:
        yield from rows.split(chunk_size)


def _take(x: torch.Tensor, idx) -> torch.Tensor:
    return x[idx] if isinstance(idx, slice) else x.index_select(0, idx)


def _put(out: torch.Tensor, idx, values: torch.Tensor) -> None:
    if isinstance(idx, slice):
        out[idx].copy_(values)
    else:
        out.index_copy_(0, idx, values.to(out.dtype))


def _scale_saved(grad: torch.Tensor | None, grad_output: torch.Tensor) -> torch.Tensor | None:
    """grad * grad_output, in place when grad_output != 1 (saves an input-sized copy).

    grad is a saved tensor, so an in-place change bumps its version and a repeated backward through a
    retained graph raises PyTorch's "modified by an inplace operation" error instead of returning wrong values;
    with grad_output == 1 nothing is modified and repeated backward works.
    """
    if grad is None or torch.equal(grad_output, torch.ones_like(grad_output)):
        return grad
    return grad.mul_(grad_output.to(grad.dtype))


class _ChunkedDivergence(torch.autograd.Function):
    """Loss over selected rows of [N, V] logits, one row chunk at a time.

    forward computes each chunk's value and hand-derived gradient together (one pass over the data, as Liger
    does) and saves only the [N, V] gradient; backward just scales it. Recomputing in backward instead would
    cost a second pass for the same peak (the gradient has to exist at backward time either way).
    """

    @staticmethod
    def forward(ctx, student, teacher, rows, entry, temperature, beta, chunk_size, need_grad):
        count = student.shape[0] if rows is None else rows.numel()
        # rows never visited must read 0; when every row is visited, skip the memset
        new_grad = torch.empty_like if rows is None else torch.zeros_like
        grad = new_grad(student) if need_grad else None  # [N, V]
        grad_scale = temperature / max(count, 1)  # d(tau^2 D / count) / d logits = tau dD/ds / count, s = logits / tau
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        for idx in _row_chunks(rows, student.shape[0], chunk_size):
            logq = log_probs(_take(student, idx), temperature)  # [n, V]
            logp = log_probs(_take(teacher, idx), temperature)  # [n, V]
            if grad is None:
                total += entry.value(logq, logp, beta).sum()
                continue
            value, chunk_grad = entry.value_and_grad(logq, logp, beta)
            total += value.sum()
            _put(grad, idx, chunk_grad.mul_(grad_scale))
        ctx.save_for_backward(grad)
        return (total * (temperature**2 / max(count, 1))).to(torch.promote_types(student.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return _scale_saved(grad, grad_output), None, None, None, None, None, None, None


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    beta: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The distillation loss of Eq. 7-9: tau**2 times the masked token mean of D(p_tau || q_tau).

        L = tau**2 * sum_t mask_t D(p_tau,t || q_tau,t) / max(sum_t mask_t, 1)  (a mean, not the paper's sum)

    Computed in row chunks of the selected rows; the student gradient (teacher detached) is each divergence's
    hand-written one, saved during forward, so the extra memory is the student-sized gradient plus chunk temporaries.
    A retained graph can be backpropagated again only with an incoming gradient of 1.

    `student_logits`, `teacher_logits`: [..., V], same shape. `mask`: [...] bool or 0/1; None = every token counts.
    `beta`: mixing weight in [0, 1] for jsd/skl/srkl (default 0.5 for jsd, 0.1 for skl/srkl); others ignore it.
    `chunk_size`: rows per chunk; None = about CHUNK_ELEMENTS[device type] / V.
    Returns the loss, a 0-d fp32 tensor (fp64 for fp64 input).
    Raises ValueError: an unknown kind, beta outside [0, 1], a temperature that is not a finite number > 0, logits of
    different shapes or not floating point, a mask of the wrong shape or not 0/1, a chunk_size not a positive int.
    """
    entry, beta = divergence_at(kind, beta)
    temperature = _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    vocab = student_logits.shape[-1]
    chunk_size = chunk_rows(chunk_size, vocab, student_logits.device)
    rows = _selected_rows(_flat_mask(mask, student_logits.shape[:-1]))  # [K] or None
    student = student_logits.reshape(-1, vocab)  # [N, V], a view for contiguous input
    teacher = teacher_logits.detach().reshape(-1, vocab)  # [N, V]
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    return _ChunkedDivergence.apply(student, teacher, rows, entry, temperature, beta, chunk_size, need_grad)


# ----------------------------------------------------------------------------------------------------------
# the paper's combined objective


def kd_loss(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """The paper's loss (Eq. 1 = 10 with Eq. 7), given its two terms:

        L = alpha * CE + (1 - alpha) * tau^2 * D(p_tau || q_tau),   kd = tau^2 * D (what `divergence` returns)

    alpha = 0 returns kd itself (no 0 * CE term in the graph). Both training paths (`training.step`, whose CPU path
    calls `divergence`, and the GPU's fused `training.objective`, per row chunk of sums) combine their terms here.
    Raises ValueError unless 0 <= alpha <= 1.
    """
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"losses: alpha={alpha} must lie in [0, 1]")
    return alpha * ce + (1.0 - alpha) * kd if alpha > 0 else kd
