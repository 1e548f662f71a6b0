"""Sampling a world: the roles (train, valid and the five eval sets), their rows and their true difficulty.

Every family has one knob, the `level` L = 1, 2, ...: lists have L + 1 items. A composition of `depth` d steps
costs d - 1 more, so

    difficulty = level + depth - 1        (an integer >= 1, comparable across families)

With `level_pools` a row of level L draws its words from the first n_words * L / max_level only (`word_pool`), so
the rarest words come with the longest lists. With `easy_cover` = k > 0 (`level_pools` off) the easiest quarter's
training rows take their words from a shuffled deck per tongue and difficulty, and `generate_world` raises unless
every answer word is in at least k rows of the easiest quarter (`easiest_quarter`). With `ref_noise` = p > 0 each
item of a training reference is, with probability p, another word of the same tongue; with `ref_confusion` = q > 0,
with probability q, its word's one fixed confuser (`confusers`: systematic errors, as an annotator who mixes up the
same pairs makes), and for the `major_words` with probability `ref_confusion_major` (words the annotators mostly get
wrong, at >= 0.5). The row keeps its right answer as `clean_output`.

Eval roles mirror the paper's five sets (Sec. 5, A.2.3):
    DollyEval  - the test split: trained families, trained phrasings, trained levels
    SelfInst   - trained families asked with phrasings held out of the instruction data
    VicunaEval - the compositions at the two top trained levels and one beyond, with held-out phrasings (harder)
    S-NI       - families never in the instruction data (untranslate, decr, double), known from pre-training only
    UnNI       - trained families at levels above the training maximum (longer lists)
All prompts are unique across every role.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..data import build_prompt
from .config import WorldConfig
from .families import (FAMILIES, SNI_FAMILIES, TONGUE, TONGUES, TRAIN_FAMILIES, VICUNA_FAMILIES, WORDS, Family,
                       join_items)

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

    Returns the role's RoleSpec.
    Raises ValueError: an unknown role.
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

    `level`: the row's level L (lists of L + 1 items).
    `args`: the family's sampled arguments (its `sample`), substituted into the template's slots.
    Returns a dict with instruction, input, output (the family's answer), prompt (the MiniLLM prompt), family, topic (=
    family), level, difficulty (level + depth - 1) and meta {"args", "template", "depth"}.
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

    Returns a prefix of WORDS (at least 2 words).
    """
    if not cfg.level_pools or level >= cfg.max_level:
        return WORDS[:cfg.n_words]
    return WORDS[:max(2, round(cfg.n_words * level / cfg.max_level))]


class _Decks:
    """Words drawn from a shuffled deck per (tongue, difficulty), refilled from the world's words when empty, so in
    each deck's stream every word comes once before any comes twice. A deck per difficulty: the rows of the lower
    difficulties are all in the easiest quarter, and those of the top one it reaches are in it as a prefix of their
    stream, so both cover every word evenly."""

    def __init__(self, rng: random.Random, words: tuple[str, ...]) -> None:
        self.rng, self.words, self.decks = rng, words, {}

    def draw(self, tongue: str, difficulty: int, n: int) -> list[str]:
        out, deck = [], self.decks.setdefault((tongue, difficulty), [])
        for _ in range(n):
            if not deck:
                deck.extend(self.words)
                self.rng.shuffle(deck)
            out.append(deck.pop())
        return out


def easy_difficulty(spec: RoleSpec) -> int:
    """The lowest difficulty D such that rows of difficulty <= D are at least a quarter of the role's draws (families
    and levels are drawn uniformly): the difficulties that fill the easiest quarter. Laptop's training role: 2."""
    pairs = [(FAMILIES[f].depth, level) for f in spec.families for level in spec.levels]
    for d in sorted({level + depth - 1 for depth, level in pairs}):
        if 4 * sum(level + depth - 1 <= d for depth, level in pairs) >= len(pairs):
            return d
    raise AssertionError("unreachable: the top difficulty covers every draw")


