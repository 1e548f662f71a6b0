"""Achieved FLOP/s of one KD step of the laptop models against this machine's measured dense-matmul peak.

    python benchmarks/bench_flops.py [--quick] [--threads 1,2] [--out benchmarks/results/flops.json]

Peak: torch.matmul of fp32 square matrices (2 n^3 FLOPs each; sizes 1024/2048/4096, 256/512 with --quick), the best
median over sizes, per thread count.
Steps (the laptop profile: teacher GPT-2 4L x 128, student 2L x 48, vocabulary 512, batch 32 of <= 64 tokens; the
workspace's models and training examples when runs/laptop exists, else same-shaped random-init models and random
tokens of the laptop's lengths - FLOPs and time do not depend on the weights):
  cached   student forward + backward with cached teacher rows + clip + AdamW step (step.step_loss, as loop.run_steps)
  live     the teacher forward for the rows, then the cached step
  teacher  the teacher forward alone (step.teacher_logits)
FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one call (it counts the matmuls that really run,
e.g. the student's LM head on target rows only). It does not count CPU scaled-dot-product attention, so that is
added analytically: 4 B T^2 d per layer forward (QK^T and AV), 3x that for forward + backward. The analytic total,
  forward = 2 * 12 L d^2 * B T + 4 L B T^2 d + 2 d V * rows   (rows = target positions, for the student and the
  teacher), forward + backward = 3 x forward,
is reported beside the counter's as a cross-check. Elementwise work (softmax, layer norm, GELU, AdamW) is not counted:
FLOP/s here means matmul FLOP/s, the work a GPU or BLAS can be efficient on.
If the fraction of peak is low, a torch.profiler table of one thread's cached steps says where the time goes, and
what-ifs (batch 128; AdamW(fused=True); the student's GELU as one fused tanh kernel) show what bigger matmuls, fewer
optimizer kernels or fewer elementwise kernels would give.
Both cores, as the grid uses them: two 1-thread worker processes time the cached step at the same moment; their summed
GFLOP/s against the 2-thread matmul peak is the "2 workers x 1 thread" row (the grid runs two such workers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchlib import default_out, laptop_available, meta, workspace, write_json

from pocl_utils.experiment.config import PROFILES
from pocl_utils.data import Encoded
from pocl_utils.modeling.models import build_model, n_params
from pocl_utils.training.batches import Batch, make_batch
from pocl_utils.training.loop import apply_grads, optimizer_for
from pocl_utils.training.step import step_loss, teacher_logits

MATMUL_OPS = ("mm", "addmm", "bmm", "matmul", "linear", "attention", "baddbmm")


# ---- peak ----------------------------------------------------------------------------------------------------------


def seconds(fn) -> float:
    """Wall time of one call of fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_s(fn, reps: int) -> float:
    """Median wall time of `reps` consecutive calls of fn()."""
    return statistics.median(seconds(fn) for _ in range(reps))


def peak_matmul(sizes: list[int], reps: int) -> dict:
    """Best median GFLOP/s of fp32 n x n @ n x n over `sizes` at the current thread count."""
    by_size = []
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        torch.matmul(a, b)  # warm-up: BLAS thread pool and packing buffers
        med = median_s(lambda: torch.matmul(a, b), reps)
        by_size.append({"n": n, "s": med, "gflops": 2 * n**3 / med / 1e9})
    return {"gflops": max(r["gflops"] for r in by_size), "by_size": by_size}


# ---- the laptop models and one batch -------------------------------------------------------------------------------


