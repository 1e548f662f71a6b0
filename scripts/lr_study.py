"""Issue 23, item 6: Table 1 with each arm's learning rate chosen on validation, a study run after the main job in the
same workspace (the seed-0 runs at factor 1 are the main job's, so they are not trained again).

    python scripts/lr_study.py [--profile laptop] [--protocols official paper-text] [--factors 5 1 0.5]

For each training protocol, `python -m pocl_utils.experiment.job --grid table1` with the override `lr_factors`: each
arm (method x variant) trains seed 0 at the protocol's lr times each factor, keeps the one whose best checkpoint has
the best validation score (the eval sets play no part, `experiments.chosen_lrs`), and trains its other seeds at that
rate. `valid` in the chosen-rate table is the selection score (higher is better: minus the validation loss under
`select_metric = "loss"`). Writes, per protocol, under <runs root>/results/<profile>/lr_per_arm/: the job's results
CSV, the chosen rates (`table1_<protocol>_lr.csv` / `.md`) and +POCL - baseline at the chosen rates
(`table1_<protocol>_paired.csv` / `.md`, Avg ROUGE-L, sampled, paired by seed). Prints the study's wall time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pocl_utils.analysis.tables import paired_to, save_table
from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.job import run_job
from pocl_utils.experiment.workspace import RUNS_ROOT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--protocols", nargs="+", default=None, help="default: the profile's protocols")
    ap.add_argument("--factors", nargs="+", type=float, default=[5.0, 1.0, 0.5])
    ap.add_argument("--runs-root", type=Path, default=None,
                    help="as pocl-reproduce's (default: $POCL_RUNS_DIR, else ./runs)")
    a = ap.parse_args(argv)
    p = get_profile(a.profile)
    root = a.runs_root or RUNS_ROOT
    out = root / "results" / p.name / "lr_per_arm"
    t0 = time.time()
    for protocol in a.protocols or (p.protocol, *[q for q in p.protocols if q != p.protocol]):
        csv = run_job(a.profile, "table1", runs_root=root, protocol=protocol, out=out / f"table1_{protocol}.csv",
                      overrides={"lr_factors": list(a.factors)})
        chosen = pd.read_csv(csv.with_name(f"{csv.stem}_lr.csv")).drop(columns=["arm"])
        chosen = chosen.rename(columns={"lr": "lr (1e-3)"}).assign(**{"lr (1e-3)": chosen["lr"] * 1e3})  # peak lr
        save_table(chosen, f"table1_{protocol}_lr", out)
        save_table(paired_to(pd.read_csv(csv), refs=("baseline",)), f"table1_{protocol}_paired", out)
        print(f"[lr study] {protocol}: {(time.time() - t0) / 60:.1f} min so far; tables in {out}")
    print(f"lr study of {a.profile!r}: {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
