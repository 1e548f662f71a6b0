"""Training: SFT, SeqKD, off-policy KD, on-policy GKD, and POCL's staged curriculum around any of them.

Loss of one step (paper Eq. 1 / Eq. 7): L = alpha * CE(y | x) + (1 - alpha) * tau^2 * D(p_tau || q_tau), computed on
response tokens only. The teacher's logits for ground-truth (off-policy) batches never change, so they are computed
once per training set and cached exactly (`TeacherCache`); only on-policy batches (GKD's student-generated outputs)
need the teacher live.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from .config import TrainSpec
from .data import Encoded
from .losses import divergence
from .models import autocast

# ---- batches -----------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T] aligned with logit positions: labels[b, t] = token t+1 if it is a response token, else -100

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels)))


def make_batch(examples: list[Encoded], pad_id: int) -> Batch:
    """Right-pad prompt+response sequences; only response tokens (incl. EOS) are targets."""
    T = max(e.length for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for b, e in enumerate(examples):
        seq = e.prompt_ids + e.response_ids
        P, L = len(e.prompt_ids), len(seq)
        ids[b, :L] = torch.tensor(seq)
        mask[b, :L] = 1
        labels[b, P - 1:L - 1] = torch.tensor(e.response_ids)  # position t predicts token t+1
    return Batch(ids, mask, labels)


# ---- the exact teacher-logit cache -------------------------------------------------------------------------------


@dataclass
class TeacherCache:
    """Teacher logits at the response-predicting positions of every training example, concatenated.

    Rows offsets[i]:offsets[i+1] belong to example i, in position order - the same order in which
    `hidden[labels != -100]` flattens a batch, so a batch's teacher rows are a concatenation of slices.
    """

    logits: torch.Tensor  # [total_response_tokens, V] float32
    offsets: np.ndarray  # [N + 1]

    def rows(self, indices: list[int]) -> torch.Tensor:
        return torch.cat([self.logits[self.offsets[i]:self.offsets[i + 1]] for i in indices])

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        save_file({"logits": self.logits.contiguous(), "offsets": torch.from_numpy(self.offsets)}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors import SafetensorError
        try:
            d = load_file(str(path))
        except SafetensorError as e:
            from .models import checkpoint_error
            raise checkpoint_error(Path(path), e) from e
        return cls(d["logits"], d["offsets"].numpy())


@torch.no_grad()
def teacher_logits(teacher: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Teacher logits at the batch's target positions, [N, V] float32, in flattened (b, t) order."""
    with autocast(batch.input_ids.device):
        out = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[batch.labels != -100].float()


def build_teacher_cache(teacher: PreTrainedModel, encoded: list[Encoded], pad_id: int, *, batch_size: int = 64) -> TeacherCache:
    """Run the teacher once over the training set (length-sorted batches) and keep its response logits."""
    device = next(teacher.parameters()).device
    teacher.eval()
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    per_example: list[torch.Tensor | None] = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = teacher_logits(teacher, make_batch([encoded[i] for i in idx], pad_id).to(device)).cpu()
        sizes = [len(encoded[i].response_ids) for i in idx]
        for i, chunk in zip(idx, torch.split(rows, sizes)):
            per_example[i] = chunk
    offsets = np.concatenate([[0], np.cumsum([len(e.response_ids) for e in encoded])]).astype(np.int64)
    return TeacherCache(torch.cat(per_example), offsets)  # type: ignore[arg-type]


# ---- one step's loss ---------------------------------------------------------------------------------------------


def student_logits_at_targets(student: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Student logits only where a target exists: the LM head runs on [N, H] rows instead of [B*T, H]."""
    hidden = student.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return student.get_output_embeddings()(hidden[batch.labels != -100])  # [N, V]


def step_loss(student: PreTrainedModel, batch: Batch, teacher_rows: torch.Tensor | None, *, kind: str | None,
              tau: float, alpha: float, beta: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * CE + (1 - alpha) * tau^2 * D(p_tau || q_tau) over the batch's response tokens (Eq. 1, 7-9)."""
    targets = batch.labels[batch.labels != -100]  # [N]
    if targets.numel() == 0:  # the mean CE of zero tokens is 0/0 = NaN; no valid example can get here
        raise ValueError("step_loss: the batch has no response tokens (every label is -100); each example needs at "
                         "least one target token (check max_len against max_prompt_len)")
    logits = student_logits_at_targets(student, batch).float()  # [N, V]
    ce = F.cross_entropy(logits, targets)
    if teacher_rows is None or kind is None or alpha >= 1.0:
        return ce, {"ce": float(ce.detach())}
    kd = divergence(logits[None], teacher_rows[None].to(logits.device), kind, temperature=tau, beta=beta)
    loss = alpha * ce + (1.0 - alpha) * kd if alpha > 0 else kd
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach())}


