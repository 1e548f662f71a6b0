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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..curriculum import Stage, plan_stages
from ..difficulty import order_by_truth
from ..training import distributed
from ..training.batches import batch_stream
from ..training.kd import KDContext, kd_loss_fn
from ..training.loop import optimizer_for, run_steps, total_steps
from ..world import true_difficulty
from .config import RunSpec
from .results import atomic_write_json
from .workspace import Workspace


def stages_for(ws: Workspace, spec: RunSpec, encoded: list) -> list[Stage]:
    """POCL: ranked, partitioned, Baby Step stages sharing the baseline's step budget; baseline: one stage.

    Stage samples are positions in `encoded`. The baseline's one stage holds every sample at (tau_0, alpha_0) for the
    whole budget (`loop.total_steps` of the profile's kd spec); POCL's are planned by `curriculum.plan_stages` from the
    spec's ranking, order, n_subsets, tau and alpha schedules and seed.

    Args:
        ws: the prepared workspace (profile, ranking).
        spec: the run.
        encoded: the training examples the stages index (the KD context's).

    Returns:
        The stages, in training order.
    """
    steps = total_steps(len(encoded), ws.profile.kd)
    if not spec.pocl:
        return [Stage(1, np.arange(len(encoded)), spec.tau[0], spec.alpha[0], steps)]
    position = {e.index: k for k, e in enumerate(encoded)}  # the ranking names samples by dataset index
    easy_first = np.array([position[i] for i in easy_first_ids(ws, spec.ranking)])
    return plan_stages(easy_first, n_subsets=spec.n_subsets, total_steps=steps, tau=spec.tau, alpha=spec.alpha,
                       order=spec.order, seed=spec.seed)


def easy_first_ids(ws: Workspace, ranking: str) -> np.ndarray:
    """Training sample ids easiest first: by the student-based measurer, or by the world's true difficulty.

    The measurers are fusion, rouge_l and ce; "oracle" is the world's true difficulty, the positive control (the rows'
    order breaks ties, and world rows are in random order).

    Args:
        ws: the prepared workspace (ranking; for "oracle" a generated world's training rows).
        ranking: "fusion", "rouge_l", "ce" or "oracle".

    Returns:
        [n] sample ids (dataset indices, not positions), easiest first.
    """
    if ranking != "oracle":
        return ws.ranking.order(ranking)
    ids = np.sort(ws.ranking.ids)
    return order_by_truth(ids, true_difficulty([ws.sets["train"][i] for i in ids]))


def check_points(stages: list[Stage], n_checks: int) -> set[tuple[int, int]]:
    """(stage, step) pairs after which the validation ROUGE-L is measured.

    Each POCL stage's end; for a single stage, `n_checks` evenly spaced points ending at the last step.

    Args:
        stages: the run's stages.
        n_checks: validation points for a single-stage run (ignored with several stages).

    Returns:
        {(stage index, 1-based; step within the stage, 0-based)}.
    """
    if len(stages) > 1:
        return {(s.index, s.steps - 1) for s in stages}
    steps = stages[0].steps
    return {(1, max(0, math.ceil(steps * (k + 1) / n_checks) - 1)) for k in range(n_checks)}


def kd_context(ws: Workspace, spec: RunSpec, device: torch.device) -> KDContext:
    """The KD context of one run: its training data, the teacher cache or the live teacher, and GKD's on-policy share.

    SeqKD trains on the teacher's responses and SFT on the training set, neither with a teacher. The other methods use
    the profile's teacher cache; the live teacher (sharded only under an FSDP launch) is loaded for on-policy batches
    (GKD, with `on_policy_frac` = the profile's gkd_lambda) or when the profile has no cache ("live").

    Args:
        ws: the prepared workspace.
        spec: the run.
        device: where the live teacher is loaded.

    Returns:
        The KDContext.
    """
    p = ws.profile
    if spec.method == "SeqKD":
        return KDContext(ws.seqkd_encoded, ws.pad_id, ws.eos_id)
    ctx = KDContext(ws.encoded("train"), ws.pad_id, ws.eos_id, max_new_tokens=p.max_new_tokens)
    if spec.method != "SFT":
        ctx.cache = ws.teacher_cache  # None: the profile runs the teacher live
    if spec.on_policy or (spec.method != "SFT" and ctx.cache is None):
        ctx.teacher = distributed.shard_model(ws.load_teacher(device))  # sharded only under an FSDP launch
    if spec.on_policy:
        ctx.on_policy_frac = p.gkd_lambda
    return ctx


