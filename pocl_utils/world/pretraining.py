"""Plain-LM pre-training text: solved tasks and world sentences, the web's part for the world's teacher and student.

Pre-training text demonstrates every family (S-NI's too), every phrasing and levels up to UnNI's, in plain
"instruction / input / answer" lines, plus sentences about the lexicon and numbers; it never holds a train, valid or
eval prompt. The teacher and the student are pre-trained on disjoint pools of it; the instruction data then teaches
the MiniLLM template on the trained families only.
"""
from __future__ import annotations

import hashlib
import random

from .config import WorldConfig
from .families import LEXICON, NEW_LEXICON, PRETRAIN_FAMILIES, join_items, sample_digits, sample_nums
from .generation import GENERATION_ORDER, RoleSpec, all_templates, draw_row, sample_role, word_pool


def _fact_lexicon(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    w = rng.sample(word_pool(cfg, level), level + 1)
    tongue, lexicon = rng.choice((("old", LEXICON), ("new", NEW_LEXICON)))
    return f"In the {tongue} tongue, " + ", ".join(f"{x} is {lexicon[x]}" for x in w) + "."


def _fact_numbers(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    x = sample_nums(rng, level)["nums"]
    small = sample_digits(rng, level)["nums"]
    return f"After {join_items(x)} come {join_items(v + 1 for v in x)}. The numbers {join_items(small)} are small."


def _fact_scene(rng: random.Random, level: int, cfg: WorldConfig) -> str:
    w1, w2 = rng.sample(word_pool(cfg, level), 2)
    where = rng.choice(("next to", "under", "on", "near", "behind"))
    return f"The {w1} is {where} the {w2}. There are {level + 1} of them."


_FACTS = (_fact_lexicon, _fact_numbers, _fact_scene)


def _eval_prompts(cfg: WorldConfig) -> set[str]:
    """Prompts of every role but train: the same draws as generate_world, which samples them before train."""
    seen: set[str] = set()
    for role in GENERATION_ORDER[:-1]:
        sample_role(role, cfg, seen)
    return seen


PRETRAIN_POOLS = ("teacher", "student")


def _pool_of(prompt: str) -> str:
    """The pre-training pool a task prompt belongs to: a stable hash, half and half."""
    return PRETRAIN_POOLS[hashlib.sha256(prompt.encode()).digest()[0] % 2]


def pretrain_spec(cfg: WorldConfig) -> RoleSpec:
    """What pre-training text demonstrates: every family (S-NI's too), every phrasing, levels up to UnNI's.

    Returns a RoleSpec over PRETRAIN_FAMILIES, all templates, levels 1..max_level + ood_extra_levels, n = 0.
    """
    return RoleSpec(PRETRAIN_FAMILIES, all_templates, tuple(range(1, cfg.max_level + cfg.ood_extra_levels + 1)), 0)


def pretrain_corpus(cfg: WorldConfig, n: int, pool: str = "student") -> list[str]:
    """`n` deterministic world texts for plain-LM pre-training (as GPT-2 models are pre-trained on web text).

    A `pretrain_qa_frac` share are solved tasks of every family, phrasing and level the world has (plain
    "instruction / input / answer" lines unless `pretrain_template`); the rest are world sentences (the lexicon,
    numbers). No eval, valid or train prompt (instruction + input) ever appears. `pool` ("teacher" or "student")
    picks one of two disjoint halves of the task prompts (split by a hash of the prompt), so the teacher and the
    student are pre-trained on different demonstrations of the same world.

    `n`: the number of texts, >= 0.
    `pool`: "teacher" or "student" (PRETRAIN_POOLS): which half of the task prompts to draw from.
    Returns `n` texts, deterministic in (cfg, pool).
    Raises ValueError: n < 0 or an unknown pool.
    """
    if n < 0:
        raise ValueError(f"pretrain_corpus: n must be >= 0, got {n}")
    if pool not in PRETRAIN_POOLS:
        raise ValueError(f"pretrain_corpus: pool must be one of {PRETRAIN_POOLS}, got {pool!r}")
    rng = random.Random(f"pocl-world/{cfg.seed}/pretrain/{pool}")
    banned, spec, texts = _eval_prompts(cfg), pretrain_spec(cfg), []
    banned |= {r["prompt"] for r in sample_role("train", cfg, set(banned))}
    while len(texts) < n:
        if rng.random() >= cfg.pretrain_qa_frac:
            texts.append(rng.choice(_FACTS)(rng, rng.choice(spec.levels), cfg))
            continue
        row = draw_row(rng, spec, cfg)
        while row["prompt"] in banned or _pool_of(row["prompt"]) != pool:
            row = draw_row(rng, spec, cfg)
        qa = [row["instruction"], row["input"], row["output"]]
        texts.append(row["prompt"] + row["output"] if cfg.pretrain_template else "\n".join(s for s in qa if s))
    return texts
