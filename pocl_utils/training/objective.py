"""One step's objective computed from hidden states in row chunks: the LM head, the CE and the KD term fused.

    loss = alpha * CE(y | x) + (1 - alpha) * tau^2 * D(p_tau || q_tau)        (paper Eq. 1 / Eq. 7)
    CE   = (1 / N) sum_i [logsumexp(z_i) - z_i[y_i]],   z_i = W h_i (+ b)     (student logits, row i)
    D    = (1 / N) sum_i losses.token_divergence(log_softmax(z_i / tau), log_softmax(t_i / tau))

over the N response tokens. The student logits z [N, V] never exist whole: each chunk of rows builds its logits,
values and d loss / d z at once (by hand: softmax - onehot for the CE, and for the KD term each divergence's own
gradient from the `losses` registry, the one the chunked CPU path uses), and folds that gradient straight into
grad_hidden [N, H] and grad_W [V, H]. The teacher comes as rows [N, V] (the cache) or as its hidden states and LM head,
whose logits are then also built one chunk at a time. The LM head counts once: one
[n, H] x [H, V] product per chunk forward, two for the folded gradient, the same FLOPs as the unfused step.

Matmuls run in the hidden states' dtype (bf16 under the GPU path's autocast), log-softmax and the sums in fp32,
grad_W accumulates in fp32: the fp32 master weights get an fp32 gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import Divergence, chunk_rows, divergence_at, kd_loss, log_probs


@dataclass
class TeacherHidden:
    """A live teacher's output at the N target positions, before its LM head: logits = hidden @ weight^T (+ bias)."""

    hidden: torch.Tensor  # [N, H']
    weight: torch.Tensor  # [V, H']
    bias: torch.Tensor | None = None  # [V]

    def logits(self, rows: slice) -> torch.Tensor:
        """The teacher's logits of some rows: hidden[rows] @ weight^T (+ bias), in the hidden states' dtype.

        Returns logits [n, V].
        """
        h = self.hidden[rows]
        w = self.weight.to(h.dtype)
        out = h @ w.t()
        return out if self.bias is None else out + self.bias.to(out.dtype)


Teacher = torch.Tensor | TeacherHidden  # rows [N, V] (any dtype, any device) or hidden states + LM head


def _teacher_chunk(teacher: Teacher, rows: slice, device: torch.device) -> torch.Tensor:
    if isinstance(teacher, TeacherHidden):
        return teacher.logits(rows)
    return teacher[rows].to(device, non_blocking=True)