def train_run(ws: Workspace, spec: RunSpec, run_dir: Path, device: torch.device,
              validate: Callable[[Any], float]) -> dict[str, Any]:
    """Train one run stage by stage; after each finished stage its weights and log are checkpointed.

    A killed run therefore resumes at the last finished stage and ends exactly as an uninterrupted one would. Each stage
    starts a fresh optimizer and LR schedule, as the official POCL code does, unless `spec.restarts` is False: then one
    AdamW and one warm-up + cosine schedule run over all the stages' steps (checkpointed with the weights). Whenever a
    check of `check_points` beats the best validation score so far, the student's weights are saved to
    `run_dir/best.safetensors`.

    Args:
        ws: the prepared workspace.
        spec: the run.
        run_dir: the folder of the run's checkpoints and progress.json (resumed from if present).
        device: the device to train on.
        validate: the validation score of the student (higher is better), e.g. `scoring.validation_score`.

    Returns:
        The progress state: "done_stage", "steps" (optimizer steps so far), "best" (best validation score, -1 if none),
        "valid" (one row per check: stage, step, rouge_l), "loss" (a thinned per-step log) and "stages" (each stage's
        n_samples, tau, alpha and steps).

    Raises:
        ValueError: `spec.restarts` is False on several launched processes (one schedule runs on one process only).
    """
    ctx = kd_context(ws, spec, device)
    stages = stages_for(ws, spec, ctx.encoded)
    checks = check_points(stages, ws.profile.valid_checks)
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
                score = validate(student)
                state["valid"].append({"stage": stage.index, "step": state["steps"] + step + 1, "rouge_l": score})
                if score > state["best"]:
                    state["best"] = score
                    distributed.save_weights(student, run_dir / "best.safetensors")

        batches = batch_stream(stage.samples, ctx.encoded, ws.profile.kd.batch_size, rng, device)  # CUDA: by length
        log = run_steps(student, loss_fn, batches, stage.steps, ws.profile.kd, on_step=on_step,
                        desc=f"{spec.label} s{spec.seed} stage {stage.index}", optimizer=shared)
        state["loss"] += [{"stage": stage.index, "step": state["steps"] + i, **row} for i, row in enumerate(log)
                          if i % max(1, stage.steps // 50) == 0 or i == stage.steps - 1]
        state["steps"] += stage.steps
        state["stages"].append({"stage": stage.index, "n_samples": len(stage.samples), "tau": stage.tau,
                                "alpha": stage.alpha, "steps": stage.steps})
        state["done_stage"] = stage.index
        _save_progress(run_dir, student, state, None if shared is None else shared[0])
    distributed.load_weights(student, run_dir / "best.safetensors")
    return state


def _shared_optimizer(run_dir: Path, student, ws: Workspace, stages: list[Stage], state: dict[str, Any]) -> tuple:
    """One (AdamW, warm-up + cosine schedule) over all the stages' steps; resumed after the progress `state`'s steps
    from the optimizer checkpointed with its last finished stage."""
    if distributed.world_size() > 1:
        raise ValueError("RunSpec.restarts=False (one schedule across stages) runs on one process only")
    spec = ws.profile.kd
    opt, sched = optimizer_for(student, spec, sum(s.steps for s in stages))
    if state["steps"]:
        saved = _checkpoint(run_dir, state["done_stage"], ".optimizer.pt")
        opt.load_state_dict(torch.load(saved, weights_only=True))  # its lr is the step's
        sched.last_epoch = state["steps"]  # the schedule is a function of the step alone
    return opt, sched


def _checkpoint(run_dir: Path, stage: int, suffix: str) -> Path:
    """The file of stage `stage`'s checkpoint: its weights (".safetensors") or its optimizer (".optimizer.pt")."""
    return run_dir / f"stage{stage}{suffix}"


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoints (its stages' weights and optimizer, its best weights).

    The record is what matters, and the registry stays small.

    Args:
        run_dir: the run's folder; progress.json and other files stay.
    """
    for path in [*run_dir.glob("stage*.safetensors"), *run_dir.glob("stage*.optimizer.pt")]:
        path.unlink()
    (run_dir / "best.safetensors").unlink(missing_ok=True)


def _load_progress(run_dir: Path, student) -> dict[str, Any]:
    path = run_dir / "progress.json"
    if not path.exists():
        return {"done_stage": 0, "steps": 0, "best": -1.0, "valid": [], "loss": [], "stages": []}
    state = json.loads(path.read_text())
    distributed.load_weights(student, _checkpoint(run_dir, state["done_stage"], ".safetensors"))
    return state


def _save_progress(run_dir: Path, student, state: dict[str, Any], opt: torch.optim.Optimizer | None) -> None:
    """The finished stage's checkpoint under its own names, then the progress file that names that stage (each an
    atomic rename), then the older stages' files. A kill at any moment leaves progress.json naming a whole
    checkpoint: never the next stage's weights under the previous stage's progress."""
    stage = state["done_stage"]
    distributed.save_weights(student, _checkpoint(run_dir, stage, ".safetensors"))
    if opt is not None:
        tmp = run_dir / f".stage{stage}.optimizer.pt.tmp"
        torch.save(opt.state_dict(), tmp)
        os.replace(tmp, _checkpoint(run_dir, stage, ".optimizer.pt"))
    atomic_write_json(run_dir / "progress.json", state)
    for old in range(stage):
        for suffix in (".safetensors", ".optimizer.pt"):
            _checkpoint(run_dir, old, suffix).unlink(missing_ok=True)
