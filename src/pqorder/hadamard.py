"""Orthogonal Hadamard matrices for rotations, in the sizes real models have.

A Hadamard matrix of order n (entries ±1, H Hᵀ = n I) is built as a Kronecker product of a
Sylvester power of two and one Paley matrix: Paley I gives order q + 1 for a prime q ≡ 3 mod 4
(12, 20, 24, 32, 44, ...), Paley II gives 2(q + 1) for a prime q ≡ 1 mod 4 (12, 28, 36, 60,
...). That covers SmolLM2's 576 = 36·16 and 1536 = 12·128 as well as LLaMA's powers of two.
The randomized rotation QuaRot uses is H·diag(s)/√n with random signs s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pqorder.errors import ConfigError


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> Tensor:
    """Q[i, j] = χ(j − i) with χ the quadratic character modulo the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _bordered(q: int, sign: int) -> Tensor:
    """[[0, 1ᵀ], [sign·1, Q]] of order q + 1."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = sign
    s[1:, 1:] = _jacobsthal(q)
    return s


def _paley(m: int) -> Tensor | None:
    """A Hadamard matrix of order m from Paley's constructions, or None if neither applies."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        return torch.eye(m, dtype=torch.float64) + _bordered(q, -1)
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:
            a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            return torch.kron(_bordered(q, 1), a) + torch.kron(torch.eye(q + 1), b)
    return None


def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(n: int) -> Tensor:
    """A ±1 Hadamard matrix of order ``n`` (float64); ConfigError if no construction fits."""
    power = 1
    while n % (power * 2) == 0:
        power *= 2
    # Try the largest power of two first: the odd-ish factor then needs the smallest Paley order.
    while power >= 1:
        m = n // power
        base = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m)
        if base is not None:
            return torch.kron(base, _sylvester(power))
        power //= 2
    raise ConfigError(
        f"no Hadamard matrix of order {n} from the Sylvester/Paley constructions; "
        f"use rotation=orthogonal for a random orthogonal matrix instead"
    )


def random_rotation(n: int, seed: int, kind: str = "hadamard") -> Tensor:
    """An orthogonal (n, n) float64 matrix: randomized Hadamard, or Haar-random orthogonal."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "orthogonal":
        q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :]
    signs = torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1
    return hadamard(n) * signs[None, :] / n**0.5
