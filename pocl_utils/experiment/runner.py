"""One KD run of the grid (baseline or +POCL) from claim to record: its registry key (the spec, everything upstream
and the device's precision policy), the claim that makes one process (or one launch) its only trainer, its training
(`training_run`), its scores (`scoring`) and its record; and the records of the finished runs among a list of specs.

May import the method's modules, `modeling`, `training` and `experiment`'s `config`, `workspace`, `results`,
`provenance`, `training_run` and `scoring`; nothing of `analysis` or `notebook`.
"""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

from ..training import distributed
from .config import RunSpec, config_hash, protocol_key
from .provenance import environment, precision
from .scoring import eval_key, scores, selection_values
from .training_run import remove_checkpoints, train_run
from .workspace import Workspace

KIND = "runs"


def run_key(ws: Workspace, spec: RunSpec, device: torch.device | None = None) -> str:
    """Registry key (16 hex digits, `config_hash`): the run spec plus everything upstream it depends on (teacher,
    student, data, budget, eval, `config.protocol_key`) and the precision policy of the device it runs on (None = the
    workspace's) and of the prepared steps, so a bf16 CUDA run and an fp32 CPU run never stand in for each other.
    """
    p = ws.profile
    upstream = ws.step_keys()
    return config_hash({"spec": spec.key(), "kd": asdict(p.kd), "teacher": upstream["teacher_cache"],
                        "student": upstream["ranking"], "seqkd": upstream["seqkd"], "eval": eval_key(p),
                        "gkd_lambda": p.gkd_lambda, "valid": [p.valid_max_examples, p.valid_checks],
                        "precision": precision(device or ws.device, p.compile),
                        "built_with": ws.built_with(), **protocol_key(p)})


def execute(ws: Workspace, spec: RunSpec, device: torch.device | None = None) -> dict[str, Any] | None:
    """Run `spec` unless finished; returns its record, or None if another process holds its claim.

    Under `accelerate launch` every rank calls this for the same spec and they train the run together (data parallel,
    `loop.run_steps`). Only the main rank reads and claims the registry entry (`_claim` hands its answer to the others),
    checkpoints, evaluates and writes the record; the others train in a private folder (`_train_dir`), then wait at a
    barrier until the record exists, and return it too. All ranks must see one file system (one machine, or a shared
    disk across machines).

    The run trains (`training_run.train_run`, resuming at its last finished stage), its best checkpoint by validation
    score is evaluated (`scoring.scores`), and its stage checkpoints are removed once the record is written.

    `device`: the device to train and evaluate on; None = the workspace's (`Workspace.device`).
    Returns the run's registry record (config, metrics with "eval", "greedy" and "train", provenance), or None when
    another live process holds the run's claim.
    """
    device = device if device is not None else ws.device
    reg, key = ws.registry, run_key(ws, spec, device)
    with _claim(reg, key) as status:
        if status != "mine":
            return reg.load(KIND, key) if status == "done" else None
        t0 = time.time()
        run_dir = _train_dir(reg, key)
        state = train_run(ws, spec, run_dir, device, lambda m: selection_values(ws, m))
        if not distributed.is_main():
            shutil.rmtree(run_dir)
            distributed.barrier()  # while the main rank evaluates and writes the record
            return reg.load(KIND, key)
        student = ws.load_student_init(device)
        distributed.load_weights(student, run_dir / "best.safetensors")
        metrics = {**scores(ws, student), "train": state}
        config = {"spec": spec.key(), "label": spec.label, "method": spec.method, "variant": spec.variant,
                  "profile": ws.profile.name, "run_key": key,
                  **environment(device, ws.profile.grad_accum, ws.profile.compile)}
        record = reg.save(KIND, key, config, metrics, time.time() - t0)
        remove_checkpoints(run_dir)
        distributed.barrier()
        return record


@contextmanager
def _claim(reg, key: str) -> Iterator[str]:
    """The run's status, held for the block: "done", "taken" (another live process holds its claim) or "mine"
    (claimed by this process until the block ends). When launched, the main rank decides and the others follow."""
    if not distributed.is_main():
        yield distributed.broadcast(None)
    elif reg.done(KIND, key):
        yield distributed.broadcast("done")
    else:
        with reg.claim(KIND, key) as mine:
            # a run can be finished by another process between the check above and the claim
            yield distributed.broadcast("taken" if not mine else "done" if reg.done(KIND, key) else "mine")


def _train_dir(reg, key: str) -> Path:
    """Where this process keeps the run's checkpoints: the registry's run folder on the main rank; on another rank a
    private copy of it (`.rank<r>`), so that `train_run` on every rank resumes from the same stage while only the main
    rank writes the registry. The copy is deleted when the run ends."""
    run_dir = reg.run_dir(KIND, key)
    if distributed.is_main():
        for stale in run_dir.glob(".*.tmp"):  # half-written by a killed process; the claim makes us the only writer
            stale.unlink()
        reg.note_attempt(KIND, key)
    else:
        mine = run_dir / f".rank{distributed.rank()}"
        shutil.rmtree(mine, ignore_errors=True)  # left by a killed launch
        shutil.copytree(run_dir, mine, ignore=shutil.ignore_patterns(".*", "claim.lock", "attempts.log"))
        run_dir = mine
    distributed.barrier()  # the copies are taken before the main rank can write a checkpoint
    return run_dir


def records_for(ws: Workspace, specs: list[RunSpec]) -> list[tuple[RunSpec, dict[str, Any]]]:
    """(spec, record) pairs of the finished runs among `specs`; the spec carries the table's row label.

    Returns the (spec, registry record) pairs of the finished ones, in the order of `specs`.
    """
    reg = ws.registry
    return [(s, reg.load(KIND, run_key(ws, s))) for s in specs if reg.done(KIND, run_key(ws, s))]
