"""Profiles resolve strictly; run specs validate their fields; hashes are stable."""
import pytest

from pocl_utils.config import (PROFILES, ConfigError, RunSpec, baseline, config_hash, get_profile, pocl)


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


def test_paper_profile_values():
    p = get_profile("paper")
    assert (p.teacher.name_or_path, p.student.name_or_path) == ("gpt2-xl", "gpt2")
    assert p.lr_grid == (5e-4, 1e-4, 5e-5) and p.batch_grid == (8, 16)
    assert p.kd.epochs == 20 and p.n_subsets == 4 and p.max_len == 512 and p.eval_seeds == (10, 20, 30, 40, 50)
    assert get_profile("paper-opt").teacher.name_or_path == "facebook/opt-2.7b"
    # the teacher is fine-tuned on Dolly while preparing (§4.1), and runs live (exact logits at V = 50k do not fit)
    assert p.sft_teacher and p.teacher_cache == "live" and get_profile("paper-opt").teacher_cache == "live"
    assert get_profile("laptop").teacher_cache == "exact" and not get_profile("laptop").sft_teacher


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
