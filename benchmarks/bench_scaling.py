"""How ranking and KD training time grow with the dataset size and the sequence length (fitted exponent b of t ~ x^b).

    python benchmarks/bench_scaling.py [--quick] [--n 512] [--lengths 8,16,32,64] [--out benchmarks/results/scaling.json]

Series, each timed --reps times (median), one thread:
  ranking vs N   difficulty.score_samples (greedy decode + reference CE + ROUGE-L) on N, 2N, 4N training examples
  KD epoch vs N  one epoch (ceil(N / batch) steps) of off-policy KD with cached teacher rows (kd.kd_loss_fn,
                 run_steps; forward KL, alpha 0.3, tau 1) on the same N, 2N, 4N examples
  ... vs length  the same two on N random-token examples of total length L (prompt L/2, response L/2); ranking's
                 greedy decode keeps its max_new_tokens budget (and may stop early at EOS), so only its
                 teacher-forced pass grows with L
Models: the laptop workspace's initial student, tokenizer and teacher cache when runs/laptop exists (not with --quick),
else the smoke profile's, prepared under runs/bench/. Sizes beyond the training set repeat examples under new
indices (the cost of an example does not depend on whether it was seen). The plot goes to figures/bench/scaling.png
(+ .pdf); with --quick to runs/bench/quick/.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from benchlib import ROOT, fit_exponent, meta, results_dir, timed, workspace, write_json

from pocl_utils.data import Encoded
from pocl_utils.difficulty import score_samples
from pocl_utils.training.batches import epoch_batches
from pocl_utils.training.kd import KDContext, kd_loss_fn
from pocl_utils.training.loop import run_steps
from pocl_utils.training.teacher_cache import TeacherCache, build_teacher_cache

FIGURES = ROOT / "figures" / "bench"


def repeated(ws, n: int) -> tuple[list[Encoded], list[list[str]], TeacherCache]:
    """n training examples (cycling through the set, fresh indices), their references and their cached teacher rows."""
    enc, rows = ws.encoded("train"), ws.sets["train"]
    src = [k % len(enc) for k in range(n)]
    examples = [Encoded(enc[s].prompt_ids, enc[s].response_ids, index=k) for k, s in enumerate(src)]
    refs = [rows[enc[s].index]["references"] for s in src]
    parts = [ws.teacher_cache.rows([s]) for s in src]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return examples, refs, TeacherCache(torch.cat(parts), offsets)


def synthetic(ws, n: int, length: int, teacher) -> tuple[list[Encoded], None, TeacherCache]:
    """n random-token examples of `length` tokens (half prompt, half response) and their exact teacher cache."""
    rng = np.random.default_rng(length)
    vocab = len(ws.tokenizer)
    examples = [Encoded(rng.integers(3, vocab, length // 2).tolist(), rng.integers(3, vocab, length - length // 2).tolist(),
                        index=k) for k in range(n)]
    return examples, None, build_teacher_cache(teacher, examples, ws.pad_id)


def ranking_seconds(ws, student, examples, refs, reps: int) -> float:
    new = ws.profile.max_new_tokens
    _, s, _ = timed(lambda: score_samples(student, ws.tokenizer, examples, max_new_tokens=new, references=refs), reps)
    return s


def kd_epoch_seconds(ws, examples, cache: TeacherCache, reps: int) -> float:
    spec = ws.profile.kd
    steps = math.ceil(len(examples) / spec.batch_size)

    times = []
    for _ in range(reps):
        student = ws.load_student_init(torch.device("cpu"))  # a fresh student each time, loaded outside the timing
        rng = np.random.default_rng(0)
        loss_fn = kd_loss_fn(student, KDContext(examples, ws.pad_id, ws.eos_id, cache=cache), kind="fkl", tau=1.0,
                             alpha=0.3, rng=rng)
        batches = epoch_batches(np.arange(len(examples)), spec.batch_size, rng)
        _, s, _ = timed(lambda: run_steps(student, loss_fn, batches, steps, spec))
        times.append(s)
    return float(np.median(times))


def series(ws, student, xs: list[int], make, reps: int, label: str) -> list[dict]:
    rows = []
    for x in xs:
        examples, refs, cache = make(x)
        rank_s = ranking_seconds(ws, student, examples, refs, reps)
        kd_s = kd_epoch_seconds(ws, examples, cache, reps)
        tokens = sum(e.length for e in examples)
        rows.append({"x": x, "examples": len(examples), "tokens": tokens, "ranking_s": rank_s, "kd_epoch_s": kd_s})
        print(f"  {label}={x:5d}: ranking {rank_s:7.3f} s, KD epoch {kd_s:7.3f} s ({tokens} tokens)", flush=True)
    return rows


def fits(rows: list[dict]) -> dict:
    xs = [r["x"] for r in rows]
    return {key: fit_exponent(xs, [r[f"{key}_s"] for r in rows]) for key in ("ranking", "kd_epoch")}


def plot(by_n: list[dict], by_len: list[dict], exps: dict, folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # a script that only writes files
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    from pocl_utils.analysis.figures import save_figure
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, rows, key, xlabel in ((axes[0], by_n, "n", "training examples N"), (axes[1], by_len, "length", "tokens per example")):
        for name, label in (("ranking", "ranking (score_samples)"), ("kd_epoch", "KD epoch (cached teacher)")):
            xs, ys = [r["x"] for r in rows], [r[f"{name}_s"] for r in rows]
            ax.loglog(xs, ys, "o-", label=f"{label}: b = {exps[key][name]:.2f}")
        ax.set_xticks(xs, [str(x) for x in xs])  # the measured sizes as plain numbers
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        for axis_fmt in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_fmt(FormatStrFormatter("%g"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("cost vs dataset size (t ~ N^b)")
    axes[1].set_title("cost vs sequence length (t ~ L^b)")
    fig.tight_layout()
    path = save_figure(fig, "scaling", folder)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="N of the size series (default 512; 16 with --quick)")
    ap.add_argument("--lengths", default=None, help="total tokens per example (default 8,16,32,64; 8,16,32 quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions, median (default 3; 1 with --quick)")
    ap.add_argument("--workspace", default="auto", help="auto | laptop | smoke")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--figure-dir", default=None, help="default figures/bench/ (runs/bench/quick/ with --quick)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, reps = args.n or (16 if args.quick else 512), args.reps or (1 if args.quick else 3)
    lengths = [int(x) for x in (args.lengths or ("8,16,32" if args.quick else "8,16,32,64")).split(",")]
    ws, where = workspace(args.workspace, quick=args.quick)
    student = ws.load_student_init(torch.device("cpu")).eval()
    teacher = ws.load_teacher(torch.device("cpu"))
    print(f"workspace {where['workspace']} ({ws.root}); N series {n}, {2 * n}, {4 * n}; lengths {lengths}")
    series(ws, student, [min(n, 32)], lambda x: repeated(ws, x), 1, "warm-up N")  # lazy initialisation, not timed
    by_n = series(ws, student, [n, 2 * n, 4 * n], lambda x: repeated(ws, x), reps, "N")
    by_len = series(ws, student, lengths, lambda L: synthetic(ws, n, L, teacher), reps, "L")
    exps = {"n": fits(by_n), "length": fits(by_len)}
    print(f"exponents vs N: {exps['n']}; vs length: {exps['length']}")
    figure = plot(by_n, by_len, exps, Path(args.figure_dir or (results_dir(True) if args.quick else FIGURES)))
    record = {"bench": "scaling", "meta": meta(args.quick, n=n, lengths=lengths, reps=reps, **where),
              "by_n": by_n, "by_length": by_len, "exponents": exps, "figure": str(figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure)}
    write_json(args.out or str(results_dir(args.quick) / "scaling.json"), record)
    return record


if __name__ == "__main__":
    main()
