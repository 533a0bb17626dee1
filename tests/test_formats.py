"""Format versions of saved composition states and prefix-cache entries (issue "Core v2")."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pqorder.errors import ConfigError, FormatError
from pqorder.prefix_cache import ENTRY, FORMAT, STATE, WEIGHTS, PrefixCache
from pqorder.quantgrid import QuantGrid
from pqorder.state import CompressionState, ModelTransforms, UnitConstraint


def _state() -> CompressionState:
    grid = QuantGrid(4, 2, torch.ones(3, 1), torch.zeros(3, 1))
    state = CompressionState()
    state.set("layer", UnitConstraint(torch.tensor([[True, False]] * 3), grid))
    state.model.removed_blocks = [1]
    return state


def test_a_saved_state_names_its_format_and_loads_back(tmp_path):
    path = tmp_path / "state.safetensors"
    _state().save(path)
    back = CompressionState.load(path)
    assert torch.equal(back.get("layer").mask, _state().get("layer").mask)
    assert back.get("layer").grid.bits == 4 and back.model.removed_blocks == [1]


def test_a_state_saved_before_formats_reads_as_format_1(tmp_path):
    path = tmp_path / "state.safetensors"
    mask = torch.tensor([[1, 0]], dtype=torch.uint8)
    save_file({"layer.mask": mask}, str(path), metadata={"model": ModelTransforms().to_json()})
    assert CompressionState.load(path).get("layer").sparsity() == 0.5


def test_masks_are_saved_one_bit_per_weight_and_format_1_masks_still_load(tmp_path):
    mask = torch.rand(5, 13, generator=torch.Generator().manual_seed(0)) < 0.5
    state = CompressionState()
    state.set("layer", UnitConstraint(mask))
    path = tmp_path / "state.safetensors"
    state.save(path)
    saved = load_file(str(path))
    assert saved["layer.mask_bits"].dtype == torch.uint8 and saved["layer.mask_bits"].numel() == 9
    assert torch.equal(CompressionState.load(path).get("layer").mask, mask)
    meta = {"format": "1", "model": ModelTransforms().to_json()}
    save_file({"layer.mask": mask.to(torch.uint8)}, str(path), metadata=meta)  # one byte each
    assert torch.equal(CompressionState.load(path).get("layer").mask, mask)


def test_a_state_of_an_unknown_format_is_refused_in_one_line(tmp_path):
    path = tmp_path / "state.safetensors"
    meta = {"format": "7", "model": ModelTransforms().to_json()}
    save_file({"layer.mask": torch.ones(1, 2, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(FormatError, match="has format 7, but this pqorder reads format 1") as info:
        CompressionState.load(path)
    assert "\n" not in str(info.value)


def test_prefix_entries_of_another_format_count_as_absent(tmp_path):
    cache = PrefixCache(tmp_path, max_gb=1)
    files = {name: {"bytes": 0, "sha256": "0"} for name in (WEIGHTS, STATE)}
    for key, texts in {
        "current": {ENTRY: json.dumps({"format": FORMAT, "records": [], "files": files})},
        "v1": {"records.json": "[]"},  # what pqorder wrote before entries had a format
        "v2": {ENTRY: json.dumps({"format": 2, "records": []})},  # every weight, uncompressed
        "v3": {ENTRY: json.dumps({"format": 3, "records": []})},  # no checksums
        "newer": {ENTRY: json.dumps({"format": FORMAT + 1, "records": [], "files": files})},
        "broken": {ENTRY: "{not json"},
        "listed": {ENTRY: "[]"},
    }.items():
        (tmp_path / key).mkdir()
        for name in (WEIGHTS, STATE):
            (tmp_path / key / name).write_bytes(b"")
        for name, text in texts.items():
            (tmp_path / key / name).write_text(text)
    assert [
        k for k in ("current", "v1", "v2", "v3", "newer", "broken", "listed") if cache.has(k)
    ] == ["current"]


def test_prefix_cache_size_is_read_when_a_cache_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("PQORDER_PREFIX_CACHE_GB", "0.5")
    assert PrefixCache(tmp_path).max_bytes == 2**29
    assert PrefixCache(tmp_path, max_gb=2).max_bytes == 2**31
    monkeypatch.setenv("PQORDER_PREFIX_CACHE_GB", "lots")
    with pytest.raises(ConfigError, match="PQORDER_PREFIX_CACHE_GB takes a size in GB"):
        PrefixCache(tmp_path)
