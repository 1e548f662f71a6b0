"""Batched KV-cache decoding: greedy == HF generate per sample, n-gram ban, seeded sampling, filters, and the
transformers backend (generate + our LogitsProcessors) == our loop token for token."""
import itertools

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from pocl_utils.modeling.generate import (BACKENDS, NgramBan, Sampling, ban_repeated_ngrams, counter_uniform,
                                          cut_at_eos, decode, filter_top_k_top_p, generate, pick_next_token)

hf_logging.set_verbosity_error()
torch.set_num_threads(1)
EOS = 0
VOCAB = 64


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=128, bos_token_id=EOS,
                     eos_token_id=EOS)
    return eos_biased(GPT2LMHeadModel(cfg))


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=EOS,
                      eos_token_id=EOS, pad_token_id=EOS)
    return eos_biased(LlamaForCausalLM(cfg))


def eos_biased(model):
    """Random tiny models almost never pick EOS; doubling its output row makes some prompts stop early, not all."""
    with torch.no_grad():
        model.get_output_embeddings().weight[EOS] *= 2.0
    return model.eval()


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def random_prompts(n: int, seed: int = 1, max_len: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len, (n,), generator=g).tolist()
    prompts = [torch.randint(1, VOCAB, (k,), generator=g).tolist() for k in lengths]
    prompts[0] = [5, EOS, 7]  # a real EOS/pad id inside a prompt must not be treated as padding
    return prompts


def hf_generate(model, prompt: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=EOS, pad_token_id=EOS, **kwargs)
    return cut_at_eos([out[0, len(prompt):].tolist()], EOS)[0]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("device", DEVICES)
def test_greedy_matches_hf_generate_per_sample(name, device):
    model = MODELS[name]().to(device)
    prompts = random_prompts(10)
    ours = generate(model, prompts, eos_id=EOS, pad_id=EOS, max_new_tokens=12, batch_size=4)
    assert ours == [hf_generate(model, p, 12) for p in prompts]
    lengths = {len(o) for o in ours}
    assert 12 in lengths and min(lengths) < 12  # both max-length and EOS-stopped rows are covered


@pytest.mark.parametrize("name", MODELS)
def test_no_repeat_ngram_matches_hf(name):
    model = MODELS[name]()
    prompts = random_prompts(6, seed=2)
    plain = generate(model, prompts, eos_id=EOS, pad_id=EOS, max_new_tokens=20, batch_size=3)
    for n in (2, 3):
        ours = generate(model, prompts, eos_id=EOS, pad_id=EOS, max_new_tokens=20, no_repeat_ngram_size=n,
                        batch_size=3)
        assert ours != plain  # the ban changes something, so the comparison below is not vacuous
        assert ours == [hf_generate(model, p, 20, no_repeat_ngram_size=n) for p in prompts]
        for prompt, new in zip(prompts, ours):
            seq = prompt + new
            grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
            new_grams = grams[max(0, len(prompt) - n + 1):]  # the ones a generated token completed
            assert all(grams.count(g) == 1 for g in new_grams)


def test_ban_repeated_ngrams_hand_example():
    history = torch.tensor([[5, 1, 2, 3, 1, 2],  # tail (1, 2) seen before followed by 3 -> ban 3
                            [-1, -1, -1, 1, 2, 4],  # left pads never match; tail (2, 4) unseen -> nothing
                            [2, 2, 2, 2, 2, 2]])  # (2, 2) always followed by 2 -> ban 2
    banned = ban_repeated_ngrams(torch.zeros(3, 8), history, 3).isinf()
    assert banned[0].nonzero().flatten().tolist() == [3]
    assert not banned[1].any()
    assert banned[2].nonzero().flatten().tolist() == [2]
    # pads must not create matches: tail (-1, 7) could equal a padded window only if pads were counted
    padded = torch.tensor([[-1, -1, -1, 7, 9]])
    assert not ban_repeated_ngrams(torch.zeros(1, 10), padded, 3).isinf().any()


