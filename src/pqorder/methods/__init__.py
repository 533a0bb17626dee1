"""Compression methods and their registry (importing this package registers them all)."""

from pqorder.methods import gptq, magnitude, rtn, sparsegpt, wanda  # noqa: F401  (registration)
from pqorder.methods.base import REGISTRY, Method, MethodConfig, get_method, register

__all__ = ["REGISTRY", "Method", "MethodConfig", "get_method", "register"]
