"""The main job as steps: data -> tokenizer -> teacher SFT -> student pre-training -> difficulty ranking -> teacher
cache -> the grid of KD runs. Every step is cached on disk under the workspace folder and keyed by the hash of what
it depends on, so notebooks can call `prepare()` again and get the finished artefacts back in seconds.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import data as D
from .config import Profile, TrainSpec, get_profile
from .results import atomic_write_json
from .workspace import (Workspace, _build_ranking, _build_seqkd, _build_teacher_cache, _thin, build_steps, lm_blocks,
                        prep_keys, workspace_root)


def prepare(profile: Profile | str, *, runs_root: Path | None = None, device: str = "auto",
            log: Callable[[str], None] = print) -> Workspace:
    """Build (or find) every shared artefact of a profile's grid and return the workspace (real-data profiles are
    prepared by `real.prepare_real`)."""
    from .models import pick_device
    p = get_profile(profile) if isinstance(profile, str) else profile
    if p.data == "real":
        from .real import prepare_real
        return prepare_real(p, runs_root, device=device, log=log)
    ws = Workspace(p, workspace_root(p, runs_root))
    builders = {"data": _build_data, "tokenizer": _build_tokenizer, "teacher": _build_teacher,
                "student_init": _build_student, "ranking": _build_ranking, "teacher_cache": _build_teacher_cache,
                "seqkd": _build_seqkd}
    build_steps(ws, builders, prep_keys(p), pick_device(device), log=log)
    return ws


# ---- the steps ---------------------------------------------------------------------------------------------------


def _build_data(ws: Workspace, out: Path, dev) -> None:
    from .world import generate_world, world_config, write_world
    if ws.profile.data != "world":
        raise NotImplementedError("real-data workspaces are prepared by pocl_utils.real")
    cfg = replace(world_config(ws.profile.world), seed=ws.profile.seed)
    write_world(generate_world(cfg), out, cfg=cfg)


def _build_tokenizer(ws: Workspace, out: Path, dev) -> None:
    from .world import pretrain_corpus, train_tokenizer, world_config
    cfg = replace(world_config(ws.profile.world), seed=ws.profile.seed)
    rows = D.load_instructions(ws.root / "data" / "train.jsonl")
    texts = pretrain_corpus(cfg, 2000) + [r["prompt"] + r["output"] for r in rows]
    train_tokenizer(texts, ws.profile.vocab_size, out)


def _build_teacher(ws: Workspace, out: Path, dev) -> None:
    from .models import build_model, save_checkpoint
    from .train import sft
    p, tok = ws.profile, ws.tokenizer
    model = build_model(p.teacher, len(tok), p.max_len + p.max_new_tokens, seed=p.seed, eos_id=ws.eos_id).to(dev)
    log = sft(model, ws.encoded("train"), ws.pad_id, p.teacher_sft, seed=p.seed, desc="teacher SFT")
    save_checkpoint(model, out / "model")
    atomic_write_json(out / "log.json", _thin(log))


def _build_student(ws: Workspace, out: Path, dev) -> None:
    from .models import build_model, save_checkpoint
    from .train import sft
    from .world import pretrain_corpus, world_config
    p, tok = ws.profile, ws.tokenizer
    model = build_model(p.student, len(tok), p.max_len + p.max_new_tokens, seed=p.seed + 1, eos_id=ws.eos_id).to(dev)
    cfg = replace(world_config(p.world), seed=p.seed)
    blocks = lm_blocks(pretrain_corpus(cfg, 4000), tok, p.max_len)
    spec = TrainSpec(lr=p.kd.lr, batch_size=p.kd.batch_size, epochs=1.0)
    log = sft(model, blocks, ws.pad_id, spec, seed=p.seed + 1, steps=max(1, p.student_pretrain_steps), desc="student LM pre-training")
    save_checkpoint(model, out / "model")
    atomic_write_json(out / "log.json", _thin(log))


