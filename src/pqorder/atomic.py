"""All-or-nothing outputs: a temp file or directory beside the target, renamed into place."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pqorder.errors import ConfigError, WriteError

# What a file system answers when it will not take a write: full, over quota, file too large,
# read-only, no permission, failing device.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an existing output (file or directory) unless overwriting was
    asked for, and an output whose directory cannot be written."""
    if out.exists() and not overwrite:
        raise ConfigError(f"output {out} already exists; pass --overwrite to replace it")
    check_writable(Path(out).absolute().parent, f"output {out}")


def check_writable(folder: Path, what: str) -> None:
    """Refuse ``folder`` (or, where it does not exist yet, the directory it would be made in)
    when a file cannot be created there: read-only, not a directory, no permission."""
    where = Path(folder).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write {what}: {where} is not a writable directory ({exc.strerror or exc})"
        ) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(out: Path, directory: bool) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``out``, on error it is removed.

    The temp path sits in ``out``'s parent so the final rename never crosses file systems; a
    reader sees either the old output or the complete new one, never a partial one. A failed
    write (disk full, read-only directory) is a one-line WriteError.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise write_error(out, exc) from exc
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
    except BaseException as exc:
        _remove(tmp)
        if is_write_failure(exc):
            raise write_error(out, exc) from exc
        raise


def _os_error(exc: BaseException) -> int | None:
    """The errno behind ``exc``: an OSError's, or the one a library's own error quotes
    (safetensors: ``I/O error: No space left on device (os error 28)``, or in older versions
    ``IoError(Os { code: 28, kind: StorageFull, ... })``)."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\bOs \{ code: (\d+)|\(os error (\d+)\)", str(exc))
    return int(found.group(1) or found.group(2)) if found else None


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system refused a write (disk full, read-only, ...)."""
    return _os_error(exc) in WRITE_ERRNOS


def write_error(out: Path, exc: BaseException, hint: str = "") -> WriteError:
    """The one line a failed write becomes (the partial output is already removed)."""
    code = _os_error(exc)
    reason = os.strerror(code) if code is not None else exc
    return WriteError(f"cannot write {out}: {reason}; nothing was written{hint and ' — ' + hint}")
