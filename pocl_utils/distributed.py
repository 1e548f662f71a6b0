"""Process topology for data-parallel training under `accelerate launch`, in one place.

`accelerate launch` (torchrun underneath) starts N copies of the same program with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT set; `accelerate.PartialState` reads them and opens the process group (NCCL on GPUs, gloo
on CPU) and pins each process to its GPU. `train.run_steps` then does DDP by hand:

- every rank draws the same global batch (same seed, same RNG draws) and trains on `shard(indices)`, its slice;
- its loss is its shard's summed token loss divided by the GLOBAL number of response tokens (`all_sum`), so the
  ranks' losses add up to the 1-process token mean of the whole batch;
- `all_reduce_grads` sums the gradients, so every rank holds the 1-process gradient, clips it and takes the same
  optimizer step: the replicas stay identical without any weight broadcast.

With one process (WORLD_SIZE unset or 1) nothing is initialised, accelerate is not even imported, and every function
here returns the 1-process answer at once: the plain path runs exactly the code it ran before.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

import torch

# Main-rank-only phases (preparing the workspace, evaluating a run) can take hours on the paper profile while the other
# ranks wait at a barrier; a dead rank does not leave the others hanging that long, since torchrun then stops them all.
TIMEOUT = timedelta(hours=24)
BUCKET_NUMEL = 2**24  # gradient elements per all-reduce call: big calls amortise latency, the buffer stays <= 64 MB
_ENV_WORLD = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, then MPI launchers
_solo = False  # inside `main_first`: this process runs as a 1-process program (no collectives)


def launched() -> bool:
    """True when started as one of several processes (`accelerate launch` with num_processes > 1)."""
    return max(int(os.environ.get(k, "1")) for k in _ENV_WORLD) > 1


@lru_cache(maxsize=None)
def _state():
    """The process group, opened on first use (only when launched)."""
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)
    if state.num_processes <= 1:
        raise RuntimeError(f"pocl_utils.distributed: the environment says {os.environ.get('WORLD_SIZE')} processes but "
                           f"accelerate found none (distributed_type {state.distributed_type}); launch with "
                           f"`accelerate launch --config_file configs/accelerate/<config>.yaml`")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and state.is_main_process:
        warnings.warn("FSDP was requested, but pocl's training loop keeps a full model replica on every process and "
                      "all-reduces gradients (DDP semantics): memory is not sharded.", stacklevel=2)
    return state


def world_size() -> int:
    """Processes training together (1 when not launched, or inside `main_first`)."""
    return 1 if _solo or not launched() else _state().num_processes


def rank() -> int:
    return _state().process_index if launched() else 0


def is_main() -> bool:
    """The process that writes files (registry, checkpoints, results) and logs."""
    return rank() == 0


def device() -> torch.device:
    """This process's device: its own GPU when launched on GPUs, else what `models.pick_device` picks."""
    if not launched():
        from .models import pick_device
        return pick_device()
    dev = _state().device
    return torch.device("cpu") if dev.type == "cpu" else dev  # accelerate says cpu:0; the rest of pocl says cpu


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's contiguous slice of a global batch; slice sizes differ by at most one (earlier ranks get the extra
    example). A batch smaller than the world leaves some ranks with an empty slice; `train.run_steps` handles that."""
    n, world = len(indices), world_size()
    if world == 1:
        return list(indices)
    size, extra = divmod(n, world)
    start = rank() * size + min(rank(), extra)
    return list(indices[start:start + size + (rank() < extra)])


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few numbers over the ranks (float64, so token counts stay exact)."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device())  # [K]
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place, in flat buckets (a few calls instead of one per tensor).

    Parameters without a gradient are skipped; every rank runs the same graph, so they are the same on every rank."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    for g in grads + [None]:  # None flushes the last bucket
        if bucket and (g is None or sum(b.numel() for b in bucket) + g.numel() > BUCKET_NUMEL):
            flat = torch.cat([b.reshape(-1) for b in bucket])  # [sum numel]
            torch.distributed.all_reduce(flat)
            for b, part in zip(bucket, flat.split([b.numel() for b in bucket])):
                b.copy_(part.view_as(b))
            bucket = []
        if g is not None:
            bucket.append(g)


def barrier() -> None:
    if world_size() > 1:
        _state().wait_for_everyone()


def broadcast(obj: Any) -> Any:
    """The main rank's `obj` on every rank (any picklable value); the other ranks' arguments are ignored."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def rank_seed(seed: int) -> int:
    """A per-rank sampling seed: `seed` itself with one process (and on rank 0), `seed + rank * 0x9E3779B1` mod 2^31
    on the others, so ranks sharing a seed drawn from their common RNG still sample independently."""
    return seed if world_size() == 1 else (seed + rank() * 0x9E3779B1) % 2**31


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main rank first, as a 1-process program (no collectives inside), then on the others.

    For steps cached on disk (`pipeline.prepare`): the main rank builds them alone while the others wait at a
    barrier; the others then run the same block and find everything built. Without a launch it just runs the block."""
    global _solo
    if world_size() == 1:
        yield
        return
    if not is_main():
        barrier()
    _solo = True
    try:
        yield
    finally:
        _solo = False
    if is_main():
        barrier()


def close() -> None:
    """Wait for every rank, then close the process group (at the end of a launched program)."""
    if world_size() > 1:
        barrier()
        torch.distributed.destroy_process_group()
