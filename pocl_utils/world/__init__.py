"""A synthetic instruction world: seeded task families whose difficulty is known, plus its BPE tokenizer.

Real instruction data cannot train a useful teacher/student pair on a 2-core CPU, so the default profiles
generate a small world of natural-language instructions, written in the same JSON Lines layout as the
MiniLLM-processed Dolly files, so one loader reads both.

The tasks (version 3). Every answer is a list made of tokens the input does not show: a list of words translated
into "the old tongue" or "the new tongue" (two fixed made-up lexicons, `LEXICON` and `NEW_LEXICON`, over the world's
first `n_words` of the 128 `WORDS`), in order or last word first. Copying the input or answering with the most
frequent training answer therefore scores little, and a partly right answer earns partial ROUGE-L, so a student's
greedy output says how far it got (the ranking half of the difficulty measurer needs that). Version 1's single-word
answers let "echo the input" beat the teacher (FINDINGS.md, run 2). The elementary steps are per-item maps of one
kind, so that the label below, not the family, is what makes a sample hard, and the lexicons take capacity to learn,
so the teacher's size matters.

Difficulty. Every family has one knob, the `level` L = 1, 2, ...: lists have L + 1 items. A composition of
`depth` d elementary steps costs d - 1 more, so

    difficulty = level + depth - 1        (an integer >= 1, comparable across families)

i.e. one unit per extra item and one per extra step. Training levels are 1..max_level. With `level_pools` a
row of level L also draws its words from the first n_words * L / max_level only (`word_pool`), so the rarest words
(the most knowledge) come with the longest lists, as rare knowledge comes with hard questions in real data. The
label stays level + depth - 1; it is fixed by the generator, never by a model.

Pre-training text plays the web's part: it demonstrates every family (S-NI's too), every phrasing and levels up
to UnNI's, in plain "instruction / input / answer" lines, plus sentences about the lexicon and numbers; it never
holds a train, valid or eval prompt. The teacher and the student are pre-trained on disjoint pools of it; the
instruction data then teaches the MiniLLM template on the trained families only.

Eval roles mirror the paper's five sets (Sec. 5, A.2.3):
    DollyEval  - the test split: trained families, trained phrasings, trained levels
    SelfInst   - trained families asked with phrasings held out of the instruction data
    VicunaEval - the compositions at the two top trained levels and one beyond, with held-out phrasings (harder)
    S-NI       - families never in the instruction data (untranslate, decr, double), known from pre-training only
    UnNI       - trained families at levels above the training maximum (longer lists)
All prompts are unique across every role, so no eval prompt is ever seen in training.

As the subpackage `pocl_utils.world`, it imports only the method's `data` module.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, build_prompt

WORLD_VERSION = 3  # bump when generation changes, so load_or_create_world regenerates saved worlds
ROLES = ("train", "valid", "DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
EVAL_ROLES = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
META_FILE = "world_meta.json"
EOS = "<|endoftext|>"  # eos, bos and pad, as in GPT-2
HELD_OUT_TEMPLATES = 2  # per trained family, the last templates are SelfInst-only

WORDS = ("apple", "banana", "cat", "dog", "fish", "bird", "tree", "house", "car", "book", "cup", "hat",
         "sun", "moon", "star", "milk", "egg", "box", "pen", "kite", "door", "road", "rain", "snow",
         "lamp", "ship", "frog", "bear", "wolf", "cake", "ball", "rose", "chair", "table", "spoon", "bread",
         "cheese", "horse", "duck", "goat", "sheep", "mouse", "river", "hill", "stone", "leaf", "cloud", "wind",
         "boat", "train", "bell", "drum", "key", "ring", "shoe", "coat", "bed", "cow", "pig", "owl", "bee", "ant",
         "corn", "rice", "wall", "nest", "bowl", "fork", "rope", "sock", "tent", "coin", "lake", "sand", "seed", "nut",
         "pear", "plum", "lion", "tiger", "whale", "crab", "worm", "snail", "shell", "pearl", "gold", "iron", "salt",
         "soup", "tea", "jam", "honey", "candle", "clock", "glove", "scarf", "shirt", "belt", "bag", "basket", "broom",
         "brush", "comb", "soap", "towel", "mirror", "window", "roof", "floor", "garden", "field", "forest", "island",
         "bridge", "tower", "castle", "king", "queen", "baby", "girl", "boy", "farmer", "sailor", "doctor", "flag",
         "map", "gate")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth")
MAX_ITEMS = len(ORDINALS)


def _lexicon(name: str, taken: tuple[str, ...] = ()) -> dict[str, str]:
    """A made-up language: each word of WORDS has one fixed translation (consonant-vowel-consonant, never a word of
    the list or of `taken`, never ending in s so the ROUGE stemmer leaves it whole). Seeded by the language's name
    only: every world speaks it."""
    rng = random.Random(f"pocl-world/lexicon/{name}")
    cons, vowels, out = "bdfgklmnprtvz", "aeiou", {}
    while len(out) < len(WORDS):
        w = rng.choice(cons) + rng.choice(vowels) + rng.choice(cons)
        if w not in out.values() and w not in WORDS and w not in taken:
            out[WORDS[len(out)]] = w
    return out


LEXICON = _lexicon("old")  # word -> its word in the old tongue
UNLEXICON = {v: k for k, v in LEXICON.items()}
NEW_LEXICON = _lexicon("new", tuple(LEXICON.values()))  # word -> its word in the new tongue


# ---- argument samplers: (rng, level, word pool) -> JSON-serialisable args ---------------------------------------


def _words(rng: random.Random, level: int, pool: tuple[str, ...]) -> dict:
    return {"words": [rng.choice(pool) for _ in range(level + 1)]}


def _foreign(rng: random.Random, level: int, pool: tuple[str, ...]) -> dict:
    return {"words": [LEXICON[rng.choice(pool)] for _ in range(level + 1)]}


def _nums(rng: random.Random, level: int, hi: int = 98) -> dict:
    return {"nums": [rng.randint(0, hi) for _ in range(level + 1)]}


def _digits(rng: random.Random, level: int, pool: tuple[str, ...] = ()) -> dict:
    return _nums(rng, level, hi=9)


def _pos_digits(rng: random.Random, level: int, pool: tuple[str, ...] = ()) -> dict:
    return {"nums": [rng.randint(1, 9) for _ in range(level + 1)]}  # - 1 stays >= 0


# ---- the families -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One task: its argument sampler, its answer, its phrasings (instruction, input) with {slot}s."""

    name: str
    depth: int  # elementary steps composed (1 = primitive)
    sample: Callable[[random.Random, int, tuple[str, ...]], dict]
    answer: Callable[[dict], str]
    templates: tuple[tuple[str, str], ...]


