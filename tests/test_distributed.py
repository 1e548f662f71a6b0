"""Multi-process training through `accelerate launch` (2 CPU processes, gloo): data parallel
(configs/accelerate/cpu_2proc.yaml) and FSDP-sharded (configs/accelerate/cpu_2proc_fsdp.yaml).

A 2-process step must equal a 1-process step on the same global batch: the batches below give the two shards
different token counts (a per-rank mean averaged over ranks would then differ) and one batch has a single example
(one rank holds nothing). Run as a script under `accelerate launch`, this file is also the worker the test launches.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pocl_utils.training import distributed
from pocl_utils.experiment.config import ConfigError, ModelSpec, TrainSpec, get_profile
from pocl_utils.data import Encoded
from pocl_utils.modeling.models import FUSED_AT, Precision, build_model
from pocl_utils.training.kd import KDContext, kd_loss_fn
from pocl_utils.training.loop import run_steps
from pocl_utils.training.teacher_cache import TeacherCache

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"ddp": REPO / "configs" / "accelerate" / "cpu_2proc.yaml",
           "fsdp": REPO / "configs" / "accelerate" / "cpu_2proc_fsdp.yaml"}
VOCAB = 48
RESPONSE_LENGTHS = [1, 14, 3, 22, 2, 7, 16, 4, 9, 5]  # + EOS each
# Rank 0 takes the first ceil(B/2) examples of a batch. Step 0: tokens 2 + 15 + 4 = 21 vs 23 + 3 = 26;
# step 2: [8] leaves rank 1 empty.
BATCHES = [[0, 1, 2, 3, 4], [5, 6, 7], [8], [3, 9, 1, 6], [2, 0, 8, 5, 7]]
CLIPS = {"no_clip": 0.0, "clip": 0.05}  # 0.05 is well below the gradient norm: the clip acts on every step
FUSED = Precision(None, fused_loss=True)  # the GPU's step path (loss fused with the LM head), in fp32 on the CPU
HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None  # inductor's CPU backend compiles C++


def _examples() -> list[Encoded]:
    rng = np.random.default_rng(0)
    return [Encoded(rng.integers(1, VOCAB, size=int(rng.integers(2, 6))).tolist(),
                    rng.integers(1, VOCAB, size=n).tolist() + [0], index=i, meta={})
            for i, n in enumerate(RESPONSE_LENGTHS)]


def kd_cache() -> TeacherCache:
    """A random teacher's cached logits for the examples' response tokens."""
    offsets = np.concatenate([[0], np.cumsum([len(e.response_ids) for e in _examples()])])
    torch.manual_seed(1)
    return TeacherCache(3 * torch.randn(int(offsets[-1]), VOCAB), offsets)  # [rows, V]


def _student_and_loss(on_policy: bool = False, precision: Precision | None = None, alpha: float = 0.3,
                      grad_accum: int = 1):
    """A tiny GPT-2 and its KD loss (forward KL, tau 2, alpha 0.3) against a random teacher's cached logits, or with
    on-policy batches only (GKD's outputs sampled by the student, scored by a random live teacher). `precision`
    forces a step path (FUSED: the GPU's fused loss, in fp32)."""
    encoded = _examples()
    student = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), VOCAB, 64, seed=0)
    ctx = KDContext(encoded, pad_id=0, eos_id=0, cache=kd_cache(), max_new_tokens=3, precision=precision,
                    grad_accum=grad_accum)
    if on_policy:
        ctx.teacher, ctx.on_policy_frac = build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), VOCAB, 64, seed=1), 1.0
    return student, kd_loss_fn(student, ctx, kind="fkl", tau=2.0, alpha=alpha, rng=np.random.default_rng(2))


def _other_archs() -> dict[str, list[float]]:
    """The KD losses of a tiny Llama (real-lite's student kind) and a tiny OPT (paper-opt's) over BATCHES."""
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, ffn_dim=32, dropout=0.0,
                                   num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64))
    models = {"llama": build_model(ModelSpec(arch="llama", n_layer=2, n_embd=16, n_head=2), VOCAB, 64, seed=0),
              "opt": opt}
    losses = {}
    for arch, model in models.items():
        ctx = KDContext(_examples(), pad_id=0, eos_id=0, cache=kd_cache(), max_new_tokens=3)
        loss_fn = kd_loss_fn(model, ctx, kind="fkl", tau=2.0, alpha=0.3, rng=np.random.default_rng(2))
        losses[arch] = [row["loss"] for row in run_steps(model, loss_fn, iter(BATCHES), len(BATCHES), _spec(0.05))]
    return losses


