"""Top-k teacher cache vs the exact one: memory per token and the error it puts into the KD loss, side by side.

    python benchmarks/bench_topk_cache.py [--quick] [--ks 8,32,128,512] [--out benchmarks/results/topk_cache.json]

Two vocabularies: SmolLM2's 49,152 and the laptop world's 512. For each, the exact teacher rows of a few hundred
response tokens are computed once, then every k is compressed (`train.compress_top_k`) and rebuilt (`expand_top_k`,
remainder spread uniformly), and compared with the exact rows on:
  bytes per token of the cache (exact 4 V; top-k 8 k + 4), and the ratio;
  KL(p || p_hat) per token at tau = 1 (the rebuilt distribution's own error) and the remainder mass r;
  for every divergence kind at tau 1 and 2: the KD loss tau^2 D(p_tau || q_tau) with the exact and the rebuilt teacher
  (relative error) and the relative L2 error of its gradient w.r.t. the student logits.
Where the outputs come from (recorded as `source` in the JSON):
  49,152: SmolLM2-135M-Instruct (data/cache/smollm2-135m-instruct) on Dolly prompts when both exist, else a randomly
          initialised Llama on random tokens; the student is a random-init Llama 2L x 64 (real-lite's shape).
  512:    the laptop workspace's trained teacher and initial student on its training examples when runs/laptop
          exists, else randomly initialised models of the laptop shapes on random tokens.
A randomly initialised teacher is nearly uniform, so its top-k error is far smaller than a trained one's: such rows
are flagged "representative": false. --quick uses random-init tiny models and a few tokens.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchlib import SMOLLM2_FOLDER, default_out, laptop_available, meta, workspace, write_json

from pocl_utils.config import PROFILES, ModelSpec
from pocl_utils.data import Encoded
from pocl_utils.losses import KINDS, divergence
from pocl_utils.models import build_model
from pocl_utils.train import (TeacherCache, build_teacher_cache, compress_top_k, expand_top_k, make_batch,
                              student_logits_at_targets)

TAUS = (1.0, 2.0)
SMOL_VOCAB = 49152


# ---- where the teacher/student outputs come from -------------------------------------------------------------------


def random_examples(n: int, vocab: int, prompt: tuple[int, int], response: tuple[int, int], seed: int = 0) -> list[Encoded]:
    rng = np.random.default_rng(seed)
    return [Encoded(rng.integers(3, vocab, rng.integers(*prompt)).tolist(),
                    rng.integers(3, vocab, rng.integers(*response)).tolist(), i) for i in range(n)]


def laptop_source(quick: bool, n: int) -> dict:
    p = PROFILES["laptop"]
    if laptop_available() and not quick:
        ws, _ = workspace("laptop")
        enc = ws.encoded("train")
        pick = np.random.default_rng(0).choice(len(enc), size=min(n, len(enc)), replace=False)
        return {"teacher": ws.load_teacher("cpu"), "student": ws.load_student_init("cpu").eval(),
                "encoded": [enc[i] for i in sorted(pick)], "pad_id": ws.pad_id, "representative": True,
                "source": "laptop workspace: trained teacher (4L x 128) and initial student (2L x 48), training examples"}
    teacher_spec, student_spec = (ModelSpec(n_layer=1, n_embd=32, n_head=2), ModelSpec(n_layer=1, n_embd=16, n_head=2)) \
        if quick else (p.teacher, p.student)
    return {"teacher": build_model(teacher_spec, p.vocab_size, 128, seed=0).eval(),
            "student": build_model(student_spec, p.vocab_size, 128, seed=1).eval(),
            "encoded": random_examples(n, p.vocab_size, (10, 40), (5, 24)), "pad_id": 0, "representative": False,
            "source": f"random-init GPT-2 teacher {teacher_spec.n_layer}L x {teacher_spec.n_embd} and student "
                      f"{student_spec.n_layer}L x {student_spec.n_embd}, random tokens"}


def smollm2_examples(tok, n: int, max_response: int) -> list[Encoded] | None:
    """n Dolly training examples in the MiniLLM template, responses cut to max_response tokens; None without data."""
    from pocl_utils import data as D
    for root in (None, Path(__file__).resolve().parents[2] / "shared" / "data"):
        try:
            rows = D.load_real("train", root)
            break
        except D.MissingDataError:
            rows = None
    if rows is None:
        return None
    rows = [rows[i] for i in np.random.default_rng(0).choice(len(rows), size=4 * n, replace=False)]
    enc, _ = D.encode_examples(rows, tok, max_prompt_len=352, max_len=416)
    return [replace(e, response_ids=e.response_ids[:max_response]) for e in enc[:n]]


def smollm2_source(quick: bool, n: int, max_response: int) -> dict:
    student = build_model(ModelSpec(arch="llama", n_layer=2, n_embd=64, n_head=2), SMOL_VOCAB, 512, seed=1).eval()
    if (SMOLLM2_FOLDER / "model.safetensors").is_file() and not quick:
        from pocl_utils.models import load_pretrained, load_tokenizer
        tok = load_tokenizer(SMOLLM2_FOLDER)
        enc = smollm2_examples(tok, n, max_response)
        data = "Dolly training prompts (MiniLLM template)" if enc else "random tokens (no real data found)"
        enc = enc or random_examples(n, SMOL_VOCAB, (20, 120), (max_response, max_response + 1))
        return {"teacher": load_pretrained(SMOLLM2_FOLDER).eval(), "student": student, "encoded": enc,
                "pad_id": int(tok.pad_token_id), "representative": True,
                "source": f"SmolLM2-135M-Instruct teacher, {data}; random-init Llama 2L x 64 student"}
    spec = ModelSpec(arch="llama", n_layer=1, n_embd=32, n_head=2) if quick else ModelSpec(arch="llama", n_layer=2, n_embd=64, n_head=2)
    return {"teacher": build_model(spec, SMOL_VOCAB, 512, seed=0).eval(), "student": student,
            "encoded": random_examples(n, SMOL_VOCAB, (10, 40), (max_response, max_response + 1)), "pad_id": 0,
            "representative": False, "source": f"random-init Llama teacher {spec.n_layer}L x {spec.n_embd} and "
                                               f"student 2L x 64, random tokens (SmolLM2 cache not used)"}


@torch.no_grad()
def exact_rows(src: dict) -> tuple[TeacherCache, torch.Tensor]:
    """The exact teacher cache of the examples and the student's logits at the same positions, [R, V] each."""
    cache = build_teacher_cache(src["teacher"], src["encoded"], src["pad_id"])
    parts = [student_logits_at_targets(src["student"], make_batch(src["encoded"][s:s + 8], src["pad_id"]))
             for s in range(0, len(src["encoded"]), 8)]
    return cache, torch.cat(parts).float()


