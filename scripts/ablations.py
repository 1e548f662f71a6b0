"""The paper's ablations (Tables 2-9) and the n-subsets sweep on a profile whose main job runs only Table 1 and the
controls (`grid = "headline"`, as `laptop`'s does to fit its 60 minutes): a study run after the main job, in the same
workspace, under the profile's headline training protocol.

    python scripts/ablations.py [--profile laptop] [--runs-root DIR]

It re-executes the collection with the override `grid = "full"`: the runs the main job finished are skipped (a run's
key does not hold the grid size), notebooks 04-09 train the ablations, and notebook 10 writes runs.csv, the claims and
the figures over everything. `pocl-reproduce --publish` then publishes the whole run as the reference. Prints the
study's wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--runs-root", default=None, help="as pocl-reproduce's (default: $POCL_RUNS_DIR, else ./runs)")
    a = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "pocl_utils.notebook.reproduce", "--profile", a.profile,
           "-p", "overrides", json.dumps({"grid": "full"})]
    if a.runs_root:
        cmd += ["--runs-root", a.runs_root]
    t0 = time.time()
    rc = subprocess.call(cmd)
    print(f"ablations study of {a.profile!r}: {(time.time() - t0) / 60:.1f} min (exit {rc})")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
