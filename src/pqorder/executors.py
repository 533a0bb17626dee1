"""Executors: where a study's "apply these steps, evaluate" jobs run.

``local`` runs them in the driver, one after another, as an analysis asks for them (what
``Study.evaluate`` always did). ``process`` (a pool of spawned local processes) and ``ray`` (Ray
actors on a local instance or an existing cluster, each declaring its CPU and GPU needs) run
them in workers. A worker loads the model itself from the driver's spec (alias, directory or
hub id), shares the prefix cache directory (whose per-entry locks let one worker compute a
prefix while the others wait and load it) and returns plain run records. Only the driver writes
the run store, each run as soon as its job returns: killing the driver loses the jobs in flight
and nothing else, and killing a worker loses its current job, which a fresh worker redoes.

Jobs are planned from the prefix tree: the orders sharing a first step form one group, taken
by one worker in prefix order (a prefix before its extensions), so the prefix is computed once
and its extensions start from it. A worker with nothing left takes jobs from the end of another
worker's group when the cache is shared (it loads the prefix instead of recomputing it).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError, PqorderError
from pqorder.hardware import Placement
from pqorder.methods.base import Method
from pqorder.models.loading import load_model
from pqorder.prefix_cache import PrefixCache

EXECUTORS = ("local", "process", "ray")
RAY_EXTRA = "pip install 'pqorder[ray]'"
LOSSES_PER_WORKER = 3  # workers lost (killed, crashed) per worker slot before a run gives up


class WorkerError(PqorderError):
    """Workers cannot start, or keep dying: the run stops (finished runs are stored)."""


@dataclass(frozen=True)
class ExecutorSpec:
    """Checked executor settings: which executor, how many workers, which Ray cluster."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None  # Ray: an existing cluster (None: start a local instance)


def executor_spec(
    kind: str | None = None, workers: int = 1, address: str | None = None
) -> ExecutorSpec:
    """Executor settings, refused in one line before any work: ``workers`` below 1, ``local``
    with several workers (it runs one job at a time), Ray missing or its address unreachable.
    ``kind`` None means ``process`` for several workers, ``ray`` with an address, else local."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    kind = kind or ("ray" if address else "process" if workers > 1 else "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor '{kind}'; use one of {', '.join(EXECUTORS)}")
    if kind == "local" and workers > 1:
        raise ConfigError(
            f"--executor local runs one job at a time; for --workers {workers} use "
            "--executor process or ray"
        )
    if address and kind != "ray":
        raise ConfigError(f"--ray-address is for --executor ray, not {kind}")
    if kind == "ray":
        import_ray()
        if address:
            check_address(address)
    return ExecutorSpec(kind, workers, address or None)


def import_ray():
    """The ray module, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        ray = None
    if getattr(ray, "remote", None) is None:  # absent, or a stray folder named ray (/tmp/ray)
        raise ConfigError(f"--executor ray needs Ray: {RAY_EXTRA}")
    return ray