def _spec(grad_clip: float) -> TrainSpec:
    return TrainSpec(lr=1e-2, batch_size=5, warmup_frac=0.0, grad_clip=grad_clip)


def _train(grad_clip: float, on_policy: bool = False, precision: Precision | None = None,
           compile: bool = False, alpha: float = 0.3, grad_accum: int = 1) -> dict:
    """Five KD steps on BATCHES; returns the log, the first step's (summed, clipped) gradient, the final weights and
    the examples each step computed on. `compile`: launched, each block compiled (`distributed.prepare_model`);
    `grad_accum`: micro-batches per step."""
    student, kd = _student_and_loss(on_policy, precision, alpha, grad_accum)
    if compile:
        distributed.prepare_model(student, compile=True)
        assert all(block._compiled_call_impl is not None for block in student.transformer.h)
    grads, seen = {}, []

    def loss_fn(idx: list[int], step: int, batch: list[int]):
        seen.append(list(idx))
        return kd(idx, step, batch)

    def on_step(step: int, parts: dict) -> None:
        if step == 0:
            grads["step0"] = torch.cat([_whole(p.grad).reshape(-1) for p in student.parameters()]).clone()

    log = run_steps(student, loss_fn, iter(BATCHES), len(BATCHES), _spec(grad_clip), on_step=on_step,
                    grad_accum=grad_accum)
    local = sum(_local(p).numel() for p in student.parameters())
    return {"log": log, "grad0": grads["step0"], "seen": seen, "local_numel": local,
            "weights": {k: v.clone() for k, v in distributed.full_state_dict(student).items()}}


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor gathered whole; a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's own part of a tensor (its shard under FSDP)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _settled(name: str, weight: torch.Tensor) -> torch.Tensor:
    """The weights whose value does not hang on float noise: the attention key bias is dropped. Its gradient is zero in
    exact arithmetic (it shifts all of a query's scores equally, which the softmax ignores), so what it gets is
    rounding noise, which Adam's normalisation turns into steps of about lr either way."""
    if name.endswith("attn.c_attn.bias"):
        d = weight.shape[0] // 3
        return torch.cat([weight[:d], weight[2 * d:]])  # query and value parts
    return weight


def _worker(out: Path) -> None:
    """Body of each launched process: every configuration, saved per rank, then a checkpoint round trip."""
    torch.set_num_threads(1)
    r = distributed.rank()
    for name, clip in CLIPS.items():
        torch.save(_train(clip), out / f"{name}.rank{r}.pt")
    torch.save(_train(1.0, on_policy=True), out / f"gkd.rank{r}.pt")
    torch.save(_train(CLIPS["clip"], precision=FUSED), out / f"fused.rank{r}.pt")
    torch.save(_train(1.0, on_policy=True, precision=FUSED), out / f"fused_gkd.rank{r}.pt")
    if HAS_CC:
        torch.save(_train(CLIPS["clip"], precision=FUSED, compile=True), out / f"compiled.rank{r}.pt")
    torch.save(_train(CLIPS["clip"], grad_accum=2), out / f"accumulated.rank{r}.pt")
    torch.save(_train(1.0, on_policy=True, alpha=0.0, grad_accum=2), out / f"accumulated_gkd.rank{r}.pt")
    (out / f"archs.rank{r}.json").write_text(json.dumps(_other_archs()))
    prepared, _ = _student_and_loss()
    distributed.prepare_model(prepared)
    step_forward = getattr(prepared, FUSED_AT, None)  # DDP: a partial of the wrapper
    wrapper = type(step_forward.func).__name__ if step_forward is not None else None
    (out / f"world.rank{r}.json").write_text(json.dumps({"world": distributed.world_size(), "fsdp": distributed.fsdp(),
                                                         "ddp_wrapper": wrapper}))
    _checkpoint_round_trip(out, r)
    distributed.close()


