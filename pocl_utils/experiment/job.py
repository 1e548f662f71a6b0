"""`python -m pocl_utils.experiment.job`: prepare a profile (or a config file) and run one grid to the end without
notebooks, then write its results CSV. Safe to kill at any moment and to run again (finished runs and steps are
skipped, a killed run resumes at its last finished stage), and safe to start twice on the same runs folder (each run
is trained by one process; the other waits for it before writing the CSV).

Under `accelerate launch --config_file configs/accelerate/<config>.yaml -m pocl_utils.experiment.job ...` the same
command runs data parallel (or FSDP-sharded) with no other change. The main rank prepares the workspace alone while the
others wait (`main_first`), except the teacher SFT, which all ranks train together. Then all ranks train each run
together (`runner.execute`). Only the main rank claims runs, writes checkpoints, records and the CSV, and logs; the
others wait for it at barriers."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..training import distributed
from .config import (GRID_SIZES, OVERRIDES_EXAMPLE, PROFILES, ConfigError, Profile, RunSpec, get_profile, override,
                     validate_profile)
from .profile_docs import profile_help
from ..data import DataError
from ..modeling.models import CheckpointError
from .workspace import StepError
from .experiments import EXTRA_GRIDS, GRIDS, grid, n_seeds_for
from .results import RegistryError, atomic_write_text, exclusive_lock


def run_job(profile: str | Profile, grid_name: str, *, runs_root: Path | None = None, n_seeds: int | None = None,
            size: str | None = None, out: Path | None = None, protocol: str | None = None,
            overrides: dict[str, Any] | None = None, log=print) -> Path:
    """prepare -> the lr chosen per arm on validation (the profile's lr_factors; the choice in <out>_lr.csv) -> run_grid
    -> wait for runs other processes hold -> results CSV (written atomically); returns its path.

    Runs claimed by another live process are waited for, or taken over if their owner dies. On several processes
    only the main rank logs and writes the CSV.

    `profile`: a Profile, a profile's name or a config file's path (`config.get_profile`).
    `size`: one of config.GRID_SIZES; None = the profile's `grid`. Other None arguments mean the profile's or
    the default (runs/, <workspace>/results/<grid_name>.csv).
    `overrides`: profile keys to change (`config.override`), dotted for nested settings.
    Raises ConfigError: an unknown profile, a bad config file or override.
    Raises ValueError: an unknown grid name.
    """
    import pandas as pd

    from ..analysis.tables import tidy
    from . import pool, runner
    from .pipeline import prepare
    overrides = {**(overrides or {}), **({"protocol": protocol} if protocol else {})}
    p = get_profile(profile, overrides) if isinstance(profile, str) else validate_profile(override(profile, overrides))
    specs = grid(grid_name, n_seeds or n_seeds_for(p, grid_name), size or p.grid, oracle=p.data == "world",
                 protocol=p.protocol)
    log = log if distributed.is_main() else (lambda s: None)
    ws = prepare(p, runs_root=runs_root, log=log)  # launched: step by step, see pipeline.build_steps
    specs, lr_table = pool.at_chosen_lrs(ws, specs, log=log)  # lr_factors: each arm's lr chosen on validation
    pool.run_grid(ws, specs, log=log)
    _wait_for_others(ws, specs, ws.device, log)
    out = Path(out or ws.root / "results" / f"{grid_name}.csv")
    if not distributed.is_main():
        return out
    frame = tidy(runner.records_for(ws, specs))
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock"):  # a second batch may write the same CSV
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # from a batch killed while writing it
            stale.unlink()
        atomic_write_text(out, frame.to_csv(index=False))
        if lr_table:  # the chosen rates, beside the results
            atomic_write_text(out.with_name(f"{out.stem}_lr.csv"), pd.DataFrame(lr_table).to_csv(index=False))
    mine = sum(rec.get("pid") == os.getpid() for _, rec in runner.records_for(ws, specs))
    log(f"[job] {len(specs)} runs finished ({mine} trained by this process); results in {out}")
    return out


EPILOG = f"""examples:
  python -m pocl_utils.experiment.job --profile smoke --grid table1
  python -m pocl_utils.experiment.job --config my_pocl.yaml --grid table1 -p overrides '{{"kd.epochs": 1}}'

the results CSV: <runs root>/<profile name>/results/<grid>.csv (the profile name of a config file: its `name`, else
the file's stem); runs root: --runs-root, else $POCL_RUNS_DIR, else ./runs

environment, read here once and applied as profile overrides (-p overrides wins): POCL_GRAD_ACCUM=k (grad_accum,
micro-batches per step), POCL_COMPILE=1 (compile, CUDA only). Also POCL_RUNS_DIR and POCL_DATA_DIR (folders).
"""


def parse_overrides(params: list[list[str]]) -> dict[str, Any]:
    """`-p overrides JSON` pairs (pocl-reproduce's syntax) as one overrides mapping.

    Raises ConfigError: a name other than `overrides`, or a value that is not a JSON object.
    """
    out: dict[str, Any] = {}
    for name, value in params:
        if name != "overrides":
            raise ConfigError(f"-p {name}: the job takes only -p overrides JSON, e.g. {OVERRIDES_EXAMPLE}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"-p overrides: not JSON ({e.msg}), e.g. {OVERRIDES_EXAMPLE}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"-p overrides must be a JSON object, e.g. {OVERRIDES_EXAMPLE}")
        out.update(parsed)
    return out


def _wait_for_others(ws, specs: list[RunSpec], device, log, poll_s: float = 0.5) -> None:
    """Runs claimed by another live process are skipped by run_grid; wait for them, or take them over if their
    owner dies (its claim is released by the kernel), so the CSV always covers the whole grid."""
    from .runner import KIND, execute, run_key
    waited = False
    while True:
        todo = distributed.broadcast([s for s in specs if not ws.registry.done(KIND, run_key(ws, s))])
        if not todo:
            return
        if not waited:
            log(f"[job] waiting for {len(todo)} run(s) held by another process")
            waited = True
        if all(execute(ws, s, device) is None for s in todo):
            time.sleep(poll_s)


def engine_overrides(environ: dict[str, str]) -> dict:
    """The engine settings the environment asks for, as profile overrides: POCL_GRAD_ACCUM=k -> grad_accum = k,
    POCL_COMPILE=1|0 -> compile (for `accelerate launch`, whose command line is the job's). Raises ConfigError naming
    the variable on a value that is not a positive integer or 0/1."""
    out: dict = {}
    accum = environ.get("POCL_GRAD_ACCUM", "").strip()
    if accum:
        if not accum.isdigit() or int(accum) < 1:
            raise ConfigError(f"POCL_GRAD_ACCUM={accum!r}: expected a positive integer, the micro-batches per step")
        out["grad_accum"] = int(accum)
    compile_ = environ.get("POCL_COMPILE", "").strip().lower()
    if compile_:
        if compile_ not in ("0", "1", "false", "true"):
            raise ConfigError(f"POCL_COMPILE={compile_!r}: expected 1 (compile the student's step on CUDA) or 0")
        out["compile"] = compile_ in ("1", "true")
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line: parse the arguments, set torch's CPU threads and run `run_job`.

    `argv`: the arguments (--profile or --config, -p overrides, --grid, --runs-root, --seeds, --size, --out, --threads,
    --help-profile); None = sys.argv[1:].
    Returns the exit status: 0 when the results CSV is written, 2 after a ConfigError, DataError, CheckpointError,
    StepError or RegistryError, printed to stderr as one line without a traceback.
    """
    ap = argparse.ArgumentParser(prog="python -m pocl_utils.experiment.job", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--profile", default="smoke", help=f"a built-in profile: {', '.join(PROFILES)} (default smoke)")
    which.add_argument("--config", default=None, metavar="FILE",
                       help="a YAML or JSON config file: your own models and data (README: POCL on your own models "
                            "and data)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("overrides", "JSON"),
                    help="profile overrides as a JSON object, as pocl-reproduce takes them, e.g. " + OVERRIDES_EXAMPLE)
    ap.add_argument("--help-profile", action="store_true", help="describe every profile key and exit")
    ap.add_argument("--grid", default="table1", help=f"one of: {', '.join([*GRIDS, *EXTRA_GRIDS])}")
    ap.add_argument("--protocol", default=None, help="official | paper-text (default: the profile's)")
    ap.add_argument("--runs-root", type=Path, default=None, help="folder holding <profile>/ (default: runs/)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds per configuration (default: the profile's)")
    ap.add_argument("--size", default=None, help=f"{' | '.join(GRID_SIZES)} (default: the profile's grid size)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results CSV (default: <runs-root>/<profile>/results/<grid>.csv)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads of the runs (the preparation uses the profile's prepare_threads)")
    args = ap.parse_args(argv)
    if args.help_profile:
        print(profile_help())
        return 0
    import torch
    torch.set_num_threads(args.threads)
    try:
        overrides = {**engine_overrides(dict(os.environ)), **parse_overrides(args.param)}  # -p overrides wins
        run_job(args.config or args.profile, args.grid, runs_root=args.runs_root, n_seeds=args.seeds, size=args.size,
                out=args.out, protocol=args.protocol, overrides=overrides, log=lambda s: print(s, flush=True))
    except (ConfigError, DataError, CheckpointError, StepError, RegistryError) as e:  # ours: one line, no traceback
        print(f"pocl-job: {e}", file=sys.stderr)
        return 2
    distributed.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
