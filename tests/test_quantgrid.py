"""Quantization grid math on synthetic weights (no model needed)."""

import pytest
import torch

from pqorder.quantgrid import QuantGrid, fit_grid


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [0, 16, 20])
@pytest.mark.parametrize("sym", [False, True])
def test_projection_is_on_grid_with_few_levels(bits, group, sym):
    w = torch.randn(8, 64)
    grid = fit_grid(w, bits, group, sym)
    q = grid.project(w)
    assert grid.contains(q)
    assert not grid.contains(w)
    size = grid.group_size
    for g in range(0, 64, size):
        block = q[:, g : g + size]
        for row in block:
            assert row.unique().numel() <= 2**bits
    # projection is idempotent
    assert torch.equal(grid.project(q), q)


@pytest.mark.parametrize("sym", [False, True])
def test_zero_exactly_representable(sym):
    w = torch.rand(4, 32) + 0.5  # all positive: zero lies outside the data range
    grid = fit_grid(w, 3, 0, sym)
    assert torch.equal(grid.project(torch.zeros(4, 32)), torch.zeros(4, 32))


def test_pruned_weights_do_not_widen_the_range():
    w = torch.tensor([[0.1, 0.2, 5.0, 0.3]])
    mask = torch.tensor([[True, True, False, True]])
    grid = fit_grid(w, 4, 0, sym=False, mask=mask)
    assert grid.scale.item() == pytest.approx(0.3 / 15)


def test_error_shrinks_with_bits():
    w = torch.randn(16, 128)
    errs = [(fit_grid(w, b, 32, False).project(w) - w).pow(2).mean() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_grid_tensors_round_trip():
    grid = fit_grid(torch.randn(4, 40), 4, 16, True)
    back = QuantGrid.from_tensors(grid.to_tensors("u"), "u")
    assert (back.bits, back.group_size) == (4, 16)
    assert torch.equal(back.scale, grid.scale) and torch.equal(back.zero, grid.zero)
