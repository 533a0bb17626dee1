"""The contract matrix, read from the method registry: every registered method's ``example``
alone, after a pruning step, after a quantization step and (on SmolLM2) before and after a
rotation, plus a few settings that take other code paths after a pruning and a quantization
step, on small real models (the digits CNN, a two-block MiniLM, a two-block SmolLM2). Each
applied step must reach its target and keep what earlier steps established (masks, grids,
removed blocks, rotation, activation quantization), or the order is refused before any work
for the reason the methods declare (``rotates``, ``constrains_weights``, a model family they
need); every step and pipeline round-trips through its text, label and YAML forms."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pqorder.adapters import adapter_layers
from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.engine import StepRecord, apply_step, check_pipeline
from pqorder.errors import ConfigError, OrderError
from pqorder.factors import FactoredLinear
from pqorder.methods import REGISTRY, Method
from pqorder.methods.base import UnitMethod
from pqorder.methods.quarot import PRESETS
from pqorder.models.adapter import (
    compressible_units,
    decoder_blocks,
    get_weight,
    run_model,
    unit_shape,
)
from pqorder.models.architecture import architecture, attention_layout
from pqorder.models.loading import load_model
from pqorder.pipeline import Pipeline, load_recipe, parse_pipeline, parse_step
from pqorder.snapshot import Snapshot, restore_snapshot, take_snapshot
from pqorder.state import ActivationQuant, ModelTransforms, Rotation, UnitConstraint

# Earlier steps of the composition cells (applied once per model, then restored).
PRUNE_FIRST = "sparsegpt:ratio=0.3"
QUANT_FIRST = "gptq:bits=4,group=64"
ROTATION = "rotate"
CELLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # steps before, steps after
    "alone": ((), ()),
    "after-prune": ((PRUNE_FIRST,), ()),
    "after-quant": ((QUANT_FIRST,), ()),
    "after-rotation": ((ROTATION,), ()),
    "before-rotation": ((), (ROTATION,)),
}
# Settings that take another code path than the examples: composed on SmolLM2 only.
VARIANTS = (
    "magnitude:nm=1:4",
    "wanda:nm=2:4",
    "sparsegpt:nm=2:4",
    "gptq:bits=3,group=64,act_order=true,static_groups=true",
    "structured:target=heads,ratio=0.25,score=activation",
    "actquant:bits=4,per=tensor,sym=false,kv_bits=4",
)
VARIANT_CELLS = ("after-prune", "after-quant")
MODEL_CELLS = {
    "digits": ("alone", "after-prune", "after-quant"),
    "minilm": ("alone", "after-prune", "after-quant"),
    "smollm2": tuple(CELLS),
}
MODEL_KINDS = {"digits": "vision", "minilm": "encoder", "smollm2": "causal-lm"}
EXAMPLES = {name: getattr(cls, "example", None) for name, cls in sorted(REGISTRY.items())}


def _cases() -> Iterator[object]:
    """(model, cell, step text) for every example on every model, variants composed on
    SmolLM2; a method declared LLM-only gets one cell on the other models, where it must be
    refused."""
    examples = [t for t in EXAMPLES.values() if t is not None]
    for model, model_cells in MODEL_CELLS.items():
        runs = [(t, model_cells) for t in examples]
        runs += [(t, VARIANT_CELLS) for t in VARIANTS if model == "smollm2"]
        for text, cells in runs:
            name = text.partition(":")[0]
            refused = MODEL_KINDS[model] not in REGISTRY[name].kinds
            for cell in ("alone",) if refused else cells:
                yield pytest.param(model, cell, text, id=f"{model}|{cell}|{text}")


@dataclass
class Bench:
    """A small real model, its calibration samples and snapshots of the prefixes run on it."""

    lm: LoadedModel
    calibration: Tensor
    snapshots: dict[str, Snapshot]  # by pipeline text; "" is the dense model

    def start(self, steps: Sequence[Method]) -> None:
        """Put the model where ``steps`` leave it (applied the first time, then restored)."""
        key = Pipeline(tuple(steps)).to_text()
        if key not in self.snapshots:
            restore_snapshot(self.lm, self.snapshots[""])
            for step in steps:
                apply_step(self.lm, step, self.calibration, progress=False)
            self.snapshots[key] = take_snapshot(self.lm)
        restore_snapshot(self.lm, self.snapshots[key])


def _slice(lm: LoadedModel, blocks: int) -> LoadedModel:
    _path, layers = decoder_blocks(lm.model)
    del layers[blocks:]
    lm.model.config.num_hidden_layers = blocks
    return lm


@pytest.fixture(scope="module")
def benches(_tiny_session) -> Iterator[dict[str, Bench]]:
    """The digits CNN (16 training images), MiniLM cut to two blocks and the two-block SmolLM2
    (4 × 32 tokens of Pride and Prejudice each)."""
    text = CalibrationSpec("austen:pride", 4, 32, 0)
    smol, dense = _tiny_session
    minilm = _slice(load_model("minilm"), 2)
    digits = load_model("digits-cnn")
    images = sample_calibration(CalibrationSpec("digits:train", 16, 2, 0), None)
    found = {
        "digits": Bench(digits, images, {"": take_snapshot(digits)}),
        "minilm": Bench(
            minilm, sample_calibration(text, minilm.tokenizer), {"": take_snapshot(minilm)}
        ),
        "smollm2": Bench(smol, sample_calibration(text, smol.tokenizer), {"": dense}),
    }
    yield found
    restore_snapshot(smol, dense)


# -- what every step keeps and reaches -------------------------------------------------------
@dataclass
class Before:
    """What the model held before a step: each unit (by module) with its name, weight and
    constraint, the model transforms, the block count, and its outputs on ``samples``."""

    units: dict[nn.Module, tuple[str, Tensor, UnitConstraint]]
    transforms: ModelTransforms
    blocks: int
    samples: Tensor
    outputs: Tensor

    def kept(self, module: nn.Module) -> Tensor:
        _name, w, constraint = self.units[module]
        return constraint.kept(w)


@torch.no_grad()
def _outputs(lm: LoadedModel, samples: Tensor) -> Tensor:
    out = run_model(lm.model, samples)
    return (out if isinstance(out, Tensor) else out[0]).clone()


def _before(lm: LoadedModel, samples: Tensor) -> Before:
    units = {
        module: (name, get_weight(module), copy.deepcopy(lm.state.get(name)))
        for name, module in compressible_units(lm.model).items()
    }
    blocks = len(decoder_blocks(lm.model)[1])
    transforms = copy.deepcopy(lm.state.model)
    return Before(units, transforms, blocks, samples, _outputs(lm, samples))


def _expected_pruned(step: Method, pre_pruned: Tensor) -> int:
    """Pruned weights an unstructured/N:M pruner guarantees, given what was pruned before.

    Each selection group (the layer, a row for per-row pruners, an N:M group) ends with exactly
    max(its target, what it already had pruned).
    """
    config = step.config
    if config.nm:
        n, m = (int(v) for v in config.nm.split(":"))
        groups = pre_pruned.reshape(-1, m).sum(dim=1)
        return int(groups.clamp(min=m - n).sum())
    if step.per_row:
        rows = pre_pruned.sum(dim=1)
        return int(rows.clamp(min=int(config.ratio * pre_pruned.shape[1])).sum())
    return max(int(config.ratio * pre_pruned.numel()), int(pre_pruned.sum()))


def _pruned_elements(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    for name, module in compressible_units(lm.model).items():
        expected = _expected_pruned(step, ~before.kept(module))
        assert int((~lm.state.get(name).mask).sum()) == expected, name


def _pruned_filters(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    for name, module in compressible_units(lm.model).items():
        old, mask = before.kept(module), lm.state.get(name).mask
        dead = ~mask.any(dim=1)
        target = int(step.config.ratio * mask.shape[0])
        assert int(dead.sum()) == max(target, int((~old.any(dim=1)).sum())), name
        assert dead[(old & ~mask).any(dim=1)].all(), name  # newly pruned: whole rows only


def _dead_groups(mask: Tensor, size: int, columns: bool = False) -> Tensor:
    """Which runs of ``size`` consecutive rows (or columns) of a keep mask are entirely pruned."""
    m = mask.t() if columns else mask
    return (~m).reshape(-1, size * m.shape[1]).all(dim=1)


def _pruned_groups(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    """Structured: round(ratio × groups) more heads or MLP channels are entirely pruned."""
    cfg = step.config
    rotation = lm.state.model.rotation
    online = rotation is not None and rotation.online
    path, blocks = decoder_blocks(lm.model)
    arch = architecture(lm.model)
    parts = (
        [(arch.qkv[0], False), (arch.attention_out, True)]
        if cfg.target == "heads"
        else [(name, False) for name in arch.mlp_in] + ([] if online else [(arch.mlp_out, True)])
    )
    size = attention_layout(lm.model.config).head_dim if cfg.target == "heads" else 1
    for i, block in enumerate(blocks):
        dead_before, dead_after = [], []
        for part, columns in parts:
            module = block.get_submodule(part)
            mask = lm.state.get(f"{path}.{i}.{part}").kept(get_weight(module))
            dead_before.append(_dead_groups(before.kept(module), size, columns))
            dead_after.append(_dead_groups(mask, size, columns))
        old = int(torch.stack(dead_before).all(dim=0).sum())
        new = torch.stack(dead_after).all(dim=0)
        k = round(cfg.ratio * new.numel())
        assert max(k, old) <= int(new.sum()) <= old + k, f"{path}.{i}"
    assert record.units == len(blocks) * len(parts)


def _removed_blocks(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    cfg, earlier = step.config, before.transforms.removed_blocks
    n_original = before.blocks + len(earlier)
    count = step.count(n_original)
    removed = record.details["removed_blocks"]
    alive = [i for i in range(n_original) if i not in earlier]
    assert len(removed) == count
    assert set(removed) <= set(alive[cfg.keep_first : len(alive) - cfg.keep_last])
    assert lm.state.model.removed_blocks == sorted([*earlier, *removed])
    assert len(decoder_blocks(lm.model)[1]) == before.blocks - count
    assert lm.model.config.num_hidden_layers == before.blocks - count
    assert record.units == 0


def _assert_grid(lm: LoadedModel, bits: int, group: int, sym: bool) -> None:
    """Every unit lies on a fresh grid with these settings (values checked for every step)."""
    for name, module in compressible_units(lm.model).items():
        grid, width = lm.state.get(name).grid, unit_shape(module)[1]
        assert grid is not None and grid.bits == bits, name
        assert grid.group_size == (group if 0 < group <= width else width), name
        if sym:
            assert (grid.zero == (grid.maxq + 1) / 2).all(), name


def _quantized(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    _assert_grid(lm, step.config.bits, step.config.group, step.config.sym)


def _mixed(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    """Every unit on a fresh grid of its allocated width (in the set), the average at most the
    budget and no single upgrade left that would still fit it (the greedy's stopping rule)."""
    cfg = step.config
    allocation = record.details["allocation"]
    units = compressible_units(lm.model)
    assert set(allocation) == set(units) and set(allocation.values()) <= set(cfg.widths)
    sizes = {name: get_weight(m).numel() for name, m in units.items()}
    used, budget = sum(allocation[n] * sizes[n] for n in units), cfg.avg * sum(sizes.values())
    assert used <= budget + 1e-6 and record.details["average_bits"] == used / sum(sizes.values())
    for name, module in units.items():
        grid, width = lm.state.get(name).grid, unit_shape(module)[1]
        assert grid is not None and grid.bits == allocation[name], name
        assert grid.group_size == (cfg.group if 0 < cfg.group <= width else width), name
        higher = [b for b in cfg.widths if b > allocation[name]]
        assert not higher or used + sizes[name] * (higher[0] - allocation[name]) > budget, name


def _rotated(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    cfg = step.config
    rotation = Rotation(cfg.rotation, cfg.seed, cfg.online)
    assert lm.state.model.rotation == rotation
    assert record.details["rotation"] == asdict(rotation)
    assert not lm.state.units  # no masks or grids
    if lm.state.model.activations is None:  # the same function, up to float rounding
        torch.testing.assert_close(_outputs(lm, before.samples), before.outputs, atol=1e-3, rtol=0)


def _quarot(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    cfg = step.config
    bits, a_bits, kv_bits = PRESETS[cfg.preset]
    assert lm.state.model.rotation == Rotation("hadamard", cfg.seed, online=True)
    _assert_grid(lm, bits, cfg.group, sym=True)
    acts = lm.state.model.activations
    recorded = None if acts is None else (acts.bits, acts.kv_bits)
    assert recorded == ((a_bits, kv_bits) if a_bits or kv_bits else None)


def _activations(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    cfg = step.config
    expected = ActivationQuant(cfg.bits, cfg.clip, cfg.kv_bits, cfg.kv_clip, cfg.per, cfg.sym)
    assert lm.state.model.activations == expected
    assert record.details["activations"] == asdict(expected)
    assert record.units == 0
    assert not torch.equal(_outputs(lm, before.samples), before.outputs)  # the forward quantizes


def _recovered(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    """LoRA: every targeted unit trained (rank × (in + out) factors each), the loss of every
    step recorded, the adapters merged away (the masks and grids are checked by the matrix)."""
    cfg, units = step.config, compressible_units(lm.model)
    assert record.units == len(units)
    assert record.details["trainable_params"] == sum(
        cfg.rank * sum(unit_shape(m)) for m in units.values()
    )
    curve = record.details["loss_curve"]
    assert len(curve) == cfg.steps and all(math.isfinite(v) for v in curve)
    assert lm.state.model.adapters is None and not adapter_layers(lm.model)


def _factored(lm: LoadedModel, step: Method, record: StepRecord, before: Before) -> None:
    """Every projection is a basis/coefficient pair at the ratio's ranks, the q/k/v and gate/up
    bases shared by the group, the old units' constraints gone, the factors unconstrained."""
    factoring = lm.state.model.factoring
    _path, blocks = decoder_blocks(lm.model)
    assert factoring is not None and factoring.group == step.config.group
    parts = sum(len(group) for group in architecture(lm.model).sequence)
    assert len(factoring.ranks) == parts * len(blocks)
    for name, rank in factoring.ranks.items():
        unit = lm.model.get_submodule(name)
        assert isinstance(unit, FactoredLinear) and unit.rank == rank, name
        assert name not in lm.state.units, name
    first, second = (b.get_submodule(architecture(lm.model).qkv[0]) for b in blocks[:2])
    assert first.basis is second.basis
    units = compressible_units(lm.model)
    assert all(lm.state.get(n).mask is None and lm.state.get(n).grid is None for n in units)
    assert record.units == len(units) and record.details["removed"] >= step.config.ratio
    assert not any(m in before.units for m in units.values())  # every unit is new


Target = Callable[[LoadedModel, Method, StepRecord, Before], None]
TARGETS: dict[str, Target] = {
    "magnitude": _pruned_elements,
    "wanda": _pruned_elements,
    "sparsegpt": _pruned_elements,
    "filters": _pruned_filters,
    "structured": _pruned_groups,
    "sleb": _removed_blocks,
    "rtn": _quantized,
    "gptq": _quantized,
    "mpq": _mixed,
    "rotate": _rotated,
    "quarot": _quarot,
    "actquant": _activations,
    "lora": _recovered,
    "share": _factored,
}


def _same_mask(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


def _assert_kept(lm: LoadedModel, step: Method, before: Before) -> None:
    """What earlier steps established survives: pruned weights stay pruned, grids stay (unless
    the step quantizes the weights anew), removed blocks, rotation and activation quantization
    stay; a step that constrains no weights leaves them untouched; a rotation only runs where
    it has nothing to destroy; units keep their names unless the step says otherwise."""
    t0, t1 = before.transforms, lm.state.model
    assert set(t0.removed_blocks) <= set(t1.removed_blocks)
    assert t0.rotation is None or t1.rotation == t0.rotation
    assert t0.activations is None or t1.activations is not None
    if step.rotates:
        assert all(c.mask is None and c.grid is None for _n, _w, c in before.units.values())
        return
    if step.factors:  # its units replace the old ones (checked by its target)
        return
    regrids = step.family == "quantize" and step.constrains_weights
    units = compressible_units(lm.model)
    assert all(m in before.units for m in units.values())  # no unit appears
    if step.keeps_units:
        assert [before.units[m][0] for m in units.values()] == list(units)
        assert len(units) == len(before.units)
    for name, module in units.items():
        _old_name, w0, c0 = before.units[module]
        c = lm.state.get(name)
        if not step.constrains_weights:
            assert torch.equal(get_weight(module), w0), name
        if step.family != "prune":  # only pruners change masks
            assert _same_mask(c.mask, c0.mask), name
        elif c0.mask is not None:  # pruned stays pruned
            assert c.mask is not None and not (c.mask & ~c0.mask).any(), name
        if c0.grid is not None and not regrids:
            assert c.grid is not None and c.grid.bits == c0.grid.bits, name
            assert torch.equal(c.grid.scale, c0.grid.scale), name
            assert torch.equal(c.grid.zero, c0.grid.zero), name


def _assert_constraints(lm: LoadedModel, steps: Sequence[Method]) -> None:
    """The model satisfies every constraint it holds: finite weights, exact zeros where pruned,
    values on the grid (at most 2^bits per group), the N:M pattern of every N:M step so far."""
    patterns = [getattr(s.config, "nm", None) for s in steps]
    for name, module in compressible_units(lm.model).items():
        w, c = get_weight(module), lm.state.get(name)
        assert torch.isfinite(w).all(), name
        if c.mask is not None:
            assert (w[~c.mask] == 0).all(), name
        if c.grid is not None:
            assert c.grid.contains(w), name
            size = c.grid.group_size
            groups = w[:, : (w.shape[1] // size) * size].reshape(-1, size)
            assert max(int(torch.unique(g).numel()) for g in groups[::61]) <= 2**c.grid.bits
        for pattern in filter(None, patterns):
            n, m = (int(v) for v in pattern.split(":"))
            assert ((w.view(w.shape[0], -1, m) != 0).sum(dim=2) <= n).all(), name


def _apply_and_check(bench: Bench, step: Method, done: Sequence[Method]) -> None:
    lm = bench.lm
    before = _before(lm, bench.calibration[:2])
    record = apply_step(lm, step, bench.calibration, progress=False)
    if isinstance(step, UnitMethod) or step.rotates:
        assert record.units == len(compressible_units(lm.model))
    TARGETS[step.name](lm, step, record, before)
    _assert_kept(lm, step, before)
    _assert_constraints(lm, (*done, step))


def _refusal(lm: LoadedModel, steps: Sequence[Method]) -> tuple[type[ConfigError], str] | None:
    """The error (and message pattern) the declared rules refuse this order with, or None:
    step by step, a model kind or a family capability it lacks, then the order rules."""
    arch = architecture(lm.model)
    for i, step in enumerate(steps):
        if lm.kind not in step.kinds:
            config = getattr(lm.model, "config", None)
            names = [type(lm.model).__name__, getattr(config, "model_type", "")]
            return ConfigError, "|".join(filter(None, names))
        if not all(arch.supports(c) for c in step.capabilities):
            return ConfigError, f"{step.name} needs .*; {arch.family} "
        if not step.works_on_factors and any(s.factors for s in steps[:i]):
            return OrderError, f"{step.name} cannot follow share"
        if step.rotates:
            if any(s.rotates for s in steps[:i]):
                return ConfigError, "already rotated"
            constrained = [s.name for s in steps[:i] if s.constrains_weights]
            if constrained:
                return OrderError, f"rotation after {', '.join(constrained)} would destroy"
    return None


def _assert_round_trips(pipe: Pipeline, folder: Path) -> None:
    """Each step's text and label, the pipeline's text and its YAML recipe parse back to it."""
    for step in pipe.steps:
        assert parse_step(step.to_text()) == step
        assert parse_step(step.label()) == step
    assert parse_pipeline(pipe.to_text()) == pipe
    assert parse_pipeline(pipe.to_text()).to_text() == pipe.to_text()
    recipe = folder / "recipe.yaml"
    recipe.write_text(pipe.to_yaml())
    assert load_recipe(recipe) == pipe


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_has_an_example_whose_text_round_trips(name):
    example = EXAMPLES[name]
    assert isinstance(example, str), f"{name} sets no `example`"
    step = parse_step(example)
    assert type(step) is REGISTRY[name]
    assert parse_step(step.to_text()) == step
    assert parse_step(step.to_text()).to_text() == step.to_text()
    assert parse_step(step.label()) == step
    assert name in TARGETS, f"the contract matrix has no target check for {name}"


def test_variants_and_declarations_name_registered_methods():
    assert {parse_step(t).name for t in VARIANTS} <= set(REGISTRY)
    assert not set(VARIANTS) & set(EXAMPLES.values())


def test_benches_are_the_small_real_models(benches):
    for bench in benches.values():
        bench.start(())
    sizes = {name: len(compressible_units(b.lm.model)) for name, b in benches.items()}
    assert sizes == {"digits": 5, "minilm": 12, "smollm2": 14}
    assert {name: b.lm.kind for name, b in benches.items()} == MODEL_KINDS


@pytest.mark.parametrize(("model", "cell", "text"), list(_cases()))
def test_contract(benches, tmp_path, model, cell, text):
    bench = benches[model]
    earlier, later = CELLS[cell]
    steps = tuple(parse_step(t) for t in (*earlier, text, *later))
    _assert_round_trips(Pipeline(steps), tmp_path)
    run_cell(bench, steps, len(earlier))


def run_cell(bench: Bench, steps: tuple, start: int) -> None:
    """One matrix cell: the declared refusal before work, or every step from ``start`` on
    applied with its target and the earlier constraints checked."""
    bench.start(())
    refusal = _refusal(bench.lm, steps)
    if refusal is not None:
        error, pattern = refusal
        with pytest.raises(error, match=pattern):
            check_pipeline(bench.lm, steps)
        return
    check_pipeline(bench.lm, steps)
    bench.start(steps[:start])
    for i in range(start, len(steps)):
        _apply_and_check(bench, steps[i], steps[:i])
