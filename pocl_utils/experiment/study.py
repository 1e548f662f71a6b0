"""A study on a finished workspace (scripts/restarts_all_methods.py, scripts/temperature_residual.py): a set of runs
beyond the main job's grid, trained where missing, judged as families of paired comparisons, written as tables."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..analysis import findings, tables
from .config import RunSpec, get_profile
from .experiments import KD_METHODS
from .pipeline import prepare
from .pool import run_grid
from .runner import records_for


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The options every study takes: --profile, --runs-root, --seeds, --out, --name (default `name`), --methods and
    --overrides (profile overrides as JSON). `doc`: the script's docstring (its first line is the description)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--profile", default="laptop")
    ap.add_argument("--runs-root", type=Path, default=Path("runs"), help="folder holding <profile>/")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True, help="folder for <name>.{csv,md}")
    ap.add_argument("--name", default=name, help="the tables' file stem")
    ap.add_argument("--methods", nargs="+", default=list(KD_METHODS), choices=KD_METHODS)
    ap.add_argument("--overrides", type=json.loads, default={}, help="""profile overrides, e.g. '{"kd.lr": 0.0005}'""")
    return ap


def run(args: argparse.Namespace, specs: list[RunSpec], *, claims: tuple[str, ...] | None = None,
        families: dict | None = None) -> pd.DataFrame:
    """Train the unfinished `specs` in the workspace of args.profile (with args.overrides) under args.runs_root, judge
    them (`findings.claims_by_protocol`: `claims` ids of `families`, or of findings.CLAIMS when None) and write
    <name>.{csv,md} (the comparisons under both evaluation protocols, Holm within each family) and
    <name>_means.{csv,md} (`tables.arm_means`) under args.out. Prints the verdicts.

    Returns the comparisons' table.
    """
    ws = prepare(get_profile(args.profile, args.overrides), runs_root=args.runs_root)
    run_grid(ws, specs)
    records = records_for(ws, specs)
    table = findings.claims_by_protocol(records, claims=claims, families=families)
    path = tables.save_table(table, args.name, args.out)
    tables.save_table(tables.arm_means(records), f"{args.name}_means", args.out)
    print(table[["claim", "comparison", "protocol", "ours_diff", "ci95", "p_holm", "verdict"]].to_string())
    print(f"written: {path} (and .md, and {args.name}_means)")
    return table
