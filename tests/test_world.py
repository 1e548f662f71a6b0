"""The generated instruction world: determinism, correct answers, splits, held-out sets, tokenizer."""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, replace

import numpy as np
import pytest

from pocl_utils.data import Encoded, build_prompt, load_instructions
from pocl_utils import world as W

# Independent answers, written from the task descriptions (not from the generator's code).
REFERENCE = {
    "translate": lambda a: " ".join(W.LEXICON[w] for w in a["words"]),
    "encode": lambda a: " ".join(W.NEW_LEXICON[w] for w in a["words"]),
    "translate_reverse": lambda a: " ".join(W.LEXICON[w] for w in reversed(a["words"])),
    "encode_reverse": lambda a: " ".join(W.NEW_LEXICON[w] for w in reversed(a["words"])),
    "untranslate": lambda a: " ".join({v: k for k, v in W.LEXICON.items()}[w] for w in a["words"]),
    "decr": lambda a: " ".join(str(x - 1) for x in a["nums"]),
    "double": lambda a: " ".join(str(2 * x) for x in a["nums"]),
}
DEPTH = {"translate_reverse": 2, "encode_reverse": 2}
ORDINAL = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


@pytest.fixture(scope="module")
def laptop():
    cfg = W.world_config("laptop")
    return cfg, W.generate_world(cfg)


@pytest.fixture(scope="module")
def tokenizer(laptop):
    cfg, world = laptop
    texts = W.pretrain_corpus(cfg, 1000) + [r["prompt"] + r["output"] for r in world["train"]]
    return W.train_tokenizer(texts, 512)


def _items(args: dict) -> int:
    """How many list items / pairs a row's input holds (0 for arithmetic)."""
    return len(args.get("words", args.get("nums", args.get("pairs", []))))


def _skeleton(instruction: str) -> str:
    """An instruction with its arguments masked, i.e. its phrasing."""
    s = re.sub(r"\b[A-Z]=\d\b", "P", instruction)
    s = re.sub(r"\b\d+\b", "N", s)
    s = re.sub(r"\b(" + "|".join(W.WORDS + tuple(W.LEXICON.values())) + r")\b", "W", s)
    return re.sub(r"\b[A-Z]\b", "K", s)


# ---- generation -------------------------------------------------------------------------------------------------


def test_generation_is_fast_and_sized(laptop):
    cfg, world = laptop
    t0 = time.perf_counter()
    W.generate_world(cfg)
    assert time.perf_counter() - t0 < 2.0
    assert list(world) == ["train", "valid", "DollyEval", "SelfInst", "VicunaEval", "S-NI", "UnNI"]
    want = {"train": cfg.n_train, "valid": cfg.n_valid, "DollyEval": cfg.n_test, "SelfInst": cfg.n_ood,
            "VicunaEval": cfg.n_vicuna, "S-NI": cfg.n_ood, "UnNI": cfg.n_ood}
    assert {r: len(rows) for r, rows in world.items()} == want
    assert cfg.n_train / cfg.n_valid == pytest.approx(12.5)  # Dolly's train : valid
    assert cfg.n_test >= 100 and cfg.n_ood >= 100  # the greedy protocol scores every row of these


def test_same_seed_same_files_other_seed_differs(tmp_path):
    cfg = W.world_config("smoke")
    a = W.write_world(W.generate_world(cfg), tmp_path / "a", cfg=cfg)
    b = W.write_world(W.generate_world(cfg), tmp_path / "b", cfg=cfg)
    c = W.write_world(W.generate_world(replace(cfg, seed=1)), tmp_path / "c")
    for role in W.ROLES:
        assert a[role].read_bytes() == b[role].read_bytes()
        assert a[role].read_bytes() != c[role].read_bytes()
    assert (tmp_path / "a" / W.META_FILE).read_bytes() == (tmp_path / "b" / W.META_FILE).read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp")) and not list((tmp_path / "a").glob(".*"))


def test_every_answer_is_correct(laptop):
    _, world = laptop
    for role, rows in world.items():
        for r in rows:
            args = r["meta"]["args"]
            assert r["output"] == REFERENCE[r["family"]](args), (role, r)
            text = r["instruction"] + "\n" + r["input"]
            for key in ("words", "nums"):
                if key in args:  # the args are what the prompt shows
                    assert " ".join(map(str, args[key])) in text, r
            if "pairs" in args:
                assert " ".join(f"{k}={v}" for k, v in args["pairs"]) in text, r


