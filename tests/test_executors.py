"""Executors: studies run in a process pool or on Ray give the runs the driver would have made,
the driver alone stores them, and killed workers or drivers lose no finished run."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqorder import api
from pqorder.cli import app
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.executors import Job, check_address, executor_spec, plan
from pqorder.pipeline import parse_step
from pqorder.prefix_cache import PrefixCache
from pqorder.store import RunStore
from pqorder.study import Study

# Two 128-token windows of Emma: the jobs stay cheap, the workers' start-up dominates.
PROTOCOL = PerplexityProtocol("austen:emma", seqlen=128, max_tokens=256, batch_size=2)
CALIBRATION = CalibrationSpec("austen:pride", 4, 64, 0)
PRUNE = [parse_step("magnitude:ratio=0.2")]
QUANT = [parse_step("rtn:bits=4,group=128"), parse_step("rtn:bits=3,group=128")]
GRID_RUNS = 1 + 3 + 4  # dense, each step alone, both orders of the two pairs


def _open(tiny_dir, tmp_path, executor, workers=2):
    return api.open_study(
        str(tiny_dir),
        f"{executor}-study",
        PROTOCOL,
        CALIBRATION,
        tmp_path / "runs.sqlite",
        PrefixCache(tmp_path / "prefixes"),
        progress=False,
        executor=executor,
        workers=workers,
    )


def _kill_a_worker_mid_run(study: Study) -> threading.Thread:
    """SIGKILL the first worker once a job has finished (the workers are busy by then)."""

    def kill() -> None:
        deadline = time.time() + 300
        while study.executor.jobs_done < 1 and time.time() < deadline:
            time.sleep(0.02)
        os.kill(study.executor.pids[0], signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _check_grid_after_a_kill(study: Study, tmp_path, kind: str) -> None:
    """Every run once, made by the workers; the killed job redone, nothing else twice."""
    runs = RunStore(tmp_path / "runs.sqlite").query()
    assert len(runs) == len({r.key for r in runs}) == GRID_RUNS
    assert {r.executor for r in runs} == {kind} and all(r.ok for r in runs)
    assert study.executor.workers_lost == 1
    assert study.executor.jobs_done == GRID_RUNS  # the lost job counted once, when redone
    # each distinct prefix computed once: 3 single steps, then one step on top of each order
    assert study.spend.applied_steps <= 3 + 4


def test_plan_groups_jobs_by_first_step_in_prefix_order():
    p, q3, q4 = PRUNE[0], QUANT[1], QUANT[0]
    jobs = [Job((q3, p)), Job((p, q4)), Job(()), Job((p,)), Job((p, q3)), Job((q3,))]
    assert [[j.steps for j in g] for g in plan(jobs)] == [
        [(p,), (p, q3), (p, q4)],
        [(q3,), (q3, p)],
        [()],
    ]


def test_process_pool_matches_the_driver_and_survives_a_killed_worker(tiny_dir, tmp_path):
    study = _open(tiny_dir, tmp_path, "process")
    killer = _kill_a_worker_mid_run(study)
    grid = api.pair_grid(study, PRUNE, QUANT)
    killer.join()
    study.executor.close()
    _check_grid_after_a_kill(study, tmp_path, "process")
    # the driver, evaluating locally on its own copy of the model, gets the workers' numbers
    local = Study(study.lm, PROTOCOL, CALIBRATION, None, None)
    for steps in [(PRUNE[0], QUANT[0]), (QUANT[1], PRUNE[0])]:
        worker_run = study.evaluate(steps)
        assert local.evaluate(steps).value == pytest.approx(worker_run.value, rel=1e-5)
    assert len(grid.pairs) == 2 and all(p.advantage_q_first is not None for p in grid.pairs)


def test_a_pooled_sweep_computes_the_local_errors_while_the_workers_run(tiny_dir, tmp_path):
    """The driver's thread finds each point's local errors during the prefetch; they equal
    the ones the driver alone computes after it."""
    pooled = _open(tiny_dir, tmp_path, "process")
    busy = {}
    prefetch = pooled.prefetch

    def watched(orders, protocols=()):
        prefetch(orders, protocols)
        busy["samples after"] = dict(pooled._samples)

    pooled.prefetch = watched
    swept = api.sweep(pooled, ["magnitude"], [0.2], "rtn:group=128", [4], None)
    pooled.executor.close()
    local = _open(tiny_dir, tmp_path / "local", "local", workers=1)
    alone = api.sweep(local, ["magnitude"], [0.2], "rtn:group=128", [4], None)
    (point,), (reference,) = swept.points, alone.points
    assert point.local_log_ratio is not None
    assert point.local_log_ratio == pytest.approx(reference.local_log_ratio, rel=1e-6)
    assert point.advantage_q_first == pytest.approx(reference.advantage_q_first, rel=1e-5)
    # the statistics pass ran on the driver's thread while the workers held the prefetch (run
    # alone, the driver would only start it after the prefetch returned)
    assert 5 in busy["samples after"]


def _sweep(model_dir, store, *executor: str) -> list[str]:
    return [
        *(sys.executable, "-m", "pqorder", "sweep", "-m", str(model_dir)),
        *("--prune", "magnitude", "--ratios", "0.1", "--quant", "rtn:group=128", "--bits", "3"),
        *("--seqlen", "128", "--max-tokens", "256", "--no-cache"),
        *("--store", str(store), "--study", "resume", "--plot", str(store.with_suffix(".png"))),
        *executor,
    ]


def _ok_rows(store) -> int:
    try:
        with sqlite3.connect(store) as conn:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (from /proc): the fork server, the workers it forked."""
    parents = {p: _stat(p)[1] for p in _live()}
    found, frontier = [], [str(pid)]
    while frontier:
        below = [p for p, parent in parents.items() if parent in frontier]
        found += below
        frontier = [str(p) for p in below]
    return found


