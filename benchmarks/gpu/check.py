"""The one-command GPU check: `python benchmarks/gpu/check.py` (offline; needs torch, transformers, accelerate and
pocl_utils importable, and TRL for part `trl`). Four parts, each in its own subprocess with its own time limit, so
that one failure, hang or out-of-memory never hides the others; prints a summary and writes everything as JSON (--out).

  step      a naive KD loop vs pocl's training step (`kd.kd_loss_fn` + `loop.run_steps`, live teacher) at two
            batch sizes: ms/step, tokens/s, MFU against a bf16 matmul peak measured here, peak memory, and each
            one's first loss against an fp32 reference on the same batch (random-init GPT-2 XL teacher -> GPT-2
            student, prompt 256 + response 256 tokens, FKL, alpha 0.3: the setting of issue 16's table).
  generate  greedy tokens/s of `generate.generate` vs `transformers`' `model.generate`, same model, prompts and
            settings (GPT-2-sized, bf16 autocast on a GPU for both), and how many rows agree; then sampled with
            evaluation's settings, pocl's loop vs `generate.generate(backend="transformers")` (transformers' generate
            with pocl's n-gram ban and counter-based Gumbel noise as LogitsProcessors).
  profile   the `gpu` profile: each preparation step timed on a sample and projected to its full size, one KD run
            (steps, validation, evaluation) likewise, and the projected time of the whole grid.
  trl       POCL in TRL (`integrations.trl`, notebook 13's steps) on the `smoke` world: the difficulty measured on
            this device, TRL's KDTrainer with the curriculum vs our loop on the same stages and batches: seconds
            and the per-step losses' largest relative difference. Needs the `trl` extra.

`--compile` adds a step variant with the student's step forward compiled (`torch.compile`, what the profile's
`compile` turns on in runs; the part gets 120 s more for the compilations). `--tiny` runs the same code at toy sizes (the CPU: CI
checks correctness, not speed); there the step's losses must equal the fp32 reference. MFU counts
2 N_teacher + 6 N_student FLOPs per token over every position.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    teacher: tuple[int, int, int]  # n_layer, n_embd, n_head
    student: tuple[int, int, int]
    vocab: int
    prompt: int
    response: int
    batches: tuple[int, ...]
    warm: int  # untimed steps
    steps: int  # timed steps
    gen_batch: int
    gen_prompt: int
    gen_new: int
    peak_n: int  # matmul size of the peak measurement
    profile: str  # the profile of part (c)
    sample: int  # examples each preparation step is timed on
    kd_steps: int  # timed steps of a KD run and of each SFT
    world_fraction: float  # part (c) generates this fraction of the profile's world and projects to the whole
    trl_profile: str = "smoke"  # the world profile part (d) prepares and trains on


FULL = Sizes(teacher=(48, 1600, 25), student=(12, 768, 12), vocab=50257, prompt=256, response=256, batches=(8, 16),
             warm=3, steps=10, gen_batch=16, gen_prompt=128, gen_new=128, peak_n=8192, profile="gpu", sample=512,
             kd_steps=20, world_fraction=0.1)
TINY = Sizes(teacher=(2, 64, 2), student=(1, 32, 2), vocab=211, prompt=8, response=8, batches=(2, 4), warm=1, steps=2,
             gen_batch=4, gen_prompt=6, gen_new=8, peak_n=256, profile="smoke", sample=16, kd_steps=2,
             world_fraction=1.0)
ALPHA, KIND = 0.3, "fkl"
LIMITS_S = {"step": 150, "generate": 90, "profile": 150, "trl": 120}  # per part, on one GPU; --timeout overrides
COMPILE_EXTRA_S = 120  # --compile: the step part's extra time, for torch.compile's compilations
COMPILED = "pocl+compile"  # --compile's variant of the step: pocl's step with the student's forward compiled


def device() -> torch.device:
    from pocl_utils.modeling.models import pick_device
    return pick_device()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: torch.device) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def matmul_peak(dev: torch.device, n: int) -> dict:
    """FLOP/s of an n x n x n matmul (bf16 on a GPU, fp32 on the CPU), best of a few: the MFU's denominator."""
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    best = min(timed(lambda: [a @ b for _ in range(10)], dev) for _ in range(3)) / 10
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "tflops": 2 * n**3 / best / 1e12}


def peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---- (a) the step ------------------------------------------------------------------------------------------------

def _examples(s: Sizes, n: int, seed: int = 0):
    from pocl_utils.data import Encoded
    rng = np.random.default_rng(seed)
    return [Encoded(rng.integers(1, s.vocab, s.prompt).tolist(), rng.integers(1, s.vocab, s.response).tolist(),
                    index=i, meta={}) for i in range(n)]


def _gpt2(shape: tuple[int, int, int], s: Sizes, seed: int):
    from pocl_utils.experiment.config import ModelSpec
    from pocl_utils.modeling.models import build_model
    n_layer, n_embd, n_head = shape
    return build_model(ModelSpec(n_layer=n_layer, n_embd=n_embd, n_head=n_head), s.vocab, s.prompt + s.response,
                       seed=seed)


def _reference_loss(student, teacher, batch) -> float:
    """The step's loss in plain fp32 (no autocast, no TF32) on the same batch."""
    from pocl_utils.modeling.heads import logits_at_positions
    from pocl_utils.modeling.models import CPU_PRECISION
    from pocl_utils.training.step import step_loss
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            rows = logits_at_positions(teacher, batch.input_ids, batch.attention_mask, batch.labels != -100).float()
            loss, _ = step_loss(student, batch, rows, kind=KIND, tau=1.0, alpha=ALPHA, precision=CPU_PRECISION)
        return float(loss)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _naive_step(student, teacher, opt, batch, dev) -> torch.Tensor:
    """A plain KD step: both models under bf16 autocast (GPU), whole-sequence logits, full-vocabulary FKL."""
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    mask = batch.labels != -100
    with ctx:
        with torch.no_grad():
            t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    s, t = s[mask].float(), t[mask].float()
    ce = F.cross_entropy(s, batch.labels[mask])
    logp = torch.log_softmax(t, -1)
    kd = (logp.exp() * (logp - torch.log_softmax(s, -1))).sum(-1).mean()
    loss = ALPHA * ce + (1 - ALPHA) * kd
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    return loss.detach()


def _measure_naive(student, teacher, batch, s: Sizes, dev) -> tuple[float, float]:
    kind = {"fused": True} if dev.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, **kind)
    first = float(_naive_step(student, teacher, opt, batch, dev))
    for _ in range(s.warm - 1):
        _naive_step(student, teacher, opt, batch, dev)
    seconds = timed(lambda: [_naive_step(student, teacher, opt, batch, dev) for _ in range(s.steps)], dev)
    return seconds / s.steps, first


def _measure_pocl(student, teacher, examples, s: Sizes, dev, compiled: bool = False) -> tuple[float, float]:
    """pocl's own path: `kd_loss_fn` (live teacher, which it freezes: bf16 on a GPU) inside `run_steps`, timed
    between two synchronised steps; `compiled`: the student's step forward compiled (`models.compiled_inputs`, as
    the profile's `compile` asks; compiled during the untimed steps)."""
    from dataclasses import replace
    from pocl_utils.experiment.config import TrainSpec
    from pocl_utils.modeling.models import policy_for
    from pocl_utils.training.kd import KDContext, kd_loss_fn
    from pocl_utils.training.loop import run_steps
    precision = replace(policy_for(dev), fused_loss=True, compile=True) if compiled else None  # fused: what compiles
    ctx = KDContext(examples, pad_id=0, eos_id=0, teacher=teacher, precision=precision)
    loss_fn = kd_loss_fn(student, ctx, kind=KIND, tau=1.0, alpha=ALPHA, rng=np.random.default_rng(0))
    marks = {}

    def on_step(step: int, row) -> None:
        if step in (s.warm - 1, s.warm + s.steps - 1):
            sync(dev)
            marks[step] = time.perf_counter()

    idx = list(range(len(examples)))
    log = run_steps(student, loss_fn, iter([idx] * (s.warm + s.steps)), s.warm + s.steps,
                    TrainSpec(lr=1e-4, batch_size=len(idx), warmup_frac=0.0), on_step=on_step)
    return (marks[s.warm + s.steps - 1] - marks[s.warm - 1]) / s.steps, log[0]["loss"]


