"""The teacher cache: the teacher's logits for ground-truth (off-policy) batches never change, so they are computed
once per training set and cached, exactly or top-k compressed for large vocabularies (`TeacherCache`: the top-k
maths, the tempered tail's statistics, the file); `build_teacher_cache` runs the teacher once to fill it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..data import Encoded
from .batches import make_batch
from .step import teacher_logits


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

    `rows(indices, tau)` rebuilds [n, V] rows for the losses; how, and what the rebuild loses, is written
    above `tempered_log_tail`, beside the code that does it.
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
        """Bytes stored per cached token, over all of the mode's per-token tensors."""
        return sum(t.numel() * t.element_size() for t in self._parts()) / max(int(self.offsets[-1]), 1)

    def rows(self, indices: list[int], tau: float = 1.0) -> torch.Tensor:
        """[n, V] teacher rows of examples `indices` (concatenated in this order; n = their response tokens) for
        `losses.divergence` at KD temperature `tau`: exact mode gives the logits (tau unused), top-k mode gives z with
        softmax(z / tau) = p_hat_tau (see `tempered_log_tail`).

        Raises ValueError: (top-k mode) tau outside the cache's tail_taus.
        """
        spans = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices]
        if self.top_k == 0:
            return torch.cat([self.logits[s] for s in spans])
        top, ids, rest, mass, slope = (torch.cat([t[s] for s in spans]) for t in self._parts())
        log_tail = rest if tau == 1.0 else tempered_log_tail(self.tail_taus, mass, slope, tau)  # [n]
        return expand_top_k(top, ids, log_tail, self.vocab_size, tau=tau)

    def save(self, path: Path) -> None:
        """Write the cache as one safetensors file, atomically (a temp file, then renamed).

        `path`: the file, replaced if it exists.
        """
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
        """Read a cache written by `save`, exact or top-k.

        Raises CheckpointError: naming the file, when it is unreadable, inconsistent, not a teacher cache, or a top-k
        cache without the tempered tail statistics; deleting it and re-running rebuilds it.
        """
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
    """The fields of `TeacherCache`'s top-k mode from teacher logits [n, V], 1 <= k <= V: (top-k log-probs [n, k]
    fp32 descending, their token ids [n, k] int32, log of the remaining mass [n], log_tail_mass [n, G],
    tail_mean_logp [n, G]). The remainder is a log-sum-exp over the other tokens, not log(1 - sum top-k), which would
    cancel to 0 once the top k hold all but ~1e-7 of the mass.
    """
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


# Rebuilding top-k rows (`TeacherCache.rows`, `tempered_log_tail`, `expand_top_k`).
# The losses temper the rows they get (softmax(z / tau)), so the rows z must satisfy softmax(z / tau) = p_hat_tau, the
# target that keeps the exact tempered top k, p_v^s / Z, and the exact tempered tail mass, exp f(s) / Z, spread evenly
# over the V - k tail tokens (s = 1 / tau, Z = sum_K p_v^s + exp f(s), the true tempered normaliser). Up to a shift:
#     z_v = log p_v                          on K (the stored top-k log-probs, whatever tau)
#     z_v = tau * (f(1 / tau) - log(V - k))  on T
# At tau = 1, f(1) = log r: the tail gets r / (V - k), and KL(p || p_hat) = sum_T p_v log(p_v (V - k) / r) is the only
# loss of information, non-increasing in k and 0 at k = V.
# Why f is stored at several tau: rebuilding once at tau = 1 and letting the losses re-temper (p_hat^s renormalised)
# is wrong for tau > 1. x^s is concave, so a flat tail maximises sum_T p_v^s and the tail gets far too much mass
# (SmolLM2, k = 512: 3% of the mass at tau = 1, 55% tempered at tau = 2).
# Between grid points f is cubic-Hermite interpolated in s from f and f' at the two neighbours (f is the tail's
# log-partition function, smooth and convex in s; error ~ h^4 |f''''| / 384, measured <= 1e-4 on SmolLM2 rows); a tau
# outside the grid raises.
# What remains is the tail's shape: the rebuilt tempered tail is flat, so the FKL loss misses part of the teacher's
# entropy (constant w.r.t. the student), and the gradient errs where the student's mass sits in the tail.


def tempered_log_tail(tail_taus: tuple[float, ...], log_tail_mass: torch.Tensor, tail_mean_logp: torch.Tensor,
                      tau: float) -> torch.Tensor:
    """f(1 / tau) = log sum_tail p_v^(1/tau) per row, [n] float32 (-inf for an empty tail), from the grid statistics
    (`log_tail_mass` f and `tail_mean_logp` f' at the G ascending `tail_taus`, [n, G]).

    The stored value at a grid tau, else the cubic Hermite interpolant in s = 1/tau between the two neighbouring grid
    points:
        f(s) ~ h00(t) f_0 + h10(t) h f'_0 + h01(t) f_1 + h11(t) h f'_1,  h = s_1 - s_0,  t = (s - s_0) / h,
        h00 = 2t^3 - 3t^2 + 1, h10 = t^3 - 2t^2 + t, h01 = -2t^3 + 3t^2, h11 = t^3 - t^2.
    Raises ValueError: tau outside the grid.
    """
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
    """[n, V] float32 rows z with softmax(z / tau) = the top-k tempered teacher with a flat tail (the comment above).

        z_v = log p_v                          on the k kept tokens (`top_logprobs`, `token_ids` [n, k])
        z_v = tau * (log_tail - log(V - k))    on each other token
    where `log_tail` [n] is log sum_tail p_v^(1/tau) (`tempered_log_tail`; at tau = 1 the remainder log r).
    """
    n, k = top_logprobs.shape
    fill = tau * (log_tail.float() - math.log(max(vocab_size - k, 1)))  # [n]; unused when k = V (every column is kept)
    out = fill[:, None].expand(n, vocab_size).clone()  # [n, V]
    return out.scatter_(1, token_ids.long(), top_logprobs.float())


def cache_batches(lengths: list[int], vocab_size: int, *, batch_size: int | None = None,
                  budget_bytes: int = LOGITS_BUDGET_BYTES, max_batch: int = MAX_CACHE_BATCH) -> list[list[int]]:
    """Length-sorted batches of example positions, shortest first, for the teacher pass: `batch_size` examples, or
    (None) as many as keep the teacher's fp32 logits [B, T_max, V] within budget_bytes, at most max_batch (a single
    example may exceed the budget).
    """
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
    """Run the teacher once over the training set (length-sorted `cache_batches`) and keep its outputs at the response
    positions, rows in the order of `encoded`: exact logits (top_k = 0) or the top-k compression of `TeacherCache`,
    whose rows are then available at every KD temperature in [min(tail_taus), max(tail_taus)].

    Raises ValueError: top_k not an int in [0, V], bad tail_taus (top-k mode), or no examples.
    """
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