def test_ngram_ban_processor_ignores_prompt_pads():
    # row 0: pad 7, then prompt 5 7, then generated 7; tail (7,) was followed by 7 (real) and, on the pad, by 5
    # row 1: no pads, same tokens after the first, so (7, 5) is real there and 5 is banned too
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    input_ids = torch.tensor([[7, 5, 7, 7], [7, 5, 7, 7]])
    banned = NgramBan(2, mask)(input_ids, torch.zeros(2, 8)).isinf()
    assert banned[0].nonzero().flatten().tolist() == [7]
    assert banned[1].nonzero().flatten().tolist() == [5, 7]


def test_top_k_top_p_hand_example():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda s: (~s.isinf()).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(filter_top_k_top_p(logits, 2, 1.0)) == [0, 1]
    assert kept(filter_top_k_top_p(logits, 0, 0.75)) == [0, 1]  # 0.5 < 0.75, then 0.8 reached
    assert kept(filter_top_k_top_p(logits, 0, 0.85)) == [0, 1, 2]
    assert kept(filter_top_k_top_p(logits, 0, 0.01)) == [0]  # the best token always stays
    assert kept(filter_top_k_top_p(logits, 0, 1.0)) == [0, 1, 2, 3]


def test_counter_uniform_is_a_function_of_its_counters():
    keys = torch.arange(50)
    u = counter_uniform(7, keys, 3, 1000)
    assert u.shape == (50, 1000) and u.min() > 0 and u.max() < 1
    assert torch.equal(u, counter_uniform(7, keys, 3, 1000))
    assert torch.equal(u[10:20], counter_uniform(7, keys[10:20], 3, 1000))  # independent of batch neighbours
    assert not torch.equal(u, counter_uniform(8, keys, 3, 1000))
    assert not torch.equal(u, counter_uniform(7, keys, 4, 1000))
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert abs(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1].item()) < 0.1


def test_gumbel_sampling_follows_softmax_after_filters():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 20000
    keys = torch.arange(n)

    def freqs(**kw):
        tokens = pick_next_token(logits.expand(n, -1), torch.zeros(n, 0, dtype=torch.long), keys, 0,
                                 Sampling(do_sample=True, seed=3, **kw))
        return torch.bincount(tokens, minlength=5).double() / n

    def check(observed, target):
        sigma = (target * (1 - target) / n).sqrt()
        assert ((observed - target).abs() <= 4 * sigma + 1e-12).all(), (observed, target)

    check(freqs(), logits.double().softmax(-1))
    check(freqs(temperature=2.0), (logits.double() / 2).softmax(-1))
    top2 = torch.tensor([1.0, 1.0, 0, 0, 0]) * logits.double().exp()
    check(freqs(top_k=2), top2 / top2.sum())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_reproducible_and_batch_independent(name, device, backend):
    model = MODELS[name]().to(device)
    prompts = random_prompts(8, seed=3)
    kw = dict(eos_id=EOS, pad_id=EOS, max_new_tokens=10, do_sample=True, top_k=0, top_p=1.0, backend=backend)
    a = generate(model, prompts, seed=11, batch_size=3, **kw)
    assert a == generate(model, prompts, seed=11, batch_size=3, **kw)
    assert a == generate(model, prompts, seed=11, batch_size=8, **kw)  # other batch composition, same draws
    sub = [5, 1, 6]
    assert generate(model, [prompts[i] for i in sub], seed=11, keys=sub, **kw) == [a[i] for i in sub]
    assert a != generate(model, prompts, seed=12, batch_size=3, **kw)
    greedy = generate(model, prompts, eos_id=EOS, pad_id=EOS, max_new_tokens=10, backend=backend)
    assert a != greedy
    # temperature -> 0 turns sampling into argmax
    cold = generate(model, prompts, seed=11, **{**kw, "temperature": 1e-4})
    assert cold == greedy


