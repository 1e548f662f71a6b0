"""The paper's ablations (Tables 2-9) and the n-subsets sweep on a profile whose main job runs only Table 1 and the
controls (`grid = "headline"`, as `laptop`'s does to fit its 60 minutes): a study run after the main job, in the same
workspace, under the profile's headline training protocol.

    python scripts/ablations.py [--profile laptop] [--runs-root DIR] [--protocol paper-text]

It re-executes the collection with the override `grid = "full"`: the runs the main job finished are skipped (a run's
key does not hold the grid size), notebooks 04-09 train the ablations, and notebook 10 writes runs.csv, the claims and
the figures over everything. `pocl-reproduce --publish` then publishes the whole run as the reference. Prints the
study's wall time.

`--protocol P` runs the ablations under training protocol P instead of the headline's (the override `protocol = P`;
Table 1 and the controls keep both protocols' runs). Its notebooks and tables would replace the main job's, so run it
in a copy of the workspace with its own output folder:

    cp -a runs/laptop study/laptop
    POCL_OUTPUT_DIR=study/out python scripts/ablations.py --protocol paper-text --runs-root study
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
    ap.add_argument("--protocol", default=None, help="the ablations' training protocol (default: the headline's)")
    a = ap.parse_args(argv)
    overrides = {"grid": "full", **({"protocol": a.protocol} if a.protocol else {})}
    cmd = [sys.executable, "-m", "pocl_utils.notebook.reproduce", "--profile", a.profile,
           "-p", "overrides", json.dumps(overrides)]
    if a.runs_root:
        cmd += ["--runs-root", a.runs_root]
    t0 = time.time()
    rc = subprocess.call(cmd)
    print(f"ablations study of {a.profile!r}: {(time.time() - t0) / 60:.1f} min (exit {rc})")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
