"""Jane Austen's six novels from Debian's r-cran-janeaustenr, read without installing R.

The package stores R lazy-load data: ``Rdata.rdx`` is a gzipped index mapping each novel to
(offset, length) in ``Rdata.rdb``, where each object is a 4-byte length header followed by a
zlib stream of an R serialization (a character vector, one line of text per element).
"""

from __future__ import annotations

import functools
import gzip
import warnings
import zlib
from pathlib import Path

from pqorder.data.debian import fetch_package_files
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
    return fetch_package_files(PACKAGE, "data", _FILES, austen_dir())


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
    return _book_text(folder, BOOKS[key])


@functools.lru_cache(maxsize=8)
def _book_text(folder: Path, variable: str) -> str:
    """One novel read from the R data files (kept: parsing them takes seconds per call)."""
    index = _unserialize(gzip.decompress((folder / "Rdata.rdx").read_bytes()))
    offset, length = (int(v) for v in index["variables"][variable])
    with open(folder / "Rdata.rdb", "rb") as fh:
        fh.seek(offset)
        chunk = fh.read(length)
    lines = _unserialize(zlib.decompress(chunk[4:]))
    return "\n".join(str(line) for line in lines)
