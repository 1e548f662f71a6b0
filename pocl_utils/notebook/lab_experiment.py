"""The lab's closing experiment: the student's pieces build a POCL plan on a prepared workspace, and the initial
student's KD loss per subset d_j shows what each stage adds."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .. import curriculum, difficulty
from ..experiment.config import RunSpec
from ..analysis.frames import stage_frame
from ..training.batches import make_batch
from ..training.loop import total_steps
from ..training.step import student_logits_at_targets
from ..experiment.workspace import Workspace


def easy_first(ws: Workspace, fuse_ranks: Callable = difficulty.fuse_ranks) -> np.ndarray:
    """Training positions (into ws.encoded("train")), int64, easiest first by `fuse_ranks(rouge_l, ce)` over the
    workspace's cached scores (higher fused = easier; the student's function or difficulty.fuse_ranks); ties keep id
    order, as Ranking.order does.
    """
    r = ws.ranking
    fused = np.asarray(fuse_ranks(r.rouge_l, r.ce), dtype=np.float64)
    position = {e.index: k for k, e in enumerate(ws.encoded("train"))}  # the ranking names samples by dataset index
    return np.array([position[i] for i in r.ids[np.argsort(-fused, kind="stable")]], dtype=np.int64)


def plan(ws: Workspace, spec: RunSpec, order: np.ndarray, partition: Callable, baby_step: Callable,
         tau_schedule: Callable, alpha_schedule: Callable) -> list[curriculum.Stage]:
    """The POCL stages of run `spec` (its n_subsets, tau, alpha, order and seed), built from the given pieces: the
    student's or curriculum's `partition(order, n_subsets)`, `baby_step(subsets)`, and `tau_schedule` /
    `alpha_schedule(v_0, v_n, n)` (Eq. 3, 4).

    curriculum.plan_stages with the baseline's step budget (loop.total_steps), as training_run.stages_for builds them.
    `order`: training positions, easiest first (`easy_first`); spec.order then reorders them (Table 7's ablation).
    Returns one curriculum.Stage per stage i = 1..n: its samples (d_1 ∪ ... ∪ d_i), tau_i, alpha_i and optimizer steps.
    """
    n_steps = total_steps(len(ws.encoded("train")), ws.profile.kd)
    return curriculum.plan_stages(order, n_subsets=spec.n_subsets, total_steps=n_steps,
                                  tau=spec.tau, alpha=spec.alpha, order=spec.order, seed=spec.seed,
                                  partition_fn=partition, baby_step_fn=baby_step, tau_schedule=tau_schedule,
                                  alpha_schedule=alpha_schedule)


def plan_table(stages: Sequence[curriculum.Stage]) -> pd.DataFrame:
    """One row per stage of a plan (`frames.stage_frame`): stage, trains on ("d1 ∪ d2 ∪ …"), n_samples, added
    (|d_i|), tau, alpha and steps. (`nb.stage_table(ws, specs)` tabulates the plans of run specs.)
    """
    frame = stage_frame(list(stages))
    frame.insert(1, "trains on", [" ∪ ".join(f"d{j}" for j in range(1, i + 1)) for i in frame["stage"]])
    frame.insert(3, "added", np.diff(frame["n_samples"].to_numpy(), prepend=0))
    return frame


def same_stages(mine: Sequence[curriculum.Stage], theirs: Sequence[curriculum.Stage]) -> bool:
    """Whether two POCL plans have the same number of stages and the same samples (in order), tau, alpha (to
    np.isclose) and steps in every stage."""
    return len(mine) == len(theirs) and bool(all(
        np.array_equal(a.samples, b.samples) and np.isclose(a.tau, b.tau) and np.isclose(a.alpha, b.alpha)
        and a.steps == b.steps for a, b in zip(mine, theirs)))


def kd_by_subset(ws: Workspace, stages: Sequence[curriculum.Stage], divergence: Callable,
                 n_per_subset: int = 32) -> pd.DataFrame:
    """The initial student's mean KD loss tau²·D (Eq. 7) against the teacher on up to n_per_subset evenly spaced
    samples of each subset d_j (what stage j adds), at every stage's tau. The student runs on the CPU; the teacher's
    logits come from the workspace's cache.

    `divergence`: `divergence(student_logits, teacher_logits, temperature=tau)` on [1, N, vocab] logits, returning
    tau²·D: the student's function (`pick("divergence", ...)`) or losses.divergence with a kind bound.
    Returns one row per (subset, stage tau): subset ("d1", "d2", ...), tau, kd (tau²·D) and D (kd / tau²).
    """
    enc, student, rows, done = ws.encoded("train"), ws.load_student_init("cpu").eval(), [], 0
    for stage in stages:
        added = stage.samples[done:]  # d_j: Baby Step stage j = stage j-1 followed by d_j
        done = len(stage.samples)
        added = added[np.unique(np.linspace(0, len(added) - 1, min(n_per_subset, len(added))).astype(int))]
        with torch.no_grad():
            student_logits = student_logits_at_targets(student, make_batch([enc[k] for k in added], ws.pad_id))
        teacher_logits = ws.teacher_cache.rows([int(k) for k in added])  # [N, V], same (example, token) order
        for t in stages:
            kd = float(divergence(student_logits[None].float(), teacher_logits[None], temperature=t.tau))  # [1, N, V]
            rows.append({"subset": f"d{stage.index}", "tau": t.tau, "kd": kd, "D": kd / t.tau**2})
    return pd.DataFrame(rows)


def kd_figure(frame: pd.DataFrame, kind: str) -> Any:
    """Plot `kd_by_subset`'s frame, one line per subset d_j against the stage temperature tau: left the loss the
    student would train on (tau²·D), right D alone. Returns the Figure, neither shown nor saved.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = ((axes[0], "kd", f"τ²·D ({kind}), the KD loss of Eq. 7"), (axes[1], "D", f"D ({kind}) alone"))
    for ax, key, title in panels:
        sns.lineplot(data=frame, x="tau", y=key, hue="subset", marker="o", ax=ax, palette="crest")
        ax.set(xlabel="stage temperature τ", ylabel={"kd": "τ²·D", "D": "D"}[key], title=title)
    fig.suptitle("initial student vs teacher on each subset d_j (easiest d1 to hardest)")
    fig.tight_layout()
    return fig
