"""The run grid of each notebook/table, as lists of RunSpec. Row labels follow the paper's tables
(`../shared/paper/README.md`), so our results join the paper's numbers on (method, variant)."""
from __future__ import annotations

from dataclasses import replace

from .config import RunSpec, baseline, pocl

OFF_POLICY = ("KLD", "RKL", "JSD", "TVD", "SKL", "SRKL")
ORACLE = "+POCL (oracle)"
ONE_SCHEDULE = "+POCL (n=4, one schedule)"
KD_METHODS = ("GKD",) + OFF_POLICY


def _seeds(n: int) -> range:
    return range(n)


def table1(n_seeds: int, methods: tuple[str, ...] = KD_METHODS) -> list[RunSpec]:
    """Table 1: SFT, SeqKD, and every KD method with and without POCL.

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    `methods`: the KD methods whose baseline and default +POCL rows are added after SFT and SeqKD.
    Returns the run specs: SFT and SeqKD baselines, then per method its baselines and its +POCL runs.
    """
    runs = [baseline(m, s) for s in _seeds(n_seeds) for m in ("SFT", "SeqKD")]
    for m in methods:
        runs += [baseline(m, s) for s in _seeds(n_seeds)] + [pocl(m, s) for s in _seeds(n_seeds)]
    return runs


def ranking_ablation(n_seeds: int) -> list[RunSpec]:
    """Tables 2 and 5: KLD+POCL with ROUGE-L-only, CE-only and fused difficulty ranking.

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    Returns the run specs: KLD's baseline, then +POCL (R-L), +POCL (Loss) and +POCL (Fusion).
    """
    labels = {"rouge_l": "+POCL (R-L)", "ce": "+POCL (Loss)", "fusion": "+POCL (Fusion)"}
    return [baseline("KLD", s) for s in _seeds(n_seeds)] + [
        pocl("KLD", s, ranking=r, variant=v) for r, v in labels.items() for s in _seeds(n_seeds)]


def adaptive_ablation(n_seeds: int) -> list[RunSpec]:
    """Tables 3 and 6: POCL with and without the tau (Eq. 3) and alpha (Eq. 4) schedules, for KLD, JSD and GKD.

    "w/o temp." keeps tau at tau_0 = 1; "w/o ratio" keeps alpha at alpha_0 = 0.3 (GKD has alpha = 0 throughout,
    so only its temperature can be removed, as in Table 6).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    Returns the run specs: for KLD and JSD the baseline, w/o temp. & ratio, w/o temp., w/o ratio and default +POCL; for
    GKD the baseline, w/o temp. and default +POCL.
    """
    runs: list[RunSpec] = []
    for m in ("KLD", "JSD"):
        runs += [baseline(m, s) for s in _seeds(n_seeds)]
        for s in _seeds(n_seeds):
            runs += [pocl(m, s, tau=(1.0, 1.0), alpha=(0.3, 0.3), variant="+POCL (w/o temp. & ratio)"),
                     pocl(m, s, tau=(1.0, 1.0), variant="+POCL (w/o temp.)"),
                     without_ratio(m, s),
                     pocl(m, s)]
    runs += [baseline("GKD", s) for s in _seeds(n_seeds)]
    runs += [r for s in _seeds(n_seeds)
             for r in (pocl("GKD", s, tau=(1.0, 1.0), variant="+POCL (w/o temp.)"), pocl("GKD", s))]
    return runs