def test_rows_have_the_minillm_layout(laptop):
    _, world = laptop
    for role, rows in world.items():
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert r["prompt"] == build_prompt(r["instruction"], r["input"])
            assert r["topic"] == r["family"] and isinstance(r["input"], str) and r["output"]
            assert r["difficulty"] == r["level"] + DEPTH.get(r["family"], 1) - 1
    no_input = [r for r in world["train"] if r["input"] == ""]
    assert 0.1 < len(no_input) / len(world["train"]) < 0.5  # both templates are exercised
    assert all("### Input:" not in r["prompt"] for r in no_input)


def test_level_is_a_real_difficulty_knob(laptop):
    _, world = laptop
    for r in (r for rows in world.values() for r in rows):
        assert _items(r["meta"]["args"]) == r["level"] + 1, r
        assert len(r["output"].split()) == r["level"] + 1, r  # one answer item per input item


def test_copying_the_input_cannot_fake_an_answer(laptop):
    from pocl_utils.analysis.premises import rule_scores
    _, world = laptop
    sets = {role: [dict(r, references=[r["output"]]) for r in world[role]] for role in W.EVAL_ROLES}
    rules = rule_scores(sets, world["train"])
    assert max(rules["echo input"].values()) < 20  # version 1's one-word answers gave echo 23.5-38.8
    assert max(rules["most frequent answer"].values()) < 20
    for r in (r for rows in world.values() for r in rows):
        if r["family"] != "decr" and r["family"] != "double":  # other-language answers share nothing with the input
            assert not set(r["output"].split()) & set((r["instruction"] + " " + r["input"]).split()), r


def test_no_prompt_is_shared_between_roles(laptop):
    _, world = laptop
    prompts = [r["prompt"] for rows in world.values() for r in rows]
    assert len(set(prompts)) == len(prompts)
    train = {r["prompt"] for r in world["train"]}
    for role in ("valid", *W.EVAL_ROLES):
        assert not train & {r["prompt"] for r in world[role]}, role


def test_held_out_sets(laptop):
    cfg, world = laptop
    train_fams = {r["family"] for r in world["train"]}
    assert train_fams == set(W.TRAIN_FAMILIES) and {"translate_reverse", "encode_reverse"} <= train_fams
    assert {r["family"] for r in world["DollyEval"]} <= train_fams
    sni = {r["family"] for r in world["S-NI"]}
    assert len(sni) >= 2 and not sni & train_fams
    # VicunaEval: the compositions only, at the top trained levels and one beyond, with held-out phrasings
    assert min(DEPTH.get(r["family"], 1) for r in world["VicunaEval"]) >= 2
    assert {r["level"] for r in world["VicunaEval"]} == {cfg.max_level - 1, cfg.max_level, cfg.max_level + 1}
    # SelfInst: trained families, but phrasings never seen in training
    assert {r["family"] for r in world["SelfInst"]} <= train_fams
    train_skel = {_skeleton(r["instruction"]) for r in world["train"]}
    self_skel = {_skeleton(r["instruction"]) for r in world["SelfInst"]}
    vicuna_skel = {_skeleton(r["instruction"]) for r in world["VicunaEval"]}
    assert len(train_skel) >= 4 * len(train_fams) and len(self_skel) >= len(train_fams)  # several phrasings each
    assert not self_skel & train_skel and not vicuna_skel & train_skel
    # UnNI: trained families at levels above the training maximum, with longer inputs
    assert max(r["level"] for r in world["train"]) == cfg.max_level
    assert min(r["level"] for r in world["UnNI"]) == cfg.max_level + 1
    longest = {f: max(_items(r["meta"]["args"]) for r in world["train"] if r["family"] == f) for f in train_fams}
    for r in world["UnNI"]:
        assert r["family"] in train_fams
        assert _items(r["meta"]["args"]) > longest[r["family"]]


