"""A study: evaluate ordered pipelines on one model, reusing prefixes and storing every run.

Every analysis (intensity, recommendation, search, sweep) asks a Study for the metric of
some orders. The Study finds a stored run if there is one, else starts from the longest
prefix it can get (the model as it stands, or the prefix cache), applies the remaining
steps, evaluates, and writes the run to the store as soon as it finishes. The dense model it
returns to (and stores cached prefixes against) is a ``DenseReference``: read back from the
model's files where they still hold it, else held in memory.

With a ``process`` or ``ray`` executor, an analysis first hands the study every order it is
about to read (``prefetch``): workers compute the missing ones, the driver stores each run as
it returns, and the analysis's own ``evaluate`` calls then find them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass

import torch
from torch import Tensor

from pqorder.core import LoadedModel, Need
from pqorder.data.calibration import CalibrationSpec
from pqorder.dense import DenseReference
from pqorder.engine import StepRecord, apply_step, check_pipeline, needs
from pqorder.errors import OrderError, PqorderError, WriteError
from pqorder.eval import Evaluator, evaluation_details, protocol_dict
from pqorder.eval.select import calibration_for, sample_for
from pqorder.executors import Executor, Job, Outcome, WorkerSetup, fingerprint
from pqorder.hardware import CPU_FLOAT32
from pqorder.local_errors import UnitSamples, sample_units
from pqorder.methods.base import Method
from pqorder.methods.lora import check_held_out
from pqorder.models.adapter import weight_matrix
from pqorder.pipeline import Pipeline
from pqorder.prefix_cache import PrefixCache, content_key
from pqorder.store import Run, RunStore


@dataclass
class Spend:
    """Compute accounting of a study: steps actually applied, and what was reused."""

    applied_steps: int = 0
    applied_seconds: float = 0.0
    stored_hits: int = 0
    cache_hits: int = 0

    def since(self, before: Spend) -> Spend:
        return Spend(*(a - b for a, b in zip(astuple(self), astuple(before), strict=True)))

    def plus(self, other: Spend) -> Spend:
        return Spend(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class Study:
    def __init__(
        self,
        lm: LoadedModel,
        protocol: Evaluator,
        calibration: CalibrationSpec | None = None,
        store: RunStore | None = None,
        cache: PrefixCache | None = None,
        name: str = "study",
        sequential: bool = False,
        progress: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.lm, self.protocol, self.store, self.cache = lm, protocol, store, cache
        self.calibration = calibration or calibration_for(lm.name)
        protocol.prepare(lm)  # a missing dataset is an error now, not a failed run
        self.name, self.sequential, self.progress = name, sequential, progress
        self._dense = DenseReference(lm)  # read back from the model files where it can be
        self._position: tuple[str, ...] | None = ()  # steps the model currently holds
        self._records: list[StepRecord] = []
        self._tokens: Tensor | None = None
        self._samples: dict[int, UnitSamples] = {}
        self.spend = Spend()
        self.executor = executor or Executor()
        self._protocols = [protocol]  # every protocol prepared on the dense model
        self._fetched: dict[str, Run] = {}  # runs the executor's workers made for this study
        self._fingerprint = fingerprint(lm.model)

    # -- keys ---------------------------------------------------------------------------
    def _prefix_key(self, steps: Sequence[Method]) -> str:
        calibrated = needs(steps) > Need.NOTHING
        key = {
            "model": self.lm.name,
            "steps": [s.to_text() for s in steps],
            "sequential": self.sequential if calibrated else None,
            "calibration": asdict(self.calibration) if calibrated else None,
        }
        numerics = self.lm.placement.numerics
        if numerics != CPU_FLOAT32:  # runs made on CPU in float32 keep their earlier keys
            key["numerics"] = numerics
        return content_key(key)

    def run_key(self, steps: Sequence[Method], protocol: Evaluator | None = None) -> str:
        protocol = protocol or self.protocol
        return content_key({"prefix": self._prefix_key(steps), "protocol": protocol_dict(protocol)})

    # -- evaluation ---------------------------------------------------------------------
    def dense_run(self, protocol: Evaluator | None = None) -> Run:
        return self.evaluate((), protocol)

    def add_protocol(self, protocol: Evaluator) -> None:
        """Prepare a second metric for ``evaluate(steps, protocol)`` (on the dense model, since
        a protocol may take its reference from the model it is prepared on)."""
        self.reset()
        protocol.prepare(self.lm)
        if protocol not in self._protocols:
            self._protocols.append(protocol)

    def evaluate(self, steps: Sequence[Method], protocol: Evaluator | None = None) -> Run:
        """The stored run of this order, or a new one (applied, evaluated, stored); under the
        study's protocol or another one prepared with ``add_protocol`` (the model state the
        first evaluation built is reused, so several metrics cost one compression)."""
        steps = tuple(steps)
        protocol = protocol or self.protocol
        key = self.run_key(steps, protocol)
        if (run := self._fetched.get(key)) is not None:
            return run
        if self.store is not None and (run := self.store.get(key)) is not None:
            self.spend.stored_hits += 1
            return run
        start = time.perf_counter()
        value, error = None, None
        try:
            self.check(steps)  # bad settings raise; an infeasible order becomes a failed run
        except OrderError as exc:
            error = f"infeasible order: {exc}"
        if error is None:
            try:
                self._materialize(steps)
                value = protocol.score(self.lm)
                if not math.isfinite(value):
                    error = f"{protocol.name} is {value}"
            except WriteError:  # the cache's disk, not the run: stop, store nothing
                self._position = None
                raise
            except PqorderError as exc:
                error = str(exc)
                self._position = None  # the model is in an unknown state: restart from dense
        run = Run(
            key=key,
            study=self.name,
            model=self.lm.name,
            pipeline=Pipeline(steps).to_text() if steps else "dense",
            n_steps=len(steps),
            calibration=asdict(self.calibration) if needs(steps) > Need.NOTHING else None,
            protocol=protocol_dict(protocol),
            metric_name=protocol.name,
            value=value if error is None else None,
            direction="lower" if protocol.lower_is_better else "higher",
            status="ok" if error is None else "failed",
            error=error,
            steps=[r.to_dict() for r in self._records[: len(steps)]] if error is None else [],
            details={**evaluation_details(protocol), "placement": self.lm.placement.describe()}
            if error is None
            else {},
            seconds=time.perf_counter() - start,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        return self.store.put(run) if self.store is not None else run

    def prefetch(
        self, orders: Iterable[Sequence[Method]], protocols: Sequence[Evaluator] = ()
    ) -> None:
        """Have the executor's workers evaluate the orders an analysis is about to read (under
        the study's protocol, or each of ``protocols``, prepared with ``add_protocol``), so its
        ``evaluate`` calls find them; stored runs are not redone. The local executor does
        nothing here: the analysis evaluates each order when it asks for it."""
        if self.executor.kind == "local":
            return
        wanted = [self._protocols.index(p) for p in protocols or (self.protocol,)]
        jobs = []
        for steps in dict.fromkeys(tuple(order) for order in orders):
            missing = tuple(i for i in wanted if not self._known(steps, self._protocols[i]))
            if missing:
                jobs.append(Job(steps, missing))
        if jobs:
            self.executor.run(self._worker_setup(), jobs, self._record, self.progress)

    def _known(self, steps: tuple[Method, ...], protocol: Evaluator) -> bool:
        key = self.run_key(steps, protocol)
        return key in self._fetched or (self.store is not None and self.store.get(key) is not None)

    def _record(self, job: Job, outcome: Outcome) -> None:
        """Store the runs of a job a worker finished (the driver is the store's one writer)."""
        for raw in outcome.runs:
            run = dataclasses.replace(Run.from_dict(raw), executor=self.executor.kind)
            self._fetched[run.key] = self.store.put(run) if self.store is not None else run
        self.spend = self.spend.plus(Spend(**outcome.spend))

    def _worker_setup(self) -> WorkerSetup:
        return WorkerSetup(
            model=self.lm.name,
            placement=self.lm.placement,
            protocols=tuple((type(p), protocol_dict(p)) for p in self._protocols),
            calibration=self.calibration,
            sequential=self.sequential,
            name=self.name,
            cache=(self.cache.root, self.cache.max_bytes / 2**30) if self.cache else None,
            fingerprint=self._fingerprint,
            threads=max(1, torch.get_num_threads() // self.executor.spec.workers),
            study_type=type(self),
        )

    def calibration_tokens(self) -> Tensor:
        """The study's calibration samples (drawn once, shared by every calibrated step)."""
        if self._tokens is None:
            _, self._tokens = sample_for(self.lm, self.calibration)
        return self._tokens

    def unit_samples(self, every: int = 1) -> UnitSamples:
        """Dense weights and calibration statistics of the units of every ``every``-th block
        (one calibration pass, kept for the study's later questions)."""
        if every not in self._samples:
            self.materialize(())
            tokens = self.calibration_tokens()
            self._samples[every] = sample_units(self.lm, tokens, every, self.progress)
        return self._samples[every]

    def _tokens_for(self, step: Method) -> Tensor | None:
        return self.calibration_tokens() if step.needs > Need.NOTHING else None

    def dense_weight(self, name: str) -> Tensor:
        """The dense (out, in) weight of a unit (the reference holds the module layout)."""
        module = self.lm.model.get_submodule(name)
        return weight_matrix(module, self._dense.tensor(f"{name}.weight"))

    def materialize(self, steps: Sequence[Method]) -> None:
        """Make the model hold ``steps`` applied to the dense model (reusing prefixes)."""
        self.check(steps)
        self._materialize(tuple(steps))

    def check(self, steps: Sequence[Method]) -> None:
        """Raise before any work if ``steps`` cannot be applied to the study's dense model."""
        lm = self.lm
        dense = dataclasses.replace(lm, state=self._dense.state)
        check_pipeline(dense, tuple(steps))
        check_held_out(steps, self.protocol, self.calibration.source)

    def _materialize(self, steps: tuple[Method, ...]) -> None:
        """Make the model hold exactly ``steps`` applied to the dense model.

        A prefix worth caching is computed under its cache entry's lock, so when another
        process is computing the same prefix this one waits and loads it instead.
        """
        texts = tuple(s.to_text() for s in steps)
        start = self._start_point(steps, texts)
        for i in range(start, len(steps)):
            extendable = i + 1 < len(steps) or len(steps) == 1
            apply = functools.partial(self._apply, steps, i)
            if self.cache is not None and extendable:
                key = self._prefix_key(steps[: i + 1])
                self._records, hit = self.cache.load_or_compute(key, self.lm, self._dense, apply)
                self.spend.cache_hits += hit
            else:
                self._records = apply()
            self._position = texts[: i + 1]

    def _apply(self, steps: tuple[Method, ...], i: int) -> list[StepRecord]:
        """Apply step ``i`` to the model holding ``steps[:i]``; the records of ``steps[:i+1]``."""
        self._position = None  # until the step is done, the model holds neither
        record = apply_step(
            self.lm,
            steps[i],
            self._tokens_for(steps[i]),
            progress=self.progress,
            sequential=self.sequential,
        )
        self.spend.applied_steps += 1
        self.spend.applied_seconds += record.seconds
        return [*self._records[:i], record]

    def _start_point(self, steps: tuple[Method, ...], texts: tuple[str, ...]) -> int:
        """Steps already in place after choosing the cheapest starting point."""
        here = self._position
        held = len(here) if here is not None and texts[: len(here)] == here else -1
        if self.cache is not None:
            for k in range(len(steps), max(held, 0), -1):
                records = self.cache.load(self._prefix_key(steps[:k]), self.lm, self._dense)
                if records is not None:
                    self._records = records
                    self._position = texts[:k]
                    self.spend.cache_hits += 1
                    return k
        if held >= 0:
            return held
        self._dense.restore(self.lm)
        self._position, self._records = (), []
        return 0

    def reset(self) -> None:
        """Put the dense model back (the study's model is shared with the caller)."""
        self._dense.restore(self.lm)
        self._position, self._records = (), []
