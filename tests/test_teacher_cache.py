"""The teacher cache: exact mode reproduces the live teacher; top-k mode rebuilds a distribution whose error shrinks with
k and vanishes at k = V, and whose tempered top k and tail mass are exact at every KD temperature of the schedule;
batches are sized from a memory budget; files round-trip and bad files say what is wrong."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pocl_utils.experiment.config import ModelSpec
from pocl_utils.curriculum import linear_schedule
from pocl_utils.data import Encoded
from pocl_utils.losses import KINDS, divergence
from pocl_utils.modeling.models import CheckpointError, build_model
from pocl_utils.training.batches import make_batch
from pocl_utils.training.kd import KDContext, kd_loss_fn
from pocl_utils.training.step import step_loss, teacher_logits
from pocl_utils.training.teacher_cache import (MAX_CACHE_BATCH, TAIL_TAUS, TeacherCache, build_teacher_cache,
                                               cache_batches, compress_top_k, expand_top_k, tempered_log_tail)

V = 40
PAD = 0


@pytest.fixture(scope="module")
def teacher():
    torch.set_num_threads(1)
    return build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), V, 32, seed=3).eval()


@pytest.fixture(scope="module")
def encoded():
    rng = np.random.default_rng(0)
    return [Encoded(rng.integers(1, V, rng.integers(1, 8)).tolist(), rng.integers(1, V, rng.integers(1, 9)).tolist(), i)
            for i in range(13)]


def top_k_cache(logits: torch.Tensor, offsets, k: int, tail_taus=TAIL_TAUS) -> TeacherCache:
    top, ids, rest, mass, slope = compress_top_k(logits, k, tail_taus)
    return TeacherCache(None, np.asarray(offsets), top, ids, rest, logits.shape[1], tail_taus, mass, slope)


def naive_log_tail(logits: torch.Tensor, token_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """fp64 log sum over the non-kept tokens of p_v^(1/tau), p = softmax(logits), the slow obvious way, [n]."""
    p = torch.softmax(logits.double(), -1)  # [n, V]
    tail = torch.ones_like(p, dtype=torch.bool).scatter_(1, token_ids.long(), False)  # [n, V]
    return torch.log((p ** (1 / tau) * tail).sum(-1))


def peaked_logits(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Teacher-like rows: a few likely tokens and a long tail (Zipf-shaped scores plus noise), [n, vocab]."""
    gen = torch.Generator().manual_seed(seed)
    zipf = -1.5 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))  # [V]
    return torch.stack([zipf[torch.randperm(vocab, generator=gen)] for _ in range(n)]) + 0.5 * torch.randn(
        n, vocab, generator=gen)


# ---- exact mode ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_exact_rows_equal_the_live_teacher_run_one_example_at_a_time(teacher, encoded):
    cache = build_teacher_cache(teacher, encoded, PAD)
    assert cache.top_k == 0 and cache.vocab_size == V and cache.bytes_per_token() == 4 * V
    for i, e in enumerate(encoded):  # unpadded, alone: what the teacher says about this example, no batching at all
        ids = torch.tensor([e.prompt_ids + e.response_ids])
        live = teacher(input_ids=ids).logits[0, len(e.prompt_ids) - 1:e.length - 1]  # [R, V]
        torch.testing.assert_close(cache.rows([i]), live, atol=1e-5, rtol=1e-5)
    pick = [5, 0, 12, 3]
    batch_rows = teacher_logits(teacher, make_batch([encoded[i] for i in pick], PAD))  # the training batch's order
    torch.testing.assert_close(cache.rows(pick), batch_rows, atol=1e-5, rtol=1e-5)


def test_budget_sized_batches_give_the_same_cache_as_fixed_ones(teacher, encoded):
    auto = build_teacher_cache(teacher, encoded, PAD)
    tiny = build_teacher_cache(teacher, encoded, PAD, budget_bytes=3 * 16 * V * 4)  # ~3 short examples per batch
    ones = build_teacher_cache(teacher, encoded, PAD, batch_size=1)
    np.testing.assert_array_equal(auto.offsets, ones.offsets)
    torch.testing.assert_close(auto.logits, ones.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny.logits, ones.logits, atol=1e-5, rtol=1e-5)