def draw_row(rng: random.Random, spec: RoleSpec, cfg: WorldConfig, decks: _Decks | None = None,
             deck_difficulty: int = 0) -> dict:
    """One row of `spec`: family, level and phrasing uniformly, then the family's arguments (for a translation row of
    difficulty <= deck_difficulty from `decks` when given)."""
    fam = FAMILIES[rng.choice(spec.families)]
    level = rng.choice(spec.levels)
    template = rng.choice(spec.templates(fam))
    if decks is not None and fam.name in TONGUE and level + fam.depth - 1 <= deck_difficulty:
        words = decks.draw(TONGUE[fam.name], level + fam.depth - 1, level + 1)
        return make_row(fam.name, level, template, {"words": words})
    return make_row(fam.name, level, template, fam.sample(rng, level, word_pool(cfg, level)))


def confusers(cfg: WorldConfig) -> dict[str, str]:
    """Each of the world's n_words words -> the one word it is confused with (`ref_confusion`): one cycle through a
    fixed shuffle of the words, so no word is its own confuser and every word is exactly one word's confuser."""
    order = list(WORDS[:cfg.n_words])
    random.Random(f"pocl-world/{cfg.seed}/confusers").shuffle(order)
    return {w: order[(i + 1) % len(order)] for i, w in enumerate(order)}


def major_words(cfg: WorldConfig) -> set[str]:
    """The `major_words` words whose references carry their confuser at `ref_confusion_major`: the first of a seeded
    shuffle of the world's words (its own stream, so the confusers do not move)."""
    order = list(WORDS[:cfg.n_words])
    random.Random(f"pocl-world/{cfg.seed}/major").shuffle(order)
    return set(order[:cfg.major_words])


def _add_noise(rows: list[dict], cfg: WorldConfig, role: str) -> None:
    """ref_noise and ref_confusion: each answer item of a translation row becomes, with probability p, another word of
    its tongue, else with probability q its word's confuser (q = ref_confusion_major for the `major_words`); the right
    answer is kept as `clean_output`. Its own random stream, one draw per item, so prompts and clean answers do not
    move, and a world without major words is drawn as before they existed."""
    rng, words = random.Random(f"pocl-world/{cfg.seed}/{role}/noise"), WORDS[:cfg.n_words]
    pairs = confusers(cfg).items()
    confused = {t: {lexicon[w]: lexicon[c] for w, c in pairs} for t, lexicon in TONGUES.items()}  # in each tongue
    major = {t: {lexicon[w] for w in major_words(cfg)} for t, lexicon in TONGUES.items()}
    for row in rows:
        if row["family"] not in TONGUE:
            continue
        tongue, items = TONGUE[row["family"]], row["output"].split(" ")
        lexicon = TONGUES[tongue]
        for i, item in enumerate(items):
            u = rng.random()
            if u < cfg.ref_noise:
                while (wrong := lexicon[rng.choice(words)]) == item:
                    pass
                items[i] = wrong
            elif u < cfg.ref_noise + (cfg.ref_confusion_major if item in major[tongue] else cfg.ref_confusion):
                items[i] = confused[tongue][item]
        row["clean_output"], row["output"] = row["output"], join_items(items)