def check_address(address: str) -> None:
    """Refuse a Ray address (host:port, ray://host:port) nothing answers on; ``auto`` (the
    cluster this machine belongs to) is checked when Ray connects."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray-address takes host:port, ray://host:port or auto: {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}"
        ) from None


# -- jobs and what workers return ------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """Apply ``steps`` to the dense model and evaluate them under each of ``protocols``
    (indices into the study's prepared protocols): one compression, one run per protocol."""

    steps: tuple[Method, ...]
    protocols: tuple[int, ...] = (0,)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(s.to_text() for s in self.steps)


@dataclass
class Outcome:
    """A finished job: its runs (``Run.to_dict`` form) and what the worker spent on them."""

    runs: list[dict]
    spend: dict[str, float]


@dataclass
class Failure:
    """A job that raised in a worker: the error's type and its one-line message."""

    kind: type[BaseException]
    message: str

    def error(self) -> PqorderError:
        if issubclass(self.kind, PqorderError):
            try:
                return self.kind(self.message)
            except TypeError:  # a subclass taking other arguments
                pass
        return WorkerError(f"a worker failed: {self.kind.__name__}: {self.message}")


def plan(jobs: Sequence[Job]) -> list[list[Job]]:
    """The prefix tree's subtrees under the dense model: jobs grouped by first step, each group
    in prefix order (a prefix before its extensions), the largest groups first."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.texts[:1], []).append(job)
    ordered = [sorted(group, key=lambda j: j.texts) for group in groups.values()]
    return sorted(ordered, key=len, reverse=True)


# -- the worker side -------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the driver's study (plain, picklable data)."""

    model: str  # the spec ``load_model`` takes: alias, directory or hub id
    placement: Placement
    protocols: tuple[tuple[type, dict], ...]  # each protocol's class and public fields
    calibration: CalibrationSpec
    sequential: bool
    name: str
    cache: tuple[Path, float] | None  # prefix cache root and size limit (GiB)
    fingerprint: tuple[int, int]  # (tensors, parameters) of the dense model
    threads: int  # torch threads per worker
    study_type: type  # the driver's Study class (pickled by reference: this module is below it)


def fingerprint(model: torch.nn.Module) -> tuple[int, int]:
    """Tensor and parameter counts: enough to tell a checkpoint from a copy cut in memory."""
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


class Worker:
    """One worker's study: the model loaded from the driver's spec, the shared prefix cache,
    no run store (the driver's is the only writer)."""

    def __init__(self, setup: WorkerSetup) -> None:
        if setup.threads:
            torch.set_num_threads(setup.threads)
        lm = load_model(setup.model, setup.placement)
        if fingerprint(lm.model) != setup.fingerprint:
            raise ConfigError(
                f"the workers' model '{setup.model}' is not the driver's (changed in memory "
                "after loading?): workers load the model from its name or directory"
            )
        self.protocols = [kind(**fields) for kind, fields in setup.protocols]
        cache = PrefixCache(*setup.cache) if setup.cache else None
        self.study = setup.study_type(
            lm, self.protocols[0], setup.calibration, None, cache, setup.name, setup.sequential
        )
        for protocol in self.protocols[1:]:
            self.study.add_protocol(protocol)

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> Outcome | Failure:
        before = dataclasses.replace(self.study.spend)
        try:
            runs = [self.study.evaluate(job.steps, self.protocols[i]) for i in job.protocols]
        except Exception as exc:  # returned to the driver, which raises it there
            return Failure(type(exc), str(exc))
        spent = self.study.spend.since(before)
        return Outcome([r.to_dict() for r in runs], dataclasses.asdict(spent))


def _serve(conn: Connection, setup: WorkerSetup) -> None:
    """A process worker: load, say ready, then run jobs until told to stop or the driver is
    gone (its end of the pipe closed)."""
    try:
        worker = Worker(setup)
    except Exception as exc:
        conn.send(Failure(type(exc), str(exc)))
        return
    conn.send(worker.pid())
    while True:
        try:
            job = conn.recv()
            if job is None:
                return
            conn.send(worker.run(job))
        except (EOFError, OSError):  # the driver died: nobody wants the result
            return


LOST = object()  # what a pool's ``wait`` returns for a worker that died during its job


# What the fork server imports once, so each worker (and each replacement) starts without
# importing torch, transformers and pqorder again: seconds per worker.
PRELOAD = ["pqorder.executors", "pqorder.study", "pqorder.models.loading"]


class _ProcessPool:
    """Worker processes forked from a fork server: a fresh process that imported pqorder and
    nothing else (no driver state: no model, no threads, no CUDA context), one pipe each; a
    worker that dies is noticed through its process sentinel."""

    def __init__(self, setup: WorkerSetup, workers: int) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._setup = setup
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        try:
            for _ in range(workers):
                self._workers.append(self._spawn())
            self.pids = [self._ready(slot) for slot in range(workers)]
        except BaseException:  # one worker failed: stop the others
            self.close()
            raise

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs, self._setup), daemon=True)
        process.start()
        theirs.close()
        return process, ours

    def _ready(self, slot: int) -> int:
        process, conn = self._workers[slot]
        try:
            answer = conn.recv()
        except (EOFError, OSError):
            raise WorkerError(
                f"a process worker died while loading the model (exit code {process.exitcode})"
            ) from None
        if isinstance(answer, Failure):
            raise answer.error()
        return answer

    def submit(self, slot: int, job: Job) -> None:
        with contextlib.suppress(OSError):  # a worker already dead: ``wait`` reports it lost
            self._workers[slot][1].send(job)

    def wait(self, busy: set[int]) -> tuple[int, object]:
        conns = {self._workers[s][1]: s for s in busy}
        sentinels = {self._workers[s][0].sentinel: s for s in busy}
        ready = wait([*conns, *sentinels])
        slot = conns[ready[0]] if ready[0] in conns else sentinels[ready[0]]
        conn = self._workers[slot][1]
        try:
            if conn.poll():  # a result sent just before dying still counts
                return slot, conn.recv()
        except (EOFError, OSError):
            pass
        return slot, LOST

    def restart(self, slot: int) -> None:
        process, conn = self._workers[slot]
        process.kill()
        process.join()
        conn.close()
        self._workers[slot] = self._spawn()
        self.pids[slot] = self._ready(slot)

    def close(self) -> None:
        for _process, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process, conn in self._workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()


