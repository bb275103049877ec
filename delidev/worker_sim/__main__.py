"""``python -m delidev.worker_sim``."""

from delidev.worker_sim.cli import cli

cli()
