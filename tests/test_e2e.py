"""A tiny end-to-end run on the smoke profile: rank -> POCL staged KD -> evaluate, through the registry."""
import json
import sys

import numpy as np
import pytest
import torch

import pocl_utils.experiment.pool as pool
import pocl_utils.experiment.runner as runner
import pocl_utils.experiment.scoring as scoring
import pocl_utils.experiment.training_run as training_run
from pocl_utils.experiment.config import baseline, pocl
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.results import Registry
from pocl_utils.experiment.workspace import Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    torch.set_num_threads(1)
    return prepare("smoke", runs_root=tmp_path_factory.mktemp("runs"), log=lambda s: None)


def _spy_stages(monkeypatch) -> list[set[int]]:
    """Record the sample positions each stage draws its batches from."""
    seen: list[set[int]] = []
    real = training_run.batch_stream

    def spy(indices, *args):
        seen.append(set(np.asarray(indices).tolist()))
        return real(indices, *args)

    monkeypatch.setattr(training_run, "batch_stream", spy)
    return seen


def _spy_evaluation(monkeypatch) -> list[tuple[dict, dict]]:
    """Record (weights, metrics) of every model the runner evaluates on the eval sets."""
    seen: list[tuple[dict, dict]] = []
    real = scoring.evaluate_model

    def spy(ws, model):
        metrics = real(ws, model)
        seen.append(({k: v.clone() for k, v in model.state_dict().items()}, metrics))
        return metrics

    monkeypatch.setattr(scoring, "evaluate_model", spy)
    return seen


def test_pocl_stages_use_ranked_subsets_and_schedules(ws, monkeypatch):
    seen = _spy_stages(monkeypatch)
    evaluated = _spy_evaluation(monkeypatch)
    spec = pocl("KLD", seed=0)
    rec = runner.execute(ws, spec, torch.device("cpu"))
    enc = ws.encoded("train")
    position = {e.index: k for k, e in enumerate(enc)}
    easy_first = [position[i] for i in ws.ranking.order("fusion")]
    n = len(enc)
    quarter_ends = [len(q) for q in np.array_split(np.arange(n), 4)]
    expected = [set(easy_first[:sum(quarter_ends[:i + 1])]) for i in range(4)]
    assert seen == expected  # stage i trains on d_1 ∪ ... ∪ d_i, easiest first
    stages = rec["metrics"]["train"]["stages"]
    assert [s["tau"] for s in stages] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert [s["alpha"] for s in stages] == pytest.approx([0.3, 0.2, 0.1, 0.0])
    base = runner.execute(ws, baseline("KLD", seed=0), torch.device("cpu"))
    assert sum(s["steps"] for s in stages) == sum(s["steps"] for s in base["metrics"]["train"]["stages"])
    _check_evaluated_model_is_the_best_checkpoint(ws, rec, evaluated)


def _check_evaluated_model_is_the_best_checkpoint(ws, rec, evaluated) -> None:
    """The record holds the eval-set scores of the checkpoint with the best validation ROUGE-L (A.2.2), a trained one,
    and each set's mean is over the profile's seeds on its seeded subset."""
    weights, metrics = evaluated[0]  # the POCL run's, the first the test trains
    assert rec["metrics"]["eval"] == json.loads(json.dumps(metrics))  # the record stores what was evaluated
    model = ws.load_student_init(torch.device("cpu"))
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # trained, not the initial one
    model.load_state_dict(weights)
    best = rec["metrics"]["train"]["best"]  # the selection score (validation ROUGE-L, or minus the loss)
    assert best == max(scoring.selection_score(ws.profile, v) for v in rec["metrics"]["train"]["valid"])
    assert scoring.selection_score(ws.profile, scoring.selection_values(ws, model.eval())) == best
    for dataset, m in metrics.items():
        assert sorted(m["per_seed"]) == sorted(ws.profile.eval_seeds)
        assert m["mean"] == pytest.approx(np.mean(list(m["per_seed"].values())), rel=1e-12)
        assert m["n"] == len(scoring.eval_data(ws, dataset, ws.profile.eval_max_examples)[0])


