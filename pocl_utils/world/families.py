"""The world's vocabulary and task families: WORDS, the two made-up lexicons, the argument samplers and FAMILIES.

Every answer is a list made of tokens the input does not show: a list of words translated into "the old tongue" or
"the new tongue" (two fixed made-up lexicons, `LEXICON` and `NEW_LEXICON`, over the world's first `n_words` of the
128 `WORDS`), in order or last word first. A family's `depth` is the number of elementary steps it composes; its
samplers draw a list of `level + 1` items.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


def sample_nums(rng: random.Random, level: int, hi: int = 98) -> dict:
    return {"nums": [rng.randint(0, hi) for _ in range(level + 1)]}


def sample_digits(rng: random.Random, level: int, pool: tuple[str, ...] = ()) -> dict:
    return sample_nums(rng, level, hi=9)


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


def join_items(xs: Iterable) -> str:
    return " ".join(map(str, xs))


# Every answer is a list as long as the input (or longer), made of tokens the input does not show, so copying the
# input scores little, and a partly right answer gets partial ROUGE-L credit (the measurer sees degrees of right).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("translate", 1, _words, lambda a: join_items(LEXICON[w] for w in a["words"]), (
        ("Translate the words into the old tongue.", "{words}"), ("Translate: {words}", ""),
        ("Give each word in the old tongue.", "{words}"), ("Say these words in the old tongue.", "{words}"),
        ("How do you say this in the old tongue?", "{words}"), ("Write the list in the old tongue.", "{words}"))),
    Family("encode", 1, _words, lambda a: join_items(NEW_LEXICON[w] for w in a["words"]), (
        ("Translate the words into the new tongue.", "{words}"), ("Encode: {words}", ""),
        ("Give each word in the new tongue.", "{words}"), ("Say these words in the new tongue.", "{words}"),
        ("How do you say this in the new tongue?", "{words}"), ("Write the list in the new tongue.", "{words}"))),
    Family("translate_reverse", 2, _words, lambda a: join_items(LEXICON[w] for w in a["words"][::-1]), (
        ("Reverse the words, then translate them into the old tongue.", "{words}"),
        ("Translate {words} into the old tongue, last word first.", ""),
        ("Say the words backwards in the old tongue.", "{words}"),
        ("Put the words in reverse order and give them in the old tongue.", "{words}"),
        ("Flip the list and translate it into the old tongue.", "{words}"),
        ("In the old tongue, list the words from the end to the start.", "{words}"))),
    Family("encode_reverse", 2, _words, lambda a: join_items(NEW_LEXICON[w] for w in a["words"][::-1]), (
        ("Reverse the words, then translate them into the new tongue.", "{words}"),
        ("Encode {words} in the new tongue, last word first.", ""),
        ("Say the words backwards in the new tongue.", "{words}"),
        ("Put the words in reverse order and give them in the new tongue.", "{words}"),
        ("Flip the list and translate it into the new tongue.", "{words}"),
        ("In the new tongue, list the words from the end to the start.", "{words}"))),
    # S-NI: never in the instruction data; the pre-training text demonstrates them (as the web does for GPT-2)
    Family("untranslate", 1, _foreign, lambda a: join_items(UNLEXICON[w] for w in a["words"]), (
        ("Translate the words from the old tongue.", "{words}"), ("What do these old-tongue words mean: {words}", ""),
        ("Give the plain words for this old-tongue list.", "{words}"),
        ("Say these old-tongue words in plain words.", "{words}"))),
    Family("decr", 1, _pos_digits, lambda a: join_items(x - 1 for x in a["nums"]), (
        ("Subtract one from each number.", "{nums}"), ("Decrease every number by 1: {nums}", ""),
        ("Write each number minus one.", "{nums}"), ("Make every number one smaller.", "{nums}"))),
    Family("double", 1, sample_digits, lambda a: join_items(2 * x for x in a["nums"]), (
        ("Double each number.", "{nums}"), ("Multiply every number by 2: {nums}", ""),
        ("Write each number times two.", "{nums}"), ("Make every number twice as big.", "{nums}"))),
)}
TRAIN_FAMILIES = ("translate", "encode", "translate_reverse", "encode_reverse")
SNI_FAMILIES = ("untranslate", "decr", "double")
VICUNA_FAMILIES = ("translate_reverse", "encode_reverse")  # the compositions, at the top trained levels, new phrasings
PRETRAIN_FAMILIES = TRAIN_FAMILIES + SNI_FAMILIES
TONGUES = {"old": LEXICON, "new": NEW_LEXICON}
TONGUE = {"translate": "old", "translate_reverse": "old", "encode": "new", "encode_reverse": "new"}  # the answers'
