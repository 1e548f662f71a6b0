"""The frames the notebooks look at in a prepared workspace: its examples, models, logs, difficulty ranking and
curricula, and the real data's card. Nothing here trains."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis import figures, frames
from ..experiment import training_run
from ..experiment.config import RunSpec
from ..experiment.workspace import Workspace
from .display import save_figure, save_table
from .session import model_text


def examples_frame(ws: Workspace) -> pd.DataFrame:
    """One row per example of every role: role, family ("-" if none), level and difficulty (NaN if none),
    prompt_tokens and response_tokens (without EOS; NaN if dropped as too long) and kept (survived encoding)."""
    rows = []
    for role, data in ws.sets.items():
        lengths = {e.index: (len(e.prompt_ids), len(e.response_ids) - 1) for e in ws.encoded(role)}  # minus EOS
        for i, r in enumerate(data):
            p_len, r_len = lengths.get(i, (np.nan, np.nan))
            rows.append({"role": role, "family": r.get("family", "-"), "level": r.get("level", np.nan),
                         "difficulty": r.get("difficulty", np.nan), "prompt_tokens": p_len, "response_tokens": r_len,
                         "kept": i in lengths})
    return pd.DataFrame(rows)


def sample_rows(ws: Workspace, n: int) -> pd.DataFrame:
    """The first n rows of every role: role, family, level, difficulty, instruction, input and output ("" where a row
    lacks the field)."""
    keys = ("family", "level", "difficulty", "instruction", "input", "output")
    return pd.DataFrame([{"role": role, **{k: r.get(k, "") for k in keys}} for role, data in ws.sets.items()
                         for r in data[:n]])


def greedy_examples(ws: Workspace, role: str, n: int) -> pd.DataFrame:
    """The teacher's and the initial student's greedy responses (on the CPU, up to the profile's max_new_tokens) to
    the first n kept prompts of `role`, beside the reference output."""
    from ..evaluate import responses
    enc = ws.encoded(role)[:n]
    out = pd.DataFrame([{k: ws.sets[role][e.index][k] for k in ("instruction", "input", "output")} for e in enc])
    for name, load in (("teacher", ws.load_teacher), ("student (init)", ws.load_student_init)):
        out[name] = responses(load("cpu").eval(), ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens)
    return out


def subset_examples(ws: Workspace, n: int, seed: int = 0) -> pd.DataFrame:
    """n seeded samples (all of a smaller subset) of the easiest and of the hardest POCL subset (d_1, d_n by the fused
    ranking), d_1's first, with the reference, the teacher's greedy answer (run on the CPU) and the initial student's
    (cached with the ranking), and each answer's ROUGE-L; true_difficulty is NaN on real data.
    """
    from ..evaluate import responses, rouge_l
    frame = ranking_table(ws)
    ends = [frame.subset.min(), frame.subset.max()]
    picked = pd.concat([frame[frame.subset == s].sample(min(n, int((frame.subset == s).sum())), random_state=seed)
                        for s in ends])
    by_index = {e.index: e for e in ws.encoded("train")}
    enc = [by_index[i] for i in picked["id"]]
    teacher = responses(ws.load_teacher("cpu"), ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens)
    out = picked[["subset", "true_difficulty", "instruction", "input", "output"]].reset_index(drop=True)
    out["teacher"], out["student (init)"] = teacher, list(picked["greedy"])
    out["ROUGE-L teacher"] = [rouge_l(t, r) for t, r in zip(out["teacher"], out["output"])]
    out["ROUGE-L student"] = list(picked["rouge_l"])
    return out


def model_sizes(ws: Workspace) -> pd.DataFrame:
    """Teacher and student (before training), loaded on the CPU: columns model, spec (architecture, layers × width, or
    the hub name), heads (None for hub models), parameters (M) and teacher ÷ this (parameter-count ratio).
    """
    from ..modeling.models import n_params
    out = []
    for role, spec, load in (("teacher", ws.profile.teacher, ws.load_teacher), ("student", ws.profile.student,
                                                                                 ws.load_student_init)):
        out.append({"model": role, "spec": model_text(spec), "heads": spec.n_head if spec.arch != "hub" else None,
                    "parameters (M)": n_params(load("cpu")) / 1e6})
    out = pd.DataFrame(out)
    out["teacher ÷ this"] = out["parameters (M)"].iloc[0] / out["parameters (M)"]
    return out


def training_logs(ws: Workspace) -> dict[str, list[dict]]:
    """{title: log} of the cached step logs (log.json) of teacher SFT and student pre-training, titled with their
    build time: "teacher SFT (<wall> s)", "student LM pre-training (<wall> s)". A step that trained nothing (real-lite's
    teacher, used as released) has no log.
    """
    import json
    read = lambda step, name: json.loads((ws.root / step / name).read_text())  # noqa: E731
    return {f"{title} ({read(step, 'STEP.json')['wall_s']:.3g} s)": read(step, "log.json")
            for title, step in (("teacher SFT", "teacher"), ("student LM pre-training", "student_init"))
            if (ws.root / step / "log.json").exists()}


def ranking_table(ws: Workspace) -> pd.DataFrame:
    """frames.ranking_frame of the workspace's cached difficulty ranking (Eq. 2)."""
    return frames.ranking_frame(ws.ranking, ws.sets["train"], ws.profile.n_subsets)


def ranking_verdict(agreement: pd.DataFrame) -> str:
    """One sentence on frames.rank_agreement's table: whether the fused ranking's Spearman ρ reaches
    premises.MEASURER_RHO (premise P2), and the best single measurer with its ρ; or, with no ρ (real data), that the
    ranking cannot be checked.
    """
    from ..analysis.premises import MEASURER_RHO
    rho = agreement.set_index("ranking")["spearman_rho"]
    if rho.isna().all():
        return "No true difficulty is known for these rows (real data), so the ranking cannot be checked against it."
    best = rho.idxmax()
    verdict = "finds" if rho["fusion"] >= MEASURER_RHO else "does not find"
    return (f"The fused ranking {verdict} the true difficulty (Spearman ρ = {rho['fusion']:+.2f}; P2 asks for "
            f"≥ {MEASURER_RHO}); the single best measurer here is {figures.RANKING_NAMES[best]} "
            f"(ρ = {rho[best]:+.2f}).")


def stage_table(ws: Workspace, specs: list[RunSpec]) -> pd.DataFrame:
    """The curriculum of each distinct (method, variant) among `specs` (the first of each gives its plan), stage by
    stage; nothing is trained. Columns method, variant, stage, n_samples, added_difficulty (mean true difficulty of the
    samples the stage adds; NaN on real data), tau, alpha and steps.
    """
    enc, rows = ws.encoded("train"), ws.sets["train"]
    out, seen = [], set()
    for spec in specs:
        if (spec.method, spec.variant) in seen:
            continue
        seen.add((spec.method, spec.variant))
        done = 0
        for s in training_run.stages_for(ws, spec, enc):
            added = s.samples[done:]  # Baby Step: stage i = stage i-1's samples followed by d_i
            done = len(s.samples)
            truth = [rows[enc[k].index].get("difficulty", np.nan) for k in added]
            out.append({"method": spec.method, "variant": spec.variant, "stage": s.index, "n_samples": len(s.samples),
                        "added_difficulty": float(np.mean(truth)), "tau": s.tau, "alpha": s.alpha, "steps": s.steps})
    return pd.DataFrame(out)


def real_data_card(ws: Workspace) -> pd.DataFrame:
    """The card of the real data sets (`real.data_card`: one row per set with sources, sizes, filtering, use and
    licence), saved as results/<profile>/data_card.{csv,md}, with the prompt-length histograms as
    figures/<profile>/real_prompt_lengths.{png,pdf}.
    """
    from ..experiment.real import data_card
    card, lengths = data_card(ws)
    save_table(ws, card, "data_card")
    save_figure(ws, figures.prompt_length_figure(lengths), "real_prompt_lengths")
    return card
