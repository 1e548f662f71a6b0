"""A synthetic instruction world: seeded task families whose difficulty is known, plus its BPE tokenizer.

Real instruction data cannot train a useful teacher/student pair on a 2-core CPU, so the default profiles generate a
world of natural-language instructions in the MiniLLM-processed Dolly JSON Lines layout (one loader reads both).
Every answer is a list of tokens the input does not show (words translated into "the old tongue" or "the new
tongue", `LEXICON` and `NEW_LEXICON`), so copying scores little and partial answers earn partial ROUGE-L.
Difficulty is `level + depth - 1`, fixed by the generator.

Modules: `families` (words, lexicons, task families), `config` (WorldConfig, presets), `generation` (roles, rows,
true difficulty), `files` (writing and reloading a world), `pretraining` (plain-LM text), `tokenizer` (BPE). Every
public name is re-exported here. Imports only the method's `data` module.
"""
from .config import PRESETS, WorldConfig, world_config
from .families import (FAMILIES, LEXICON, MAX_ITEMS, NEW_LEXICON, ORDINALS, PRETRAIN_FAMILIES, SNI_FAMILIES, TONGUE,
                       TONGUES, TRAIN_FAMILIES, UNLEXICON, VICUNA_FAMILIES, WORDS, Family)
from .files import META_FILE, load_or_create_world, write_world
from .generation import (EVAL_ROLES, HELD_OUT_TEMPLATES, ROLES, WORLD_VERSION, RoleSpec, easiest_quarter,
                         easy_coverage, easy_difficulty, generate_world, make_row, role_spec, true_difficulty,
                         word_pool)
from .pretraining import PRETRAIN_POOLS, pretrain_corpus, pretrain_spec
from .tokenizer import EOS, template_phrases, token_stats, train_tokenizer

__all__ = ["EOS", "EVAL_ROLES", "FAMILIES", "HELD_OUT_TEMPLATES", "LEXICON", "MAX_ITEMS", "META_FILE", "NEW_LEXICON",
           "ORDINALS", "PRESETS", "PRETRAIN_FAMILIES", "PRETRAIN_POOLS", "ROLES", "SNI_FAMILIES", "TONGUE", "TONGUES",
           "TRAIN_FAMILIES", "UNLEXICON", "VICUNA_FAMILIES", "WORDS", "WORLD_VERSION", "Family", "RoleSpec",
           "WorldConfig", "easiest_quarter", "easy_coverage", "easy_difficulty", "generate_world",
           "load_or_create_world", "make_row", "pretrain_corpus", "pretrain_spec", "role_spec", "template_phrases",
           "token_stats", "train_tokenizer", "true_difficulty", "word_pool", "world_config", "write_world"]