def _checkpoint_round_trip(out: Path, r: int) -> None:
    """Train a few steps, save (gathered whole under FSDP), load into a fresh model of the same kind, save again."""
    student, kd = _student_and_loss()
    run_steps(student, kd, iter(BATCHES), 2, _spec(1.0))
    distributed.save_weights(student, out / f"trained.rank{r}.safetensors")
    fresh, _ = _student_and_loss()
    distributed.shard_model(fresh)  # sharded, as a resumed run's model is by its second stage
    distributed.load_weights(fresh, out / f"trained.rank{r}.safetensors")
    distributed.save_weights(fresh, out / f"reloaded.rank{r}.safetensors")


def _accelerate(args: list[str], timeout: float, config: str = "ddp", **kw) -> subprocess.CompletedProcess:
    """`accelerate launch` with a 2-process CPU config (its port 0 picks a free port); fails the test on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS[config]), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module", params=list(CONFIGS))
def launched(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param)
    _accelerate([str(Path(__file__)), str(out)], timeout=300, config=request.param, cwd=REPO)
    return request.param, out


@pytest.mark.parametrize("name", list(CLIPS))
def test_two_processes_equal_one_process_on_the_same_global_batch(launched, name):
    torch.set_num_threads(1)
    config, out = launched
    want = _train(CLIPS[name])
    got = [torch.load(out / f"{name}.rank{r}.pt") for r in (0, 1)]
    assert want["seen"] == BATCHES
    assert got[0]["seen"] == [[0, 1, 2], [5, 6], [8], [3, 9], [2, 0, 8]]  # each rank computes on its own shard only
    assert got[1]["seen"] == [[3, 4], [7], [8], [1, 6], [5, 7]]  # step 2: a stand-in for its empty shard, weight 0
    _assert_same_training(got, want)


def _assert_same_training(got: list[dict], want: dict) -> None:
    """Both ranks' log, first gradient and final weights equal the 1-process run's (up to float rounding)."""
    for row_got, row_want in zip(got[0]["log"], want["log"], strict=True):
        assert row_got.keys() == row_want.keys() == {"loss", "ce", "kd"}
        for k in row_want:
            assert abs(row_got[k] - row_want[k]) < 1e-5, (k, row_got, row_want)
    torch.testing.assert_close(got[0]["grad0"], want["grad0"], rtol=1e-5, atol=1e-7)
    for k, w in want["weights"].items():
        torch.testing.assert_close(_settled(k, got[0]["weights"][k]), _settled(k, w), rtol=0, atol=5e-6, msg=k)
        assert torch.equal(got[0]["weights"][k], got[1]["weights"][k]), f"replicas differ at {k}"
    assert got[0]["log"] == got[1]["log"]  # every rank logs the global values


def test_fsdp_shards_the_model_and_ddp_replicates_it(launched):
    config, out = launched
    worlds = [json.loads((out / f"world.rank{r}.json").read_text()) for r in (0, 1)]
    wrapper = None if config == "fsdp" else "DistributedDataParallel"  # data parallel: accelerate's DDP wrapper
    assert worlds == [{"world": 2, "fsdp": config == "fsdp", "ddp_wrapper": wrapper}] * 2
    total = sum(p.numel() for p in _student_and_loss()[0].parameters())
    local = [torch.load(out / f"clip.rank{r}.pt")["local_numel"] for r in (0, 1)]
    if config == "fsdp":  # each rank holds about half of every tensor (dim 0 split in two), nothing twice
        assert sum(local) >= total and all(n <= total / 2 + 64 for n in local), (local, total)
    else:
        assert local == [total, total]


def test_llama_and_opt_two_processes_equal_one_process(launched):
    torch.set_num_threads(1)
    config, out = launched
    want = _other_archs()
    for r in (0, 1):
        got = json.loads((out / f"archs.rank{r}.json").read_text())
        for arch in want:
            np.testing.assert_allclose(got[arch], want[arch], rtol=0, atol=1e-5, err_msg=f"{config} {arch} rank {r}")


def test_on_policy_two_processes_sample_what_one_process_samples(launched):
    """GKD: every rank samples the whole global batch with the run's seed and keeps its own rows, so the on-policy
    outputs, hence the losses and weights, are the 1-process run's."""
    torch.set_num_threads(1)
    config, out = launched
    want = _train(1.0, on_policy=True)
    got = [torch.load(out / f"gkd.rank{r}.pt") for r in (0, 1)]
    assert all(np.isfinite(row["loss"]) for row in want["log"])
    _assert_same_training(got, want)


