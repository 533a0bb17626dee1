"""Mask selection on synthetic scores (no model needed)."""

import pytest
import torch

from pqorder.methods.masks import nm_mask, parse_nm, prune_lowest, unstructured_mask


def test_prunes_exactly_k_lowest_with_ties():
    scores = torch.ones(3, 10)  # all tied: ties still give exactly k per row
    kept = torch.ones(3, 10, dtype=torch.bool)
    new = prune_lowest(scores, kept, 4)
    assert ((~new).sum(dim=1) == 4).all()


def test_already_pruned_go_first():
    scores = torch.arange(10.0).view(1, 10)
    kept = torch.ones(1, 10, dtype=torch.bool)
    kept[0, 9] = False  # the largest score was already pruned
    new = prune_lowest(scores, kept, 3)
    assert (~new).sum() == 3 and not new[0, 9] and not new[0, 0] and not new[0, 1]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9])
def test_unstructured_per_layer_and_per_row(ratio):
    scores = torch.rand(6, 50)
    kept = torch.ones(6, 50, dtype=torch.bool)
    layer = unstructured_mask(scores, kept, ratio, per_row=False)
    assert (~layer).sum() == int(ratio * 300)
    row = unstructured_mask(scores, kept, ratio, per_row=True)
    assert ((~row).sum(dim=1) == int(ratio * 50)).all()


def test_nm_keeps_n_largest_of_every_m():
    scores = torch.rand(4, 16)
    mask = nm_mask(scores, torch.ones(4, 16, dtype=torch.bool), 2, 4)
    groups = mask.view(4, 4, 4)
    assert (groups.sum(dim=2) == 2).all()
    top = scores.view(4, 4, 4).topk(2, dim=2).indices
    assert groups.gather(2, top).all()


@pytest.mark.parametrize("bad", ["4:4", "0:4", "5:4", "2-4", "a:b"])
def test_bad_nm_patterns(bad):
    with pytest.raises(ValueError):
        parse_nm(bad)
