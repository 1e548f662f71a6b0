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

from . import distributed
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


# ---- the teacher-logit cache: exact, or top-k for large vocabularies ---------------------------------------------

LOGITS_BUDGET_BYTES = 256 * 2**20  # bytes of fp32 teacher logits [B, T, V] per cache batch (sizes the batch)
MAX_CACHE_BATCH = 64  # the batch cap: small vocabularies get the batches they always had (bitwise the same cache)
TOP_K_FILE_KEYS = ("top_logprobs", "token_ids", "log_rest", "vocab_size")


@dataclass
class TeacherCache:
    """Teacher outputs at the response-predicting positions of every training example, concatenated.

    Rows offsets[i]:offsets[i+1] belong to example i, in position order - the same order in which
    `hidden[labels != -100]` flattens a batch, so a batch's teacher rows are a concatenation of slices.

    Exact mode (`top_k == 0`): `logits` [R, V] fp32, the teacher logits themselves (4 V bytes per token).
    Top-k mode (k > 0; `logits` is None): `top_logprobs` [R, k] the k largest teacher log-probs at temperature 1
    (log-softmax values, descending), `token_ids` [R, k] their tokens, `log_rest` [R] log r with r = 1 - sum of the
    top-k probs, summed over the other tokens in log space (no cancellation, no underflow): 8 k + 4 bytes per token.

    `rows` rebuilds [n, V] log-probs p_hat with the remainder spread uniformly: p_hat_v = p_v on the top k, r / (V - k)
    elsewhere. At tau = 1 the top-k probs and the tail mass are exact; only the tail's shape is lost:
    KL(p || p_hat) = sum_tail p_v log(p_v (V - k) / r), non-increasing in k (a finer partition) and 0 at k = V.
    The losses re-temper what they get: softmax(log p_hat / tau) = p_hat^(1/tau) renormalised. Since x^(1/tau) is
    concave for tau > 1, a uniform tail maximises sum_tail p_v^(1/tau): at POCL's tau up to 2 the rebuilt teacher
    gives its tail more mass than the true tempered teacher (less for tau < 1), an error that grows with tau and r.
    """

    logits: torch.Tensor | None  # exact: [R, V] float32
    offsets: np.ndarray  # [N + 1]
    top_logprobs: torch.Tensor | None = None  # top-k: [R, k] float32 log p at tau = 1, descending
    token_ids: torch.Tensor | None = None  # top-k: [R, k] int32
    log_rest: torch.Tensor | None = None  # top-k: [R] float32 log(remainder mass); -inf when k = V
    vocab_size: int = 0  # V; read off `logits` in exact mode

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.top_logprobs is None):
            raise ValueError("TeacherCache: give either logits (exact) or top_logprobs/token_ids/log_rest (top-k)")
        if self.logits is not None:
            if self.logits.dim() != 2:
                raise ValueError(f"TeacherCache: logits must be [rows, V], got shape {tuple(self.logits.shape)}")
            self.vocab_size = int(self.logits.shape[1])
        else:
            _check_top_k_parts(self.top_logprobs, self.token_ids, self.log_rest, self.vocab_size)
        rows = (self.logits if self.logits is not None else self.top_logprobs).shape[0]
        off = np.asarray(self.offsets)
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
            raise ValueError(f"TeacherCache: offsets must rise from 0 to the {rows} rows (got {len(off)} offsets "
                             f"from {off[:1].tolist()} to {off[-1:].tolist()})")

    @property
    def top_k(self) -> int:
        """k of top-k mode; 0 = exact."""
        return 0 if self.top_logprobs is None else int(self.top_logprobs.shape[1])

    def bytes_per_token(self) -> float:
        parts = (self.logits,) if self.top_k == 0 else (self.top_logprobs, self.token_ids, self.log_rest)
        return sum(t.numel() * t.element_size() for t in parts) / max(int(self.offsets[-1]), 1)

    def rows(self, indices: list[int]) -> torch.Tensor:
        """[n, V] rows of these examples for `losses.divergence`: exact logits, or top-k's rebuilt log-probs (a
        log-softmax ignores the shift between logits and log-probs)."""
        spans = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        if self.top_k == 0:
            return torch.cat([self.logits[s] for s in spans])
        top, ids, rest = (torch.cat([t[s] for s in spans]) for t in (self.top_logprobs, self.token_ids, self.log_rest))
        return expand_top_k(top, ids, rest, self.vocab_size)

    def save(self, path: Path) -> None:
        tensors = {"offsets": torch.from_numpy(np.asarray(self.offsets, dtype=np.int64))}
        if self.top_k == 0:
            tensors["logits"] = self.logits.contiguous()
        else:
            tensors.update(top_logprobs=self.top_logprobs.contiguous(), token_ids=self.token_ids.contiguous(),
                           log_rest=self.log_rest.contiguous(), vocab_size=torch.tensor([self.vocab_size]))
        tmp = Path(path).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors import SafetensorError
        from .models import CheckpointError, checkpoint_error
        try:
            d = load_file(str(path))
        except SafetensorError as e:
            raise checkpoint_error(Path(path), e) from e
        try:
            if "logits" in d and "offsets" in d:
                return cls(d["logits"], d["offsets"].numpy())
            if "offsets" in d and all(k in d for k in TOP_K_FILE_KEYS):
                return cls(None, d["offsets"].numpy(), d["top_logprobs"], d["token_ids"], d["log_rest"],
                           int(d["vocab_size"].reshape(-1)[0]))
        except ValueError as e:
            raise CheckpointError(f"{path}: inconsistent teacher cache ({e}); delete it and re-run, which rebuilds it") from e
        raise CheckpointError(f"{path}: not a teacher cache: it holds tensors {sorted(d)}; expected 'logits' + 'offsets' "
                              f"(exact) or {', '.join(repr(k) for k in TOP_K_FILE_KEYS)} + 'offsets' (top-k)")


