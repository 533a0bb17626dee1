"""Compact prefix-cache entries and the dense reference read back from the model files, on real
SmolLM2 weights (first two blocks; the alias checkpoint holds the embedding once, tied)."""

import copy
import os

import pytest
import torch

from pqorder.compact import CODES, DENSE, KEPT, RAW, dense_names
from pqorder.dense import DenseReference, same_bits
from pqorder.engine import apply_step
from pqorder.errors import PqorderError
from pqorder.pipeline import parse_step
from pqorder.prefix_cache import WEIGHTS, PrefixCache
from pqorder.snapshot import model_weights
from pqorder.state import CompressionState

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _manifest(cache, key):
    from safetensors import safe_open

    from pqorder.compact import manifest_from_text

    with safe_open(str(cache.root / key / WEIGHTS), "pt") as f:
        return manifest_from_text(f.metadata()["manifest"])


def _same_model(lm, weights, state: CompressionState) -> bool:
    now = lm.model.state_dict()
    masks = all(
        torch.equal(lm.state.get(n).kept(torch.empty(0)), c.kept(torch.empty(0)))
        for n, c in state.units.items()
        if c.mask is not None
    )
    return (
        now.keys() == weights.keys()
        and all(same_bits(now[k], weights[k]) for k in weights)
        and lm.state.units.keys() == state.units.keys()
        and lm.state.model == state.model
        and masks
    )


PIPELINES = {
    "gptq": ("gptq:bits=4,group=64",),
    "rtn3": ("rtn:bits=3,group=128",),
    "sparsegpt": ("sparsegpt:ratio=0.5",),
    "sparsegpt>rtn": ("sparsegpt:ratio=0.5", "rtn:bits=4,group=128"),
    "rotate": ("rotate",),
    "sleb": ("sleb:blocks=1,keep_first=0,keep_last=1,samples=2",),  # removes block 0
}
# Per pipeline: how the unit weights are stored, and the smallest size gain over format 2
# (every tensor in fp32, the tied head twice) the entry must reach.
EXPECTED = {
    "gptq": (CODES, 30),
    "rtn3": (CODES, 30),
    "sparsegpt": (KEPT, 10),
    "sparsegpt>rtn": (CODES, 30),
    "rotate": (RAW, 0.99),
    "sleb": (DENSE, 1000),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_compact_entry_restores_bit_identically(name, tiny, tiny_calibration, tmp_path):
    dense = DenseReference(tiny)
    assert dense.in_memory == ()  # every tensor of the cut model is read back from the file
    for text in PIPELINES[name]:
        apply_step(tiny, parse_step(text), tiny_calibration, progress=False)
    held, state = model_weights(tiny), copy.deepcopy(tiny.state)
    cache = PrefixCache(tmp_path, max_gb=1)
    cache.save("k", tiny, [], dense)
    dense.restore(tiny)
    assert not _same_model(tiny, held, state)
    cache.load("k", tiny, dense)
    assert _same_model(tiny, held, state)
    manifest = _manifest(cache, "k")
    units = {k: how for k, (how, _) in manifest.items() if k.endswith("proj.weight")}
    how, gain = EXPECTED[name]
    assert set(units.values()) == {how}
    assert manifest[EMBED][0] == (RAW if name == "rotate" else DENSE)
    size = sum(f.stat().st_size for f in (tmp_path / "k").iterdir())
    old = _bytes(held) + (tmp_path / "k" / "state.safetensors").stat().st_size
    assert old / size > gain
    dense.restore(tiny)


def test_sleb_entry_names_the_moved_block_by_its_dense_name(tiny, tiny_calibration):
    dense = DenseReference(tiny)
    apply_step(tiny, parse_step(PIPELINES["sleb"][0]), tiny_calibration, progress=False)
    assert tiny.state.model.removed_blocks == [0]
    names = dense_names(tiny, dense)
    assert names["model.layers.0.mlp.up_proj.weight"] == "model.layers.1.mlp.up_proj.weight"
    assert names[EMBED] == EMBED
    dense.restore(tiny)


def test_a_grid_value_the_rebuild_misses_is_stored_raw(tiny, tmp_path):
    dense = DenseReference(tiny)
    apply_step(tiny, parse_step("rtn:bits=4,group=128"), None, progress=False)
    unit = "model.layers.1.self_attn.o_proj"
    weight = tiny.model.get_submodule(unit).weight
    with torch.no_grad():
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))  # one ulp off the grid
    held = model_weights(tiny)
    cache = PrefixCache(tmp_path, max_gb=1)
    cache.save("k", tiny, [], dense)
    assert _manifest(cache, "k")[f"{unit}.weight"][0] == RAW
    dense.restore(tiny)
    cache.load("k", tiny, dense)
    assert same_bits(tiny.model.get_submodule(unit).weight, held[f"{unit}.weight"])
    dense.restore(tiny)


def test_dense_from_files_equals_the_in_memory_snapshot(tiny, dense_tiny):
    files, memory = DenseReference(tiny), DenseReference(tiny, from_files=False)
    assert files.in_memory == () and len(memory.in_memory) == len(memory.keys)
    apply_step(tiny, parse_step("rotate"), None, progress=False)  # unties the head
    files.restore(tiny)
    assert tiny.model.lm_head.weight is tiny.model.model.embed_tokens.weight  # tied again
    assert _same_model(tiny, dense_tiny.weights, dense_tiny.state)
    name = "model.layers.0.self_attn.q_proj"
    assert same_bits(files.tensor(f"{name}.weight"), memory.tensor(f"{name}.weight"))


def test_a_model_changed_in_memory_keeps_what_changed_in_memory(tiny):
    key = "model.layers.0.mlp.down_proj.weight"
    with torch.no_grad():
        tiny.model.get_submodule("model.layers.0.mlp.down_proj").weight[0, 0] += 1.0
    changed = model_weights(tiny)
    dense = DenseReference(tiny)
    assert dense.in_memory == (key,)
    apply_step(tiny, parse_step("rtn:bits=4"), None, progress=False)
    dense.restore(tiny)
    assert _same_model(tiny, changed, CompressionState())
    tiny.source, source = None, tiny.source
    try:
        assert len(DenseReference(tiny).in_memory) == len(changed)  # no files: all in memory
    finally:
        tiny.source = source


def test_checkpoint_files_changed_during_a_study_are_refused(tiny):
    dense = DenseReference(tiny)
    path = tiny.source / "model.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        with pytest.raises(PqorderError, match="changed on disk since the study began"):
            dense.restore(tiny)
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
