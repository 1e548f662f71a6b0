"""What every benchmark shares: where results go, the `meta` block each JSON carries (machine, versions, date, commit,
quick or full), the workspaces the benchmarks run on, and small timing/fitting helpers.

Every benchmark JSON has the keys  bench (its name), meta (see `meta`), and its own config/results/summary fields;
`run_all.py` renders benchmarks/RESULTS.md from them.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"  # full runs: committed
QUICK_RESULTS = ROOT / "runs" / "bench" / "quick"  # --quick runs: git-ignored (runs/), never overwrite full results
BENCH_RUNS = ROOT / "runs" / "bench"  # scratch workspaces of the benchmarks (git-ignored)
LAPTOP_ROOT = ROOT / "runs" / "laptop"
SMOLLM2_FOLDER = ROOT / "data" / "cache" / "smollm2-135m-instruct"  # real.smollm2_cache(), built from the GGUF
WORKSPACE_STEPS = ("data", "tokenizer", "teacher", "student_init", "ranking", "teacher_cache")


def results_dir(quick: bool) -> Path:
    return QUICK_RESULTS if quick else RESULTS


def default_out(name: str, quick: bool) -> str:
    return str(results_dir(quick) / f"{name}.json")


# ---- machine and provenance ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": ram_gib(), "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in load] if load else None}


def versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__}


def meta(quick: bool, **config: Any) -> dict[str, Any]:
    """Provenance of one benchmark run: date (UTC), git commit, machine, versions, quick flag, threads, config."""
    from pocl_utils.experiment.results import git_commit
    import torch
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git_commit": git_commit(),
            "quick": bool(quick), "threads": torch.get_num_threads(), "machine": machine(), "versions": versions(),
            "config": config}


def repo_relative(obj: Any) -> Any:
    """`obj` with every string that is a path inside the repository made relative to its root ("." for the root), in
    dicts and lists at any depth: committed records must not name the machine they ran on."""
    if isinstance(obj, dict):
        return {k: repo_relative(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v) for v in obj]
    if isinstance(obj, str) and (obj == str(ROOT) or obj.startswith(f"{ROOT}/")):
        return Path(obj).relative_to(ROOT).as_posix() or "."
    return obj


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a benchmark record (paths inside the repository made relative, `repo_relative`) atomically."""
    from pocl_utils.experiment.results import atomic_write_json
    atomic_write_json(Path(path), repo_relative(record))
    print(f"wrote {path}")
    return Path(path)


# ---- workspaces ----------------------------------------------------------------------------------------------------


def laptop_available() -> bool:
    return all((LAPTOP_ROOT / step / "STEP.json").is_file() for step in WORKSPACE_STEPS)


LAPTOP_STANDIN = "bench-laptop"  # the stand-in workspace's profile name, prepared under runs/bench/


def laptop_standin_profile():
    """The laptop profile with its teacher's training cut to a few steps: world, tokenizer, model shapes and the
    student's warm start are the laptop's, built as the laptop profile builds them; the teacher has the laptop's shape
    and random-ish weights. What depends on weights (the teacher's outputs, hence KD losses) is not the laptop's; step
    times, which depend on shapes and token counts, are."""
    from dataclasses import replace

    from pocl_utils.experiment.config import get_profile
    p = get_profile("laptop")
    return replace(p, name=LAPTOP_STANDIN, teacher_pretrain_steps=0, teacher_sft=replace(p.teacher_sft, epochs=0.01))


def laptop_standin(log: Callable[[str], None] = print):
    """(Workspace, description): runs/laptop when prepared, else the stand-in (`laptop_standin_profile`) prepared up
    to the student's warm start under runs/bench/ (about 2 min on an idle 2-core machine, once)."""
    if laptop_available():
        ws, _ = workspace("laptop")
        return ws, "runs/laptop as prepared"
    from pocl_utils.experiment.pipeline import prepare
    ws = prepare(laptop_standin_profile(), runs_root=BENCH_RUNS, until="student_init", log=log)
    return ws, (f"stand-in workspace runs/bench/{LAPTOP_STANDIN} (laptop world, tokenizer, shapes and student warm "
                f"start; teacher trained a few steps only)")


def workspace(which: str = "auto", *, quick: bool = False, log: Callable[[str], None] = lambda s: None):
    """(Workspace, description). 'laptop': the prepared runs/laptop, used as it is (never rebuilt here: a stale key is
    reported, not fixed); 'smoke': the smoke profile prepared once under runs/bench/ (~10 s); 'auto': laptop unless
    --quick or missing."""
    from pocl_utils.experiment.config import get_profile
    from pocl_utils.experiment.pipeline import prepare
    from pocl_utils.experiment.workspace import Workspace, prep_keys
    if which == "auto":
        which = "laptop" if laptop_available() and not quick else "smoke"
    if which == "laptop":
        if not laptop_available():
            raise SystemExit(f"--workspace laptop: {LAPTOP_ROOT} is not prepared (run `make reproduce` or "
                             f"`python -m pocl_utils.experiment.pipeline`-style preparation first)")
        profile = get_profile("laptop")
        keys = prep_keys(profile)
        stale = [s for s in WORKSPACE_STEPS if json.loads((LAPTOP_ROOT / s / "STEP.json").read_text())["key"] != keys[s]]
        ws = Workspace(profile, LAPTOP_ROOT)
        return ws, {"workspace": "laptop", "root": str(LAPTOP_ROOT), "stale_steps": stale}
    if which != "smoke":
        raise SystemExit(f"--workspace must be auto, laptop or smoke, got {which!r}")
    ws = prepare("smoke", runs_root=BENCH_RUNS, log=log)
    return ws, {"workspace": "smoke", "root": str(ws.root), "stale_steps": []}


# ---- timing and fitting --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], reps: int = 1, warmup: int = 0) -> tuple[Any, float, list[float]]:
    """(last result, median seconds, all seconds) of `reps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times), times


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """b of y = a x^b, least squares on log-log axes."""
    import numpy as np
    b, _ = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return float(b)
