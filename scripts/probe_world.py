"""Probe a world design before its grid runs: POCL's premises P1 and P2 (pocl_utils.analysis.premises), per family.

    python scripts/probe_world.py --profile laptop --name v2 [--preset laptop-v4] [--world '{"n_train": 2500}'] \
        [--overrides '{"teacher.n_embd": 192}'] [--sft] [--p4-seeds 5] [--kd-seeds 5 --out DIR]

Prepares data, tokenizer, teacher and student (warm start) for the profile in a private runs folder (default
<the system's temp folder>/pocl-probes/<name>), then prints: the rules' and the teacher's scores per eval set, the measurer's Spearman
and zero share, greedy ROUGE-L per training family for the teacher and the warm-started student, and with --sft
the SFT student (one seed) and the P1 rows. This is how the laptop world was chosen. The workspace is prepared as
the main job prepares it (`prepare_threads`) and every run trains with one thread, as each grid worker does, so a probe
of the profile's own world gives the reference run's numbers.

With --p4-seeds N it prepares the rest and trains, in this process, SFT and the 7 KD baselines (N seeds each) under
each training protocol, and prints P4 (`premises.distillation_rows`), the SFT student's scores beside the
teacher's (P1) and each method's Avg: premises only, no POCL run.

With --kd-seeds N it then prepares the rest and trains, in this process, KLD and GKD's baseline, +POCL, +POCL with
one schedule and +POCL by the true difficulty (N seeds each), and prints (and with --out writes) FINDINGS' claims
a, f, h and i in that world under both protocols.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pocl_utils import world
from pocl_utils.experiment import pipeline, pool, runner, scoring
from pocl_utils.analysis import findings, premises, tables
from pocl_utils.experiment.config import baseline, get_profile, pocl
from pocl_utils.experiment.experiments import ONE_SCHEDULE, ORACLE
from pocl_utils.data import EVAL_SETS
from pocl_utils.evaluate import responses, rouge_l_batch


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
    ap.add_argument("--preset", default="", help="the world preset to start from (default: the profile's)")
    ap.add_argument("--world", default="{}", help="WorldConfig overrides (JSON)")
    ap.add_argument("--overrides", default="{}", help="profile overrides (JSON)")
    ap.add_argument("--sft", action="store_true", help="also train and evaluate the SFT student (seed 0)")
    ap.add_argument("--p4-seeds", type=int, default=0, help="also train SFT and the KD baselines for P4 (no POCL)")
    ap.add_argument("--kd-seeds", type=int, default=0, help="also train the KD mini-grid with this many seeds")
    ap.add_argument("--out", type=Path, help="folder for the mini-grid's claims table (probe_claims.{csv,md})")
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "pocl-probes"))
    ap.add_argument("--world-name", default="", help="name of the world preset (default probe-<name>); probes that "
                    "share it and the teacher's settings can reuse a copied teacher folder")
    a = ap.parse_args()
    torch.set_num_threads(1)  # as each grid worker trains; prepare() builds with the profile's prepare_threads
    base = get_profile(a.profile)
    world_name = a.world_name or f"probe-{a.name}"
    world.PRESETS[world_name] = {**world.PRESETS[a.preset or base.world], **json.loads(a.world)}
    p = get_profile(a.profile, {"world": world_name, **json.loads(a.overrides)})
    p = replace(p, name=a.name)
    t0 = time.time()
    ws = pipeline.prepare(p, runs_root=Path(a.root), until="ranking")
    print(f"prepared in {time.time() - t0:.0f}s")
    cfg = world.world_config(world_name, seed=p.seed)
    if cfg.easy_cover:
        counts = world.easy_coverage(ws.sets["train"], cfg)
        print(f"easiest quarter: every answer word in >= {min(counts.values())} rows (easy_cover {cfg.easy_cover})")
    if cfg.ref_noise:
        noisy = [r["output"] != r.get("clean_output", r["output"]) for r in ws.sets["train"]]
        print(f"noisy training references: {np.mean(noisy):.1%} of the rows (ref_noise {cfg.ref_noise} per item)")
    dev = ws.device
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
    if a.out:
        tables.save_table(table, "probe_premises", a.out)
    if a.p4_seeds:
        p4 = distillation_premise(p, Path(a.root), a.p4_seeds, teacher_scores)
        print(p4.to_string())
        if a.out:
            tables.save_table(p4, "probe_p4", a.out)
    if a.kd_seeds:
        claims = kd_mini_grid(p, Path(a.root), a.kd_seeds)
        print(claims[["claim", "comparison", "protocol", "ours_diff", "ci95", "p_holm", "verdict"]].to_string())
        if a.out:
            tables.save_table(claims, "probe_claims", a.out)
        print(f"mini-grid done; total {time.time() - t0:.0f}s")


def distillation_premise(p, root: Path, n_seeds: int, teacher: dict[str, float]) -> pd.DataFrame:
    """P4 in the probe's world: SFT and the 7 KD baselines, `n_seeds` each, under each training protocol of the profile
    (trained in this process); prints the SFT student's mean scores beside the teacher's (P1), each method's Avg and
    each seed's validation loss at its end (`premises.convergence_frame`).

    Returns premises.premises_table's rows of P4, per training and evaluation protocol.
    """
    from pocl_utils.experiment.experiments import KD_METHODS
    from pocl_utils.notebook import grids
    ws = pipeline.prepare(p, runs_root=root, until="teacher_cache")
    specs = [baseline(m, s) for m in ("SFT", *KD_METHODS) for s in range(n_seeds)]
    rows = []
    for training in grids.protocols_of(p):
        w = grids.under_protocol(ws, training)
        pool.run_grid(w, specs, workers=1)
        recs = runner.records_for(w, specs)
        runs = tables.with_average(tables.tidy(recs))
        sft = runs[runs.method == "SFT"].groupby("dataset").rouge_l.mean()
        print(training, pd.DataFrame({"teacher": teacher, "sft": sft}).round(2).T.to_string(), sep="\n")
        print(runs[runs.dataset == "Avg"].groupby("method").rouge_l.mean().round(2).to_string())
        ends = premises.convergence_frame(recs, tables.tidy(recs))
        print("validation loss at the end, per seed:",
              ends.pivot_table(index="method", columns="seed", values="valid_end").round(2).to_string(), sep="\n")
        rows += premises.distillation_rows({f"{training}, {ev}": tables.tidy(recs, ev) for ev in tables.PROTOCOLS},
                                           KD_METHODS)
    return premises.premises_table(rows)


def kd_mini_grid(p, root: Path, n_seeds: int) -> pd.DataFrame:
    """KLD and GKD: baseline, +POCL, +POCL with one schedule, +POCL by the true difficulty; claims a, f, h, i.

    Trained in this process (the probe's world preset exists only here), reusing finished runs.

    Args:
        p: the probe's profile (its world preset registered).
        root: the probes' runs folder.
        n_seeds: seeds per row.

    Returns:
        findings.claim_table's rows of claims a, f, h and i, with the column protocol.
    """
    ws = pipeline.prepare(p, runs_root=root)
    specs = [spec for m in ("KLD", "GKD") for s in range(n_seeds) for spec in (
        baseline(m, s), pocl(m, s), pocl(m, s, variant="+POCL (n=4)"),
        pocl(m, s, restarts=False, variant=ONE_SCHEDULE), pocl(m, s, ranking="oracle", variant=ORACLE))]
    pool.run_grid(ws, specs, workers=1)
    return findings.claims_by_protocol(runner.records_for(ws, specs), claims=("a", "f", "h", "i"))


if __name__ == "__main__":
    main()
