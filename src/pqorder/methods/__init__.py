"""Compression methods and their registry (importing this package registers them all)."""

from pqorder.methods import magnitude, rtn  # noqa: F401  (registration side effect)
from pqorder.methods.base import REGISTRY, Method, MethodConfig, get_method, register

__all__ = ["REGISTRY", "Method", "MethodConfig", "get_method", "register"]
