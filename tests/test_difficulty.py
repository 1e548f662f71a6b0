"""Difficulty measurer (§3.1, Eq. 2): rank fusion by hand, orders, Ranking CSV, batched scoring == naive oracle."""
import csv
import importlib
import sys
import types

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM,
                          PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from pocl_utils.data import Encoded
from pocl_utils.modeling.generate import BACKENDS
from pocl_utils.difficulty import (Ranking, fuse_ranks, greedy_outputs_and_ce, greedy_outputs_and_ce_naive,
                                   order_from_scores, rank_order, response_ce, score_samples, score_samples_naive)

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
EOS = 0
VOCAB = 64


# ---------------------------------------------------------------------------------------------------------------
# fixtures: tiny random models, a word-level tokenizer, ROUGE-L
# ---------------------------------------------------------------------------------------------------------------

def eos_biased(model):
    """Random tiny models almost never pick EOS; doubling its output row makes some samples stop early, not all."""
    with torch.no_grad():
        model.get_output_embeddings().weight[EOS] *= 2.0
    return model.eval()


def tiny_gpt2():
    torch.manual_seed(0)
    return eos_biased(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=128,
                                                 bos_token_id=EOS, eos_token_id=EOS)))


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=EOS,
                      eos_token_id=EOS, pad_token_id=EOS)
    return eos_biased(LlamaForCausalLM(cfg))


def tiny_opt():
    """The paper's second student family (learned positions with an offset of 2); it stays off EOS even when biased."""
    torch.manual_seed(0)
    cfg = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=VOCAB,
                    max_position_embeddings=128, word_embed_proj_dim=32, bos_token_id=EOS, eos_token_id=EOS,
                    pad_token_id=EOS)
    return OPTForCausalLM(cfg).eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "opt": tiny_opt}


