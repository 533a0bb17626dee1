"""Errors raised on bad input: one line that names the problem and the fix."""


class PqorderError(Exception):
    """Base class: the CLI prints the message as one line and exits non-zero."""


class ConfigError(PqorderError):
    """A pipeline, method setting or protocol is invalid (raised before any work starts)."""


class AssetError(PqorderError):
    """A model, dataset or offline asset is missing or cannot be loaded."""


class OrderError(ConfigError):
    """A step cannot follow an earlier one (rotation after pruning): this order is infeasible."""
