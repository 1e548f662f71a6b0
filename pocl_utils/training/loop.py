"""The optimisation loop: the optimizer and its schedule, `run_steps` (one process, or a data-parallel shard of each
step per process), the step budget, and SFT (cross-entropy on response tokens)."""
from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from . import distributed
from ..data import Encoded
from ..experiment.config import TrainSpec
from ..modeling.models import precision_for
from .batches import batch_stream, make_batch
from .step import TOKENS, step_loss


def optimizer_for(model: PreTrainedModel, spec: TrainSpec, steps: int, warmup: int | None = None):
    """AdamW + linear warm-up + cosine decay; a fresh one per stage, as the official POCL code restarts them.

    Fused AdamW (one kernel for all tensors) when every parameter is on a GPU. Elsewhere multi-tensor ("foreach")
    AdamW: on the CPU it makes the laptop student's KD step about 10% faster (fewer, larger kernels) than the plain loop
    and gives its results bitwise (tests/test_distributed.py checks that, so the committed results reproduce).

    `warmup`: the linear warm-up's steps; None = int(spec.warmup_frac * steps).
    Returns (optimizer, schedule).
    """
    on_gpu = all(p.device.type == "cuda" for p in model.parameters())
    kind = {"fused": True} if on_gpu else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, **kind)
    sched = get_cosine_schedule_with_warmup(opt, int(spec.warmup_frac * steps) if warmup is None else warmup, steps)
    return opt, sched


def apply_grads(model: PreTrainedModel, opt: torch.optim.Optimizer, spec: TrainSpec) -> None:
    """Clip the gradient norm to spec.grad_clip (if > 0; multi-tensor, as the optimizer) and take the optimizer step.
    """
    if spec.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip, foreach=True)
    opt.step()


# loss_fn(indices, step, batch): the loss of `indices`, this process's share of the global `batch` (the same list
# with one process), and its log row. Most losses need only `indices`; GKD samples the whole batch (`kd.kd_loss_fn`).
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
              log_every: int | None = None, optimizer: tuple | None = None,
              warmup: int | None = None, grad_accum: int = 1, compile: bool = False) -> list[dict[str, float]]:
    """`steps` optimizer steps of `loss_fn(indices, step, batch)`; stops on a NaN/inf loss.

    On several processes the model is first prepared (`distributed.prepare_model`: DDP or FSDP2); every rank draws the
    same global batch, computes its shard's loss (`_shard_loss`) and the backward sums the gradients before clipping,
    so the step equals one process's step on the whole batch to float rounding. With one process: bitwise the plain
    loop. With grad_accum=k each rank's slice runs as k micro-batches (`_accumulated_step`) whose token-loss
    gradients are summed, then divided by the step's token count.

    Log rows are read back (and the loss checked) every `log_every` steps: None = 1 on the CPU, so a bad loss stops
    the loop before its update; `LOG_EVERY_GPU` on a GPU (a bad loss stops it up to that many steps later, still
    before any checkpoint is saved). Between read-backs `on_step(step, row)` sees 0-d tensors.

    `optimizer`: an (optimizer, schedule) pair to continue; None = a fresh `optimizer_for(model, spec, steps, warmup)`.
    `warmup`: None = int(spec.warmup_frac * steps).
    `compile`: on several processes, compile each transformer block (the profile's engine setting).
    Returns the per-step log: one row of floats per step ("loss" and the loss function's parts).
    Raises FloatingPointError: a non-finite loss, naming the step.
    Raises ValueError: on several processes or with grad_accum > 1, a loss function that does not report `TOKENS`; a
    grad_accum below 1.
    """
    from tqdm.auto import tqdm
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"run_steps: grad_accum={grad_accum!r} must be a positive int, the micro-batches per step")
    device = next(model.parameters()).device
    precision = precision_for(device, compile)  # enables TF32 on a GPU; compiles on CUDA only
    distributed.prepare_model(model, compile=precision.compile)  # FSDP-sharded or DDP-wrapped when launched
    opt, sched = optimizer or optimizer_for(model, spec, steps, warmup)
    model.train()
    log: list[dict[str, float]] = []
    pending: list[dict] = []
    every = log_every or (LOG_EVERY_GPU if device.type == "cuda" else 1)
    for step in tqdm(range(steps), desc=desc, leave=False, disable=bar_disabled(), mininterval=2.0):
        opt.zero_grad(set_to_none=True)
        row = _backward(model, loss_fn, next(batches), step, grad_accum)
        pending.append(row)
        if len(pending) >= every:
            _read_back(pending, log, desc)  # a non-finite loss raises here, before the update
        apply_grads(model, opt, spec)
        sched.step()
        if on_step is not None:
            on_step(step, log[step] if len(log) > step else row)
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


