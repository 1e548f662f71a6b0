"""Knowledge distillation's step loss: ground-truth batches against the cached (or live) teacher; on-policy batches
(GKD) on the student's own samples, scored by the live teacher."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from transformers import PreTrainedModel

from . import distributed
from ..data import Encoded, close_response
from ..losses import kd_loss
from ..modeling.models import Precision, freeze_teacher, precision_for
from .batches import make_batch
from .loop import LossFn
from .step import TOKENS, live_teacher, step_loss
from .teacher_cache import TeacherCache


@dataclass
class KDContext:
    """What a KD stage needs besides the student: data, teacher access, on-policy settings."""

    encoded: list[Encoded]
    pad_id: int
    eos_id: int
    cache: TeacherCache | None = None  # exact teacher logits for ground-truth batches
    teacher: PreTrainedModel | None = None  # needed live for on-policy batches (or when no cache)
    on_policy_frac: float = 0.0  # GKD's lambda: share of batches with student-generated outputs
    max_new_tokens: int = 24
    beta: float | None = None
    precision: Precision | None = None  # None: `models.precision_for` the student's device (tests force the GPU's)
    grad_accum: int = 1  # the profile's micro-batches per step, as given to `loop.run_steps`


def kd_loss_fn(student: PreTrainedModel, ctx: KDContext, *, kind: str, tau: float, alpha: float,
               rng: np.random.Generator) -> LossFn:
    """A KD stage's step loss (a `loop.LossFn`): ground-truth batches against the cached teacher, or the live one when
    there is none; with probability `ctx.on_policy_frac` a step is on-policy (GKD): the student's own samples, scored
    by the live teacher, frozen (`models.freeze_teacher`).

    `kind`: a `losses.KINDS` divergence; None means CE only (SFT, SeqKD).
    `rng`: draws the on-policy choice and the sampling seeds (the same draws on every rank).
    Raises ValueError: on-policy steps with alpha > 0 under gradient accumulation (`ctx.grad_accum` > 1).
    """
    device = next(student.parameters()).device
    precision = ctx.precision or precision_for(device)
    if ctx.on_policy_frac > 0 and alpha > 0 and ctx.grad_accum > 1:
        raise ValueError(f"on-policy steps with alpha = {alpha} > 0 cannot be split into micro-batches "
                         f"(grad_accum={ctx.grad_accum}): their CE and KD terms average over different tokens; "
                         f"set grad_accum=1 or use alpha = 0 (POCL's and the baseline's GKD)")
    if ctx.teacher is not None:
        freeze_teacher(ctx.teacher, precision, cast=not distributed.is_sharded(ctx.teacher))  # FSDP keeps its dtypes
    teacher_rows = partial(live_teacher, ctx.teacher, precision=precision)

    drawn: dict[int, list] = {}  # step -> [sampling seed or None (off-policy), its samples once drawn]

    def loss_fn(idx: list[int], step: int, whole: list[int]):
        if step not in drawn:  # a step's micro-batches (`ctx.grad_accum`) share its draws and samples
            drawn.clear()
            on_policy = ctx.on_policy_frac > 0 and rng.random() < ctx.on_policy_frac
            drawn[step] = [int(rng.integers(2**31)) if on_policy else None, None]
        seed, outs = drawn[step]
        if seed is not None:
            if outs is None:
                outs = drawn[step][1] = student_generated(student, [ctx.encoded[i] for i in whole], ctx, seed=seed)
            return _on_policy_loss(student, ctx, idx, outs, kind=kind, tau=tau, alpha=alpha)
        batch = make_batch([ctx.encoded[i] for i in idx], ctx.pad_id).to(device)
        if kind is None:  # SFT / SeqKD: cross-entropy only, no teacher
            rows = None
        else:
            # tau: top-k rows carry the stage's tempered tail mass; exact rows ignore it (the loss tempers them)
            rows = ctx.cache.rows(idx, tau=tau) if ctx.cache is not None else teacher_rows(batch)
        return step_loss(student, batch, rows, kind=kind, tau=tau, alpha=alpha, beta=ctx.beta, precision=precision)

    return loss_fn


def _on_policy_loss(student: PreTrainedModel, ctx: KDContext, idx: list[int], outs: list[Encoded], *, kind: str,
                    tau: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """An on-policy step: alpha * CE(ground truth) + (1 - alpha) * tau^2 * D on the student's own samples.

    The divergence is taken on student-generated outputs (GKD's SGOs, `outs`, one per example of the global batch);
    the SFT term of Eq. 9 stays on the dataset's responses, as in DistiLLM's and GKD's code, since the student's
    samples are not targets to imitate. Every rank samples the WHOLE global batch with the run's seed and keeps its own
    rows (`distributed.shard`, which also picks a micro-batch's rows), so N processes draw the samples one process
    would. The two means are over different token counts, so under N processes the CE term is re-weighted here to its
    whole-batch token mean (`loop.run_steps` weighs the returned loss by the sampled tokens)."""
    device = next(student.parameters()).device
    mine = distributed.shard(range(len(outs)))
    batch = make_batch([outs[k] for k in mine or [0]], ctx.pad_id).to(device)  # as `loop._shard_loss` picks idx
    precision = ctx.precision or precision_for(device)
    teacher = live_teacher(ctx.teacher, batch, precision=precision)
    kd, parts = step_loss(student, batch, teacher, kind=kind, tau=tau, alpha=0.0, beta=ctx.beta, precision=precision)
    if alpha <= 0:
        return kd, parts
    truth = make_batch([ctx.encoded[i] for i in idx], ctx.pad_id).to(device)
    ce, ce_parts = step_loss(student, truth, None, kind=None, tau=1.0, alpha=1.0, precision=precision)
    n_kd, n_ce = (parts[TOKENS], ce_parts[TOKENS]) if mine else (0, 0)
    total_kd, total_ce = distributed.all_sum([n_kd, n_ce])
    ce_weight = (n_ce / total_ce) * (total_kd / n_kd) if n_kd else 1.0  # 1.0 with one process
    # the logged ce gets the same weight, so `loop.run_steps`' sampled-token average of it is the ground truth's token
    # mean
    return kd_loss(ce * ce_weight, kd, alpha), {**parts, "ce": ce_parts["ce"] * ce_weight}


@torch.no_grad()
def student_generated(student: PreTrainedModel, examples: list[Encoded], ctx: KDContext, *, seed: int) -> list[Encoded]:
    """The examples with the student's own samples (temperature 1) as responses: GKD's on-policy data (SGOs).

    `student`: the student model; its training flag is restored afterwards.
    Returns new Encoded examples: the same prompts, indices and metadata, the samples (closed by `data.close_response`)
    as responses.
    """
    from ..modeling.generate import generate
    was_training = student.training
    student.eval()
    outs = generate(student, [e.prompt_ids for e in examples], eos_id=ctx.eos_id, pad_id=ctx.pad_id,
                    max_new_tokens=ctx.max_new_tokens, do_sample=True, temperature=1.0, seed=seed,
                    batch_size=len(examples))
    student.train(was_training)
    return [Encoded(e.prompt_ids, close_response(o, ctx.max_new_tokens, ctx.eos_id), e.index, e.meta)
            for e, o in zip(examples, outs)]