# ---- the comparison ------------------------------------------------------------------------------------------------


def kl_per_token(teacher_rows: torch.Tensor, rebuilt: torch.Tensor) -> torch.Tensor:
    """KL(p || p_hat) per row in fp64, 64 rows at a time, [R]."""
    out = []
    for s in range(0, len(teacher_rows), 64):
        logp = torch.log_softmax(teacher_rows[s:s + 64].double(), -1)
        out.append((logp.exp() * (logp - torch.log_softmax(rebuilt[s:s + 64].double(), -1))).sum(-1))
    return torch.cat(out)


def loss_and_grad(student_rows: torch.Tensor, teacher_rows: torch.Tensor, kind: str, tau: float):
    s = student_rows.clone().requires_grad_(True)
    loss = divergence(s, teacher_rows, kind, temperature=tau)
    loss.backward()
    return loss.item(), s.grad


def compare_k(cache: TeacherCache, student_rows: torch.Tensor, k: int, exact: dict) -> dict:
    """One k: memory, the rebuilt distribution's error, and the KD loss/gradient error for each kind and tau."""
    top, ids, rest = compress_top_k(cache.logits, k)
    small = TeacherCache(None, cache.offsets, top, ids, rest, cache.vocab_size)
    rebuilt = expand_top_k(top, ids, rest, cache.vocab_size)  # [R, V]
    row = {"k": k, "bytes_per_token": small.bytes_per_token(), "memory_ratio": small.bytes_per_token() / cache.bytes_per_token(),
           "kl_mean": float(kl_per_token(cache.logits, rebuilt).mean()), "tail_mass_mean": float(rest.exp().mean()),
           "tail_mass_max": float(rest.exp().max()), "rows_ms_per_batch": rows_ms(small), "errors": []}
    for (kind, tau), (value, grad) in exact.items():
        approx, grad_hat = loss_and_grad(student_rows, rebuilt, kind, tau)
        row["errors"].append({"kind": kind, "tau": tau, "exact": value, "approx": approx, "abs_err": abs(approx - value),
                              "rel_err": abs(approx - value) / max(abs(value), 1e-12),
                              "grad_rel_err": float((grad_hat - grad).norm() / grad.norm().clamp_min(1e-30))})
    worst = lambda tau, key: max(e[key] for e in row["errors"] if e["tau"] == tau)  # noqa: E731
    row.update({f"max_rel_err_tau{tau:g}": worst(tau, "rel_err") for tau in TAUS})
    row.update({f"max_grad_rel_err_tau{tau:g}": worst(tau, "grad_rel_err") for tau in TAUS})
    return row