def test_lexicons_are_bijections_of_made_up_words():
    assert len(set(W.WORDS)) == len(W.WORDS) == 128
    for lexicon in (W.LEXICON, W.NEW_LEXICON):
        assert sorted(lexicon) == sorted(W.WORDS)
        assert len(set(lexicon.values())) == len(W.WORDS) and not set(lexicon.values()) & set(W.WORDS)
        assert all(re.fullmatch(r"[a-z]{3}", v) and not v.endswith("s") for v in lexicon.values())
    assert not set(W.LEXICON.values()) & set(W.NEW_LEXICON.values())  # the two tongues share no word


def test_true_difficulty():
    rows = [{"difficulty": 3}, {"difficulty": 1.5}]
    np.testing.assert_array_equal(W.true_difficulty(rows), np.array([3.0, 1.5]))
    assert W.true_difficulty(rows).dtype == np.float64
    enc = Encoded([1], [2], meta={"difficulty": 2})
    np.testing.assert_array_equal(W.true_difficulty([enc]), [2.0])
    with pytest.raises(KeyError, match="row 1"):
        W.true_difficulty([{"difficulty": 1}, {"level": 2}])


def test_level_pools_put_the_rarest_words_in_the_longest_lists():
    cfg = W.WorldConfig(n_words=128, max_level=4, level_pools=True)
    assert [len(W.word_pool(cfg, level)) for level in (1, 2, 3, 4, 5, 6)] == [32, 64, 96, 128, 128, 128]
    assert W.word_pool(cfg, 1) == W.WORDS[:32]  # a prefix: every pool holds the pools of the levels below
    flat = W.WorldConfig(n_words=40, max_level=4)
    assert all(W.word_pool(flat, level) == W.WORDS[:40] for level in (1, 4, 6))
    world = W.generate_world(replace(cfg, n_train=800))
    for role in ("train", "DollyEval", "UnNI"):
        for r in world[role]:
            words = r["meta"]["args"].get("words", [])
            assert set(words) <= set(W.word_pool(cfg, r["level"])), (role, r["level"], words)
    top = {w for r in world["train"] if r["level"] == 4 for w in r["meta"]["args"]["words"]}
    assert top - set(W.WORDS[:96])  # the rare words do occur, at the top level only
    assert not {w for r in world["train"] if r["level"] < 4 for w in r["meta"]["args"]["words"]} - set(W.WORDS[:96])
    facts = [t for t in W.pretrain_corpus(flat, 400) if t.startswith("In the ")]
    assert facts and all(set(re.findall(r"(\w+) is ", t)) <= set(W.WORDS[:40]) for t in facts)


# ---- config -----------------------------------------------------------------------------------------------------


def test_config_validation_and_presets():
    assert W.world_config("laptop") == W.WorldConfig(n_test=300, n_ood=300, n_vicuna=120, pretrain_template=True,
                                                     pretrain_qa_frac=0.8, n_words=128, level_pools=True)
    sizes = [W.world_config(p).n_train for p in ("smoke", "classroom", "laptop", "gpu")]
    assert sizes == sorted(sizes) and sizes[0] <= 100 and sizes[-1] >= 10000
    assert W.world_config("smoke", seed=3).seed == 3
    with pytest.raises(ValueError, match="n_train"):
        W.WorldConfig(n_train=0)
    with pytest.raises(TypeError, match="max_level"):
        W.WorldConfig(max_level=2.0)
    with pytest.raises(ValueError, match="max_level"):
        W.WorldConfig(max_level=9, ood_extra_levels=2)
    with pytest.raises(ValueError, match="laptop"):
        W.world_config("tiny")
    with pytest.raises(ValueError, match="n_words"):
        W.WorldConfig(n_words=len(W.WORDS) + 1)
    with pytest.raises(ValueError, match="n_words"):
        W.WorldConfig(n_words=7, max_level=4)
    with pytest.raises(ValueError, match="n_trian"):
        W.world_config("smoke", n_trian=3)


# ---- files ------------------------------------------------------------------------------------------------------


