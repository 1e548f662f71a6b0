"""The learning rate of each arm of a grid, chosen on validation (issue 23, item 6; A.2.2 chooses the lr "based on
Rouge-L scores on the validation set" from {5e-4, 1e-4, 5e-5}): the candidates' runs, the choice and the grid at it.

May import `experiment`'s `config`, `experiments`, `pool`, `runner` and `workspace`; nothing of `analysis` or `notebook`.
"""
from __future__ import annotations

from typing import Callable

from .config import RunSpec
from .experiments import chosen_lrs, lr_candidates, with_chosen_lr
from .pool import run_grid
from .runner import records_for
from .workspace import Workspace


def at_chosen_lrs(ws: Workspace, specs: list[RunSpec], *,
                  log: Callable[[str], None] = print) -> tuple[list[RunSpec], list[dict]]:
    """Run each arm's lr candidates (seed 0 at the protocol's lr times each of the profile's lr_factors), choose each
    arm's rate on validation, and return the grid at the chosen rates.

    Args:
        ws: the prepared workspace; its profile's lr_factors () means no choice.
        specs: the grid's runs.
        log: called with the pool's progress lines.

    Returns:
        (the specs at their arm's chosen lr_scale, `experiments.chosen_lrs`' table); with no lr_factors the specs
        unchanged and [].

    Raises:
        ValueError: a candidate that did not finish (held by another process), so an arm has no choice.
    """
    factors = ws.profile.lr_factors
    if not factors:
        return specs, []
    candidates = lr_candidates(specs, factors)
    run_grid(ws, candidates, log=log)
    table = chosen_lrs(records_for(ws, candidates))
    return with_chosen_lr(specs, table), table
