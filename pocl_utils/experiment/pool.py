"""The grid on worker processes: every unfinished spec of a list run by `runner.execute` on a pool of one-thread
worker processes (finished runs skipped; stages checkpointed for resume), or, under `accelerate launch`, by all
launched processes together, one spec at a time.

May import `training.distributed`, `modeling.models` and `experiment`'s `config`, `workspace` and `runner`; nothing of
`analysis` or `notebook`.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..modeling.models import pick_device
from ..training import distributed
from .config import RunSpec
from .runner import KIND, execute, records_for, run_key
from .workspace import Workspace


_WS: Workspace | None = None


def _init_worker(profile, root: str, threads: int) -> None:
    global _WS
    torch.set_num_threads(threads)
    _WS = Workspace(profile, Path(root))


def _work(spec: RunSpec) -> tuple[RunSpec, dict | None]:
    return spec, execute(_WS, spec, pick_device())


def run_grid(ws: Workspace, specs: list[RunSpec], *, workers: int | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every spec (skipping finished ones) on `workers` processes with one thread each; returns the records.

    Under `accelerate launch` the launched processes are the workers: they run one spec at a time together
    (`execute`), so `workers` is 1 and every rank walks the main rank's list of unfinished specs. On CUDA, or with one
    worker, the specs run one after the other in this process.

    Args:
        ws: the prepared workspace.
        specs: the runs of the grid.
        workers: worker processes; None = the profile's `workers`. Never more than the runs left to do.
        log: called with one line per finished run and one summary line before.

    Returns:
        The records of the finished runs among `specs`, in their order (runs still held by another process are
        missing).
    """
    todo = distributed.broadcast([s for s in specs if not ws.registry.done(KIND, run_key(ws, s))])
    workers = 1 if distributed.world_size() > 1 else min(workers or ws.profile.workers, max(1, len(todo)))
    on = f"{workers} worker(s)" if distributed.world_size() == 1 else f"{distributed.world_size()} processes together"
    log(f"[grid] {len(specs)} runs, {len(specs) - len(todo)} finished already, {len(todo)} to run on {on}")
    t0 = time.time()
    if workers <= 1 or pick_device().type == "cuda":
        for k, s in enumerate(todo):
            execute(ws, s, distributed.device())
            log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(ws.profile, str(ws.root), 1)) as pool:
            for k, (s, _) in enumerate(pool.imap_unordered(_work, todo)):
                log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    return [record for _, record in records_for(ws, specs)]
