"""Glue between the notebooks and the package: set-up, one call per table, named figures, output folders, display.

Each notebook starts with `ws = setup(profile, **overrides)` and then only calls functions from here, `analysis`,
`experiment` and the method's modules, so no notebook defines anything another one needs. Tables go to
`results/<profile>/` and figures (PNG + PDF) to `figures/<profile>/`, under the run folder (./runs, or
$POCL_RUNS_DIR) or under $POCL_OUTPUT_DIR when set; the committed reference results in the repository's own
`results/` and `figures/` change only through `pocl-reproduce --publish` (see `outputs`).

The facade re-exports, one concern a module: `session` (set-up, output folders, one-line errors), `display` (show and
save tables and figures), `views` (the frames of a prepared workspace), `grids` (the runs behind the paper's tables:
`run_grid` trains them, `grid_report` sets them beside the paper) and `plots` (the named figures, `collect`).

The subpackage `pocl_utils.notebook`, the top layer, holds this facade, `reproduce` (the papermill runner behind
`pocl-reproduce`) and the lab (`lab` builds notebook 11's variants, `lab_checks` grades the exercises,
`lab_experiment` runs its closing experiment). It may import anything in the package; nothing outside it imports it.
"""
from __future__ import annotations

import warnings

# tqdm.auto (imported by transformers) falls back to text bars in a kernel without ipywidgets; the fallback is
# fine and its warning is noise in every notebook. Set before the imports below trigger it.
warnings.filterwarnings("ignore", message="IProgress not found")

# ruff: noqa: E402, F401 - a facade: every name below is part of it
from ..experiment.results import REPO_ROOT
from . import outputs
from .display import save_figure, save_table, show
from .grids import (ENVIRONMENT, PROTOCOL_GRIDS, TABLE_FILES, ControlsReport, TableReport, agreement, claims,
                    controls_report, convergence_table, grid_report, grid_runs, premises_table, protocol_plans,
                    protocol_records, protocols_of, records, run_grid, run_protocols, runs_frame, specs_of,
                    under_protocol)
from .outputs import output_root
from .plots import FIG3_RUNS, FIGURES, collect, figure
from .source import show_source
from .session import (USER_ERRORS, figures_dir, in_notebook, model_text, require_real, results_dir, setup,
                      short_errors)
from .views import (examples_frame, greedy_examples, model_sizes, ranking_table, ranking_verdict, real_data_card,
                    sample_rows, stage_table, subset_examples, training_logs)