SETTINGS = {  # evaluation's (MiniLLM's test-time settings) and a filtered, tempered one; greedy with the same ban
    "greedy": dict(do_sample=False),
    "eval": dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0),
    "filtered": dict(do_sample=True, temperature=0.7, top_k=10, top_p=0.9),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_transformers_backend_equals_ours_token_for_token(name, setting):
    model = MODELS[name]()
    prompts = random_prompts(10, seed=4)
    kw = dict(eos_id=EOS, pad_id=EOS, max_new_tokens=24, batch_size=4, seed=5, **SETTINGS[setting])
    for n in (0, 6):
        ours = generate(model, prompts, no_repeat_ngram_size=n, **kw)
        assert ours == generate(model, prompts, no_repeat_ngram_size=n, backend="transformers", **kw), n
        lengths = {len(o) for o in ours}
        assert 24 in lengths and min(lengths) < 24  # rows cut by max_new_tokens and rows stopped by EOS
    if setting == "greedy":  # greedy tiny models loop, so the 6-gram ban changes their outputs: not vacuous
        assert generate(model, prompts, no_repeat_ngram_size=6, **kw) != generate(model, prompts, **kw)


def test_model_mode_and_edge_cases():
    model = tiny_gpt2().train()
    out = generate(model, [[1, 2, 3]], eos_id=EOS, pad_id=EOS, max_new_tokens=0)
    assert out == [[]] and model.training  # training flag restored
    assert generate(model, [], eos_id=EOS, pad_id=EOS, max_new_tokens=4) == []
    with pytest.raises(ValueError, match=r"prompt_ids\[1\] is empty"):
        generate(model, [[1], []], eos_id=EOS, pad_id=EOS, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt_ids\[0\] has 120 tokens"):
        generate(model, [[1] * 120], eos_id=EOS, pad_id=EOS, max_new_tokens=10)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], eos_id=EOS, pad_id=EOS, max_new_tokens=4, do_sample=True, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], eos_id=EOS, pad_id=EOS, max_new_tokens=4, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        generate(model, [[1]], eos_id=EOS, pad_id=EOS, max_new_tokens=4, backend="hf")
    assert generate(model, [[1, 2, 3]], eos_id=EOS, pad_id=EOS, max_new_tokens=0, backend="transformers") == [[]]


def test_decode_drops_special_tokens():
    vocab = {"<eos>": EOS, **{f"w{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    assert decode(tokenizer, [[3, 4, EOS], []]) == ["w3 w4", ""]
    assert decode(tokenizer, []) == []


def test_cut_at_eos():
    assert cut_at_eos([[1, 2, EOS, 3], [4, 5], [EOS]], EOS) == [[1, 2], [4, 5], []]
    assert list(itertools.chain.from_iterable(cut_at_eos([[EOS, EOS]], EOS))) == []


def test_hidden_at_positions_is_the_default_forward_on_right_padded_rows_and_unpadded_on_left_padded_ones():
    """Right padding (our training batches) on the CPU: forward and every gradient bitwise those of the model's own
    default positions (given as [B, L], the position embedding's gradient would accumulate in another order: the
    pinned `laptop` results would change). Left padding (TRL's collators, prompts): each row equals its unpadded run."""
    from pocl_utils.modeling.heads import hidden_at_positions
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=48, n_layer=2, n_head=2, n_positions=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 300, (32, 60), generator=g)
    lengths = torch.randint(10, 61, (32,), generator=g)
    right = (torch.arange(60)[None] < lengths[:, None]).long()  # [B, L] real tokens first

    def grads(fn):
        model.zero_grad()
        h = fn()
        (h ** 2).sum().backward()
        return h.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    keep = right.bool()
    ours = grads(lambda: hidden_at_positions(model, ids, right, keep))
    default = grads(lambda: model.base_model(input_ids=ids, attention_mask=right).last_hidden_state[keep])
    assert torch.equal(ours[0], default[0])
    assert all(torch.equal(ours[1][k], default[1][k]) for k in ours[1])
    left = right.flip(-1)  # the same rows padded on the left
    left_ids = torch.stack([torch.roll(r, 60 - n) for r, n in zip(ids, lengths.tolist())])
    with torch.no_grad():
        got = hidden_at_positions(model, left_ids, left, left.bool())
        want = model.base_model(input_ids=ids, attention_mask=right).last_hidden_state[keep]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