# ---- the optimisation loop ---------------------------------------------------------------------------------------


def epoch_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Endless stream of shuffled mini-batches, reshuffled every epoch."""
    while True:
        perm = rng.permutation(indices)
        for s in range(0, len(perm), batch_size):
            yield perm[s:s + batch_size].tolist()


def optimizer_for(model: PreTrainedModel, spec: TrainSpec, steps: int):
    """AdamW + linear warm-up + cosine decay; a fresh one per stage, as the official POCL code restarts them."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(spec.warmup_frac * steps), steps)
    return opt, sched


LossFn = Callable[[list[int], int], tuple[torch.Tensor, dict[str, float]]]


def run_steps(model: PreTrainedModel, loss_fn: LossFn, batches, steps: int, spec: TrainSpec, *,
              on_step: Callable[[int, dict[str, float]], None] | None = None, desc: str = "train") -> list[dict[str, float]]:
    """`steps` optimizer steps of `loss_fn(batch_indices, step)`; returns the per-step log. Stops on a NaN/inf loss."""
    from tqdm.auto import tqdm
    opt, sched = optimizer_for(model, spec, steps)
    model.train()
    log: list[dict[str, float]] = []
    for step in tqdm(range(steps), desc=desc, leave=False, disable=None, mininterval=2.0):
        loss, parts = loss_fn(next(batches), step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at step {step}; stopping before any checkpoint is saved")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        sched.step()
        parts = {"loss": float(loss.detach()), **parts}
        log.append(parts)
        if on_step is not None:
            on_step(step, parts)
    model.eval()
    return log


def total_steps(n_examples: int, spec: TrainSpec) -> int:
    """Baseline budget: `epochs` passes over the full training set."""
    return max(1, math.ceil(spec.epochs * n_examples / spec.batch_size))


def sft(model: PreTrainedModel, encoded: list[Encoded], pad_id: int, spec: TrainSpec, *, seed: int = 0,
        steps: int | None = None, desc: str = "sft") -> list[dict[str, float]]:
    """Supervised fine-tuning on (prompt, response) pairs: CE on response tokens."""
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    batches = epoch_batches(np.arange(len(encoded)), spec.batch_size, rng)

    def loss_fn(idx: list[int], step: int):
        return step_loss(model, make_batch([encoded[i] for i in idx], pad_id).to(device), None, kind=None, tau=1.0, alpha=1.0)

    return run_steps(model, loss_fn, batches, steps or total_steps(len(encoded), spec), spec, desc=desc)


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


def kd_loss_fn(student: PreTrainedModel, ctx: KDContext, *, kind: str, tau: float, alpha: float,
               rng: np.random.Generator) -> LossFn:
    """The loss of one KD step: ground-truth batches use the cached teacher; on-policy ones generate then ask the teacher."""
    device = next(student.parameters()).device

    def loss_fn(idx: list[int], step: int):
        examples = [ctx.encoded[i] for i in idx]
        if ctx.on_policy_frac > 0 and rng.random() < ctx.on_policy_frac:
            examples = student_generated(student, examples, ctx, seed=int(rng.integers(2**31)))
            batch = make_batch(examples, ctx.pad_id).to(device)
            rows = teacher_logits(ctx.teacher, batch)
        else:
            batch = make_batch(examples, ctx.pad_id).to(device)
            if kind is None:  # SFT / SeqKD: cross-entropy only, no teacher
                rows = None
            else:
                rows = ctx.cache.rows(idx) if ctx.cache is not None else teacher_logits(ctx.teacher, batch)
        return step_loss(student, batch, rows, kind=kind, tau=tau, alpha=alpha, beta=ctx.beta)

    return loss_fn


@torch.no_grad()
def student_generated(student: PreTrainedModel, examples: list[Encoded], ctx: KDContext, *, seed: int) -> list[Encoded]:
    """Replace responses by the student's own samples (temperature 1), as GKD's on-policy data (SGOs)."""
    from .generate import generate
    was_training = student.training
    student.eval()
    outs = generate(student, [e.prompt_ids for e in examples], eos_id=ctx.eos_id, pad_id=ctx.pad_id,
                    max_new_tokens=ctx.max_new_tokens, do_sample=True, temperature=1.0, seed=seed,
                    batch_size=len(examples))
    student.train(was_training)
    return [Encoded(e.prompt_ids, list(o) + ([ctx.eos_id] if len(o) < ctx.max_new_tokens else []) or [ctx.eos_id],
                    e.index, e.meta) for e, o in zip(examples, outs)]
