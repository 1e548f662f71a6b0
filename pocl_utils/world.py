"""A synthetic instruction world: seeded task families whose difficulty is known, plus its BPE tokenizer.

Real instruction data cannot train a useful teacher/student pair on a 2-core CPU, so the default profiles
generate a small world of natural-language instructions (copy, reverse, sort, count, add, subtract, max,
key-value lookup, k-th word and two-step compositions), written in the same JSON Lines layout as the
MiniLLM-processed Dolly files, so one loader reads both.

Difficulty. Every family has one knob, the `level` L = 1, 2, ...: list families use L + 1 items, arithmetic
families use L-digit operands, lookups use L + 1 key=value pairs. A composition of `depth` d elementary steps
costs d - 1 more, so

    difficulty = level + depth - 1        (an integer >= 1, comparable across families)

i.e. one unit per extra item/digit and one per extra reasoning step. Training levels are 1..max_level.

Eval roles mirror the paper's five sets (Sec. 5, A.2.3):
    DollyEval  - the test split: trained families, trained phrasings, trained levels
    SelfInst   - trained families asked with phrasings held out of training (last HELD_OUT_TEMPLATES templates)
    VicunaEval - a small set of harder compositions (depth 2-3) never trained as such
    S-NI       - families never trained on (min, last word, list sum), described only by their instruction
    UnNI       - trained families at levels above the training maximum (longer inputs)
All prompts are unique across every role, so no eval prompt is ever seen in training.
"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, build_prompt

WORLD_VERSION = 1  # bump when generation changes, so load_or_create_world regenerates saved worlds
ROLES = ("train", "valid", "DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
EVAL_ROLES = ("DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI")
META_FILE = "world_meta.json"
EOS = "<|endoftext|>"  # eos, bos and pad, as in GPT-2
HELD_OUT_TEMPLATES = 2  # per trained family, the last templates are SelfInst-only

WORDS = ("apple", "banana", "cat", "dog", "fish", "bird", "tree", "house", "car", "book", "cup", "hat",
         "sun", "moon", "star", "milk", "egg", "box", "pen", "kite", "door", "road", "rain", "snow",
         "lamp", "ship", "frog", "bear", "wolf", "cake", "ball", "rose")
KEYS = tuple("ABCDEFGHJKLMNPRSTUVWXYZ")  # lookup keys (no I/O: they look like digits)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth")
MAX_ITEMS = len(ORDINALS)  # k-th questions need an ordinal for every position


# ---- argument samplers: (rng, level) -> JSON-serialisable args --------------------------------------------------


def _int_with_digits(rng: random.Random, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10 ** digits - 1)


def _words(rng: random.Random, level: int) -> dict:
    return {"words": [rng.choice(WORDS) for _ in range(level + 1)]}


def _nums(rng: random.Random, level: int, hi: int = 99) -> dict:
    return {"nums": [rng.randint(0, hi) for _ in range(level + 1)]}


def _digits(rng: random.Random, level: int) -> dict:
    return _nums(rng, level, hi=9)


def _words_k(rng: random.Random, level: int) -> dict:
    return {**_words(rng, level), "k": rng.randint(1, level + 1)}


def _nums_k(rng: random.Random, level: int) -> dict:
    return {**_nums(rng, level), "k": rng.randint(1, level + 1)}


def _nums_k_c(rng: random.Random, level: int) -> dict:
    return {**_nums_k(rng, level), "c": rng.randint(1, 9)}


def _add(rng: random.Random, level: int) -> dict:
    return {"a": _int_with_digits(rng, level), "b": _int_with_digits(rng, level)}


def _sub(rng: random.Random, level: int) -> dict:
    a = _int_with_digits(rng, level)
    lo = 0 if level == 1 else 10 ** (level - 1)
    return {"a": a, "b": rng.randint(lo, a)}  # b <= a: answers stay non-negative


def _pairs(n_pairs: int, n_asked: int, rng: random.Random) -> dict:
    keys = rng.sample(KEYS, n_pairs)
    asked = rng.sample(keys, n_asked)
    names = ("key", "key2", "key3")[:n_asked]
    return {"pairs": [[k, rng.randint(0, 9)] for k in keys], **dict(zip(names, asked))}


def _lookup(rng: random.Random, level: int) -> dict:
    return _pairs(level + 1, 1, rng)


def _lookup2(rng: random.Random, level: int) -> dict:
    return _pairs(level + 1, 2, rng)


def _lookup3(rng: random.Random, level: int) -> dict:
    return _pairs(level + 2, 3, rng)  # one more pair than level + 1 so level 1 still has 3 keys


def _value(args: dict, key: str) -> int:
    return dict(map(tuple, args["pairs"]))[args[key]]


# ---- the families -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One task: its argument sampler, its answer, its phrasings (instruction, input) with {slot}s."""

    name: str
    depth: int  # elementary steps composed (1 = primitive)
    sample: Callable[[random.Random, int], dict]
    answer: Callable[[dict], str]
    templates: tuple[tuple[str, str], ...]


