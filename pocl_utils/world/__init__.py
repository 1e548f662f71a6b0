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

Difficulty is `level + depth - 1`, fixed by the generator (`generation`, which also says what each of the five eval
roles holds); the teacher and the student are pre-trained on plain world text (`pretraining`).

Modules, one job each: `families` (words, lexicons, task families), `config` (WorldConfig, presets), `generation`
(roles, rows, true difficulty), `files` (writing and reloading a world), `pretraining` (plain-LM text), `tokenizer`
(the BPE tokenizer). Every public name is re-exported here, so `from pocl_utils.world import X` works for all of
them. As the subpackage `pocl_utils.world`, it imports only the method's `data` module.
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