def part_step(s: Sizes, compiled: bool = False) -> dict:
    from pocl_utils.modeling.models import freeze_teacher, n_params
    from pocl_utils.training.batches import make_batch
    dev = device()
    peak = matmul_peak(dev, s.peak_n)
    teacher0 = _gpt2(s.teacher, s, 0).eval().requires_grad_(False)  # fp32 on the CPU; each variant takes a copy
    student0 = _gpt2(s.student, s, 1)
    flops_per_token = 2 * n_params(teacher0) + 6 * n_params(student0)
    rows = []
    for bs in s.batches:
        examples = _examples(s, bs)
        batch = make_batch(examples, 0).to(dev)
        tokens = bs * (s.prompt + s.response)
        teacher = copy.deepcopy(teacher0).to(dev)
        ref = _reference_loss(copy.deepcopy(student0).to(dev), teacher, batch)
        del teacher
        for name in ("naive", "pocl") + ((COMPILED,) if compiled else ()):
            student, teacher = copy.deepcopy(student0).to(dev), copy.deepcopy(teacher0).to(dev)
            if name != "naive":
                freeze_teacher(teacher)  # as kd_loss_fn does: bf16 on a GPU (a real run would load it so)
            reset_peak(dev)
            if name == "naive":
                sec, first = _measure_naive(student, teacher, batch, s, dev)
            else:
                sec, first = _measure_pocl(student, teacher, examples, s, dev, compiled=name == COMPILED)
            rows.append({"variant": name, "batch": bs, "ms": 1e3 * sec, "tok_s": tokens / sec,
                         "mfu": flops_per_token * tokens / sec / (peak["tflops"] * 1e12), "peak_gib": peak_gib(dev),
                         "loss": first, "fp32_loss": ref, "rel_loss_diff": abs(first - ref) / abs(ref)})
            del student, teacher
    by = {(r["variant"], r["batch"]): r for r in rows}
    speedup = {str(bs): by[("naive", bs)]["ms"] / by[("pocl", bs)]["ms"] for bs in s.batches}
    return {"matmul_peak": peak, "flops_per_token": flops_per_token, "rows": rows, "pocl_speedup_vs_naive": speedup,
            "teacher_params": n_params(teacher0), "student_params": n_params(student0)}


# ---- (b) generation ----------------------------------------------------------------------------------------------

def _time_generation(fns: dict, new: int, dev: torch.device) -> tuple[dict, dict]:
    """(per name: seconds, new tokens, tokens/s; per name: the outputs) of each generation function, after a warm-up."""
    result, outs = {}, {}
    for name, fn in fns.items():
        fn(2)  # warm-up: kernels, caches
        box = {}
        sec = timed(lambda: box.setdefault("out", fn(new)), dev)
        outs[name] = box["out"]
        n_tokens = sum(min(len(o) + 1, new) for o in box["out"])  # the EOS counts as generated
        result[name] = {"seconds": sec, "new_tokens": n_tokens, "tok_s": n_tokens / sec}
    return result, outs


