"""Peak memory and time of the divergence implementations (forward + backward): `losses`' naive oracle and its
chunked `divergence` (the CPU training step's), and the GPU training step's fused `training.objective`.

    python benchmarks/bench_divergence.py [--vocab 49152 --tokens 4096 --hidden 256 --kinds fkl,jsd]
                                          [--device cpu|cuda] [--quick] [--out benchmarks/results/divergence.json]

Variants, each run in its own subprocess so that one cannot inherit another's allocator state:
  naive         divergence_naive(student_logits, teacher_logits)        inputs: 2 logits tensors [T, V]
  chunked       divergence(...)                                         same inputs
  naive_linear  divergence_naive(hidden @ weight^T, teacher_logits)     inputs: hidden [T, H], weight [V, H],
                                                                               teacher logits [T, V]
  fused         linear_objective(hidden, weight, targets, teacher_logits,  same inputs + targets [T]
                                 alpha=0), the training step's KD term
"Extra peak" is the memory added on top of the inputs, after a warm-up call on 8 tokens (so code pages and
lazy initialisation are not charged to the variant): on CPU the process's max RSS after the run
(getrusage) minus its current RSS once the inputs are allocated and filled; on CUDA max_memory_allocated
minus memory_allocated at the same point. glibc's allocator is left at its defaults (what users get):
tensors above its mmap threshold (at most 32 MiB) go back to the OS when freed, smaller ones (chunk
temporaries) stay in the heap and count in RSS once. At small sizes heap reuse makes RSS noisy; use the
default sizes for numbers. The student gradient created by backward counts (every variant
makes one). Time: median over --reps forward+backward calls, wall clock and process CPU time (the latter is
steadier on a shared machine). Ratios compare chunked with naive and fused
with naive_linear (and naive) measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, default_out, meta, repo_relative

VARIANTS = ("naive", "chunked", "naive_linear", "fused")
BASELINE = {"chunked": "naive", "fused": "naive_linear"}  # what each memory-saving variant is compared with
MB = 2**20


# ------------------------------------------------------------------------------------------------ worker side


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    kb_or_b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb_or_b if sys.platform == "darwin" else kb_or_b * 1024  # Linux reports KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_inputs(spec: dict, device):
    """Filled (touched) input tensors; randn writes in place, so no temporaries inflate the baseline."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    t, v, h = spec["tokens"], spec["vocab"], spec["hidden"]
    teacher = torch.empty(t, v, device=device).normal_(0.0, 2.0, generator=gen)  # [T, V]
    if spec["variant"] in ("naive", "chunked"):
        student = torch.empty(t, v, device=device).normal_(0.0, 2.0, generator=gen).requires_grad_(True)  # [T, V]
        return {"student_logits": student, "teacher_logits": teacher}
    hidden = torch.empty(t, h, device=device).normal_(0.0, 1.0, generator=gen).requires_grad_(True)  # [T, H]
    weight = torch.empty(v, h, device=device).normal_(0.0, 2.0 / h**0.5, generator=gen).requires_grad_(True)  # [V, H]
    targets = torch.randint(0, v, (t,), device=device, generator=gen)  # [T], the fused step's CE targets
    return {"hidden": hidden, "weight": weight, "teacher_logits": teacher, "targets": targets}


