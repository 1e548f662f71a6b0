"""Showing and saving what a notebook computes: tables as Markdown and CSV, figures as PNG and PDF."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis import figures, tables
from ..experiment.workspace import Workspace
from .session import figures_dir, in_notebook, results_dir


def _cell(value: Any, width: int = 120) -> Any:
    """Markdown-safe cell: one line, pipes escaped, long text cut."""
    if not isinstance(value, str):
        return value
    text = value.replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def show(df: pd.DataFrame, floatfmt: str = ".2f") -> None:
    """Display a table as Markdown in a notebook (printed elsewhere); text cells are kept to one line.

    Text cells have their newlines shown as ⏎ and pipes escaped, and are cut at 120 characters; a MultiIndex is joined
    into one label per row ("KLD +POCL"); a plain integer index (row numbers) is left out. An empty table (or None)
    shows "*(no rows for this profile)*".

    `floatfmt`: the format of float cells, as in DataFrame.to_markdown.
    """
    if df is None or len(df) == 0:
        text = "*(no rows for this profile)*"
    else:
        if isinstance(df.index, pd.MultiIndex):  # ("KLD", "+POCL") -> "KLD +POCL"
            df = df.set_axis([" ".join(map(str, key)) for key in df.index])
        clean = df.apply(lambda col: col.map(_cell)) if len(df.columns) else df
        plain = pd.api.types.is_integer_dtype(df.index) and df.index.name is None  # row numbers say nothing
        text = clean.to_markdown(index=not plain, floatfmt=floatfmt)
    if in_notebook():
        from IPython.display import Markdown, display
        display(Markdown(text))
    else:
        print(text)


def save_table(ws: Workspace, df: pd.DataFrame, name: str) -> Path:
    """Save a table as results/<profile>/<name>.csv and .md.

    Written atomically; the CSV keeps the index unless it is a plain RangeIndex.
    """
    return tables.save_table(df, name, results_dir(ws.profile))


def save_figure(ws: Workspace, fig: Any, name: str) -> Path:
    """Save a figure as figures/<profile>/<name>.png and .pdf; shows the figure in a notebook, then closes it.
    """
    import matplotlib.pyplot as plt
    path = figures.save_figure(fig, name, figures_dir(ws.profile))
    if in_notebook():
        from IPython.display import display
        display(fig)
    plt.close(fig)
    return path
