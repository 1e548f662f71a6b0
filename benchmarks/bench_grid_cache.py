"""Grid runs with the teacher cache vs the teacher run live: wall time, and how far the results drift apart, through
training_run.train_run.

    python benchmarks/bench_grid_cache.py [--quick] [--runs N] [--all] [--out benchmarks/results/grid_cache.json]

Which runs: the off-policy KD runs of the profile's grid (KLD, RKL, JSD, TVD, SKL, SRKL; SFT/SeqKD never ask the
teacher and GKD's on-policy batches always need it live). By default a representative subset: seed 0, the baseline and
the default +POCL run of each divergence (12 runs on laptop, 2 on smoke); --all takes every off-policy run of the grid
(78 on laptop: hours); --runs N keeps the first N.
Each run is trained twice by training_run.train_run (stages, validation checks, checkpoints - what the grid does),
one thread, in a temporary folder: with the exact cache (as the grid does), and with training_run.kd_context patched to
drop the cache and load the teacher, so every off-policy batch runs the teacher live. Timed: the whole train_run, and apart
from it the validation checks inside it (greedy decoding, identical in both modes). The final evaluation on the five
sets (scoring.evaluate_model) is not run: it never touches the teacher. The cache file is loaded before timing (once
per grid worker). Compared: the loss logs, the validation scores and the final weights (exact mode: the teacher rows
equal up to the float rounding of differently padded teacher batches, which training then amplifies; the step-0 loss
difference and the first step whose difference exceeds 1e-4 show where), and, where the laptop registry holds the run, the cached run's
log against the recorded one (same code: bitwise).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from benchlib import default_out, meta, workspace, write_json

from pocl_utils.experiment import runner, scoring, training_run
from pocl_utils.experiment.experiments import OFF_POLICY, all_runs
from pocl_utils.training.loop import total_steps

CPU = torch.device("cpu")


def off_policy_specs(ws, everything: bool) -> list:
    p = ws.profile
    specs = [s for s in all_runs(p.n_seeds, p.grid) if s.method in OFF_POLICY]
    if everything:
        return specs
    return [s for m in OFF_POLICY for s in specs if s.method == m and s.seed == 0 and s.variant in ("baseline", "+POCL")]


@contextmanager
def live_teacher():
    """training_run.kd_context without the cache: every off-policy batch calls the teacher (kd.kd_loss_fn's
    fallback)."""
    original = training_run.kd_context

    def without_cache(ws, spec, device):
        ctx = original(ws, spec, device)
        if ctx.cache is not None:
            ctx.cache, ctx.teacher = None, ctx.teacher or ws.load_teacher(device)
        return ctx

    training_run.kd_context = without_cache
    try:
        yield
    finally:
        training_run.kd_context = original


def train_once(ws, spec, folder: Path, cached: bool) -> dict:
    """train_run in a fresh folder; seconds in total and in validation, the run state, the final weights."""
    run_dir = folder / ("cached" if cached else "live") / runner.run_key(ws, spec)
    run_dir.mkdir(parents=True)
    valid_s = [0.0]

    def validate(model) -> dict[str, float]:
        t0 = time.perf_counter()
        values = scoring.selection_values(ws, model)
        valid_s[0] += time.perf_counter() - t0
        return values

    with live_teacher() if not cached else nullcontext():
        t0 = time.perf_counter()
        state = training_run.train_run(ws, spec, run_dir, CPU, validate)
        total = time.perf_counter() - t0
    return {"total_s": total, "valid_s": valid_s[0], "train_s": total - valid_s[0], "state": state,
            "weights": load_file(str(training_run.stage_checkpoint(run_dir, state["done_stage"], ".safetensors")))}


def max_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return float(np.max(np.abs(np.array(a) - np.array(b)))) if a else 0.0


def drift(cached: list[dict], live: list[dict], tol: float = 1e-4) -> dict:
    """How the logged losses of the two modes part: the difference at the first logged step (the teacher rows alone)
    and the first step whose difference exceeds `tol` (float rounding amplified by training), None if none does."""
    diffs = [(a["step"], abs(a["loss"] - b["loss"])) for a, b in zip(cached, live)]
    return {"first_step_loss_diff": diffs[0][1] if diffs else 0.0,
            "first_step_over_tol": next((step for step, d in diffs if d > tol), None), "drift_tol": tol}


def compare(ws, spec, cached: dict, live: dict) -> dict:
    losses = lambda r: [row["loss"] for row in r["state"]["loss"]]  # noqa: E731
    valids = lambda state: [v[k] for v in state["valid"] for k in sorted(v) if k not in ("stage", "step")]  # noqa: E731
    weights = max(float((cached["weights"][k] - live["weights"][k]).abs().max()) for k in cached["weights"])
    out = {"label": spec.label, "method": spec.method, "pocl": spec.pocl, "seed": spec.seed,
           "steps": cached["state"]["steps"],
           **{f"{mode}_{key}": r[key] for mode, r in (("cached", cached), ("live", live)) for key in ("total_s", "train_s", "valid_s")},
           "train_ratio": cached["train_s"] / live["train_s"], "total_ratio": cached["total_s"] / live["total_s"],
           "max_loss_diff": max_diff(losses(cached), losses(live)), "max_weight_diff": weights,
           "max_valid_diff": max_diff(valids(cached["state"]), valids(live["state"])),
           **drift(cached["state"]["loss"], live["state"]["loss"])}
    reg, key = ws.registry, runner.run_key(ws, spec)
    if reg.done(runner.KIND, key):
        recorded = reg.load(runner.KIND, key)["metrics"]["train"]
        out["registry_max_loss_diff"] = max_diff(losses(cached), [row["loss"] for row in recorded["loss"]])
        out["registry_max_valid_diff"] = max_diff(valids(cached["state"]), valids(recorded))
    return out


def summary(ws, rows: list[dict], n_off_policy: int) -> dict:
    cached, live = sum(r["cached_train_s"] for r in rows), sum(r["live_train_s"] for r in rows)
    steps = sum(r["steps"] for r in rows)
    grid_steps = n_off_policy * total_steps(len(ws.encoded("train")), ws.profile.kd)
    in_registry = [r for r in rows if "registry_max_loss_diff" in r]
    return {"runs": len(rows), "steps": steps, "cached_train_s": cached, "live_train_s": live,
            "train_ratio": cached / live,
            "total_ratio": sum(r["cached_total_s"] for r in rows) / sum(r["live_total_s"] for r in rows),
            "max_loss_diff": max(r["max_loss_diff"] for r in rows), "max_weight_diff": max(r["max_weight_diff"] for r in rows),
            "max_valid_diff": max(r["max_valid_diff"] for r in rows),
            "max_first_step_loss_diff": max(r.get("first_step_loss_diff", float("nan")) for r in rows),
            "earliest_step_over_tol": min((r["first_step_over_tol"] for r in rows if r.get("first_step_over_tol") is not None),
                                          default=None),
            "off_policy_runs_in_grid": n_off_policy,
            "estimated_grid_saving_min": (live - cached) / steps * grid_steps / 60,
            "registry_runs_compared": len(in_registry),
            "registry_max_loss_diff": max((r["registry_max_loss_diff"] for r in in_registry), default=None)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="keep the first N runs (default: all chosen; 2 with --quick)")
    ap.add_argument("--all", action="store_true", help="every off-policy run of the grid, not the representative subset")
    ap.add_argument("--workspace", default="auto", help="auto | laptop | smoke")
    ap.add_argument("--kd-epochs", type=float, default=None,
                    help="override the profile's kd.epochs for a short look (then no registry record matches)")
    ap.add_argument("--threads", type=int, default=1, help="1 = what each grid worker uses")
    ap.add_argument("--quick", action="store_true", help="smoke workspace, 2 runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ws, where = workspace(args.workspace, quick=args.quick)
    if args.kd_epochs:
        ws = replace(ws, profile=replace(ws.profile, kd=replace(ws.profile.kd, epochs=args.kd_epochs)))
    specs = off_policy_specs(ws, args.all)
    n_off_policy = len(off_policy_specs(ws, True))
    specs = specs[:args.runs or (2 if args.quick else len(specs))]
    ws.teacher_cache, ws.encoded("train")  # loaded once per grid worker: not timed
    scoring.validation_score(ws, ws.load_student_init(CPU))  # warm-up: the first greedy decode pays lazy initialisation
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_grid_cache.") as tmp:
        for k, spec in enumerate(specs, 1):
            cached, live = train_once(ws, spec, Path(tmp), True), train_once(ws, spec, Path(tmp), False)
            rows.append(compare(ws, spec, cached, live))
            r = rows[-1]
            print(f"[{k}/{len(specs)}] {r['label']} s{r['seed']}: train cached {r['cached_train_s']:.1f}s / live "
                  f"{r['live_train_s']:.1f}s = {r['train_ratio']:.2f} (with validation {r['total_ratio']:.2f}); "
                  f"max |loss diff| {r['max_loss_diff']:.1e} (step 0: {r['first_step_loss_diff']:.1e}; first > 1e-4 at "
                  f"step {r['first_step_over_tol']} of {r['steps']}), |weight diff| {r['max_weight_diff']:.1e}", flush=True)
    record = {"bench": "grid_cache", "meta": meta(args.quick, runs=len(specs), all=args.all, kd_epochs=ws.profile.kd.epochs,
                                                  **where),
              "rows": rows, "summary": summary(ws, rows, n_off_policy)}
    print({k: v for k, v in record["summary"].items()})
    write_json(args.out or default_out("grid_cache", args.quick), record)
    return record


if __name__ == "__main__":
    main()
