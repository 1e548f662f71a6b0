"""What +POCL keeps over its baseline trained at tau = 2 (claim n): the measurer's order, the alpha schedule, or the
staging. A study on a finished workspace, under one training protocol.

    python scripts/temperature_residual.py --runs-root study --protocol paper-text \
        --out results/laptop/ablations_paper-text

+POCL differs from the baseline at tau = 2 throughout (`experiments.hot_baseline`, no curriculum) in three things:
the measurer's easy->hard order, Baby Step's staging with its rising tau, and alpha falling 0.3 -> 0 (off-policy).
Two arms per KD method take one of them away:

    +POCL (random subsets)   the same staging and schedules on a random order    +POCL - it: the order's part
    +POCL (w/o ratio)        alpha held at 0.3, as the tau = 2 baseline holds it  +POCL - it: the alpha schedule's part
                                                                                   it - baseline (temp. 2): the staging
                                                                                   with its tau ramp, alpha equal

Runs already in the registry (Table 1's, the controls', the ablations study's) are reused: after the paper-text
ablations study only the random-subset runs of RKL, JSD, TVD, SKL, SRKL and the w/o-ratio runs of RKL, TVD, SKL, SRKL
train (45 runs). Writes <name>.{csv,md}: the four comparisons below for every method that has the runs, under both
evaluation protocols, Holm within each family; and <name>_means.{csv,md}: each arm's Avg ROUGE-L, mean and SD.
"""
from __future__ import annotations

from pocl_utils.analysis import findings
from pocl_utils.experiment import study
from pocl_utils.experiment.config import baseline, pocl
from pocl_utils.experiment.experiments import (HOT_BASELINE, OFF_POLICY, RANDOM_SUBSETS, WITHOUT_RATIO, hot_baseline,
                                               random_subsets, without_ratio)


def specs(methods: tuple[str, ...], n_seeds: int) -> list:
    """Per method: its baseline, +POCL, the baseline at tau = 2, +POCL on random subsets and (off-policy) +POCL with
    alpha held at 0.3, seeds 0 .. n_seeds - 1."""
    arms = (baseline, pocl, hot_baseline, random_subsets, without_ratio)
    return [build(m, s) for m in methods for build in arms if build is not without_ratio or m in OFF_POLICY
            for s in range(n_seeds)]


def families(methods: tuple[str, ...]) -> dict:
    """The study's comparisons, shaped as findings.CLAIMS (a positive difference: the second arm is better)."""
    def comps(base, other):
        return [("controls", (m, base), (m, other)) for m in methods]
    return {
        "n": (findings.CLAIMS["n"][0], comps(HOT_BASELINE, "+POCL")),
        "order": ("+POCL beats the same staging and schedules on random subsets (the measurer's order)",
                  comps(RANDOM_SUBSETS, "+POCL")),
        "alpha": ("+POCL beats +POCL with alpha held at 0.3 (the alpha schedule)", comps(WITHOUT_RATIO, "+POCL")),
        "staging": ("+POCL with alpha held at 0.3 beats the baseline at tau = 2 (Baby Step's staging and tau ramp, "
                    "alpha equal)", comps(HOT_BASELINE, WITHOUT_RATIO)),
    }


def main() -> None:
    ap = study.parser(__doc__, "temperature_residual")
    ap.add_argument("--protocol", default="paper-text", help="the training protocol of every run")
    args = ap.parse_args()
    args.overrides = {**args.overrides, "protocol": args.protocol}
    study.run(args, specs(tuple(args.methods), args.seeds), families=families(tuple(args.methods)))


if __name__ == "__main__":
    main()