@pytest.mark.parametrize("on_policy", [False, True])
def test_fused_step_two_processes_equal_one_process(launched, on_policy):
    """The GPU's step path (LM head + CE + KD fused in row chunks; a sharded model falls back to the unfused one): the
    token-weighted shares still add up to the 1-process step, off- and on-policy."""
    torch.set_num_threads(1)
    config, out = launched
    want = _train(1.0 if on_policy else CLIPS["clip"], on_policy=on_policy, precision=FUSED)
    got = [torch.load(out / f"{'fused_gkd' if on_policy else 'fused'}.rank{r}.pt") for r in (0, 1)]
    _assert_same_training(got, want)


def test_compiled_blocks_two_processes_equal_one_eager_process(launched):
    """compile under a launch: each transformer block compiled in place, then wrapped by DDP or sharded by
    FSDP2; the step still equals the 1-process eager step."""
    if not HAS_CC:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C compiler; none on PATH")
    torch.set_num_threads(1)
    config, out = launched
    want = _train(CLIPS["clip"], precision=FUSED)
    _assert_same_training([torch.load(out / f"compiled.rank{r}.pt") for r in (0, 1)], want)


@pytest.mark.parametrize("on_policy", [False, True])
def test_accumulated_micro_batches_on_two_processes_equal_one_process(launched, on_policy):
    """grad_accum=2 under a launch: each rank's slice as 2 micro-batches (some empty: BATCHES[2] has one example),
    gradients summed over the ranks at the last one only; still the 1-process step on the whole batch."""
    torch.set_num_threads(1)
    config, out = launched
    want = _train(1.0, on_policy=True, alpha=0.0) if on_policy else _train(CLIPS["clip"])
    got = [torch.load(out / f"{'accumulated_gkd' if on_policy else 'accumulated'}.rank{r}.pt") for r in (0, 1)]
    _assert_same_training(got, want)


@pytest.mark.parametrize("micro", [2, 3])
@pytest.mark.parametrize("on_policy", [False, True])
def test_accumulated_micro_batches_equal_the_whole_batch_on_one_process(micro, on_policy):
    """One process, grad_accum=k: the same losses, gradients and weights as the whole batch at once, and each
    micro-batch computes on its own slice (GKD: one draw and one set of samples per step)."""
    torch.set_num_threads(1)
    want = _train(CLIPS["clip"], on_policy=on_policy, alpha=0.0 if on_policy else 0.3)
    got = _train(CLIPS["clip"], on_policy=on_policy, alpha=0.0 if on_policy else 0.3, grad_accum=micro)
    assert got["seen"] == [part for batch in BATCHES for part in _micro_slices(batch, micro)]
    _assert_same_training([got, got], want)


def _micro_slices(batch: list[int], k: int) -> list[list[int]]:
    """The micro-batches run_steps computes on, by hand: contiguous, earlier ones larger; an empty one runs the
    batch's first example as a stand-in."""
    size, extra = divmod(len(batch), k)
    bounds = np.cumsum([0] + [size + (j < extra) for j in range(k)])
    return [batch[a:b] or batch[:1] for a, b in zip(bounds[:-1], bounds[1:])]


def test_accumulation_refuses_an_on_policy_step_with_alpha_and_a_bad_setting():
    with pytest.raises(ValueError, match="cannot be split into micro-batches"):
        _train(1.0, on_policy=True, alpha=0.3, grad_accum=2)
    for bad in (0, "2", -1, True):
        with pytest.raises(ValueError, match="grad_accum"):
            _train(1.0, grad_accum=bad)
    with pytest.raises(ConfigError, match="grad_accum"):
        get_profile("smoke", {"grad_accum": 0})


