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

import argparse
import json
from pathlib import Path

import pandas as pd

from pocl_utils.analysis import findings, tables
from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.experiments import KD_METHODS, subsets_ablation
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.pool import run_grid
from pocl_utils.experiment.runner import records_for


def means_table(records: list) -> pd.DataFrame:
    """Each (method, variant)'s Avg ROUGE-L over the five sets, mean and SD over seeds, under both protocols.

    Args:
        records: (spec, record) pairs of finished runs (`runner.records_for`).

    Returns:
        A frame with columns protocol, method, variant, avg (mean over seeds of the per-seed Avg), sd and n_seeds.
    """
    parts = []
    for protocol in tables.PROTOCOLS:
        per_seed = tables.tidy(records, protocol).groupby(["method", "variant", "seed"]).rouge_l.mean()
        stats = per_seed.groupby(["method", "variant"]).agg(avg="mean", sd="std", n_seeds="count").reset_index()
        parts.append(stats.assign(protocol=protocol))
    return pd.concat(parts, ignore_index=True)[["protocol", "method", "variant", "avg", "sd", "n_seeds"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--runs-root", type=Path, default=Path("runs"), help="folder holding <profile>/")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True, help="folder for <name>.{csv,md}")
    ap.add_argument("--name", default="restarts_all_methods", help="the tables' file stem")
    ap.add_argument("--methods", nargs="+", default=list(KD_METHODS), choices=KD_METHODS)
    ap.add_argument("--overrides", type=json.loads, default={}, help="""profile overrides, e.g. '{"kd.lr": 0.0005}'""")
    args = ap.parse_args()
    ws = prepare(get_profile(args.profile, args.overrides), runs_root=args.runs_root)
    specs = [s for s in subsets_ablation(args.seeds, ns=(), one_schedule=tuple(args.methods))
             if s.method in args.methods]  # (the ablation always lists KLD's baseline)
    run_grid(ws, specs)
    records = records_for(ws, specs)
    table = findings.claims_by_protocol(records, claims=("h", "i"))
    path = tables.save_table(table, args.name, args.out)
    tables.save_table(means_table(records), f"{args.name}_means", args.out)
    print(table[["claim", "comparison", "protocol", "ours_diff", "ci95", "p_holm", "verdict"]].to_string())
    print(f"written: {path} (and .md, and {args.name}_means)")


if __name__ == "__main__":
    main()
