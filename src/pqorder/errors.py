"""Errors raised on bad input: one line that names the problem and the fix."""

from collections.abc import Collection

# Every character str.splitlines breaks at, written as its escape instead.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class PqorderError(Exception):
    """Base class: the CLI prints the message as one line and exits non-zero.

    A message stays one line whatever user text it quotes (a step typed with a newline in it,
    a recipe key): line breaks are shown escaped.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(str(message).translate(_LINE_BREAKS), *args)


class ConfigError(PqorderError):
    """A pipeline, method setting or protocol is invalid (raised before any work starts)."""


class AssetError(PqorderError):
    """A model, dataset or offline asset is missing or cannot be loaded."""


class OrderError(ConfigError):
    """A step cannot follow an earlier one (rotation after pruning): this order is infeasible."""


class WriteError(PqorderError):
    """An output, cache entry or store cannot be written (disk full, read-only, no such path);
    whatever was being written was removed, so nothing is left half-written."""


class FormatError(PqorderError):
    """Saved data (a result, run, composition state or cache entry) has a format version this
    pqorder cannot read: written by a newer pqorder, or damaged."""


def check_format(what: str, version: object, readable: Collection[int]) -> int:
    """``version`` as an int if it is one of ``readable``, else a one-line FormatError.

    Everything pqorder writes and reads back carries a format number, so data from a newer
    pqorder is refused instead of misread; forms written before versions existed count as 1.
    """
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
