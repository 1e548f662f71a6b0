"""One KD run of the grid (baseline or +POCL) from the student's initial weights to evaluated metrics, and the grid
itself run by worker processes through the run registry (finished runs skipped, stages checkpointed for resume)."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..training import distributed
from .config import RunSpec, config_hash
from ..modeling.models import load_weights, save_weights
from ..curriculum import Stage, plan_stages
from .workspace import Workspace
from .provenance import environment, precision
from .results import atomic_write_json
from ..training.train import KDContext, batch_stream, kd_loss_fn, run_steps, total_steps

KIND = "runs"


def run_key(ws: Workspace, spec: RunSpec, device: torch.device | None = None) -> str:
    """Registry key: the run spec plus everything upstream it depends on (teacher, student, data, budget, eval) and
    the precision policy of the device it runs on (`device`, default this process's) and of the prepared steps, so a
    bf16 CUDA run and an fp32 CPU run of one configuration never stand in for each other."""
    p = ws.profile
    upstream = ws.step_keys()
    return config_hash({"spec": spec.key(), "kd": asdict(p.kd), "teacher": upstream["teacher_cache"],
                        "student": upstream["ranking"], "seqkd": upstream["seqkd"], "eval": eval_key(p),
                        "gkd_lambda": p.gkd_lambda, "valid": [p.valid_max_examples, p.valid_checks],
                        "precision": precision(device or distributed.device()), "built_with": ws.built_with()})


def eval_key(p) -> dict[str, Any]:
    key = {"seeds": list(p.eval_seeds), "max_examples": p.eval_max_examples, "new": p.max_new_tokens}
    return key if p.greedy_max_examples < 0 else {**key, "greedy": p.greedy_max_examples}


def stages_for(ws: Workspace, spec: RunSpec, encoded: list) -> list[Stage]:
    """POCL: ranked, partitioned, Baby Step stages sharing the baseline's step budget; baseline: one stage.
    Stage samples are positions in `encoded`."""
    steps = total_steps(len(encoded), ws.profile.kd)
    if not spec.pocl:
        return [Stage(1, np.arange(len(encoded)), spec.tau[0], spec.alpha[0], steps)]
    position = {e.index: k for k, e in enumerate(encoded)}  # the ranking names samples by dataset index
    easy_first = np.array([position[i] for i in easy_first_ids(ws, spec.ranking)])
    return plan_stages(easy_first, n_subsets=spec.n_subsets, total_steps=steps, tau=spec.tau, alpha=spec.alpha,
                       order=spec.order, seed=spec.seed)


def easy_first_ids(ws: Workspace, ranking: str) -> np.ndarray:
    """Training sample ids easiest first: by the student-based measurer (fusion, rouge_l, ce), or by the world's true
    difficulty ("oracle", the positive control; the rows' order breaks ties, and world rows are in random order)."""
    if ranking != "oracle":
        return ws.ranking.order(ranking)
    from ..difficulty import order_by_truth
    from ..world import true_difficulty
    ids = np.sort(ws.ranking.ids)
    return order_by_truth(ids, true_difficulty([ws.sets["train"][i] for i in ids]))


def check_points(stages: list[Stage], n_checks: int) -> set[tuple[int, int]]:
    """(stage, step) pairs after which the validation ROUGE-L is measured: each POCL stage's end; for a single stage,
    `n_checks` evenly spaced points ending at the last step."""
    if len(stages) > 1:
        return {(s.index, s.steps - 1) for s in stages}
    steps = stages[0].steps
    return {(1, max(0, math.ceil(steps * (k + 1) / n_checks) - 1)) for k in range(n_checks)}


def kd_context(ws: Workspace, spec: RunSpec, device: torch.device) -> KDContext:
    p = ws.profile
    if spec.method == "SeqKD":
        return KDContext(ws.seqkd_encoded, ws.pad_id, ws.eos_id)
    ctx = KDContext(ws.encoded("train"), ws.pad_id, ws.eos_id, max_new_tokens=p.max_new_tokens)
    if spec.method != "SFT":
        ctx.cache = ws.teacher_cache  # None: the profile runs the teacher live
    if spec.on_policy or (spec.method != "SFT" and ctx.cache is None):
        ctx.teacher = distributed.shard_model(ws.load_teacher(device))  # sharded only under an FSDP launch
    if spec.on_policy:
        ctx.on_policy_frac = p.gkd_lambda
    return ctx


def train_run(ws: Workspace, spec: RunSpec, run_dir: Path, device: torch.device,
              validate: Callable[[Any], float]) -> dict[str, Any]:
    """Train one run stage by stage; after each finished stage its weights and log are checkpointed, so a killed run
    resumes at the last finished stage and ends exactly as an uninterrupted one would."""
    ctx = kd_context(ws, spec, device)
    stages = stages_for(ws, spec, ctx.encoded)
    checks = check_points(stages, ws.profile.valid_checks)
    student = ws.load_student_init(device)
    state = _load_progress(run_dir, student)
    for stage in stages:
        if stage.index <= state["done_stage"]:
            continue
        torch.manual_seed(spec.seed * 1000 + stage.index)
        rng = np.random.default_rng([spec.seed, stage.index])
        kind = None if spec.method in ("SFT", "SeqKD") else spec.divergence
        loss_fn = kd_loss_fn(student, ctx, kind=kind, tau=stage.tau, alpha=stage.alpha, rng=rng)

        def on_step(step: int, parts: dict, stage=stage) -> None:
            if (stage.index, step) in checks:
                score = validate(student)
                state["valid"].append({"stage": stage.index, "step": state["steps"] + step + 1, "rouge_l": score})
                if score > state["best"]:
                    state["best"] = score
                    save_weights(student, run_dir / "best.safetensors")

        batches = batch_stream(stage.samples, ctx.encoded, ws.profile.kd.batch_size, rng, device)  # CUDA: by length
        log = run_steps(student, loss_fn, batches, stage.steps,
                        ws.profile.kd, on_step=on_step, desc=f"{spec.label} s{spec.seed} stage {stage.index}")
        state["loss"] += [{"stage": stage.index, "step": state["steps"] + i, **row} for i, row in enumerate(log)
                          if i % max(1, stage.steps // 50) == 0 or i == stage.steps - 1]
        state["steps"] += stage.steps
        state["stages"].append({"stage": stage.index, "n_samples": len(stage.samples), "tau": stage.tau,
                                "alpha": stage.alpha, "steps": stage.steps})
        state["done_stage"] = stage.index
        _save_progress(run_dir, student, state)
    load_weights(student, run_dir / "best.safetensors")
    return state


def _load_progress(run_dir: Path, student) -> dict[str, Any]:
    path = run_dir / "progress.json"
    if not path.exists():
        return {"done_stage": 0, "steps": 0, "best": -1.0, "valid": [], "loss": [], "stages": []}
    state = json.loads(path.read_text())
    load_weights(student, run_dir / "last.safetensors")
    return state


def _save_progress(run_dir: Path, student, state: dict[str, Any]) -> None:
    """Weights first, then the progress file that points at them (both atomic renames)."""
    save_weights(student, run_dir / "last.safetensors")
    atomic_write_json(run_dir / "progress.json", state)


def eval_data(ws: Workspace, role: str, max_examples: int) -> tuple[list, list[list[str]]]:
    """A set's encoded prompts and reference lists, on the profile's seeded subset."""
    from ..evaluate import subset
    enc = ws.encoded(role)
    enc = [enc[i] for i in subset(len(enc), max_examples)]
    return enc, [ws.sets[role][e.index]["references"] for e in enc]


def validation_score(ws: Workspace, model) -> float:
    """Greedy ROUGE-L on the validation subset (checkpoint selection, A.2.2)."""
    from ..evaluate import greedy_rouge
    enc, refs = eval_data(ws, "valid", ws.profile.valid_max_examples)
    return greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=ws.profile.max_new_tokens)


def evaluate_model(ws: Workspace, model) -> dict[str, Any]:
    """The paper's protocol on the five eval sets: sampled responses (temperature 1), ROUGE-L, mean over seeds."""
    from ..data import EVAL_SETS
    from ..evaluate import evaluate_set
    p = ws.profile
    out = {}
    for role in EVAL_SETS:
        enc, refs = eval_data(ws, role, p.eval_max_examples)
        out[role] = evaluate_set(model, ws.tokenizer, enc, refs, seeds=p.eval_seeds, max_new_tokens=p.max_new_tokens)
    return out


def greedy_scores(ws: Workspace, model) -> dict[str, Any]:
    """Greedy ROUGE-L on `greedy_max_examples` rows of each eval set (0 = all): deterministic, so smaller effects are
    separable than under sampling. Empty when the profile asks for none (-1)."""
    from ..data import EVAL_SETS
    from ..evaluate import greedy_rouge
    p, out = ws.profile, {}
    if p.greedy_max_examples < 0:
        return out
    for role in EVAL_SETS:
        enc, refs = eval_data(ws, role, p.greedy_max_examples)
        out[role] = {"mean": greedy_rouge(model, ws.tokenizer, enc, refs, max_new_tokens=p.max_new_tokens),
                     "n": len(enc)}
    return out


def scores(ws: Workspace, model) -> dict[str, Any]:
    """A model's eval metrics: "eval" (the paper's sampled protocol) and "greedy" (see greedy_scores)."""
    return {"eval": evaluate_model(ws, model), "greedy": greedy_scores(ws, model)}


def execute(ws: Workspace, spec: RunSpec, device: torch.device) -> dict[str, Any] | None:
    """Run `spec` unless finished; returns its record, or None if another process holds its claim.

    Under `accelerate launch` every rank calls this for the same spec and they train the run together (data parallel,
    `train.run_steps`). Only the main rank reads and claims the registry entry (`_claim` hands its answer to the
    others), checkpoints, evaluates and writes the record; the others train in a private folder (`_train_dir`),
    then wait at a barrier until the record exists, and return it too. All ranks must see one file system (one
    machine, or a shared disk across machines)."""
    reg, key = ws.registry, run_key(ws, spec, device)
    with _claim(reg, key) as status:
        if status != "mine":
            return reg.load(KIND, key) if status == "done" else None
        t0 = time.time()
        run_dir = _train_dir(reg, key)
        state = train_run(ws, spec, run_dir, device, lambda m: validation_score(ws, m))
        if not distributed.is_main():
            shutil.rmtree(run_dir)
            distributed.barrier()  # while the main rank evaluates and writes the record
            return reg.load(KIND, key)
        student = ws.load_student_init(device)
        load_weights(student, run_dir / "best.safetensors")
        metrics = {**scores(ws, student), "train": state}
        config = {"spec": spec.key(), "label": spec.label, "method": spec.method, "variant": spec.variant,
                  "profile": ws.profile.name, "run_key": key, **environment(device)}
        record = reg.save(KIND, key, config, metrics, time.time() - t0)
        for name in ("last.safetensors", "best.safetensors"):
            (run_dir / name).unlink(missing_ok=True)  # the record is what matters; keep the registry small
        distributed.barrier()
        return record


@contextmanager
def _claim(reg, key: str) -> Iterator[str]:
    """The run's status, held for the block: "done", "taken" (another live process holds its claim) or "mine"
    (claimed by this process until the block ends). When launched, the main rank decides and the others follow."""
    if not distributed.is_main():
        yield distributed.broadcast(None)
    elif reg.done(KIND, key):
        yield distributed.broadcast("done")
    else:
        with reg.claim(KIND, key) as mine:
            # a run can be finished by another process between the check above and the claim
            yield distributed.broadcast("taken" if not mine else "done" if reg.done(KIND, key) else "mine")


def _train_dir(reg, key: str) -> Path:
    """Where this process keeps the run's checkpoints: the registry's run folder on the main rank; on another rank a
    private copy of it (`.rank<r>`), so that `train_run` on every rank resumes from the same stage while only the main
    rank writes the registry. The copy is deleted when the run ends."""
    run_dir = reg.run_dir(KIND, key)
    if distributed.is_main():
        for stale in run_dir.glob(".*.tmp"):  # half-written by a killed process; the claim makes us the only writer
            stale.unlink()
        reg.note_attempt(KIND, key)
    else:
        mine = run_dir / f".rank{distributed.rank()}"
        shutil.rmtree(mine, ignore_errors=True)  # left by a killed launch
        shutil.copytree(run_dir, mine, ignore=shutil.ignore_patterns(".*", "claim.lock", "attempts.log"))
        run_dir = mine
    distributed.barrier()  # the copies are taken before the main rank can write a checkpoint
    return run_dir


# ---- the grid ----------------------------------------------------------------------------------------------------

_WS: Workspace | None = None


def _init_worker(profile, root: str, threads: int) -> None:
    global _WS
    torch.set_num_threads(threads)
    _WS = Workspace(profile, Path(root))


def _work(spec: RunSpec) -> tuple[RunSpec, dict | None]:
    from ..modeling.models import pick_device
    return spec, execute(_WS, spec, pick_device())


def run_grid(ws: Workspace, specs: list[RunSpec], *, workers: int | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every spec (skipping finished ones) on `workers` processes with one thread each; returns the records.

    Under `accelerate launch` the launched processes are the workers: they run one spec at a time together
    (`execute`), so `workers` is 1 and every rank walks the main rank's list of unfinished specs."""
    from ..modeling.models import pick_device
    todo = distributed.broadcast([s for s in specs if not ws.registry.done(KIND, run_key(ws, s))])
    workers = 1 if distributed.world_size() > 1 else min(workers or ws.profile.workers, max(1, len(todo)))
    on = f"{workers} worker(s)" if distributed.world_size() == 1 else f"{distributed.world_size()} processes together"
    log(f"[grid] {len(specs)} runs, {len(specs) - len(todo)} finished already, {len(todo)} to run on {on}")
    t0 = time.time()
    if workers <= 1 or pick_device().type == "cuda":
        for k, s in enumerate(todo):
            execute(ws, s, distributed.device())
            log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(ws.profile, str(ws.root), 1)) as pool:
            for k, (s, _) in enumerate(pool.imap_unordered(_work, todo)):
                log(f"[grid] {k + 1}/{len(todo)} {s.label} seed {s.seed} ({time.time() - t0:.0f}s)")
    return [record for _, record in records_for(ws, specs)]


def records_for(ws: Workspace, specs: list[RunSpec]) -> list[tuple[RunSpec, dict[str, Any]]]:
    """(spec, record) pairs of the finished runs among `specs`; the spec carries the table's row label."""
    reg = ws.registry
    return [(s, reg.load(KIND, run_key(ws, s))) for s in specs if reg.done(KIND, run_key(ws, s))]


REFERENCE_MODELS = {"Teacher": "load_teacher", "Student (init)": "load_student_init"}  # name -> Workspace loader


def reference_score(ws: Workspace, name: str) -> dict[str, Any]:
    """The registry record of one reference model's scores on the eval sets ('Teacher' or 'Student (init)'), cached."""
    from ..modeling.models import pick_device
    load = getattr(ws, REFERENCE_MODELS[name])
    return ws.cached("reference", name, eval_key(ws.profile), lambda: scores(ws, load(pick_device()).eval()))


def reference_scores(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The teacher's (Table 1's 'Teacher' row) and the untrained student's scores on the eval sets, cached."""
    return {name: reference_score(ws, name) for name in REFERENCE_MODELS}
