"""A notebook's set-up: the profile resolved and its workspace prepared (`setup`), its output folders, and our input
errors shown as one line."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

from ..data import DataError
from ..experiment.config import DEFAULT_PROFILE, ConfigError, ModelSpec, Profile, get_profile
from ..experiment.experiments import n_seeds_for
from ..experiment.pipeline import prepare
from ..experiment.provenance import describe
from ..experiment.results import RegistryError, atomic_write_json
from ..experiment.workspace import StepError, Workspace
from ..modeling.models import CheckpointError
from ..training import distributed
from . import outputs


def _name(profile: str | Profile) -> str:
    return profile if isinstance(profile, str) else profile.name


def results_dir(profile: str | Profile) -> Path:
    """This run's tables: results/<profile>/ under the output root (see outputs.output_root).

    `profile`: a Profile or a profile's name.
    Returns the folder's path (not created here).
    """
    return outputs.results_dir(_name(profile))


def figures_dir(profile: str | Profile) -> Path:
    """This run's figures: figures/<profile>/ under the output root.

    `profile`: a Profile or a profile's name.
    Returns the folder's path (not created here).
    """
    return outputs.figures_dir(_name(profile))


def model_text(spec: ModelSpec) -> str:
    """A model in a few words: the hub name, or "<arch> <layers>L×<width>"."""
    return spec.name_or_path if spec.arch == "hub" else f"{spec.arch} {spec.n_layer}L×{spec.n_embd}"


def setup(profile: str = DEFAULT_PROFILE, **overrides: Any) -> Workspace:
    """Set up a notebook for one profile and return its prepared workspace.

    Resolves the profile strictly (unknown name or key raises), prints the device it runs on (the notebook's first
    output), prepares its cached workspace (building whatever is not cached yet), sets the plot theme, saves the
    resolved profile to results/<profile>/profile.json and prints a one-line summary. In a notebook, our input errors
    are then shown as one line instead of a traceback (`short_errors`).

    `**overrides`: profile keys to change, dotted for nested settings (the notebooks pass their `overrides` parameter,
    e.g. {"kd.lr": 0.001}).
    Returns the prepared Workspace: the profile's data sets, models, difficulty ranking and caches.
    Raises ConfigError: an unknown profile, an unknown key or a bad value.
    """
    import seaborn as sns
    short_errors()
    p = get_profile(profile, overrides)
    print(f"profile {p.name!r} on {describe(distributed.device(p.device))}", flush=True)
    with bars_on_stdout():  # no empty red stderr boxes once the bars are done
        ws = prepare(p)
    sns.set_theme(style="whitegrid", context="notebook")
    atomic_write_json(results_dir(p) / "profile.json", {"profile": p.to_dict(), "overrides": overrides})
    print(f"profile {p.name!r}: {p.data} data, {len(ws.sets['train'])} training rows; "
          f"teacher {model_text(p.teacher)}, "
          f"student {model_text(p.student)}; {n_seeds_for(p, 'table1')} training seed(s) in Table 1, "
          f"{p.n_seeds} in the ablations, × {len(p.eval_seeds)} sampling seeds; "
          f"grid {p.grid!r}; workspace {ws.root}")
    return ws


def require_real(ws: Workspace) -> None:
    """Stop with a one-line error unless the workspace holds real data (the real-models notebook needs it).

    `ws`: the notebook's workspace (`setup`).
    Raises ConfigError: the profile has generated data (the message names the real-data profiles).
    """
    if ws.profile.data != "real":
        raise ConfigError(f"profile {ws.profile.name!r} has generated data; this notebook needs a real-data profile "
                          f"(real-lite, paper or paper-opt)")


USER_ERRORS = (ConfigError, DataError, CheckpointError, StepError, RegistryError, FileNotFoundError)


def short_errors() -> None:
    """In a notebook, show our input errors (bad parameter, bad data file, missing model) as a one-line error
    instead of a traceback wall; papermill still stops there and reports the error's name and message."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        stb = [f"{etype.__name__}: {value}"]  # a one-line "traceback": the error output papermill reports
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc(USER_ERRORS, handler)


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


@contextlib.contextmanager
def bars_on_stdout() -> Iterator[None]:
    """In a notebook (`in_notebook`), send what writes to stderr (the preparation's tqdm bars) to stdout while inside.

    A bar that closes with leave=False clears its line; on stderr that leaves an empty red box in JupyterLab, on stdout
    nothing. Outside a notebook nothing changes (a terminal shows the bars on stderr as usual).
    """
    if not in_notebook():
        yield
        return
    with contextlib.redirect_stderr(sys.stdout):
        yield
