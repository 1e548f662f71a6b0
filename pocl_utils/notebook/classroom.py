"""Prepare a classroom workspace once and pack it for students, so that nobody waits for the preparation in class.

    python -m pocl_utils.notebook.classroom pack                       # classroom -> pocl-classroom-workspace.tar.gz
    python -m pocl_utils.notebook.classroom pack --profile smoke --out ws.tar.gz

`pack` builds whatever of the profile's workspace is not cached yet (the generated data, the tokenizer, the trained
teacher, the initial student, its difficulty ranking, the teacher cache and the SeqKD responses: the same steps as
`nb.setup`), then writes every prepared step into one .tar.gz under `runs/<profile>/`, with a PACK.json that says what
it holds and which code built it. A student unpacks it in the root of a checkout of the same commit:

    tar xzf pocl-classroom-workspace.tar.gz        # creates runs/classroom/...

and the lab's `nb.setup("classroom")` then finds every step and only loads it. Steps are cached under a hash of the
profile, so a checkout whose profile differs (another commit) rebuilds the steps that differ instead of using them.
Finished KD runs, executed notebooks and lock files are not packed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

from ..experiment.config import PROFILES, ConfigError, get_profile
from ..experiment.results import REPO_ROOT

SKIP = ("registry", "notebooks", "lab")  # finished runs and executed notebooks: not the lab's preparation


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def packed_steps(root: Path) -> list[Path]:
    """The prepared steps of a workspace: its folders with a STEP.json, except finished runs and executed notebooks.

    `root`: the workspace folder, runs/<profile>/.
    Returns the step folders, sorted by name.
    """
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name not in SKIP and (d / "STEP.json").is_file())


def pack(profile: str = "classroom", out: Path | None = None, *, overrides: dict[str, Any] | None = None,
         runs_root: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Prepare the profile's workspace (building what is missing) and pack its prepared steps into one .tar.gz.

    The archive's members are runs/<profile>/<step>/... and runs/<profile>/PACK.json (profile, steps, their sizes, the
    commit and the time it was packed), so that `tar xzf` in a checkout's root puts the workspace where `nb.setup`
    looks for it (the runs root being ./runs). It is written beside `out` first and renamed into place, so a failed pack
    leaves no half archive.

    `out`: the archive's path; None = ./pocl-<profile>-workspace.tar.gz.
    `overrides`: profile keys to change, as the lab's `overrides` parameter (students must set the same ones).
    `runs_root`: the runs root holding the workspace; None = RUNS_ROOT ($POCL_RUNS_DIR, else ./runs).
    Returns the archive's path.
    Raises ConfigError: an unknown profile or override, or a profile with real data (its data files have their own
    licences and are read from $POCL_DATA_DIR; they are not packed).
    """
    from ..experiment.pipeline import prepare
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    p = get_profile(profile, dict(overrides or {}))
    if p.data != "world":
        raise ConfigError(f"profile {profile!r} reads real data; pack a generated-world profile (classroom, smoke, "
                          f"laptop)")
    t0 = time.time()
    ws = prepare(p, runs_root=runs_root)
    log(f"workspace {ws.root} prepared in {time.time() - t0:.0f}s")
    steps = packed_steps(ws.root)
    sizes = {d.name: sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) for d in steps}
    meta = {"profile": profile, "overrides": dict(overrides or {}), "steps": sizes, "commit": _commit(),
            "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "unpack": f"tar xzf <this archive> in the root of a checkout of the same commit (creates runs/{profile}/)"}
    out = Path(out or f"pocl-{profile}-workspace.tar.gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    meta_file = ws.root / "PACK.json"
    meta_file.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for d in steps:
                tar.add(d, arcname=f"runs/{profile}/{d.name}")
            tar.add(meta_file, arcname=f"runs/{profile}/PACK.json")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"packed {len(steps)} steps ({sum(sizes.values()) / 2**20:.1f} MB) into {out} "
        f"({out.stat().st_size / 2**20:.1f} MB); students unpack it with: tar xzf {out.name} (in the repository root)")
    return out


def unpack(archive: Path, root: Path) -> Path:
    """Unpack a workspace archive made by `pack` into `root` (a checkout's root), refusing members outside runs/.

    `root`: the folder to unpack into; the workspace lands in root/runs/<profile>/.
    Returns the workspace folder, root/runs/<profile>.
    Raises ValueError: a member is not a plain file or folder under runs/<profile>/ (not an archive made by `pack`).
    """
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        profiles = {Path(m.name).parts[1] for m in members if len(Path(m.name).parts) > 1}
        for m in members:
            parts = Path(m.name).parts
            if len(profiles) != 1 or parts[0] != "runs" or ".." in parts or not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: member {m.name!r} is not a file of one workspace under runs/<profile>/; "
                                 f"not an archive made by pocl_utils.notebook.classroom pack")
        tar.extractall(root, filter="data")
    return Path(root) / "runs" / profiles.pop()


def main(argv: list[str] | None = None) -> int:
    """`python -m pocl_utils.notebook.classroom pack [--profile P] [--out FILE] [--runs-root DIR]`.

    Returns the exit status: 0 when the archive was written, 2 for a configuration error (the reason is printed).
    """
    ap = argparse.ArgumentParser(prog="python -m pocl_utils.notebook.classroom", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="prepare the workspace once and pack it for students")
    pk.add_argument("--profile", default="classroom")
    pk.add_argument("--out", type=Path, default=None, help="the archive (default ./pocl-<profile>-workspace.tar.gz)")
    pk.add_argument("--runs-root", type=Path, default=None, help="the runs root (default $POCL_RUNS_DIR, else ./runs)")
    pk.add_argument("--overrides", type=json.loads, default=None,
                    help='profile overrides as a JSON object, e.g. \'{"n_subsets": 3}\' (the lab must use the same)')
    args = ap.parse_args(argv)
    try:
        pack(args.profile, args.out, overrides=args.overrides, runs_root=args.runs_root)
    except ConfigError as e:
        print(f"pocl_utils.notebook.classroom: {e}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
