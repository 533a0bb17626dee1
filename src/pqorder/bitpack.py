"""Pack small unsigned integers (quantization codes, mask bits) densely into bytes.

``pack(values, bits)`` writes each value's ``bits`` low bits, least significant first, into a
little-endian bit stream of uint8; ``unpack`` reads them back. When b divides 8 (masks, 2- and
4-bit codes) each byte holds 8/b whole values, combined with shifts on uint8; otherwise eight
values of b bits fill exactly b bytes, joined into one int64 word. Work runs in chunks, so
packing a large unit needs a few times a chunk in temporary memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 1 << 22  # values per chunk: a multiple of 8, so every chunk ends on a byte boundary


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits take."""
    return -(-n * bits // 8)


def _check(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bit-packing takes 1 to 8 bits, got {bits}")


def pack(values: Tensor, bits: int) -> Tensor:
    """The values (any integer or bool tensor, each in [0, 2**bits)) as a 1-D uint8 stream."""
    _check(bits)
    flat = values.reshape(-1).to(torch.uint8)
    if 8 % bits == 0:
        return _pack_bytes(flat, bits)
    value_shifts = bits * torch.arange(8)
    byte_shifts = 8 * torch.arange(bits)
    out = []
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start : start + CHUNK].long()
        chunk = torch.nn.functional.pad(chunk, (0, -chunk.numel() % 8))
        words = (chunk.reshape(-1, 8) << value_shifts).sum(dim=1)  # (m,) 8 values each
        out.append(((words[:, None] >> byte_shifts) & 255).to(torch.uint8).reshape(-1))
    stream = torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)
    return stream[: packed_size(flat.numel(), bits)]


def unpack(packed: Tensor, bits: int, n: int) -> Tensor:
    """The ``n`` values of ``bits`` bits in ``packed`` (as written by ``pack``), as uint8."""
    _check(bits)
    if packed.numel() != packed_size(n, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {n} values of {bits} bits")
    if 8 % bits == 0:
        return _unpack_bytes(packed, bits, n)
    value_shifts = bits * torch.arange(8)
    byte_shifts = 8 * torch.arange(bits)
    step = CHUNK * bits // 8  # bytes of one chunk of values
    out = []
    for start in range(0, packed.numel(), step):
        chunk = packed[start : start + step].long()
        chunk = torch.nn.functional.pad(chunk, (0, -chunk.numel() % bits))
        words = (chunk.reshape(-1, bits) << byte_shifts).sum(dim=1)  # (m,) 8 values each
        out.append(((words[:, None] >> value_shifts) & (2**bits - 1)).to(torch.uint8).reshape(-1))
    values = torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)
    return values[:n]


def _pack_bytes(flat: Tensor, bits: int) -> Tensor:
    """Pack when ``bits`` divides 8: value i of every run of 8/bits goes to bits i·bits.."""
    per = 8 // bits
    flat = torch.nn.functional.pad(flat, (0, -flat.numel() % per))
    out = flat[0::per].clone()
    for i in range(1, per):
        out |= flat[i::per] << (bits * i)
    return out


def _unpack_bytes(packed: Tensor, bits: int, n: int) -> Tensor:
    per = 8 // bits
    parts = [(packed >> (bits * i)) & (2**bits - 1) for i in range(per)]
    return torch.stack(parts, dim=1).reshape(-1)[:n]