def _join(xs: Iterable) -> str:
    return " ".join(map(str, xs))


# Every answer is a list as long as the input (or longer), made of tokens the input does not show, so copying the
# input scores little, and a partly right answer gets partial ROUGE-L credit (the measurer sees degrees of right).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("translate", 1, _words, lambda a: _join(LEXICON[w] for w in a["words"]), (
        ("Translate the words into the old tongue.", "{words}"), ("Translate: {words}", ""),
        ("Give each word in the old tongue.", "{words}"), ("Say these words in the old tongue.", "{words}"),
        ("How do you say this in the old tongue?", "{words}"), ("Write the list in the old tongue.", "{words}"))),
    Family("encode", 1, _words, lambda a: _join(NEW_LEXICON[w] for w in a["words"]), (
        ("Translate the words into the new tongue.", "{words}"), ("Encode: {words}", ""),
        ("Give each word in the new tongue.", "{words}"), ("Say these words in the new tongue.", "{words}"),
        ("How do you say this in the new tongue?", "{words}"), ("Write the list in the new tongue.", "{words}"))),
    Family("translate_reverse", 2, _words, lambda a: _join(LEXICON[w] for w in a["words"][::-1]), (
        ("Reverse the words, then translate them into the old tongue.", "{words}"),
        ("Translate {words} into the old tongue, last word first.", ""),
        ("Say the words backwards in the old tongue.", "{words}"),
        ("Put the words in reverse order and give them in the old tongue.", "{words}"),
        ("Flip the list and translate it into the old tongue.", "{words}"),
        ("In the old tongue, list the words from the end to the start.", "{words}"))),
    Family("encode_reverse", 2, _words, lambda a: _join(NEW_LEXICON[w] for w in a["words"][::-1]), (
        ("Reverse the words, then translate them into the new tongue.", "{words}"),
        ("Encode {words} in the new tongue, last word first.", ""),
        ("Say the words backwards in the new tongue.", "{words}"),
        ("Put the words in reverse order and give them in the new tongue.", "{words}"),
        ("Flip the list and translate it into the new tongue.", "{words}"),
        ("In the new tongue, list the words from the end to the start.", "{words}"))),
    # S-NI: never in the instruction data; the pre-training text demonstrates them (as the web does for GPT-2)
    Family("untranslate", 1, _foreign, lambda a: _join(UNLEXICON[w] for w in a["words"]), (
        ("Translate the words from the old tongue.", "{words}"), ("What do these old-tongue words mean: {words}", ""),
        ("Give the plain words for this old-tongue list.", "{words}"),
        ("Say these old-tongue words in plain words.", "{words}"))),
    Family("decr", 1, _pos_digits, lambda a: _join(x - 1 for x in a["nums"]), (
        ("Subtract one from each number.", "{nums}"), ("Decrease every number by 1: {nums}", ""),
        ("Write each number minus one.", "{nums}"), ("Make every number one smaller.", "{nums}"))),
    Family("double", 1, _digits, lambda a: _join(2 * x for x in a["nums"]), (
        ("Double each number.", "{nums}"), ("Multiply every number by 2: {nums}", ""),
        ("Write each number times two.", "{nums}"), ("Make every number twice as big.", "{nums}"))),
)}
TRAIN_FAMILIES = ("translate", "encode", "translate_reverse", "encode_reverse")
SNI_FAMILIES = ("untranslate", "decr", "double")
VICUNA_FAMILIES = ("translate_reverse", "encode_reverse")  # the compositions, at the top trained levels, new phrasings
PRETRAIN_FAMILIES = TRAIN_FAMILIES + SNI_FAMILIES


