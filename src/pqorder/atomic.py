"""All-or-nothing outputs: a temp file or directory beside the target, renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pqorder.errors import ConfigError


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output (file or directory) unless overwriting was asked for."""
    if out.exists() and not overwrite:
        raise ConfigError(f"output {out} already exists; pass --overwrite to replace it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(out: Path, directory: bool) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``out``, on error it is removed.

    The temp path sits in ``out``'s parent so the final rename never crosses file systems; a
    reader sees either the old output or the complete new one, never a partial one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if out.exists() and (directory or out.is_dir()):
            old = out.with_name(f".{out.name}.old")
            _remove(old)
            out.rename(old)
            tmp.rename(out)
            _remove(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
