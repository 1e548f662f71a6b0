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
    """Training positions (into ws.encoded("train")) easiest first, by `fuse_ranks` over the workspace's cached
    ROUGE-L and CE scores; ties keep id order, as Ranking.order does."""
    r = ws.ranking
    fused = np.asarray(fuse_ranks(r.rouge_l, r.ce), dtype=np.float64)
    position = {e.index: k for k, e in enumerate(ws.encoded("train"))}  # the ranking names samples by dataset index
    return np.array([position[i] for i in r.ids[np.argsort(-fused, kind="stable")]], dtype=np.int64)


def plan(ws: Workspace, spec: RunSpec, order: np.ndarray, partition: Callable, baby_step: Callable,
         tau_schedule: Callable, alpha_schedule: Callable) -> list[curriculum.Stage]:
    """The POCL stages of run `spec` built from the given pieces by curriculum.plan_stages, with the baseline's step
    budget, as training_run.stages_for builds them from pocl_utils's pieces."""
    n_steps = total_steps(len(ws.encoded("train")), ws.profile.kd)
    return curriculum.plan_stages(order, n_subsets=spec.n_subsets, total_steps=n_steps,
                                  tau=spec.tau, alpha=spec.alpha, order=spec.order, seed=spec.seed,
                                  partition_fn=partition, baby_step_fn=baby_step, tau_schedule=tau_schedule,
                                  alpha_schedule=alpha_schedule)


def stage_table(stages: Sequence[curriculum.Stage]) -> pd.DataFrame:
    """frames.stage_frame with what each stage trains on (d1 ∪ … ∪ di) and how many samples it adds (|d_i|)."""
    frame = stage_frame(list(stages))
    frame.insert(1, "trains on", [" ∪ ".join(f"d{j}" for j in range(1, i + 1)) for i in frame["stage"]])
    frame.insert(3, "added", np.diff(frame["n_samples"].to_numpy(), prepend=0))
    return frame


def same_stages(mine: Sequence[curriculum.Stage], theirs: Sequence[curriculum.Stage]) -> bool:
    """True when both plans have the same samples, tau, alpha and steps in every stage."""
    return len(mine) == len(theirs) and bool(all(
        np.array_equal(a.samples, b.samples) and np.isclose(a.tau, b.tau) and np.isclose(a.alpha, b.alpha)
        and a.steps == b.steps for a, b in zip(mine, theirs)))


def kd_by_subset(ws: Workspace, stages: Sequence[curriculum.Stage], divergence: Callable,
                 n_per_subset: int = 32) -> pd.DataFrame:
    """The initial student against the teacher, before any distillation: the mean KD loss tau²·D (Eq. 7) on up to
    n_per_subset evenly spaced samples of each subset d_j (what stage j adds), at every stage's tau."""
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
    """Left: the loss the student would train on (tau²·D) per subset against tau; right: D alone."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = ((axes[0], "kd", f"τ²·D ({kind}), the KD loss of Eq. 7"), (axes[1], "D", f"D ({kind}) alone"))
    for ax, key, title in panels:
        sns.lineplot(data=frame, x="tau", y=key, hue="subset", marker="o", ax=ax, palette="crest")
        ax.set(xlabel="stage temperature τ", ylabel={"kd": "τ²·D", "D": "D"}[key], title=title)
    fig.suptitle("initial student vs teacher on each subset d_j (easiest d1 to hardest)")
    fig.tight_layout()
    return fig