def part_generate(s: Sizes) -> dict:
    from pocl_utils.modeling.generate import generate
    from pocl_utils.modeling.models import autocast
    dev = device()
    model = _gpt2(s.student, s, 1).to(dev).eval()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, s.vocab, s.gen_prompt).tolist() for _ in range(s.gen_batch)]
    eos = s.vocab - 1
    ids = torch.tensor(prompts, device=dev)

    def ours(new: int, backend: str = "pocl", **sampling):
        return generate(model, prompts, eos_id=eos, pad_id=0, max_new_tokens=new, batch_size=s.gen_batch,
                        backend=backend, **sampling)

    def theirs(new: int):
        with torch.inference_mode(), autocast(dev):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 do_sample=False, eos_token_id=eos, pad_token_id=0)
        new_ids = out[:, ids.shape[1]:].tolist()
        return [row[:row.index(eos)] if eos in row else row for row in new_ids]

    result, outs = _time_generation({"pocl": ours, "transformers": theirs}, s.gen_new, dev)
    result["pocl_speedup"] = result["pocl"]["tok_s"] / result["transformers"]["tok_s"]
    result["rows_equal"] = sum(a == b for a, b in zip(outs["pocl"], outs["transformers"]))
    result["rows"] = s.gen_batch
    result["settings"] = {"batch": s.gen_batch, "prompt": s.gen_prompt, "max_new_tokens": s.gen_new, "greedy": True,
                          "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32"}
    # sampled with evaluation's settings: pocl's loop vs transformers' generate + pocl's two LogitsProcessors
    evaluation = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, no_repeat_ngram_size=6, seed=0)
    backends = {b: (lambda new, b=b: ours(new, b, **evaluation)) for b in ("pocl", "transformers")}
    sampled, outs = _time_generation(backends, s.gen_new, dev)
    sampled["pocl_speedup"] = sampled["pocl"]["tok_s"] / sampled["transformers"]["tok_s"]
    sampled["rows_equal"] = sum(a == b for a, b in zip(outs["pocl"], outs["transformers"]))
    sampled["settings"] = {**evaluation, "transformers": "generate.generate(backend='transformers')"}
    result["sampled"] = sampled
    return result


# ---- (c) the profile ---------------------------------------------------------------------------------------------

WORLD_SETS = ("n_train", "n_valid", "n_test", "n_ood", "n_vicuna")