def _check_top_k_parts(top: torch.Tensor, ids: torch.Tensor | None, rest: torch.Tensor | None, vocab: int) -> None:
    """Shapes and ranges of top-k mode's tensors; raises ValueError naming the bad one."""
    if ids is None or rest is None or top.dim() != 2:
        raise ValueError("TeacherCache: top-k mode needs top_logprobs [R, k], token_ids [R, k] and log_rest [R]")
    if ids.shape != top.shape or rest.shape != top.shape[:1]:
        raise ValueError(f"TeacherCache: token_ids {tuple(ids.shape)} and log_rest {tuple(rest.shape)} do not match "
                         f"top_logprobs {tuple(top.shape)}")
    if not 1 <= top.shape[1] <= vocab:
        raise ValueError(f"TeacherCache: top-k needs 1 <= k <= vocab_size, got k = {top.shape[1]}, vocab_size = {vocab}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"TeacherCache: token_ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")


def compress_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits [n, V] -> (top-k log-probs [n, k] fp32 descending, their token ids [n, k] int32, log of the
    remaining mass [n]). The remainder is a log-sum-exp over the other tokens, not log(1 - sum top-k): the
    subtraction would cancel to 0 (then -inf) once the top k hold all but ~1e-7 of the mass."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
    top, ids = logp.topk(k, dim=-1)  # [n, k]
    log_rest = logp.scatter_(1, ids, float("-inf")).logsumexp(dim=-1)  # [n]; in place: logp is not needed again
    return top, ids.to(torch.int32), log_rest


def expand_top_k(top_logprobs: torch.Tensor, token_ids: torch.Tensor, log_rest: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, V] log-probs from top-k parts: log p_v on the k kept tokens, log(r / (V - k)) on each other token."""
    n, k = top_logprobs.shape
    fill = log_rest.float() - math.log(max(vocab_size - k, 1))  # [n]; unused when k = V (every column is kept)
    out = fill[:, None].expand(n, vocab_size).clone()  # [n, V]
    return out.scatter_(1, token_ids.long(), top_logprobs.float())


@torch.no_grad()
def teacher_logits(teacher: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Teacher logits at the batch's target positions, [N, V] float32, in flattened (b, t) order."""
    with autocast(batch.input_ids.device):
        out = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[batch.labels != -100].float()


def cache_batches(lengths: list[int], vocab_size: int, *, batch_size: int | None = None,
                  budget_bytes: int = LOGITS_BUDGET_BYTES, max_batch: int = MAX_CACHE_BATCH) -> list[list[int]]:
    """Length-sorted batches of example positions: `batch_size` each, or (None) as many as keep the teacher's fp32
    logits [B, T_max, V] within budget_bytes, at most max_batch (a single example may exceed the budget)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if batch_size is not None:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches: list[list[int]] = [[]]
    for i in order:  # ascending lengths: the example joining a batch sets its padded length
        full = len(batches[-1]) == max_batch or (len(batches[-1]) + 1) * lengths[i] * vocab_size * 4 > budget_bytes
        if batches[-1] and full:
            batches.append([])
        batches[-1].append(i)
    return batches if batches[0] else []


def build_teacher_cache(teacher: PreTrainedModel, encoded: list[Encoded], pad_id: int, *, batch_size: int | None = None,
                        top_k: int = 0, budget_bytes: int = LOGITS_BUDGET_BYTES) -> TeacherCache:
    """Run the teacher once over the training set (length-sorted batches, see `cache_batches`) and keep its response
    outputs: exact logits (top_k = 0, the default) or the top-k compression described in `TeacherCache`."""
    vocab = int(teacher.config.vocab_size)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise ValueError(f"build_teacher_cache: top_k={top_k!r} must be an int in [0, {vocab}] (0 = exact logits)")
    if not encoded:
        raise ValueError("build_teacher_cache: no examples to cache")
    device = next(teacher.parameters()).device
    teacher.eval()
    per_example: list[tuple[torch.Tensor, ...]] = [()] * len(encoded)
    for idx in cache_batches([e.length for e in encoded], vocab, batch_size=batch_size, budget_bytes=budget_bytes):
        rows = teacher_logits(teacher, make_batch([encoded[i] for i in idx], pad_id).to(device))  # [n, V]
        parts = compress_top_k(rows, top_k) if top_k else (rows,)  # compressed on the device, before the copy
        sizes = [len(encoded[i].response_ids) for i in idx]
        for i, *chunks in zip(idx, *(torch.split(t.cpu(), sizes) for t in parts)):
            per_example[i] = tuple(chunks)
    offsets = np.concatenate([[0], np.cumsum([len(e.response_ids) for e in encoded])]).astype(np.int64)
    cat = [torch.cat([ex[j] for ex in per_example]) for j in range(len(per_example[0]))]
    if not top_k:
        return TeacherCache(cat[0], offsets)
    return TeacherCache(None, offsets, top_logprobs=cat[0], token_ids=cat[1], log_rest=cat[2], vocab_size=vocab)


# ---- one step's loss ---------------------------------------------------------------------------------------------

TOKENS = "tokens"  # key of a loss's parts: the response tokens its mean is over (see `run_steps`)


def student_logits_at_targets(student: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Student logits only where a target exists: the LM head runs on [N, H] rows instead of [B*T, H]."""
    hidden = student.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return student.get_output_embeddings()(hidden[batch.labels != -100])  # [N, V]


def step_loss(student: PreTrainedModel, batch: Batch, teacher_rows: torch.Tensor | None, *, kind: str | None,
              tau: float, alpha: float, beta: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * CE + (1 - alpha) * tau^2 * D(p_tau || q_tau), the mean over the batch's response tokens (Eq. 1, 7-9).

    The parts also give `TOKENS`, the number of tokens averaged over, which `run_steps` needs to weigh the shards of a
    multi-process step (and drops from the log)."""
    targets = batch.labels[batch.labels != -100]  # [N]
    if targets.numel() == 0:  # the mean CE of zero tokens is 0/0 = NaN; no valid example can get here
        raise ValueError("step_loss: the batch has no response tokens (every label is -100); each example needs at "
                         "least one target token (check max_len against max_prompt_len)")
    logits = student_logits_at_targets(student, batch).float()  # [N, V]
    ce = F.cross_entropy(logits, targets)
    if teacher_rows is None or kind is None or alpha >= 1.0:
        return ce, {"ce": float(ce.detach()), TOKENS: targets.numel()}
    kd = divergence(logits[None], teacher_rows[None].to(logits.device), kind, temperature=tau, beta=beta)
    loss = alpha * ce + (1.0 - alpha) * kd if alpha > 0 else kd
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), TOKENS: targets.numel()}


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
    """`steps` optimizer steps of `loss_fn(batch_indices, step)`; returns the per-step log. Stops on a NaN/inf loss.

    Launched on several processes (`pocl_utils.distributed`), a step is DDP's: every rank draws the same global batch,
    computes the loss of its shard (`_shard_loss`), the gradients are summed over the ranks before clipping (so the
    clip sees the full gradient), and the logged values are the global ones. The step equals, to float rounding, one
    process's step on the whole batch. With one process the loop is the plain one, bitwise."""
    from tqdm.auto import tqdm
    opt, sched = optimizer_for(model, spec, steps)
    model.train()
    log: list[dict[str, float]] = []
    shared = distributed.world_size() > 1
    quiet = None if distributed.is_main() else True  # None: tqdm's default (no bar without a terminal)
    for step in tqdm(range(steps), desc=desc, leave=False, disable=quiet, mininterval=2.0):
        idx = next(batches)
        loss, parts = _shard_loss(loss_fn, idx, step) if shared else _whole_loss(loss_fn, idx, step)
        if not math.isfinite(parts["loss"]):  # the global value, so that every rank stops at the same step
            raise FloatingPointError(f"{desc}: non-finite loss {parts['loss']} at step {step}; stopping before any checkpoint is saved")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_grads(model.parameters())
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        sched.step()
        log.append(parts)
        if on_step is not None:
            on_step(step, parts)
    model.eval()
    return log


def _whole_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One process: the loss of the whole batch and its log row."""
    loss, parts = loss_fn(idx, step)
    parts.pop(TOKENS, None)
    return loss, {"loss": float(loss.detach()), **parts}


def _shard_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of a multi-process step, and the step's global log row.

    share_r = mean_r * n_r / N = (sum of the shard's token losses) / N, with n_r the shard's response tokens and N the
    whole batch's: the shares sum to the 1-process token mean, and their gradients, summed by `all_reduce_grads`, to
    its gradient. (Averaging the ranks' means would weigh a token by 1 / n_r: wrong whenever the shards' counts differ.)
    The logged loss and parts are weighted the same way, so they are the whole batch's token means."""
    mine = distributed.shard(idx)
    # A batch smaller than the world leaves this rank nothing: it runs a stand-in example at weight 0, so that every
    # rank makes the same RNG draws (GKD's on-policy choice) and the same collective calls.
    loss, parts = loss_fn(mine or idx[:1], step)
    if TOKENS not in parts:
        raise ValueError(f"run_steps: on {distributed.world_size()} processes a loss function must report "
                         f"parts[{TOKENS!r}], the number of tokens its mean is over (as step_loss does)")
    counted = float(parts.pop(TOKENS))
    n = counted if mine else 0.0  # the stand-in example weighs nothing
    names = list(parts)
    values = [float(loss.detach()), *(parts[k] for k in names)]
    totals = distributed.all_sum([n] + [v * n if n else 0.0 for v in values])  # [N, sum loss, sum part...]
    return loss * (n / totals[0]), dict(zip(["loss", *names], [t / totals[0] for t in totals[1:]]))


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
            # `rng` is the run's, so every rank draws the same seed at a given step; `rank_seed` then offsets it by
            # the rank, and each rank samples its own shard's outputs independently (the seed itself with 1 process)
            seed = distributed.rank_seed(int(rng.integers(2**31)))
            examples = student_generated(student, examples, ctx, seed=seed)
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
