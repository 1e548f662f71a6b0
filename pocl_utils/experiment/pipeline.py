"""Preparing a profile's workspace: data -> tokenizer -> teacher SFT -> student pre-training -> difficulty ranking ->
teacher cache -> SeqKD responses. Every step is cached on disk under the workspace folder and keyed by the hash of
what it depends on (`workspace`), so notebooks can call `prepare()` again and get the finished artefacts back in
seconds. The generated world's own steps are here; real-data profiles are prepared by `real.prepare_real`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..data import encode_examples, load_instructions
from .config import Profile, TrainSpec, get_profile
from ..modeling.models import build_model
from .real import prepare_real
from .results import atomic_write_json
from ..training.distributed import save_checkpoint
from ..training.loop import sft
from ..world import WorldConfig, generate_world, pretrain_corpus, train_tokenizer, world_config, write_world
from .workspace import (STEPS, Workspace, build_steps, lm_blocks, prep_keys, ranking_step, seqkd_step,
                        teacher_cache_step, thin_log, workspace_root)


def prepare(profile: Profile | str, *, runs_root: Path | None = None, device: str | None = None,
            log: Callable[[str], None] = print, until: str = STEPS[-1]) -> Workspace:
    """Build (or find) every shared artefact of a profile's grid: the steps of STEPS, each cached under its key.

    `profile`: a Profile or a profile name; real-data profiles are prepared by `real.prepare_real`.
    `runs_root`: the folder holding one workspace per profile (default RUNS_ROOT).
    `device`: the profile's `device` setting for this call ("auto", "cpu", "cuda", ...; the workspace keeps it); None =
    the profile's own.
    `log`: called with one line per finished step.
    `until`: the last step to build (world profiles; default all of STEPS). Probes stop at "ranking".
    Returns the workspace, whose artefacts load lazily from disk.
    Raises ConfigError: (key "device") a device this machine lacks, before any step is built.
    """
    p = get_profile(profile) if isinstance(profile, str) else profile
    p = p if device is None else replace(p, device=device)
    if p.data in ("real", "files"):
        return prepare_real(p, runs_root, device=device, log=log)
    ws = Workspace(p, workspace_root(p, runs_root))
    builders = {"data": _build_data, "tokenizer": _build_tokenizer, "teacher": _build_teacher,
                "student_init": _build_student, "ranking": ranking_step, "teacher_cache": teacher_cache_step,
                "seqkd": seqkd_step}
    if until not in STEPS:
        raise ValueError(f"prepare: until must be one of {STEPS}, got {until!r}")
    builders = {name: builders[name] for name in STEPS[:STEPS.index(until) + 1]}
    build_steps(ws, builders, prep_keys(p), ws.device, log=log)
    return ws


# ---- the steps ---------------------------------------------------------------------------------------------------


def _build_data(ws: Workspace, out: Path, dev) -> None:
    if ws.profile.data != "world":
        raise NotImplementedError("real-data workspaces are prepared by pocl_utils.experiment.real")
    cfg = replace(world_config(ws.profile.world), seed=ws.profile.seed)
    write_world(generate_world(cfg), out, cfg=cfg)


def _build_tokenizer(ws: Workspace, out: Path, dev) -> None:
    cfg = replace(world_config(ws.profile.world), seed=ws.profile.seed)
    rows = load_instructions(ws.root / "data" / "train.jsonl")
    train_tokenizer(tokenizer_texts(cfg, rows), ws.profile.vocab_size, out)


def tokenizer_texts(cfg: WorldConfig, train_rows: list[dict]) -> list[str]:
    """The BPE training text of a world's tokenizer: 2,000 pre-training texts, then each training row's prompt and
    answer: the reference as written, or its clean answer (`clean_output`, when the row has one) with
    `cfg.tokenizer_clean`."""
    answer = "clean_output" if cfg.tokenizer_clean else "output"
    return pretrain_corpus(cfg, 2000) + [r["prompt"] + r.get(answer, r["output"]) for r in train_rows]


def _build_teacher(ws: Workspace, out: Path, dev) -> None:
    """The teacher: pre-trained as a plain LM on its own pool of world text when the profile asks
    (`teacher_pretrain_steps`, as GPT-2 XL is pre-trained on the web), then fine-tuned on the instruction data."""
    p, tok = ws.profile, ws.tokenizer
    model = build_model(p.teacher, len(tok), p.max_len + p.max_new_tokens, seed=p.seed, eos_id=ws.eos_id).to(dev)
    log = []
    if p.teacher_pretrain_steps > 0:
        log += _pretrain(ws, model, p.teacher_sft, p.teacher_pretrain_steps, pool="teacher", seed=p.seed,
                         desc="teacher LM pre-training")
    log += sft(model, teacher_sft_data(ws), ws.pad_id, p.teacher_sft, seed=p.seed, desc="teacher SFT", **p.engine())
    save_checkpoint(model, out / "model")
    atomic_write_json(out / "log.json", thin_log(log))


def teacher_sft_data(ws: Workspace) -> list:
    """The teacher's SFT examples: the instruction data, plus plain-LM blocks of its own pre-training pool.

    The blocks (when `teacher_sft_mix` > 0) keep instruction tuning from erasing what pre-training taught (the
    pre-training term of InstructGPT's PPO-ptx and MiniLLM). mix = the share of pre-training blocks among the examples:
    up to round(n_train * mix / (1 - mix)) blocks are added.

    A world with noisy training references (`WorldConfig.ref_noise`) gives the teacher the right answers
    (`clean_output`): it is tuned on cleaner text than the student's one noisy reference, which it then corrects.

    Returns the encoded training set, followed by the pre-training blocks (their `index` continuing after its last).
    """
    p, train = ws.profile, ws.encoded("train")
    if any("clean_output" in r for r in ws.sets["train"]):
        clean = [{**r, "output": r.get("clean_output", r["output"])} for r in ws.sets["train"]]
        train = encode_examples(clean, ws.tokenizer, max_prompt_len=p.max_prompt_len, max_len=p.max_len)[0]
    if p.teacher_sft_mix <= 0:
        return train
    n_blocks = round(len(train) * p.teacher_sft_mix / (1.0 - p.teacher_sft_mix))
    cfg = replace(world_config(p.world), seed=p.seed)
    texts = pretrain_corpus(cfg, max(4000, n_blocks * p.max_len // PRETRAIN_TOKENS_PER_TEXT), pool="teacher")
    blocks = lm_blocks(texts, ws.tokenizer, p.max_len)[:n_blocks]
    return train + [replace(b, index=len(train) + k) for k, b in enumerate(blocks)]


def _build_student(ws: Workspace, out: Path, dev) -> None:
    """The student's warm start: plain-LM pre-training on a pool of world text disjoint from the teacher's."""
    p, tok = ws.profile, ws.tokenizer
    model = build_model(p.student, len(tok), p.max_len + p.max_new_tokens, seed=p.seed + 1, eos_id=ws.eos_id).to(dev)
    log = _pretrain(ws, model, p.kd, max(1, p.student_pretrain_steps), pool="student", seed=p.seed + 1,
                    desc="student LM pre-training")
    save_checkpoint(model, out / "model")
    atomic_write_json(out / "log.json", thin_log(log))


PRETRAIN_TOKENS_PER_TEXT = 16  # a lower bound of a world text's length, to size the corpus for the step budget


def _pretrain(ws: Workspace, model, spec: TrainSpec, steps: int, *, pool: str, seed: int, desc: str) -> list:
    """`steps` plain-LM steps on world text (pool `pool`), at spec's learning rate and batch size."""
    p = ws.profile
    cfg = replace(world_config(p.world), seed=p.seed)
    n_texts = max(4000, steps * spec.batch_size * p.max_len // PRETRAIN_TOKENS_PER_TEXT // 4)
    blocks = lm_blocks(pretrain_corpus(cfg, n_texts, pool=pool), ws.tokenizer, p.max_len)
    spec = TrainSpec(lr=spec.lr, batch_size=spec.batch_size, epochs=1.0)
    return sft(model, blocks, ws.pad_id, spec, seed=seed, steps=steps, desc=desc, **p.engine())