def order_ablation(n_seeds: int, oracle: bool = False) -> list[RunSpec]:
    """Table 7 / Fig. 4a: easy->hard vs hard->easy for GKD and KLD, and two controls beyond the paper.

    The controls: random order (negative: a curriculum that knows nothing) and, on a generated world, `+POCL (oracle)`,
    the curriculum ranked by the world's true difficulty (positive: if it cannot beat the baseline, no curriculum has a
    lever here).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    `oracle`: add the `+POCL (oracle)` rows (generated worlds only: real data has no true difficulty).
    Returns the run specs, per method (GKD, then KLD): baseline, E2H, H2E, random, and oracle if asked.
    """
    labels = {"easy_to_hard": "+POCL (E2H)", "hard_to_easy": "+POCL (H2E)", "random": "+POCL (random)"}
    runs = []
    for m in ("GKD", "KLD"):
        runs += [baseline(m, s) for s in _seeds(n_seeds)]
        runs += [pocl(m, s, order=o, variant=v) for o, v in labels.items() for s in _seeds(n_seeds)]
        if oracle:
            runs += [pocl(m, s, ranking="oracle", variant=ORACLE) for s in _seeds(n_seeds)]
    return runs


HOT_BASELINE = "baseline (temp. 2)"  # the baseline at POCL's last-stage tau for the whole run (claim n)
WITHOUT_RATIO = "+POCL (w/o ratio)"


def hot_baseline(method: str, seed: int = 0) -> RunSpec:
    """The baseline trained at POCL's last-stage temperature, tau = 2, for the whole run (no curriculum).

    Returns the RunSpec, variant HOT_BASELINE.
    """
    return replace(baseline(method, seed), tau=(2.0, 2.0), variant=HOT_BASELINE)


def without_ratio(method: str, seed: int = 0) -> RunSpec:
    """+POCL with alpha held at its start value 0.3 in every stage (Table 3's "w/o ratio"; off-policy methods).

    Returns the RunSpec, variant WITHOUT_RATIO.
    """
    return pocl(method, seed, alpha=(0.3, 0.3), variant=WITHOUT_RATIO)


def temperature_ablation(n_seeds: int) -> list[RunSpec]:
    """Table 8 / Fig. 4b: tau 1->2 (default) vs 2->1 vs constant 1, for GKD and KLD; beyond the paper, for every KD
    method, the baseline trained at tau = 2 throughout (HOT_BASELINE, no curriculum) beside its baseline and its
    +POCL (tau 1->2, Table 1's run): if +POCL does not beat it, what POCL adds over its baseline is its last stage's
    temperature, not its curriculum (findings claim n).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    Returns the run specs, per method (GKD, KLD, then the other KD methods): baseline, the baseline at tau 2, then
    +POCL at each tau schedule (the other methods: at 1->2 only).
    """
    labels = {(1.0, 2.0): "+POCL (temp. 1-2)", (2.0, 1.0): "+POCL (temp. 2-1)", (1.0, 1.0): "+POCL (temp. 1-1)"}
    runs = []
    for m in KD_METHODS:  # GKD and KLD first
        schedules = labels if m in ("GKD", "KLD") else {(1.0, 2.0): labels[(1.0, 2.0)]}
        runs += [baseline(m, s) for s in _seeds(n_seeds)] + [
            hot_baseline(m, s) for s in _seeds(n_seeds)] + [
            pocl(m, s, tau=t, variant=v) for t, v in schedules.items() for s in _seeds(n_seeds)]
    return runs


def ratio_ablation(n_seeds: int) -> list[RunSpec]:
    """Table 9 / Fig. 4c: the alpha (Eq. 4) schedules, for KLD and GKD.

    For KLD: alpha 0.3->0 (off-policy default) vs 0->0.3 vs constant; for GKD its default alpha = 0 against the
    off-policy schedule 0.3->0 (the paper's Table 9 prints GKD rows too, see README A8).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    Returns the run specs: KLD's baseline and its four alpha schedules (0.3-0, 0-0.3, 0.3-0.3, 0-0), then GKD's baseline
    and its three (0-0, 0-0.3, 0.3-0).
    """
    kld = {(0.3, 0.0): "+POCL (ratio 0.3-0)", (0.0, 0.3): "+POCL (ratio 0-0.3)", (0.3, 0.3): "+POCL (ratio 0.3-0.3)",
           (0.0, 0.0): "+POCL (ratio 0-0)"}
    gkd = {(0.0, 0.0): "+POCL (ratio 0-0)", (0.0, 0.3): "+POCL (ratio 0-0.3)", (0.3, 0.0): "+POCL (ratio 0.3-0)"}
    runs = ([baseline("KLD", s) for s in _seeds(n_seeds)]
            + [pocl("KLD", s, alpha=a, variant=v) for a, v in kld.items() for s in _seeds(n_seeds)])
    runs += ([baseline("GKD", s) for s in _seeds(n_seeds)]
             + [pocl("GKD", s, alpha=a, variant=v) for a, v in gkd.items() for s in _seeds(n_seeds)])
    return runs


