"""Where pqorder keeps its caches (overridable with the PQORDER_CACHE environment variable)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root cache directory: $PQORDER_CACHE, else $XDG_CACHE_HOME/pqorder, else ~/.cache/pqorder."""
    env = os.environ.get("PQORDER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pqorder"


def models_dir() -> Path:
    return cache_dir() / "models"


def data_dir() -> Path:
    return cache_dir() / "data"