def run_variant(name: str, inputs: dict, kind: str):
    from pocl_utils.losses import divergence, divergence_naive
    from pocl_utils.training.objective import linear_objective

    if name == "naive":
        return divergence_naive(inputs["student_logits"], inputs["teacher_logits"], kind)
    if name == "chunked":
        return divergence(inputs["student_logits"], inputs["teacher_logits"], kind)
    if name == "naive_linear":
        logits = inputs["hidden"] @ inputs["weight"].t()  # [T, V], the tensor the fused path never builds
        return divergence_naive(logits, inputs["teacher_logits"], kind)
    loss, _ = linear_objective(inputs["hidden"], inputs["weight"], inputs["targets"], inputs["teacher_logits"],
                               kind=kind, tau=1.0, alpha=0.0)
    return loss


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    # warm-up on 8 tokens: loads kernels/code pages and lazy state that no variant should be charged for
    run_variant(spec["variant"], make_inputs(dict(spec, tokens=8), device), spec["kind"]).backward()
    inputs = make_inputs(spec, device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, base_max = current_rss_bytes(), max_rss_bytes()
    times, cpu_times, value = [], [], None
    for _ in range(spec["reps"]):
        for x in inputs.values():
            x.grad = None
        start, cpu_start = time.perf_counter(), cpu_seconds()
        loss = run_variant(spec["variant"], inputs, spec["kind"])
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(cpu_seconds() - cpu_start)
        value = loss.item()
        del loss
    extra = torch.cuda.max_memory_allocated() - base if cuda else max_rss_bytes() - base
    return {
        "variant": spec["variant"], "kind": spec["kind"], "value": value,
        "extra_peak_bytes": int(extra), "times_s": times, "time_s": statistics.median(times),
        "cpu_times_s": cpu_times, "cpu_s": statistics.median(cpu_times),
        # CPU only: RSS high-water mark already above the current RSS before the run (resolution of the number)
        "baseline_slack_bytes": 0 if cuda else int(max(base_max - base, 0)),
    }


# ------------------------------------------------------------------------------------------------ driver side


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=None, help="V (default 49152; 8192 with --quick)")
    p.add_argument("--tokens", type=int, default=None, help="T = rows of logits (default 4096; 2048 with --quick)")
    p.add_argument("--hidden", type=int, default=256, help="H of the LM head in the *_linear / fused variants")
    p.add_argument("--kinds", default="fkl,jsd", help="comma-separated divergence kinds")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--reps", type=int, default=None, help="timed fwd+bwd calls per variant (default 3; 2 with --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--out", default=None, help="default benchmarks/results/divergence.json (runs/bench/quick/ with --quick)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec of one run
    args = p.parse_args(argv)
    args.vocab = args.vocab or (8192 if args.quick else 49152)
    args.tokens = args.tokens or (2048 if args.quick else 4096)
    args.reps = args.reps or (2 if args.quick else 3)
    args.out = args.out or default_out("divergence", args.quick)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda asked for but torch.cuda.is_available() is False")
    return args


def spawn(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['variant']}/{spec['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_ratios(results: list[dict], logits_bytes: int) -> None:
    by_key = {(r["kind"], r["variant"]): r for r in results}
    for r in results:
        r["extra_peak_MB"] = r["extra_peak_bytes"] / MB
        r["extra_peak_x_logits"] = r["extra_peak_bytes"] / logits_bytes
        for base_name in {BASELINE.get(r["variant"]), "naive"} - {None, r["variant"]}:
            base = by_key.get((r["kind"], base_name))
            if base is not None:
                r[f"mem_vs_{base_name}"] = r["extra_peak_bytes"] / max(base["extra_peak_bytes"], 1)
                r[f"time_vs_{base_name}"] = r["time_s"] / base["time_s"]
                r[f"cpu_vs_{base_name}"] = r["cpu_s"] / base["cpu_s"]
                r[f"abs_diff_vs_{base_name}"] = abs(r["value"] - base["value"])


def print_table(results: list[dict]) -> None:
    head = (f"{'kind':5} {'variant':13} {'extra MB':>9} {'x logits':>8} {'mem/base':>8} {'mem/naive':>9} "
            f"{'time s':>7} {'time/base':>9} {'cpu s':>6} {'cpu/base':>8} {'value':>12}")
    print(head)
    print("-" * len(head))
    for r in results:
        base = BASELINE.get(r["variant"])
        ratio = lambda key, fmt: format(r[key], fmt) if key in r else "-"  # noqa: E731
        print(
            f"{r['kind']:5} {r['variant']:13} {r['extra_peak_MB']:9.0f} {r['extra_peak_x_logits']:8.2f} "
            f"{ratio(f'mem_vs_{base}', '.3f'):>8} {ratio('mem_vs_naive', '.3f'):>9} {r['time_s']:7.2f} "
            f"{ratio(f'time_vs_{base}', '.2f'):>9} {r['cpu_s']:6.2f} {ratio(f'cpu_vs_{base}', '.2f'):>8} "
            f"{r['value']:12.6f}"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    logits_bytes = args.tokens * args.vocab * 4
    print(f"V={args.vocab} T={args.tokens} H={args.hidden} device={args.device} threads={args.threads} "
          f"reps={args.reps}; "
          f"one fp32 logits tensor = {logits_bytes / MB:.0f} MB", flush=True)
    results = []
    for kind in args.kinds.split(","):
        for variant in args.variants.split(","):
            spec = dict(variant=variant, kind=kind, vocab=args.vocab, tokens=args.tokens, hidden=args.hidden,
                        reps=args.reps, device=args.device, threads=args.threads)
            results.append(spawn(spec))
            r = results[-1]
            print(f"  {kind}/{variant}: {r['extra_peak_bytes'] / MB:.0f} MB, {r['time_s']:.2f} s wall, "
                  f"{r['cpu_s']:.2f} s cpu", flush=True)
    add_ratios(results, logits_bytes)
    print_table(results)
    config = {k: v for k, v in vars(args).items() if k != "worker"}
    machine = {"malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default"),
               "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
               "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"bench": "divergence", "meta": meta(args.quick), "config": config, "machine": machine,
              "logits_bytes": logits_bytes, "results": results}
    out.write_text(json.dumps(repo_relative(record), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