def _chunk_loss(z: torch.Tensor, targets: torch.Tensor, teacher_z: torch.Tensor | None, entry: Divergence | None,
                tau: float, alpha: float, beta: float | None
                ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One chunk's summed (not averaged) weighted loss, CE and tau^2 D, and d(loss sum) / dz [n, V], by hand:

        d CE / dz         = softmax(z) - onehot(y)
        d tau^2 D / dz    = tau * dD/ds,   s = z / tau   (the registry entry's hand-written gradient, `losses`)

    `z`: [n, V] fp32 student logits; `entry` None (no teacher) = CE only. No autograd graph is built, so the chunk's
    temporaries are a few [n, V] tensors. May overwrite z.
    """
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [n, 1]
    ce = (lse.squeeze(1) - z.gather(1, targets[:, None]).squeeze(1)).sum()
    rows = torch.arange(z.shape[0], device=z.device)
    if teacher_z is None:
        grad = z.sub_(lse).exp_()  # softmax(z), in z's storage
        grad[rows, targets] -= 1.0
        return (ce, ce, ce.new_zeros(())), grad
    value, grad = entry.value_and_grad(log_probs(z, tau), log_probs(teacher_z, tau), beta)  # D [n], dD/ds [n, V]
    kd = value.sum() * tau**2
    grad.mul_((1.0 - alpha) * tau)
    if alpha > 0:
        soft = z.sub_(lse).exp_()
        soft[rows, targets] -= 1.0
        grad.add_(soft, alpha=alpha)
    return (kd_loss(ce, kd, alpha), ce, kd), grad


class _LinearObjective(torch.autograd.Function):
    """Value in forward, with the gradients of hidden and weight folded chunk by chunk and saved for backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher, entry, tau, alpha, beta, chunk):
        n = hidden.shape[0]
        w = weight.to(hidden.dtype)  # bf16 copy of the fp32 master under the GPU path; a no-op in fp32
        b = None if bias is None else bias.to(hidden.dtype)
        grad_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # [N, H]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # [V, H] fp32 accumulation
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        sums = torch.zeros(3, dtype=torch.float64, device=hidden.device)  # loss, ce, kd
        for s in range(0, n, chunk):
            rows = slice(s, min(s + chunk, n))
            h = hidden[rows]  # [n, H]
            with torch.autocast(hidden.device.type, enabled=False):
                z = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # [n, V]
                z = z.float()
                tz = None if teacher is None else _teacher_chunk(teacher, rows, hidden.device).float()
                parts, g = _chunk_loss(z, targets[rows], tz, entry, tau, alpha, beta)  # g: d(chunk loss sum) / dz
                g = g.div_(n)
                sums += torch.stack([p.double() for p in parts])
                if grad_h is not None:
                    grad_h[rows] = (g.to(w.dtype) @ w).to(hidden.dtype)
                grad_w.addmm_(g.t(), h.float())
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype))
        return (sums / n).float()

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_out[0]  # only the loss entry carries a gradient
        out = [None if t is None else t * scale.to(t.dtype) for t in (grad_h, grad_w, grad_b)]
        return (*out, None, None, None, None, None, None, None)


def linear_objective(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, teacher: Teacher | None, *,
                     kind: str | None, tau: float, alpha: float, beta: float | None = None,
                     bias: torch.Tensor | None = None, chunk_size: int | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * CE + (1 - alpha) * tau^2 * D from the student's hidden states at the N target positions.

    `hidden`: [N, H] student hidden states (after the final norm) at the positions that predict `targets`.
    `weight`: [V, H] the student's LM head (fp32 master weights; cast to hidden's dtype for the matmuls).
    `targets`: [N] the ground-truth next tokens.
    `teacher`: [N, V] teacher rows (logits or cache rows, any device), a `TeacherHidden`, or None (CE only).
    `kind`: a `losses.KINDS` divergence; None means CE only.
    `alpha`: the CE weight in [0, 1].
    `beta`: the divergence's mixing weight (see `losses`).
    `bias`: [V] LM-head bias or None.
    `chunk_size`: rows per chunk; None = about `losses.CHUNK_ELEMENTS`[device type] / V.
    Returns (loss 0-d fp32, {"ce", "kd"} 0-d detached fp32 tensors; "kd" only with a teacher) - no host sync.
    Raises ValueError: hidden, weight and targets not [N, H], [V, H] and [N], or no target rows.
    """
    shapes_ok = hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1]
    if not shapes_ok or targets.shape != hidden.shape[:1]:
        raise ValueError(f"linear_objective: hidden {tuple(hidden.shape)} must be [N, H], weight {tuple(weight.shape)} "
                         f"[V, H] and targets {tuple(targets.shape)} [N]")
    if hidden.shape[0] == 0:
        raise ValueError("linear_objective: no target rows (every label is -100)")
    if kind is None or alpha >= 1.0:
        teacher = None
    entry = None
    if teacher is not None:
        entry, beta = divergence_at(kind, beta)
    chunk = chunk_rows(chunk_size, weight.shape[0], hidden.device)
    sums = _LinearObjective.apply(hidden, weight, bias, targets, teacher, entry, float(tau), float(alpha), beta, chunk)
    loss = sums[0]
    parts = {"ce": sums[1].detach()}
    if teacher is not None:
        parts["kd"] = sums[2].detach()
    return loss, parts
