"""One training step's loss: the student's and the teacher's outputs at the response positions, and
L = alpha * CE(y | x) + (1 - alpha) * tau^2 * D(p_tau || q_tau) (paper Eq. 1 / Eq. 7), computed on response tokens
only; on a GPU fused with the LM head in row chunks (`objective`)."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..losses import divergence, kd_loss
from ..modeling.models import (FUSED_AT, LOGITS_AT, Precision, autocast, compiled_inputs, fused_inputs,
                               hidden_at_positions, logits_at_positions, precision_for)
from .batches import Batch
from .objective import TeacherHidden, linear_objective


TOKENS = "tokens"  # key of a loss's parts: the response tokens its mean is over (see `loop.run_steps`)


def student_logits_at_targets(student: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Student logits only where a target exists: the LM head runs on [N, H] rows instead of [B*T, H].

    `student`: the student model (a prepared one through its own `LOGITS_AT` forward).
    `batch`: the batch; its labels != -100 mark the targets.
    Returns logits [N, V] in flattened (b, t) order, with autograd.
    """
    logits_at = getattr(student, LOGITS_AT, None) or partial(logits_at_positions, student)  # a sharded model's own
    return logits_at(batch.input_ids, batch.attention_mask, batch.labels != -100)  # [N, V]


@torch.no_grad()
def teacher_logits(teacher: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Teacher logits at the batch's target positions, in flattened (b, t) order, without gradients.

    The LM head runs on those N rows only (never [B, T, V]); under bf16 autocast on a GPU.

    Returns logits [N, V] float32.
    """
    logits_at = getattr(teacher, LOGITS_AT, None) or partial(logits_at_positions, teacher)  # a sharded model's own
    with autocast(batch.input_ids.device):
        return logits_at(batch.input_ids, batch.attention_mask, batch.target_positions()).float()


@torch.no_grad()
def teacher_hidden(teacher: PreTrainedModel, batch: Batch, precision: Precision) -> TeacherHidden:
    """The teacher's final hidden states at the batch's targets and its LM head, for the fused loss.

    The fused loss builds the teacher's logits one row chunk at a time (`objective.TeacherHidden`).

    `precision`: the step's precision policy (its autocast and compute dtype).
    Returns a TeacherHidden: hidden states [N, H'] in the precision's dtype, the LM head's weight [V, H'] and bias or
    None.
    """
    with autocast(batch.input_ids.device, precision):
        hidden = hidden_at_positions(teacher, batch.input_ids, batch.attention_mask, batch.target_positions())
    hidden = _compute_dtype(hidden, precision)
    head = teacher.get_output_embeddings()
    return TeacherHidden(hidden, head.weight.detach(), None if head.bias is None else head.bias.detach())


def live_teacher(teacher: PreTrainedModel, batch: Batch, *, precision: Precision) -> torch.Tensor | TeacherHidden:
    """The live teacher's output for `step_loss`.

    Hidden states + LM head for the fused loss (no [N, V] logits), else its logits at the targets.

    `precision`: the step's precision policy; its fused_loss chooses the form.
    Returns a TeacherHidden, or logits [N, V] float32.
    """
    if precision.fused_loss and _fusable(teacher):
        return teacher_hidden(teacher, batch, precision)
    return teacher_logits(teacher, batch)


def step_loss(student: PreTrainedModel, batch: Batch, teacher_rows: torch.Tensor | TeacherHidden | None, *,
              kind: str | None, tau: float, alpha: float, beta: float | None = None,
              precision: Precision | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss, the mean over the batch's response tokens (Eq. 1, 7-9).

        loss = alpha * CE + (1 - alpha) * tau^2 * D(p_tau || q_tau)

    The parts also give `TOKENS`, the count averaged over (`loop.run_steps` weighs a multi-process step's shards by
    it). `precision` picks the path: fp32 with whole [N, V] logits (the CPU's, bitwise reproducible), or autocast with
    the loss fused with the LM head in row chunks (`objective.linear_objective`; GPUs, never sharded models), whose
    parts stay 0-d tensors (no host sync).

    `teacher_rows`: teacher logits or cache rows [N, V], a `TeacherHidden`, or None (CE only).
    `kind`: a `losses.KINDS` divergence; None, or `alpha` = 1, means CE only. `beta`: None = the kind's default.
    Returns (loss, parts): the 0-d loss and its log row: "ce", "kd" (with a teacher) and `TOKENS`.
    Raises ValueError: the batch has no response tokens.
    """
    precision = precision or precision_for(batch.input_ids.device)
    if batch.target_positions().numel() == 0:  # the mean CE of zero tokens is 0/0 = NaN; no valid example gets here
        raise ValueError("step_loss: the batch has no response tokens (every label is -100); each example needs at "
                         "least one target token (check max_len against max_prompt_len)")
    if precision.fused_loss and _fusable(student):
        return _fused_step_loss(student, batch, teacher_rows, kind=kind, tau=tau, alpha=alpha, beta=beta,
                                precision=precision)
    if isinstance(teacher_rows, TeacherHidden):
        teacher_rows = teacher_rows.logits(slice(None)).float()  # [N, V]
    targets = batch.labels[batch.labels != -100]  # [N]
    logits = student_logits_at_targets(student, batch).float()  # [N, V]
    ce = F.cross_entropy(logits, targets)
    if teacher_rows is None or kind is None or alpha >= 1.0:
        return ce, {"ce": float(ce.detach()), TOKENS: targets.numel()}
    kd = divergence(logits[None], teacher_rows[None].to(logits.device), kind, temperature=tau, beta=beta)
    return kd_loss(ce, kd, alpha), {"ce": float(ce.detach()), "kd": float(kd.detach()), TOKENS: targets.numel()}


def _fusable(model: PreTrainedModel) -> bool:
    """Whether the fused loss can train `model`: not when FSDP shards its LM head outside the forward."""
    return getattr(model, LOGITS_AT, None) is None or getattr(model, FUSED_AT, None) is not None


def _compute_dtype(hidden: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Hidden states in the precision's dtype: autocast leaves the final layer norm's output in fp32."""
    return hidden if precision.dtype is None else hidden.to(precision.dtype)


def _fused_step_loss(student: PreTrainedModel, batch: Batch, teacher: torch.Tensor | TeacherHidden | None, *,
                     kind: str | None, tau: float, alpha: float, beta: float | None,
                     precision: Precision) -> tuple[torch.Tensor, dict]:
    """`step_loss` from the student's hidden states: forward under autocast, then LM head + CE + KD in row chunks."""
    positions = batch.target_positions()  # [N]
    targets = batch.labels.reshape(-1).index_select(0, positions)  # [N]
    inputs = getattr(student, FUSED_AT, None)  # data parallel: through DDP
    if inputs is None:
        inputs = compiled_inputs(student) if precision.compile else partial(fused_inputs, student)
    with autocast(batch.input_ids.device, precision):
        hidden, weight, bias = inputs(batch.input_ids, batch.attention_mask, positions)  # [N, H], [V, H], [V]
    hidden = _compute_dtype(hidden, precision)  # the LM head's matmuls then run in bf16, not fp32
    loss, parts = linear_objective(hidden, weight, targets, teacher, kind=kind, tau=tau, alpha=alpha, beta=beta,
                                   bias=bias)
    return loss, {**parts, TOKENS: positions.numel()}