def test_registry_skips_finished_runs(ws, monkeypatch):
    spec = baseline("SFT", seed=0)
    first = runner.execute(ws, spec, torch.device("cpu"))
    monkeypatch.setattr(runner, "train_run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert runner.execute(ws, spec, torch.device("cpu")) == first
    assert pool.run_grid(ws, [spec], log=lambda s: None) == [first]


def test_pool_starts_the_on_policy_runs_first_and_keeps_the_others_order():
    specs = [baseline("KLD", 0), pocl("GKD", 0), baseline("SFT", 1), baseline("GKD", 2), pocl("KLD", 0)]
    order = [(s.method, s.pocl, s.seed) for s in pool.longest_first(specs)]
    assert order == [("GKD", True, 0), ("GKD", False, 2), ("KLD", False, 0), ("SFT", False, 1), ("KLD", True, 0)]


def test_ranking_ablation_changes_the_curriculum(ws):
    enc = ws.encoded("train")
    by = {m: training_run.stages_for(ws, pocl("KLD", ranking=m), enc)[0].samples.tolist()
          for m in ("fusion", "rouge_l", "ce")}
    assert by["rouge_l"] != by["ce"]
    h2e = training_run.stages_for(ws, pocl("KLD", order="hard_to_easy"), enc)[0].samples.tolist()
    assert set(h2e).isdisjoint(by["fusion"])


def _killed_in_stage_3_then_resumed(ws, spec, tmp_path, monkeypatch, at: str = "run_steps") -> dict:
    """Run `spec` in a fresh registry, kill it at the third call of `training_run.<at>` (run_steps: during stage 3;
    atomic_write_json: after stage 3's weights are saved, before its progress file), run it again; the resumed run's
    record."""
    other = Workspace(ws.profile, ws.root)
    monkeypatch.setattr(Workspace, "registry", property(lambda self: Registry(tmp_path)))
    real = getattr(training_run, at)
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt(f"simulated kill at {at} in stage 3")
        return real(*a, **k)

    monkeypatch.setattr(training_run, at, dying)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(other, spec, torch.device("cpu"))
    monkeypatch.setattr(training_run, at, real)
    return runner.execute(other, spec, torch.device("cpu"))


def test_killed_run_resumes_to_identical_result(ws, tmp_path, monkeypatch):
    """Interrupt a POCL run after stage 2, re-run: final metrics equal an uninterrupted run's."""
    spec = pocl("GKD", seed=3)
    clean = runner.execute(ws, spec, torch.device("cpu"))
    resumed = _killed_in_stage_3_then_resumed(ws, spec, tmp_path, monkeypatch)
    assert resumed["metrics"]["eval"] == clean["metrics"]["eval"]
    assert resumed["metrics"]["train"]["stages"] == clean["metrics"]["train"]["stages"]
    assert resumed["metrics"]["train"]["valid"] == clean["metrics"]["train"]["valid"]
    # stage 3 restarted from stage 2's weights
    assert resumed["metrics"]["train"]["loss"] == clean["metrics"]["train"]["loss"]


@pytest.mark.parametrize("restarts", [True, False])
def test_killed_between_a_stages_weights_and_its_progress_file_resumes_to_identical_result(ws, tmp_path, monkeypatch,
                                                                                           restarts):
    """Stage 3's weights (and optimizer) are on disk but its progress file is not: the resumed run must redo stage 3
    from stage 2's checkpoint, not from stage 3's weights."""
    spec = pocl("KLD", seed=4, restarts=restarts)
    clean = runner.execute(ws, spec, torch.device("cpu"))
    resumed = _killed_in_stage_3_then_resumed(ws, spec, tmp_path, monkeypatch, at="atomic_write_json")
    assert resumed["metrics"]["train"]["loss"] == clean["metrics"]["train"]["loss"]
    assert resumed["metrics"]["eval"] == clean["metrics"]["eval"]


def test_oracle_curriculum_orders_by_the_worlds_true_difficulty(ws):
    from pocl_utils.experiment.experiments import ORACLE, grid
    from pocl_utils.world import true_difficulty
    enc = ws.encoded("train")
    truth = true_difficulty([ws.sets["train"][e.index] for e in enc])  # by position in enc
    stages = training_run.stages_for(ws, pocl("KLD", ranking="oracle", variant=ORACLE), enc)
    first = np.zeros(len(enc), bool)
    first[stages[0].samples] = True
    assert truth[first].max() <= truth[~first].min()  # d_1 holds the easiest quarter, by the generator's labels
    assert len(stages) == 4 and len(stages[-1].samples) == len(enc)
    order = grid("order", 1, "full", oracle=True)
    assert {(s.method, s.variant) for s in order if s.ranking == "oracle"} == {("GKD", ORACLE), ("KLD", ORACLE)}
    assert not [s for s in grid("order", 1, "full") if s.ranking == "oracle"]  # real data: no true difficulty


def test_one_schedule_across_stages_resumes_and_differs_from_restarts(ws, tmp_path, monkeypatch):
    """restarts=False: one AdamW + LR schedule over all stages (checkpointed with the weights), so a run killed in
    stage 3 resumes to the uninterrupted result; it trains differently from the default fresh optimizer per stage,
    and the default's run key is the one it had before the field existed."""
    spec = pocl("KLD", seed=3, restarts=False)
    assert "restarts" not in pocl("KLD", seed=3).key() and spec.key()["restarts"] is False
    made = []
    real_opt = training_run.optimizer_for
    monkeypatch.setattr(training_run, "optimizer_for", lambda *a: made.append(a[2]) or real_opt(*a))
    clean = runner.execute(ws, spec, torch.device("cpu"))
    assert made == [clean["metrics"]["train"]["steps"]]  # one optimizer, for every stage's steps
    default = runner.execute(ws, pocl("KLD", seed=3), torch.device("cpu"))
    assert clean["metrics"]["train"]["loss"] != default["metrics"]["train"]["loss"]
    assert [s["steps"] for s in clean["metrics"]["train"]["stages"]] == \
        [s["steps"] for s in default["metrics"]["train"]["stages"]]
    resumed = _killed_in_stage_3_then_resumed(ws, spec, tmp_path, monkeypatch)
    assert resumed["metrics"]["train"]["loss"] == clean["metrics"]["train"]["loss"]  # optimizer state restored
    assert resumed["metrics"]["eval"] == clean["metrics"]["eval"]


class _Reached(Exception):
    """Raised by the spy divergence once it has seen the call chain (stops the run at its first step)."""


def test_a_notebook_cell_reaches_the_divergence_in_at_most_8_calls(ws, monkeypatch):
    """From a notebook cell's `nb.run_grid(ws, specs)` to `losses.divergence`, the loss of the training step: at most 8
    calls of the package's functions (nanoGPT reaches its loss in 2, torchtune's KD recipe in 3), and 2 more to the
    divergence's own entry in `losses.DIVERGENCES` (the chunked loss's autograd forward, then the entry). Measured on
    the stack of a spy entry, counting only the package's frames (torch's `Function.apply` is not ours)."""
    from dataclasses import replace
    from pathlib import Path

    import pocl_utils
    from pocl_utils import losses, notebook as nb
    package = str(Path(pocl_utils.__file__).parent)
    chains = []

    def spy(logq, logp, beta=None):
        frame, chain = sys._getframe(1), ["<registry entry>"]
        while frame is not None:
            if frame.f_code.co_filename.startswith(package):
                chain.append(frame.f_code.co_name)
            frame = frame.f_back
        chains.append(chain[::-1])
        raise _Reached

    monkeypatch.setitem(losses.DIVERGENCES, "fkl", replace(losses.DIVERGENCES["fkl"], value_and_grad=spy))
    with pytest.raises(_Reached):
        nb.run_grid(ws, [baseline("KLD", seed=7)])
    chain = chains[0]
    print(" -> ".join(chain))
    assert chain[0] == "run_grid" and "divergence" in chain, chain
    assert chain.index("divergence") + 1 <= 8, chain  # calls from the cell: run_grid is the cell's, the 1st
    assert len(chain) <= 10, chain


def test_a_study_trains_its_missing_runs_and_judges_them_from_the_registry(ws, tmp_path):
    """experiment.study.run on the smoke workspace with scripts/temperature_residual.py's arms of KLD (one seed): every
    run lands in the registry, the tables are written, and each comparison is the difference of its two runs' Avg."""
    import argparse

    import pandas as pd

    from conftest import load_script
    from pocl_utils.data import EVAL_SETS
    from pocl_utils.experiment import study
    script = load_script("temperature_residual")
    specs = script.specs(("KLD",), 1)
    args = argparse.Namespace(profile="smoke", overrides={"workers": 1}, runs_root=ws.root.parent, out=tmp_path,
                              name="study")
    table = study.run(args, specs, families=script.families(("KLD",)))
    assert all(ws.registry.done(runner.KIND, runner.run_key(ws, s)) for s in specs)
    avg = {s.variant: np.mean([ws.registry.load(runner.KIND, runner.run_key(ws, s))["metrics"]["eval"][d]["mean"]
                               for d in EVAL_SETS]) for s in specs}
    sampled = table[table.protocol == "sampled"].set_index("claim")
    assert list(sampled.index) == ["n", "order", "alpha", "staging"]
    assert sampled.loc["order", "ours_diff"] == pytest.approx(avg["+POCL"] - avg["+POCL (random subsets)"])
    assert sampled.loc["staging", "ours_diff"] == pytest.approx(avg["+POCL (w/o ratio)"] - avg["baseline (temp. 2)"])
    written = pd.read_csv(tmp_path / "study.csv")
    assert len(written) == len(table) and (tmp_path / "study_means.md").is_file()
    means = pd.read_csv(tmp_path / "study_means.csv").query("protocol == 'sampled'").set_index("variant")
    assert means.avg.to_dict() == pytest.approx(avg) and (means.n_seeds == 1).all()
