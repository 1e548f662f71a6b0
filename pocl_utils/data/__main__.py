"""`python -m pocl_utils.data`: the data command line (`cli.main`)."""
from .cli import main

main()