def _join(xs: Iterable) -> str:
    return " ".join(map(str, xs))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("copy", 1, _words, lambda a: _join(a["words"]), (
        ("Repeat the words below.", "{words}"), ("Copy the input exactly.", "{words}"),
        ("Say these words: {words}", ""), ("Write the list again.", "{words}"),
        ("Echo the following words back.", "{words}"), ("Return the input unchanged.", "{words}"))),
    Family("reverse", 1, _words, lambda a: _join(a["words"][::-1]), (
        ("Reverse the order of the words.", "{words}"), ("Reverse this list: {words}", ""),
        ("Write the words backwards, last word first.", "{words}"), ("Put the words in reverse order.", "{words}"),
        ("Flip the order of these words.", "{words}"), ("List the words from the end to the start.", "{words}"))),
    Family("sort", 1, _nums, lambda a: _join(sorted(a["nums"])), (
        ("Sort the numbers from smallest to largest.", "{nums}"), ("Sort: {nums}", ""),
        ("Put these numbers in increasing order.", "{nums}"), ("Arrange the numbers in ascending order.", "{nums}"),
        ("Order the numbers, lowest first.", "{nums}"), ("Rewrite the numbers sorted upward.", "{nums}"))),
    Family("count", 1, _words, lambda a: str(len(a["words"])), (
        ("How many words are in the list?", "{words}"), ("Count the items: {words}", ""),
        ("Count the words.", "{words}"), ("How many items are there?", "{words}"),
        ("Tell me the number of words in the input.", "{words}"), ("What is the length of this list?", "{words}"))),
    Family("add", 1, _add, lambda a: str(a["a"] + a["b"]), (
        ("What is {a} plus {b}?", ""), ("Add the two numbers.", "{a} {b}"),
        ("Compute {a} + {b}.", ""), ("Find the sum of the two numbers.", "{a} {b}"),
        ("Add {a} and {b}.", ""), ("Give the total of {a} and {b}.", ""))),
    Family("sub", 1, _sub, lambda a: str(a["a"] - a["b"]), (
        ("What is {a} minus {b}?", ""), ("Subtract the second number from the first.", "{a} {b}"),
        ("Compute {a} - {b}.", ""), ("Find the difference between the two numbers.", "{a} {b}"),
        ("Take {b} away from {a}.", ""), ("Remove {b} from {a}. What is left?", ""))),
    Family("max", 1, _nums, lambda a: str(max(a["nums"])), (
        ("What is the largest number?", "{nums}"), ("Which number is the biggest: {nums}", ""),
        ("Find the maximum.", "{nums}"), ("Give the highest number in the list.", "{nums}"),
        ("Pick out the greatest value.", "{nums}"), ("Return the max of the numbers.", "{nums}"))),
    Family("lookup", 1, _lookup, lambda a: str(_value(a, "key")), (
        ("What is the value of {key}?", "{pairs}"), ("Using {pairs}, what is {key}?", ""),
        ("Look up {key}.", "{pairs}"), ("Find the number paired with {key}.", "{pairs}"),
        ("Which value does {key} have?", "{pairs}"), ("Tell me what {key} equals.", "{pairs}"))),
    Family("kth_word", 1, _words_k, lambda a: a["words"][a["k"] - 1], (
        ("What is the {kth} word?", "{words}"), ("Give word number {k}.", "{words}"),
        ("Return the {kth} word of the list.", "{words}"), ("Which word is in position {k}?", "{words}"),
        ("Pick the {kth} item.", "{words}"), ("Tell me the word at place {k}.", "{words}"))),
    Family("sort_kth", 2, _nums_k, lambda a: str(sorted(a["nums"])[a["k"] - 1]), (
        ("Sort the numbers, then give the {kth} one.", "{nums}"), ("Sort {nums} and give the {kth}.", ""),
        ("After sorting from smallest to largest, which number is {kth}?", "{nums}"),
        ("Put the numbers in increasing order and return number {k}.", "{nums}"),
        ("Order the numbers upward, then pick the {kth}.", "{nums}"),
        ("What is the {kth} smallest number?", "{nums}"))),
    Family("lookup_add", 2, _lookup2, lambda a: str(_value(a, "key") + _value(a, "key2")), (
        ("Add the values of {key} and {key2}.", "{pairs}"), ("Using {pairs}, what is {key} + {key2}?", ""),
        ("What is {key} plus {key2}?", "{pairs}"), ("Look up {key} and {key2} and give their sum.", "{pairs}"),
        ("Find {key} and {key2}, then add them.", "{pairs}"), ("Give the total of {key} and {key2}.", "{pairs}"))),
    Family("reverse_kth", 2, _words_k, lambda a: a["words"][::-1][a["k"] - 1], (
        ("Reverse the words, then give the {kth} one.", "{words}"), ("Reverse {words} and give the {kth} word.", ""),
        ("Which word is {kth} from the end?", "{words}"), ("Read the list backwards and return word {k}.", "{words}"),
        ("Flip the list and pick the {kth} word.", "{words}"),
        ("Count {k} words from the end. Which word is it?", "{words}"))),
    # S-NI: never trained; every phrasing is new
    Family("min", 1, _nums, lambda a: str(min(a["nums"])), (
        ("What is the smallest number?", "{nums}"), ("Find the minimum.", "{nums}"),
        ("Which number is the lowest: {nums}", ""), ("Give the least value in the list.", "{nums}"))),
    Family("last_word", 1, _words, lambda a: a["words"][-1], (
        ("What is the last word?", "{words}"), ("Give the final word of the list.", "{words}"),
        ("Which word comes at the end: {words}", ""), ("Return the word in the last position.", "{words}"))),
    Family("sum", 1, _digits, lambda a: str(sum(a["nums"])), (
        ("Add up all the numbers.", "{nums}"), ("What is the sum of the list?", "{nums}"),
        ("Find the total of {nums}.", ""), ("Sum the digits in the input.", "{nums}"))),
    # VicunaEval: harder compositions of trained skills
    Family("sort_kth_add", 3, _nums_k_c, lambda a: str(sorted(a["nums"])[a["k"] - 1] + a["c"]), (
        ("Sort the numbers, take the {kth} one, then add {c} to it.", "{nums}"),
        ("Find the {kth} smallest number and add {c}.", "{nums}"))),
    Family("lookup_add3", 3, _lookup3, lambda a: str(sum(_value(a, k) for k in ("key", "key2", "key3"))), (
        ("Add the values of {key}, {key2} and {key3}.", "{pairs}"),
        ("Using {pairs}, what is {key} + {key2} + {key3}?", ""))),
    Family("sort_reverse", 2, _nums, lambda a: _join(sorted(a["nums"], reverse=True)), (
        ("Sort the numbers, then reverse the order.", "{nums}"),
        ("Put the numbers in increasing order and then write them backwards.", "{nums}"))),
)}
TRAIN_FAMILIES = ("copy", "reverse", "sort", "count", "add", "sub", "max", "lookup", "kth_word",
                  "sort_kth", "lookup_add", "reverse_kth")