def test_checkpoints_of_a_sharded_model_are_whole_and_load_back(launched):
    from safetensors.torch import load_file
    config, out = launched
    saved = [load_file(out / f"{kind}.rank{r}.safetensors") for kind in ("trained", "reloaded") for r in (0, 1)]
    student, _ = _student_and_loss()
    names = set(student.state_dict()) - {"lm_head.weight"}  # tied to the token embedding: stored once
    for s in saved:
        assert set(s) == names or set(s) == names - {"transformer.wte.weight"} | {"lm_head.weight"}
        for k in s:
            assert s[k].shape == student.state_dict()[k].shape, k
            assert torch.equal(s[k], saved[0][k]), k  # every rank writes the same whole tensors, and they load back


def _plain_loop(model, loss_fn, batches, steps: int, spec: TrainSpec) -> list[dict]:
    """The single-process loop as it was before multi-process support, written out, with torch's CPU defaults: the
    per-tensor AdamW and gradient clipping (run_steps uses the multi-tensor ones, which must give the same bits)."""
    from transformers import get_cosine_schedule_with_warmup
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, int(spec.warmup_frac * steps), steps)
    model.train()
    log = []
    for step in range(steps):
        batch = next(batches)
        loss, parts = loss_fn(batch, step, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip, foreach=False)
        opt.step()
        sched.step()
        log.append({"loss": float(loss.detach()), **{k: v for k, v in parts.items() if k != "tokens"}})
    return log


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_one_process_is_the_plain_loop_bitwise(arch, monkeypatch):
    torch.set_num_threads(1)
    assert not distributed.launched()
    if arch == "llama":  # the real-lite student's kind: other parameter shapes, no biases
        real_build = build_model
        monkeypatch.setitem(globals(), "build_model", lambda spec, *a, **k: real_build(
            ModelSpec(arch="llama", n_layer=2, n_embd=16, n_head=2), *a, **k))
    got = _train(CLIPS["clip"])
    student, loss_fn = _student_and_loss()
    want = _plain_loop(student, loss_fn, iter(BATCHES), len(BATCHES), _spec(CLIPS["clip"]))
    assert got["log"] == want
    for k, w in student.state_dict().items():
        assert torch.equal(got["weights"][k], w), k
    assert distributed._state.cache_info().currsize == 0 and not torch.distributed.is_initialized()


def test_shards_partition_the_batch_in_order(monkeypatch):
    indices = list(range(10, 17))  # 7 examples
    for world in (1, 2, 3, 8):
        monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
        parts = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            parts.append(distributed.shard(indices))
        assert sum(parts, []) == indices
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


class _FakeState:
    """Stands in for accelerate's PartialState on 2 processes: records what `main_first` asks of it."""

    num_processes = 2

    def __init__(self) -> None:
        self.calls: list[str] = []

    @contextmanager
    def main_process_first(self):
        self.calls.append("enter")
        yield
        self.calls.append("exit")


def test_main_first_runs_its_block_alone_through_accelerates_main_process_first(monkeypatch):
    """Inside `main_first` (accelerate's `main_process_first`) the process sees a world of 1, so the block makes no
    collective call; the world is restored when the block ends, also when it raises."""
    state = _FakeState()
    monkeypatch.setattr(distributed, "launched", lambda: True)
    monkeypatch.setattr(distributed, "_state", lambda: state)
    assert distributed.world_size() == 2
    with distributed.main_first():
        assert distributed.world_size() == 1 and state.calls == ["enter"]
        with distributed.main_first():  # nested: already alone, no second barrier
            assert distributed.world_size() == 1
    assert distributed.world_size() == 2 and state.calls == ["enter", "exit"]
    with pytest.raises(RuntimeError), distributed.alone():
        assert distributed.world_size() == 1
        raise RuntimeError("a failing step")
    assert distributed.world_size() == 2
    assert not hasattr(distributed, "_solo")  # no module-global flag


