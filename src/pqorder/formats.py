"""Format versions of what pqorder writes and later reads back.

Analysis results, runs, saved composition states and prefix-cache entries each carry a format
number. A reader names the versions it understands and refuses any other with one line, so a
file from a newer pqorder (or a damaged one) is never misread. Forms written before versions
existed count as version 1.
"""

from __future__ import annotations

from collections.abc import Collection

from pqorder.errors import PqorderError


class FormatError(PqorderError):
    """Saved data has a format version this pqorder cannot read."""


def check_format(what: str, version: object, readable: Collection[int]) -> int:
    """``version`` as an int if it is one of ``readable``, else a one-line FormatError."""
    try:
        number = int(str(version))
    except ValueError:
        number = None
    if number not in readable:
        known = ", ".join(str(v) for v in sorted(readable))
        raise FormatError(
            f"{what} has format {version}, but this pqorder reads format {known} only: it was "
            "written by a newer pqorder (upgrade) or is damaged"
        )
    return number
