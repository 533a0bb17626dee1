"""Faults on disk: a damaged prefix-cache entry is recomputed, a full disk or a read-only
directory is one clear line with nothing half-written, and the run store stays intact.

Full and read-only file systems are small tmpfs mounts (needs root; skipped otherwise, except
where ``chmod`` makes a directory read-only for a normal user)."""

import json
import os
import subprocess

import pytest
import torch

from pqorder.artifacts import save_compressed
from pqorder.atomic import check_output
from pqorder.dense import DenseReference
from pqorder.engine import apply_step
from pqorder.errors import ConfigError, WriteError
from pqorder.eval import protocol_dict
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import parse_step
from pqorder.prefix_cache import ENTRY, LOCKS, STATE, WEIGHTS, PrefixCache, checksum
from pqorder.store import Run, RunStore, StoreError
from pqorder.study import Study

PROTOCOL = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=128, batch_size=1)
P, Q = parse_step("rtn:bits=4,group=64"), parse_step("magnitude:ratio=0.3")


def _weights(lm) -> dict[str, torch.Tensor]:
    return {n: get_weight(m).clone() for n, m in compressible_units(lm.model).items()}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message.strip() and len(message.splitlines()) == 1
    return message


def _mount(folder, options: str) -> None:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (a tmpfs), unmounted afterwards."""
    folder = tmp_path / "small"
    _mount(folder, "size=2m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A directory nobody can write: a read-only tmpfs for root, else chmod 555."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    _mount(folder, "ro,size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def _study(lm, tmp_path, name: str, cache: PrefixCache) -> Study:
    return Study(lm, PROTOCOL, store=RunStore(tmp_path / f"{name}.sqlite"), cache=cache, name=name)


# -- damaged entries --------------------------------------------------------------------------
def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit in the middle of the tensor data
    path.write_bytes(bytes(data))


def test_a_damaged_entry_counts_as_absent_and_is_recomputed(tiny, tmp_path):
    cache = PrefixCache(tmp_path / "prefixes")
    first = _study(tiny, tmp_path, "first", cache)
    run = first.evaluate((P, Q))  # caches P
    key = first._prefix_key((P,))
    entry = tmp_path / "prefixes" / key
    sound = {f.name: f.read_bytes() for f in entry.iterdir()}
    recorded = json.loads(sound[ENTRY])["files"]
    assert all(recorded[f]["sha256"] == checksum(entry / f) for f in (WEIGHTS, STATE))
    first.reset()
    dense = _weights(tiny)
    for damage, file in ((_truncate, WEIGHTS), (_flip, WEIGHTS), (_flip, STATE)):
        entry.mkdir(exist_ok=True)
        for name, data in sound.items():
            (entry / name).write_bytes(data)
        damage(entry / file)
        assert cache.has(key) == (damage is _flip)  # a size mismatch is seen without reading
        assert cache.load(key, tiny, first._dense) is None  # refused, the model untouched
        assert not entry.exists()
        assert all(torch.equal(dense[n], w) for n, w in _weights(tiny).items())

    again = _study(tiny, tmp_path, "again", cache)  # a new store: nothing stored to reuse
    rerun = again.evaluate((P, Q))
    assert (again.spend.cache_hits, again.spend.applied_steps) == (0, 2)  # P computed again
    assert rerun.value == run.value
    files = json.loads((entry / ENTRY).read_text())["files"]  # the entry was written anew
    assert all(checksum(entry / f) == files[f]["sha256"] for f in (WEIGHTS, STATE))
    assert (entry / WEIGHTS).read_bytes() == sound[WEIGHTS]  # (the state's metadata order varies)
    again.reset()


def test_temp_dirs_of_dead_writers_are_cleared_and_live_ones_kept(tiny, tmp_path):
    cache = PrefixCache(tmp_path)
    dead, live = tmp_path / ".dead-x1", tmp_path / ".live-x2"
    for folder in (dead, live):
        folder.mkdir()
        (folder / WEIGHTS).write_bytes(b"half of an entry")
    with cache._locked("live"):  # a writer still at work holds its key's lock
        apply_step(tiny, P, None, progress=False)
        cache.save("k", tiny, [], DenseReference(tiny))
    assert not dead.exists() and live.exists() and cache.has("k")
    assert (tmp_path / LOCKS).is_dir()


# -- full disk ---------------------------------------------------------------------------------
def test_a_full_disk_leaves_no_partial_entry_and_the_store_intact(tiny, tmp_path, small_disk):
    store_path = tmp_path / "runs.sqlite"
    study = Study(tiny, PROTOCOL, store=RunStore(store_path), cache=PrefixCache(small_disk))
    dense = study.dense_run()
    with pytest.raises(WriteError) as info:  # the 4-bit codes of 14 units need ~7 MB
        study.evaluate((P,))
    message = _one_line(info)
    assert "No space left on device" in message and str(small_disk) in message
    assert sorted(p.name for p in small_disk.iterdir()) == [LOCKS]  # no entry, no temp dir
    assert [r.key for r in RunStore(store_path).query()] == [dense.key]  # no failed run of P
    study.cache = None  # the same study goes on without the cache
    assert study.evaluate((P,)).ok
    study.reset()


def _runs(n: int) -> list[Run]:
    return [
        Run(
            key=f"k{i}",
            study="s",
            model="m",
            pipeline=P.to_text(),
            n_steps=1,
            calibration=None,
            protocol=protocol_dict(PROTOCOL),
            metric_name="perplexity",
            value=30.0 + i,
            direction="lower",
        )
        for i in range(n)
    ]


def test_a_full_disk_during_an_export_leaves_nothing(tiny, tmp_path, small_disk):
    store = RunStore(tmp_path / "runs.sqlite")
    for run in _runs(60):
        store.put(run)
    (small_disk / "filler").write_bytes(b"\0" * (2 * 2**20 - 8192))  # two pages left
    for path in (small_disk / "runs.json", small_disk / "runs.csv", small_disk / "model"):
        with pytest.raises(WriteError) as info:
            if path.suffix:
                store.export(store.query(), path)
            else:  # the compressed model (the HF checkpoint needs ~120 MB)
                save_compressed(tiny, path, {}, overwrite=False)
        assert "No space left on device" in _one_line(info)
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert len(store.query()) == 60 and store.get("k3").value == 33.0


# -- read-only and impossible paths ----------------------------------------------------------
def test_read_only_and_impossible_places_are_refused_before_work(tmp_path, read_only):
    with pytest.raises(ConfigError, match="prefix cache") as info:
        PrefixCache(read_only / "prefixes")
    assert "not a writable directory" in _one_line(info)
    with pytest.raises(ConfigError, match="output") as info:
        check_output(read_only / "out" / "model", overwrite=False)
    _one_line(info)
    with pytest.raises(StoreError, match="cannot create the run store") as info:
        RunStore(read_only / "runs" / "runs.sqlite")
    _one_line(info)
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the run store") as info:
        RunStore(a_file / "runs.sqlite")
    _one_line(info)
    with pytest.raises(ConfigError, match="prefix cache"):
        PrefixCache(a_file / "prefixes")


def test_a_store_on_a_read_only_file_system_is_refused_and_left_intact(tmp_path):
    folder = tmp_path / "ro"
    _mount(folder, "size=1m")
    try:
        store = RunStore(folder / "runs.sqlite")
        store.put_analysis("s", "note", {"kept": True})
        store.close()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        with pytest.raises(StoreError, match="cannot write the run store") as info:
            RunStore(folder / "runs.sqlite")
        _one_line(info)
        subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        store = RunStore(folder / "runs.sqlite")
        assert store.analyses("s")[0]["payload"] == {"kept": True}
        store.close()
    finally:
        subprocess.run(["umount", str(folder)], check=True)