def test_fsdp_settings_come_from_accelerates_plugin(monkeypatch):
    """The FSDP settings are accelerate's `FullyShardedDataParallelPlugin`, read from what `accelerate launch` exports
    of the config; no FSDP launch gives none, and an FSDP1 config is refused with the fix."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert distributed.fsdp_plugin() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "OPTDecoderLayer")
    plugin = distributed.fsdp_plugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is False
    assert distributed.block_classes(_student_and_loss()[0], plugin) == {"OPTDecoderLayer", "GPT2Block"}
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        distributed.fsdp_plugin()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_batch_entry_point_under_accelerate_launch(tmp_path, config):
    """`python -m pocl_utils.experiment.job` on 2 processes, unchanged: the smoke profile's minimal Table 1 (SFT,
    SeqKD, GKD and KLD with and without POCL: 6 runs of a few steps), each trained once by both ranks together,
    recorded once; data parallel, or with the student and GKD's teacher sharded (FSDP)."""
    from pocl_utils.experiment.results import Registry
    t0 = time.time()
    proc = _accelerate(["-m", "pocl_utils.experiment.job", "--profile", "smoke", "--grid", "table1", "--size",
                        "minimal", "--seeds", "1", "--runs-root", str(tmp_path)], timeout=170, config=config, cwd=REPO)
    wall = time.time() - t0
    records = Registry(tmp_path / "smoke" / "registry").all("runs")
    assert len(records) == 6 and len({r["pid"] for r in records}) == 1, proc.stdout[-2000:]
    for rec in records:
        run_dir = tmp_path / "smoke" / "registry" / "runs" / rec["key"]
        assert len((run_dir / "attempts.log").read_text().splitlines()) == 1  # claimed and trained once, by one rank
        assert not list(run_dir.glob(".rank*"))  # the other rank's private checkpoints are gone
        assert len(rec["metrics"]["train"]["valid"]) >= 2  # validated at its check points
    assert "6 to run on 2 processes together" in proc.stdout  # only the main rank logs: each line once
    # both ranks trained the teacher (workspace.trained_together); the other rank's private folder is gone
    assert (tmp_path / "smoke" / "teacher" / "model" / "model.safetensors").exists()
    assert not list((tmp_path / "smoke").glob(".teacher.rank*")) and not list((tmp_path / "smoke").glob(".*.tmp"))
    assert proc.stdout.count("[job] 6 runs finished (6 trained by this process)") == 1
    assert len((tmp_path / "smoke" / "results" / "table1.csv").read_text().splitlines()) > 1
    print(f"2-process smoke batch ({config}): {wall:.0f}s")


def test_gpu_configs_load_and_name_the_blocks_fsdp_wraps(monkeypatch):
    """The GPU configs parse as accelerate configs; fsdp.yaml's layer class is the OPT block, which `shard_model` finds
    in an OPT model (a tiny one built here), as it finds a GPT-2's blocks through the model's own `_no_split_modules`."""
    from accelerate.commands.config.config_args import load_config_from_file
    from transformers import OPTConfig, OPTForCausalLM
    configs = {name: load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
               for name in ("single_gpu", "multi_gpu_ddp", "fsdp", "cpu_2proc", "cpu_2proc_fsdp")}
    assert configs["fsdp"].distributed_type == "FSDP" and not configs["fsdp"].use_cpu
    assert configs["fsdp"].fsdp_config["fsdp_version"] == 2
    for key in ("fsdp_auto_wrap_policy", "fsdp_transformer_layer_cls_to_wrap"):  # as `accelerate launch` exports them
        monkeypatch.setenv(key.upper().replace("_LAYER_CLS", "_CLS"), configs["fsdp"].fsdp_config[key])
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, ffn_dim=32, num_attention_heads=2,
                                   word_embed_proj_dim=16, max_position_embeddings=32))
    gpt2 = _student_and_loss()[0]
    for model, n_blocks in ((opt, 3), (gpt2, 1)):
        names = distributed.block_classes(model)
        assert sum(type(m).__name__ in names for m in model.modules()) == n_blocks, names


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


def test_accumulated_steps_hand_on_step_their_row_between_read_backs():
    """grad_accum=2 with the GPU's deferred read-back (log_every > 1): on_step gets each step's row before it is
    read back, and the log is the one of an every-step read-back."""
    torch.set_num_threads(1)
    rows = {}
    logs = []
    for every in (1, 3):
        student, kd = _student_and_loss()
        rows[every] = []
        logs.append(run_steps(student, kd, iter(BATCHES), len(BATCHES), _spec(1.0), log_every=every,
                              on_step=lambda step, row, out=rows[every]: out.append(dict(row)), grad_accum=2))
    assert logs[0] == logs[1]
    assert [float(r["loss"]) for r in rows[3]] == [r["loss"] for r in logs[1]]
