"""One run's training: its curriculum (POCL's ranked Baby Step stages, or one stage for a baseline), its KD context
(the teacher cache or the live teacher), and the stage-by-stage loop with validation checks and a checkpoint after
each stage, from which a killed run resumes.

May import the method's modules, `modeling`, `training`, `world` and `experiment.config` / `workspace` / `results`;
nothing of `analysis` or `notebook`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..curriculum import OFFICIAL_BASELINE_ALPHA, Stage, plan_run
from ..difficulty import order_by_truth
from ..modeling.models import precision_for
from ..training import distributed
from ..training.batches import batch_stream
from ..training.kd import KDContext, kd_loss_fn
from ..training.loop import optimizer_for, run_steps
from ..world import true_difficulty
from .config import RunSpec, protocol_of
from .results import atomic_write_json
from .workspace import Workspace


def stages_for(ws: Workspace, spec: RunSpec, encoded: list) -> list[Stage]:
    """The run's stages under the profile's training protocol (`curriculum.plan_run`): samples, tau, alpha, steps,
    batch, lr, warm-up and restarts of each.

    Stage samples are positions in `encoded`. A baseline is one stage of every sample at (tau_0, alpha_0); POCL's stages
    are ranked, partitioned Baby Step stages from the spec's ranking, order, n_subsets, tau and alpha schedules and
    seed; a control (`RunSpec.control`) takes POCL's budgets without its curriculum. The protocol's lr is scaled by
    `spec.lr_scale`. Under the official protocol a KD baseline or control trains at alpha = 0 whatever its spec says
    (kd_base.sh `--kd-ratio 1.0`, `curriculum.OFFICIAL_BASELINE_ALPHA`).
    """
    p = ws.profile
    protocol = protocol_of(p)
    protocol = replace(protocol, lr=protocol.lr * spec.lr_scale)
    alpha = spec.alpha
    if p.protocol == "official" and not spec.pocl and spec.method not in ("SFT", "SeqKD"):
        alpha = (OFFICIAL_BASELINE_ALPHA, OFFICIAL_BASELINE_ALPHA)
    if spec.pocl:
        position = {e.index: k for k, e in enumerate(encoded)}  # the ranking names samples by dataset index
        easy_first = np.array([position[i] for i in easy_first_ids(ws, spec.ranking)])
    else:
        easy_first = np.arange(len(encoded))
    return plan_run(easy_first, protocol, pocl=spec.pocl, n_subsets=spec.n_subsets, tau=spec.tau, alpha=alpha,
                    order=spec.order, seed=spec.seed, restarts=spec.restarts, control=spec.control)


def easy_first_ids(ws: Workspace, ranking: str) -> np.ndarray:
    """[n] training sample ids (dataset indices, not positions) easiest first, by `ranking` "fusion", "rouge_l" or
    "ce" (the student-based measurer), or "oracle": the world's true difficulty, the positive control (the rows' order,
    random in a world, breaks ties).
    """
    if ranking != "oracle":
        return ws.ranking.order(ranking)
    ids = np.sort(ws.ranking.ids)
    return order_by_truth(ids, true_difficulty([ws.sets["train"][i] for i in ids]))


def check_points(stages: list[Stage], n_checks: int, points: str = "stage-ends") -> set[tuple[int, int]]:
    """The checkpoint candidates: {(stage index, 1-based; step within the stage, 0-based)} after which the validation
    score is measured.

    "stage-ends": each stage's end when there are several; for a single stage, `n_checks` evenly spaced points ending at
    its last step. "even": `n_checks` points evenly spaced over the run's T total steps (after global steps
    ceil(T (k + 1) / n_checks), k = 0 .. n_checks - 1), the same number for every arm.
    Raises ValueError: an unknown `points`.
    """
    if points not in ("stage-ends", "even"):
        raise ValueError(f"check points {points!r}: expected 'stage-ends' or 'even'")
    if points == "stage-ends" and len(stages) > 1:
        return {(s.index, s.steps - 1) for s in stages}
    total = sum(s.steps for s in stages)
    ends = np.cumsum([s.steps for s in stages])  # global step after each stage's last
    out = set()
    for k in range(n_checks):
        g = max(0, math.ceil(total * (k + 1) / n_checks) - 1)  # 0-based global step
        i = int(np.searchsorted(ends, g, side="right"))
        out.add((stages[i].index, g - int(ends[i] - stages[i].steps)))
    return out


def kd_context(ws: Workspace, spec: RunSpec, device: torch.device) -> KDContext:
    """The KD context of one run: its training data, the teacher cache or the live teacher, and GKD's on-policy share.

    SeqKD trains on the teacher's responses and SFT on the training set, neither with a teacher. The other methods use
    the profile's teacher cache; the live teacher (sharded only under an FSDP launch) is loaded for on-policy batches
    (GKD, with `on_policy_frac` = the profile's gkd_lambda) or when the profile has no cache ("live").
    """
    p = ws.profile
    if spec.method == "SeqKD":
        return KDContext(ws.seqkd_encoded, ws.pad_id, ws.eos_id, precision=precision_for(device, p.compile),
                         grad_accum=p.grad_accum)
    ctx = KDContext(ws.encoded("train"), ws.pad_id, ws.eos_id, max_new_tokens=p.max_new_tokens)
    ctx.precision, ctx.grad_accum = precision_for(device, p.compile), p.grad_accum  # the profile's engine settings
    if spec.method != "SFT":
        ctx.cache = ws.teacher_cache  # None: the profile runs the teacher live
    if spec.on_policy or (spec.method != "SFT" and ctx.cache is None):
        ctx.teacher = distributed.shard_model(ws.load_teacher(device))  # sharded only under an FSDP launch
    if spec.on_policy:
        ctx.on_policy_frac = p.gkd_lambda
    return ctx


def train_run(ws: Workspace, spec: RunSpec, run_dir: Path, device: torch.device,
              validate: Callable[[Any], dict[str, float]]) -> dict[str, Any]:
    """Train one run stage by stage, checkpointing each finished stage's weights and log in `run_dir` (with
    progress.json), so a killed run resumes at the last finished stage and ends exactly as an uninterrupted one would.

    Each stage trains at its own batch, peak lr and warm-up (`stages_for`) and starts a fresh optimizer and cosine
    schedule, as the official scripts' separate launches do, unless `spec.restarts` is False: then one AdamW and one
    warm-up + cosine schedule span all stages. At each of `check_points` the `validate` values
    (`scoring.selection_values`) are logged; whenever their selection score beats the best so far, the student's
    weights go to `run_dir/best.safetensors`.

    Returns the progress state: "done_stage", "steps", "best" (best selection score, higher is better; None before the
    first check), "valid" (one row per check: stage, step and the values), "loss" (a thinned per-step log) and
    "stages" (each stage's n_samples, tau, alpha, steps, batch, lr and warmup).
    Raises ValueError: `spec.restarts` is False on several launched processes (one schedule runs on one process only).
    """
    from .scoring import selection_score
    p = ws.profile
    ctx = kd_context(ws, spec, device)
    stages = stages_for(ws, spec, ctx.encoded)
    checks = check_points(stages, p.valid_checks, p.select_points)
    student = ws.load_student_init(device)
    state = _load_progress(run_dir, student)
    shared = None if spec.restarts else _shared_optimizer(run_dir, student, ws, stages, state)
    for stage in stages:
        if stage.index <= state["done_stage"]:
            continue
        torch.manual_seed(spec.seed * 1000 + stage.index)
        rng = np.random.default_rng([spec.seed, stage.index])
        kind = None if spec.method in ("SFT", "SeqKD") else spec.divergence
        loss_fn = kd_loss_fn(student, ctx, kind=kind, tau=stage.tau, alpha=stage.alpha, rng=rng)

        def on_step(step: int, parts: dict, stage=stage) -> None:
            if (stage.index, step) in checks:
                values = validate(student)
                state["valid"].append({"stage": stage.index, "step": state["steps"] + step + 1, **values})
                score = selection_score(p, values)
                if state["best"] is None or score > state["best"]:
                    state["best"] = score
                    distributed.save_weights(student, run_dir / "best.safetensors")

        train = replace(p.kd, lr=stage.lr, batch_size=stage.batch)
        batches = batch_stream(stage.samples, ctx.encoded, stage.batch, rng, device)  # CUDA: by length
        log = run_steps(student, loss_fn, batches, stage.steps, train, on_step=on_step,
                        desc=f"{spec.label} s{spec.seed} stage {stage.index}", optimizer=shared, warmup=stage.warmup,
                        grad_accum=ctx.grad_accum, compile=ws.profile.compile)
        state["loss"] += [{"stage": stage.index, "step": state["steps"] + i, **row} for i, row in enumerate(log)
                          if i % max(1, stage.steps // 50) == 0 or i == stage.steps - 1]
        state["steps"] += stage.steps
        state["stages"].append({"stage": stage.index, "n_samples": len(stage.samples), "tau": stage.tau,
                                "alpha": stage.alpha, "steps": stage.steps, "batch": stage.batch, "lr": stage.lr,
                                "warmup": stage.warmup})
        state["done_stage"] = stage.index
        _save_progress(run_dir, student, state, None if shared is None else shared[0])
    distributed.load_weights(student, run_dir / "best.safetensors")
    return state


def _shared_optimizer(run_dir: Path, student, ws: Workspace, stages: list[Stage], state: dict[str, Any]) -> tuple:
    """One (AdamW, warm-up + cosine schedule) over all the stages' steps, at the first stage's lr and warm-up; resumed
    after the progress `state`'s steps from the optimizer checkpointed with its last finished stage."""
    if distributed.world_size() > 1:
        raise ValueError("RunSpec.restarts=False (one schedule across stages) runs on one process only")
    spec = replace(ws.profile.kd, lr=stages[0].lr)
    opt, sched = optimizer_for(student, spec, sum(s.steps for s in stages), stages[0].warmup)
    if state["steps"]:
        saved = stage_checkpoint(run_dir, state["done_stage"], ".optimizer.pt")
        opt.load_state_dict(torch.load(saved, weights_only=True))  # its lr is the step's
        sched.last_epoch = state["steps"]  # the schedule is a function of the step alone
    return opt, sched


def stage_checkpoint(run_dir: Path, stage: int, suffix: str) -> Path:
    """The file of stage `stage`'s checkpoint: its weights (".safetensors") or its optimizer (".optimizer.pt")."""
    return run_dir / f"stage{stage}{suffix}"


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoints (its stages' weights and optimizer, its best weights); progress.json and
    other files stay (the record is what matters)."""
    for path in [*run_dir.glob("stage*.safetensors"), *run_dir.glob("stage*.optimizer.pt")]:
        path.unlink()
    (run_dir / "best.safetensors").unlink(missing_ok=True)


def _load_progress(run_dir: Path, student) -> dict[str, Any]:
    path = run_dir / "progress.json"
    if not path.exists():
        return {"done_stage": 0, "steps": 0, "best": None, "valid": [], "loss": [], "stages": []}
    state = json.loads(path.read_text())
    distributed.load_weights(student, stage_checkpoint(run_dir, state["done_stage"], ".safetensors"))
    return state


def _save_progress(run_dir: Path, student, state: dict[str, Any], opt: torch.optim.Optimizer | None) -> None:
    """The finished stage's checkpoint under its own names, then the progress file that names that stage (each an
    atomic rename), then the older stages' files. A kill at any moment leaves progress.json naming a whole
    checkpoint: never the next stage's weights under the previous stage's progress."""
    stage = state["done_stage"]
    distributed.save_weights(student, stage_checkpoint(run_dir, stage, ".safetensors"))
    if opt is not None:
        tmp = run_dir / f".stage{stage}.optimizer.pt.tmp"
        torch.save(opt.state_dict(), tmp)
        os.replace(tmp, stage_checkpoint(run_dir, stage, ".optimizer.pt"))
    atomic_write_json(run_dir / "progress.json", state)
    for old in range(stage):
        for suffix in (".safetensors", ".optimizer.pt"):
            stage_checkpoint(run_dir, old, suffix).unlink(missing_ok=True)
