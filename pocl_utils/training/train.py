"""Training: SFT, SeqKD, off-policy KD, on-policy GKD, and POCL's staged curriculum around any of them.

Loss of one step (paper Eq. 1 / Eq. 7): L = alpha * CE(y | x) + (1 - alpha) * tau^2 * D(p_tau || q_tau), computed on
response tokens only. The teacher's logits for ground-truth (off-policy) batches never change, so they are computed
once per training set and cached exactly (`TeacherCache`); only on-policy batches (GKD's student-generated outputs)
need the teacher live.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from . import distributed
from ..experiment.config import TrainSpec
from ..data import Encoded, close_response
from ..losses import divergence
from ..modeling.models import (FUSED_AT, LOGITS_AT, Precision, autocast, compiled_inputs, freeze_teacher,
                               fused_inputs, hidden_at_positions, logits_at_positions, precision_for)
from .objective import TeacherHidden, linear_objective

# ---- batches -----------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, T]
    # [B, T] aligned with logit positions: labels[b, t] = token t+1 if it is a response token, else -100
    labels: torch.Tensor
    positions: torch.Tensor | None = None  # [N] flat indices b * T + t of the targets, found on the CPU (no host sync)

    def to(self, device: torch.device) -> "Batch":
        """On `device`; to a GPU from pinned memory, so the copies are really asynchronous."""
        pin = torch.device(device).type == "cuda"
        moved = [None if t is None else (t.pin_memory() if pin and t.device.type == "cpu" else t).to(
            device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels, self.positions)]
        return Batch(*moved)

    def target_positions(self) -> torch.Tensor:
        """[N] flat indices of the targets (`positions`, or found from the labels: a host sync on a GPU)."""
        if self.positions is not None:
            return self.positions
        return (self.labels.reshape(-1) != -100).nonzero().squeeze(1)


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
    return Batch(ids, mask, labels, (labels.reshape(-1) != -100).nonzero().squeeze(1))


# ---- the teacher-logit cache: exact, or top-k for large vocabularies ---------------------------------------------

LOGITS_BUDGET_BYTES = 256 * 2**20  # bytes of fp32 teacher logits [B, T, V] per cache batch (sizes the batch)
MAX_CACHE_BATCH = 64  # the batch cap for small vocabularies, whose logits would allow larger batches
# KD temperatures at which top-k mode stores the exact tempered tail (see `TeacherCache`): 1, 7/6, ..., 2 holds every
# stage tau of POCL's default schedule (tau 1 -> 2 over n = 4 stages: 1, 4/3, 5/3, 2; also n = 2, 3, 7); other tau in
# [1, 2] are interpolated. 7 x 2 fp32 per token: 56 bytes, 1.4% of a k = 512 cache.
TAIL_TAUS = tuple(1.0 + j / 6 for j in range(7))
TOP_K_TENSORS = ("top_logprobs", "token_ids", "log_rest", "log_tail_mass", "tail_mean_logp")  # per-token, [R, ...]
# The file's keys; the first four are those of files written before the tail statistics (see `TeacherCache.load`).
TOP_K_FILE_KEYS = (*TOP_K_TENSORS[:3], "vocab_size", "tail_taus", *TOP_K_TENSORS[3:])


@dataclass
class TeacherCache:
    """Teacher outputs at the response-predicting positions of every training example, concatenated.

    Rows offsets[i]:offsets[i+1] belong to example i, in position order - the same order in which
    `hidden[labels != -100]` flattens a batch, so a batch's teacher rows are a concatenation of slices.

    Exact mode (`top_k == 0`): `logits` [R, V] fp32, the teacher logits themselves (4 V bytes per token).
    Top-k mode (k > 0; `logits` is None), per token, with p = softmax(teacher logits), K its k likeliest tokens and
    T the other V - k (the tail): `top_logprobs` [R, k] log p_v on K (descending), `token_ids` [R, k] K itself,
    `log_rest` [R] log r = log sum_T p_v, and for each tau_g of `tail_taus` (G of them, ascending), with s = 1 / tau:
        `log_tail_mass`  [R, G]  f(s) = log sum_T p_v^s           (the tail's mass once tempered, unnormalised)
        `tail_mean_logp` [R, G]  f'(s) = sum_T p_v^s log p_v / sum_T p_v^s   (its slope: the tail's mean log p)
    all computed in log space with max-shifted sums (no cancellation or underflow): 8 k + 4 + 8 G bytes per token.

    `rows(indices, tau)` rebuilds rows z [n, V] for the losses, which temper them themselves (softmax(z / tau)). The
    target p_hat_tau keeps the exact tempered top k, p_v^s / Z, and the exact tempered tail mass, exp f(s) / Z, spread
    evenly over the V - k tail tokens (Z = sum_K p_v^s + exp f(s), the true tempered normaliser). Solving
    softmax(z / tau) = p_hat_tau up to a constant shift:
        z_v = log p_v                         on K (the stored top-k log-probs, whatever tau)
        z_v = tau * (f(1 / tau) - log(V - k))  on T
    At tau = 1, f(1) = log r: the tail gets r / (V - k), and KL(p || p_hat) = sum_T p_v log(p_v (V - k) / r) is the only
    loss of information, non-increasing in k and 0 at k = V. Rebuilding once at tau = 1 and letting the losses re-temper
    (p_hat^s renormalised) would be wrong for tau > 1: x^s is concave, so a flat tail maximises sum_T p_v^s and the
    tail gets far too much mass (SmolLM2, k = 512: 3% of the mass at tau = 1, 55% tempered at tau = 2). Between grid
    points f is cubic-Hermite interpolated in s from f and f' at the two neighbours (f is the tail's log-partition
    function, smooth and convex in s; error ~ h^4 |f''''| / 384, measured <= 1e-4 on SmolLM2 rows); tau outside the
    grid raises. What remains is the tail's shape: the rebuilt tempered tail is flat, so the FKL loss misses part of
    the teacher's entropy (constant w.r.t. the student), and the gradient errs where the student's mass sits in the
    tail.
    """

    logits: torch.Tensor | None  # exact: [R, V] float32
    offsets: np.ndarray  # [N + 1]
    top_logprobs: torch.Tensor | None = None  # top-k: [R, k] float32 log p at tau = 1, descending
    token_ids: torch.Tensor | None = None  # top-k: [R, k] int32
    log_rest: torch.Tensor | None = None  # top-k: [R] float32 log(remainder mass); -inf when k = V
    vocab_size: int = 0  # V; read off `logits` in exact mode
    tail_taus: tuple[float, ...] = ()  # top-k: the G temperatures of the tail statistics, ascending
    log_tail_mass: torch.Tensor | None = None  # top-k: [R, G] float32 log sum_tail p^(1/tau); -inf when k = V
    tail_mean_logp: torch.Tensor | None = None  # top-k: [R, G] float32 d/ds of log_tail_mass (s = 1/tau); 0 when k = V

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.top_logprobs is None):
            raise ValueError("TeacherCache: give either logits (exact) or top_logprobs/token_ids/log_rest (top-k)")
        if self.logits is not None:
            if self.logits.dim() != 2:
                raise ValueError(f"TeacherCache: logits must be [rows, V], got shape {tuple(self.logits.shape)}")
            self.vocab_size = int(self.logits.shape[1])
        else:
            _check_top_k_parts(self.top_logprobs, self.token_ids, self.log_rest, self.vocab_size)
            self.tail_taus = _check_tail_parts(self.tail_taus, self.log_tail_mass, self.tail_mean_logp, self.log_rest)
        rows = (self.logits if self.logits is not None else self.top_logprobs).shape[0]
        off = np.asarray(self.offsets)
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != rows or np.any(np.diff(off) < 0):
            raise ValueError(f"TeacherCache: offsets must rise from 0 to the {rows} rows (got {len(off)} offsets "
                             f"from {off[:1].tolist()} to {off[-1:].tolist()})")

    @property
    def top_k(self) -> int:
        """k of top-k mode; 0 = exact."""
        return 0 if self.top_logprobs is None else int(self.top_logprobs.shape[1])

    def _parts(self) -> tuple[torch.Tensor, ...]:
        """The per-token tensors: (logits,) in exact mode, TOP_K_TENSORS' fields in top-k mode."""
        return (self.logits,) if self.top_k == 0 else tuple(getattr(self, name) for name in TOP_K_TENSORS)

    def bytes_per_token(self) -> float:
        return sum(t.numel() * t.element_size() for t in self._parts()) / max(int(self.offsets[-1]), 1)

    def rows(self, indices: list[int], tau: float = 1.0) -> torch.Tensor:
        """[n, V] rows of these examples for `losses.divergence` at KD temperature `tau`: exact mode gives the logits
        (tau unused: the losses temper them); top-k mode gives z with softmax(z / tau) = p_hat_tau (see the class)."""
        spans = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        if self.top_k == 0:
            return torch.cat([self.logits[s] for s in spans])
        top, ids, rest, mass, slope = (torch.cat([t[s] for s in spans]) for t in self._parts())
        log_tail = rest if tau == 1.0 else tempered_log_tail(self.tail_taus, mass, slope, tau)  # [n]
        return expand_top_k(top, ids, log_tail, self.vocab_size, tau=tau)

    def save(self, path: Path) -> None:
        tensors = {"offsets": torch.from_numpy(np.asarray(self.offsets, dtype=np.int64))}
        if self.top_k == 0:
            tensors["logits"] = self.logits.contiguous()
        else:
            tensors.update({name: getattr(self, name).contiguous() for name in TOP_K_TENSORS})
            tensors.update(vocab_size=torch.tensor([self.vocab_size]),
                           tail_taus=torch.tensor(self.tail_taus, dtype=torch.float64))  # float64: read back exactly
        tmp = Path(path).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors import SafetensorError
        from ..modeling.models import CheckpointError, checkpoint_error
        try:
            d = load_file(str(path))
        except SafetensorError as e:
            raise checkpoint_error(Path(path), e) from e
        try:
            if "logits" in d and "offsets" in d:
                return cls(d["logits"], d["offsets"].numpy())
            if "offsets" in d and all(k in d for k in TOP_K_FILE_KEYS):
                return cls(None, d["offsets"].numpy(), d["top_logprobs"], d["token_ids"], d["log_rest"],
                           int(d["vocab_size"].reshape(-1)[0]), tuple(d["tail_taus"].tolist()), d["log_tail_mass"],
                           d["tail_mean_logp"])
        except ValueError as e:
            raise CheckpointError(f"{path}: inconsistent teacher cache ({e}); delete it and re-run, which rebuilds "
                                  f"it") from e
        if "offsets" in d and all(k in d for k in TOP_K_FILE_KEYS[:4]):
            raise CheckpointError(f"{path}: top-k teacher cache written before the tempered tail statistics "
                                  f"({', '.join(TOP_K_FILE_KEYS[4:])}) were stored, so its rows are only right at "
                                  f"tau = 1; delete it and re-run, which rebuilds it")
        raise CheckpointError(f"{path}: not a teacher cache: it holds tensors {sorted(d)}; expected 'logits' + "
                              f"'offsets' (exact) or {', '.join(repr(k) for k in TOP_K_FILE_KEYS)} + 'offsets' (top-k)")


def _check_top_k_parts(top: torch.Tensor, ids: torch.Tensor | None, rest: torch.Tensor | None, vocab: int) -> None:
    """Shapes and ranges of top-k mode's tensors; raises ValueError naming the bad one."""
    if ids is None or rest is None or top.dim() != 2:
        raise ValueError("TeacherCache: top-k mode needs top_logprobs [R, k], token_ids [R, k] and log_rest [R]")
    if ids.shape != top.shape or rest.shape != top.shape[:1]:
        raise ValueError(f"TeacherCache: token_ids {tuple(ids.shape)} and log_rest {tuple(rest.shape)} do not match "
                         f"top_logprobs {tuple(top.shape)}")
    if not 1 <= top.shape[1] <= vocab:
        raise ValueError(f"TeacherCache: top-k needs 1 <= k <= vocab_size, got k = {top.shape[1]}, "
                         f"vocab_size = {vocab}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"TeacherCache: token_ids must lie in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")


def _check_tail_taus(taus) -> tuple[float, ...]:
    """The grid of temperatures of top-k mode's tail statistics, as a tuple of floats; raises ValueError if bad."""
    try:
        taus = tuple(float(t) for t in taus)
    except (TypeError, ValueError):
        raise ValueError(f"TeacherCache: tail_taus={taus!r} must be a sequence of temperatures") from None
    if not taus or not all(0.0 < t < math.inf for t in taus) or any(a >= b for a, b in zip(taus, taus[1:])):
        raise ValueError(f"TeacherCache: tail_taus={taus} must be non-empty, finite, > 0 and strictly ascending")
    return taus


def _check_tail_parts(taus, mass: torch.Tensor | None, slope: torch.Tensor | None,
                      rest: torch.Tensor) -> tuple[float, ...]:
    """The tail statistics of top-k mode: taus as a tuple of floats; raises ValueError naming the bad field."""
    if mass is None or slope is None:
        raise ValueError("TeacherCache: top-k mode needs tail_taus [G] with log_tail_mass and tail_mean_logp [R, G] "
                         "(see compress_top_k)")
    taus = _check_tail_taus(taus)
    if mass.shape != (rest.shape[0], len(taus)) or slope.shape != mass.shape:
        raise ValueError(f"TeacherCache: log_tail_mass {tuple(mass.shape)} and tail_mean_logp {tuple(slope.shape)} "
                         f"must be [rows, len(tail_taus)] = [{rest.shape[0]}, {len(taus)}]")
    return taus


def compress_top_k(logits: torch.Tensor, k: int, tail_taus: tuple[float, ...] = TAIL_TAUS) -> tuple[torch.Tensor, ...]:
    """Teacher logits [n, V] -> (top-k log-probs [n, k] fp32 descending, their token ids [n, k] int32, log of the
    remaining mass [n], log_tail_mass [n, G], tail_mean_logp [n, G]): the fields of `TeacherCache`'s top-k mode. The
    remainder is a log-sum-exp over the other tokens, not log(1 - sum top-k): the subtraction would cancel to 0 (then
    -inf) once the top k hold all but ~1e-7 of the mass."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
    top, ids = logp.topk(k, dim=-1)  # [n, k]
    tail = logp.scatter_(1, ids, float("-inf"))  # [n, V]; in place: logp is not needed again
    log_rest = tail.logsumexp(dim=-1)  # [n]
    return top, ids.to(torch.int32), log_rest, *_tail_moments(tail, tail_taus)


def _tail_moments(tail: torch.Tensor, taus: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """f(s) = log sum_v exp(s tail_v) and f'(s) = the exp(s tail)-weighted mean of tail, over the finite entries, at
    each s = 1 / tau: [n, G] each. tail: [n, V] log p with -inf off the tail. One max per row and one exp per tau (a
    logsumexp per tau would take two); an empty tail (k = V, or only -inf logits left) gives f = -inf, f' = 0."""
    top = tail.amax(dim=-1, keepdim=True)  # [n, 1]; the max of s * tail is s * top for s > 0
    shifted = tail - torch.where(torch.isinf(top), 0.0, top)  # [n, V] <= 0; -inf off the tail
    finite = torch.where(torch.isinf(tail), 0.0, tail)  # [n, V]; 0 * (-inf) would be NaN in the weighted mean
    mass, slope = [], []
    for tau in taus:
        e = torch.exp(shifted / tau)  # [n, V]; 0 off the tail
        total = e.sum(dim=-1)  # [n]; >= 1 unless the tail is empty
        mass.append(top[:, 0] / tau + total.log())
        slope.append(torch.where(total > 0, (e * finite).sum(dim=-1) / total, 0.0))
    return torch.stack(mass, 1), torch.stack(slope, 1)


def tempered_log_tail(tail_taus: tuple[float, ...], log_tail_mass: torch.Tensor, tail_mean_logp: torch.Tensor,
                      tau: float) -> torch.Tensor:
    """f(1 / tau) = log sum_tail p_v^(1/tau), [n], from the grid statistics [n, G] (see `TeacherCache`): the stored
    value at a grid tau, else the cubic Hermite interpolant in s = 1/tau between the two neighbouring grid points:
        f(s) ~ h00(t) f_0 + h10(t) h f'_0 + h01(t) f_1 + h11(t) h f'_1,  h = s_1 - s_0,  t = (s - s_0) / h,
        h00 = 2t^3 - 3t^2 + 1, h10 = t^3 - 2t^2 + t, h01 = -2t^3 + 3t^2, h11 = t^3 - t^2."""
    for g, grid_tau in enumerate(tail_taus):
        if math.isclose(tau, grid_tau, rel_tol=1e-9):  # schedule values like 1 + 2/3 match their grid point
            return log_tail_mass[:, g]
    if not tail_taus[0] < tau < tail_taus[-1]:
        raise ValueError(f"TeacherCache: tau = {tau} is outside the top-k cache's tail statistics, tau in "
                         f"[{tail_taus[0]:g}, {tail_taus[-1]:g}]; rebuild it with tail_taus covering {tau}")
    g = next(j for j in range(len(tail_taus)) if tail_taus[j + 1] > tau)  # tail_taus[g] < tau < tail_taus[g + 1]
    s0, s1 = 1.0 / tail_taus[g], 1.0 / tail_taus[g + 1]
    h, t = s1 - s0, (1.0 / tau - s0) / (s1 - s0)
    f0, f1 = log_tail_mass[:, g].double(), log_tail_mass[:, g + 1].double()  # [n]
    empty = torch.isinf(f0) | torch.isinf(f1)  # an empty tail is empty at every s: keep -inf, avoid inf - inf
    f0, f1 = torch.where(empty, 0.0, f0), torch.where(empty, 0.0, f1)
    f = ((2 * t**3 - 3 * t**2 + 1) * f0 + (t**3 - 2 * t**2 + t) * h * tail_mean_logp[:, g].double()
         + (-2 * t**3 + 3 * t**2) * f1 + (t**3 - t**2) * h * tail_mean_logp[:, g + 1].double())  # [n]
    return torch.where(empty, float("-inf"), f).float()


def expand_top_k(top_logprobs: torch.Tensor, token_ids: torch.Tensor, log_tail: torch.Tensor, vocab_size: int, *,
                 tau: float = 1.0) -> torch.Tensor:
    """[n, V] rows z with softmax(z / tau) = the top-k tempered teacher with a flat tail (see `TeacherCache`):
    z_v = log p_v on the k kept tokens, tau * (log_tail - log(V - k)) on each other token, where log_tail is
    log sum_tail p_v^(1/tau) (at tau = 1 the remainder log r, and z are log-probs: r / (V - k) per tail token)."""
    n, k = top_logprobs.shape
    fill = tau * (log_tail.float() - math.log(max(vocab_size - k, 1)))  # [n]; unused when k = V (every column is kept)
    out = fill[:, None].expand(n, vocab_size).clone()  # [n, V]
    return out.scatter_(1, token_ids.long(), top_logprobs.float())


@torch.no_grad()
def teacher_logits(teacher: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Teacher logits at the batch's target positions, [N, V] float32, in flattened (b, t) order: the LM head runs on
    those N rows only (never [B, T, V]); under bf16 autocast on a GPU."""
    logits_at = getattr(teacher, LOGITS_AT, None) or partial(logits_at_positions, teacher)  # a sharded model's own
    with autocast(batch.input_ids.device):
        return logits_at(batch.input_ids, batch.attention_mask, batch.target_positions()).float()


@torch.no_grad()
def teacher_hidden(teacher: PreTrainedModel, batch: Batch, precision: Precision) -> TeacherHidden:
    """The teacher's final hidden states at the batch's targets and its LM head, for the fused loss, which builds the
    teacher's logits one row chunk at a time (`objective.TeacherHidden`)."""
    with autocast(batch.input_ids.device, precision):
        hidden = hidden_at_positions(teacher, batch.input_ids, batch.attention_mask, batch.target_positions())
    hidden = _compute_dtype(hidden, precision)
    head = teacher.get_output_embeddings()
    return TeacherHidden(hidden, head.weight.detach(), None if head.bias is None else head.bias.detach())


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
                        top_k: int = 0, budget_bytes: int = LOGITS_BUDGET_BYTES,
                        tail_taus: tuple[float, ...] = TAIL_TAUS) -> TeacherCache:
    """Run the teacher once over the training set (length-sorted batches, see `cache_batches`) and keep its response
    outputs: exact logits (top_k = 0, the default) or the top-k compression described in `TeacherCache`, whose rows
    are then available at every KD temperature in [min(tail_taus), max(tail_taus)]."""
    vocab = int(teacher.config.vocab_size)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise ValueError(f"build_teacher_cache: top_k={top_k!r} must be an int in [0, {vocab}] (0 = exact logits)")
    if top_k:
        tail_taus = _check_tail_taus(tail_taus)  # fail before the teacher pass, not after it
    if not encoded:
        raise ValueError("build_teacher_cache: no examples to cache")
    device = next(teacher.parameters()).device
    teacher.eval()
    per_example: list[tuple[torch.Tensor, ...]] = [()] * len(encoded)
    for idx in cache_batches([e.length for e in encoded], vocab, batch_size=batch_size, budget_bytes=budget_bytes):
        rows = teacher_logits(teacher, make_batch([encoded[i] for i in idx], pad_id).to(device))  # [n, V]
        parts = compress_top_k(rows, top_k, tail_taus) if top_k else (rows,)  # compressed on the device, then copied
        sizes = [len(encoded[i].response_ids) for i in idx]
        for i, *chunks in zip(idx, *(torch.split(t.cpu(), sizes) for t in parts)):
            per_example[i] = tuple(chunks)
    offsets = np.concatenate([[0], np.cumsum([len(e.response_ids) for e in encoded])]).astype(np.int64)
    cat = [torch.cat([ex[j] for ex in per_example]) for j in range(len(per_example[0]))]
    if not top_k:
        return TeacherCache(cat[0], offsets)
    return TeacherCache(None, offsets, top_logprobs=cat[0], token_ids=cat[1], log_rest=cat[2], vocab_size=vocab,
                        tail_taus=tail_taus, log_tail_mass=cat[3], tail_mean_logp=cat[4])


# ---- one step's loss ---------------------------------------------------------------------------------------------

TOKENS = "tokens"  # key of a loss's parts: the response tokens its mean is over (see `run_steps`)


def student_logits_at_targets(student: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Student logits only where a target exists: the LM head runs on [N, H] rows instead of [B*T, H]."""
    logits_at = getattr(student, LOGITS_AT, None) or partial(logits_at_positions, student)  # a sharded model's own
    return logits_at(batch.input_ids, batch.attention_mask, batch.labels != -100)  # [N, V]


def step_loss(student: PreTrainedModel, batch: Batch, teacher_rows: torch.Tensor | TeacherHidden | None, *,
              kind: str | None, tau: float, alpha: float, beta: float | None = None,
              precision: Precision | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """alpha * CE + (1 - alpha) * tau^2 * D(p_tau || q_tau), the mean over the batch's response tokens (Eq. 1, 7-9).

    The parts also give `TOKENS`, the number of tokens averaged over, which `run_steps` needs to weigh the shards of a
    multi-process step (and drops from the log). `precision` (default `models.precision_for` the student's device)
    chooses the path: fp32 with whole [N, V] logits (the CPU's, bitwise as before), or the student's forward under
    autocast and the loss fused with the LM head in row chunks (`objective.linear_objective`; GPUs, and sharded
    models never). The fused path's parts are 0-d tensors, so that it makes no host sync."""
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
    loss = alpha * ce + (1.0 - alpha) * kd if alpha > 0 else kd
    return loss, {"ce": float(ce.detach()), "kd": float(kd.detach()), TOKENS: targets.numel()}


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


# ---- the optimisation loop ---------------------------------------------------------------------------------------


def epoch_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Endless stream of shuffled mini-batches, reshuffled every epoch."""
    while True:
        perm = rng.permutation(indices)
        for s in range(0, len(perm), batch_size):
            yield perm[s:s + batch_size].tolist()


GROUP_BATCHES = 16  # length grouping sorts windows of this many batches (HF's group_by_length uses 50)


def length_grouped_batches(indices: np.ndarray, lengths: list[int] | np.ndarray, batch_size: int,
                           rng: np.random.Generator, group: int = GROUP_BATCHES):
    """Endless stream of mini-batches of similar lengths (less padding): each epoch shuffles, sorts each window of
    `group` batches by length, cuts it into batches and shuffles the batches' order. Every example still appears once
    per epoch; a batch is no longer a uniform draw, as with HF Trainer's group_by_length."""
    lengths = np.asarray(lengths)
    while True:
        perm = rng.permutation(indices)
        out = []
        for w in range(0, len(perm), batch_size * group):
            window = perm[w:w + batch_size * group]
            window = window[np.argsort(lengths[window], kind="stable")]
            out += [window[s:s + batch_size].tolist() for s in range(0, len(window), batch_size)]
        for k in rng.permutation(len(out)):
            yield out[k]


def batch_stream(indices: np.ndarray, encoded: list[Encoded], batch_size: int, rng: np.random.Generator,
                 device: torch.device | str):
    """The training batches of `indices` (positions in `encoded`) on `device`: length-grouped on CUDA (less padding,
    `length_grouped_batches`); elsewhere uniform reshuffles (`epoch_batches`: the CPU's draws, bitwise unchanged)."""
    if torch.device(device).type == "cuda":
        return length_grouped_batches(indices, [e.length for e in encoded], batch_size, rng)
    return epoch_batches(indices, batch_size, rng)


def optimizer_for(model: PreTrainedModel, spec: TrainSpec, steps: int):
    """AdamW + linear warm-up + cosine decay; a fresh one per stage, as the official POCL code restarts them.

    Fused AdamW (one kernel for all tensors) when every parameter is on a GPU. Elsewhere multi-tensor ("foreach")
    AdamW: on the CPU it makes the laptop student's KD step about 10% faster (fewer, larger kernels) than the plain loop
    and gives its results bitwise (tests/test_distributed.py checks that, so earlier results still reproduce)."""
    on_gpu = all(p.device.type == "cuda" for p in model.parameters())
    kind = {"fused": True} if on_gpu else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, **kind)
    sched = get_cosine_schedule_with_warmup(opt, int(spec.warmup_frac * steps), steps)
    return opt, sched


def apply_grads(model: PreTrainedModel, opt: torch.optim.Optimizer, spec: TrainSpec) -> None:
    """Clip the gradient norm to spec.grad_clip (if > 0; multi-tensor, as the optimizer) and take the optimizer step."""
    if spec.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip, foreach=True)
    opt.step()


# loss_fn(indices, step, batch): the loss of `indices`, this process's share of the global `batch` (the same list
# with one process), and its log row. Most losses need only `indices`; GKD samples the whole batch (`kd_loss_fn`).
LossFn = Callable[[list[int], int, list[int]], tuple[torch.Tensor, dict[str, float]]]


def bar_disabled() -> bool | None:
    """tqdm's `disable` for training loops: off on non-main ranks; on in a Jupyter kernel (no terminal, but someone
    watching the notebook, e.g. through a long preparation step); else tqdm's default (a bar only on a terminal)."""
    if not distributed.is_main():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return False if shell is not None and hasattr(shell, "kernel") else None


LOG_EVERY_GPU = 16  # on a GPU the step's numbers are read back every this many steps (one host sync for all of them)


def run_steps(model: PreTrainedModel, loss_fn: LossFn, batches, steps: int, spec: TrainSpec, *,
              on_step: Callable[[int, dict[str, float]], None] | None = None, desc: str = "train",
              log_every: int | None = None, optimizer: tuple | None = None) -> list[dict[str, float]]:
    """`steps` optimizer steps of `loss_fn(indices, step, batch)`; returns the per-step log. Stops on a NaN/inf loss.

    Launched on several processes, the model is first prepared (`distributed.prepare_model`: DDP through accelerate,
    or FSDP2-sharded under an FSDP launch); every rank draws the same global batch, computes the loss of its shard
    (`_shard_loss`), the backward sums the gradients over the ranks before clipping (so the clip sees the full
    gradient), and the logged values are the global ones. The step equals, to float rounding, one process's step on
    the whole batch. With one process the loop is the plain one, bitwise.

    The log rows are read back (turned into floats, the loss checked for NaN/inf) every `log_every` steps: 1 by default
    on the CPU, where reading is free, so a bad loss stops the loop before its update; `LOG_EVERY_GPU` on a GPU, where
    each read waits for the device (a bad loss then stops the loop up to that many steps later, still before any
    checkpoint is saved). `on_step(step, row)` runs after every step's update; between read-backs its row's values
    are 0-d tensors. `optimizer`: an (optimizer, schedule) pair to continue (one schedule across several calls);
    default a fresh `optimizer_for(model, spec, steps)`."""
    from tqdm.auto import tqdm
    distributed.prepare_model(model)  # FSDP-sharded or DDP-wrapped when launched; else unchanged
    device = next(model.parameters()).device
    precision_for(device)  # enables TF32 on a GPU
    opt, sched = optimizer or optimizer_for(model, spec, steps)
    model.train()
    log: list[dict[str, float]] = []
    pending: list[dict] = []
    every = log_every or (LOG_EVERY_GPU if device.type == "cuda" else 1)
    shared = distributed.world_size() > 1
    for step in tqdm(range(steps), desc=desc, leave=False, disable=bar_disabled(), mininterval=2.0):
        idx = next(batches)
        loss, parts = _shard_loss(loss_fn, idx, step) if shared else _whole_loss(loss_fn, idx, step)
        pending.append(parts)
        if len(pending) >= every:
            _read_back(pending, log, desc)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # launched: the backward also sums the gradients over the ranks (DDP's or FSDP's hooks)
        apply_grads(model, opt, spec)
        sched.step()
        if on_step is not None:
            on_step(step, log[step] if len(log) > step else parts)
    _read_back(pending, log, desc)
    model.eval()
    return log


def _read_back(pending: list[dict], log: list[dict[str, float]], desc: str) -> None:
    """Turn the pending steps' log rows into floats (one host sync for all of their tensors), check each step's loss
    is finite and append them to `log`; empties `pending`."""
    tensors = [v for row in pending for v in row.values() if isinstance(v, torch.Tensor)]
    values = iter(torch.stack([t.double() for t in tensors]).tolist() if tensors else [])
    for row in pending:
        row = {k: next(values) if isinstance(v, torch.Tensor) else float(v) for k, v in row.items()}
        step = len(log)
        if not math.isfinite(row["loss"]):  # the global value, so that every rank stops at the same step
            raise FloatingPointError(f"{desc}: non-finite loss {row['loss']} at step {step}; stopping before any "
                                     f"checkpoint is saved")
        log.append(row)
    pending.clear()


def _whole_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One process: the loss of the whole batch and its log row."""
    loss, parts = loss_fn(idx, step, idx)
    parts.pop(TOKENS, None)
    return loss, {"loss": loss.detach(), **parts}


def _shard_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of a multi-process step, and the step's global log row.

    share_r = mean_r * n_r / N = (sum of the shard's token losses) / N, with n_r the shard's response tokens and N the
    whole batch's: the shares sum to the 1-process token mean, and their gradients, summed by DDP or FSDP, to
    its gradient. (Averaging the ranks' means would weigh a token by 1 / n_r: wrong whenever the shards' counts differ.)
    The logged loss and parts are weighted the same way, so they are the whole batch's token means."""
    mine = distributed.shard(idx)
    # A batch smaller than the world leaves this rank nothing: it runs a stand-in example at weight 0, so that every
    # rank makes the same RNG draws (GKD's on-policy choice) and the same collective calls.
    loss, parts = loss_fn(mine or idx[:1], step, idx)
    if TOKENS not in parts:
        raise ValueError(f"run_steps: on {distributed.world_size()} processes a loss function must report "
                         f"parts[{TOKENS!r}], the number of tokens its mean is over (as step_loss does)")
    counted = float(parts.pop(TOKENS))
    n = counted if mine else 0.0  # the stand-in example weighs nothing
    names = list(parts)
    values = [float(loss.detach()), *(float(parts[k]) for k in names)]
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
    batches = batch_stream(np.arange(len(encoded)), encoded, spec.batch_size, rng, device)

    def loss_fn(idx: list[int], step: int, batch: list[int]):
        return step_loss(model, make_batch([encoded[i] for i in idx], pad_id).to(device), None, kind=None, tau=1.0,
                         alpha=1.0)

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
    precision: Precision | None = None  # None: `models.precision_for` the student's device (tests force the GPU's)


def kd_loss_fn(student: PreTrainedModel, ctx: KDContext, *, kind: str, tau: float, alpha: float,
               rng: np.random.Generator) -> LossFn:
    """The loss of one KD step: ground-truth batches use the cached teacher; on-policy ones generate then ask the
    teacher.

    The live teacher is frozen (`models.freeze_teacher`: no gradients; stored in bf16 on a GPU)."""
    device = next(student.parameters()).device
    precision = ctx.precision or precision_for(device)
    if ctx.teacher is not None:
        freeze_teacher(ctx.teacher, precision)
    teacher_rows = partial(_live_teacher, ctx.teacher, precision=precision)

    def loss_fn(idx: list[int], step: int, whole: list[int]):
        if ctx.on_policy_frac > 0 and rng.random() < ctx.on_policy_frac:
            return _on_policy_loss(student, ctx, idx, whole, kind=kind, tau=tau, alpha=alpha,
                                   seed=int(rng.integers(2**31)))
        batch = make_batch([ctx.encoded[i] for i in idx], ctx.pad_id).to(device)
        if kind is None:  # SFT / SeqKD: cross-entropy only, no teacher
            rows = None
        else:
            # tau: top-k rows carry the stage's tempered tail mass; exact rows ignore it (the loss tempers them)
            rows = ctx.cache.rows(idx, tau=tau) if ctx.cache is not None else teacher_rows(batch)
        return step_loss(student, batch, rows, kind=kind, tau=tau, alpha=alpha, beta=ctx.beta, precision=precision)

    return loss_fn


def _on_policy_loss(student: PreTrainedModel, ctx: KDContext, idx: list[int], whole: list[int], *, kind: str,
                    tau: float, alpha: float, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """An on-policy step: alpha * CE(ground truth) + (1 - alpha) * tau^2 * D on the student's own samples.

    The divergence is taken on student-generated outputs (GKD's SGOs); the SFT term of Eq. 9 stays on the dataset's
    responses, as in DistiLLM's and GKD's code, since the student's samples are not targets to imitate. Every rank
    samples the WHOLE global batch with the run's seed and keeps its own rows, so N processes draw the samples one
    process would. The two means are over different token counts, so under N processes the CE term is re-weighted
    here to its whole-batch token mean (`run_steps` weighs the returned loss by the sampled tokens)."""
    device = next(student.parameters()).device
    outs = student_generated(student, [ctx.encoded[i] for i in whole], ctx, seed=seed)
    mine = distributed.shard(range(len(whole)))
    batch = make_batch([outs[k] for k in mine or [0]], ctx.pad_id).to(device)  # as `_shard_loss` picks idx
    precision = ctx.precision or precision_for(device)
    teacher = _live_teacher(ctx.teacher, batch, precision=precision)
    kd, parts = step_loss(student, batch, teacher, kind=kind, tau=tau, alpha=0.0, beta=ctx.beta, precision=precision)
    if alpha <= 0:
        return kd, parts
    truth = make_batch([ctx.encoded[i] for i in idx], ctx.pad_id).to(device)
    ce, ce_parts = step_loss(student, truth, None, kind=None, tau=1.0, alpha=1.0, precision=precision)
    n_kd, n_ce = (parts[TOKENS], ce_parts[TOKENS]) if mine else (0, 0)
    total_kd, total_ce = distributed.all_sum([n_kd, n_ce])
    ce_weight = (n_ce / total_ce) * (total_kd / n_kd) if n_kd else 1.0  # 1.0 with one process
    # the logged ce gets the same weight, so `run_steps`' sampled-token average of it is the ground truth's token mean
    return (1.0 - alpha) * kd + alpha * ce_weight * ce, {**parts, "ce": ce_parts["ce"] * ce_weight}


def _live_teacher(teacher: PreTrainedModel, batch: Batch, *, precision: Precision) -> torch.Tensor | TeacherHidden:
    """The live teacher's output for `step_loss`: hidden states + LM head for the fused loss (no [N, V] logits),
    else its logits at the targets."""
    if precision.fused_loss and _fusable(teacher):
        return teacher_hidden(teacher, batch, precision)
    return teacher_logits(teacher, batch)


@torch.no_grad()
def student_generated(student: PreTrainedModel, examples: list[Encoded], ctx: KDContext, *, seed: int) -> list[Encoded]:
    """Replace responses by the student's own samples (temperature 1), as GKD's on-policy data (SGOs)."""
    from ..modeling.generate import generate
    was_training = student.training
    student.eval()
    outs = generate(student, [e.prompt_ids for e in examples], eos_id=ctx.eos_id, pad_id=ctx.pad_id,
                    max_new_tokens=ctx.max_new_tokens, do_sample=True, temperature=1.0, seed=seed,
                    batch_size=len(examples))
    student.train(was_training)
    return [Encoded(e.prompt_ids, close_response(o, ctx.max_new_tokens, ctx.eos_id), e.index, e.meta)
            for e, o in zip(examples, outs)]