SNI_FAMILIES = ("min", "last_word", "sum")
VICUNA_FAMILIES = ("sort_kth_add", "lookup_add3", "sort_reverse")


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

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), {"int": int, "float": float, "bool": bool}[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"WorldConfig.{f.name}: expected {kind.__name__}, got {value!r}")
        for name in ("n_train", "n_valid", "n_test", "n_ood", "n_vicuna", "max_level", "ood_extra_levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_level + self.ood_extra_levels + 2 > MAX_ITEMS:
            raise ValueError(f"WorldConfig: max_level + ood_extra_levels must be <= {MAX_ITEMS - 2} "
                             f"(lists get up to level + 2 items), got {self.max_level + self.ood_extra_levels}")
        if not 0.0 <= self.pretrain_qa_frac <= 1.0:
            raise ValueError(f"WorldConfig.pretrain_qa_frac must be in [0, 1], got {self.pretrain_qa_frac}")


_PRESETS = {
    "smoke": dict(n_train=64, n_valid=16, n_test=16, n_ood=16, n_vicuna=8, max_level=3),
    "classroom": dict(n_train=1000, n_valid=80, n_test=40, n_ood=48, n_vicuna=24, max_level=4),
    "laptop": dict(n_train=2500, n_valid=200, n_test=100, n_ood=100, n_vicuna=40, max_level=4),
    "gpu": dict(n_train=20000, n_valid=1600, n_test=800, n_ood=400, n_vicuna=80, max_level=6),
}


def world_config(profile: str, **overrides) -> WorldConfig:
    """The preset WorldConfig of a profile ("smoke", "classroom", "laptop", "gpu"), with optional field overrides."""
    if profile not in _PRESETS:
        raise ValueError(f"unknown world profile {profile!r}; valid: {sorted(_PRESETS)}")
    valid = {f.name for f in fields(WorldConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown WorldConfig field(s) {unknown}; valid: {sorted(valid)}")
    return WorldConfig(**{**_PRESETS[profile], **overrides})


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
    """Families, phrasings and levels each role samples from (see the module docstring)."""
    trained = tuple(range(1, cfg.max_level + 1))
    beyond = tuple(range(cfg.max_level + 1, cfg.max_level + cfg.ood_extra_levels + 1))
    specs = {
        "train": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_train),
        "valid": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_valid),
        "DollyEval": RoleSpec(TRAIN_FAMILIES, _train_templates, trained, cfg.n_test),
        "SelfInst": RoleSpec(TRAIN_FAMILIES, _held_templates, trained, cfg.n_ood),
        "VicunaEval": RoleSpec(VICUNA_FAMILIES, _all_templates, trained, cfg.n_vicuna),
        "S-NI": RoleSpec(SNI_FAMILIES, _all_templates, trained, cfg.n_ood),
        "UnNI": RoleSpec(TRAIN_FAMILIES, _train_templates, beyond, cfg.n_ood),
    }
    if role not in specs:
        raise ValueError(f"unknown role {role!r}; valid: {list(specs)}")
    return specs[role]


def _slots(args: dict) -> dict[str, str]:
    """Strings substituted into a template: lists space-joined, pairs as 'A=3 K=7', k also as an ordinal."""
    out = {}
    for name, value in args.items():
        if name == "pairs":
            out[name] = " ".join(f"{k}={v}" for k, v in value)
        else:
            out[name] = _join(value) if isinstance(value, list) else str(value)
    if "k" in args:
        out["kth"] = ORDINALS[args["k"] - 1]
    return out


def make_row(family: str, level: int, template: int, args: dict) -> dict:
    """One row in the MiniLLM layout, plus family/level/difficulty and the structured args in `meta`."""
    fam = FAMILIES[family]
    slots = _slots(args)
    instruction, input_ = (part.format(**slots) for part in fam.templates[template])
    return {"instruction": instruction, "input": input_, "output": fam.answer(args),
            "prompt": build_prompt(instruction, input_), "family": family, "topic": family, "level": level,
            "difficulty": level + fam.depth - 1,
            "meta": {"args": args, "template": template, "depth": fam.depth}}


def _draw(rng: random.Random, spec: RoleSpec) -> dict:
    fam = FAMILIES[rng.choice(spec.families)]
    level = rng.choice(spec.levels)
    template = rng.choice(spec.templates(fam))
    return make_row(fam.name, level, template, fam.sample(rng, level))


def _sample_role(role: str, cfg: WorldConfig, seen: set[str], max_tries: int = 500) -> list[dict]:
    """`spec.n` rows whose prompts are new to `seen` (which is updated): redraws family and level on a clash."""
    rng = random.Random(f"pocl-world/{cfg.seed}/{role}")  # str seeds hash with sha512: stable across runs
    spec, rows = role_spec(role, cfg), []
    while len(rows) < spec.n:
        for _ in range(max_tries):
            row = _draw(rng, spec)
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
    """role -> rows for every role in ROLES; deterministic in cfg; prompts unique across all roles."""
    seen: set[str] = set()
    world = {role: _sample_role(role, cfg, seen) for role in _GENERATION_ORDER}
    return {role: world[role] for role in ROLES}


def true_difficulty(rows: Iterable) -> np.ndarray:
    """The generator's difficulty of each row (a dict, or an object whose `.meta` dict holds it), float64."""
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
    """Write `<role>.jsonl` per role and world_meta.json (config, counts, families) last; role -> path."""
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
            "difficulty": "level + depth - 1 (level: list items - 1, operand digits or pairs - 1; depth: steps)"}
    _atomic_write_text(out / META_FILE, json.dumps(meta, indent=1) + "\n")
    return paths


