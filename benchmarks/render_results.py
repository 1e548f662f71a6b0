"""benchmarks/RESULTS.md from the benchmark JSONs: every number in it is read from a JSON, every PASS/MISS is computed.

    python benchmarks/render_results.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]

Targets (issue #7): ranking >= 8x the naive loop on the laptop shape decoding its full budget (restated in issue #25:
a trained student's early EOS makes the ratio depend on the world's response lengths; its row is for information) and
>= 4x at SmolLM2 scale; the chunked
divergence <= 1/2 and the fused one <= 1/8 of the naive peak memory, each <= 1.2x the naive time and its value equal to
the naive one to 1e-5 relative; the teacher cache <= 1/3 of the live teacher's time, its rows equal to the live teacher's
to the bench's tolerance; a KD step >= 30% of the measured matmul peak; time ~ N^b with b = 1 +- 0.15;
the laptop main job <= 60 min.

End-to-end timings come from <results>/end_to_end.json (written by `run_all.py --e2e-smoke`, or by hand):
  {"runs": [{"name": "laptop main job",          # unique; a later entry of the same name replaces it
             "command": "make reproduce",         # what was run
             "profile": "laptop",
             "wall_s": 2520.0,                    # the whole command, seconds
             "parts": {"preparation": 288, "grid": 2112, "notebooks": 138},  # optional, seconds
             "target_s": 3600,                    # optional; PASS if wall_s <= target_s
             "cold": true,                        # optional: started from an empty runs folder
             "date": "2026-01-31", "git_commit": "abc123", "machine": "AMD EPYC, 2 cores",  # optional
             "notes": "idle machine"}]}           # optional
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchlib import RESULTS, ROOT, machine, versions

TARGETS = {"ranking": 8.0, "ranking_smollm2": 4.0, "chunked_mem": 1 / 2, "fused_mem": 1 / 8, "div_time": 1.2,
           "cache_time": 1 / 3, "flops_fraction": 0.30, "div_value_rel": 1e-5, "flops_count_rel": 0.02, "exponent_tol": 0.15, "laptop_e2e_s": 3600.0}


@dataclass
class Check:
    bench: str
    what: str
    value: str
    target: str
    ok: bool | None  # None: informational, no target
    measured: bool = True

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "not measured"
        return "info" if self.ok is None else ("PASS" if self.ok else "**MISS**")


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def provenance(rec: dict) -> str:
    """One line: when, at which commit, quick or full, on what machine and load."""
    m = rec.get("meta")
    if not m:
        mach = rec.get("machine", {})
        return f"_provenance: not recorded (older JSON); torch {rec.get('torch', mach.get('torch', '?'))}_"
    mm = m.get("machine", {})
    load = mm.get("load_avg_at_start")
    return (f"_{m['date']}, commit `{m['git_commit'][:12]}{'+dirty' if m['git_commit'].endswith('+dirty') else ''}`, "
            f"{'**quick** (tiny sizes, not for conclusions)' if m.get('quick') else 'full'} run, "
            f"{mm.get('cpu', '?')} ({mm.get('cores', '?')} cores), load average at start "
            f"{load[0] if load else '?'}_")


# ---- one section per benchmark -------------------------------------------------------------------------------------


RANKING_CASES = (  # JSON stem, label, target key (None: for information)
    ("ranking_random", "laptop shape, full decode budget (random init)", "ranking"),
    ("ranking", "laptop student", None),
    ("ranking_smollm2", "SmolLM2 scale", "ranking_smollm2"),
)


def ranking_section(recs: dict[str, dict]) -> tuple[str, list[Check]]:
    rows, checks = [], []
    for name, label, key in RANKING_CASES:
        r = recs.get(name)
        if r is None:
            continue
        target = TARGETS[key] if key else None
        checks.append(Check("ranking", f"speedup, {label}", f"{r['speedup']:.2f}x",
                            f">= {target:g}x" if target else "-", r["speedup"] >= target if target else None))
        budget = r["n"] * r.get("max_new_tokens", 0)
        tokens = r.get("generated_tokens")
        rows.append([label, r.get("model_source", r["model"]), f"{r['params']:,}", r["n"],
                     "-" if tokens is None else f"{tokens} ({100 * tokens / budget:.0f}% of {budget})" if budget else tokens,
                     r["threads"], r.get("reps", 1), fmt(r["naive_s"]), fmt(r["batched_s"]), f"{r['speedup']:.2f}x",
                     checks[-1].target, checks[-1].verdict, fmt(r["max_ce_abs_diff"], ".1e")])
    body = table(["case", "model", "params", "samples", "new tokens (of the budget)", "threads", "timed calls (median)",
                  "naive s", "batched s", "speedup", "target", "status", "max CE diff"], rows)
    notes = "\n".join(f"- {name}: {provenance(r)}" for name, r in recs.items() if name.startswith("ranking"))
    restated = ("The >= 8x target applies to the laptop shape decoding its full budget (a random-init model never "
                "emits EOS), where the speedup measures what batching saves per decoding step. A trained student "
                "stops at EOS after a few tokens; the naive loop then stops each sample at once, while a batch runs "
                "until its last sample has stopped, so the ratio also depends on how long the world's responses are. "
                "World version 3's warm-started student stops early (the new-tokens column), so its row is shown for "
                "information and carries no target.")
    return ("Difficulty ranking: batched + shared-cache scoring vs the naive per-sample loop (outputs asserted "
            "identical)\n\n" + body + "\n\n" + restated + "\n\n" + notes), checks


GENERATE_CASES = ("ranking_greedy", "generate_greedy", "generate_sampled")  # bench_generate.py's cases, in its order


def generate_section(rec: dict) -> tuple[str, list[Check]]:
    rows = [[name, c["what"], c["generated_tokens"], fmt(c["pocl_s"]), fmt(c["transformers_s"]),
             f"{c['transformers_over_pocl']:.2f}", "yes" if c["outputs_identical"] else "**no**"]
            for name, c in sorted(rec["cases"].items(), key=lambda kv: GENERATE_CASES.index(kv[0]))]
    body = table(["case", "what", "new tokens", "pocl s", "transformers s", "transformers / pocl", "same tokens"], rows)
    end = rec.get("load_avg_at_end")
    return (f"Decoding loop: pocl's KV-cache loop vs transformers' `model.generate` with pocl's LogitsProcessors "
            f"(model {rec.get('model_source', rec['model'])}, {rec['params']:,} params, {rec['n']} prompts, "
            f"max_new_tokens {rec['max_new_tokens']}, batch {rec['batch_size']}, {rec['threads']} thread; median of "
            f"{rec['reps']} alternating calls)\n\n" + body + "\n\n" + provenance(rec)
            + (f"\n\nLoad average at the end of the run: {end[0]} (a shared machine: the ratio, measured "
                  f"alternately, is what to read)" if end else "")), []


def divergence_section(rec: dict) -> tuple[str, list[Check]]:
    rows, checks = [], []
    for r in rec["results"]:
        base = {"chunked": "naive", "fused": "naive_linear"}.get(r["variant"])
        mem, tim = r.get(f"mem_vs_{base}"), r.get(f"time_vs_{base}")
        if base and mem is not None:
            limit = TARGETS["chunked_mem"] if r["variant"] == "chunked" else TARGETS["fused_mem"]
            checks.append(Check("divergence", f"{r['kind']} {r['variant']} memory vs {base}", f"{mem:.3f}",
                                f"<= {limit:.3g}", mem <= limit))
            checks.append(Check("divergence", f"{r['kind']} {r['variant']} time vs {base}", f"{tim:.2f}",
                                f"<= {TARGETS['div_time']}", tim <= TARGETS["div_time"]))
            diff = r.get(f"abs_diff_vs_{base}")
            if diff is not None:  # the same loss value as its baseline, to fp32 rounding of a sum over T x V terms
                limit = TARGETS["div_value_rel"] * max(abs(r["value"]), 1.0)
                checks.append(Check("divergence", f"{r['kind']} {r['variant']} loss value vs {base}, abs. diff",
                                    f"{diff:.1e}", f"<= {limit:.1e}", diff <= limit))
        rows.append([r["kind"], r["variant"], f"{r['extra_peak_MB']:.0f}", f"{r['extra_peak_x_logits']:.2f}",
                     base or "-", fmt(mem, ".3f"), fmt(tim, ".2f"), fmt(r.get(f"cpu_vs_{base}"), ".2f"),
                     fmt(r["time_s"], ".2f"), fmt(r.get(f"abs_diff_vs_{base}"), ".1e")])
    c = rec["config"]
    body = table(["kind", "variant", "extra peak MB", "x one logits tensor", "baseline", "memory / baseline",
                  "wall time / baseline", "CPU time / baseline", "time s", "abs. value diff"], rows)
    return (f"Divergence memory and time, forward + backward (V = {c['vocab']}, T = {c['tokens']}, H = {c['hidden']}, "
            f"{c['threads']} threads)\n\n" + body + "\n\n" + provenance(rec)), checks


def teacher_cache_section(rec: dict) -> tuple[str, list[Check]]:
    rows, checks = [], []
    rc = rec.get("row_check")
    if rc is None:  # an older JSON: it compared whole loss logs, which is not what the cache guarantees
        checks.append(Check("teacher cache", "cached vs live teacher rows, max |d log p|", "-", "<= 1e-05", None,
                            measured=False))
    elif "rows_err_ratio" not in rc:  # an older JSON: an absolute tolerance between two fp32 roundings
        checks.append(Check("teacher cache", f"cached vs live teacher rows ({rc['batches']} batches), max |d log p|",
                            f"{rc['rows_max_logp_diff']:.1e}", f"<= {rc['row_tol']:g}",
                            rc["rows_max_logp_diff"] <= rc["row_tol"]))
    else:
        checks.append(Check("teacher cache", f"cached rows' error vs a float64 teacher / the live rows' "
                            f"({rc['batches']} batches), max |d log p|", f"{rc['rows_err_ratio']:.2f}",
                            f"<= {rc['err_ratio_tol']:g}", rc["rows_err_ratio"] <= rc["err_ratio_tol"]))
    for r in rec["rows"]:
        ok = r["cached_over_live"] <= TARGETS["cache_time"]
        checks.append(Check("teacher cache", f"{r['kind']} KD steps, cached / live time", f"{r['cached_over_live']:.3f}",
                            "<= 1/3", ok))
        rows.append([r["kind"], r["steps"], fmt(r["live_s"]), fmt(r["cached_s"]), f"{r['cached_over_live']:.3f}", "<= 1/3",
                     checks[-1].verdict, fmt(r.get("step0_loss_diff"), ".1e"),
                     r.get("first_step_over_drift_tol", "-") if "drift_tol" in r else "-", fmt(r["max_loss_diff"], ".1e")])
        if "step0_loss_diff" in r:
            checks.append(Check("teacher cache", f"{r['kind']} loss at step 0, cached vs live", f"{r['step0_loss_diff']:.1e}",
                                f"<= {r['loss_tol']:g}", r["step0_loss_diff"] <= r["loss_tol"]))
    body = table(["kind", "steps", "live s", "cached s", "cached / live", "target", "status", "loss diff at step 0",
                  "first step with loss diff > 1e-4", "max loss diff (info)"], rows)
    if rc is None:
        guarantee = ""
    elif "rows_err_ratio" in rc:
        guarantee = (f"What the cache guarantees, checked: its rows are as exact as the live teacher's. On every batch "
                     f"of the timed steps both are compared with the same teacher run in float64 on that batch: max "
                     f"|d log p| {rc['rows_cache_err_fp64']:.1e} (cached) and {rc['rows_live_err_fp64']:.1e} (live), "
                     f"ratio {rc['rows_err_ratio']:.2f} (target <= {rc['err_ratio_tol']:g}; the same rows stored in "
                     f"fp16 would give {rc.get('rows_fp16_err_ratio', math.nan):.0f}). They are not bitwise equal to "
                     f"each other (max |d log p| {rc['rows_max_logp_diff']:.1e}, "
                     f"{100 * rc['rows_bitwise_equal_share']:.1f}% of the logits bitwise equal): the cache runs the "
                     f"teacher on length-sorted batches, so padding and BLAS blocking differ and each is its own fp32 "
                     f"rounding. The first step's loss agrees; later losses are not expected to be equal: training "
                     f"amplifies that rounding step by step, so the loss logs drift apart (last column, for "
                     f"information).\n\n")
    else:
        guarantee = (f"What the cache guarantees, checked: on every batch of the timed steps the cached rows give the "
                     f"live teacher's log-probabilities to {rc['row_tol']:g} (max |d log p| "
                     f"{rc['rows_max_logp_diff']:.1e}), and the first step's loss agrees.\n\n")
    guarantee += ("Why cached / live misses 1/3 on these models: the cached step is the student's step S, the live one "
                  "S plus the teacher's forward T, so the ratio is S / (S + T) and needs S <= T / 2. The teacher's "
                  "forward is 80% of the live step's FLOPs, but the student's tiny matmuls run at about half the "
                  "teacher's fraction of peak (FLOP/s section), so S / T is about 0.55. The what-ifs that bring S under "
                  "T / 2 there (fused AdamW, a one-kernel GELU) change the float bits of training (fused AdamW differs "
                  "from the multi-tensor one by ~3e-8 after 20 steps), which must stay bitwise until the `laptop` "
                  "reference run is made again. Whole grid runs give about the same ratio (Teacher cache (grid runs)): "
                  "the step is nearly all of a run's training time.\n\n")
    return (f"Teacher cache on KD steps ({rec.get('profile', '?')} profile, {rec.get('workspace', 'workspace not recorded')}, "
            f"{rec.get('threads', '?')} thread)\n\n" + body + "\n\n" + guarantee + provenance(rec)), checks


def grid_cache_section(rec: dict) -> tuple[str, list[Check]]:
    s = rec["summary"]
    checks = [Check("grid cache", f"{s['runs']} off-policy grid runs, training time cached / live", f"{s['train_ratio']:.3f}",
                    "<= 1/3", s["train_ratio"] <= TARGETS["cache_time"]),
              Check("grid cache", "same runs incl. validation checks, cached / live", f"{s['total_ratio']:.3f}", "-", None)]
    rows = [[r["label"], r["seed"], r["steps"], fmt(r["live_train_s"]), fmt(r["cached_train_s"]), f"{r['train_ratio']:.3f}",
             f"{r['total_ratio']:.3f}", fmt(r["max_loss_diff"], ".1e"), fmt(r["max_weight_diff"], ".1e"),
             fmt(r.get("first_step_loss_diff"), ".1e"), r.get("first_step_over_tol", "-") or "never",
             fmt(r["max_valid_diff"], ".1e"), fmt(r.get("registry_max_loss_diff"), ".1e")] for r in rec["rows"]]
    body = table(["run", "seed", "steps", "live train s", "cached train s", "train ratio", "ratio incl. validation",
                  "max loss diff", "max weight diff", "loss diff at step 0", "first step with loss diff > 1e-4",
                  "max validation diff (selection values)", "loss diff vs registry"], rows)
    why = ("" if s["train_ratio"] <= TARGETS["cache_time"] else
           " The ratio misses 1/3 for the reason given under Teacher cache (KD steps): a cached run's time is the "
           "student's steps, and on these models the student's step takes more than half the teacher's forward.")
    extra = (f"Summary: {s['runs']} runs, {s['steps']} steps; cached {s['cached_train_s']:.1f} s vs live "
             f"{s['live_train_s']:.1f} s of training; the grid holds {s['off_policy_runs_in_grid']} off-policy runs, so "
             f"the cache saves about {s['estimated_grid_saving_min']:.1f} min of single-thread training there. "
             f"Results: max loss diff {s['max_loss_diff']:.1e}, max weight diff {s['max_weight_diff']:.1e}, max "
             f"validation diff {s['max_valid_diff']:.1e}. Cached and live teacher batches are padded differently, so "
             f"the teacher rows are equal up to float rounding, not bitwise (loss diff at step 0: at most "
             f"{fmt(s.get('max_first_step_loss_diff'), '.1e')}); over hundreds of optimizer steps training amplifies "
             f"that rounding (first step with a loss diff above 1e-4: {s.get('earliest_step_over_tol', '-')}), as any "
             f"change of float summation order would. {s['registry_runs_compared']} runs compared with the "
             f"registry's records, max loss diff {fmt(s['registry_max_loss_diff'], '.1e')}." + why)
    return ("Teacher cache on whole grid runs (training_run.train_run, 1 thread)\n\n" + body + "\n\n" + extra + "\n\n"
            + provenance(rec)), checks


def topk_section(rec: dict) -> tuple[str, list[Check]]:
    if any("by_tau" not in r for v in rec["vocabs"] for r in v["rows"]):
        return ("Top-k teacher cache: the JSON predates the tempered rebuild (no per-tau errors); re-run "
                "benchmarks/bench_topk_cache.py\n\n" + provenance(rec)), []
    parts = []
    for v in rec["vocabs"]:
        rows = [[r["k"], f"{r['bytes_per_token']:.0f}", f"{r['memory_ratio']:.4f}", fmt(r["kl_mean"], ".2e"),
                 fmt(r["tail_mass_mean"], ".3f"), fmt(r["tail_interp_err_max"], ".1e"),
                 fmt(r.get("rows_ms_per_batch"), ".2f")] for r in v["rows"]]
        head = (f"**V = {v['vocab']}** ({v['source']}; {v['tokens']} response tokens"
                f"{'' if v['representative'] else '; NOT representative: a random-init teacher is nearly uniform'}): "
                f"exact cache {v['exact_bytes_per_token']:.0f} B/token, rows of a batch in "
                f"{fmt(v.get('exact_rows_ms_per_batch'), '.2f')} ms")
        parts.append(head + "\n\n" + table(["k", "B/token", "memory / exact", "KL(p ‖ p_hat)", "tail mass r",
                                            "max interp. err of log tail mass", "rows ms/batch"], rows)
                     + "\n\n" + per_tau_table(v) + "\n\n" + per_kind_table(v))
    return ("Top-k teacher cache vs exact. uniform = the tau = 1 rows (remainder spread evenly) re-tempered by the loss; "
            "tempered = rows built for the tau (exact tempered top k and tail mass, interpolated between grid taus)\n\n"
            + "\n\n".join(parts) + "\n\n" + provenance(rec)), []


def per_tau_table(v: dict) -> str:
    rows = [[r["k"], f"{t['tau']:.3g}", fmt(r["tempered_tail_mass_mean"][f"{t['tau']:.4g}"], ".3f"),
             fmt(t["fkl_rel_err_uniform"], ".2e"), fmt(t["fkl_rel_err_tempered"], ".2e"),
             fmt(t["fkl_entropy_share_tempered"], ".2e"), fmt(t["fkl_grad_rel_err_uniform"], ".2e"),
             fmt(t["fkl_grad_rel_err_tempered"], ".2e"), fmt(t["max_rel_err_uniform"], ".2e"),
             fmt(t["max_rel_err_tempered"], ".2e")] for r in v["rows"] for t in r["by_tau"]]
    return ("Per KD temperature (the teacher's own entropy term is constant w.r.t. the student: no gradient):\n\n"
            + table(["k", "tau", "tempered tail mass", "FKL loss err uniform", "tempered", "of which teacher entropy",
                     "FKL grad err uniform", "tempered", "max-kind loss err uniform", "tempered"], rows))


def per_kind_table(v: dict) -> str:
    ks = [r["k"] for r in v["rows"]]
    errs = {(e["kind"], e["tau"], r["k"]): e for r in v["rows"] for e in r["errors"]}
    keys = sorted({(kind, tau) for kind, tau, _ in errs}, key=lambda x: (x[1], x[0]))
    cell = lambda e: f"{fmt(e['rel_err_uniform'], '.1e')} → {fmt(e['rel_err_tempered'], '.1e')}"  # noqa: E731
    rows = [[kind, f"{tau:.3g}"] + [cell(errs[(kind, tau, k)]) for k in ks] for kind, tau in keys]
    return ("Relative KD-loss error per kind, uniform → tempered:\n\n"
            + table(["kind", "tau"] + [f"k={k}" for k in ks], rows))


def flops_section(rec: dict) -> tuple[str, list[Check]]:
    rows, checks = [], []
    for r in rec["steps"]:
        ok = r["fraction_of_peak"] >= TARGETS["flops_fraction"] if r["step"] != "teacher" else None
        checks.append(Check("flops", f"{r['step']} KD step, {r['threads']} thread(s), fraction of matmul peak",
                            f"{100 * r['fraction_of_peak']:.1f}%", ">= 30%" if ok is not None else "-", ok))
        rows.append([r["threads"], r["step"], f"{r['ms']:.2f}", f"{r['gflops']:.2f}", f"{r['peak_gflops']:.1f}",
                     f"{100 * r['fraction_of_peak']:.1f}%", checks[-1].target, checks[-1].verdict])
    f = rec["flops"]
    for label, counted, analytic in (("student forward + backward", f["cached"], f["analytic"]["student_fwd_bwd"]),
                                     ("teacher forward", f["teacher"], f["analytic"]["teacher_fwd"])):
        rel = abs(counted / analytic - 1)  # the FLOP counter and the formula must agree, else a fraction is wrong
        checks.append(Check("flops", f"{label} FLOPs, counter vs analytic formula, rel. diff", f"{rel:.1e}",
                            f"<= {TARGETS['flops_count_rel']:g}", rel <= TARGETS["flops_count_rel"]))
    body = table(["threads", "step", "ms", "GFLOP/s", "peak GFLOP/s", "of peak", "target", "status"], rows)
    prof = rec["profile_1_thread"]
    ops = table(["op", "self CPU share", "calls/step"], [[o["op"], f"{100 * o['self_share']:.1f}%",
                                                         f"{o['calls_per_step']:.0f}"] for o in prof["top_ops"][:8]])
    whatif = "\n".join(f"- what if {w['what_if']}: " + (f"{w['ms']:.2f} ms, {100 * w['fraction_of_peak']:.1f}% of peak"
                                                         if "ms" in w else f"not available ({w['error']})")
                       for w in rec.get("what_if_1_thread", []))
    miss_1 = next((r for r in rec["steps"] if r["threads"] == 1 and r["step"] == "cached"
                   and r["fraction_of_peak"] < TARGETS["flops_fraction"]), None)
    gelu = next((w for w in rec.get("what_if_1_thread", []) if "GELU" in w["what_if"] and "fraction_of_peak" in w), None)
    why = "" if miss_1 is None else (
        "\n\nWhy the 1-thread cached step misses: the profile above (most CPU time outside matmul kernels, thousands of "
        "small operator calls per step). Of the what-ifs, "
        + (f"only the one-kernel GELU reaches the target ({100 * gelu['fraction_of_peak']:.1f}%), and it changes the "
           "student's float rounding (transformers' gelu_new is several elementwise kernels), which the pinned CPU "
           "numerics (tests/test_cpu_pinned.py, the committed laptop tables) forbid until a new reference run adopts it"
           if gelu and gelu["fraction_of_peak"] >= TARGETS["flops_fraction"] else "none reaches the target")
        + ". The grid runs the step as two 1-thread workers, the `2 workers x 1` row.")
    text = (f"FLOPs per step: student forward + backward {f['cached'] / 1e6:.0f} MFLOP (analytic "
            f"{f['analytic']['student_fwd_bwd'] / 1e6:.0f}), teacher forward {f['teacher'] / 1e6:.0f} MFLOP (analytic "
            f"{f['analytic']['teacher_fwd'] / 1e6:.0f}); {f['target_rows']} target rows in {f['padded_tokens']} padded "
            f"positions. Models: {rec['models']['student_params']:,} / {rec['models']['teacher_params']:,} parameters.")
    text += (" The issue's KD step (student forward + backward and teacher forward) is the `live` row. The `cached` row "
             f"is the step the grid really runs: the teacher cache removes the teacher's forward, "
             f"{100 * f['teacher'] / (f['teacher'] + f['cached']):.0f}% of the live step's FLOPs, so what is left is "
             "the student's small matmuls and per-op overhead. It is faster in wall time but reaches a lower fraction "
             "of peak.")
    return ("Achieved FLOP/s of a laptop KD step vs the measured fp32 matmul peak\n\n" + body + "\n\n" + text
            + "\n\nWhere one thread's cached step spends its time (torch.profiler, self CPU time):\n\n" + ops + "\n\n"
            + whatif + "\n\n" + rec.get("explanation", "") + why + "\n\n" + provenance(rec)), checks


def scaling_section(rec: dict) -> tuple[str, list[Check]]:
    checks = []
    for name, label in (("ranking", "ranking"), ("kd_epoch", "KD epoch")):
        b = rec["exponents"]["n"][name]
        checks.append(Check("scaling", f"{label} time ~ N^b", f"b = {b:.2f}", "b = 1 +- 0.15",
                            abs(b - 1) <= TARGETS["exponent_tol"] + 1e-9))
        checks.append(Check("scaling", f"{label} time ~ L^b (sequence length)",
                            f"b = {rec['exponents']['length'][name]:.2f}", "-", None))
    tables = []
    for key, label in (("by_n", "N"), ("by_length", "tokens per example")):
        tables.append(table([label, "examples", "tokens", "ranking s", "KD epoch s"],
                            [[r["x"], r["examples"], r["tokens"], fmt(r["ranking_s"]), fmt(r["kd_epoch_s"])] for r in rec[key]]))
    fig = rec.get("figure", "")
    link = f"\n\n![scaling]({Path('..') / fig})" if fig.startswith("figures/") else (f"\n\nFigure: `{fig}`" if fig else "")
    return ("Scaling of ranking and KD-epoch time with dataset size and sequence length\n\n" + "\n\n".join(tables)
            + link + "\n\n" + provenance(rec)), checks


def e2e_section(rec: dict) -> tuple[str, list[Check]]:
    rows, checks = [], []
    for r in rec.get("runs", []):
        target = r.get("target_s", TARGETS["laptop_e2e_s"] if r.get("profile") == "laptop" else None)
        ok = None if target is None else r["wall_s"] <= target
        ok = False if r.get("rc", 0) != 0 else ok  # a failed run cannot pass, whatever its time
        checks.append(Check("end to end", r["name"], f"{r['wall_s'] / 60:.1f} min",
                            "-" if target is None else f"<= {target / 60:.0f} min", ok))
        parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in r.get("parts", {}).items()) or "-"
        rows.append([r["name"], f"`{r.get('command', '?')}`", f"{r['wall_s'] / 60:.1f}", parts, checks[-1].target,
                     checks[-1].verdict, "yes" if r.get("cold") else "-", r.get("date", "-"),
                     str(r.get("git_commit", "-"))[:12], r.get("notes", "")])
    body = table(["run", "command", "wall min", "parts", "target", "status", "cold", "date", "commit", "notes"], rows)
    return "End-to-end wall times (from end_to_end.json)\n\n" + body, checks


# ---- the document --------------------------------------------------------------------------------------------------

# What a missing JSON leaves unmeasured: listed in the target table, so a skipped benchmark cannot pass unseen.
UNMEASURED = {
    "ranking_random": [("speedup, laptop shape, full decode budget (random init)", ">= 8x")],
    "ranking": [("speedup, laptop student", "-")], "ranking_smollm2": [("speedup, SmolLM2 scale", ">= 4x")],
    "divergence": [("chunked memory / time vs naive", "<= 0.5 / <= 1.2"),
                   ("fused memory / time vs naive_linear", "<= 0.125 / <= 1.2")],
    "teacher_cache": [("KD steps, cached / live time", "<= 1/3")], "grid_cache": [("grid runs, cached / live", "<= 1/3")],
    "flops": [("KD step, fraction of matmul peak", ">= 30%")], "scaling": [("time ~ N^b", "b = 1 +- 0.15")],
    "end_to_end": [("laptop main job", "<= 60 min")],
}

SECTIONS: list[tuple[str, tuple[str, ...], Callable]] = [
    ("Ranking", ("ranking_random", "ranking", "ranking_smollm2"), ranking_section),
    ("Decoding backends", ("generate",), generate_section),
    ("Divergence", ("divergence",), divergence_section),
    ("Teacher cache (KD steps)", ("teacher_cache",), teacher_cache_section),
    ("Teacher cache (grid runs)", ("grid_cache",), grid_cache_section),
    ("Top-k teacher cache", ("topk_cache",), topk_section),
    ("FLOP/s", ("flops",), flops_section),
    ("Scaling", ("scaling",), scaling_section),
    ("End to end", ("end_to_end",), e2e_section),
]


def load_results(folder: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: not valid JSON ({e}); re-run its benchmark or delete it") from e
    return out


def header(quick: bool, run_log: dict | None) -> str:
    from pocl_utils.experiment.results import git_commit
    import datetime as dt
    m, v = machine(), versions()
    lines = ["# Benchmark results", "",
             "Generated by `benchmarks/run_all.py` from the JSONs in "
             f"`{'runs/bench/quick' if quick else 'benchmarks/results'}/`; do not edit by hand.", "",
             f"- rendered: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit `{git_commit()}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['platform']}",
             f"- versions: Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, numpy {v['numpy']}",
             "- each section below names the date, commit, machine and load of its own measurement",
             "- on a shared machine read the ratios, not the absolute times: both sides of each ratio are measured in "
             "the same run, under the same load (alternating calls where the section says so)"]
    if quick:
        lines += ["", "> **Quick mode**: tiny sizes to check that everything runs; the numbers say nothing about performance."]
    if run_log:
        failed = [f"{k} (exit {r['rc']}, log `{r['log']}`)" for k, r in run_log.items() if r.get("rc") not in (0, None)]
        if failed:
            lines += ["", "> **Failed in the last run_all**: " + "; ".join(failed) + ". Their sections show older JSONs if any."]
    return "\n".join(lines)


def render(folder: Path, *, quick: bool = False, run_log: dict | None = None) -> str:
    recs = load_results(folder)
    sections, checks = [], []
    for title, names, fn in SECTIONS:
        present = {n: recs[n] for n in names if n in recs}
        checks += [Check(n.replace("_smollm2", "").replace("_random", "").replace("_", " "), what, "-", target, None, measured=False)
                   for n in names if n not in recs
                   for what, target in UNMEASURED.get(n, [])]
        if not present:
            sections.append(f"## {title}\n\nnot measured yet (no {', '.join(n + '.json' for n in names)}).")
            continue
        text, found = fn(present) if fn is ranking_section else fn(next(iter(present.values())))
        sections.append(f"## {title}\n\n{text}")
        checks += found
    summary = table(["benchmark", "what", "measured", "target", "status"],
                    [[c.bench, c.what, c.value, c.target, c.verdict] for c in checks if c.ok is not None or not c.measured])
    counts = (f"{sum(c.ok is True for c in checks)} PASS, {sum(c.ok is False for c in checks)} MISS, "
              f"{sum(not c.measured for c in checks)} not measured")
    return "\n\n".join([header(quick, run_log), f"## Targets ({counts})\n\n{summary}", *sections]) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--quick", action="store_true", help="label the document as quick-mode results")
    args = ap.parse_args(argv)
    from pocl_utils.experiment.results import atomic_write_text
    atomic_write_text(Path(args.out), render(Path(args.results), quick=args.quick))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