@pytest.fixture
def tokenizer():
    vocab = {"<eos>": EOS, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def _lcs_rouge_l(prediction: str, references: list[str]) -> float:
    """Stand-in for pocl_utils.evaluate.rouge_l (LCS F-measure x 100 on whitespace tokens), used only if absent."""
    def f1(pred, ref):
        table = np.zeros((len(pred) + 1, len(ref) + 1), dtype=int)
        for i, j in np.ndindex(len(pred), len(ref)):
            table[i + 1, j + 1] = table[i, j] + 1 if pred[i] == ref[j] else max(table[i, j + 1], table[i + 1, j])
        lcs = table[-1, -1]
        return 0.0 if lcs == 0 else 200.0 * lcs / (len(pred) + len(ref))
    return max(f1(prediction.split(), r.split()) for r in references)


@pytest.fixture(autouse=True)
def rouge_module(monkeypatch):
    try:
        importlib.import_module("pocl_utils.evaluate").rouge_l  # noqa: B018 - the real one when it exists
    except (ImportError, AttributeError):
        monkeypatch.setitem(sys.modules, "pocl_utils.evaluate", types.SimpleNamespace(rouge_l=_lcs_rouge_l))


def random_encoded(n: int, seed: int = 0) -> list[Encoded]:
    """Prompts of 1..14 tokens, responses of 1..9 tokens ending in EOS; ids shuffled to test id bookkeeping."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        n_prompt, n_resp = torch.randint(1, 15, (), generator=g).item(), torch.randint(0, 9, (), generator=g).item()
        prompt = torch.randint(1, VOCAB, (n_prompt,), generator=g).tolist()
        response = torch.randint(1, VOCAB, (n_resp,), generator=g).tolist() + [EOS]
        out.append(Encoded(prompt, response, index=100 + 7 * i))
    out[0] = Encoded([4, EOS, 9], [EOS], index=out[0].index)  # EOS inside a prompt; EOS-only response
    return out


# ---------------------------------------------------------------------------------------------------------------
# Eq. 2 and the orders
# ---------------------------------------------------------------------------------------------------------------

def test_fuse_ranks_hand_worked():
    # ROUGE-L ranks (high first): [1, 3, 2]; CE ranks (low first): [2, 3, 1]
    fused = fuse_ranks([50, 10, 30], [1.0, 2.0, 0.5])
    np.testing.assert_allclose(fused, [1 / 61 + 1 / 62, 1 / 63 + 1 / 63, 1 / 62 + 1 / 61], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fuse_ranks([50, 10, 30], [1.0, 2.0, 0.5], k=0), [1 + 1 / 2, 2 / 3, 1 / 2 + 1])


def test_fuse_ranks_ties_share_mean_rank():
    # ROUGE-L [10, 10, 5] -> ranks [1.5, 1.5, 3]; CE [3, 1, 2] -> ranks [3, 1, 2]
    fused = fuse_ranks([10, 10, 5], [3.0, 1.0, 2.0], k=10)
    np.testing.assert_allclose(fused, [1 / 11.5 + 1 / 13, 1 / 11.5 + 1 / 11, 1 / 13 + 1 / 12], atol=1e-15)
    # all tied: every sample gets the same score
    assert np.ptp(fuse_ranks([1, 1, 1, 1], [2, 2, 2, 2])) == 0


def test_fuse_ranks_rejects_bad_input():
    with pytest.raises(ValueError, match="rouge_l has 2 values but ce has 3"):
        fuse_ranks([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match=r"ce\[1\] = nan"):
        fuse_ranks([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match=r"rouge_l\[0\] = inf"):
        fuse_ranks([float("inf"), 2], [1, 2])


def test_rank_order_each_method():
    rouge, ce = [50, 10, 30, 30], [1.0, 2.0, 0.5, 0.7]
    assert rank_order(rouge, ce, "rouge_l").tolist() == [0, 2, 3, 1]  # tie 2/3 broken by index
    assert rank_order(rouge, ce, "ce").tolist() == [2, 3, 0, 1]
    # ROUGE ranks [1, 4, 2.5, 2.5], CE ranks [3, 4, 1, 2]:
    # FR = [1/61+1/63, 2/64, 1/62.5+1/61, 1/62.5+1/62] = [.032266, .03125, .032393, .032129]
    assert rank_order(rouge, ce, "fusion").tolist() == [2, 0, 3, 1]
    assert rank_order([1, 1, 1], [2, 2, 2], "fusion").tolist() == [0, 1, 2]
    assert order_from_scores([3.0, 1.0, 3.0], higher_is_easier=False).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="unknown ranking method 'bleu'"):
        rank_order(rouge, ce, "bleu")


# ---------------------------------------------------------------------------------------------------------------
# Ranking table
# ---------------------------------------------------------------------------------------------------------------

def test_ranking_order_returns_ids():
    ranking = Ranking.build([10, 11, 12, 13], [50, 10, 30, 30], [1.0, 2.0, 0.5, 0.7])
    assert ranking.order("fusion").tolist() == [12, 10, 13, 11]
    assert ranking.order("rouge_l").tolist() == [10, 12, 13, 11]
    assert ranking.order("ce").tolist() == [12, 13, 10, 11]


@pytest.mark.parametrize("texts", [None, ["a, b", 'quote " here', "line\nbreak", "ünï ✓"]])
def test_ranking_csv_round_trip(tmp_path, texts):
    rng = np.random.default_rng(0)
    ranking = Ranking.build([3, 1, 2, 0], rng.random(4) * 100, rng.random(4) * 5, texts)
    path = tmp_path / "sub" / "ranking.csv"
    ranking.to_csv(path)
    back = Ranking.from_csv(path)
    for name in ("ids", "rouge_l", "ce", "fused"):
        assert np.array_equal(getattr(back, name), getattr(ranking, name)), name  # bit-exact floats
    assert back.texts == texts
    assert [p.name for p in path.parent.iterdir()] == ["ranking.csv"]  # no temp file left behind


def test_ranking_csv_errors(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("id,rouge,ce,fused\n")
    with pytest.raises(ValueError, match="r.csv:1: header"):
        Ranking.from_csv(path)
    path.write_text("id,rouge_l,ce,fused\n0,1.0,2.0,0.03\n1,x,2.0,0.03\n")
    with pytest.raises(ValueError, match="r.csv:3"):
        Ranking.from_csv(path)
    with pytest.raises(ValueError, match="different lengths"):
        Ranking([0, 1], [1.0], [1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="unique"):
        Ranking.build([0, 0], [1.0, 2.0], [1.0, 2.0])


# ---------------------------------------------------------------------------------------------------------------
# scoring with the student
# ---------------------------------------------------------------------------------------------------------------

def test_response_ce_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    response = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = []
    for b in range(3):
        n = int(mask[b].sum())
        logp = logits[b, :n].double().log_softmax(-1)
        expected.append(-logp[torch.arange(n), response[b, :n]].mean().item())
    np.testing.assert_allclose(response_ce(logits, response, mask).double().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_batched_matches_naive(name, device):
    model = MODELS[name]().to(device)
    encoded = random_encoded(11)
    kw = dict(eos_id=EOS, pad_id=EOS, max_new_tokens=10)
    naive_out, naive_ce = greedy_outputs_and_ce_naive(model, encoded, **kw)
    for batch_size in (4, 32):
        ce_of = {}
        for backend in BACKENDS:  # the decode after the shared forward: our loop or transformers' generate
            out, ce_of[backend] = greedy_outputs_and_ce(model, encoded, batch_size=batch_size, backend=backend, **kw)
            assert out == naive_out, backend
            np.testing.assert_allclose(ce_of[backend], naive_ce, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(ce_of["pocl"], ce_of["transformers"])  # the same forward gives the CE
    lengths = {len(o) for o in naive_out}
    if name != "opt":
        assert 10 in lengths and min(lengths) < 10  # both EOS-stopped and max-length outputs are covered
    assert np.ptp(naive_ce) > 0.1  # CE values differ across samples, so a mix-up would show


def test_score_samples_matches_naive_and_restores_mode(tokenizer):
    model = tiny_gpt2().train()
    encoded = random_encoded(9, seed=1)
    references = [[tokenizer.decode(e.response_ids, skip_special_tokens=True), "w1 w2 w3"] for e in encoded]
    fast = score_samples(model, tokenizer, encoded, max_new_tokens=8, batch_size=4, references=references)
    slow = score_samples_naive(model, tokenizer, encoded, max_new_tokens=8, references=references)
    assert model.training
    assert fast.ids.tolist() == [e.index for e in encoded]
    assert fast.texts == slow.texts
    np.testing.assert_array_equal(fast.rouge_l, slow.rouge_l)
    np.testing.assert_allclose(fast.ce, slow.ce, atol=1e-5)
    np.testing.assert_allclose(fast.fused, fuse_ranks(fast.rouge_l, fast.ce), atol=0)
    # default references: the decoded response
    default = score_samples(model, tokenizer, encoded, max_new_tokens=8, batch_size=4)
    from pocl_utils.evaluate import rouge_l
    expected = [rouge_l(t, [tokenizer.decode(e.response_ids, skip_special_tokens=True)])
                for t, e in zip(default.texts, encoded)]
    np.testing.assert_allclose(default.rouge_l, expected)


def test_scoring_rejects_bad_samples():
    model = tiny_gpt2()
    kw = dict(eos_id=EOS, pad_id=EOS, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"encoded\[1\] \(index 5\) has an empty prompt"):
        greedy_outputs_and_ce(model, [Encoded([1], [EOS]), Encoded([], [EOS], index=5)], **kw)
    with pytest.raises(ValueError, match=r"encoded\[0\] \(index 0\) needs 130 positions"):
        greedy_outputs_and_ce(model, [Encoded([1] * 100, [2] * 29 + [EOS])], **kw)
    with pytest.raises(ValueError, match="backend must be one of"):
        greedy_outputs_and_ce(model, [Encoded([1], [EOS])], backend="hf", **kw)


def test_score_samples_needs_unique_indices(tokenizer):
    with pytest.raises(ValueError, match=r"encoded\[1\] and encoded\[0\] share index 0"):
        score_samples(tiny_gpt2(), tokenizer, [Encoded([1], [EOS]), Encoded([2], [EOS])], max_new_tokens=2)
    empty = score_samples(tiny_gpt2(), tokenizer, [], max_new_tokens=2)
    assert len(empty.ids) == 0 and empty.order().size == 0


def test_csv_written_by_score_samples_is_readable(tmp_path, tokenizer):
    ranking = score_samples(tiny_llama(), tokenizer, random_encoded(5), max_new_tokens=4)
    ranking.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        assert next(csv.reader(f)) == ["id", "rouge_l", "ce", "fused", "text"]
    assert Ranking.from_csv(tmp_path / "r.csv").texts == ranking.texts


def test_order_by_truth_hand_worked():
    from pocl_utils.difficulty import order_by_truth
    # ids 10..14 with difficulties 3, 1, 2, 1, 3: easiest first, ties in id order
    assert order_by_truth([10, 11, 12, 13, 14], [3, 1, 2, 1, 3]).tolist() == [11, 13, 12, 10, 14]
    with pytest.raises(ValueError, match="2 ids but 3"):
        order_by_truth([1, 2], [1, 2, 3])
