"""Every order leaves SmolLM2 satisfying every constraint (real model, real weights)."""

import pytest
import torch

from pqorder.errors import ConfigError
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import parse_pipeline, run_pipeline
from pqorder.snapshot import restore_snapshot


def _units(lm):
    return {name: get_weight(m) for name, m in compressible_units(lm.model).items()}


def test_smollm2_has_210_decoder_linears(smol):
    units = compressible_units(smol.model)
    assert len(units) == 210
    assert all(".layers." in name for name in units)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_magnitude_sparsity_exact_per_layer(smol, ratio):
    result = run_pipeline(smol, parse_pipeline(f"magnitude:ratio={ratio}"), progress=False)
    for name, w in _units(smol).items():
        mask = smol.state.get(name).mask
        assert int((~mask).sum()) == int(ratio * w.numel()), name
        assert (w[~mask] == 0).all()
    assert result.records[0].sparsity == pytest.approx(ratio, abs=1e-4)


def test_nm_pattern_holds_in_every_layer(smol):
    run_pipeline(smol, parse_pipeline("magnitude:nm=2:4"), progress=False)
    for w in _units(smol).values():
        assert ((w.view(w.shape[0], -1, 4) != 0).sum(dim=2) <= 2).all()


def _assert_on_grid(lm, bits):
    for name, w in _units(lm).items():
        grid = lm.state.get(name).grid
        assert grid is not None and grid.bits == bits
        assert grid.contains(w), name
        size = grid.group_size
        groups = w[:, : (w.shape[1] // size) * size].reshape(w.shape[0], -1, size)
        levels = max(int(torch.unique(g).numel()) for g in groups.reshape(-1, size)[::97])
        assert levels <= 2**bits, name


def test_rtn_values_per_group_at_most_2_to_bits(smol):
    run_pipeline(smol, parse_pipeline("rtn:bits=3,group=128"), progress=False)
    _assert_on_grid(smol, 3)


def test_zeros_preserved_after_later_rtn(smol):
    run_pipeline(smol, parse_pipeline("magnitude:ratio=0.3 > rtn:bits=4,group=128"), progress=False)
    for name, w in _units(smol).items():
        mask = smol.state.get(name).mask
        assert int((~mask).sum()) == int(0.3 * w.numel())
        assert (w[~mask] == 0).all(), name
    _assert_on_grid(smol, 4)


def test_grid_kept_after_later_pruning(smol):
    run_pipeline(smol, parse_pipeline("rtn:bits=4 > magnitude:nm=2:4"), progress=False)
    _assert_on_grid(smol, 4)
    for w in _units(smol).values():
        assert ((w.view(w.shape[0], -1, 4) != 0).sum(dim=2) <= 2).all()


def test_two_orders_give_different_models(smol, dense_snapshot):
    run_pipeline(smol, parse_pipeline("magnitude:ratio=0.25 > rtn:bits=4,group=128"), False)
    p_first = _units(smol)
    masks_p = {n: smol.state.get(n).mask.clone() for n in p_first}
    restore_snapshot(smol, dense_snapshot)
    run_pipeline(smol, parse_pipeline("rtn:bits=4,group=128 > magnitude:ratio=0.25"), False)
    q_first = _units(smol)
    changed = [n for n in p_first if not torch.equal(p_first[n], q_first[n])]
    assert len(changed) > 100
    mask_changed = [n for n in p_first if not torch.equal(masks_p[n], smol.state.get(n).mask)]
    assert mask_changed  # quantizing first changes which weights magnitude pruning removes


def test_unsupported_unit_rejected_before_any_work(smol, dense_snapshot):
    with pytest.raises(ConfigError, match="does not divide"):
        run_pipeline(smol, parse_pipeline("magnitude:ratio=0.2 > magnitude:nm=3:7"), False)
    dense = dense_snapshot.weights
    assert all(torch.equal(w, dense[n]) for n, w in smol.model.state_dict().items())
    assert not smol.state.units
