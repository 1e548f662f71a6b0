"""Profiles resolve strictly; run specs validate their fields; hashes are stable."""
import pytest

from pocl_utils.experiment.config import (PROFILES, ConfigError, RunSpec, baseline, cache_top_k, config_hash,
                                          get_profile, pocl)
from pocl_utils.experiment.workspace import prep_keys, trained_together


def test_every_profile_resolves():
    for name in PROFILES:
        assert get_profile(name).name == name


def test_unknown_profile_lists_valid():
    with pytest.raises(ConfigError, match="valid profiles: .*laptop"):
        get_profile("laptopp")


def test_override_dotted_and_types():
    p = get_profile("smoke", {"kd.lr": 1e-2, "n_seeds": 2, "eval_seeds": [1, 2]})
    assert p.kd.lr == 1e-2 and p.n_seeds == 2 and p.eval_seeds == (1, 2)
    with pytest.raises(ConfigError, match="unknown key 'kd.lrr'"):
        get_profile("smoke", {"kd.lrr": 1.0})
    with pytest.raises(ConfigError, match="n_seeds: expected int"):
        get_profile("smoke", {"n_seeds": "3"})
    with pytest.raises(ConfigError, match="n_subsets"):
        get_profile("smoke", {"n_subsets": 0})


# profile field -> the prepared steps whose cache key must change with it (the steps that read it, and every step
# built from those); a key that misses a field would hand back a stale artefact after the field changed
STEP_READS = {
    "seed": {"data", "tokenizer", "teacher", "student_init", "ranking", "teacher_cache", "seqkd"},
    "vocab_size": {"tokenizer", "teacher", "student_init", "ranking", "teacher_cache", "seqkd"},
    "teacher_sft.lr": {"teacher", "teacher_cache", "seqkd"},
    "student_pretrain_steps": {"student_init", "ranking"},
    "max_new_tokens": {"ranking", "seqkd"},
    "rank_max_examples": {"ranking"},
    "teacher_cache": {"teacher_cache"},
    "max_len": {"teacher", "student_init", "ranking", "teacher_cache", "seqkd"},
}


@pytest.mark.parametrize("field", list(STEP_READS))
def test_a_profile_field_changes_the_keys_of_the_steps_that_read_it(field):
    base = get_profile("smoke")
    value = {"teacher_cache": "top-64", "seed": base.seed + 1, "rank_max_examples": 5}.get(field)
    if value is None:
        current = base.teacher_sft.lr if field == "teacher_sft.lr" else getattr(base, field)
        value = current * 2
    changed = prep_keys(get_profile("smoke", {field: value}))
    before = prep_keys(base)
    assert {step for step in before if before[step] != changed[step]} == STEP_READS[field]


def test_paper_profiles_run_the_teacher_live_and_train_it_on_every_process():
    for name in ("paper", "paper-opt"):
        p = get_profile(name)
        assert cache_top_k(p) is None and trained_together(p, "teacher")
    lite = get_profile("real-lite")  # its teacher is used as it comes: nothing to train
    assert cache_top_k(lite) == 0 and not trained_together(lite, "teacher")  # 0 = exact logits


@pytest.mark.parametrize("bad", [dict(n_subsets=0), dict(tau=(0.0, 2.0)), dict(alpha=(0.3, 1.5)),
                                 dict(alpha=(-0.1, 0.0)), dict(method="KLDD"), dict(order="up"), dict(ranking="bleu")])
def test_runspec_rejects(bad):
    with pytest.raises(ConfigError):
        RunSpec(**{"method": "KLD", **bad})


def test_defaults_match_paper():
    p = pocl("KLD")
    assert p.tau == (1.0, 2.0) and p.alpha == (0.3, 0.0) and p.n_subsets == 4 and p.ranking == "fusion"
    assert pocl("GKD").alpha == (0.0, 0.0)
    b = baseline("KLD")
    assert not b.pocl and b.tau == (1.0, 1.0) and b.alpha == (0.3, 0.3)
    assert baseline("SFT").alpha == (1.0, 1.0)
    with pytest.raises(ConfigError):
        pocl("SFT")


def test_hash_ignores_label_but_not_settings():
    a = pocl("KLD", variant="+POCL (Fusion)")
    assert config_hash(a.key()) == config_hash(pocl("KLD").key())
    assert config_hash(a.key()) != config_hash(pocl("KLD", seed=1).key())
