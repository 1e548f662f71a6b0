"""Analysis: tidy tables of finished runs (`tables`), the paper's numbers beside ours (`paper`), the frames behind the
figures (`frames`), the figures (`figures`), the findings' claims and verdicts (`findings`) and POCL's premises
measured in a workspace (`premises`); the statistics they use are the method's `stats`.

May import the method's modules and `experiment` (run specs, the registry's writes); never `training` or `notebook`.
"""
