"""GPTQ and SparseGPT math on synthetic layers: error feedback must beat its data-free twin."""

import re

import pytest
import torch

from pqorder.errors import ConfigError, PqorderError
from pqorder.methods.obs import inverse_hessian_factor
from pqorder.pipeline import parse_step
from pqorder.quantgrid import fit_grid
from pqorder.state import UnitConstraint
from pqorder.stats import HessianAccumulator


def _layer(out=64, inp=128, tokens=2048, seed=0):
    """Weights and correlated inputs (a low-rank mix plus noise, like real activations)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen)
    x = torch.randn(tokens, 16, generator=gen) @ torch.randn(16, inp, generator=gen)
    x += 0.1 * torch.randn(tokens, inp, generator=gen)
    acc = HessianAccumulator(inp)
    acc.add_batch(x[: tokens // 2])
    acc.add_batch(x[tokens // 2 :])
    return w, x, acc.finish("synthetic")


def _err(w, q, x):
    return ((w - q) @ x.t()).pow(2).sum().item()


def _run(text, w, stats, constraint=None):
    return parse_step(text).compress_unit(w, constraint or UnitConstraint(), stats)


def test_hessian_matches_brute_force():
    _w, x, stats = _layer()
    assert torch.allclose(stats.hessian, 2 / x.shape[0] * x.t() @ x, rtol=1e-4, atol=1e-4)
    assert torch.allclose(stats.input_norms(), x.norm(dim=0), rtol=1e-4)


@pytest.mark.parametrize("spec", ["bits=3", "bits=4,group=32", "bits=3,sym=true,act_order=true"])
def test_gptq_beats_rtn_on_output_error(spec):
    w, x, stats = _layer()
    q_gptq, c = _run(f"gptq:{spec}", w, stats)
    q_rtn, _ = _run(f"rtn:{spec.replace(',act_order=true', '')}", w, None)
    assert c.grid.contains(q_gptq)
    assert _err(w, q_gptq, x) < 0.7 * _err(w, q_rtn, x)


def test_gptq_keeps_pruned_zeros_and_propagates_their_error():
    w, x, stats = _layer()
    pruned_w, c = _run("magnitude:ratio=0.5", w, None)
    q, c2 = _run("gptq:bits=4,group=32", pruned_w, stats, c)
    assert (q[~c.mask] == 0).all() and torch.equal(c2.mask, c.mask)
    assert c2.grid.contains(q)
    rtn, _ = _run("rtn:bits=4,group=32", pruned_w, None, c)
    assert _err(w, q, x) < _err(w, rtn, x)


@pytest.mark.parametrize("target", ["ratio=0.5", "nm=2:4"])
def test_sparsegpt_beats_magnitude_and_hits_the_target(target):
    w, x, stats = _layer()
    s, c = _run(f"sparsegpt:{target}", w, stats)
    m, _ = _run(f"magnitude:{target}", w, None)
    assert int((~c.mask).sum()) == w.numel() // 2
    assert (s[~c.mask] == 0).all()
    assert _err(w, s, x) < 0.7 * _err(w, m, x)


def test_sparsegpt_after_quantization_stays_on_grid():
    w, x, stats = _layer()
    grid = fit_grid(w, 4, 32, sym=False)
    c = UnitConstraint(grid=grid)
    s, c2 = _run("sparsegpt:ratio=0.4", grid.project(w), stats, c)
    assert c2.grid is grid and grid.contains(s)
    assert int((~c2.mask).sum()) == int(0.4 * w.numel())
    naive, _ = _run("magnitude:ratio=0.4", grid.project(w), None, c)
    assert _err(w, s, x) < _err(w, naive, x)


def test_wanda_uses_activation_norms():
    w = torch.ones(4, 8)
    _w, _x, stats = _layer(4, 8)
    _s, c = _run("wanda:ratio=0.5", w, stats)
    norms = stats.input_norms()
    # with equal weights Wanda keeps, in every row, the inputs with the largest norms
    keep = norms.topk(4).indices
    assert c.mask[:, keep].all() and int((~c.mask).sum()) == 16


def test_dampening_retry_is_reported():
    h = torch.diag(torch.tensor([1.0, 1.0, -0.01]))
    with pytest.warns(UserWarning, match="singular with dampening"):
        upper, dead = inverse_hessian_factor(h, 0.01, "unit")
    assert torch.isfinite(upper).all() and not dead.any()
    with pytest.raises(PqorderError, match="singular even with dampening"):
        inverse_hessian_factor(torch.diag(torch.tensor([1.0, -100.0])), 0.01, "unit")


def test_dead_inputs_are_zeroed():
    w, _x, stats = _layer(8, 16)
    h = stats.hessian.clone()
    h[3, :] = 0
    h[:, 3] = 0
    stats = type(stats)("u", h, stats.n_tokens)
    q, _ = _run("gptq:bits=4", w, stats)
    assert (q[:, 3] == 0).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gptq:bits=4,group=128,act_order=true", "static_groups"),
        ("gptq:damp=0", "damp: must lie in (0, 1)"),
        ("sparsegpt:ratio=0.5,blocksize=0", "blocksize"),
        ("wanda:ratio=1.5", "[0, 1)"),
    ],
)
def test_bad_solver_settings(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_step(text)
