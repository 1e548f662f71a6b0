"""The two training protocols (issue 23): each stage's rows, batch, epochs, steps, lr, warm-up, tau and alpha against
hand-worked examples from the official scripts' numbers and from the code of run 3; the controls' plans; checkpoint
candidates; the lr choice."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from pocl_utils.curriculum import (OFFICIAL_BASELINE_ALPHA, Protocol, format_plan, plan_rows, plan_run, plan_stages,
                                   split_steps)
from pocl_utils.experiment import experiments
from pocl_utils.experiment.config import (PROFILES, ConfigError, RunSpec, baseline, get_profile, pocl, protocol_key,
                                          protocol_of)
from pocl_utils.experiment.training_run import check_points, stages_for
from pocl_utils.training.loop import total_steps

# The official scripts (liuliuyuan6/POCL at f034fd3): kd_base.sh 20 epochs at global batch 2 x 4 = 8, lr 5e-4; each
# stage t0-t3.sh 8 epochs at 16 x 4 = 64, lr 1e-4; ~11.3k training rows (t2's checkpoint 1064 = 8 x 133 steps).
OFFICIAL = Protocol("official", epochs=20, batch=8, lr=5e-4, warmup_frac=0.05, stage_warmup=True)  # warm-up ignored
N = 11_300


def _pocl(protocol: Protocol, n: int = N, **kw) -> list:
    return plan_run(np.arange(n), protocol, pocl=True, n_subsets=4, tau=(1.0, 2.0), alpha=(0.3, 0.0), **kw)


def test_official_stage_plan_hand_worked_from_the_scripts():
    stages = _pocl(OFFICIAL)
    # d1..d4 are 2825 rows each; stage i trains on the first i of them
    assert [len(s.samples) for s in stages] == [2825, 5650, 8475, 11300]
    assert [s.batch for s in stages] == [64] * 4  # 8 x b
    assert [s.lr for s in stages] == pytest.approx([1e-4] * 4)  # eta / 5
    assert [s.warmup for s in stages] == [0] * 4  # --warmup-iters 0
    assert all(s.restart for s in stages)  # four launches, each resuming the weights only
    # steps_i = ceil(8 epochs x rows_i / 64): 353.1 -> 354, 706.25 -> 707, 1059.4 -> 1060, 1412.5 -> 1413. (The
    # scripts count 8 x ceil(rows / 64) per epoch, 8 x 133 = 1064 for t2; our batch stream draws across epochs.)
    assert [s.steps for s in stages] == [354, 707, 1060, 1413]
    assert [s.epochs for s in stages] == pytest.approx([8.0] * 4, abs=0.03)
    assert [s.alpha for s in stages] == pytest.approx([0.3, 0.2, 0.1, 0.0])  # kd-ratio 0.7 / 0.8 / 0.9 / 1.0
    assert [s.tau for s in stages] == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])  # --temperature-kld 1 / 1.33 / 1.67 / 2
    base = plan_run(np.arange(N), OFFICIAL, pocl=False, n_subsets=4, tau=(1.0, 1.0), alpha=(0.0, 0.0))
    assert [(len(s.samples), s.batch, s.steps, s.lr, s.warmup) for s in base] == [(N, 8, 28_250, 5e-4, 0)]  # 20 x N / 8
    assert 28_250 / sum(s.steps for s in stages) == pytest.approx(8.0, abs=0.01)  # ~8x fewer steps than the baseline
    assert OFFICIAL_BASELINE_ALPHA == 0.0  # kd_base.sh --kd-ratio 1.0


def test_paper_text_plan_is_the_code_of_run_3():
    # run 3's laptop: 8 epochs at batch 32, lr 3e-3, 5% warm-up at every stage's restart; 2,500 rows -> 625 steps
    run3 = Protocol("paper-text", epochs=8, batch=32, lr=3e-3, warmup_frac=0.05, stage_warmup=True)
    stages = _pocl(run3, 2500)
    # 625 x (1, 2, 3, 4) / 10 = 62.5, 125, 187.5, 250: the first of the two tied remainders gets the spare step
    assert [s.steps for s in stages] == [63, 125, 187, 250]
    assert [s.warmup for s in stages] == [3, 6, 9, 12]  # int(0.05 x steps), as optimizer_for did
    assert [(s.batch, s.lr, s.restart) for s in stages] == [(32, 3e-3, True)] * 4
    old = plan_stages(np.arange(2500), n_subsets=4, total_steps=625, tau=(1.0, 2.0), alpha=(0.3, 0.0))
    assert [(s.samples.tolist(), s.tau, s.alpha, s.steps) for s in stages] == [
        (s.samples.tolist(), s.tau, s.alpha, s.steps) for s in old]
    base = plan_run(np.arange(2500), run3, pocl=False, n_subsets=4, tau=(1.0, 1.0), alpha=(0.3, 0.3))
    assert [(s.steps, s.batch, s.lr, s.warmup, s.alpha) for s in base] == [(625, 32, 3e-3, 31, 0.3)]
    # the switch off: one warm-up per run, the baseline's 31 steps, in the first stage; restarts go straight to the peak
    once = _pocl(Protocol("paper-text", 8, 32, 3e-3, 0.05, stage_warmup=False), 2500)
    assert [s.warmup for s in once] == [31, 0, 0, 0] and [s.steps for s in once] == [63, 125, 187, 250]
    one = _pocl(Protocol("paper-text", 8, 32, 3e-3, 0.05, stage_warmup=True), 2500, restarts=False)
    assert [(s.warmup, s.restart) for s in one] == [(31, True), (0, False), (0, False), (0, False)]


def test_controls_plans_hand_worked():
    kw = dict(pocl=False, n_subsets=4, tau=(1.0, 1.0), alpha=(0.0, 0.0))
    opt = plan_run(np.arange(N), OFFICIAL, control="pocl-optimizer", **kw)
    # one stage on every row at POCL's batch 64, lr 1e-4 and 354 + 707 + 1060 + 1413 steps
    assert [(len(s.samples), s.batch, s.lr, s.steps, s.warmup) for s in opt] == [(N, 64, 1e-4, 3534, 0)]
    rst = plan_run(np.arange(N), OFFICIAL, control="restarts", **kw)
    assert [len(s.samples) for s in rst] == [N] * 4  # every stage on all data
    assert [(s.steps, s.batch, s.lr, s.warmup, s.restart) for s in rst] == [
        (k, 64, 1e-4, 0, True) for k in (354, 707, 1060, 1413)]
    assert {(s.tau, s.alpha) for s in rst} == {(1.0, 0.0)}  # the baseline's: no schedules either
    paper_text = Protocol("paper-text", 8, 32, 3e-3, 0.05, stage_warmup=True)
    same = plan_run(np.arange(2500), paper_text, control="pocl-optimizer", **kw)
    base = plan_run(np.arange(2500), paper_text, **kw)
    assert [(s.steps, s.batch, s.lr, s.warmup) for s in same] == [(s.steps, s.batch, s.lr, s.warmup) for s in base]
    with pytest.raises(ValueError, match="control"):
        plan_run(np.arange(8), OFFICIAL, pocl=True, n_subsets=2, tau=(1, 2), alpha=(0, 0), control="restarts")


def test_plan_table_prints_every_setting():
    rows = plan_rows(_pocl(OFFICIAL))
    assert rows[-1]["stage"] == "total" and rows[-1]["steps"] == 3534
    assert rows[-1]["epochs"] == pytest.approx(3534 * 64 / N)  # 20 epoch-equivalents of compute
    text = format_plan(_pocl(OFFICIAL))
    header = text.splitlines()[0].split()
    assert header == ["stage", "rows", "batch", "epochs", "steps", "lr", "warmup", "restart", "tau", "alpha"]
    assert text.splitlines()[1].split()[:5] == ["1", "2825", "64", "8.02", "354"]


def _fake_ws(profile, n: int = 400):
    """What stages_for reads: the profile, and a ranking that lists the training rows (dataset index 1000 + k)."""
    encoded = [SimpleNamespace(index=1000 + k) for k in range(n)]
    ranking = SimpleNamespace(order=lambda name: np.array([1000 + k for k in range(n)][::-1]))
    return SimpleNamespace(profile=profile, ranking=ranking), encoded


def test_stages_for_applies_the_profile_protocol():
    ws, enc = _fake_ws(get_profile("laptop-run3"))
    stages = stages_for(ws, pocl("KLD"), enc)
    steps = total_steps(len(enc), ws.profile.kd)  # run 3: the baseline's 100 steps shared out by size
    assert [s.steps for s in stages] == split_steps(steps, [100, 200, 300, 400]) == [10, 20, 30, 40]
    assert [s.warmup for s in stages] == [int(0.05 * k) for k in (10, 20, 30, 40)]
    assert stages[0].samples.tolist() == list(range(399, 299, -1))  # positions of the ranking's easiest 100
    official = get_profile("laptop-run3", {"protocol": "official"})
    ws, enc = _fake_ws(official)
    kld = stages_for(ws, baseline("KLD"), enc)
    assert [(s.alpha, s.batch, s.lr, s.steps) for s in kld] == [(0.0, 32, 3e-3, 100)]  # alpha 0 under official
    assert stages_for(ws, baseline("SFT"), enc)[0].alpha == 1.0
    scaled = stages_for(ws, pocl("KLD", lr_scale=0.5), enc)
    assert [s.lr for s in scaled] == pytest.approx([3e-3 / 5 * 0.5] * 4)
    assert [s.batch for s in scaled] == [256] * 4
    # 0.4 x 8 = 3.2 epochs of 100, 200, 300, 400 rows at batch 256
    assert [s.steps for s in scaled] == [math.ceil(3.2 * r / 256) for r in (100, 200, 300, 400)] == [2, 3, 4, 5]


def test_check_points_even_gives_every_arm_the_same_candidates():
    ws, enc = _fake_ws(get_profile("laptop-run3", {"protocol": "official"}))
    for spec in (baseline("KLD"), pocl("KLD"), pocl("KLD", n_subsets=8), experiments.restarts_control("KLD")):
        stages = stages_for(ws, spec, enc)
        points = check_points(stages, 4, "even")
        assert len(points) == 4
        total = sum(s.steps for s in stages)
        last = stages[-1]
        assert (last.index, last.steps - 1) in points  # the end is a candidate
        ends = np.cumsum([0] + [s.steps for s in stages])
        glob = sorted(int(ends[i - 1]) + k + 1 for i, k in points)
        assert glob == [math.ceil(total * (j + 1) / 4) for j in range(4)]
    stages = stages_for(ws, pocl("KLD", n_subsets=8), enc)
    assert len(check_points(stages, 4, "stage-ends")) == 8  # run 3's rule: as many candidates as stages


def test_profiles_protocol_settings():
    run3 = PROFILES["laptop-run3"]
    assert (run3.protocol, run3.stage_warmup, run3.select_metric, run3.select_points) == (
        "paper-text", True, "rouge", "stage-ends")
    assert protocol_key(run3) == {} and run3.world == "laptop"  # run 3's run keys and world unchanged
    laptop = PROFILES["laptop"]  # issue 23's final grid: world v6, official first, Table 1 and controls under both
    assert (laptop.world, laptop.protocol, laptop.protocols) == ("laptop-v6", "official", ("official", "paper-text"))
    run6, run5, run4 = (PROFILES[f"laptop-run{i}"] for i in (6, 5, 4))  # the earlier references keep their worlds
    assert (run6.world, run5.world, run4.world) == ("laptop-v5", "laptop-v4", "laptop-v4")
    assert replace(run5, name="laptop", world="laptop-v6") == laptop and run4.student.n_embd == 48
    assert replace(run6, name="laptop", world="laptop-v6") == laptop
    assert (laptop.stage_warmup, laptop.select_metric, laptop.select_points) == (False, "loss", "even")
    assert protocol_key(PROFILES["smoke"]) != {}
    paper = PROFILES["paper"]
    assert paper.protocol == "official" and protocol_of(paper) == Protocol("official", 20, 8, 5e-4, 0.0, False)
    assert PROFILES["smoke"].stage_warmup is False  # paper-text's per-stage warm-up is off unless a profile pins it
    for key, bad in (("protocol", "scripts"), ("select_metric", "bleu"), ("select_points", "odd"),
                     ("lr_factors", [1.0, 0.0])):
        with pytest.raises(ConfigError, match=key):
            get_profile("smoke", {key: bad})


def test_runspec_controls_and_keys():
    assert "control" not in baseline("KLD").key() and "lr_scale" not in baseline("KLD").key()
    assert experiments.pocl_optimizer("KLD").key()["control"] == "pocl-optimizer"
    for bad in (dict(method="KLD", pocl=True, control="restarts"), dict(method="SFT", control="restarts"),
                dict(method="KLD", control="warmup"), dict(method="KLD", lr_scale=0.0)):
        with pytest.raises(ConfigError):
            RunSpec(**bad)


def test_controls_grid():
    specs = experiments.grid("controls", 5, oracle=True, protocol="official")
    assert {s.method for s in specs} == {"KLD", "GKD"} and {s.seed for s in specs} == set(range(5))
    labels = [s.variant for s in specs if s.method == "KLD" and s.seed == 0]
    assert labels == list(experiments.CONTROL_LABELS)
    by = {s.variant: s for s in specs if s.method == "GKD" and s.seed == 0}
    assert by[experiments.RANDOM_SUBSETS].order == "random" and by[experiments.RANDOM_SUBSETS].pocl
    assert by["+POCL (oracle)"].ranking == "oracle"
    assert by[experiments.ONE_SCHEDULE].restarts is False and by[experiments.ONE_SCHEDULE].pocl
    assert by[experiments.POCL_OPTIMIZER].control == "pocl-optimizer" and not by[experiments.POCL_OPTIMIZER].pocl
    assert by[experiments.RESTARTS].control == "restarts" and by[experiments.RESTARTS].alpha == (0.0, 0.0)
    text = experiments.grid("controls", 5, protocol="paper-text")
    assert experiments.POCL_OPTIMIZER not in {s.variant for s in text}  # the baseline itself under paper-text
    assert "+POCL (oracle)" not in {s.variant for s in text}
    assert len({s.key().__repr__() for s in specs}) == len(specs)


def test_lr_choice_picks_each_arm_on_validation():
    specs = [baseline("KLD", s) for s in range(3)] + [pocl("KLD", s) for s in range(3)]
    cands = experiments.lr_candidates(specs, (5.0, 1.0, 0.5))
    assert [(c.pocl, c.seed, c.lr_scale) for c in cands] == [
        (False, 0, 5.0), (False, 0, 1.0), (False, 0, 0.5), (True, 0, 5.0), (True, 0, 1.0), (True, 0, 0.5)]
    valid = {(False, 5.0): -2.0, (False, 1.0): -1.5, (False, 0.5): -1.7, (True, 5.0): -1.2, (True, 1.0): -1.3,
             (True, 0.5): None}
    recs = [(c, {"metrics": {"train": {"best": valid[c.pocl, c.lr_scale], "stages": [{"lr": c.lr_scale}]}}})
            for c in cands]
    table = experiments.chosen_lrs(recs)
    assert [(r["variant"], r["lr_scale"]) for r in table if r["chosen"]] == [("baseline", 1.0), ("+POCL", 5.0)]
    at = experiments.with_chosen_lr(specs, table)
    assert [s.lr_scale for s in at] == [1.0] * 3 + [5.0] * 3 and [s.seed for s in at] == [0, 1, 2] * 2
    with pytest.raises(ValueError, match="no learning rate"):
        experiments.with_chosen_lr([pocl("GKD")], table)


def _plan_ws(tmp_path, profile, n: int = 400):
    """A Workspace whose training rows and ranking are set in memory (what protocol_plans reads)."""
    from pocl_utils.experiment.workspace import Workspace
    ws = Workspace(profile, tmp_path)
    fake, enc = _fake_ws(profile, n)
    ws.__dict__.update(_encoded={"train": enc}, ranking=fake.ranking)
    return ws


def test_protocol_plans_hand_worked(tmp_path):
    """notebook 05's table: run 3's laptop settings (E 8, b 32, eta 3e-3, 5% warm-up per stage) on 400 rows."""
    from pocl_utils.notebook import grids
    t = grids.protocol_plans(_plan_ws(tmp_path, get_profile("laptop-run3")))
    assert list(t.protocol.drop_duplicates()) == ["official", "paper-text"]

    def plan(protocol, run):
        rows = t[(t.protocol == protocol) & (t.run == run) & (t.stage != "total")]
        return [(r.rows, r.batch, r.steps, r.lr, r.warmup, r.alpha) for r in rows.itertuples()]
    # official: baseline 8 x 400 / 32 = 100 steps at alpha 0; stages 3.2 epochs at batch 256, lr 3e-3 / 5, no warm-up
    assert plan("official", "baseline") == [(400, 32, 100, 3e-3, 0, 0.0)]
    assert plan("official", "+POCL") == [(r, 256, s, pytest.approx(6e-4), 0, a) for r, s, a in
                                         ((100, 2, 0.3), (200, 3, pytest.approx(0.2)), (300, 4, pytest.approx(0.1)),
                                          (400, 5, 0.0))]
    assert plan("official", experiments.POCL_OPTIMIZER) == [(400, 256, 14, pytest.approx(6e-4), 0, 0.0)]
    assert plan("official", experiments.RESTARTS) == [(400, 256, s, pytest.approx(6e-4), 0, 0.0) for s in (2, 3, 4, 5)]
    # paper-text (run 3): the baseline's 100 steps shared by size, a 5% warm-up at every stage
    assert plan("paper-text", "baseline") == [(400, 32, 100, 3e-3, 5, 0.3)]
    assert [(r[0], r[2], r[4]) for r in plan("paper-text", "+POCL")] == [(100, 10, 0), (200, 20, 1), (300, 30, 1),
                                                                         (400, 40, 2)]
    assert plan("paper-text", experiments.POCL_OPTIMIZER) == plan("paper-text", "baseline")
    total = t[(t.protocol == "official") & (t.run == "+POCL") & (t.stage == "total")].iloc[0]
    assert total.steps == 14 and total.epochs == pytest.approx(14 * 256 / 400)


def test_protocols_of_puts_the_headline_first_and_checks_names(tmp_path):
    from pocl_utils.experiment.workspace import Workspace
    from pocl_utils.notebook import grids
    assert grids.protocols_of(get_profile("smoke", {"protocols": []})) == ("paper-text",)  # () = protocol alone
    assert grids.protocols_of(get_profile("smoke")) == ("paper-text", "official")
    both = get_profile("smoke", {"protocol": "official", "protocols": ["paper-text", "official"]})
    assert grids.protocols_of(both) == ("official", "paper-text")
    with pytest.raises(ConfigError, match="protocols"):
        get_profile("smoke", {"protocols": ["official", "scripts"]})
    # the controls grid of each protocol: the POCL-optimizer arm only where it differs from the baseline
    ws = Workspace(both, tmp_path)
    labels = {p: {s.variant for s in grids.specs_of(grids.under_protocol(ws, p), "controls")}
              for p in grids.protocols_of(both)}
    assert experiments.POCL_OPTIMIZER in labels["official"] and experiments.POCL_OPTIMIZER not in labels["paper-text"]
    assert grids.under_protocol(ws, "paper-text").profile.protocol == "paper-text" and ws.profile.protocol == "official"


def test_headline_grid_runs_table1_and_the_controls_only(tmp_path):
    """laptop's main job (grid 'headline') runs Table 1 and the controls; the paper's ablations are a study
    (scripts/ablations.py, grid 'full'); 'table1' (classroom) runs Table 1 alone."""
    from pocl_utils.experiment.workspace import Workspace
    from pocl_utils.notebook import grids
    head = Workspace(get_profile("laptop"), tmp_path)
    assert PROFILES["laptop"].grid == "headline"
    assert {name for name in [*experiments.GRIDS, "controls"] if grids.specs_of(head, name)} == {"table1", "controls"}
    full = Workspace(get_profile("laptop", {"grid": "full"}), tmp_path)
    assert all(grids.specs_of(full, name) for name in experiments.GRIDS)
    assert grids.specs_of(full, "table1") == grids.specs_of(head, "table1")  # the same runs, so the study reuses them
    one = Workspace(get_profile("classroom"), tmp_path)
    assert [name for name in [*experiments.GRIDS, "controls"] if grids.specs_of(one, name)] == ["table1"]
    with pytest.raises(ConfigError, match="grid"):
        get_profile("smoke", {"grid": "most"})