def load_or_create_world(cfg: WorldConfig, out_dir: str | Path) -> dict[str, Path]:
    """Paths of the world in out_dir, regenerated only when the saved meta's config or version differ."""
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


def _fact_arith(rng: random.Random, level: int) -> str:
    a, s = _add(rng, level), _sub(rng, level)
    return f"{a['a']} plus {a['b']} is {a['a'] + a['b']}, and {s['a']} minus {s['b']} is {s['a'] - s['b']}."


def _fact_words(rng: random.Random, level: int) -> str:
    w = _words(rng, level)["words"]
    k = rng.randint(1, len(w))
    return (f"The list {_join(w)} has {len(w)} words. Its {ORDINALS[k - 1]} word is {w[k - 1]} and its last "
            f"word is {w[-1]}. Backwards it reads {_join(w[::-1])}.")


def _fact_nums(rng: random.Random, level: int) -> str:
    x = _nums(rng, level)["nums"]
    return (f"The numbers {_join(x)} sorted are {_join(sorted(x))}. "
            f"The largest is {max(x)} and the smallest is {min(x)}.")


def _fact_pairs(rng: random.Random, level: int) -> str:
    p, d = _lookup(rng, level), _digits(rng, level)["nums"]
    return f"In {_slots(p)['pairs']}, {p['key']} is {_value(p, 'key')}. The sum of {_join(d)} is {sum(d)}."


