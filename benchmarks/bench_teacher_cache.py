"""Teacher-logit cache: off-policy KD with the exact cache vs the teacher run live at every step, side by side.

Off-policy batches (ground-truth responses) give the teacher the same inputs in every method, seed and stage, so
`teacher_cache.TeacherCache` computes its logits once. This times the same KD steps both ways and checks what the
cache guarantees:

  rows    the cached rows are as exact as the live teacher's: on every batch of the timed steps, both the cached rows
          and the live teacher's (`step.teacher_logits` on that batch) are compared with the same teacher run in
          float64 on that batch, and the cached rows' max |log p - log p_fp64| is at most ERR_RATIO_TOL times the live
          rows' (the JSON also records the ratio of the same rows stored in fp16). Not bitwise: the cache runs the
          teacher on length-sorted batches, training on shuffled ones, so padding and BLAS blocking differ and each is
          its own fp32 rounding of the float64 values (the difference between them and the share of bitwise-equal
          logits are recorded).
  step 0  the first step's loss (same initial student, same batch) agrees to LOSS_TOL, which those rows imply.

Later losses are NOT checked: rounding of the rows (about 1e-7) is amplified by every optimizer step, as any change of
float summation order would be (AdamW divides by sqrt(v), so near-zero gradients move weights by a whole lr), so
after a hundred steps the logs differ in the second decimal. The JSON records the first step whose loss differs by
more than 1e-4 and the largest difference, for information.

    python benchmarks/bench_teacher_cache.py [--profile laptop] [--steps 150] [--quick] [--out benchmarks/results/teacher_cache.json]

--profile laptop uses runs/laptop when it is prepared; otherwise `benchlib.laptop_standin`, the laptop world, tokenizer,
shapes and student warm start with a teacher trained a few steps only: a KD step's time depends on the shapes and the
token counts, not on the weights, so the ratio is the laptop's; the JSON says which was used (`workspace`).
--quick: the smoke workspace, 10 steps.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
import numpy as np
import torch

from benchlib import default_out, laptop_standin, meta, workspace, write_json

from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.modeling.heads import logits_at_positions
from pocl_utils.training.batches import epoch_batches, make_batch
from pocl_utils.training.kd import KDContext, kd_loss_fn
from pocl_utils.training.loop import run_steps
from pocl_utils.training.step import teacher_logits
from pocl_utils.training.teacher_cache import TeacherCache, build_teacher_cache

ERR_RATIO_TOL = 2.0  # max |log p_cached - log p_fp64| / max |log p_live - log p_fp64| over the checked batches
LOSS_TOL = 1e-5  # |loss_cached - loss_live| at step 0
DRIFT_TOL = 1e-4  # the "first step over" column: where training has amplified the rounding past this


def batches_for(n: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """The index lists of the first `steps` batches `timed_kd` trains on (same seed, same draws)."""
    stream = epoch_batches(np.arange(n), batch_size, np.random.default_rng(seed))
    return [list(next(stream)) for _ in range(steps)]


def timed_kd(ws, encoded, cache: TeacherCache | None, *, steps: int, kind: str, seed: int = 0) -> tuple[float, list[float]]:
    """Seconds for `steps` KD steps (alpha 0.3, tau 1) and the loss log, with the cache or (None) the live teacher."""
    student = ws.load_student_init(torch.device("cpu"))
    ctx = KDContext(encoded, ws.pad_id, ws.eos_id, cache=cache,
                    teacher=None if cache is not None else ws.load_teacher(torch.device("cpu")))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    loss_fn = kd_loss_fn(student, ctx, kind=kind, tau=1.0, alpha=0.3, rng=rng)
    batches = epoch_batches(np.arange(len(encoded)), ws.profile.kd.batch_size, rng)
    t0 = time.perf_counter()
    log = run_steps(student, loss_fn, batches, steps, ws.profile.kd)
    return time.perf_counter() - t0, [row["loss"] for row in log]


@torch.no_grad()
def row_check(ws, encoded, cache: TeacherCache, batches: list[list[int]]) -> dict:
    """Cached and live teacher rows on each batch, each against the same teacher run in float64 on that batch: their
    max |Δ log p| from it, their ratio (cached over live), and, for information, the ratio the same rows would give
    stored in fp16 (what the check catches), max |Δ log p| and |Δ logit| between them and the share of bitwise-equal
    logits."""
    teacher = ws.load_teacher(torch.device("cpu")).eval()
    exact_teacher = copy.deepcopy(teacher).double()
    max_logp, max_logit, live_err, cache_err, half_err, equal, total = 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0
    for idx in batches:
        batch = make_batch([encoded[i] for i in idx], ws.pad_id)
        live = teacher_logits(teacher, batch)  # [N, V]
        cached = cache.rows(idx)  # [N, V]
        if live.shape != cached.shape:
            raise AssertionError(f"cached rows {tuple(cached.shape)} vs live {tuple(live.shape)} for batch {idx[:4]}...")
        exact = logits_at_positions(exact_teacher, batch.input_ids, batch.attention_mask, batch.target_positions())
        exact = exact.log_softmax(-1)  # [N, V] float64
        live_err = max(live_err, float((live.double().log_softmax(-1) - exact).abs().max()))
        cache_err = max(cache_err, float((cached.double().log_softmax(-1) - exact).abs().max()))
        half_err = max(half_err, float((cached.half().double().log_softmax(-1) - exact).abs().max()))  # a bad cache
        max_logit = max(max_logit, float((live - cached).abs().max()))
        max_logp = max(max_logp, float((live.log_softmax(-1) - cached.log_softmax(-1)).abs().max()))
        equal += int((live == cached).sum())
        total += live.numel()
    return {"batches": len(batches), "rows_live_err_fp64": live_err, "rows_cache_err_fp64": cache_err,
            "rows_err_ratio": cache_err / live_err if live_err > 0 else (0.0 if cache_err == 0 else math.inf),
            "err_ratio_tol": ERR_RATIO_TOL, "rows_fp16_err_ratio": half_err / live_err if live_err > 0 else math.inf,
            "rows_max_logp_diff": max_logp, "rows_max_logit_diff": max_logit,
            "rows_bitwise_equal_share": equal / total}


def compare_logs(live: list[float], cached: list[float]) -> dict:
    diff = np.abs(np.array(live) - np.array(cached))
    over = np.nonzero(diff > DRIFT_TOL)[0]
    return {"step0_loss_diff": float(diff[0]), "loss_tol": LOSS_TOL, "first_step_over_drift_tol": int(over[0]) if len(over) else None,
            "drift_tol": DRIFT_TOL, "max_loss_diff": float(diff.max())}


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
        which = "smoke workspace"
    elif args.profile == "laptop":
        ws, which = laptop_standin()
    else:
        ws = prepare(get_profile(args.profile), until="student_init", log=lambda s: None)
        which = f"{args.profile} as prepared"
    encoded = ws.encoded("train")
    t0 = time.perf_counter()
    cache = build_teacher_cache(ws.load_teacher(torch.device("cpu")), encoded, ws.pad_id, top_k=0)
    print(f"exact teacher cache of {len(encoded)} examples built in {time.perf_counter() - t0:.1f} s", flush=True)
    check = row_check(ws, encoded, cache, batches_for(len(encoded), ws.profile.kd.batch_size, 0, args.steps))
    print(f"rows vs a float64 teacher: cached {check['rows_cache_err_fp64']:.1e}, live {check['rows_live_err_fp64']:.1e}, "
          f"ratio {check['rows_err_ratio']:.2f} (tol {ERR_RATIO_TOL:g}); cached vs live max |d log p| "
          f"{check['rows_max_logp_diff']:.1e}, {100 * check['rows_bitwise_equal_share']:.1f}% of logits bitwise equal",
          flush=True)
    rows = []
    for kind in ("fkl", "jsd"):
        live_s, live = timed_kd(ws, encoded, None, steps=args.steps, kind=kind)
        cache_s, cached = timed_kd(ws, encoded, cache, steps=args.steps, kind=kind)
        rows.append({"kind": kind, "steps": args.steps, "live_s": round(live_s, 3), "cached_s": round(cache_s, 3),
                     "cached_over_live": round(cache_s / live_s, 3), **compare_logs(live, cached)})
        r = rows[-1]
        print(f"{kind}: live {live_s:.1f}s, cached {cache_s:.1f}s, ratio {cache_s / live_s:.3f}, step-0 loss diff "
              f"{r['step0_loss_diff']:.1e}, first step over {DRIFT_TOL:g}: {r['first_step_over_drift_tol']}, "
              f"max {r['max_loss_diff']:.1e}", flush=True)
    record = {"bench": "teacher_cache", "meta": meta(args.quick, steps=args.steps), "profile": args.profile,
              "workspace": which, "threads": args.threads, "torch": torch.__version__, "row_check": check, "rows": rows}
    write_json(args.out or default_out("teacher_cache", args.quick), record)


if __name__ == "__main__":
    main()