def _workspace(p, root: Path, fraction: float):
    """The profile's data and tokenizer steps on `fraction` of its world's rows, built in `root` (timed), and the
    workspace reading them."""
    from dataclasses import replace
    from pocl_utils.experiment.workspace import Workspace
    from pocl_utils.world import generate_world, pretrain_corpus, train_tokenizer, world_config, write_world
    from pocl_utils import data as D
    times = {}
    full = world_config(p.world)
    sizes = {k: max(8, round(getattr(full, k) * fraction)) for k in WORLD_SETS}
    cfg = replace(world_config(p.world, **sizes), seed=p.seed)
    t0 = time.perf_counter()
    write_world(generate_world(cfg), root / "data", cfg=cfg)
    times["data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = D.load_instructions(root / "data" / "train.jsonl")
    train_tokenizer(pretrain_corpus(cfg, 2000) + [r["prompt"] + r["output"] for r in rows], p.vocab_size,
                    root / "tokenizer")
    times["tokenizer"] = time.perf_counter() - t0
    return Workspace(p, root), times


def _per_step(fn_steps, warm: int, steps: int, dev) -> float:
    """Seconds per step of fn_steps(k) (k optimizer steps), from a warm-up call and a timed one."""
    fn_steps(warm)
    return timed(lambda: fn_steps(steps), dev) / steps


def part_profile(s: Sizes) -> dict:
    import tempfile
    from pocl_utils.experiment.config import TrainSpec, get_profile
    from pocl_utils.data import EVAL_SETS
    from pocl_utils.difficulty import score_samples
    from pocl_utils.evaluate import evaluate_set, greedy_rouge
    from pocl_utils.experiment.experiments import GRIDS, grid, n_seeds_for
    from pocl_utils.modeling.generate import generate
    from pocl_utils.modeling.models import build_model
    from pocl_utils.experiment.workspace import lm_blocks
    from pocl_utils.training.batches import epoch_batches
    from pocl_utils.training.kd import KDContext, kd_loss_fn
    from pocl_utils.training.loop import run_steps, sft, total_steps
    from pocl_utils.training.teacher_cache import build_teacher_cache
    from pocl_utils.world import pretrain_corpus, world_config
    dev = device()
    p = get_profile(s.profile)
    out: dict = {"profile": p.name, "sample": s.sample, "steps_timed": s.kd_steps, "world_fraction": s.world_fraction,
                 "prepare_s": {}, "measured_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ws, times = _workspace(p, Path(tmp), s.world_fraction)
        out["measured_s"].update(times)
        out["prepare_s"].update({k: v / s.world_fraction for k, v in times.items()})
        enc, tok = ws.encoded("train"), ws.tokenizer
        n, m = round(len(enc) / s.world_fraction), min(s.sample, len(enc))  # n: the full world's train examples
        sub = enc[:m]
        positions = p.max_len + p.max_new_tokens

        teacher = build_model(p.teacher, len(tok), positions, seed=p.seed, eos_id=ws.eos_id).to(dev)
        per = _per_step(lambda k: sft(teacher, enc, ws.pad_id, p.teacher_sft, steps=k), 1, s.kd_steps, dev)
        out["measured_s"]["teacher_step"] = per
        out["prepare_s"]["teacher"] = per * total_steps(n, p.teacher_sft)

        student = build_model(p.student, len(tok), positions, seed=p.seed + 1, eos_id=ws.eos_id).to(dev)
        blocks = lm_blocks(pretrain_corpus(world_config(p.world), 400), tok, p.max_len)
        spec = TrainSpec(lr=p.kd.lr, batch_size=p.kd.batch_size, epochs=1.0)
        per = _per_step(lambda k: sft(student, blocks, ws.pad_id, spec, steps=k), 1, s.kd_steps, dev)
        out["measured_s"]["student_init_step"] = per
        out["prepare_s"]["student_init"] = per * max(1, p.student_pretrain_steps)

        sec = timed(lambda: score_samples(student.eval(), tok, sub, max_new_tokens=p.max_new_tokens), dev)
        out["measured_s"]["ranking_sample"] = sec
        out["prepare_s"]["ranking"] = sec * n / m
        box = {}
        sec = timed(lambda: box.setdefault("cache", build_teacher_cache(teacher, sub, ws.pad_id)), dev)
        out["measured_s"]["teacher_cache_sample"] = sec
        out["prepare_s"]["teacher_cache"] = sec * n / m
        sec = timed(lambda: generate(teacher, [e.prompt_ids for e in sub], eos_id=ws.eos_id, pad_id=ws.pad_id,
                                     max_new_tokens=p.max_new_tokens), dev)
        out["measured_s"]["seqkd_sample"] = sec
        out["prepare_s"]["seqkd"] = sec * n / m

        ctx = KDContext(sub, ws.pad_id, ws.eos_id, cache=box["cache"])
        rng = np.random.default_rng(0)
        loss_fn = kd_loss_fn(student, ctx, kind=KIND, tau=1.0, alpha=ALPHA, rng=rng)
        batches = epoch_batches(np.arange(m), p.kd.batch_size, rng)
        per = _per_step(lambda k: run_steps(student, loss_fn, batches, k, p.kd), 1, s.kd_steps, dev)
        out["measured_s"]["kd_step"] = per
        kd_train = per * total_steps(n, p.kd)

        valid = ws.encoded("valid")[:min(s.sample, p.valid_max_examples or s.sample)]
        refs = [[ws.sets["valid"][e.index]["output"]] for e in valid]
        sec = timed(lambda: greedy_rouge(student, tok, valid, refs, max_new_tokens=p.max_new_tokens), dev)
        n_valid = round(len(ws.encoded("valid")) / s.world_fraction)
        n_valid = min(n_valid, p.valid_max_examples or n_valid)
        validation = sec * n_valid / len(valid) * p.valid_checks
        evaluation, eval_rows = 0.0, 0
        for role in EVAL_SETS:
            here = ws.encoded(role)
            k = round(len(here) / s.world_fraction)  # the full world's rows of this set
            k = min(k, p.eval_max_examples or k)
            part = here[:min(k, len(here), max(1, s.sample // len(EVAL_SETS)))]
            refs = [[ws.sets[role][e.index]["output"]] for e in part]
            sec = timed(lambda: evaluate_set(student, tok, part, refs, seeds=p.eval_seeds,
                                             max_new_tokens=p.max_new_tokens), dev)
            evaluation += sec * k / len(part)
            eval_rows += k
    run = {"train": kd_train, "validation": validation, "evaluation": evaluation}
    out["kd_run_s"] = {**run, "total": sum(run.values())}
    seen = {}
    for name in GRIDS:
        for spec in grid(name, n_seeds_for(p, name), p.grid):
            seen.setdefault(repr(spec.key()), spec)
    out["grid_runs"] = len(seen)
    out["eval_rows"] = eval_rows
    prep = sum(out["prepare_s"].values())
    out["projected_s"] = {"prepare": prep, "grid": len(seen) * out["kd_run_s"]["total"],
                          "total": prep + len(seen) * out["kd_run_s"]["total"]}
    out["note"] = ("projected from timed samples: data and tokenizer built on world_fraction of the world x 1 / "
                   "world_fraction (an upper bound for the tokenizer); SFT and KD steps x their step counts; ranking / "
                   "cache / SeqKD / evaluation x (full size / sample). A KD run is timed as an off-policy run from "
                   "the cache (GKD's on-policy steps also generate, so they cost more); untrained models rarely stop "
                   "early, so the generation-bound steps are upper bounds")
    return out


# ---- the driver --------------------------------------------------------------------------------------------------

def part_trl(s: Sizes) -> dict:
    """Notebook 13's steps on this device: the `smoke` world prepared here, the difficulty measured with the student
    here (`integrations.trl.measure_difficulty`), then TRL's KDTrainer with POCL's curriculum and our loop, from the
    same weights on the same stages and batches; seconds of each, and their per-step losses' largest relative
    difference (bf16 autocast on a GPU for both: equal to rounding; fp32 on the CPU: to 1e-5)."""
    import tempfile
    from pocl_utils.experiment import pipeline
    from pocl_utils.experiment.config import get_profile
    from pocl_utils.integrations import compare, trl as pocl_trl
    dev = str(device())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws = pipeline.prepare(get_profile(s.trl_profile), runs_root=Path(tmp), until="student_init", log=lambda m: None)
        prepare_s = time.perf_counter() - t0
        kd = ws.profile.kd
        t0 = time.perf_counter()
        data = pocl_trl.measure_difficulty(compare.train_dataset(ws), ws.load_student_init(dev), ws.tokenizer,
                                           n_subsets=4, max_new_tokens=ws.profile.max_new_tokens)
        measure_s = time.perf_counter() - t0
        steps = pocl_trl.steps_for(len(data), epochs=kd.epochs, batch_size=kd.batch_size)
        plan = pocl_trl.plan_curriculum(data, total_steps=steps, tau=(1.0, 2.0), alpha=(ALPHA, 0.0), seed=0,
                                        warmup_frac=kd.warmup_frac)
        t0 = time.perf_counter()
        trainer = compare.train_with_trl(ws, data, plan, kd, Path(tmp) / "trl", divergence=KIND, device=dev)
        trl_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ours = compare.train_with_our_loop(ws, plan, kd, divergence=KIND, device=dev)
        ours_s = time.perf_counter() - t0
    theirs = [row["loss"] for row in trainer.pocl_log]
    rel = max(abs(a - b) / abs(b) for a, b in zip(theirs, ours)) if len(theirs) == len(ours) else math.inf
    return {"profile": s.trl_profile, "rows": len(data), "steps": plan.total_steps, "logged_steps": len(theirs),
            "prepare_s": prepare_s, "measure_s": measure_s, "trl_s": trl_s, "ours_s": ours_s,
            "max_rel_loss_diff": rel}


PARTS = {"step": part_step, "generate": part_generate, "profile": part_profile, "trl": part_trl}


def machine() -> dict:
    dev = device()
    info = {"device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def run_part(name: str, tiny: bool, timeout: float, compiled: bool = False) -> dict:
    """One part in a subprocess: {status: ok | failed | timeout, seconds, result | error}."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "part.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--part-out", str(result)]
        cmd += (["--tiny"] if tiny else []) + (["--compile"] if compiled else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "seconds": time.perf_counter() - t0, "error": f"over {timeout:.0f} s"}
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not result.exists():
            return {"status": "failed", "seconds": seconds, "error": (proc.stderr or proc.stdout)[-3000:]}
        return {"status": "ok", "seconds": seconds, "result": json.loads(result.read_text())}


def summary(report: dict) -> str:
    lines = [f"pocl GPU check on {report['machine'].get('gpu', report['machine']['device'])} "
             f"({report['machine']['date']}{', tiny' if report['tiny'] else ''})"]
    for name, part in report["parts"].items():
        lines.append(f"\n[{name}] {part['status']} in {part['seconds']:.1f} s")
        if part["status"] != "ok":
            lines.append("  " + part["error"].strip().splitlines()[-1] if part["error"].strip() else "")
            continue
        r = part["result"]
        if name == "step":
            lines.append(f"  matmul peak {r['matmul_peak']['tflops']:.1f} TFLOP/s ({r['matmul_peak']['dtype']})")
            for row in r["rows"]:
                mem = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
                lines.append(f"  {row['variant']:12s} bs {row['batch']:3d}: {row['ms']:9.2f} ms  "
                             f"{row['tok_s']:10.0f} tok/s  MFU {100 * row['mfu']:5.1f}%  peak {mem} GiB  "
                             f"loss rel. diff to fp32 {row['rel_loss_diff']:.2e}")
            lines.append(f"  pocl speed-up vs naive: {r['pocl_speedup_vs_naive']}")
        elif name == "generate":
            for k in ("pocl", "transformers"):
                lines.append(f"  {k:12s}: {r[k]['tok_s']:10.1f} tok/s ({r[k]['new_tokens']} tokens)")
            lines.append(f"  pocl / transformers: {r['pocl_speedup']:.2f}x; rows equal {r['rows_equal']}/{r['rows']}")
            q = r["sampled"]
            lines.append(f"  sampled (T 1, no_repeat_ngram_size 6): pocl {q['pocl']['tok_s']:.1f} tok/s, "
                         f"transformers + pocl's processors {q['transformers']['tok_s']:.1f} tok/s; "
                         f"pocl / transformers {q['pocl_speedup']:.2f}x; rows equal {q['rows_equal']}/{r['rows']}")
        elif name == "trl":
            lines.append(f"  {r['profile']} world, {r['rows']} rows: measured in {r['measure_s']:.1f} s; "
                         f"{r['steps']} steps: TRL KDTrainer {r['trl_s']:.1f} s, our loop {r['ours_s']:.1f} s; "
                         f"per-step loss rel. diff {r['max_rel_loss_diff']:.2e}")
        else:
            for k, v in r["prepare_s"].items():
                lines.append(f"  prepare {k:13s} {v:10.1f} s")
            lines.append(f"  one KD run      {r['kd_run_s']['total']:10.1f} s  ({r['grid_runs']} runs in the grid)")
            lines.append(f"  projected total {r['projected_s']['total'] / 3600:10.2f} h")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU, CI)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per part (default: per-part limits)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "gpu_check.json")
    ap.add_argument("--compile", action="store_true",
                    help=f"add the step variant {COMPILED!r} (torch.compile, as the profile's compile; +{COMPILE_EXTRA_S} s)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    if args.part:  # the worker of one part
        torch.manual_seed(0)
        extra = {"compiled": True} if args.compile and args.part == "step" else {}
        args.part_out.write_text(json.dumps(PARTS[args.part](sizes, **extra)))
        return 0
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {unknown}; valid: {', '.join(PARTS)}")
    report = {"bench": "gpu_check", "tiny": args.tiny, "compile": args.compile, "sizes": asdict(sizes),
              "machine": machine(), "parts": {}}
    for name in names:
        limit = args.timeout or LIMITS_S[name] + (COMPILE_EXTRA_S if args.compile and name == "step" else 0)
        report["parts"][name] = run_part(name, args.tiny, limit, compiled=args.compile)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))  # after each part: a later hang loses nothing
    print(summary(report))
    print(f"\nwritten: {args.out}")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except Exception:
        traceback.print_exc()
        raise SystemExit(2)
