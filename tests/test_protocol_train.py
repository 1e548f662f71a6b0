"""Smoke-sized training under the official protocol: every control of issue 23 trains, each stage at the batch, lr,
warm-up and steps of its plan, and checkpoint selection on the validation loss keeps the best of the same number of
candidates in every arm."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import pocl_utils.experiment.training_run as training_run
from pocl_utils.experiment import experiments, scoring
from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.workspace import Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    torch.set_num_threads(1)
    p = get_profile("smoke", {"protocol": "official", "select_metric": "loss", "select_points": "even",
                              "valid_checks": 3})
    return prepare(p, runs_root=tmp_path_factory.mktemp("runs"), log=lambda s: None)


def _spy(monkeypatch) -> list[dict]:
    """What run_steps and batch_stream are handed for each stage: steps, lr, warm-up and the batches' sizes."""
    seen: list[dict] = []
    real_run, real_stream = training_run.run_steps, training_run.batch_stream

    def stream(indices, encoded, batch_size, *args):
        seen.append({"rows": len(indices), "batch": batch_size})
        return real_stream(indices, encoded, batch_size, *args)

    def run(model, loss_fn, batches, steps, spec, **kw):
        sizes = []

        def counted():
            for b in batches:
                sizes.append(len(b))
                yield b
        log = real_run(model, loss_fn, counted(), steps, spec, **kw)
        seen[-1].update(steps=steps, lr=spec.lr, warmup=kw["warmup"], shared=kw["optimizer"] is not None,
                        sizes=set(sizes), loss=[r["loss"] for r in log])
        return log

    monkeypatch.setattr(training_run, "run_steps", run)
    monkeypatch.setattr(training_run, "batch_stream", stream)
    return seen


@pytest.mark.parametrize("variant", [v for v in experiments.CONTROL_LABELS])
def test_each_control_trains_at_its_plan(ws, variant, monkeypatch, tmp_path):
    spec = next(s for s in experiments.grid("controls", 1, oracle=True, protocol="official")
                if s.method == "KLD" and s.variant == variant)
    enc = ws.encoded("train")
    plan = training_run.stages_for(ws, spec, enc)
    seen = _spy(monkeypatch)
    init = {k: v.clone() for k, v in ws.load_student_init(torch.device("cpu")).state_dict().items()}
    valid = []

    def validate(model):
        values = scoring.selection_values(ws, model)
        valid.append(values["loss"])
        return values

    state = training_run.train_run(ws, spec, tmp_path, torch.device("cpu"), validate)
    assert len(seen) == len(plan) == len(state["stages"])
    for got, stage in zip(seen, plan):
        assert got["rows"] == len(stage.samples) and got["batch"] == stage.batch
        assert got["steps"] == stage.steps and got["lr"] == pytest.approx(stage.lr) and got["warmup"] == 0
        assert got["sizes"] == {min(stage.batch, len(stage.samples))}  # every step draws the stage's batch
        assert all(np.isfinite(got["loss"]))
        assert got["shared"] == (not spec.restarts)
    kd = ws.profile.kd
    if spec.pocl or spec.control:  # POCL's settings: batch 8 b, lr eta / 5
        assert {s.batch for s in plan} == {8 * kd.batch_size}
        assert [s.lr for s in plan] == pytest.approx([kd.lr / 5] * len(plan))
    else:
        assert [(s.batch, s.lr) for s in plan] == [(kd.batch_size, kd.lr)]
    if spec.control == "restarts" or spec.variant == experiments.POCL_OPTIMIZER:
        assert {len(s.samples) for s in plan} == {len(enc)}  # all data in every stage
    assert len(state["valid"]) == 3  # the same number of candidates for every arm
    assert state["best"] == pytest.approx(-min(valid))  # the kept checkpoint has the lowest validation loss
    model = ws.load_student_init(torch.device("cpu"))
    from pocl_utils.training import distributed
    distributed.load_weights(model, tmp_path / "best.safetensors")
    assert any(not torch.equal(v, init[k]) for k, v in model.state_dict().items())  # it trained
    assert scoring.validation_loss(ws, model.eval()) == pytest.approx(min(valid), rel=1e-6)


def test_official_baseline_trains_kd_alone(ws, monkeypatch, tmp_path):
    """kd_base.sh --kd-ratio 1.0: the official KD baseline's loss is the divergence alone, whatever spec.alpha is."""
    seen = []
    real = training_run.kd_loss_fn
    monkeypatch.setattr(training_run, "kd_loss_fn", lambda *a, **k: seen.append(k["alpha"]) or real(*a, **k))
    spec = experiments.baseline("KLD")
    assert spec.alpha == (0.3, 0.3)
    training_run.train_run(ws, spec, tmp_path, torch.device("cpu"), lambda m: scoring.selection_values(ws, m))
    assert seen == [0.0]
    text = replace(ws.profile, protocol="paper-text")
    assert training_run.stages_for(Workspace(text, ws.root), spec, ws.encoded("train"))[0].alpha == 0.3


def test_lr_chosen_per_arm_on_validation_runs_the_candidates(ws):
    from pocl_utils.experiment import pool
    p = replace(ws.profile, lr_factors=(2.0, 1.0))
    lab = Workspace(p, ws.root)
    specs = [experiments.baseline("KLD", s) for s in range(2)]
    at, table = pool.at_chosen_lrs(lab, specs, log=lambda s: None)
    assert [(r["lr_scale"], r["lr"]) for r in table] == [(2.0, pytest.approx(2 * p.kd.lr)), (1.0, p.kd.lr)]
    pick = max(table, key=lambda r: r["valid"])  # the higher selection score: the lower validation loss
    assert [r["chosen"] for r in table] == [r is pick for r in table]
    assert [s.lr_scale for s in at] == [pick["lr_scale"]] * 2 and [s.seed for s in at] == [0, 1]
    assert pool.at_chosen_lrs(ws, specs) == (specs, [])  # no lr_factors: no choice
