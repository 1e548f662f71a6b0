"""Top-k teacher cache vs the exact one: memory per token and the error it puts into the KD loss, side by side.

    python benchmarks/bench_topk_cache.py [--quick] [--ks 8,32,128,512] [--out benchmarks/results/topk_cache.json]

Two vocabularies: SmolLM2's 49,152 and the laptop profile's (512 when the committed results were measured).
For each, the exact teacher rows of a few hundred
response tokens are computed once, then every k is compressed (`teacher_cache.compress_top_k`) and rebuilt two ways:
  uniform:  the tau = 1 rows (`expand_top_k`, remainder spread evenly), re-tempered by the loss (the old behaviour);
  tempered: `TeacherCache.rows(..., tau)`, exact tempered top k and tail mass (interpolated between grid taus),
and compared with the exact rows on:
  bytes per token of the cache (exact 4 V; top-k 8 k + 4 + 8 G, G tail temperatures), and the ratio;
  KL(p || p_hat) per token at tau = 1 (the rebuilt distribution's own error) and the remainder mass r;
  the tempered tail mass at each tau, and the worst interpolation error of its log between grid taus (INTERP_TAUS);
  for every divergence kind at each tau of POCL's default schedule (1, 4/3, 5/3, 2): the KD loss tau^2 D(p_tau || q_tau)
  with the exact and each rebuilt teacher (relative error) and the relative L2 error of its gradient w.r.t. the student
  logits; for FKL also the part of the loss error that is the teacher's own entropy (constant w.r.t. the student).
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

from pocl_utils.experiment.config import PROFILES, ModelSpec
from pocl_utils.data import Encoded
from pocl_utils.losses import KINDS, divergence
from pocl_utils.modeling.models import build_model
from pocl_utils.curriculum import linear_schedule
from pocl_utils.training.batches import make_batch
from pocl_utils.training.step import student_logits_at_targets
from pocl_utils.training.teacher_cache import (TAIL_TAUS, TeacherCache, build_teacher_cache, compress_top_k,
                                               expand_top_k, tempered_log_tail)

TAUS = tuple(linear_schedule(1.0, 2.0, 4))  # the stage temperatures of POCL's default schedule: 1, 4/3, 5/3, 2
INTERP_TAUS = (1.05, 1.1, 1.25, 1.4, 1.75, 1.9)  # between the grid points of TAIL_TAUS: interpolated
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
        from pocl_utils.modeling.models import load_pretrained, load_tokenizer
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


def neg_entropy(rows: torch.Tensor, tau: float) -> float:
    """tau^2 * mean over rows of sum_v p_tau log p_tau, p_tau = softmax(rows / tau): FKL's student-free part, fp64."""
    out = 0.0
    for s in range(0, len(rows), 64):
        logp = torch.log_softmax(rows[s:s + 64].double() / tau, -1)
        out += float((logp.exp() * logp).sum())
    return tau**2 * out / max(len(rows), 1)


def tail_stats(cache: TeacherCache, small: TeacherCache) -> dict:
    """Mean true tempered tail mass per tau, and the worst |log tail mass| error of the interpolation between grid taus."""
    ids = small.token_ids.long()
    mass, interp = {}, 0.0
    for tau in TAUS + INTERP_TAUS:
        for s in range(0, len(ids), 64):
            logp = torch.log_softmax(cache.logits[s:s + 64].double() / tau, -1)  # [<=64, V]
            true = logp.scatter(1, ids[s:s + 64], float("-inf")).logsumexp(-1)  # [<=64] log tempered tail mass
            mass[tau] = mass.get(tau, 0.0) + float(true.exp().sum()) / len(ids)
            if tau in INTERP_TAUS:
                f = tempered_log_tail(small.tail_taus, small.log_tail_mass[s:s + 64], small.tail_mean_logp[s:s + 64], tau)
                log_z = (cache.logits[s:s + 64].double().log_softmax(-1) / tau).logsumexp(-1)  # f is unnormalised
                interp = max(interp, float((f.double() - log_z - true).abs().max()))
    return {"tempered_tail_mass_mean": {f"{t:.4g}": mass[t] for t in TAUS}, "tail_interp_err_max": interp}


def loss_and_grad(student_rows: torch.Tensor, teacher_rows: torch.Tensor, kind: str, tau: float):
    s = student_rows.clone().requires_grad_(True)
    loss = divergence(s, teacher_rows, kind, temperature=tau)
    loss.backward()
    return loss.item(), s.grad


def error(exact: tuple[float, torch.Tensor], approx: tuple[float, torch.Tensor]) -> dict:
    (value, grad), (got, grad_hat) = exact, approx
    return {"approx": got, "rel_err": abs(got - value) / max(abs(value), 1e-12),
            "grad_rel_err": float((grad_hat - grad).norm() / grad.norm().clamp_min(1e-30))}