def subsets_ablation(n_seeds: int, ns: tuple[int, ...] = (1, 2, 4, 8),
                     one_schedule: tuple[str, ...] = ("KLD", "GKD")) -> list[RunSpec]:
    """Beyond the paper: the number of subsets n for KLD+POCL, and one schedule across the stages.

    n = 1 is POCL's schedule without a curriculum. For the `one_schedule` methods, n = 4 with one optimizer and LR
    schedule across the stages instead of a fresh one per stage (beside their baseline and default +POCL).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    `one_schedule`: the methods that also get the one-schedule run (`restarts=False`).
    Returns the run specs: KLD's baseline and +POCL (n=...) rows, then for each `one_schedule` method its baseline and
    default +POCL (unless already listed) and its one-schedule rows.
    """
    runs = [baseline("KLD", s) for s in _seeds(n_seeds)] + [
        pocl("KLD", s, n_subsets=n, variant=f"+POCL (n={n})") for n in ns for s in _seeds(n_seeds)]
    for m in one_schedule:
        beside = ([baseline(m, s) for s in _seeds(n_seeds)]
                  + [pocl(m, s, variant="+POCL (n=4)") for s in _seeds(n_seeds)])
        runs += [r for r in beside if r not in runs]  # KLD's are among the rows above when 4 is in ns
        runs += [pocl(m, s, restarts=False, variant=ONE_SCHEDULE) for s in _seeds(n_seeds)]
    return runs


# the controls of issue 23 (`controls`): labels a notebook or table can print
RANDOM_SUBSETS = "+POCL (random subsets)"
POCL_OPTIMIZER = "baseline (POCL's optimizer)"
RESTARTS = "baseline (restarts, all data)"
CONTROL_LABELS = ("baseline", "+POCL", RANDOM_SUBSETS, ORACLE, POCL_OPTIMIZER, RESTARTS, ONE_SCHEDULE)


def random_subsets(method: str, seed: int = 0) -> RunSpec:
    """+POCL's Baby Step staging and schedules on a random order of the rows instead of the measurer's.

    Returns the RunSpec, variant RANDOM_SUBSETS.
    """
    return pocl(method, seed, order="random", variant=RANDOM_SUBSETS)


def pocl_optimizer(method: str, seed: int = 0) -> RunSpec:
    """The baseline at POCL's optimizer settings: one stage on every row at POCL's batch, lr and total steps
    (`curriculum.plan_run`, control "pocl-optimizer"), at the baseline's tau and alpha. If it matches +POCL, POCL's
    gain is its optimizer settings, not its curriculum. Under paper-text it is the baseline itself.

    Returns the RunSpec, variant POCL_OPTIMIZER.
    """
    return replace(baseline(method, seed), control="pocl-optimizer", variant=POCL_OPTIMIZER)


def restarts_control(method: str, seed: int = 0) -> RunSpec:
    """The baseline with restarts at POCL's stage boundaries: POCL's n = 4 stages' steps, batch, lr, warm-up and
    fresh optimizers, every stage on every row at the baseline's tau and alpha (control "restarts"): the restarts
    without the curriculum.

    Returns the RunSpec, variant RESTARTS.
    """
    return replace(baseline(method, seed), control="restarts", variant=RESTARTS)


