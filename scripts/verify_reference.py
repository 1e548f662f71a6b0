"""Does this machine, with this code, reproduce a published reference run? Re-trains a random sample of the runs in
results/<profile>/runs.csv and compares every score, sampled and greedy, for exact equality.

    python scripts/verify_reference.py [--profile laptop] [--runs 10] [--seed 0] [--runs-root DIR] [--results DIR]

The profile's workspace is prepared as the main job prepares it, with the profile's `prepare_threads` (the first
time, notebook 00's minutes; later it is found), then its prepared steps are copied to a temporary folder with an empty run registry, so every sampled run
trains again instead of being read back. A run is found by its key among the grids runs.csv names (its `grid`
column) under each training protocol it names (`training`). Prints one line per run and exits 0 when every score
equals the published one, 1 when one differs (a changed float path: the reference no longer regenerates bitwise),
2 when no run of runs.csv is found in this profile's grids (another profile, or settings that changed the keys).
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pocl_utils.experiment import pipeline, runner
from pocl_utils.experiment.config import get_profile
from pocl_utils.experiment.results import REPO_ROOT
from pocl_utils.experiment.workspace import STEPS
from pocl_utils.notebook import grids


def published_runs(ws, runs: pd.DataFrame) -> list[tuple]:
    """(workspace under the run's training protocol, RunSpec, run key) of every run of `runs` found in the
    profile's grids, once per key."""
    found, published = {}, set(runs.run_key)
    for (training, grid), _ in runs.groupby(["training", "grid"]):
        w = grids.under_protocol(ws, training)
        for spec in grids.specs_of(w, grid):
            key = runner.run_key(w, spec)
            if key in published:
                found.setdefault(key, (w, spec, key))
    return list(found.values())


def compare(rec: dict, published: pd.DataFrame) -> float:
    """The largest |difference| between a record's sampled and greedy means and the published rows (0.0 = equal)."""
    ref = published.drop_duplicates("dataset").set_index("dataset")
    diffs = [abs(v["mean"] - ref.loc[d, "rouge_l"]) for d, v in rec["metrics"]["eval"].items()]
    diffs += [abs(v["mean"] - ref.loc[d, "greedy_rouge_l"]) for d, v in rec["metrics"].get("greedy", {}).items()
              if "greedy_rouge_l" in ref and pd.notna(ref.loc[d, "greedy_rouge_l"])]
    return max(diffs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--runs", type=int, default=10, help="how many runs to re-train")
    ap.add_argument("--seed", type=int, default=0, help="the sample's seed")
    ap.add_argument("--runs-root", type=Path, default=None, help="where the workspace is prepared (default ./runs)")
    ap.add_argument("--results", type=Path, default=None, help="the folder of runs.csv (default results/<profile>)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # as each grid worker trains (prepare pins its own count)
    runs = pd.read_csv((a.results or REPO_ROOT / "results" / a.profile) / "runs.csv")
    ws = pipeline.prepare(get_profile(a.profile), runs_root=a.runs_root, log=lambda s: None)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / ws.root.name
        for step in STEPS:  # the prepared steps, not the registry
            if (ws.root / step).exists():
                shutil.copytree(ws.root / step, fresh / step)
        ws = pipeline.prepare(get_profile(a.profile), runs_root=Path(tmp), log=lambda s: None)
        found = published_runs(ws, runs)
        if not found:
            print(f"no run of runs.csv is among profile {a.profile!r}'s grids (other settings or another profile)")
            return 2
        sample = random.Random(a.seed).sample(found, min(a.runs, len(found)))
        print(f"{len(found)} published runs found; re-training {len(sample)}")
        worst = 0.0
        for w, spec, key in sample:
            t0 = time.time()
            diff = compare(runner.execute(w, spec, torch.device("cpu")), runs[runs.run_key == key])
            worst = max(worst, diff)
            print(f"{w.profile.protocol:10s} {spec.label:40s} seed {spec.seed} {key}: "
                  f"{'equal' if diff == 0 else f'DIFFERS by {diff:.3g}'} ({time.time() - t0:.0f} s)", flush=True)
    print("every score equal: the reference regenerates bitwise here" if worst == 0 else
          f"scores differ (largest {worst:.3g}): this code or machine does not regenerate the reference bitwise")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