class _RayPool:
    """One Ray actor per worker (each loads the model once and keeps its prefix in memory),
    declaring one CPU and, for a CUDA placement, its share of a GPU. Actors are not restarted
    by Ray: the driver replaces a lost one and gives it the lost job."""

    def __init__(self, setup: WorkerSetup, workers: int, address: str | None) -> None:
        self._ray = ray = import_ray()
        self._owner = not ray.is_initialized()
        if self._owner:
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
            except Exception as exc:
                where = f" at {address}" if address else ""
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise WorkerError(f"cannot start Ray{where}: {first}") from None
        self._actors: list = []
        self._pending: dict[object, int] = {}
        try:
            self._start(setup, workers)
        except BaseException:  # one worker failed: stop the others (and Ray, if ours)
            self.close()
            raise

    def _start(self, setup: WorkerSetup, workers: int) -> None:
        options: dict[str, object] = {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}
        if setup.placement.device.type == "cuda":
            gpus = self._ray.cluster_resources().get("GPU", 0)
            if not gpus:
                raise WorkerError("the placement is CUDA but the Ray cluster has no GPU")
            options["num_gpus"] = min(1.0, gpus / workers)
            # Ray shows each actor its GPU as device 0
            placement = dataclasses.replace(setup.placement, device=torch.device("cuda"))
            setup = dataclasses.replace(setup, placement=placement)
        self._setup, self._actor = setup, self._ray.remote(**options)(Worker)
        self._actors = [self._actor.remote(setup) for _ in range(workers)]
        self.pids = self._get([a.pid.remote() for a in self._actors])

    def _get(self, refs: list) -> list[int]:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, PqorderError):
                raise cause from None
            lines = [line for line in str(cause).splitlines() if line.strip()]
            last = lines[-1] if lines else cause
            raise WorkerError(f"a Ray worker failed to start: {last}") from None

    def submit(self, slot: int, job: Job) -> None:
        self._pending[self._actors[slot].run.remote(job)] = slot

    def wait(self, busy: set[int]) -> tuple[int, object]:
        (ref,), _ = self._ray.wait(list(self._pending), num_returns=1)
        slot = self._pending.pop(ref)
        try:
            return slot, self._ray.get(ref)
        except self._ray.exceptions.RayActorError:  # the worker process died
            return slot, LOST

    def restart(self, slot: int) -> None:
        self._ray.kill(self._actors[slot])
        self._actors[slot] = self._actor.remote(self._setup)
        self.pids[slot] = self._get([self._actors[slot].pid.remote()])[0]

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        if self._owner:
            self._ray.shutdown()


class Executor:
    """Runs a study's jobs where its spec says: nothing to do for ``local`` (the study
    evaluates in the driver), else a pool started on first use and kept for the next batch.

    ``startup_seconds`` is the time the pool took to start (workers loading the model
    included), ``jobs_done`` the jobs finished in workers, ``workers_lost`` the workers that
    died during a job and were replaced."""

    def __init__(self, spec: ExecutorSpec | None = None) -> None:
        self.spec = spec or ExecutorSpec()
        self.startup_seconds = 0.0
        self.jobs_done = 0
        self.workers_lost = 0
        self._pool: _ProcessPool | _RayPool | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (empty before the pool starts)."""
        return list(self._pool.pids) if self._pool else []

    def _open(self, setup: WorkerSetup) -> _ProcessPool | _RayPool:
        if self._pool is None:
            start = time.perf_counter()
            if self.kind == "process":
                self._pool = _ProcessPool(setup, self.spec.workers)
            else:
                self._pool = _RayPool(setup, self.spec.workers, self.spec.address)
            self.startup_seconds += time.perf_counter() - start
            atexit.register(self.close)
        return self._pool

    def run(
        self,
        setup: WorkerSetup,
        jobs: Sequence[Job],
        record: Callable[[Job, Outcome], None],
        progress: bool = False,
    ) -> None:
        """Run ``jobs`` in the workers, calling ``record`` in the driver as each finishes."""
        try:
            self._run(self._open(setup), setup.cache is not None, jobs, record, progress)
        except BaseException:
            self.close()  # workers of a failed run would go on computing for nobody
            raise

    def _run(self, pool, shared_cache: bool, jobs, record, progress: bool) -> None:
        queue = deque(plan(jobs))
        slots = range(self.spec.workers)
        own: list[deque[Job]] = [deque() for _ in slots]  # each worker's group, left to do
        busy: dict[int, Job] = {}

        def feed(slot: int) -> None:
            if not own[slot] and queue:
                own[slot] = deque(queue.popleft())
            if not own[slot] and shared_cache:  # take the last job of the longest group left
                donor = max(slots, key=lambda s: len(own[s]))
                if own[donor]:
                    own[slot].append(own[donor].pop())
            if own[slot]:
                busy[slot] = own[slot].popleft()
                pool.submit(slot, busy[slot])

        desc = f"{self.kind} ×{self.spec.workers}"
        with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
            for slot in slots:
                feed(slot)
            while busy:
                slot, result = pool.wait(set(busy))
                job = busy.pop(slot)
                if result is LOST:
                    self.workers_lost += 1
                    if self.workers_lost > LOSSES_PER_WORKER * self.spec.workers:
                        raise WorkerError(
                            f"{self.workers_lost} {self.kind} workers died during a job; "
                            "stopping (finished runs are stored: rerun to resume)"
                        )
                    own[slot].appendleft(job)
                    pool.restart(slot)
                elif isinstance(result, Failure):
                    raise result.error()
                else:
                    record(job, result)
                    self.jobs_done += 1
                    bar.update()
                feed(slot)

    def close(self) -> None:
        """Stop the workers (a later ``run`` starts new ones)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
