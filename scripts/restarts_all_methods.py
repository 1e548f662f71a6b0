"""The restarts ablation for all seven KD methods: FINDINGS' claims h and i beyond the subsets grid's KLD and GKD.

    python scripts/restarts_all_methods.py --runs-root runs --out runs/results/laptop

For each KD method, 5 seeds of its baseline, its default +POCL (n = 4, a fresh AdamW and LR schedule per stage, as
the official code) and +POCL with one optimizer and schedule across the stages (`RunSpec.restarts=False`), on the
`laptop` profile's prepared steps. Runs already in the registry (Table 1's, the subsets grid's) are reused, so after
`make reproduce` only the 25 one-schedule runs of RKL, JSD, TVD, SKL and SRKL train (about 5 minutes on 2 cores).
Writes restarts_all_methods.{csv,md}: claims h and i (findings.CLAIMS) under both protocols, Holm within each claim.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pocl_utils.analysis import findings, tables
from pocl_utils.experiment.experiments import KD_METHODS, subsets_ablation
from pocl_utils.experiment.pipeline import prepare
from pocl_utils.experiment.pool import run_grid
from pocl_utils.experiment.runner import records_for


def restarts_table(records: list, claims: tuple[str, ...] = ("h", "i")) -> pd.DataFrame:
    """Claims h and i judged on `records` under both protocols.

    Args:
        records: (spec, record) pairs of finished runs (`runner.records_for`).
        claims: the claim ids to keep.

    Returns:
        findings.claim_table's rows of those claims, with the column protocol ("sampled" or "greedy").
    """
    parts = [findings.claim_table(tables.tidy(records, protocol)).assign(protocol=protocol)
             for protocol in tables.PROTOCOLS]
    table = pd.concat(parts, ignore_index=True)
    return table[table.claim.isin(claims)].reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--runs-root", type=Path, default=Path("runs"), help="folder holding <profile>/")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True, help="folder for restarts_all_methods.{csv,md}")
    args = ap.parse_args()
    ws = prepare(args.profile, runs_root=args.runs_root)
    specs = subsets_ablation(args.seeds, ns=(4,), one_schedule=KD_METHODS)
    run_grid(ws, specs)
    table = restarts_table(records_for(ws, specs))
    path = tables.save_table(table, "restarts_all_methods", args.out)
    print(table[["claim", "comparison", "protocol", "ours_diff", "ci95", "p_holm", "verdict"]].to_string())
    print(f"written: {path} (and .md)")


if __name__ == "__main__":
    main()