def test_load_or_create_regenerates_only_on_change(tmp_path, monkeypatch):
    cfg = W.world_config("smoke")
    calls = []
    real = W.generate_world
    monkeypatch.setattr(W.files, "generate_world", lambda c: calls.append(c) or real(c))  # the name files.py calls
    paths = W.load_or_create_world(cfg, tmp_path)
    meta = json.loads((tmp_path / W.META_FILE).read_text())
    assert meta["config"] == asdict(cfg) and meta["counts"]["train"] == cfg.n_train
    assert set(meta["families"]["S-NI"]) == set(W.SNI_FAMILIES)
    assert W.load_or_create_world(cfg, tmp_path) == paths and len(calls) == 1
    W.load_or_create_world(replace(cfg, seed=5), tmp_path)
    assert len(calls) == 2 and json.loads((tmp_path / W.META_FILE).read_text())["config"]["seed"] == 5
    paths["UnNI"].unlink()  # a missing file also triggers a rebuild
    W.load_or_create_world(replace(cfg, seed=5), tmp_path)
    assert len(calls) == 3 and paths["UnNI"].exists()


def test_files_load_through_load_instructions(tmp_path):
    cfg = W.world_config("smoke")
    world = W.generate_world(cfg)
    paths = W.write_world(world, tmp_path, cfg=cfg)
    for role, path in paths.items():
        records = load_instructions(path)
        assert [r["prompt"] for r in records] == [r["prompt"] for r in world[role]]
        assert [r["output"] for r in records] == [r["output"] for r in world[role]]
        assert [r["family"] for r in records] == [r["family"] for r in world[role]]
        want = [r["level"] + DEPTH.get(r["family"], 1) - 1 for r in world[role]]
        np.testing.assert_array_equal(W.true_difficulty(records), want)


# ---- pre-training text ------------------------------------------------------------------------------------------


def test_pretrain_corpus_is_deterministic_and_free_of_train_and_eval_prompts(laptop):
    cfg, world = laptop
    cfg = replace(cfg, pretrain_template=False, pretrain_qa_frac=0.5)  # plain lines, half of them demonstrations
    texts = W.pretrain_corpus(cfg, 3000)
    assert len(texts) == 3000 and texts == W.pretrain_corpus(cfg, 3000)
    assert texts != W.pretrain_corpus(replace(cfg, seed=1), 3000)
    teacher = W.pretrain_corpus(cfg, 3000, pool="teacher")
    qa = [t for t in texts if "\n" in t]
    assert 0.4 < len(qa) / len(texts) < 0.6  # pretrain_qa_frac = 0.5
    assert not set(qa) & set(teacher)  # disjoint pools (the QA texts; short world sentences may coincide)
    assert not any("### Instruction" in t for t in texts)
    # the web knows every family, phrasing and level: S-NI's families and UnNI's levels are demonstrated
    first_lines = {t.split("\n")[0] for t in qa}
    assert {r["instruction"] for r in world["S-NI"] if r["input"]} & first_lines
    # level-1 only: tiny task spaces, where a careless corpus would repeat held prompts many times
    small = W.WorldConfig(n_train=50, n_valid=50, n_test=200, n_ood=10, n_vicuna=5, max_level=1)
    small_world = W.generate_world(small)
    held = {(r["instruction"], r["input"]) for role in W.ROLES for r in small_world[role]}
    qa = [t.split("\n") for t in W.pretrain_corpus(small, 2000) if "\n" in t]
    assert not [lines for lines in qa if (lines[0], lines[1] if len(lines) == 3 else "") in held]
    assert {r["instruction"] for r in small_world["train"]} & {lines[0] for lines in qa}  # trained tasks are in
    framed = W.pretrain_corpus(replace(cfg, pretrain_template=True), 500)
    held_prompts = {r["prompt"] for role in W.ROLES for r in world[role]}
    assert sum("### Response:\n" in t for t in framed) > 150
    framed_prompts = {t.split("### Response:\n")[0] + "### Response:\n" for t in framed if "### Response" in t}
    assert not framed_prompts & held_prompts


# ---- tokenizer --------------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_and_special_tokens(laptop, tokenizer):
    _, world = laptop
    tok = tokenizer
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id is not None
    assert 300 < len(tok) <= 512
    texts = [r["prompt"] + r["output"] for rows in world.values() for r in rows]
    texts += ["  two  spaces\n\nand\ttab 007 é ü 12.5%", "a , b . c n't it ' s ?", "<|endoftext|>", ""]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    for text, x in zip(texts, ids):
        assert tok.decode(x) == text
    # the prompt/response boundary is a token boundary: tokenizing apart == tokenizing together
    r = world["train"][0]
    assert tok(r["prompt"] + r["output"])["input_ids"] == tok(r["prompt"])["input_ids"] + tok(r["output"])["input_ids"]


