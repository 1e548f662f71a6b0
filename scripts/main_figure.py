"""Regenerate the main figure, README's result table and FINDINGS' summary table from the committed reference tables
alone (no re-run).

    PYTHONPATH=. .venv/bin/python scripts/main_figure.py [--profile laptop]

Reads results/<profile>/runs.csv and claims.csv; writes figures/<profile>/main_avg_rouge_l.png and .pdf
(`analysis.figures.main_figure`), rewrites the Avg table between README's `<!-- result-table:start -->` and
`<!-- result-table:end -->` markers (`analysis.reference.avg_markdown`) and the claims table between FINDINGS'
`<!-- summary-table:start -->` and `<!-- summary-table:end -->` (`analysis.reference.claims_overview`).
tests/test_readme_result_box.py checks that the committed README and FINDINGS agree with the committed CSVs. Notebook
10 draws the same figure in every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from pocl_utils.analysis import figures, reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- result-table:start -->", "<!-- result-table:end -->"
SUMMARY_START, SUMMARY_END = "<!-- summary-table:start -->", "<!-- summary-table:end -->"
NAME = "main_avg_rouge_l"


def with_table(text: str, table_md: str, start: str = START, end: str = END) -> str:
    """`text` with the part between the markers `start` and `end` replaced by `table_md`.

    Raises:
        ValueError: a marker is missing, or they are out of order.
    """
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the markers {start} and {end} are missing or out of order")
    return text[: i + len(start)] + "\n" + table_md + text[j:]


def between(text: str, start: str = START, end: str = END) -> str:
    """The text between two markers, without the newlines next to them."""
    return text[text.index(start) + len(start):text.index(end)].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="laptop")
    args = parser.parse_args(argv)
    results = ROOT / "results" / args.profile
    avg = reference.avg_table(results)
    png = figures.save_figure(figures.main_figure(avg), NAME, ROOT / "figures" / args.profile)
    edits = {"README.md": (reference.avg_markdown(avg), START, END),
             "FINDINGS.md": (reference.claims_overview(pd.read_csv(results / "claims.csv")), SUMMARY_START, SUMMARY_END)}
    for name, (table, start, end) in edits.items():
        path = ROOT / name
        path.write_text(with_table(path.read_text(encoding="utf-8"), table, start, end), encoding="utf-8")
    print(f"wrote {png.relative_to(ROOT)} (and .pdf), README's result table and FINDINGS' summary table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
