"""One POCL configuration trained two ways on a prepared workspace: through TRL (`integrations.trl.KDTrainer`) and
through our own loop (`training.loop.run_steps` of `training.kd.kd_loss_fn`, a fresh optimizer per stage or one
schedule), from the same initial student, the same live teacher, stages, batches and optimizer settings; then both
students scored by greedy ROUGE-L (`evaluate.greedy_rouge`). Notebook 13 and tests/test_trl.py use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import greedy_rouge
from ..experiment.config import TrainSpec
from ..experiment.workspace import Workspace
from ..training.batches import epoch_batches
from ..training.kd import KDContext, kd_loss_fn
from ..training.loop import optimizer_for, run_steps
from . import trl as pocl_trl


def train_dataset(ws: Workspace):
    """The workspace's training examples as a prompt/completion `datasets.Dataset` (rows in `ws.encoded("train")`
    order, so row k is encoded example k). A response our encoding cut to `max_len` (it has no EOS,
    `data.encode_examples`) is given as the text of its kept tokens, so TRL trains on what our loop trains on."""
    import datasets
    rows = []
    for e in ws.encoded("train"):
        row = ws.sets["train"][e.index]
        cut = not e.response_ids or e.response_ids[-1] != ws.eos_id
        text = ws.tokenizer.decode(e.response_ids) if cut else row["output"]
        rows.append({"prompt": row["prompt"], "completion": text})
    return datasets.Dataset.from_list(rows)


def trl_config(out_dir: str | Path, spec: TrainSpec, device: str = "cpu", **overrides: Any):
    """TRL's SFTConfig for `spec`: its batch size (per device), lr, weight decay and gradient clip, a cosine schedule,
    the plain AdamW (`optim="adamw_torch"`; on the CPU it rounds closer to our loop's multi-tensor AdamW than the fused
    default does), no checkpoints and no printed log (the trainer's `pocl_log` has every step), on `device` ("cpu" or
    a GPU); `overrides` are SFTConfig fields."""
    trl = pocl_trl.require_trl()
    settings = dict(output_dir=str(out_dir), per_device_train_batch_size=spec.batch_size, learning_rate=spec.lr,
                    weight_decay=spec.weight_decay, max_grad_norm=spec.grad_clip, lr_scheduler_type="cosine",
                    optim="adamw_torch", logging_strategy="no", report_to=[], save_strategy="no",
                    use_cpu=str(device) == "cpu", gradient_checkpointing=False, max_length=None, seed=0,
                    dataloader_num_workers=0, disable_tqdm=True)
    return trl.SFTConfig(**{**settings, **overrides})


def train_with_trl(ws: Workspace, dataset, plan: pocl_trl.Curriculum, spec: TrainSpec, out_dir: str | Path, *,
                   divergence: str = "fkl", beta: float | None = None, device: str | None = None,
                   resume: str | None = None, **config: Any):
    """The workspace's student trained with `KDTrainer` on `plan` against the live teacher (from the checkpoint folder
    `resume` if given); returns the trainer (its `model` is the trained student, `pocl_log` its per-step losses)."""
    device = device or str(ws.device)
    trainer = pocl_trl.make_kd_trainer(curriculum=plan, teacher_model=ws.load_teacher(device), divergence=divergence,
                                       beta=beta, model=ws.load_student_init(device),
                                       args=trl_config(out_dir, spec, device, **config), train_dataset=dataset,
                                       processing_class=ws.tokenizer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def train_with_our_loop(ws: Workspace, plan: pocl_trl.Curriculum, spec: TrainSpec, *, divergence: str = "fkl",
                        beta: float | None = None, device: str | None = None) -> tuple[Any, list[float]]:
    """The workspace's student trained by our loop on the same stages: per stage `kd_loss_fn` (live teacher) over
    uniform reshuffles drawn from `default_rng([plan.seed, stage])`, as `experiment.training_run.train_run` draws them
    on the CPU (on a GPU it groups batches by length; here they stay the sampler's, so both sides see the same
    batches), and a fresh optimizer per stage (`plan.restarts`) or one over all the steps.

    Returns (student, per-step losses).
    """
    device = device or str(ws.device)
    student, teacher = ws.load_student_init(device), ws.load_teacher(device)
    ctx = KDContext(ws.encoded("train"), ws.pad_id, ws.eos_id, teacher=teacher, beta=beta)
    shared = None if plan.restarts else optimizer_for(student, spec, plan.total_steps)
    losses: list[float] = []
    for stage in plan.stages:
        rng = np.random.default_rng([plan.seed, stage.index])
        loss_fn = kd_loss_fn(student, ctx, kind=divergence, tau=stage.tau, alpha=stage.alpha, rng=rng)
        batches = epoch_batches(stage.samples, spec.batch_size, rng)
        log = run_steps(student, loss_fn, batches, stage.steps, spec, optimizer=shared, desc=f"stage {stage.index}")
        losses += [row["loss"] for row in log]
    return student, losses


def rouge_table(ws: Workspace, students: dict[str, Any], roles: tuple[str, ...] = ("valid", "DollyEval")):
    """Greedy ROUGE-L (F x 100) of each student on each set: a DataFrame, one row per student, one column per set."""
    import pandas as pd
    p = ws.profile
    rows = []
    for name, model in students.items():
        row = {"student": name}
        for role in roles:
            encoded = ws.encoded(role)
            refs = [ws.sets[role][e.index].get("references") or [ws.sets[role][e.index]["output"]] for e in encoded]
            row[role] = greedy_rouge(model, ws.tokenizer, encoded, refs, max_new_tokens=p.max_new_tokens)
        rows.append(row)
    return pd.DataFrame(rows).set_index("student")
