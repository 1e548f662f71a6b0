"""Regenerate the main figure and README's result table from the committed reference tables alone (no re-run).

    PYTHONPATH=. .venv/bin/python scripts/main_figure.py [--profile laptop]

Reads results/<profile>/runs.csv and claims.csv; writes figures/<profile>/main_avg_rouge_l.png and .pdf
(`analysis.figures.main_figure`) and rewrites the Avg table between README's `<!-- result-table:start -->` and
`<!-- result-table:end -->` markers (`analysis.reference.avg_markdown`); tests/test_readme_result_box.py checks that
the committed README agrees with the committed CSVs. Notebook 10 draws the same figure in every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from pocl_utils.analysis import figures, reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- result-table:start -->", "<!-- result-table:end -->"
NAME = "main_avg_rouge_l"


def readme_with_table(readme: str, table_md: str) -> str:
    """README's text with the part between START and END replaced by `table_md`.

    Raises:
        ValueError: README lacks one of the markers, or has them out of order.
    """
    i, j = readme.find(START), readme.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README.md: the markers {START} and {END} are missing or out of order")
    return readme[: i + len(START)] + "\n" + table_md + readme[j:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="laptop")
    args = parser.parse_args(argv)
    avg = reference.avg_table(ROOT / "results" / args.profile)
    fig = figures.main_figure(avg)
    png = figures.save_figure(fig, NAME, ROOT / "figures" / args.profile)
    readme = ROOT / "README.md"
    readme.write_text(readme_with_table(readme.read_text(encoding="utf-8"), reference.avg_markdown(avg)),
                      encoding="utf-8")
    print(f"wrote {png.relative_to(ROOT)} (and .pdf) and README's result table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