def test_digits_are_single_tokens(tokenizer):
    for token in tokenizer.get_vocab():
        text = tokenizer.convert_tokens_to_string([token])
        assert not any(c.isdigit() for c in text) or len(text) == 1, token
    ids = tokenizer("Add 305 and 1789.", add_special_tokens=False)["input_ids"]  # digits split however rare
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [p for p in pieces if p.strip().isdigit()] == list("3051789")


def test_template_is_cheap(laptop, tokenizer):
    _, world = laptop
    n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert n(build_prompt("")) == 2 and n(build_prompt("", "x")) == 4  # header, markers and 'x'
    stats = W.token_stats(world, tokenizer)
    assert stats["train"]["all"]["prompt_max"] <= 40 and stats["train"]["all"]["response_max"] <= 16
    assert stats["UnNI"]["all"]["prompt_max"] <= 48 and stats["UnNI"]["all"]["response_max"] <= 24
    assert stats["train"]["all"]["n"] == len(world["train"])
    assert set(stats["S-NI"]) == set(W.SNI_FAMILIES) | {"all"}


def test_tokenizer_save_and_reload(tmp_path, laptop):
    from transformers import AutoTokenizer
    cfg, world = laptop
    tok = W.train_tokenizer(W.pretrain_corpus(cfg, 300), 384, out_dir=tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    prompt = world["SelfInst"][0]["prompt"]
    assert again(prompt)["input_ids"] == tok(prompt)["input_ids"] and again.pad_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="vocab_size"):
        W.train_tokenizer(["abc"], 100)


def test_teacher_sft_mixes_its_own_pretraining_blocks(tmp_path):
    from pocl_utils.experiment.config import get_profile
    from pocl_utils.experiment.pipeline import prepare, teacher_sft_data
    p = get_profile("smoke", {"teacher_sft_mix": 0.5})
    ws = prepare(p, runs_root=tmp_path, until="tokenizer", log=lambda s: None)
    train, mixed = ws.encoded("train"), teacher_sft_data(ws)
    assert mixed[:len(train)] == train and len(mixed) == 2 * len(train)  # mix 0.5: as many blocks as examples
    assert [e.index for e in mixed] == list(range(len(mixed)))  # unique indices for the batch sampler
    blocks = mixed[len(train):]
    assert all(len(b.prompt_ids) == 1 and len(b.response_ids) == p.max_len - 1 for b in blocks)  # plain-LM blocks
    assert teacher_sft_data(prepare(get_profile("smoke"), runs_root=tmp_path, until="tokenizer",
                                    log=lambda s: None)) == ws.encoded("train")  # mix 0: the instruction data only


# ---- version 4: no knowledge exclusive to the hard rows, noisy training references ------------------------------


def _row(family: str, level: int, words: list[str]) -> dict:
    depth = DEPTH.get(family, 1)
    return {"family": family, "level": level, "difficulty": level + depth - 1,
            "output": REFERENCE[family]({"words": words})}


def test_easiest_quarter_is_the_oracle_curriculums_first_subset():
    from pocl_utils.curriculum import partition
    from pocl_utils.difficulty import order_by_truth
    rows = [{"difficulty": d} for d in (3, 1, 2, 1, 2, 2, 3, 1, 4)]
    assert W.easiest_quarter(rows).tolist() == [1, 3, 7]  # ceil(9 / 4) = 3 rows; equal difficulties keep row order
    rows = [{"difficulty": d} for d in (2, 2, 1, 3, 2, 1, 1, 2)]
    assert W.easiest_quarter(rows).tolist() == [2, 5]  # three rows at difficulty 1, the first two by order
    for rows in (rows, W.generate_world(W.world_config("classroom-v4"))["train"]):
        first = partition(order_by_truth(np.arange(len(rows)), W.true_difficulty(rows)), 4)[0]
        assert W.easiest_quarter(rows).tolist() == first.tolist()