def _live() -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [p for p in pids if _stat(p)[0] not in ("Z", "X", "")]


def _stat(pid: int) -> tuple[str, str]:
    """(state, parent pid) of a process; ("", "") once it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return "", ""
    return fields[0], fields[1]


def test_a_killed_driver_loses_no_finished_run_and_its_workers_stop(tiny_dir, tmp_path):
    store = tmp_path / "runs.sqlite"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    pool = ("--executor", "process", "--workers", "2")
    driver = subprocess.Popen(_sweep(tiny_dir, store, *pool), env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while _ok_rows(store) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = _descendants(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert len(workers) >= 3  # the fork server and two workers at least
    deadline = time.time() + 60  # they see the driver's end of their pipes close
    while set(workers) & set(_live()) and time.time() < deadline:
        time.sleep(0.1)
    assert not set(workers) & set(_live()), "workers outlived their driver"
    before = {r.key: (r.id, r.created) for r in RunStore(store).query()}
    assert 2 <= len(before) < 6 and {r.executor for r in RunStore(store).query()} == {"process"}

    # resumed in the driver alone (the store, not the executor, knows what is done)
    done = subprocess.run(_sweep(tiny_dir, store), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = RunStore(store).query()
    # dense + reference curve (3, 8 bits) + the pruner alone + both orders
    assert len(after) == len({r.key for r in after}) == 1 + 2 + 1 + 2
    for run in after:
        if run.key in before:
            assert (run.id, run.created) == before[run.key]  # kept, not recomputed
        else:
            assert run.executor == "local"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_executor_settings_are_one_line_before_work(tmp_path, monkeypatch):
    cases = [
        ({"workers": 0}, "--workers must be at least 1, got 0"),
        ({"kind": "local", "workers": 2}, "--executor local runs one job at a time"),
        ({"kind": "threads"}, "unknown executor 'threads'"),
        ({"kind": "process", "address": "auto"}, "--ray-address is for --executor ray"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            executor_spec(**kwargs)
        assert "\n" not in str(info.value)
    assert executor_spec(workers=2).kind == "process"  # several workers: a process pool
    assert executor_spec().kind == "local"
    # the CLI refuses before the model (a missing one here) is even looked at
    runner = CliRunner()
    result = runner.invoke(app, ["search", "-m", "/no/model", "--methods", "rtn", "--workers", "0"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "--workers must be at least 1" in str(result.exception)
    # a cache directory that cannot be written: refused before a worker or the model starts
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write the prefix cache"):
        api.open_study("/no/model", cache=PrefixCache(a_file / "prefixes"), workers=2)
    # Ray: not installed, or a cluster address nothing answers on
    # (an empty module: what a folder named ray in the working directory imports as)
    for stand_in in (None, types.ModuleType("ray")):
        monkeypatch.setitem(sys.modules, "ray", stand_in)
        with pytest.raises(ConfigError, match=r"needs Ray: pip install 'pqorder\[ray\]'"):
            executor_spec("ray", 2)
    monkeypatch.undo()  # Ray as it was
    refused = r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+: Connection refused"
    with pytest.raises(ConfigError, match=refused):
        check_address(f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ConfigError, match="--ray-address takes host:port"):
        check_address("nowhere")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the module's Ray tests (start-up takes seconds)."""
    ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_actors_run_the_study_and_survive_a_killed_worker(local_ray, tiny_dir, tmp_path):
    study = _open(tiny_dir, tmp_path, "ray")
    killer = _kill_a_worker_mid_run(study)
    api.pair_grid(study, PRUNE, QUANT)
    killer.join()
    study.executor.close()
    assert local_ray.is_initialized()  # the fixture's instance: the executor did not own it
    _check_grid_after_a_kill(study, tmp_path, "ray")
