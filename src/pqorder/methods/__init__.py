"""Compression methods and their registry (importing this package registers them all)."""

from pqorder.methods import (  # noqa: F401  (registration)
    actquant,
    filters,
    gptq,
    lora,
    magnitude,
    mpq,
    quarot,
    rotate,
    rtn,
    share,
    sleb,
    sparsegpt,
    structured,
    wanda,
)
from pqorder.methods.base import REGISTRY, Method, MethodConfig, get_method, make_step, register

__all__ = ["REGISTRY", "Method", "MethodConfig", "get_method", "make_step", "register"]
