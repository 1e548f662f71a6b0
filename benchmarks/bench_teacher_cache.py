"""Teacher-logit cache: off-policy KD with the exact cache vs the teacher run live at every step, side by side.

Off-policy batches (ground-truth responses) give the teacher the same inputs in every method, seed and stage, so
`teacher_cache.TeacherCache` computes its logits once. This times the same KD steps both ways on a prepared workspace
and checks that the loss logs are identical (exact mode). Usage:

    python benchmarks/bench_teacher_cache.py [--profile laptop] [--steps 150] [--quick] [--out benchmarks/results/teacher_cache.json]

--profile laptop uses runs/laptop as it is when prepared (else prepares it); --quick: the smoke workspace, 10 steps.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import default_out, laptop_available, meta, repo_relative, workspace

from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.training.batches import epoch_batches
from pocl_utils.training.kd import KDContext, kd_loss_fn
from pocl_utils.training.loop import run_steps


def timed_kd(ws, *, cached: bool, steps: int, kind: str, seed: int = 0) -> tuple[float, list[float]]:
    """Seconds for `steps` KD steps (alpha 0.3, tau 1) and the loss log, with or without the cache."""
    student = ws.load_student_init(torch.device("cpu"))
    ctx = KDContext(ws.encoded("train"), ws.pad_id, ws.eos_id, cache=ws.teacher_cache if cached else None,
                    teacher=None if cached else ws.load_teacher(torch.device("cpu")))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    loss_fn = kd_loss_fn(student, ctx, kind=kind, tau=1.0, alpha=0.3, rng=rng)
    batches = epoch_batches(np.arange(len(ctx.encoded)), ws.profile.kd.batch_size, rng)
    t0 = time.perf_counter()
    log = run_steps(student, loss_fn, batches, steps, ws.profile.kd)
    return time.perf_counter() - t0, [row["loss"] for row in log]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--steps", type=int, default=None, help="KD steps per mode (default 150; 10 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="1 = what each grid worker uses")
    ap.add_argument("--quick", action="store_true", help="smoke workspace, 10 steps")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.steps = args.steps or (10 if args.quick else 150)
    torch.set_num_threads(args.threads)
    if args.quick or args.profile == "smoke":
        args.profile = "smoke"
        ws, _ = workspace("smoke")
    elif args.profile == "laptop" and laptop_available():
        ws, _ = workspace("laptop")
    else:
        ws = prepare(get_profile(args.profile), log=lambda s: None)
    rows = []
    for kind in ("fkl", "jsd"):
        live_s, live = timed_kd(ws, cached=False, steps=args.steps, kind=kind)
        cache_s, cached = timed_kd(ws, cached=True, steps=args.steps, kind=kind)
        max_diff = float(np.max(np.abs(np.array(live) - np.array(cached))))
        rows.append({"kind": kind, "steps": args.steps, "live_s": round(live_s, 3), "cached_s": round(cache_s, 3),
                     "cached_over_live": round(cache_s / live_s, 3), "max_loss_diff": max_diff})
        print(f"{kind}: live {live_s:.1f}s, cached {cache_s:.1f}s, ratio {cache_s / live_s:.2f}, "
              f"max |loss diff| {max_diff:.2e}", flush=True)
    out = Path(args.out or default_out("teacher_cache", args.quick))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": "teacher_cache", "meta": meta(args.quick, steps=args.steps), "profile": args.profile,
              "threads": args.threads, "torch": torch.__version__, "rows": rows}
    out.write_text(json.dumps(repo_relative(record), indent=1) + "\n")


if __name__ == "__main__":
    main()
