"""What figures and the lab say about themselves: error bars named on the figure, the lab's axis labels, its saved
kernel."""
import re
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd

from pocl_utils.notebook import lab
from pocl_utils.analysis import figures

matplotlib.use("Agg")
REPO = Path(__file__).resolve().parents[1]


def _summary(n_seeds: list[int]) -> pd.DataFrame:
    rows = [{"method": m, "variant": v, "dataset": "Avg", "mean": 10.0 + k, "ci95": 1.0 if n > 1 else np.nan,
             "n_seeds": n} for k, ((m, v), n) in enumerate(zip([("KLD", "baseline"), ("KLD", "+POCL")], n_seeds))]
    return pd.DataFrame(rows)


def test_bar_figures_say_what_their_error_bars_are():
    fig = figures.grouped_bars(_summary([5, 5]), "Avg", "Fig. 1: KD vs KD+POCL")
    title = fig.axes[0].get_title()
    assert title == "Fig. 1: KD vs KD+POCL\nerror bars: 95% CI (Student t) over n = 5 training seeds"
    mixed = figures.grouped_bars(_summary([1, 3]), "Avg").axes[0].get_title()
    assert mixed.endswith("over n = 1–3 training seeds (none where n = 1)")


def test_lab_kd_figure_labels_the_loss_axis_tau_squared_d():
    frame = pd.DataFrame([{"subset": f"d{j}", "tau": t, "kd": t * t * j, "D": float(j)} for j in (1, 2) for t in (1, 2)])
    fig = lab.kd_figure(frame, "KLD")
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["τ²·D", "D"]


def test_lab_notebooks_are_saved_with_the_projects_kernel():
    registered = re.search(r"--name (\S+) --display-name \"([^\"]+)\"", (REPO / "Makefile").read_text())
    assert registered, "the Makefile registers the project's kernel"
    for solutions in (False, True):
        spec = nbformat.reads(lab.render(solutions), as_version=4).metadata["kernelspec"]
        assert (spec["name"], spec["display_name"]) == registered.groups()
    assert nbformat.read(lab.STUDENT, as_version=4).metadata["kernelspec"]["name"] == registered.group(1)