def test_cache_batches_respect_the_budget_and_cover_every_example_once():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 400, 300).tolist()
    vocab, budget = 49152, 256 * 2**20
    batches = cache_batches(lengths, vocab, budget_bytes=budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(300))
    assert [lengths[i] for i in flat] == sorted(lengths)  # length-sorted, as the teacher pass always was
    for b in batches:
        assert len(b) <= MAX_CACHE_BATCH
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) * vocab * 4 <= budget
    assert len(batches[0]) > len(batches[-1])  # short examples share bigger batches
    # a small vocabulary keeps the old fixed batches of 64 (so existing caches are rebuilt bitwise the same)
    small = cache_batches([64] * 200, 512)
    assert [len(b) for b in small] == [64, 64, 64, 8]
    assert cache_batches(lengths, vocab, batch_size=7) == [flat[s:s + 7] for s in range(0, 300, 7)]
    assert cache_batches([], vocab) == []


# ---- top-k mode ----------------------------------------------------------------------------------------------------


def test_expand_top_k_by_hand():
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    top, ids, rest, _, _ = compress_top_k(p.log(), 2)
    assert ids.tolist() == [[1, 3]] and ids.dtype == torch.int32
    torch.testing.assert_close(top.exp(), torch.tensor([[0.5, 0.3]]))
    torch.testing.assert_close(rest.exp(), torch.tensor([0.2]))
    rebuilt = expand_top_k(top, ids, rest, 4).exp()  # the other two tokens share the remaining 0.2
    torch.testing.assert_close(rebuilt, torch.tensor([[0.1, 0.5, 0.1, 0.3]]))
    kl = 0.15 * math.log(0.15 / 0.1) + 0.05 * math.log(0.05 / 0.1)  # KL(p || p_hat): only the tail contributes
    got = (p * (p.log() - rebuilt.log())).sum()
    assert got.item() == pytest.approx(kl, rel=1e-5)


