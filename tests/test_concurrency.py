"""Two processes on one run store and one prefix cache at once: both finish, every run is
stored once, and every cached prefix is computed and written once.

The processes are forked from the test with the two-block SmolLM2 and its study already made
(no second import of torch, load of the model or preparation of the protocol); each opens its
own store and cache, as two ``pqorder`` processes would, and they start together."""

import multiprocessing
from collections import Counter

import torch

from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.pipeline import parse_pipeline
from pqorder.prefix_cache import PrefixCache
from pqorder.store import Run, RunStore
from pqorder.study import Study

PROTOCOL = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=128, batch_size=1)
PIPELINE = "magnitude:ratio=0.3 > rtn:bits=4,group=64,sym=false"  # both want its prefix
PUTS = 100  # runs each process puts right after the start: every other key shared


def _child(study: Study, root, me: int, start, results) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive a fork
    written, save = [], PrefixCache._save

    def counted(self, key, *args):  # every entry this process writes
        written.append(key)
        save(self, key, *args)

    PrefixCache._save = counted
    store = study.store = RunStore(root / "runs.sqlite")
    study.cache = PrefixCache(root / "cache")
    start.wait()
    stored = {}
    for i in range(PUTS):
        key = f"shared-{i}" if i % 2 == 0 else f"own-{me}-{i}"
        run = Run(
            key=key,
            study="stress",
            model="m",
            pipeline="p",
            n_steps=0,
            calibration=None,
            protocol={},
            metric_name="x",
            value=float(me),
            direction="higher",
        )
        run = store.put(run)
        stored[key] = (run.id, run.value)
    run = study.evaluate(parse_pipeline(PIPELINE).steps)
    stored[run.key] = (run.id, run.value)
    results.put({"stored": stored, "written": written})


def test_two_processes_share_a_store_and_a_prefix_cache(tiny, tmp_path):
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    study = Study(tiny, PROTOCOL)  # each process gives it its own store and cache
    procs = [
        ctx.Process(target=_child, args=(study, tmp_path, me, start, results)) for me in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:  # the results are small: they wait in the queue's pipe
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    seen = [results.get(timeout=10) for _ in procs]

    runs = RunStore(tmp_path / "runs.sqlite").query()
    assert len(runs) == len({r.key for r in runs}) == PUTS // 2 + PUTS + 1  # shared, own, study
    by_key = {r.key: (r.id, r.value) for r in runs}
    for child in seen:  # each process got back exactly the row that is stored
        assert all(by_key[key] == got for key, got in child["stored"].items())
    shared = [k for k in by_key if k.startswith("shared-")]
    assert len(shared) == PUTS // 2 and {by_key[k][1] for k in shared} <= {0.0, 1.0}
    (run,) = [r for r in runs if r.study == "study"]
    assert run.pipeline == PIPELINE and run.ok and run.executor == "local"

    # the one-step prefix (magnitude) was written once, by one process; the other loaded it
    written = Counter(key for child in seen for key in child["written"])
    assert list(written.values()) == [1], written
    entries = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert sorted(entries) == sorted(written)
