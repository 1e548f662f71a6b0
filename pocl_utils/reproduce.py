"""`pocl-reproduce`: execute the notebook collection in order with papermill for one profile.

Executed copies go to `runs/<profile>/notebooks/` (ignored by git); figures go to `figures/<profile>/`.
Parameters are checked against each notebook's `parameters` cell before anything runs, so a typo fails at once
with the list of valid names instead of being silently ignored. The student lab (11_lab) is not part of the main
job; `--lab` adds its solutions variant, generated from notebooks/lab/ into runs/<profile>/lab/ (see pocl_utils.lab).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import PROFILES, ConfigError
from .results import REPO_ROOT, atomic_write_json
from .workspace import RUNS_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def collection(folder: Path = NOTEBOOK_DIR, profile: str = "laptop") -> list[Path]:
    """The numbered notebooks in run order (the lab notebook and its solutions are not part of the main job); the
    real-models notebook only for profiles with real data."""
    real = profile in PROFILES and PROFILES[profile].data == "real"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb")
                  if "lab" not in p.stem.split("_") and (real or not p.stem.endswith("_real_models")))


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and default values of a notebook's `parameters` cell (via papermill's inspector)."""
    import papermill as pm
    return {name: spec["default"] for name, spec in pm.inspect_notebook(str(path)).items()}


def kernel_name() -> str:
    """A Jupyter kernel that runs this very interpreter (so notebooks see this environment's packages).

    Prefers `pocl` (what `make install` registers inside the venv), then `python3`. A spec whose command is a bare
    `python`/`python3` counts, because jupyter_client swaps that for sys.executable; a spec pointing at another
    interpreter (e.g. a user-wide `python3` kernel from another environment) is skipped."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    bare = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    manager = KernelSpecManager()
    for name in ("pocl", "python3"):
        try:
            exe = manager.get_kernel_spec(name).argv[0]
        except (NoSuchKernel, IndexError):
            continue
        if exe in bare or (os.path.exists(exe) and os.path.abspath(exe) == os.path.abspath(sys.executable)):
            return name
    raise ConfigError(f"no Jupyter kernel runs {sys.executable}; register one with: "
                      f"{sys.executable} -m ipykernel install --sys-prefix --name pocl")


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Raise ConfigError naming an unknown parameter and listing the valid ones."""
    valid = notebook_parameters(path)
    for key in params:
        if key not in valid:
            raise ConfigError(f"{path.name}: unknown parameter {key!r}; valid parameters: {', '.join(valid)}")


def run_collection(profile: str, *, notebooks: list[Path] | None = None, out_dir: Path | None = None,
                   extra: dict[str, Any] | None = None, log=print) -> dict[str, float]:
    """Execute each notebook with `profile` (and `extra` parameters where a notebook has them); returns wall times.

    Every notebook must have `profile`; an extra parameter must exist in at least one notebook (a typo raises before
    anything runs) and is passed to the notebooks that have it. Kernels start in the repository root, so they import
    this checkout's pocl_utils even where the package is not installed."""
    import papermill as pm
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    notebooks = notebooks or collection(profile=profile)
    out_dir = Path(out_dir or RUNS_ROOT / profile / "notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    valid = {nb: notebook_parameters(nb) for nb in notebooks}
    params = {nb: {"profile": profile, **{k: v for k, v in (extra or {}).items() if k in valid[nb]}}
              for nb in notebooks}
    for nb in notebooks:
        check_parameters(nb, params[nb])  # every notebook must take `profile`
    for key in extra or {}:
        if not any(key in v for v in valid.values()):
            names = sorted({k for v in valid.values() for k in v})
            raise ConfigError(f"unknown parameter {key!r} (in no notebook); valid parameters: {', '.join(names)}")
    kernel = kernel_name()
    times: dict[str, float] = {}
    t_all = time.time()
    for k, nb in enumerate(notebooks, 1):
        log(f"[{k}/{len(notebooks)}] {nb.name} (profile={profile})")
        t0 = time.time()
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params[nb], kernel_name=kernel,
                            cwd=str(REPO_ROOT), progress_bar=False)
        times[nb.name] = round(time.time() - t0, 1)
        log(f"      done in {times[nb.name]:.0f}s")
    times["total"] = round(time.time() - t_all, 1)
    atomic_write_json(out_dir / "timings.json", times)
    log(f"collection finished in {times['total'] / 60:.1f} min; executed notebooks in {out_dir}")
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pocl-reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="laptop", help=f"one of: {', '.join(PROFILES)}")
    ap.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run, e.g. 00 01")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "JSON_VALUE"),
                    help="extra notebook parameter, value parsed as JSON when possible")
    ap.add_argument("--lab", action="store_true", help="also run the lab's solutions variant (generated first)")
    args = ap.parse_args(argv)
    notebooks = collection(profile=args.profile)
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(o) for o in args.only)]
    if args.lab:  # the student variant would only print "not implemented yet"; the solutions exercise everything
        from .lab import write
        notebooks.append(write(RUNS_ROOT / args.profile / "lab" / "11_lab_solutions.ipynb", solutions=True))
    extra = {k: _parse(v) for k, v in args.param}
    try:
        run_collection(args.profile, notebooks=notebooks, extra=extra)
    except ConfigError as e:
        print(f"pocl-reproduce: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # papermill's PapermillExecutionError carries the failing cell's error name and value
        if hasattr(e, "ename"):
            print(f"pocl-reproduce: {e.ename}: {e.evalue} (executed notebook in {RUNS_ROOT / args.profile / 'notebooks'})", file=sys.stderr)
        else:
            print(f"pocl-reproduce: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


if __name__ == "__main__":
    raise SystemExit(main())