def rows_ms(cache: TeacherCache, batch: int = 32) -> float:
    """Milliseconds for `cache.rows` of one training batch of `batch` examples (top-k: includes the rebuild)."""
    idx = list(range(min(batch, len(cache.offsets) - 1)))
    cache.rows(idx)
    t0 = time.perf_counter()
    for _ in range(5):
        cache.rows(idx)
    return (time.perf_counter() - t0) / 5 * 1e3


def bench_vocab(name: str, src: dict, ks: list[int]) -> dict:
    t0 = time.perf_counter()
    cache, student_rows = exact_rows(src)
    vocab = cache.vocab_size
    exact = {(kind, tau): loss_and_grad(student_rows, cache.logits, kind, tau) for kind in KINDS for tau in TAUS}
    rows = [compare_k(cache, student_rows, k, exact) for k in ks if k <= vocab]
    out = {"name": name, "vocab": vocab, "source": src["source"], "representative": src["representative"],
           "examples": len(src["encoded"]), "tokens": int(cache.offsets[-1]),
           "exact_bytes_per_token": cache.bytes_per_token(), "exact_rows_ms_per_batch": rows_ms(cache), "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    print_vocab(out)
    return out


def print_vocab(v: dict) -> None:
    print(f"\nV={v['vocab']} ({v['source']}; {v['tokens']} tokens): exact {v['exact_bytes_per_token']:.0f} B/token")
    print(f"{'k':>5} {'B/token':>8} {'mem ratio':>9} {'KL(p||p^)':>10} {'tail r':>8} {'max rel err t=1':>15} "
          f"{'t=2':>8} {'grad err t=1':>12} {'t=2':>8}")
    for r in v["rows"]:
        print(f"{r['k']:>5} {r['bytes_per_token']:>8.0f} {r['memory_ratio']:>9.4f} {r['kl_mean']:>10.2e} "
              f"{r['tail_mass_mean']:>8.3f} {r['max_rel_err_tau1']:>15.2e} {r['max_rel_err_tau2']:>8.2e} "
              f"{r['max_grad_rel_err_tau1']:>12.2e} {r['max_grad_rel_err_tau2']:>8.2e}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="8,32,128,512", help="comma-separated k values")
    ap.add_argument("--examples", type=int, default=None, help="examples per vocabulary (default 16; 4 with --quick)")
    ap.add_argument("--max-response", type=int, default=48, help="SmolLM2 responses cut to this many tokens")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="random-init tiny models, a few tokens")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]
    n = args.examples or (4 if args.quick else 16)
    max_response = 8 if args.quick else args.max_response
    vocabs = [bench_vocab("SmolLM2 vocabulary", smollm2_source(args.quick, n, max_response), ks),
              bench_vocab("laptop vocabulary", laptop_source(args.quick, 8 * n), ks)]
    record = {"bench": "topk_cache", "meta": meta(args.quick, ks=ks, examples=n, max_response=max_response,
                                                    kinds=list(KINDS), taus=list(TAUS)), "vocabs": vocabs}
    write_json(args.out or default_out("topk_cache", args.quick), record)
    return record


if __name__ == "__main__":
    main()