def test_easy_coverage_counts_rows_of_the_easiest_quarter_by_their_right_answer():
    cfg = W.WorldConfig(n_words=8, max_level=4)
    old, new = W.LEXICON, W.NEW_LEXICON
    rows = [_row("translate", 1, ["apple", "cat"]), _row("encode", 1, ["apple", "apple"]),
            _row("translate_reverse", 1, ["dog", "apple"]), _row("translate", 4, ["fish"] * 5),
            _row("encode", 3, ["bird"] * 4), _row("translate", 2, ["tree", "house", "car"]),
            _row("translate", 3, ["banana"] * 4), _row("encode_reverse", 4, ["cat"] * 5)]
    # difficulties 1, 1, 2, 4, 3, 2, 3, 5: the quarter is the first two rows
    rows[0]["output"], rows[0]["clean_output"] = f"{old['dog']} {old['cat']}", rows[0]["output"]  # a noisy reference
    counts = W.easy_coverage(rows, cfg)
    assert len(counts) == 16 and sum(counts.values()) == 3  # a word twice in one row counts that row once
    assert counts[old["apple"]] == counts[old["cat"]] == counts[new["apple"]] == 1
    assert counts[old["dog"]] == 0  # the noise is not knowledge: the right answer counts
    assert counts[old["fish"]] == counts[new["bird"]] == 0


def test_version_4_gives_every_answer_word_to_the_easiest_quarter():
    cfg = W.world_config("laptop-v4")
    assert cfg.easy_cover == 8 and not cfg.level_pools and cfg.n_words == 64
    world = W.generate_world(cfg)
    train = world["train"]
    counts = W.easy_coverage(train, cfg)
    assert len(counts) == 2 * cfg.n_words and min(counts.values()) >= cfg.easy_cover
    quarter = [train[i] for i in W.easiest_quarter(train)]
    assert {r["difficulty"] for r in quarter} == {1, 2}  # difficulty is still length and composition
    assert all(r["difficulty"] == r["level"] + DEPTH.get(r["family"], 1) - 1 for r in train)
    by_level = {lv: {w for r in train if r["level"] == lv for w in r["meta"]["args"]["words"]} for lv in (1, 4)}
    assert by_level[1] == by_level[4] == set(W.WORDS[:64])  # no level has words of its own
    without = W.generate_world(W.world_config("laptop-v4", easy_cover=0))  # the rule is the decks' doing
    assert min(W.easy_coverage(without["train"], cfg).values()) < cfg.easy_cover
    with pytest.raises(RuntimeError, match="easy_cover = 40"):
        W.generate_world(W.world_config("laptop-v4", easy_cover=40))
    assert W.generate_world(W.world_config("smoke-v4"))["train"]  # the small presets meet their own k
    assert W.generate_world(W.world_config("classroom-v4"))["train"]


def test_version_4_training_references_are_noisy_and_keep_the_right_answer():
    cfg = W.world_config("laptop-v4")
    world, clean = W.generate_world(cfg), W.generate_world(replace(cfg, ref_noise=0.0))
    train = world["train"]
    assert [r["prompt"] for r in train] == [r["prompt"] for r in clean["train"]]  # noise moves no prompt
    assert [r["clean_output"] for r in train] == [r["output"] for r in clean["train"]]
    wrong = total = 0
    for r in train:
        assert r["clean_output"] == REFERENCE[r["family"]](r["meta"]["args"])
        tongue = set((W.LEXICON if r["family"].startswith("translate") else W.NEW_LEXICON).values())
        got, right = r["output"].split(), r["clean_output"].split()
        assert len(got) == len(right) and set(got) <= tongue
        wrong, total = wrong + sum(g != c for g, c in zip(got, right)), total + len(got)
    assert abs(wrong / total - cfg.ref_noise) < 0.02
    for role in W.ROLES[1:]:  # valid and eval references stay clean
        assert all("clean_output" not in r and r["output"] == REFERENCE[r["family"]](r["meta"]["args"])
                   for r in world[role])
    assert world["DollyEval"] == clean["DollyEval"]


def test_version_4_config_checks():
    with pytest.raises(ValueError, match="level_pools"):
        W.WorldConfig(easy_cover=2, level_pools=True)
    with pytest.raises(ValueError, match="ref_noise"):
        W.WorldConfig(ref_noise=0.5)
    with pytest.raises(ValueError, match="easy_cover"):
        W.WorldConfig(easy_cover=-1)
    assert W.easy_difficulty(W.role_spec("train", W.world_config("laptop-v4"))) == 2  # 3 / 8 of the draws


