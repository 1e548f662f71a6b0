"""pocl_utils: curriculum knowledge distillation of LLMs (POCL, arXiv 2506.05695) as plain, tested Python.

The method, the paper's equations, sits at the top: `losses`, `difficulty`, `curriculum`, `evaluate`, `data` and
`stats`; it imports none of the machinery below except generation (`modeling.generate`), which `difficulty` and
`evaluate` use to sample responses. The machinery: `modeling/` (models, generation), `training/` (batches, teacher
cache, step, loop, processes), `experiment/` (config, grids, workspaces, a run's training and scoring, the runner
and its process pool, registry), `world/` (the generated instruction world), `analysis/` (tables, the paper beside
ours, figures, findings) and `notebook/` (the notebooks' facade, the papermill runner, the lab).
"""

__version__ = "0.1.0"