def laptop_setup(quick: bool, batch_size: int) -> dict:
    p = PROFILES["laptop"]
    if laptop_available() and not quick:
        ws, _ = workspace("laptop")
        enc = ws.encoded("train")
        pick = np.random.default_rng(0).permutation(len(enc))[:batch_size]
        return {"student": ws.load_student_init("cpu"), "teacher": ws.load_teacher("cpu"), "pad_id": ws.pad_id,
                "examples": [enc[i] for i in pick], "source": "laptop workspace models, a random training batch"}
    rng = np.random.default_rng(0)  # lengths like the laptop world's: prompts 20-40 tokens, responses 8-24
    examples = [Encoded(rng.integers(3, p.vocab_size, rng.integers(20, 41)).tolist(),
                        rng.integers(3, p.vocab_size, rng.integers(8, 25)).tolist(), i) for i in range(batch_size)]
    n_pos = p.max_len + p.max_new_tokens
    return {"student": build_model(p.student, p.vocab_size, n_pos, seed=1), "pad_id": 0, "examples": examples,
            "teacher": build_model(p.teacher, p.vocab_size, n_pos, seed=0).eval(),
            "source": "random-init models of the laptop shapes, random tokens of laptop lengths"}


def with_fused_gelu(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a GPT-2 whose MLP activation is the one-kernel tanh GELU (same formula as gelu_new)."""
    import copy

    from transformers.activations import ACT2FN
    model = copy.deepcopy(model)
    for block in model.transformer.h:
        block.mlp.act = ACT2FN["gelu_pytorch_tanh"]
    return model


def step_fns(setup: dict, batch: Batch, fused_adamw: bool = False) -> dict:
    """name -> a callable running one step as loop.run_steps does (fresh optimizer state, fixed batch)."""
    student, teacher = setup["student"], setup["teacher"]
    spec = PROFILES["laptop"].kd
    opt, _ = optimizer_for(student, spec, 1000)
    if fused_adamw:
        opt = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    rows = teacher_logits(teacher, batch)  # [N, V] what the cache would hand over
    student.train()

    def train_step(teacher_rows):
        loss, _ = step_loss(student, batch, teacher_rows, kind="fkl", tau=1.0, alpha=0.3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        apply_grads(student, opt, spec)

    return {"cached": lambda: train_step(rows), "live": lambda: train_step(teacher_logits(teacher, batch)),
            "teacher": lambda: teacher_logits(teacher, batch)}


# ---- FLOPs ---------------------------------------------------------------------------------------------------------


def counted_flops(fn) -> tuple[int, bool]:
    """(FLOPs FlopCounterMode sees in one call, whether any attention op was among them)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    ops = counter.get_flop_counts().get("Global", {})
    return counter.get_total_flops(), any("attention" in str(op) for op in ops)


def analytic_flops(model, batch: Batch, head_rows: int) -> dict:
    """Forward FLOPs of a GPT-2 on the padded batch: block matmuls, attention, and the LM head on head_rows rows."""
    cfg = model.config
    B, T = batch.input_ids.shape
    L, d, V = cfg.n_layer, cfg.n_embd, cfg.vocab_size
    blocks = 2 * 12 * L * d * d * B * T
    attention = 4 * L * B * T * T * d
    head = 2 * d * V * head_rows
    return {"blocks": blocks, "attention": attention, "head": head, "forward": blocks + attention + head}


def step_flops(setup: dict, batch: Batch, fns: dict) -> dict:
    n_rows = int((batch.labels != -100).sum())
    student_fb, student_att = counted_flops(fns["cached"])
    teacher_f, teacher_att = counted_flops(fns["teacher"])
    s_an = analytic_flops(setup["student"], batch, n_rows)
    t_an = analytic_flops(setup["teacher"], batch, n_rows)  # step.teacher_logits: the LM head on target rows only
    student_fb += 0 if student_att else 3 * s_an["attention"]  # forward + backward of the uncounted SDPA
    teacher_f += 0 if teacher_att else t_an["attention"]
    return {"cached": student_fb, "teacher": teacher_f, "live": student_fb + teacher_f,
            "attention_added_analytically": not (student_att and teacher_att),
            "analytic": {"student_fwd_bwd": 3 * s_an["forward"], "teacher_fwd": t_an["forward"],
                         "student_terms_fwd": s_an, "teacher_terms_fwd": t_an},
            "target_rows": n_rows, "padded_tokens": batch.input_ids.numel()}


# ---- timing and profile --------------------------------------------------------------------------------------------


def time_steps(fns: dict, flops: dict, peak: float, threads: int, reps: int, warmup: int) -> list[dict]:
    """Median time of each step. The steps take turns (cached, live, teacher, cached, ...) so that a drift of the
    machine's speed during the measurement (frequency, other load) touches all of them alike; each turn runs its step
    twice and times the second call, which finds the caches as consecutive steps of one kind (as in a run) leave them."""
    names = ("cached", "live", "teacher")
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            fns[name]()
            times[name].append(seconds(fns[name]))
    out = []
    for name in names:
        s = statistics.median(times[name])
        out.append({"threads": threads, "step": name, "ms": s * 1e3, "gflops": flops[name] / s / 1e9,
                    "fraction_of_peak": flops[name] / s / 1e9 / peak, "peak_gflops": peak})
        print(f"  threads {threads} {name:8s} {s * 1e3:7.2f} ms  {flops[name] / s / 1e9:6.2f} GFLOP/s  "
              f"{100 * flops[name] / s / 1e9 / peak:5.1f}% of peak", flush=True)
    return out


def profile_table(fn, steps: int, top: int = 12) -> dict:
    """Self CPU time per op over `steps` calls: the top ops and the share spent in matmul/attention kernels."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    matmul = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in MATMUL_OPS))
    rows = [{"op": e.key, "self_share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps,
             "self_us_per_step": e.self_cpu_time_total / steps} for e in events[:top]]
    return {"top_ops": rows, "matmul_share": matmul / total, "ops_per_step": sum(e.count for e in events) / steps,
            "self_us_per_step": total / steps}


def what_ifs(setup: dict, peak: float, reps: int) -> list[dict]:
    """One-thread cached steps with (a) batch 128, 4x the tokens per matmul, (b) AdamW(fused=True) and (c) the
    student's GELU as one tanh kernel."""
    out = []
    base = make_batch(setup["examples"], setup["pad_id"])
    big = make_batch(setup["examples"] * 4, setup["pad_id"])
    gelu = {**setup, "student": with_fused_gelu(setup["student"])}
    for label, batch, fused, where in (("batch 128 (4x rows per matmul)", big, False, setup),
                                       ("AdamW(fused=True)", base, True, setup),
                                       ("GELU as one kernel (gelu_pytorch_tanh)", base, False, gelu)):
        try:
            fns = step_fns(where, batch, fused_adamw=fused)
        except (RuntimeError, TypeError) as e:  # fused AdamW not built for this CPU/torch
            out.append({"what_if": label, "error": str(e)[:200]})
            continue
        flops = counted_flops(fns["cached"])[0] + 3 * analytic_flops(setup["student"], batch, 0)["attention"]
        fns["cached"]()
        s = median_s(fns["cached"], reps)
        out.append({"what_if": label, "ms": s * 1e3, "gflops": flops / s / 1e9, "fraction_of_peak": flops / s / 1e9 / peak})
    return out


def worker_loop(quick: bool, reps: int, start_at: float) -> dict:
    """One 1-thread worker: warm up, wait for the common start, time `reps` cached steps."""
    torch.set_num_threads(1)
    setup = laptop_setup(quick, PROFILES["laptop"].kd.batch_size)
    fn = step_fns(setup, make_batch(setup["examples"], setup["pad_id"]))["cached"]
    for _ in range(max(2, reps // 5)):
        fn()
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    ms = median_s(fn, reps) * 1e3
    return {"ms": ms, "start": t0, "end": time.time()}


def two_workers(quick: bool, reps: int, flops: dict, peak: float) -> dict:
    """Two 1-thread processes timing the cached step at once (as the grid's two workers run): summed GFLOP/s."""
    start_at = time.time() + 30  # both have loaded and warmed up by then
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--reps", str(reps), "--start-at", str(start_at)]
    procs = [subprocess.Popen(cmd + (["--quick"] if quick else []), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    overlap = max(0.0, min(o["end"] for o in outs) - max(o["start"] for o in outs))
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    gflops = sum(flops["cached"] / (o["ms"] / 1e3) / 1e9 for o in outs)
    row = {"threads": "2 workers x 1", "step": "cached", "ms": statistics.mean(o["ms"] for o in outs), "gflops": gflops,
           "fraction_of_peak": gflops / peak, "peak_gflops": peak, "worker_ms": [o["ms"] for o in outs],
           "overlap_fraction": overlap / span if span else 0.0}
    print(f"  2 workers x 1 thread cached {row['ms']:7.2f} ms each  {gflops:6.2f} GFLOP/s together  "
          f"{100 * row['fraction_of_peak']:5.1f}% of the 2-thread peak (overlap {100 * row['overlap_fraction']:.0f}%)",
          flush=True)
    return row


def explain(prof: dict, steps: list[dict], setup: dict) -> str:
    cached = next(r for r in steps if r["threads"] == 1 and r["step"] == "cached")
    d = setup["student"].config.n_embd
    return (f"one thread reaches {100 * cached['fraction_of_peak']:.0f}% of its matmul peak on the cached step. "
            f"{100 * prof['matmul_share']:.0f}% of the step's CPU time is in matmul/attention kernels; the rest is "
            f"~{prof['ops_per_step']:.0f} operator calls per step (nested ones included: layer norms, GELU, softmax over the vocabulary, the "
            f"divergence, gradient clipping, AdamW), each paying dispatch overhead on tensors of a few hundred kB. "
            f"The matmuls themselves are tiny (inner dimension d = {d}, a few thousand rows), far below the sizes at "
            f"which BLAS reaches peak.")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--sizes", default=None, help="matmul sizes for the peak (default 1024,2048,4096; 256,512 quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 20; 3 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process of the two-worker row
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker_loop(args.quick, args.reps or (3 if args.quick else 20), args.start_at)), flush=True)
        return {}
    threads = [int(t) for t in args.threads.split(",")]
    sizes = [int(s) for s in (args.sizes or ("256,512" if args.quick else "1024,2048,4096")).split(",")]
    reps = args.reps or (3 if args.quick else 20)
    torch.manual_seed(0)
    setup = laptop_setup(args.quick, PROFILES["laptop"].kd.batch_size)
    batch = make_batch(setup["examples"], setup["pad_id"])
    flops = step_flops(setup, batch, step_fns(setup, batch))
    peaks, steps = {}, []
    for t in threads:
        torch.set_num_threads(t)
        peaks[str(t)] = peak_matmul(sizes, max(2, min(reps, 5)))
        print(f"threads {t}: matmul peak {peaks[str(t)]['gflops']:.1f} GFLOP/s", flush=True)
        steps += time_steps(step_fns(setup, batch), flops, peaks[str(t)]["gflops"], t, reps, warmup=max(2, reps // 5))
    if 2 in threads:
        steps.append(two_workers(args.quick, reps, flops, peaks["2"]["gflops"]))
    torch.set_num_threads(1)
    prof = profile_table(step_fns(setup, batch)["cached"], steps=max(3, reps // 2))
    record = {"bench": "flops", "meta": meta(args.quick, sizes=sizes, reps=reps, threads=threads, source=setup["source"]),
              "models": {"student_params": n_params(setup["student"]), "teacher_params": n_params(setup["teacher"])},
              "peak": peaks, "flops": flops, "steps": steps, "profile_1_thread": prof,
              "what_if_1_thread": what_ifs(setup, peaks.get("1", peaks[str(threads[0])])["gflops"], reps),
              "explanation": explain(prof, steps, setup) if 1 in threads else ""}
    print(record["explanation"])
    for w in record["what_if_1_thread"]:
        print(f"  what if {w['what_if']}: " + (f"{w['gflops']:.2f} GFLOP/s, {100 * w['fraction_of_peak']:.1f}% of peak"
                                               if "gflops" in w else w["error"]))
    write_json(args.out or default_out("flops", args.quick), record)
    return record


if __name__ == "__main__":
    main()
