"""POCL inside other training libraries: `trl` plugs the difficulty measurer, the Baby Step curriculum, the per-stage
tau and alpha and our divergences into Hugging Face TRL's trainers (the `.[trl]` extra; importable without it).

May import the method's modules, `modeling`, `training` and `experiment.config`; nothing of `analysis`, `notebook`
or the rest of `experiment`.
"""
