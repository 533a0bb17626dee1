"""Two processes on one run store and one prefix cache at once (the two-block SmolLM2): both
finish, every run is stored once, and every cached prefix is computed and written once."""

import json
import subprocess
import sys
from collections import Counter

from pqorder.store import RunStore

PIPELINES = (
    "magnitude:ratio=0.3 > rtn:bits=4,group=64",
    "rtn:bits=4,group=64 > magnitude:ratio=0.3",
)
ARGS = [json.dumps(PIPELINES)]
PUTS = 120  # runs each process puts right after the start line: every other key shared

CHILD = """
import json, sys, time
from pathlib import Path

from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline
from pqorder.prefix_cache import PrefixCache
from pqorder.store import Run, RunStore
from pqorder.study import Study

model_dir, root, me, puts = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pipelines = json.loads(sys.argv[5])
written, save = [], PrefixCache._save

def counted(self, key, *args):  # every entry this process writes
    written.append(key)
    save(self, key, *args)

PrefixCache._save = counted
protocol = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=256, batch_size=2)
store = RunStore(root / "runs.sqlite")
study = Study(load_model(model_dir), protocol, store=store, cache=PrefixCache(root / "cache"))
(root / f"ready-{me}").touch()
while not all((root / f"ready-{i}").exists() for i in (0, 1)):  # start together
    time.sleep(0.005)
stored = {}
for i in range(puts):
    key = f"shared-{i}" if i % 2 == 0 else f"own-{me}-{i}"
    run = Run(key=key, study="stress", model="m", pipeline="p", n_steps=0, calibration=None,
              protocol={}, metric_name="x", value=float(me), direction="higher")
    run = store.put(run)
    stored[key] = [run.id, run.value]
for text in pipelines:
    run = study.evaluate(parse_pipeline(text).steps)
    stored[run.key] = [run.id, run.value]
print(json.dumps({"stored": stored, "written": written}))
"""


def test_two_processes_share_a_store_and_a_prefix_cache(tiny_dir, tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tiny_dir), str(tmp_path), str(me), str(PUTS), *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    seen = [json.loads(out) for out, _ in outputs]

    store = RunStore(tmp_path / "runs.sqlite")
    runs = store.query()
    assert len(runs) == len({r.key for r in runs}) == PUTS // 2 + PUTS + 2  # shared, own, studies
    by_key = {r.key: [r.id, r.value] for r in runs}
    for child in seen:  # each process got back exactly the row that is stored
        assert all(by_key[key] == got for key, got in child["stored"].items())
    shared = [k for k in by_key if k.startswith("shared-")]
    assert len(shared) == PUTS // 2
    assert {by_key[k][1] for k in shared} <= {0.0, 1.0}  # the first writer's run stayed
    study_runs = [r for r in runs if r.study == "study"]
    assert sorted(r.pipeline for r in study_runs) == sorted(PIPELINES)
    assert all(r.ok and r.executor == "local" for r in study_runs)

    # the two one-step prefixes (magnitude, rtn) were each written once, by one process
    written = Counter(key for child in seen for key in child["written"])
    assert len(written) == 2 and set(written.values()) == {1}, written
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entries) == sorted(written)