def controls(n_seeds: int, methods: tuple[str, ...] = ("KLD", "GKD"), oracle: bool = False,
             protocol: str | None = None) -> list[RunSpec]:
    """Issue 23's controls, which separate POCL's curriculum from its optimizer settings, restarts and schedule.

    Per method: baseline; +POCL; +POCL with random subsets (the same staging on a random order); +POCL (oracle), on a
    generated world; the baseline at POCL's optimizer settings (`pocl_optimizer`); the baseline with restarts at POCL's
    stage boundaries (`restarts_control`); POCL with one optimizer and schedule across its stages (ONE_SCHEDULE).

    `n_seeds`: training seeds per configuration (seeds 0 .. n_seeds - 1).
    `methods`: the KD methods (the issue asks KLD and GKD at least).
    `protocol`: the profile's protocol; under "paper-text" the POCL-optimizer control is left out, as its plan is the
    baseline's (same rows, steps, batch, lr and warm-up: it would train the same bits again). None = keep it.
    Returns the run specs, per method in CONTROL_LABELS' order.
    """
    runs: list[RunSpec] = []
    for m in methods:
        for build in (baseline, pocl, random_subsets,
                      *([lambda m, s: pocl(m, s, ranking="oracle", variant=ORACLE)] if oracle else []),
                      *([pocl_optimizer] if protocol != "paper-text" else []), restarts_control,
                      lambda m, s: pocl(m, s, restarts=False, variant=ONE_SCHEDULE)):
            runs += [build(m, s) for s in _seeds(n_seeds)]
    return runs


GRIDS = {"table1": table1, "ranking": ranking_ablation, "adaptive": adaptive_ablation, "order": order_ablation,
         "temperature": temperature_ablation, "ratio": ratio_ablation, "subsets": subsets_ablation}
# grids beyond the paper's tables, which `grid` and the experiment runner also run (not part of `all_runs`)
EXTRA_GRIDS = {"controls": controls}


def n_seeds_for(profile, name: str) -> int:
    """Training seeds of one experiment under a profile: Table 1 may have more (`table1_seeds`) than the ablations.

    Returns `profile.table1_seeds` for "table1" when it is set (> 0), else `profile.n_seeds`.
    """
    return profile.table1_seeds if name == "table1" and profile.table1_seeds else profile.n_seeds


# the grids a profile runs by its `grid` size (config.GRID_SIZES; a size not listed runs every grid)
GRIDS_OF_SIZE = {"table1": ("table1",), "headline": ("table1", "controls")}


def grid(name: str, n_seeds: int, size: str = "full", oracle: bool = False,
         protocol: str | None = None) -> list[RunSpec]:
    """The specs of one experiment.

    size 'minimal' (smoke) keeps KLD (and GKD in Table 1 and the controls) so every notebook runs in seconds; 'table1',
    'headline' and 'full' run the whole table (which tables a profile runs is `notebook.grids.specs_of`'s choice). The
    minimal subsets grid keeps n = 1, 2, 4 and the one-schedule run of KLD only.

    `name`: the experiment, a key of GRIDS (table1, ranking, adaptive, order, temperature, ratio, subsets) or of
    EXTRA_GRIDS (controls).
    `n_seeds`: training seeds per configuration.
    Returns the experiment's run specs.
    Raises ValueError: an unknown grid name.
    """
    if name not in GRIDS and name not in EXTRA_GRIDS:
        raise ValueError(f"unknown grid {name!r}; valid: {', '.join([*GRIDS, *EXTRA_GRIDS])}")
    if name == "controls":
        return controls(n_seeds, oracle=oracle, protocol=protocol)
    if name == "order":
        specs = order_ablation(n_seeds, oracle=oracle)
        return specs if size != "minimal" else [s for s in specs if s.method == "KLD"]
    if size != "minimal":
        return GRIDS[name](n_seeds)
    if name == "table1":
        return table1(n_seeds, methods=("GKD", "KLD"))
    if name == "subsets":
        return subsets_ablation(n_seeds, ns=(1, 2, 4), one_schedule=("KLD",))
    return [s for s in GRIDS[name](n_seeds) if s.method == "KLD"]


