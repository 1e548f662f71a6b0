"""Benchmark the decoding loop: pocl's own KV-cache loop vs transformers' `model.generate` with pocl's two
LogitsProcessors (`generate.NgramBan`, `generate.GumbelNoise`), on the same model and prompts in one process.

    python benchmarks/bench_generate.py [--model laptop] [--n 128] [--reps 5] [--quick] [--out PATH]

Cases: the difficulty measurer's greedy pass (`difficulty.greedy_outputs_and_ce`, the laptop ranking benchmark's
batched path), plain greedy `generate.generate`, and sampling with evaluation's settings (temperature 1, top_k 0,
top_p 1, no_repeat_ngram_size 6). Each case asserts that both backends return the same tokens, then times them
alternately `--reps` times (so both see the same machine load) and reports the medians and their ratio.
Models and prompts as in bench_ranking.py (`--model` presets; the laptop preset falls back to a random student of the
laptop shape, which never emits EOS, so every row decodes all max_new_tokens). --quick: n = 16, 2 reps.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

from bench_ranking import load_model, random_samples  # noqa: E402
from benchlib import default_out, meta, write_json  # noqa: E402
from pocl_utils.difficulty import greedy_outputs_and_ce  # noqa: E402
from pocl_utils.modeling.generate import BACKENDS, generate  # noqa: E402

EVAL_SAMPLING = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=6)


def cases(model, samples, *, eos_id: int, max_new_tokens: int, batch_size: int) -> dict:
    """name -> (what it runs, backend -> callable returning the token lists)."""
    prompts = [s.prompt_ids for s in samples]
    kw = dict(eos_id=eos_id, pad_id=eos_id, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def ranking(backend):
        return lambda: greedy_outputs_and_ce(model, samples, backend=backend, **kw)[0]

    def plain(backend, **sampling):
        return lambda: generate(model, prompts, backend=backend, seed=0, **sampling, **kw)

    return {
        "ranking_greedy": ("difficulty.greedy_outputs_and_ce (shared prompt+response forward, then greedy decode)",
                           {b: ranking(b) for b in BACKENDS}),
        "generate_greedy": ("generate.generate, greedy", {b: plain(b) for b in BACKENDS}),
        "generate_sampled": ("generate.generate, sampled with evaluation's settings (T 1, no_repeat_ngram_size 6)",
                             {b: plain(b, **EVAL_SAMPLING) for b in BACKENDS}),
    }


def measure(fns: dict, reps: int) -> dict:
    """Outputs asserted equal, then `reps` alternating timed calls of each backend; medians and their ratio."""
    outs = {b: fn() for b, fn in fns.items()}  # also the warm-up
    assert outs["pocl"] == outs["transformers"], "the backends' tokens differ"
    times = {b: [] for b in fns}
    for _ in range(reps):
        for b, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[b].append(time.perf_counter() - t0)
    med = {b: statistics.median(t) for b, t in times.items()}
    return {"pocl_s": round(med["pocl"], 4), "transformers_s": round(med["transformers"], 4),
            "transformers_over_pocl": round(med["transformers"] / med["pocl"], 2),
            "times_s": {b: [round(x, 4) for x in t] for b, t in times.items()},
            "generated_tokens": sum(len(o) for o in outs["pocl"]), "outputs_identical": True}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="preset (tiny, laptop, smollm2, real-lite-student) or folder")
    parser.add_argument("--n", type=int, default=None, help="number of prompts (default 128; 16 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=None, help="timed calls per backend and case (default 5; 2 quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="16 prompts, 2 reps")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.n = args.n or (16 if args.quick else 128)
    args.reps = args.reps or (2 if args.quick else 5)

    torch.set_num_threads(args.threads)
    model, source = load_model(args.model, "cpu")
    eos_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    samples = random_samples(args.n, model.config.vocab_size, eos_id, args.seed)
    report = {"bench": "generate", "meta": meta(args.quick, model=args.model, n=args.n, reps=args.reps),
              "model": args.model, "model_source": source, "params": sum(p.numel() for p in model.parameters()),
              "n": args.n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "reps": args.reps,
              "threads": args.threads, "device": "cpu", "device_name": platform.processor(), "cases": {}}
    for name, (what, fns) in cases(model, samples, eos_id=eos_id, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size).items():
        r = report["cases"][name] = {"what": what, **measure(fns, args.reps)}
        print(f"{name:16s} pocl {r['pocl_s']:.3f} s | transformers {r['transformers_s']:.3f} s | "
              f"transformers / pocl {r['transformers_over_pocl']:.2f} (median of {args.reps}, outputs identical)")
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out or default_out("generate", args.quick), report)
    return report


if __name__ == "__main__":
    main()
