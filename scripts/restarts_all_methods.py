"""The restarts ablation for all seven KD methods: FINDINGS' claims h and i beyond the subsets grid's KLD and GKD.

    python scripts/restarts_all_methods.py --runs-root runs --out runs/results/laptop

For each KD method, 5 seeds of its baseline, its default +POCL (n = 4, a fresh AdamW and LR schedule per stage, as
the official code) and +POCL with one optimizer and schedule across the stages (`RunSpec.restarts=False`), on the
`laptop` profile's prepared steps. Runs already in the registry (Table 1's, the subsets grid's) are reused, so after
`make reproduce` only the 25 one-schedule runs of RKL, JSD, TVD, SKL and SRKL train (about 5 minutes on 2 cores).
Writes restarts_all_methods.{csv,md}: claims h and i (findings.CLAIMS) under both protocols, Holm within each claim;
and restarts_all_methods_means.{csv,md}: each row's Avg ROUGE-L, mean and SD over the seeds.

    python scripts/restarts_all_methods.py --runs-root runs --out DIR --methods KLD --overrides '{"kd.lr": 0.0005}' \
        --name restarts_kld_lr5e-4     # the same for KLD at another KD learning rate (new run keys; steps reused)
"""
from __future__ import annotations

from pocl_utils.experiment import study
from pocl_utils.experiment.experiments import subsets_ablation


def main() -> None:
    args = study.parser(__doc__, "restarts_all_methods").parse_args()
    specs = [s for s in subsets_ablation(args.seeds, ns=(), one_schedule=tuple(args.methods))
             if s.method in args.methods]  # (the ablation always lists KLD's baseline)
    study.run(args, specs, claims=("h", "i"))


if __name__ == "__main__":
    main()
