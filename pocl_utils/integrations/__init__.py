"""POCL inside other training libraries: `trl` plugs the difficulty measurer, the Baby Step curriculum, the per-stage
tau and alpha and our divergences into Hugging Face TRL's trainers (the `.[trl]` extra; importable without it).

`compare` trains one configuration through TRL and through our loop on a prepared workspace (notebook 13).

May import the method's modules, `modeling`, `training` and `experiment` (its config and workspace); nothing of
`analysis` or `notebook`.
"""