def _backward(model: PreTrainedModel, loss_fn: LossFn, idx: list[int], step: int, micro: int) -> dict:
    """Forward and backward of one step's batch `idx` (launched: the backward also sums the gradients over the ranks,
    DDP's or FSDP's hooks); returns the step's log row."""
    if micro > 1:
        return _accumulated_step(model, loss_fn, idx, step, micro)
    if distributed.world_size() > 1:
        loss, row = _shard_loss(loss_fn, idx, step)
    else:  # one process: the loss of the whole batch
        loss, parts = loss_fn(idx, step, idx)
        parts.pop(TOKENS, None)
        row = {"loss": loss.detach(), **parts}
    loss.backward()
    return row


def _local_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict, float]:
    """The loss of this rank's slice of the step (`distributed.shard`: also a micro-batch's), its log row and its
    weight n, the slice's response tokens (`TOKENS`, taken out of the row)."""
    mine = distributed.shard(idx)
    # An empty slice (a batch smaller than the world, or than world x micro-batches) runs a stand-in example at weight
    # 0, so that every rank makes the same RNG draws (GKD's on-policy choice) and the same collective calls.
    loss, parts = loss_fn(mine or idx[:1], step, idx)
    if TOKENS not in parts:
        raise ValueError(f"run_steps: on {distributed.world_size()} processes or with grad_accum > 1 a loss "
                         f"function must report parts[{TOKENS!r}], the number of tokens its mean is over (as step_loss "
                         f"does)")
    counted = float(parts.pop(TOKENS))
    return loss, parts, counted if mine else 0.0  # the stand-in example weighs nothing


def _shard_loss(loss_fn: LossFn, idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of a multi-process step, and the step's global log row.

    share_r = mean_r * n_r / N = (sum of the shard's token losses) / N, with n_r the shard's response tokens and N the
    whole batch's: the shares sum to the 1-process token mean, and their gradients, summed by DDP or FSDP, to
    its gradient. (Averaging the ranks' means would weigh a token by 1 / n_r: wrong whenever the shards' counts differ.)
    The logged loss and parts are weighted the same way, so they are the whole batch's token means."""
    loss, parts, n = _local_loss(loss_fn, idx, step)
    names = list(parts)
    values = [float(loss.detach()), *(float(parts[k]) for k in names)]
    totals = distributed.all_sum([n] + [v * n if n else 0.0 for v in values])  # [N, sum loss, sum part...]
    return loss * (n / totals[0]), dict(zip(["loss", *names], [t / totals[0] for t in totals[1:]]))


def _accumulated_step(model: PreTrainedModel, loss_fn: LossFn, idx: list[int], step: int,
                      micro: int) -> dict[str, float]:
    """Backward of one step as `micro` micro-batches of this rank's slice; returns the step's global log row.

    Micro-batch m's gradient is that of its token-loss sum, mean_m * n_m; they add up in .grad (summed over the ranks
    at the last micro-batch only, `distributed.no_sync`), and the sum is divided by N, the whole step's tokens over
    every micro-batch and rank: the gradient of the step's token mean, as `_shard_loss` gives it in one go. An empty
    micro-batch runs a stand-in example at weight 0 (every rank makes the same calls)."""
    sums, names, n_total = None, None, 0.0
    for m in range(micro):
        with distributed.micro_batch(m, micro), distributed.no_sync(model, skip=m < micro - 1):
            loss, parts, n = _local_loss(loss_fn, idx, step)
            (loss * n).backward()
        names = names or list(parts)
        values = [loss.detach() * n, *(torch.as_tensor(parts[k], dtype=torch.float64) * n for k in names)]
        sums = values if sums is None else [a + b for a, b in zip(sums, values)]
        n_total += n
    totals = distributed.all_sum([n_total, *(float(v) for v in sums)])  # [N, sum loss, sum part...]
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(totals[0])
    return dict(zip(["loss", *names], [t / totals[0] for t in totals[1:]]))


def total_steps(n_examples: int, spec: TrainSpec) -> int:
    """Baseline budget: `epochs` passes over the full training set.

    Returns the number of optimizer steps, at least 1.
    """
    return max(1, math.ceil(spec.epochs * n_examples / spec.batch_size))


def sft(model: PreTrainedModel, encoded: list[Encoded], pad_id: int, spec: TrainSpec, *, seed: int = 0,
        steps: int | None = None, desc: str = "sft", grad_accum: int = 1,
        compile: bool = False) -> list[dict[str, float]]:
    """Supervised fine-tuning on (prompt, response) pairs: CE on response tokens.

    `steps`: optimizer steps; None = `total_steps(len(encoded), spec)`.
    grad_accum, compile: the profile's engine settings (`run_steps`; compile: on CUDA the step forward too).
    Returns the per-step log (`run_steps`).
    """
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    batches = batch_stream(np.arange(len(encoded)), encoded, spec.batch_size, rng, device)
    precision = precision_for(device, compile)

    def loss_fn(idx: list[int], step: int, batch: list[int]):
        return step_loss(model, make_batch([encoded[i] for i in idx], pad_id).to(device), None, kind=None, tau=1.0,
                         alpha=1.0, precision=precision)

    return run_steps(model, loss_fn, batches, steps or total_steps(len(encoded), spec), spec, desc=desc,
                     grad_accum=grad_accum, compile=compile)