def compare_k(cache: TeacherCache, student_rows: torch.Tensor, k: int, exact: dict) -> dict:
    """One k: memory, the rebuilt distribution's error, and the KD loss/gradient error for each kind and tau, with the
    uniform (tau = 1 rows re-tempered) and the tempered rebuild."""
    top, ids, rest, mass, slope = compress_top_k(cache.logits, k)
    small = TeacherCache(None, cache.offsets, top, ids, rest, cache.vocab_size, TAIL_TAUS, mass, slope)
    uniform = expand_top_k(top, ids, rest, cache.vocab_size)  # [R, V]
    everything = list(range(len(cache.offsets) - 1))
    row = {"k": k, "bytes_per_token": small.bytes_per_token(), "memory_ratio": small.bytes_per_token() / cache.bytes_per_token(),
           "kl_mean": float(kl_per_token(cache.logits, uniform).mean()), "tail_mass_mean": float(rest.exp().mean()),
           "tail_mass_max": float(rest.exp().max()), "rows_ms_per_batch": rows_ms(small), **tail_stats(cache, small),
           "errors": [], "by_tau": []}
    for tau in TAUS:
        tempered = small.rows(everything, tau=tau)  # [R, V]
        for kind in KINDS:
            e = {"kind": kind, "tau": tau, "exact": exact[(kind, tau)][0]}
            for name, rows in (("uniform", uniform), ("tempered", tempered)):
                e.update({f"{key}_{name}": v for key, v in error(exact[(kind, tau)],
                                                                  loss_and_grad(student_rows, rows, kind, tau)).items()})
            row["errors"].append(e)
        row["by_tau"].append(tau_summary(row["errors"], tau, neg_entropy(tempered, tau) - neg_entropy(cache.logits, tau)))
    return row


def tau_summary(errors: list[dict], tau: float, fkl_entropy_gap: float) -> dict:
    """One tau's headline: FKL loss/grad errors and the worst over the kinds, uniform vs tempered rebuild."""
    mine = [e for e in errors if e["tau"] == tau]
    fkl = next(e for e in mine if e["kind"] == "fkl")
    out = {"tau": tau, "fkl_entropy_share_tempered": abs(fkl_entropy_gap) / max(abs(fkl["exact"]), 1e-12)}
    for name in ("uniform", "tempered"):
        out.update({f"fkl_rel_err_{name}": fkl[f"rel_err_{name}"], f"fkl_grad_rel_err_{name}": fkl[f"grad_rel_err_{name}"],
                    f"max_rel_err_{name}": max(e[f"rel_err_{name}"] for e in mine),
                    f"max_grad_rel_err_{name}": max(e[f"grad_rel_err_{name}"] for e in mine)})
    return out


def rows_ms(cache: TeacherCache, batch: int = 32, tau: float = 1.25) -> float:
    """Milliseconds for `cache.rows` of one training batch of `batch` examples at an interpolated tau (top-k: includes
    the rebuild)."""
    idx = list(range(min(batch, len(cache.offsets) - 1)))
    cache.rows(idx, tau=tau)
    t0 = time.perf_counter()
    for _ in range(5):
        cache.rows(idx, tau=tau)
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
    print(f"{'k':>5} {'B/token':>8} {'mem ratio':>9} {'KL(p||p^)':>10} {'tail r':>7} {'interp':>8} {'tau':>5} "
          f"{'tail_tau':>8} {'FKL loss err: uniform':>21} {'tempered':>8} {'(entropy)':>9} {'FKL grad err: uniform':>21} "
          f"{'tempered':>8} {'max-kind loss err: unif.':>24} {'tempered':>8}")
    for r in v["rows"]:
        head = (f"{r['k']:>5} {r['bytes_per_token']:>8.0f} {r['memory_ratio']:>9.4f} {r['kl_mean']:>10.2e} "
                f"{r['tail_mass_mean']:>7.3f} {r['tail_interp_err_max']:>8.1e}")
        for t in r["by_tau"]:
            tail = r["tempered_tail_mass_mean"][f"{t['tau']:.4g}"]
            print(f"{head} {t['tau']:>5.3g} {tail:>8.3f} "
                  f"{t['fkl_rel_err_uniform']:>21.2e} {t['fkl_rel_err_tempered']:>8.2e} "
                  f"{t['fkl_entropy_share_tempered']:>9.2e} {t['fkl_grad_rel_err_uniform']:>21.2e} "
                  f"{t['fkl_grad_rel_err_tempered']:>8.2e} {t['max_rel_err_uniform']:>24.2e} "
                  f"{t['max_rel_err_tempered']:>8.2e}", flush=True)
            head = " " * len(head)


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
                                                    kinds=list(KINDS), taus=list(TAUS), tail_taus=list(TAIL_TAUS),
                                                    interp_taus=list(INTERP_TAUS)), "vocabs": vocabs}
    write_json(args.out or default_out("topk_cache", args.quick), record)
    return record


if __name__ == "__main__":
    main()
