"""The grid on worker processes: every unfinished spec of a list run by `runner.execute` on a pool of one-thread
worker processes (finished runs skipped; stages checkpointed for resume), or, under `accelerate launch`, by all
launched processes together, one spec at a time.

May import `training.distributed`, `modeling.models` and `experiment`'s `config`, `experiments`, `workspace` and
`runner`; nothing of `analysis` or `notebook`.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..training import distributed
from .config import RunSpec
from .experiments import chosen_lrs, lr_candidates, with_chosen_lr
from .runner import KIND, execute, records_for, run_key
from .workspace import Workspace


_WS: Workspace | None = None


def _init_worker(profile, root: str, threads: int) -> None:
    global _WS
    torch.set_num_threads(threads)
    _WS = Workspace(profile, Path(root))


def _work(spec: RunSpec) -> tuple[RunSpec, dict | None]:
    return spec, execute(_WS, spec, _WS.device)


def run_grid(ws: Workspace, specs: list[RunSpec], *, workers: int | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every spec (skipping finished ones) on `workers` processes with one thread each; returns the records.

    Under `accelerate launch` the launched processes are the workers: they run one spec at a time together
    (`execute`), so `workers` is 1 and every rank walks the main rank's list of unfinished specs. On CUDA, or with one
    worker, the specs run one after the other in this process.

    `workers`: worker processes; None = the profile's `workers`. Never more than the runs left to do.
    `log`: called with one line per finished run and one summary line before.
    Returns the records of the finished runs among `specs`, in their order (runs still held by another process are
    missing).
    """
    todo = distributed.broadcast([s for s in specs if not ws.registry.done(KIND, run_key(ws, s))])
    workers = 1 if distributed.world_size() > 1 else min(workers or ws.profile.workers, max(1, len(todo)))
    on = f"{workers} worker(s)" if distributed.world_size() == 1 else f"{distributed.world_size()} processes together"
    log(f"[grid] {len(specs)} runs, {len(specs) - len(todo)} finished already, {len(todo)} to run on {on}")
    t0 = time.time()
    if workers <= 1 or ws.device.type != "cpu":
        for k, s in enumerate(todo):
            execute(ws, s, ws.device)
            log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(ws.profile, str(ws.root), 1)) as pool:
            for k, (s, _) in enumerate(pool.imap_unordered(_work, longest_first(todo))):
                log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    return [record for _, record in records_for(ws, specs)]


def longest_first(specs: list[RunSpec]) -> list[RunSpec]:
    """The specs with the on-policy (GKD) runs first, otherwise in their order: a GKD run samples and scores its own
    outputs with the live teacher, about 2.5x an off-policy run's time, so starting them first keeps the last workers
    from finishing far apart. The order changes no run's result (each run is seeded by its spec alone)."""
    return sorted(specs, key=lambda s: not s.on_policy)


def at_chosen_lrs(ws: Workspace, specs: list[RunSpec], *,
                  log: Callable[[str], None] = print) -> tuple[list[RunSpec], list[dict]]:
    """The grid at each arm's learning rate chosen on validation (issue 23; A.2.2 picks the lr "based on Rouge-L scores
    on the validation set" from {5e-4, 1e-4, 5e-5}): runs each arm's candidates (seed 0 at the protocol's lr times each
    of the profile's lr_factors, `experiments.lr_candidates`), then picks on their validation (`chosen_lrs`).

    `ws`: the prepared workspace; its profile's lr_factors () means no choice.
    Returns (the specs at their arm's chosen lr_scale, `experiments.chosen_lrs`' table); without lr_factors the specs
    unchanged and [].
    Raises ValueError: an arm without a finished candidate (all held by other processes), so without a choice.
    """
    factors = ws.profile.lr_factors
    if not factors:
        return specs, []
    candidates = lr_candidates(specs, factors)
    run_grid(ws, candidates, log=log)
    table = chosen_lrs(records_for(ws, candidates))
    return with_chosen_lr(specs, table), table
