"""Experiments: profiles and run specs (`config`), the run grids of the paper's tables (`experiments`), a profile's
prepared artefacts and how they are made (`workspace`, `pipeline`, and `real` for real data), one run from claim
to record (`runner`), its training (`training_run`) and scores (`scoring`), the grid on worker processes (`pool`,
and `job`, the command line), the run registry (`results`) and the environment a result came from
(`provenance`).

May import the method's modules, `modeling`, `training`, `world` and `analysis.tables` / `analysis.paper`
(the results CSV, the paper's tables); never `notebook`.
"""
from . import profile_docs  # noqa: F401, E402 - help(Profile) describes every key
