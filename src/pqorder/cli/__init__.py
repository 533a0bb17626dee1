"""The ``pqorder`` command line (``pqorder --help``)."""

from pqorder.cli import analyses, compress, demo, export, study  # noqa: F401  (registers the commands)
from pqorder.cli.app import app, main

__all__ = ["app", "main"]
