"""Sampling a world: the roles (train, valid and the five eval sets), their rows and their true difficulty.

Difficulty. Every family has one knob, the `level` L = 1, 2, ...: lists have L + 1 items. A composition of
`depth` d elementary steps costs d - 1 more, so

    difficulty = level + depth - 1        (an integer >= 1, comparable across families)

i.e. one unit per extra item and one per extra step. Training levels are 1..max_level. With `level_pools` a
row of level L also draws its words from the first n_words * L / max_level only (`word_pool`), so the rarest words
(the most knowledge) come with the longest lists, as rare knowledge comes with hard questions in real data. The
label stays level + depth - 1; it is fixed by the generator, never by a model.

Eval roles mirror the paper's five sets (Sec. 5, A.2.3):
    DollyEval  - the test split: trained families, trained phrasings, trained levels
    SelfInst   - trained families asked with phrasings held out of the instruction data
    VicunaEval - the compositions at the two top trained levels and one beyond, with held-out phrasings (harder)
    S-NI       - families never in the instruction data (untranslate, decr, double), known from pre-training only
    UnNI       - trained families at levels above the training maximum (longer lists)
All prompts are unique across every role, so no eval prompt is ever seen in training.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..data import build_prompt
from .config import WorldConfig
from .families import FAMILIES, SNI_FAMILIES, TRAIN_FAMILIES, VICUNA_FAMILIES, WORDS, Family, join_items

WORLD_VERSION = 3  # bump when generation changes, so load_or_create_world regenerates saved worlds
ROLES = ("train", "valid", "DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
EVAL_ROLES = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
HELD_OUT_TEMPLATES = 2  # per trained family, the last templates are SelfInst-only


@dataclass(frozen=True)
class RoleSpec:
    """What one role draws from: families, template indices per family, levels and a size."""

    families: tuple[str, ...]
    templates: Callable[[Family], range]
    levels: tuple[int, ...]
    n: int


def _train_templates(fam: Family) -> range:
    return range(len(fam.templates) - HELD_OUT_TEMPLATES)


def _held_templates(fam: Family) -> range:
    return range(len(fam.templates) - HELD_OUT_TEMPLATES, len(fam.templates))


def all_templates(fam: Family) -> range:
    return range(len(fam.templates))


def role_spec(role: str, cfg: WorldConfig) -> RoleSpec:
    """Families, phrasings and levels each role samples from (see the module docstring).

    Args:
        role: one of ROLES.
        cfg: the world's settings (levels and role sizes).

    Returns:
        The role's RoleSpec.

    Raises:
        ValueError: an unknown role.
    """
    trained = tuple(range(1, cfg.max_level + 1))
    beyond = tuple(range(cfg.max_level + 1, cfg.max_level + cfg.ood_extra_levels + 1))
    top = tuple(range(max(1, cfg.max_level - 1), cfg.max_level + 2))  # the two top trained levels and one beyond
    specs = {
        "train": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_train),
        "valid": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_valid),
        "DollyEval": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_test),
        "SelfInst": RoleSpec(TRAIN_FAMILIES, _held_templates, trained, cfg.n_ood),
        "VicunaEval": RoleSpec(VICUNA_FAMILIES, _held_templates, top, cfg.n_vicuna),
        "S-NI": RoleSpec(SNI_FAMILIES, all_templates, trained, cfg.n_ood),
        "UnNI": RoleSpec(TRAIN_FAMILIES, _train_templates, beyond, cfg.n_ood),
    }
    if role not in specs:
        raise ValueError(f"unknown role {role!r}; valid: {list(specs)}")
    return specs[role]


def _slots(args: dict) -> dict[str, str]:
    """Strings substituted into a template: lists space-joined."""
    return {name: join_items(value) if isinstance(value, list) else str(value) for name, value in args.items()}


def make_row(family: str, level: int, template: int, args: dict) -> dict:
    """One row in the MiniLLM layout, plus family/level/difficulty and the structured args in `meta`.

    Args:
        family: a key of FAMILIES.
        level: the row's level L (lists of L + 1 items).
        template: the index of the phrasing in the family's templates.
        args: the family's sampled arguments (its `sample`), substituted into the template's slots.

    Returns:
        A dict with instruction, input, output (the family's answer), prompt (the MiniLLM prompt), family, topic
        (= family), level, difficulty (level + depth - 1) and meta {"args", "template", "depth"}.
    """
    fam = FAMILIES[family]
    slots = _slots(args)
    instruction, input_ = (part.format(**slots) for part in fam.templates[template])
    return {"instruction": instruction, "input": input_, "output": fam.answer(args),
            "prompt": build_prompt(instruction, input_), "family": family, "topic": family, "level": level,
            "difficulty": level + fam.depth - 1,
            "meta": {"args": args, "template": template, "depth": fam.depth}}


def word_pool(cfg: WorldConfig, level: int) -> tuple[str, ...]:
    """The words a row of this level draws from: the world's first n_words, or with level_pools the first
    n_words * level / max_level (levels above max_level: all), so that the rarest words come with the longest lists.

    Args:
        cfg: the world's settings (n_words, max_level, level_pools).
        level: the row's level.

    Returns:
        A prefix of WORDS (at least 2 words).
    """
    if not cfg.level_pools or level >= cfg.max_level:
        return WORDS[:cfg.n_words]
    return WORDS[:max(2, round(cfg.n_words * level / cfg.max_level))]


def draw_row(rng: random.Random, spec: RoleSpec, cfg: WorldConfig) -> dict:
    fam = FAMILIES[rng.choice(spec.families)]
    level = rng.choice(spec.levels)
    template = rng.choice(spec.templates(fam))
    return make_row(fam.name, level, template, fam.sample(rng, level, word_pool(cfg, level)))


def sample_role(role: str, cfg: WorldConfig, seen: set[str], max_tries: int = 500) -> list[dict]:
    """`spec.n` rows whose prompts are new to `seen` (which is updated): redraws family and level on a clash."""
    rng = random.Random(f"pocl-world/{cfg.seed}/{role}")  # str seeds hash with sha512: stable across runs
    spec, rows = role_spec(role, cfg), []
    while len(rows) < spec.n:
        for _ in range(max_tries):
            row = draw_row(rng, spec, cfg)
            if row["prompt"] not in seen:
                break
        else:
            raise RuntimeError(f"world role {role!r}: no new prompt in {max_tries} draws after {len(rows)} rows; "
                               f"lower the sizes or raise max_level ({cfg})")
        seen.add(row["prompt"])
        rows.append({"id": f"{role}-{len(rows):05d}", **row})
    return rows


GENERATION_ORDER = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI", "valid", "train")  # eval first


def generate_world(cfg: WorldConfig) -> dict[str, list[dict]]:
    """role -> rows for every role in ROLES; deterministic in cfg; prompts unique across all roles.

    Args:
        cfg: the world's settings.

    Returns:
        role -> its rows (`make_row` dicts with an "id" "<role>-00000", ...), in ROLES order; the eval roles are drawn
        before valid and train.

    Raises:
        RuntimeError: a role finds no new prompt in 500 draws (sizes too large for the levels).
    """
    seen: set[str] = set()
    world = {role: sample_role(role, cfg, seen) for role in GENERATION_ORDER}
    return {role: world[role] for role in ROLES}


def true_difficulty(rows: Iterable) -> np.ndarray:
    """The generator's difficulty of each row (a dict, or an object whose `.meta` dict holds it), float64.

    Args:
        rows: world rows (dicts), or objects whose `.meta` dict holds "difficulty".

    Returns:
        A float64 array of the rows' difficulty labels (level + depth - 1).

    Raises:
        KeyError: a row without a "difficulty" field (not a world row).
    """
    out = []
    for i, row in enumerate(rows):
        source = row if isinstance(row, Mapping) else getattr(row, "meta", None) or {}
        if "difficulty" not in source:
            raise KeyError(f"true_difficulty: row {i} has no 'difficulty' field (not a world row?)")
        out.append(float(source["difficulty"]))
    return np.asarray(out, dtype=np.float64)
