"""Benchmark the difficulty measurer's student pass: naive per-sample loop vs batched + shared-cache scoring.

    python benchmarks/bench_ranking.py [--model PATH_OR_PRESET] [--n 128] [--quick] [--out benchmarks/results/ranking.json]

Both paths run on the same model and samples in one process; the script asserts identical greedy outputs and CE
(within 1e-5, relative for deep models), then times --reps calls of each, alternating (naive, batched, naive, ...) so
that a change of the machine's load touches both alike, and prints and saves the medians and their ratio. ROUGE-L is left out of the timing: both paths score
the same decoded texts with the same function, so it adds the same cost to each.
Default model: a random GPT-2-style student of ~0.14M parameters with random token ids (no tokenizer); a random
model never emits EOS, so every sample decodes the full max_new_tokens; a trained one stops early, which the naive
loop turns into fewer steps per sample, the batched one only once a whole batch has stopped. Presets: tiny; laptop (the laptop workspace's
initial student, else the student warm start of `benchlib.laptop_standin`, built as the laptop profile builds it); smollm2 (SmolLM2-135M-Instruct from data/cache/, else a random
Llama of its configuration); real-lite-student (a random Llama 2L x 64 on SmolLM2's vocabulary). --quick: n = 16.
The JSON records which model was used (`model_source`).
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

from benchlib import (LAPTOP_ROOT, SMOLLM2_FOLDER, default_out, laptop_available, laptop_standin, meta,  # noqa: E402
                      repo_relative)
from pocl_utils.data import Encoded  # noqa: E402
from pocl_utils.difficulty import greedy_outputs_and_ce, greedy_outputs_and_ce_naive  # noqa: E402

PRESETS = {  # name -> GPT2Config kwargs
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=128),
}
FOLDER_PRESETS = {"laptop": LAPTOP_ROOT / "student_init" / "model", "smollm2": SMOLLM2_FOLDER}
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


def random_preset(name: str, vocab: int | None = None) -> torch.nn.Module:
    """Seeded random weights of a preset's shape (the stand-in when its folder is missing); `vocab` replaces the laptop
    shape's vocabulary size (to separate the vocabulary's share of the speedup from the rest)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from pocl_utils.experiment.config import PROFILES, ModelSpec
    from pocl_utils.modeling.models import build_model
    torch.manual_seed(0)
    if name == "tiny":
        return GPT2LMHeadModel(GPT2Config(**PRESETS[name], bos_token_id=0, eos_token_id=0))
    if name == "laptop":
        p = PROFILES["laptop"]
        return build_model(p.student, vocab or p.vocab_size, p.max_len + p.max_new_tokens, seed=1)
    if name == "smollm2":
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    return build_model(ModelSpec(arch="llama", n_layer=2, n_embd=64, n_head=2), 49152, 512, seed=1)


def load_model(name: str, device: str, vocab: int | None = None) -> tuple[torch.nn.Module, str]:
    """(model, where it came from): a preset's folder, its random stand-in, or a local HF checkpoint folder."""
    from transformers import AutoModelForCausalLM

    folder = FOLDER_PRESETS.get(name, Path(name))
    if vocab is not None:
        if name != "laptop":
            raise SystemExit("--vocab applies to the random-init laptop shape only (--model laptop)")
        model, source = random_preset(name, vocab), f"random-init laptop shape, vocabulary {vocab}"
    elif name == "laptop" and not laptop_available():
        ws, which = laptop_standin()
        model, source = ws.load_student_init(torch.device("cpu")), f"student warm start of the {which}"
    elif folder.is_dir():
        model, source = AutoModelForCausalLM.from_pretrained(str(folder)), str(folder)
    elif name in (*PRESETS, *FOLDER_PRESETS, "real-lite-student"):
        model, source = random_preset(name), f"random-init {name} shape"
    else:
        raise SystemExit(f"--model: {name!r} is neither a preset (tiny, laptop, smollm2, real-lite-student) nor a "
                         f"local folder")
    return model.to(device).eval(), source


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
    parser.add_argument("--n", type=int, default=None, help="number of samples (default 128; 16 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=None, help="random-init laptop shape with this vocabulary size")
    parser.add_argument("--random-init", action="store_true",
                        help="--model laptop: a random-init model of the laptop shape (never emits EOS: every sample "
                             "decodes the full max_new_tokens)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls of each path, alternating (default 3; 1 quick)")
    parser.add_argument("--quick", action="store_true", help="16 samples")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.n = args.n or (16 if args.quick else 128)
    args.reps = args.reps or (1 if args.quick else 3)

    torch.set_num_threads(args.threads)
    if args.random_init and args.vocab is None:
        from pocl_utils.experiment.config import PROFILES
        args.vocab = PROFILES["laptop"].vocab_size
    model, source = load_model(args.model, args.device, args.vocab)
    eos_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    samples = random_samples(args.n, model.config.vocab_size, eos_id, args.seed)
    kw = dict(eos_id=eos_id, pad_id=eos_id, max_new_tokens=args.max_new_tokens)

    # warm-up both paths (first calls pay for lazy init and allocator growth)
    greedy_outputs_and_ce_naive(model, samples[:2], **kw)
    greedy_outputs_and_ce(model, samples[:2], batch_size=args.batch_size, **kw)
    naive = lambda: greedy_outputs_and_ce_naive(model, samples, **kw)  # noqa: E731
    batched = lambda: greedy_outputs_and_ce(model, samples, batch_size=args.batch_size, **kw)  # noqa: E731
    naive_times, fast_times = [], []
    for _ in range(args.reps):
        (naive_out, naive_ce), t = timed(naive, args.device)
        naive_times.append(t)
        (fast_out, fast_ce), t = timed(batched, args.device)
        fast_times.append(t)
    naive_s, fast_s = float(np.median(naive_times)), float(np.median(fast_times))
    mismatched = [i for i, (a, b) in enumerate(zip(naive_out, fast_out)) if a != b]
    assert not mismatched, f"greedy outputs differ at samples {mismatched[:10]}"
    ce_err = float(np.abs(naive_ce - fast_ce).max())
    # fp32 rounding of padded vs unpadded passes grows with depth: 1e-5 relative to CE (~10 nats on random tokens)
    assert np.allclose(naive_ce, fast_ce, rtol=1e-5, atol=1e-5), f"CE differs by {ce_err}"

    report = {
        "bench": "ranking", "meta": meta(args.quick, model=args.model, n=args.n), "model_source": source,
        "model": args.model, "params": sum(p.numel() for p in model.parameters()), "n": args.n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "threads": args.threads, "torch": torch.__version__,
        "reps": args.reps, "naive_times_s": [round(t, 4) for t in naive_times],
        "batched_times_s": [round(t, 4) for t in fast_times],
        "naive_s": round(naive_s, 4), "batched_s": round(fast_s, 4), "speedup": round(naive_s / fast_s, 2),
        "max_ce_abs_diff": ce_err, "generated_tokens": sum(len(o) for o in fast_out),
    }
    print(f"naive {naive_s:.3f} s | batched {fast_s:.3f} s | speedup {naive_s / fast_s:.1f}x "
          f"(n={args.n}, {report['params']} params, {args.device}, outputs identical, max CE diff {ce_err:.1e})")
    out = Path(args.out or default_out("ranking", args.quick))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(repo_relative(report), indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
