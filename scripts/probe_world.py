"""Probe a world design before its grid runs: POCL's premises P1 and P2 (pocl_utils.analysis.premises), per family.

    python scripts/probe_world.py --profile laptop --name v2 [--world '{"n_train": 2500}'] \
        [--overrides '{"teacher.n_embd": 192}'] [--sft]

Prepares data, tokenizer, teacher and student (warm start) for the profile in a private runs folder (default
/tmp/pocl-probes/<name>), then prints: the rules' and the teacher's scores per eval set, the measurer's Spearman
and zero share, greedy ROUGE-L per training family for the teacher and the warm-started student, and with --sft
the SFT student (one seed) and the P1 rows. Nothing here is committed; it is how the laptop world was chosen.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pocl_utils import world
from pocl_utils.experiment import pipeline, runner, scoring
from pocl_utils.analysis import premises
from pocl_utils.experiment.config import baseline, get_profile
from pocl_utils.data import EVAL_SETS
from pocl_utils.evaluate import responses, rouge_l_batch
from pocl_utils.modeling.models import pick_device


def per_family(ws, model, role: str, n_max: int = 400) -> pd.Series:
    enc = ws.encoded(role)[:n_max]
    rows = [ws.sets[role][e.index] for e in enc]
    texts = responses(model, ws.tokenizer, enc, max_new_tokens=ws.profile.max_new_tokens)
    scores = rouge_l_batch(texts, [r["references"] for r in rows])
    return pd.DataFrame({"family": [r["family"] for r in rows], "level": [r["level"] for r in rows],
                         "rouge_l": scores}).groupby(["family"]).rouge_l.mean().round(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--name", required=True)
    ap.add_argument("--world", default="{}", help="WorldConfig overrides (JSON)")
    ap.add_argument("--overrides", default="{}", help="profile overrides (JSON)")
    ap.add_argument("--sft", action="store_true", help="also train and evaluate the SFT student (seed 0)")
    ap.add_argument("--root", default="/tmp/pocl-probes")
    ap.add_argument("--world-name", default="", help="name of the world preset (default probe-<name>); probes that "
                    "share it and the teacher's settings can reuse a copied teacher folder")
    a = ap.parse_args()
    base = get_profile(a.profile)
    world_name = a.world_name or f"probe-{a.name}"
    world.PRESETS[world_name] = {**world.PRESETS[base.world], **json.loads(a.world)}
    p = get_profile(a.profile, {"world": world_name, **json.loads(a.overrides)})
    p = replace(p, name=a.name)
    t0 = time.time()
    ws = pipeline.prepare(p, runs_root=Path(a.root), until="ranking")
    print(f"prepared in {time.time() - t0:.0f}s")
    dev = pick_device()
    teacher, student = ws.load_teacher(dev), ws.load_student_init(dev).eval()
    fam = pd.DataFrame({"teacher": per_family(ws, teacher, "train"), "student_init": per_family(ws, student, "train")})
    print(fam.to_string())
    evals = {role: [ws.sets[role][e.index] for e in scoring.eval_data(ws, role, p.eval_max_examples)[0]]
             for role in EVAL_SETS}
    rules = premises.rule_scores(evals, ws.sets["train"])
    t_eval = scoring.reference_score(ws, "Teacher")["metrics"]["eval"]
    teacher_scores = {k: v["mean"] for k, v in t_eval.items()}
    print(pd.DataFrame({"teacher": teacher_scores, **rules}).round(2).T.to_string())
    r = ws.ranking
    truth = world.true_difficulty([ws.sets["train"][i] for i in r.ids])
    rows = premises.measurer_rows(r.rouge_l, r.fused, truth)
    from scipy.stats import spearmanr
    for name, v in (("rouge_l", -r.rouge_l), ("ce", r.ce)):
        print(f"rho({name}) = {spearmanr(v, truth).statistic:+.3f}")
    if a.sft:
        rec = runner.execute(ws, baseline("SFT"), dev)
        sft = {k: v["mean"] for k, v in rec["metrics"]["eval"].items()}
        rows = premises.teacher_rows(teacher_scores, sft, rules) + rows
        print(pd.DataFrame({"teacher": teacher_scores, "sft": sft}).round(2).T.to_string())
    table = premises.premises_table(rows)
    print(table.to_string())
    print(f"holds: {int(table.holds.sum())}/{len(table)}; total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
