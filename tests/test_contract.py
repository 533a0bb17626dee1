"""One contract matrix: every ordered pair of methods (a method twice included) on real
SmolLM2 weights (first two blocks), checking that the final model satisfies every constraint
of every step: exact sparsity, exact zeros, values on the last grid, text round trip."""

import itertools

import pytest
import torch

from pqorder.engine import apply_step
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import parse_pipeline, parse_step

FIRST = {
    "magnitude": "magnitude:ratio=0.3",
    "wanda": "wanda:ratio=0.3",
    "sparsegpt": "sparsegpt:ratio=0.3",
    "rtn": "rtn:bits=4,group=64",
    "gptq": "gptq:bits=4,group=64",
}
# A second pruning step asks for more sparsity, a second quantizer for fewer bits.
SECOND = {
    "magnitude": "magnitude:ratio=0.5",
    "wanda": "wanda:ratio=0.5",
    "sparsegpt": "sparsegpt:ratio=0.5",
    "rtn": "rtn:bits=3,group=32,sym=true",
    "gptq": "gptq:bits=3,sym=true",
}
EXTRA = [
    ("rtn:bits=4", "sparsegpt:nm=2:4"),
    ("gptq:bits=4,group=64", "wanda:nm=2:4"),
    ("sparsegpt:nm=2:4", "gptq:bits=3,group=64,act_order=true,static_groups=true"),
    ("magnitude:nm=1:4", "sparsegpt:ratio=0.5"),
]
CASES = [(FIRST[a], SECOND[b]) for a, b in itertools.product(FIRST, SECOND)] + EXTRA


def _expected_pruned(step_text: str, pre_pruned: torch.Tensor) -> int:
    """Pruned weights a pruning step guarantees, given what was pruned before (never revived).

    Each selection group (the layer, a row for Wanda, an N:M group) ends with exactly
    max(its target, what it already had pruned).
    """
    step = parse_step(step_text)
    config = step.config
    if config.nm:
        n, m = (int(v) for v in config.nm.split(":"))
        groups = pre_pruned.reshape(-1, m).sum(dim=1)
        return int(groups.clamp(min=m - n).sum())
    if step.name == "wanda":
        rows = pre_pruned.sum(dim=1)
        return int(rows.clamp(min=int(config.ratio * pre_pruned.shape[1])).sum())
    return max(int(config.ratio * pre_pruned.numel()), int(pre_pruned.sum()))


@pytest.mark.parametrize(("first", "second"), CASES, ids=[f"{a} > {b}" for a, b in CASES])
def test_pair_satisfies_every_constraint(tiny, tiny_calibration, first, second):
    pipe = parse_pipeline(f"{first} > {second}")
    assert parse_pipeline(pipe.to_text()).to_text() == pipe.to_text()
    units = compressible_units(tiny.model)
    expected: dict[str, int] = {}
    for step in pipe.steps:
        if step.family == "prune":
            expected = {
                name: _expected_pruned(step.to_text(), ~tiny.state.get(name).kept(get_weight(m)))
                for name, m in units.items()
            }
        assert apply_step(tiny, step, tiny_calibration, progress=False).units == 14
    families = [s.family for s in pipe.steps]
    for name, module in units.items():
        w = get_weight(module)
        c = tiny.state.get(name)
        assert torch.isfinite(w).all()
        if "prune" in families:
            pruned = ~c.mask
            assert (w[pruned] == 0).all(), name
            assert int(pruned.sum()) == expected[name], name
            nm = [s.config.nm for s in pipe.steps if s.family == "prune"]
            for pattern in filter(None, nm):
                n, m = (int(v) for v in pattern.split(":"))
                assert ((w.view(w.shape[0], -1, m) != 0).sum(dim=2) <= n).all()
        if "quantize" in families:
            last_q = [s for s in pipe.steps if s.family == "quantize"][-1]
            assert c.grid.bits == last_q.config.bits
            assert c.grid.contains(w), name
            size = c.grid.group_size
            cut = (w.shape[1] // size) * size
            groups = w[:, :cut].reshape(-1, size)
            assert max(int(torch.unique(g).numel()) for g in groups[::61]) <= 2**c.grid.bits
