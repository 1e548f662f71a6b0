"""A world on disk: one JSON Lines file per role, in the MiniLLM-processed Dolly layout, and a meta file."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..atomic import atomic_write_text
from .config import WorldConfig
from .generation import ROLES, WORLD_VERSION, generate_world

META_FILE = "world_meta.json"


def write_world(world: dict[str, list[dict]], out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Path]:
    """Write `<role>.jsonl` per role and world_meta.json (config, counts, families) last; role -> path.

    The old meta file is removed first, so a crash mid-write leaves no meta and the world is rebuilt. Each file is
    written atomically.

    `world`: role -> rows (`generate_world`).
    `out_dir`: the folder (created if missing).
    `cfg`: the settings recorded in the meta file (its "config"); None records null.
    Returns role -> the path of its JSON Lines file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # a crash mid-write then leaves no meta, so the world is rebuilt
    paths = {}
    for role, rows in world.items():
        paths[role] = out / f"{role}.jsonl"
        atomic_write_text(paths[role], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    meta = {"version": WORLD_VERSION, "config": asdict(cfg) if cfg is not None else None,
            "counts": {role: len(rows) for role, rows in world.items()},
            "families": {role: sorted({r["family"] for r in rows}) for role, rows in world.items()},
            "levels": {role: sorted({r["level"] for r in rows}) for role, rows in world.items()},
            "difficulty": "level + depth - 1 (level: list items - 1; depth: steps)"}
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    return paths


def load_or_create_world(cfg: WorldConfig, out_dir: str | Path) -> dict[str, Path]:
    """Paths of the world in out_dir, regenerated only when the saved meta's config or version differ.

    It is also regenerated when the meta file is missing or unreadable, or a role's file is missing.

    Returns role -> the path of its `<role>.jsonl`, for every role in ROLES.
    """
    out = Path(out_dir)
    paths = {role: out / f"{role}.jsonl" for role in ROLES}
    try:
        meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        meta = {}
    if (meta.get("version") == WORLD_VERSION and meta.get("config") == asdict(cfg)
            and all(p.exists() for p in paths.values())):
        return paths
    return write_world(generate_world(cfg), out, cfg=cfg)
