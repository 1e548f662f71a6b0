"""pocl_utils: curriculum knowledge distillation of LLMs (POCL, arXiv 2506.05695) as plain, tested Python."""

__version__ = "0.1.0"