def test_teacher_sft_reads_the_clean_answers(tmp_path):
    from types import SimpleNamespace
    from pocl_utils.data import encode_examples, load_instructions
    from pocl_utils.experiment.pipeline import teacher_sft_data
    cfg = W.world_config("smoke-v4")
    paths = W.write_world(W.generate_world(cfg), tmp_path, cfg=cfg)
    rows = load_instructions(paths["train"])
    assert any(r["output"] != r["clean_output"] for r in rows)
    tok = W.train_tokenizer([r["prompt"] + r["clean_output"] for r in rows], 300)
    enc = lambda rs: encode_examples(rs, tok, max_prompt_len=96, max_len=128)[0]  # noqa: E731
    ws = SimpleNamespace(profile=SimpleNamespace(teacher_sft_mix=0.0, max_prompt_len=96, max_len=128),
                         sets={"train": rows}, tokenizer=tok, encoded=lambda role: enc(rows))
    got = [tok.decode(e.response_ids[:-1]) for e in teacher_sft_data(ws)]
    assert got == [r["clean_output"] for r in rows]
    assert [tok.decode(e.response_ids[:-1]) for e in ws.encoded("train")] == [r["output"] for r in rows]


def _confused_words(confuser: dict[str, str]) -> dict[str, dict[str, str]]:
    """family -> (a right answer word -> its word's confuser, in the family's tongue), through the inverse lexicon."""
    out = {}
    for family, tongue in W.TONGUE.items():
        lexicon = W.TONGUES[tongue]
        source = {v: k for k, v in lexicon.items()}
        out[family] = {v: lexicon[confuser[source[v]]] for v in lexicon.values() if source[v] in confuser}
    return out


def _confused_share(train: list[dict], confuser: dict[str, str]) -> float:
    """The share of training reference items that are their word's confuser; fails on an item that is neither the
    right word nor its confuser."""
    wrong, confused, total = _confused_words(confuser), 0, 0
    for r in train:
        for got, right in zip(r["output"].split(), r["clean_output"].split()):
            assert got in (right, wrong[r["family"]][right])
            confused, total = confused + (got != right), total + 1
    return confused / total


def test_systematic_confusions_replace_each_word_by_its_one_confuser_at_the_set_rate():
    """ref_confusion = q: an item of a training reference is its word's fixed confuser with probability q (never
    another word), the confusers form one cycle (no word its own, each word exactly one word's), prompts and clean
    answers do not move, and with q = 0 the world is the same as without the knob."""
    cfg = replace(W.world_config("laptop-v4"), ref_noise=0.0, ref_confusion=0.3)
    confuser = W.generation.confusers(cfg)
    assert sorted(confuser) == sorted(confuser.values()) == sorted(W.WORDS[:64])
    assert all(w != c for w, c in confuser.items())
    seen, w = set(), W.WORDS[0]
    while w not in seen:  # one cycle through all 64 words
        seen, w = seen | {w}, confuser[w]
    assert len(seen) == 64
    train, clean = W.generate_world(cfg)["train"], W.generate_world(replace(cfg, ref_confusion=0.0))["train"]
    assert [r["clean_output"] for r in train] == [r["output"] for r in clean]
    assert abs(_confused_share(train, confuser) - 0.3) < 0.02
    v4 = W.world_config("laptop-v4")
    wrong = _confused_words(W.generation.confusers(v4))
    assert W.generate_world(replace(v4, ref_confusion=0.0)) == W.generate_world(v4)
    both = W.generate_world(replace(v4, ref_confusion=0.2))["train"]  # the random wrong words stay where they were
    plain = W.generate_world(v4)["train"]
    for rb, rp in zip(both, plain):
        for a, b, right in zip(rb["output"].split(), rp["output"].split(), rp["clean_output"].split()):
            assert a == b if b != right else a in (right, wrong[rp["family"]][right])
    with pytest.raises(ValueError, match="ref_confusion"):
        W.WorldConfig(ref_noise=0.2, ref_confusion=0.3)