def sample_role(role: str, cfg: WorldConfig, seen: set[str], max_tries: int = 500) -> list[dict]:
    """`spec.n` rows whose prompts are new to `seen` (which is updated): redraws family and level on a clash.

    The training role draws its easiest rows' words from decks when `easy_cover` is on, and gets noisy references
    when `ref_noise` or `ref_confusion` is on (see the module docstring)."""
    rng = random.Random(f"pocl-world/{cfg.seed}/{role}")  # str seeds hash with sha512: stable across runs
    spec, rows = role_spec(role, cfg), []
    decks = _Decks(rng, WORDS[:cfg.n_words]) if role == "train" and cfg.easy_cover else None
    deck_difficulty = easy_difficulty(spec) if decks is not None else 0
    while len(rows) < spec.n:
        for _ in range(max_tries):
            row = draw_row(rng, spec, cfg, decks, deck_difficulty)
            if row["prompt"] not in seen:
                break
        else:
            raise RuntimeError(f"world role {role!r}: no new prompt in {max_tries} draws after {len(rows)} rows; "
                               f"lower the sizes or raise max_level ({cfg})")
        seen.add(row["prompt"])
        rows.append({"id": f"{role}-{len(rows):05d}", **row})
    if role == "train" and (cfg.ref_noise > 0 or cfg.ref_confusion > 0 or cfg.major_words > 0):
        _add_noise(rows, cfg, role)
    return rows


GENERATION_ORDER = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI", "valid", "train")  # eval first


def generate_world(cfg: WorldConfig) -> dict[str, list[dict]]:
    """role -> rows for every role in ROLES; deterministic in cfg; prompts unique across all roles.

    Returns role -> its rows (`make_row` dicts with an "id" "<role>-00000", ...), in ROLES order; the eval roles are
    drawn before valid and train.
    Raises RuntimeError: a role finds no new prompt in 500 draws (sizes too large for the levels).
    """
    seen: set[str] = set()
    world = {role: sample_role(role, cfg, seen) for role in GENERATION_ORDER}
    if cfg.easy_cover:
        counts = easy_coverage(world["train"], cfg)
        short = sorted(token for token, c in counts.items() if c < cfg.easy_cover)
        if short:
            raise RuntimeError(f"world: {len(short)} answer words are in fewer than easy_cover = {cfg.easy_cover} rows "
                               f"of the easiest quarter (e.g. {short[:5]}); lower easy_cover or raise n_train ({cfg})")
    return {role: world[role] for role in ROLES}


def easiest_quarter(rows: Iterable) -> np.ndarray:
    """Positions of the easiest quarter of `rows` by true difficulty, as the oracle curriculum's first of 4 subsets:
    a stable sort by difficulty (ties keep the rows' order), the first ceil(n / 4).

    `rows`: world rows (see `true_difficulty`).
    Returns int64 positions into `rows`, easiest first.
    """
    truth = true_difficulty(rows)
    return np.argsort(truth, kind="stable")[:-(-len(truth) // 4)].astype(np.int64)


def easy_coverage(train_rows: list[dict], cfg: WorldConfig) -> dict[str, int]:
    """Answer word -> the number of rows of the easiest quarter (`easiest_quarter`) whose right answer holds it.

    The answer words are both tongues' words for the world's first n_words; the right answer is `clean_output` where
    the reference is noisy. Version 4's rule: every count >= easy_cover.

    Returns every answer word of both tongues (zeros included) -> its count.
    """
    counts = {lexicon[w]: 0 for lexicon in TONGUES.values() for w in WORDS[:cfg.n_words]}
    for i in easiest_quarter(train_rows):
        row = train_rows[i]
        for token in set(row.get("clean_output", row["output"]).split(" ")):
            if token in counts and row["family"] in TONGUE:
                counts[token] += 1
    return counts


def true_difficulty(rows: Iterable) -> np.ndarray:
    """The generator's difficulty of each row (a dict, or an object whose `.meta` dict holds it), float64.

    `rows`: world rows (dicts), or objects whose `.meta` dict holds "difficulty".
    Returns a float64 array of the rows' difficulty labels (level + depth - 1).
    Raises KeyError: a row without a "difficulty" field (not a world row).
    """
    out = []
    for i, row in enumerate(rows):
        source = row if isinstance(row, Mapping) else getattr(row, "meta", None) or {}
        if "difficulty" not in source:
            raise KeyError(f"true_difficulty: row {i} has no 'difficulty' field (not a world row?)")
        out.append(float(source["difficulty"]))
    return np.asarray(out, dtype=np.float64)