def test_remainder_mass_does_not_underflow_when_the_top_k_hold_almost_everything():
    logits = torch.tensor([[0.0, -40.0, -40.0, -41.0]])  # tail mass ~ 1e-17: 1 - sum(top) would be 0 in fp32
    _, _, rest, mass, _ = compress_top_k(logits, 1, (1.0, 2.0))
    expected = math.log(2 * math.exp(-40.0) + math.exp(-41.0))  # log-softmax shift is ~1e-17, invisible here
    assert rest.item() == pytest.approx(expected, rel=1e-6)
    assert mass[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert mass[0, 1].item() == pytest.approx(math.log(2 * math.exp(-20.0) + math.exp(-20.5)), rel=1e-6)  # sqrt(p)


def test_tempered_rows_by_hand():
    """p = (0.15, 0.5, 0.05, 0.3), k = 2 keeps 0.5 and 0.3; at tau = 2 the tempered teacher is sqrt(p) / Z, so the
    rebuilt one must be (S/2, sqrt 0.5, S/2, sqrt 0.3) / Z with S = sqrt 0.15 + sqrt 0.05, Z = sqrt 0.5 + sqrt 0.3 + S."""
    p = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    cache = top_k_cache(p.log(), [0, 1], 2, (1.0, 2.0))
    S = math.sqrt(0.15) + math.sqrt(0.05)
    assert cache.log_tail_mass[0].tolist() == pytest.approx([math.log(0.2), math.log(S)], rel=1e-6)
    slopes = [(0.15 * math.log(0.15) + 0.05 * math.log(0.05)) / 0.2,  # d/ds log sum p^s = the p^s-weighted mean log p
              (math.sqrt(0.15) * math.log(0.15) + math.sqrt(0.05) * math.log(0.05)) / S]
    assert cache.tail_mean_logp[0].tolist() == pytest.approx(slopes, rel=1e-6)
    Z = math.sqrt(0.5) + math.sqrt(0.3) + S
    tempered = torch.softmax(cache.rows([0], tau=2.0) / 2.0, -1)  # what `divergence` does with the rows
    torch.testing.assert_close(tempered, torch.tensor([[S / 2, math.sqrt(0.5), S / 2, math.sqrt(0.3)]]) / Z)
    # without the tail statistics (the tau = 1 rows re-tempered) the tail would get 2 sqrt(0.1) > S: too much mass
    old = torch.softmax(cache.rows([0]) / 2.0, -1)
    assert old[0, 0].item() == pytest.approx(math.sqrt(0.1) / (math.sqrt(0.5) + math.sqrt(0.3) + 2 * math.sqrt(0.1)))


def test_top_k_with_k_equal_to_vocab_gives_the_exact_losses_and_gradients(teacher, encoded):
    exact = build_teacher_cache(teacher, encoded, PAD)
    full = build_teacher_cache(teacher, encoded, PAD, top_k=V)
    assert full.top_k == V and torch.isinf(full.log_rest).all() and torch.isinf(full.log_tail_mass).all()
    assert (full.tail_mean_logp == 0).all()  # an empty tail: no NaN from 0 * (-inf) or 0 / 0
    pick = [2, 7, 11]
    n = int(exact.offsets[3] - exact.offsets[2] + exact.offsets[8] - exact.offsets[7] + exact.offsets[12] - exact.offsets[11])
    student = torch.randn(n, V, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 2
    for kind in KINDS:
        for tau in (1.0, 1.25, 2.0):  # 1.25: between grid points, interpolated
            losses, grads = [], []
            for cache in (exact, full):
                s = student.clone().requires_grad_(True)
                loss = divergence(s, cache.rows(pick, tau=tau), kind, temperature=tau)
                loss.backward()
                losses.append(loss.item())
                grads.append(s.grad)
            assert losses[1] == pytest.approx(losses[0], abs=1e-6, rel=1e-5), (kind, tau)
            torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-4)


def kd_error_table(teacher_rows: torch.Tensor, student_rows: torch.Tensor, ks: list[int]) -> dict:
    """k -> mean KL(p || p_hat) per token and |D(q; p_hat) - D(q; p)| per kind at tau 1 and 2, in fp64."""
    p = torch.log_softmax(teacher_rows.double(), -1)
    out = {}
    for k in ks:
        cache = top_k_cache(teacher_rows, [0, len(teacher_rows)], k)
        log_hat = torch.log_softmax(cache.rows([0]).double(), -1)  # [n, V] log p_hat
        row = {"kl": float((p.exp() * (p - log_hat)).sum(-1).mean())}
        for kind in KINDS:
            for tau in (1.0, 2.0):
                ref = divergence(student_rows.double(), teacher_rows.double(), kind, temperature=tau)
                rebuilt = cache.rows([0], tau=tau).double()  # [n, V]
                row[(kind, tau)] = abs(float(divergence(student_rows.double(), rebuilt, kind, temperature=tau) - ref))
        out[k] = row
    return out


def test_top_k_error_shrinks_with_k_and_vanishes_at_vocab_size():
    vocab, ks = 256, [1, 4, 16, 64, 256]
    teacher_rows = peaked_logits(48, vocab)
    student_rows = peaked_logits(48, vocab, seed=1)
    table = kd_error_table(teacher_rows, student_rows, ks)
    print("\nk    KL(p||p_hat)  " + "  ".join(f"{kind}@{tau:g}" for kind in KINDS for tau in (1.0, 2.0)))
    for k, row in table.items():
        print(f"{k:<4} {row['kl']:.3e}     " + "  ".join(f"{row[(kind, tau)]:.1e}" for kind in KINDS for tau in (1.0, 2.0)))
    kls = [table[k]["kl"] for k in ks]
    assert all(a > b for a, b in zip(kls, kls[1:]))  # strictly better with every larger k ...
    assert kls[0] > 0.05 and kls[-1] < 1e-6  # ... from a visible error down to none at k = V
    for key in table[1]:
        if key == "kl":
            continue
        assert table[256][key] < 1e-6, key
        assert table[64][key] < table[1][key], key  # the KD loss error follows


def test_tau_one_rows_re_tempered_give_the_tail_more_mass_above_tau_one_and_less_below():
    """Why top-k rows need the tempered tail statistics: the tau = 1 rows re-tempered by the losses err in the
    documented direction (x^(1/tau) concave for tau > 1), while the rows built for the tau get the mass right."""
    logits = peaked_logits(32, 128, seed=2)
    cache = top_k_cache(logits, [0, 32], 8)
    rebuilt, ids = cache.rows([0]), cache.token_ids.long()
    for tau, more in ((2.0, True), (0.5, False)):
        tail_true = 1 - torch.softmax(logits / tau, -1).gather(1, ids).sum(-1)  # [n]
        tail_hat = 1 - torch.softmax(rebuilt / tau, -1).gather(1, ids).sum(-1)  # [n]
        assert bool((tail_hat >= tail_true - 1e-6).all() if more else (tail_hat <= tail_true + 1e-6).all()), tau
    torch.testing.assert_close(1 - torch.softmax(rebuilt, -1).gather(1, ids).sum(-1), cache.log_rest.exp())  # tau 1
    tail_true = 1 - torch.softmax(logits / 2, -1).gather(1, ids).sum(-1)  # [n]
    torch.testing.assert_close(1 - torch.softmax(cache.rows([0], tau=2.0) / 2, -1).gather(1, ids).sum(-1), tail_true)
    with pytest.raises(ValueError, match="tau = 0.5 is outside the top-k cache's tail statistics, tau in \\[1, 2\\]"):
        cache.rows([0], tau=0.5)


def test_tail_statistics_are_exact_on_the_grid_and_interpolated_closely_between():
    logits = peaked_logits(24, 1024, seed=3)
    cache = top_k_cache(logits, [0, 24], 16)
    ids = cache.token_ids
    assert TAIL_TAUS[0] == 1.0 and TAIL_TAUS[-1] == 2.0
    for tau in linear_schedule(1.0, 2.0, 4) + linear_schedule(1.0, 2.0, 3):  # POCL's stages: on the grid, stored
        assert any(math.isclose(tau, t) for t in TAIL_TAUS), tau
        got = tempered_log_tail(cache.tail_taus, cache.log_tail_mass, cache.tail_mean_logp, tau)
        torch.testing.assert_close(got.double(), naive_log_tail(logits, ids, tau), atol=1e-5, rtol=0)  # fp32 storage
    for tau in (1.05, 1.1, 1.25, 1.4, 1.75, 1.9, 1.99):  # between grid points: cubic Hermite in 1/tau
        got = tempered_log_tail(cache.tail_taus, cache.log_tail_mass, cache.tail_mean_logp, tau).double()
        err = float((got - naive_log_tail(logits, ids, tau)).abs().max())
        # measured max 6e-6 (Hermite on this grid); linear interpolation in 1/tau between the same points errs 5e-3
        assert err < 5e-5, (tau, err)
    coarse = top_k_cache(logits, [0, 24], 16, (1.0, 2.0))  # one interval: the Hermite error bound really matters
    got = tempered_log_tail(coarse.tail_taus, coarse.log_tail_mass, coarse.tail_mean_logp, 4 / 3).double()
    linear = (coarse.log_tail_mass[:, 0] + coarse.log_tail_mass[:, 1]).double() / 2  # 1/tau = 3/4 is the midpoint
    truth = naive_log_tail(logits, ids, 4 / 3)
    assert float((got - truth).abs().max()) < float((linear - truth).abs().max()) / 10  # measured 2.0e-3 vs 0.11


def test_tempered_rows_make_the_kd_loss_far_more_accurate_at_pocl_temperatures():
    """Zipf-like teacher rows, V = 4096, k = 64 (8% of the mass outside the top k at tau = 1, 72% once tempered at
    tau = 2): the rows built for tau match the tempered top k and tail mass exactly; the loss and gradient errors that
    remain come from the flat tail shape. Bounds are the measured values (seeded) plus a margin."""
    teacher_rows, student_rows = peaked_logits(32, 4096, seed=4).double(), peaked_logits(32, 4096, seed=5).double()
    cache = top_k_cache(teacher_rows.float(), [0, 32], 64)
    ids = cache.token_ids.long()
    bounds = {4 / 3: (0.065, 0.036), 5 / 3: (0.13, 0.095), 2.0: (0.19, 0.17)}  # measured 0.056/0.032 .. 0.164/0.148
    for tau, (loss_bound, grad_bound) in bounds.items():
        true = torch.softmax(teacher_rows / tau, -1)  # [n, V]
        errs = {}
        for fixed in (True, False):
            rows = cache.rows([0], tau=tau if fixed else 1.0).double()  # [n, V]
            tempered = torch.softmax(rows / tau, -1)  # [n, V]
            errs[fixed] = [float((tempered.gather(1, ids) - true.gather(1, ids)).abs().max())]  # top k, each token
            for ref, approx in zip(*(loss_and_grad(student_rows, t, "fkl", tau) for t in (teacher_rows, rows))):
                errs[fixed].append(float((approx - ref).norm() / ref.norm()))  # relative error: loss, then gradient
        assert errs[True][0] < 1e-6 and errs[False][0] > 1e-2, (tau, errs)
        assert errs[True][1] < loss_bound and errs[True][2] < grad_bound, (tau, errs)
        assert errs[True][1] < 0.6 * errs[False][1] and errs[True][2] < 0.7 * errs[False][2], (tau, errs)


def loss_and_grad(student_rows: torch.Tensor, teacher_rows: torch.Tensor, kind: str, tau: float):
    s = student_rows.clone().requires_grad_(True)
    loss = divergence(s, teacher_rows, kind, temperature=tau)
    loss.backward()
    return loss.detach(), s.grad


def test_kd_loss_fn_gives_the_top_k_cache_the_stage_tau(teacher, encoded):
    cache = build_teacher_cache(teacher, encoded, PAD, top_k=5)
    ctx = KDContext(encoded, PAD, eos_id=1, cache=cache)
    idx = [3, 8]
    batch = make_batch([encoded[i] for i in idx], PAD)
    for tau in (1.0, 1.25, 2.0):
        fn = kd_loss_fn(teacher, ctx, kind="fkl", tau=tau, alpha=0.0, rng=np.random.default_rng(0))
        with torch.no_grad():
            loss, _ = fn(idx, 0, idx)  # one process: the whole batch is its own
            want, _ = step_loss(teacher, batch, cache.rows(idx, tau=tau), kind="fkl", tau=tau, alpha=0.0)
            stale, _ = step_loss(teacher, batch, cache.rows(idx), kind="fkl", tau=tau, alpha=0.0)
        assert loss.item() == want.item(), tau
        assert (loss.item() != stale.item()) == (tau != 1.0), tau


def test_top_k_cache_is_much_smaller_per_token(teacher, encoded):
    cache = build_teacher_cache(teacher, encoded, PAD, top_k=4)
    # fp32 log-probs + int32 ids + fp32 remainder + fp32 tempered tail mass and slope at the 7 grid temperatures
    assert cache.bytes_per_token() == 4 * 4 + 4 * 4 + 4 + 2 * 4 * len(TAIL_TAUS)
    assert cache.logits is None and cache.rows([0, 1]).shape == (len(encoded[0].response_ids) + len(encoded[1].response_ids), V)


def test_bad_top_k_raises(teacher, encoded):
    for k in (-1, V + 1, 2.0, True):
        with pytest.raises(ValueError, match="top_k=.*must be an int in \\[0, 40\\]"):
            build_teacher_cache(teacher, encoded, PAD, top_k=k)
    with pytest.raises(ValueError, match="token_ids must lie in \\[0, 4\\)"):
        TeacherCache(None, np.array([0, 1]), torch.zeros(1, 2), torch.tensor([[0, 4]], dtype=torch.int32),
                     torch.zeros(1), 4)
    with pytest.raises(ValueError, match="either logits"):
        TeacherCache(torch.zeros(1, 4), np.array([0, 1]), torch.zeros(1, 2))
    parts = (np.array([0, 1]), torch.zeros(1, 2), torch.tensor([[0, 1]], dtype=torch.int32), torch.zeros(1), 4)
    with pytest.raises(ValueError, match="top-k mode needs tail_taus"):
        TeacherCache(None, *parts)
    with pytest.raises(ValueError, match="log_tail_mass \\(1, 3\\) and tail_mean_logp \\(1, 3\\) must be .*\\[1, 2\\]"):
        TeacherCache(None, *parts, (1.0, 2.0), torch.zeros(1, 3), torch.zeros(1, 3))
    for taus in ((), (2.0, 1.0), (1.0, float("nan")), 2.0):
        with pytest.raises(ValueError, match="tail_taus=.*must be"):
            build_teacher_cache(teacher, encoded, PAD, top_k=4, tail_taus=taus)


# ---- files ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 5])
def test_save_load_round_trip(tmp_path, teacher, encoded, k):
    cache = build_teacher_cache(teacher, encoded, PAD, top_k=k)
    cache.save(tmp_path / "cache.safetensors")
    back = TeacherCache.load(tmp_path / "cache.safetensors")
    assert (back.top_k, back.vocab_size) == (k, V)
    np.testing.assert_array_equal(back.offsets, cache.offsets)
    names = ("logits",) if k == 0 else ("top_logprobs", "token_ids", "log_rest", "log_tail_mass", "tail_mean_logp")
    for name in names:
        assert torch.equal(getattr(back, name), getattr(cache, name)), name
    assert back.tail_taus == cache.tail_taus == (() if k == 0 else TAIL_TAUS)
    for tau in (1.0, 1.25, 5 / 3):
        assert torch.equal(back.rows([4, 1], tau=tau), cache.rows([4, 1], tau=tau))


def test_top_k_file_without_tail_statistics_says_to_rebuild(tmp_path, teacher, encoded):
    """A top-k cache saved before the tempered tail statistics existed: only right at tau = 1, so loading refuses."""
    cache = build_teacher_cache(teacher, encoded, PAD, top_k=5)
    old = tmp_path / "old.safetensors"
    save_file({"offsets": torch.from_numpy(cache.offsets), "top_logprobs": cache.top_logprobs,
               "token_ids": cache.token_ids, "log_rest": cache.log_rest, "vocab_size": torch.tensor([V])}, str(old))
    with pytest.raises(CheckpointError, match=f"{old}: top-k teacher cache written before the tempered tail statistics "
                                              "\\('tail_taus'|tail_taus"):
        TeacherCache.load(old)


def test_bad_files_say_what_is_wrong(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=f"{garbage}: unreadable checkpoint"):
        TeacherCache.load(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match=f"{other}: not a teacher cache: it holds tensors \\['weight'\\]"):
        TeacherCache.load(other)
    short = tmp_path / "short.safetensors"
    save_file({"logits": torch.zeros(5, 3), "offsets": torch.tensor([0, 2, 4])}, str(short))  # 5 rows, offsets end at 4
    with pytest.raises(CheckpointError, match=f"{short}: inconsistent teacher cache .*offsets must rise from 0 to the 5"):
        TeacherCache.load(short)
    with pytest.raises(FileNotFoundError):
        TeacherCache.load(tmp_path / "missing.safetensors")


# ---- the profile's cache mode (Profile.teacher_cache) ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["top-8", "live"])
def test_profile_cache_modes_build_their_cache_and_train(mode, tmp_path):
    """`exact` (every world profile), `top-<k>` and `live` (the paper profiles: no cache, the teacher runs every
    step): the teacher_cache step builds what the mode says, run keys tell the modes apart, and a KD run trains."""
    from dataclasses import replace
    from pocl_utils.experiment import runner, training_run
    from pocl_utils.experiment.config import baseline, get_profile
    from pocl_utils.experiment.pipeline import prepare
    torch.set_num_threads(1)
    exact = prepare("smoke", runs_root=tmp_path / "exact", log=lambda s: None, device="cpu")
    ws = prepare(replace(get_profile("smoke"), teacher_cache=mode), runs_root=tmp_path / mode, log=lambda s: None,
                 device="cpu")
    spec = baseline("KLD", seed=0)
    assert ws.step_keys()["teacher"] == exact.step_keys()["teacher"]
    assert ws.step_keys()["teacher_cache"] != exact.step_keys()["teacher_cache"]
    assert runner.run_key(ws, spec) != runner.run_key(exact, spec)
    ctx = training_run.kd_context(ws, spec, torch.device("cpu"))
    if mode == "live":
        assert ws.teacher_cache is None and ctx.cache is None and ctx.teacher is not None
        assert not (ws.root / "teacher_cache" / "cache.safetensors").exists()
    else:
        assert ws.teacher_cache.top_k == 8 and ctx.cache is ws.teacher_cache and ctx.teacher is None
        want = exact.teacher_cache.rows([0, 1])  # exact logits; the top 8 log-probs of each row must match them
        got = ws.teacher_cache.rows([0, 1])
        top = torch.log_softmax(want, -1).topk(8, dim=-1)
        torch.testing.assert_close(torch.log_softmax(got, -1).gather(-1, top.indices), top.values, rtol=0, atol=1e-5)
    record = runner.execute(ws, spec, torch.device("cpu"))
    assert np.isfinite(record["metrics"]["train"]["loss"][-1]["loss"])
    assert ws.registry.done(runner.KIND, runner.run_key(ws, spec))