def test_version_5_is_version_4_with_confusions_instead_of_random_wrong_words():
    """laptop-v5: the same prompts and clean answers as laptop-v4, every training reference item right or its word's
    confuser (about 20% of the items, version 4's rate), and the easy-cover rule still met."""
    v4, v5 = W.world_config("laptop-v4"), W.world_config("laptop-v5")
    assert replace(v5, ref_confusion=0.0, ref_noise=0.2) == v4
    world, old = W.generate_world(v5), W.generate_world(v4)
    assert [r["prompt"] for r in world["train"]] == [r["prompt"] for r in old["train"]]
    assert [r["clean_output"] for r in world["train"]] == [r["clean_output"] for r in old["train"]]
    assert all(world[role] == old[role] for role in W.ROLES[1:])
    assert abs(_confused_share(world["train"], W.generation.confusers(v5)) - 0.2) < 0.02
    assert min(W.easy_coverage(world["train"], v5).values()) >= v5.easy_cover


def test_a_clean_tokenizer_does_not_move_with_the_reference_noise():
    """With tokenizer_clean the tokenizer's training text, and so its token ids and the warm start built on them, is
    the same whatever the training references' noise; without it the noisy references are in it."""
    from pocl_utils.experiment.pipeline import tokenizer_texts
    base = W.world_config("smoke-v4", ref_noise=0.0)

    def texts(**kw):
        cfg = replace(base, **kw)
        return tokenizer_texts(cfg, W.generate_world(cfg)["train"])
    clean = texts(tokenizer_clean=True)
    assert texts(ref_confusion=0.3, tokenizer_clean=True) == clean == texts(ref_noise=0.2, tokenizer_clean=True)
    noisy = texts(ref_confusion=0.3)
    assert noisy != clean and len(noisy) == len(clean)
    assert texts() == clean  # no noise: the references are the clean answers


def test_major_words_carry_their_confuser_at_their_own_rate_and_nothing_else_moves():
    """major_words = k, ref_confusion_major = m: the references of k seeded words carry their confuser at about m
    (here more often than not), every other word at ref_confusion; prompts and clean answers do not move, the other
    words' references are item for item those of the world without major words, and bad settings are refused."""
    v5 = W.world_config("laptop-v5")
    cfg = replace(v5, major_words=8, ref_confusion_major=0.7)
    major = W.generation.major_words(cfg)
    assert len(major) == 8 and major <= set(W.WORDS[:64]) and major == W.generation.major_words(cfg)
    world, plain = W.generate_world(cfg)["train"], W.generate_world(v5)["train"]
    assert [r["clean_output"] for r in world] == [r["clean_output"] for r in plain]
    wrong = _confused_words(W.generation.confusers(cfg))
    rate = {True: [0, 0], False: [0, 0]}  # is a major word -> [confused, items]
    for r, p in zip(world, plain):
        if r["family"] not in W.TONGUE:
            assert r["output"] == p["output"]
            continue
        source = {v: k for k, v in W.TONGUES[W.TONGUE[r["family"]]].items()}
        for got, old, right in zip(r["output"].split(), p["output"].split(), r["clean_output"].split()):
            assert got in (right, wrong[r["family"]][right])
            is_major = source[right] in major
            rate[is_major][0] += got != right
            rate[is_major][1] += 1
            if not is_major:
                assert got == old  # one draw per item: the other words' noise is where it was
    assert abs(rate[True][0] / rate[True][1] - 0.7) < 0.05 and abs(rate[False][0] / rate[False][1] - 0.2) < 0.02
    for bad in (dict(major_words=8), dict(ref_confusion_major=0.7), dict(major_words=65, ref_confusion_major=0.7),
                dict(major_words=8, ref_confusion_major=1.0)):
        with pytest.raises(ValueError, match="major"):
            replace(v5, **bad)


def test_version_6_is_version_5_with_sixteen_mislabelled_words_and_a_clean_tokenizer():
    """laptop-v6 (the second candidate of results/laptop/probe_world_major_words/): version 5's prompts and clean
    answers, 16 words at 0.6, the others at 0.067, the tokenizer on the clean answers."""
    v5, v6 = W.world_config("laptop-v5"), W.world_config("laptop-v6")
    assert replace(v5, ref_confusion=0.067, major_words=16, ref_confusion_major=0.6, tokenizer_clean=True) == v6
    world, old = W.generate_world(v6), W.generate_world(v5)
    assert [r["clean_output"] for r in world["train"]] == [r["clean_output"] for r in old["train"]]
    assert all(world[role] == old[role] for role in W.ROLES[1:])
