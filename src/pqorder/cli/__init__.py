"""The ``pqorder`` command line (``pqorder --help``)."""

from pqorder.cli import (  # noqa: F401  (registers the commands)
    analyses,
    compress,
    demo,
    export,
    plan,
    study,
)
from pqorder.cli.app import app, main

__all__ = ["app", "main"]