def all_runs(n_seeds: int, size: str = "full", oracle: bool = False) -> list[RunSpec]:
    """Every distinct run of the collection (identical specs shared between tables appear once).

    Specs are identical when their `key()` is (the variant label does not count); the first one met is kept.

    `n_seeds`: training seeds per configuration.
    `size`: the profile's grid: "table1" or "headline" = Table 1's runs only; "full" or "minimal" = every grid at that
    size.
    Returns the run specs, in grid order (GRIDS' order).
    """
    names = [name for name in GRIDS if name in GRIDS_OF_SIZE.get(size, GRIDS)]
    seen: dict = {}
    for name in names:
        for spec in grid(name, n_seeds, size, oracle=oracle):
            seen.setdefault(spec.key().__repr__(), spec)
    return list(seen.values())


# ---- the learning rate chosen per arm on validation (issue 23, item 6) ----------------------------------------------


def arm(spec: RunSpec) -> str:
    """An arm of a grid: the spec's key without its seed and lr_scale (what an lr is chosen for), as text."""
    key = replace(spec, seed=0, lr_scale=1.0).key()
    return repr(sorted(key.items()))


def lr_candidates(specs: list[RunSpec], factors: tuple[float, ...]) -> list[RunSpec]:
    """The runs that choose each arm's learning rate: the arm's seed-0 run at lr_scale = each factor.

    The seed-0 run at the chosen factor is then one of the arm's seeds already (the same key), so the choice costs
    len(factors) - 1 runs per arm.

    Returns one spec per arm and factor, in the grid's order of arms.
    """
    firsts: dict[str, RunSpec] = {}
    for s in specs:
        firsts.setdefault(arm(s), replace(s, seed=0, lr_scale=1.0))
    return [replace(s, lr_scale=float(f)) for s in firsts.values() for f in factors]


def chosen_lrs(pairs: list[tuple[RunSpec, dict]]) -> list[dict]:
    """Each arm's learning rate chosen on validation: the candidate whose best checkpoint's selection score (the
    record's metrics.train.best, higher is better: validation ROUGE-L or minus the validation loss) is highest. The
    eval sets play no part. Ties go to the first candidate.

    `pairs`: (candidate spec, its registry record) of `lr_candidates`' finished runs.
    Returns one row per arm and candidate: method, variant, arm, lr_scale, lr (the run's peak lr, its first stage's),
    valid (the selection score) and chosen (True on the arm's pick).
    """
    rows = [{"method": s.method, "variant": s.variant or ("+POCL" if s.pocl else "baseline"), "arm": arm(s),
             "lr_scale": s.lr_scale, "lr": rec["metrics"]["train"]["stages"][0].get("lr"),
             "valid": rec["metrics"]["train"]["best"], "chosen": False} for s, rec in pairs]
    best: dict[str, dict] = {}
    for r in rows:
        if r["valid"] is not None and (r["arm"] not in best or r["valid"] > best[r["arm"]]["valid"]):
            best[r["arm"]] = r
    for r in best.values():
        r["chosen"] = True
    return rows


def with_chosen_lr(specs: list[RunSpec], table: list[dict]) -> list[RunSpec]:
    """The grid's runs at their arm's chosen lr_scale (`chosen_lrs`).

    `table`: `chosen_lrs`' rows.
    Returns the specs with lr_scale set to their arm's choice.
    Raises ValueError: an arm of `specs` without a chosen rate.
    """
    pick = {r["arm"]: r["lr_scale"] for r in table if r["chosen"]}
    missing = sorted({s.label for s in specs if arm(s) not in pick})
    if missing:
        raise ValueError(f"no learning rate chosen for: {', '.join(missing)}")
    return [replace(s, lr_scale=pick[arm(s)]) for s in specs]