def _fact_scene(rng: random.Random, level: int) -> str:
    w1, w2 = rng.sample(WORDS, 2)
    where = rng.choice(("next to", "under", "on", "near", "behind"))
    return f"The {w1} is {where} the {w2}. There are {level + 1} of them."


_FACTS = (_fact_arith, _fact_words, _fact_nums, _fact_pairs, _fact_scene)


def _eval_prompts(cfg: WorldConfig) -> set[str]:
    """Prompts of every role but train: the same draws as generate_world, which samples them before train."""
    seen: set[str] = set()
    for role in _GENERATION_ORDER[:-1]:
        _sample_role(role, cfg, seen)
    return seen


def pretrain_corpus(cfg: WorldConfig, n: int) -> list[str]:
    """`n` deterministic world texts for plain-LM pre-training of the student (as GPT-2 is pre-trained).

    A `pretrain_qa_frac` share are solved tasks of the trained families, phrasings and levels (plain
    "instruction / input / answer" lines unless `pretrain_template`); the rest are world sentences. The
    sentences also state facts the S-NI families ask about (smallest, last word, sums), as web text would
    for GPT-2, but no eval or valid prompt (instruction + input) ever appears.
    """
    if n < 0:
        raise ValueError(f"pretrain_corpus: n must be >= 0, got {n}")
    rng = random.Random(f"pocl-world/{cfg.seed}/pretrain")
    banned, spec, texts = _eval_prompts(cfg), role_spec("train", cfg), []
    while len(texts) < n:
        if rng.random() >= cfg.pretrain_qa_frac:
            texts.append(rng.choice(_FACTS)(rng, rng.choice(spec.levels)))
            continue
        row = _draw(rng, spec)
        if row["prompt"] in banned:
            continue
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
    """role -> family (and "all") -> mean/max token counts of prompt and response (response without EOS)."""
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