# ---- configuration ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of a generated world. Split sizes default to Dolly's 12.5k : 1k : 0.5k proportions / 5."""

    n_train: int = 2500
    n_valid: int = 200
    n_test: int = 100  # DollyEval
    n_ood: int = 100  # rows in each of SelfInst, S-NI, UnNI
    n_vicuna: int = 40  # VicunaEval (the paper's has 80)
    max_level: int = 4  # training levels are 1..max_level
    ood_extra_levels: int = 2  # UnNI levels are max_level+1 .. max_level+ood_extra_levels
    seed: int = 0
    pretrain_qa_frac: float = 0.5  # pretrain_corpus: share of Q/A texts (the rest are world sentences)
    pretrain_template: bool = False  # pretrain_corpus: wrap Q/A texts in the MiniLLM template (GPT-2 never saw it)
    n_words: int = 64  # the world speaks the first n_words of WORDS (and their made-up translations)
    level_pools: bool = False  # level L draws its words from the first n_words * L / max_level: rarer words are harder

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), {"int": int, "float": float, "bool": bool}[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"WorldConfig.{f.name}: expected {kind.__name__}, got {value!r}")
        for name in ("n_train", "n_valid", "n_test", "n_ood", "n_vicuna", "max_level", "ood_extra_levels", "n_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_level + self.ood_extra_levels + 2 > MAX_ITEMS:
            raise ValueError(f"WorldConfig: max_level + ood_extra_levels must be <= {MAX_ITEMS - 2} "
                             f"(lists get up to level + 2 items), got {self.max_level + self.ood_extra_levels}")
        if self.n_words > len(WORDS) or self.n_words < 2 * self.max_level:
            raise ValueError(f"WorldConfig.n_words must be in [2 * max_level, {len(WORDS)}], got {self.n_words}")
        if not 0.0 <= self.pretrain_qa_frac <= 1.0:
            raise ValueError(f"WorldConfig.pretrain_qa_frac must be in [0, 1], got {self.pretrain_qa_frac}")


PRESETS = {
    "smoke": dict(n_train=64, n_valid=16, n_test=16, n_ood=16, n_vicuna=8, max_level=3),
    "classroom": dict(n_train=1000, n_valid=80, n_test=40, n_ood=48, n_vicuna=24, max_level=4,
                      pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
    "laptop": dict(n_train=2500, n_valid=200, n_test=300, n_ood=300, n_vicuna=120, max_level=4,
                   pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
    "gpu": dict(n_train=20000, n_valid=1600, n_test=800, n_ood=400, n_vicuna=80, max_level=6,
                pretrain_template=True, pretrain_qa_frac=0.8, n_words=128, level_pools=True),
}


def world_config(profile: str, **overrides) -> WorldConfig:
    """The preset WorldConfig of a profile ("smoke", "classroom", "laptop", "gpu"), with optional field overrides.

    Args:
        profile: a key of PRESETS.
        **overrides: WorldConfig fields that replace the preset's values.

    Returns:
        The WorldConfig (its own checks run: TypeError / ValueError on a bad field value).

    Raises:
        ValueError: an unknown profile or an unknown WorldConfig field among `overrides`.
    """
    if profile not in PRESETS:
        raise ValueError(f"unknown world profile {profile!r}; valid: {sorted(PRESETS)}")
    valid = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown WorldConfig field(s) {unknown}; valid: {sorted(valid)}")
    return WorldConfig(**{**PRESETS[profile], **overrides})


# ---- sampling rows ----------------------------------------------------------------------------------------------


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


def _all_templates(fam: Family) -> range:
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
        "S-NI": RoleSpec(SNI_FAMILIES, _all_templates, trained, cfg.n_ood),
        "UnNI": RoleSpec(TRAIN_FAMILIES, _train_templates, beyond, cfg.n_ood),
    }
    if role not in specs:
        raise ValueError(f"unknown role {role!r}; valid: {list(specs)}")
    return specs[role]


def _slots(args: dict) -> dict[str, str]:
    """Strings substituted into a template: lists space-joined."""
    return {name: _join(value) if isinstance(value, list) else str(value) for name, value in args.items()}


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


def _draw(rng: random.Random, spec: RoleSpec, cfg: WorldConfig) -> dict:
    fam = FAMILIES[rng.choice(spec.families)]
    level = rng.choice(spec.levels)
    template = rng.choice(spec.templates(fam))
    return make_row(fam.name, level, template, fam.sample(rng, level, word_pool(cfg, level)))


def _sample_role(role: str, cfg: WorldConfig, seen: set[str], max_tries: int = 500) -> list[dict]:
    """`spec.n` rows whose prompts are new to `seen` (which is updated): redraws family and level on a clash."""
    rng = random.Random(f"pocl-world/{cfg.seed}/{role}")  # str seeds hash with sha512: stable across runs
    spec, rows = role_spec(role, cfg), []
    while len(rows) < spec.n:
        for _ in range(max_tries):
            row = _draw(rng, spec, cfg)
            if row["prompt"] not in seen:
                break
        else:
            raise RuntimeError(f"world role {role!r}: no new prompt in {max_tries} draws after {len(rows)} rows; "
                               f"lower the sizes or raise max_level ({cfg})")
        seen.add(row["prompt"])
        rows.append({"id": f"{role}-{len(rows):05d}", **row})
    return rows


_GENERATION_ORDER = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI", "valid", "train")  # eval first


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
    world = {role: _sample_role(role, cfg, seen) for role in _GENERATION_ORDER}
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


# ---- files ------------------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_world(world: dict[str, list[dict]], out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Path]:
    """Write `<role>.jsonl` per role and world_meta.json (config, counts, families) last; role -> path.

    The old meta file is removed first, so a crash mid-write leaves no meta and the world is rebuilt. Each file is
    written atomically.

    Args:
        world: role -> rows (`generate_world`).
        out_dir: the folder (created if missing).
        cfg: the settings recorded in the meta file (its "config"); None records null.

    Returns:
        role -> the path of its JSON Lines file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # a crash mid-write then leaves no meta, so the world is rebuilt
    paths = {}
    for role, rows in world.items():
        paths[role] = out / f"{role}.jsonl"
        _atomic_write_text(paths[role], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    meta = {"version": WORLD_VERSION, "config": asdict(cfg) if cfg is not None else None,
            "counts": {role: len(rows) for role, rows in world.items()},
            "families": {role: sorted({r["family"] for r in rows}) for role, rows in world.items()},
            "levels": {role: sorted({r["level"] for r in rows}) for role, rows in world.items()},
            "difficulty": "level + depth - 1 (level: list items - 1; depth: steps)"}
    _atomic_write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    return paths


def load_or_create_world(cfg: WorldConfig, out_dir: str | Path) -> dict[str, Path]:
    """Paths of the world in out_dir, regenerated only when the saved meta's config or version differ.

    It is also regenerated when the meta file is missing or unreadable, or a role's file is missing.

    Args:
        cfg: the world's settings.
        out_dir: the world's folder.

    Returns:
        role -> the path of its `<role>.jsonl`, for every role in ROLES.
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


# ---- plain-LM pre-training text ---------------------------------------------------------------------------------


def _fact_lexicon(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    w = rng.sample(word_pool(cfg, level), level + 1)
    tongue, lexicon = rng.choice((("old", LEXICON), ("new", NEW_LEXICON)))
    return f"In the {tongue} tongue, " + ", ".join(f"{x} is {lexicon[x]}" for x in w) + "."


def _fact_numbers(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    x = _nums(rng, level)["nums"]
    return (f"After {_join(x)} come {_join(v + 1 for v in x)}. The numbers {_join(_digits(rng, level)['nums'])} "
            f"are small.")


def _fact_scene(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    w1, w2 = rng.sample(word_pool(cfg, level), 2)
    where = rng.choice(("next to", "under", "on", "near", "behind"))
    return f"The {w1} is {where} the {w2}. There are {level + 1} of them."


_FACTS = (_fact_lexicon, _fact_numbers, _fact_scene)


def _eval_prompts(cfg: WorldConfig) -> set[str]:
    """Prompts of every role but train: the same draws as generate_world, which samples them before train."""
    seen: set[str] = set()
    for role in _GENERATION_ORDER[:-1]:
        _sample_role(role, cfg, seen)
    return seen


PRETRAIN_POOLS = ("teacher", "student")


def _pool_of(prompt: str) -> str:
    """The pre-training pool a task prompt belongs to: a stable hash, half and half."""
    return PRETRAIN_POOLS[hashlib.sha256(prompt.encode()).digest()[0] % 2]


def pretrain_spec(cfg: WorldConfig) -> RoleSpec:
    """What pre-training text demonstrates: every family (S-NI's too), every phrasing, levels up to UnNI's.

    Args:
        cfg: the world's settings (max_level, ood_extra_levels).

    Returns:
        A RoleSpec over PRETRAIN_FAMILIES, all templates, levels 1..max_level + ood_extra_levels, n = 0.
    """
    return RoleSpec(PRETRAIN_FAMILIES, _all_templates, tuple(range(1, cfg.max_level + cfg.ood_extra_levels + 1)), 0)


def pretrain_corpus(cfg: WorldConfig, n: int, pool: str = "student") -> list[str]:
    """`n` deterministic world texts for plain-LM pre-training (as GPT-2 models are pre-trained on web text).

    A `pretrain_qa_frac` share are solved tasks of every family, phrasing and level the world has (plain
    "instruction / input / answer" lines unless `pretrain_template`); the rest are world sentences (the lexicon,
    numbers). No eval, valid or train prompt (instruction + input) ever appears. `pool` ("teacher" or "student")
    picks one of two disjoint halves of the task prompts (split by a hash of the prompt), so the teacher and the
    student are pre-trained on different demonstrations of the same world.

    Args:
        cfg: the world's settings (seed, pretrain_qa_frac, pretrain_template, levels).
        n: the number of texts, >= 0.
        pool: "teacher" or "student" (PRETRAIN_POOLS): which half of the task prompts to draw from.

    Returns:
        `n` texts, deterministic in (cfg, pool).

    Raises:
        ValueError: n < 0 or an unknown pool.
    """
    if n < 0:
        raise ValueError(f"pretrain_corpus: n must be >= 0, got {n}")
    if pool not in PRETRAIN_POOLS:
        raise ValueError(f"pretrain_corpus: pool must be one of {PRETRAIN_POOLS}, got {pool!r}")
    rng = random.Random(f"pocl-world/{cfg.seed}/pretrain/{pool}")
    banned, spec, texts = _eval_prompts(cfg), pretrain_spec(cfg), []
    banned |= {r["prompt"] for r in _sample_role("train", cfg, set(banned))}
    while len(texts) < n:
        if rng.random() >= cfg.pretrain_qa_frac:
            texts.append(rng.choice(_FACTS)(rng, rng.choice(spec.levels), cfg))
            continue
        row = _draw(rng, spec, cfg)
        while row["prompt"] in banned or _pool_of(row["prompt"]) != pool:
            row = _draw(rng, spec, cfg)
        qa = [row["instruction"], row["input"], row["output"]]
        texts.append(row["prompt"] + row["output"] if cfg.pretrain_template else "\n".join(s for s in qa if s))
    return texts


# ---- tokenizer --------------------------------------------------------------------------------------------------


def template_phrases() -> tuple[str, ...]:
    """The fixed pieces of the MiniLLM template: both headers, the input marker and the response marker."""
    head_plain, response = PROMPT_NO_INPUT.split("{instruction}")
    head_input, rest = PROMPT_WITH_INPUT.split("{instruction}")
    input_marker, response2 = rest.split("{input}")
    assert response == response2, "the two MiniLLM templates end differently"
    return head_plain, head_input, input_marker, response


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer for world text (transformers.PreTrainedTokenizerFast).

    Lossless: decode(encode(x)) == x for any text. Digits are single tokens (so column arithmetic is
    learnable); words split GPT-2 style (' cat' is one token). The template boilerplate (~30 words) costs
    one token per piece: its 4 pieces are added tokens, removed from the BPE training text so they use no
    merges. `<|endoftext|>` is eos, bos and pad. Saved with save_pretrained when out_dir is given.

    Args:
        texts: the training text (e.g. `pretrain_corpus`); the template pieces are cut out of it before BPE training.
        vocab_size: the vocabulary size, the 4 template pieces included; an int in [262, 65536].
        out_dir: where to save it; None = not saved.

    Returns:
        The transformers.PreTrainedTokenizerFast.

    Raises:
        ValueError: a vocab_size that is not an int in that range.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    phrases = template_phrases()
    n_min = 256 + 1 + len(phrases) + 1  # byte alphabet + eos + template pieces + at least one merge
    if not isinstance(vocab_size, int) or not n_min <= vocab_size <= 65536:
        raise ValueError(f"train_tokenizer: vocab_size must be an int in [{n_min}, 65536], got {vocab_size!r}")
    strip = re.compile("|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])  # add_prefix_space would break round-trips
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(phrases), special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((strip.sub("\n", t) for t in texts), trainer)
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in phrases])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                 clean_up_tokenization_spaces=False)  # cleanup would rewrite " ." and break round-trips
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf


def token_stats(world: Mapping[str, list[dict]], tokenizer) -> dict[str, dict[str, dict[str, float]]]:
    """role -> family (and "all") -> mean/max token counts of prompt and response (response without EOS).

    Args:
        world: role -> rows with prompt, output and family (`generate_world`).
        tokenizer: a transformers tokenizer (called without special tokens).

    Returns:
        role -> family or "all" -> {"n", "prompt_mean", "prompt_max", "response_mean", "response_max"}.
    """
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for role, rows in world.items():
        enc = lambda key: tokenizer([r[key] for r in rows], add_special_tokens=False)["input_ids"]  # noqa: E731
        p_len = np.array([len(x) for x in enc("prompt")])
        r_len = np.array([len(x) for x in enc("output")])
        fam = np.array([r["family"] for r in rows])
        stats[role] = {}
        for name in [*sorted({r["family"] for r in rows}), "all"]:
            m = fam == name if name != "all" else np.ones(len(rows), bool)
            stats[role][name] = {"n": int(m.sum()), "prompt_mean": float(p_len[m].mean()),
                                 "prompt_max": int(p_len[m].max()), "response_mean": float(r_len[m].mean()),
                                 "response_max": int(r_len[m].max())}
    return stats
