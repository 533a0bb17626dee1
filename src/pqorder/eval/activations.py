"""Activation quantization at evaluation: fake-quantize the input of every compressible unit.

Dynamic, per tensor, asymmetric min-max with ``bits`` bits, recomputed for every forward
pass (range [min(x, 0), max(x, 0)], so 0 is exact). It is part of an evaluation protocol
(W·A``bits`` numbers), not an ordered step: it acts on activations, which no weight method's
order changes, so orders of weight methods are compared under the same activation grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from pqorder.fakequant import fake_quant
from pqorder.models.adapter import compressible_units


def fake_quantize(x: Tensor, bits: int) -> Tensor:
    """``x`` rounded onto one per-tensor asymmetric grid of 2^bits levels containing 0."""
    return fake_quant(x.reshape(1, -1), bits, sym=False).view_as(x)


@contextlib.contextmanager
def quantized_activations(model: nn.Module, bits: int | None) -> Iterator[None]:
    """Within the block, every unit sees its input fake-quantized to ``bits`` (None: off)."""
    if bits is None:
        yield
        return
    handles = [
        unit.register_forward_pre_hook(lambda _m, args: (fake_quantize(args[0], bits), *args[1:]))
        for unit in compressible_units(model).values()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
