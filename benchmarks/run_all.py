"""Run every benchmark, each in its own subprocess, then write benchmarks/RESULTS.md from their JSONs.

    python benchmarks/run_all.py                  # full sizes (~40 min on an idle 2-core machine; --list for each)
    python benchmarks/run_all.py --quick          # tiny sizes (~2 min): runs/bench/quick/*.json + RESULTS.md there
    python benchmarks/run_all.py --only flops,scaling     # a subset (names: --list)
    python benchmarks/run_all.py --render-only    # RESULTS.md from the JSONs already there
    python benchmarks/run_all.py --e2e-smoke      # also time `pocl-reproduce --profile smoke` from an empty runs folder

Full results go to benchmarks/results/ (committed); --quick results to runs/bench/quick/ (git-ignored), so a quick run
never overwrites a full one. A failing benchmark does not stop the others: RESULTS.md names it, and its section shows
the JSON of its last successful run, if any. Logs: runs/bench/logs/ (quick: runs/bench/quick/logs/).
The end-to-end section reads end_to_end.json in the same folder; its format is in render_results.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import BENCH_RUNS, ROOT, machine, results_dir
from render_results import render

HERE = Path(__file__).resolve().parent
E2E_SMOKE = ("-m", "pocl_utils.notebook.reproduce", "--profile", "smoke")  # run by this interpreter


@dataclass(frozen=True)
class Bench:
    name: str  # the JSON's stem and the section it feeds
    script: str
    full: tuple[str, ...]  # extra arguments of the full run
    quick: tuple[str, ...]  # ... of the --quick run
    minutes: float  # rough full-size wall time on an idle 2-core machine


BENCHES = (
    Bench("ranking", "bench_ranking.py", ("--model", "laptop", "--threads", "1"),
          ("--quick", "--model", "tiny", "--threads", "1"), 0.5),
    Bench("ranking_random", "bench_ranking.py", ("--model", "laptop", "--random-init", "--threads", "1"),
          ("--quick", "--model", "laptop", "--random-init", "--threads", "1"), 0.5),
    Bench("ranking_smollm2", "bench_ranking.py", ("--model", "smollm2", "--n", "64", "--threads", "2"),
          ("--quick", "--model", "real-lite-student", "--n", "8", "--threads", "1"), 4),
    Bench("generate", "bench_generate.py", ("--model", "laptop", "--threads", "1"),
          ("--quick", "--model", "tiny", "--threads", "1"), 0.5),
    Bench("divergence", "bench_divergence.py", (),
          ("--quick", "--vocab", "4096", "--tokens", "512", "--kinds", "fkl", "--reps", "1"), 4),
    Bench("teacher_cache", "bench_teacher_cache.py", (), ("--quick",), 1),
    Bench("grid_cache", "bench_grid_cache.py", (), ("--quick",), 25),
    Bench("topk_cache", "bench_topk_cache.py", (), ("--quick",), 3),
    Bench("flops", "bench_flops.py", (), ("--quick", "--threads", "1"), 1),
    Bench("scaling", "bench_scaling.py", (), ("--quick",), 2),
)


def run_bench(b: Bench, folder: Path, logs: Path, quick: bool, timeout: float) -> dict:
    """Run one benchmark script in a fresh interpreter; its JSON lands in folder/<name>.json."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{b.name}.log"
    cmd = [sys.executable, str(HERE / b.script), *(b.quick if quick else b.full), "--out", str(folder / f"{b.name}.json")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    status = "ok" if rc == 0 else f"FAILED ({rc}); see {log}"
    print(f"  {b.name:16s} {wall:7.1f} s  {status}", flush=True)
    return {"rc": rc, "wall_s": round(wall, 1), "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log), "command": " ".join(cmd[1:])}


def e2e_smoke(folder: Path, logs: Path, warm: bool) -> dict:
    """Time `pocl-reproduce --profile smoke`; cold (default) = from an empty POCL_RUNS_DIR, so every step is built."""
    from pocl_utils.experiment.results import git_commit
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, *E2E_SMOKE]
    with tempfile.TemporaryDirectory(prefix="pocl-e2e-") as tmp, open(logs / "e2e_smoke.log", "w") as log:
        env = dict(os.environ) if warm else dict(os.environ, POCL_RUNS_DIR=tmp)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
    timings = ROOT / "runs" / "smoke" / "notebooks" / "timings.json"
    m = machine()
    entry = {"name": f"smoke collection ({'warm' if warm else 'cold'})", "command": "pocl-reproduce --profile smoke",
             "profile": "smoke", "wall_s": round(wall, 1), "cold": not warm, "rc": rc,
             "date": dt.date.today().isoformat(), "git_commit": git_commit(), "machine": f"{m['cpu']}, {m['cores']} cores",
             "notes": "timed by run_all.py --e2e-smoke" + ("" if rc == 0 else f"; FAILED, exit {rc}"),
             "notebook_s": json.loads(timings.read_text()) if timings.is_file() and rc == 0 else {}}
    merge_e2e(folder / "end_to_end.json", entry)
    print(f"  e2e smoke        {wall:7.1f} s  {'ok' if rc == 0 else f'FAILED ({rc})'}", flush=True)
    return entry


def merge_e2e(path: Path, entry: dict) -> None:
    """Add or replace (by name) one run in end_to_end.json."""
    from pocl_utils.experiment.results import atomic_write_json
    runs = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    atomic_write_json(path, {"runs": [r for r in runs if r.get("name") != entry["name"]] + [entry]})


def pick(only: str | None, skip: str | None) -> list[Bench]:
    names = {b.name for b in BENCHES}
    chosen = set(only.split(",")) if only else set(names)
    dropped = set(skip.split(",")) if skip else set()
    unknown = (chosen | dropped) - names
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; valid: {', '.join(b.name for b in BENCHES)}")
    return [b for b in BENCHES if b.name in chosen - dropped]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes; results to runs/bench/quick/")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    ap.add_argument("--skip", default=None, help="comma-separated benchmark names to leave out")
    ap.add_argument("--render-only", action="store_true", help="only write RESULTS.md from the existing JSONs")
    ap.add_argument("--e2e-smoke", action="store_true", help="also time pocl-reproduce --profile smoke (cold)")
    ap.add_argument("--e2e-warm", action="store_true", help="with --e2e-smoke: keep the existing runs folder")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default 3600; 300 quick)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and their rough full-size minutes")
    ap.add_argument("--out", default=None, help="RESULTS.md path (default benchmarks/RESULTS.md; quick: in its folder)")
    args = ap.parse_args(argv)
    benches = pick(args.only, args.skip)
    if args.list:
        for b in BENCHES:
            print(f"{b.name:16s} ~{b.minutes:g} min  benchmarks/{b.script} {' '.join(b.full)}")
        print(f"total ~{sum(b.minutes for b in BENCHES):g} min (+ ~4 min for --e2e-smoke)")
        return 0
    folder = results_dir(args.quick)
    folder.mkdir(parents=True, exist_ok=True)
    logs = (folder if args.quick else BENCH_RUNS) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_log = {}
    if not args.render_only:
        print(f"running {len(benches)} benchmark(s) {'(quick)' if args.quick else '(full)'} -> {folder}")
        for b in benches:
            run_log[b.name] = run_bench(b, folder, logs, args.quick, args.timeout or (300 if args.quick else 3600))
        if args.e2e_smoke:
            e2e_smoke(folder, logs, args.e2e_warm)
        (logs / "run_all.json").write_text(json.dumps(run_log, indent=1) + "\n")
    out = Path(args.out) if args.out else (folder / "RESULTS.md" if args.quick else HERE / "RESULTS.md")
    from pocl_utils.experiment.results import atomic_write_text
    atomic_write_text(out, render(folder, quick=args.quick, run_log=run_log))
    print(f"wrote {out}")
    return 0 if all(r["rc"] == 0 for r in run_log.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
