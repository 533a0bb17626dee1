"""Jane Austen's six novels from Debian's r-cran-janeaustenr, read without installing R.

The package stores R lazy-load data: ``Rdata.rdx`` is a gzipped index mapping each novel to
(offset, length) in ``Rdata.rdb``, where each object is a 4-byte length header followed by a
zlib stream of an R serialization (a character vector, one line of text per element).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

from pqorder.errors import AssetError
from pqorder.paths import data_dir

PACKAGE = "r-cran-janeaustenr"
BOOKS = {
    "emma": "emma",
    "pride": "prideprejudice",
    "sense": "sensesensibility",
    "mansfield": "mansfieldpark",
    "northanger": "northangerabbey",
    "persuasion": "persuasion",
}
_FILES = ("Rdata.rdb", "Rdata.rdx")


def austen_dir() -> Path:
    return data_dir() / "janeaustenr"


def fetch_austen() -> Path:
    """Download the Debian package (no install, no R) and keep its two data files."""
    target = austen_dir()
    if all((target / f).exists() for f in _FILES):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if _apt_download(tmp).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            result = _apt_download(tmp)
            if result.returncode != 0:
                why = (result.stderr or "apt-get failed").strip().splitlines()[-1]
                raise AssetError(
                    f"cannot download the Debian package {PACKAGE}: {why} "
                    "(run `apt-get update` as root, then `pqorder prepare`)"
                )
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], check=True)
        found = list(Path(tmp, "x").rglob("data/Rdata.rdb"))
        if not found:
            raise AssetError(f"{deb.name} does not contain data/Rdata.rdb")
        staging = Path(tempfile.mkdtemp(prefix=".janeaustenr-", dir=_ensure(target.parent)))
        for name in _FILES:
            shutil.copy(found[0].parent / name, staging / name)
        staging.rename(target)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _apt_download(folder: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise AssetError(
            "apt-get is not available: the Austen texts come from Debian's "
            f"{PACKAGE}; use another text source (pydoc, file:PATH)"
        ) from exc


def _unserialize(blob: bytes) -> object:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialization "assumed RDS"
        return rdata.conversion.convert(rdata.parser.parse_data(blob))


def read_book(key: str) -> str:
    """The full text of one novel, lines joined with newlines."""
    if key not in BOOKS:
        raise AssetError(f"unknown Austen novel '{key}'; choose one of: {', '.join(BOOKS)}")
    folder = austen_dir()
    if not all((folder / f).exists() for f in _FILES):
        raise AssetError("the Austen novels are not unpacked yet: run `pqorder prepare`")
    index = _unserialize(gzip.decompress((folder / "Rdata.rdx").read_bytes()))
    offset, length = (int(v) for v in index["variables"][BOOKS[key]])
    with open(folder / "Rdata.rdb", "rb") as fh:
        fh.seek(offset)
        chunk = fh.read(length)
    lines = _unserialize(zlib.decompress(chunk[4:]))
    return "\n".join(str(line) for line in lines)
