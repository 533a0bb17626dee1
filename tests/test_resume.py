"""A sweep killed with SIGKILL loses nothing that finished, and the rerun skips it."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

from pqorder.store import RunStore


def _sweep_cmd(model_dir, store, plot):
    return [
        sys.executable,
        "-m",
        "pqorder",
        "sweep",
        "-m",
        str(model_dir),
        "--prune",
        "magnitude",
        "--ratios",
        "0.1,0.2",
        "--quant",
        "rtn:group=128",
        "--bits",
        "3,4",
        "--seqlen",
        "256",
        "--max-tokens",
        "1024",
        "--store",
        str(store),
        "--study",
        "resume",
        "--plot",
        str(plot),
        "--no-cache",
    ]


def _ok_rows(store) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_sweep_resumes_without_recomputing(tiny_dir, tmp_path):
    store = tmp_path / "runs.sqlite"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        _sweep_cmd(tiny_dir, store, tmp_path / "a.png"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while _ok_rows(store) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    before = {r.key: (r.id, r.created) for r in RunStore(store).query()}
    assert len(before) >= 4

    done = subprocess.run(
        _sweep_cmd(tiny_dir, store, tmp_path / "b.png"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    after = RunStore(store).query()
    # dense (collapse threshold) + reference curve (3, 4, 8 bits) + 2 ratios alone + 8 orders
    assert len(after) == len({r.key for r in after}) == 1 + 3 + 2 + 8
    for run in after:
        if run.key in before:
            assert (run.id, run.created) == before[run.key]  # kept, not recomputed
    assert (tmp_path / "b.png").exists()
