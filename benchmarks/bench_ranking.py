"""Benchmark the difficulty measurer's student pass: naive per-sample loop vs batched + shared-cache scoring.

    python benchmarks/bench_ranking.py [--model PATH_OR_PRESET] [--n 128] [--out benchmarks/results/ranking.json]

Both paths run on the same model and samples in one process; the script asserts identical greedy outputs and CE
(within 1e-5), then prints and saves the times and the speedup. ROUGE-L is left out of the timing: both paths score
the same decoded texts with the same function, so it adds the same cost to each.
Default model: a random GPT-2-style student of ~0.14M parameters with random token ids (no tokenizer); a random
model never emits EOS, so every sample decodes the full max_new_tokens.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pocl_utils.data import Encoded  # noqa: E402
from pocl_utils.difficulty import greedy_outputs_and_ce, greedy_outputs_and_ce_naive  # noqa: E402

PRESETS = {  # name -> GPT2Config kwargs
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=128),
}


def load_model(name: str, device: str) -> torch.nn.Module:
    """A preset built from random weights (seeded), or a local HF checkpoint folder."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if name in PRESETS:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(**PRESETS[name], bos_token_id=0, eos_token_id=0))
    elif Path(name).is_dir():
        model = AutoModelForCausalLM.from_pretrained(name)
    else:
        raise SystemExit(f"--model: {name!r} is neither a preset ({', '.join(PRESETS)}) nor a local folder")
    return model.to(device).eval()


def random_samples(n: int, vocab_size: int, eos_id: int, seed: int) -> list[Encoded]:
    """Prompts of 20-48 random tokens, responses of 8-24 random tokens ending in EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(1, vocab_size, rng.integers(20, 49)).tolist()
        response = rng.integers(1, vocab_size, rng.integers(7, 24)).tolist() + [eos_id]
        out.append(Encoded(prompt, response, index=i))
    return out


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help=f"preset ({', '.join(PRESETS)}) or local HF folder")
    parser.add_argument("--n", type=int, default=128, help="number of samples")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/ranking.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device)
    eos_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    samples = random_samples(args.n, model.config.vocab_size, eos_id, args.seed)
    kw = dict(eos_id=eos_id, pad_id=eos_id, max_new_tokens=args.max_new_tokens)

    # warm-up both paths (first calls pay for lazy init and allocator growth)
    greedy_outputs_and_ce_naive(model, samples[:2], **kw)
    greedy_outputs_and_ce(model, samples[:2], batch_size=args.batch_size, **kw)
    (naive_out, naive_ce), naive_s = timed(lambda: greedy_outputs_and_ce_naive(model, samples, **kw), args.device)
    (fast_out, fast_ce), fast_s = timed(
        lambda: greedy_outputs_and_ce(model, samples, batch_size=args.batch_size, **kw), args.device)

    mismatched = [i for i, (a, b) in enumerate(zip(naive_out, fast_out)) if a != b]
    assert not mismatched, f"greedy outputs differ at samples {mismatched[:10]}"
    ce_err = float(np.abs(naive_ce - fast_ce).max())
    assert ce_err <= 1e-5, f"CE differs by {ce_err}"

    report = {
        "model": args.model, "params": sum(p.numel() for p in model.parameters()), "n": args.n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "threads": args.threads, "torch": torch.__version__,
        "naive_s": round(naive_s, 4), "batched_s": round(fast_s, 4), "speedup": round(naive_s / fast_s, 2),
        "max_ce_abs_diff": ce_err, "generated_tokens": sum(len(o) for o in fast_out),
    }
    print(f"naive {naive_s:.3f} s | batched {fast_s:.3f} s | speedup {naive_s / fast_s:.1f}x "
          f"(n={args.n}, {report['params']} params, {args.device}, outputs identical, max CE diff {ce_err:.1e})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
