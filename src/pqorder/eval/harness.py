"""Zero-shot tasks through lm-evaluation-harness on the live compressed model.

The model pqorder holds (fake-quant hooks, online rotations, removed blocks and all) is
wrapped in lm-eval's ``HFLM`` and evaluated by ``simple_evaluate`` with every seed fixed,
zero-shot by default and on the first ``limit`` documents of each task when asked. M is the
mean over the tasks of ``acc`` or ``acc_norm`` (a task without ``acc_norm`` contributes its
``acc``, and the details say so); per-task values, their standard errors, document counts and
the task versions lm-eval reports are kept in ``details()`` for the run record.

Offline tasks (``pqorder.data.offline_tasks``) are local task folders; any other task name is
looked up in lm-eval's own index and needs the Hugging Face Hub for its data.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Literal

from pqorder.data.offline_tasks import OFFLINE_TASKS, VERSION, task_folder
from pqorder.errors import ConfigError
from pqorder.models.adapter import input_device

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

METRICS = ("acc", "acc_norm")


def _import_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "--protocol lm-eval needs lm-evaluation-harness: pip install -e '.[lm-eval]'"
        ) from exc


@lru_cache(maxsize=2)
def _task_manager(with_hub: bool) -> TaskManager:
    """lm-eval's task index over the offline task folder, and over every task lm-eval ships
    when ``with_hub`` (indexing those YAMLs takes seconds: built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_folder()), include_defaults=with_hub)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether task data can come from the Hugging Face Hub (offline env vars say no)."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(v, "0") not in ("", "0") for v in flags):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class LmEvalProtocol:
    tasks: tuple[str, ...] = OFFLINE_TASKS
    limit: int | None = None
    num_fewshot: int = 0
    metric: Literal["acc", "acc_norm"] = "acc"
    batch_size: int = 16
    seed: int = 0
    offline_version: int = VERSION  # builders of the offline tasks: part of the run key
    _details: dict = field(default_factory=dict, compare=False, repr=False)

    lower_is_better: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return f"lm-eval {self.metric}"

    def validate(self) -> None:
        """Every setting and task name checked, hub tasks only when the hub is reachable."""
        if not self.tasks:
            raise ConfigError("--tasks is empty: name at least one task")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1 document per task, got {self.limit}")
        if self.num_fewshot < 0 or self.batch_size < 1:
            raise ConfigError("num_fewshot must be ≥ 0 and batch_size ≥ 1")
        if self.metric not in METRICS:
            raise ConfigError(f"lm-eval metric must be one of {METRICS}, got '{self.metric}'")
        _import_lm_eval()
        hub = [t for t in self.tasks if t not in OFFLINE_TASKS]
        if not hub:
            return
        known = set(_task_manager(with_hub=True).all_tasks)
        for task in hub:
            if task not in known:
                close = difflib.get_close_matches(task, [*OFFLINE_TASKS, *known], n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown lm-eval task '{task}'{hint}")
        if not hub_reachable():
            raise ConfigError(
                f"task {hub[0]} needs its data from the Hugging Face Hub, which is not "
                f"reachable; offline tasks: {', '.join(OFFLINE_TASKS)}"
            )

    def prepare(self, lm: object) -> None:
        """Refuse models lm-eval cannot score; build the offline task files now."""
        kind = getattr(lm, "kind", "causal-lm")
        if kind != "causal-lm":
            raise ConfigError(
                f"lm-eval tasks score a causal LM's next-token likelihoods; {lm.name} is "
                f"a {kind} model"
            )
        task_folder()

    def score(self, lm: object) -> float:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        start = time.perf_counter()
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        manager = _task_manager(with_hub=any(t not in OFFLINE_TASKS for t in self.tasks))
        wrapped = HFLM(
            pretrained=lm.model,
            tokenizer=lm.tokenizer,
            batch_size=self.batch_size,
            device=str(input_device(lm.model)[0]),
        )
        out = simple_evaluate(
            model=wrapped,
            tasks=list(self.tasks),
            task_manager=manager,
            num_fewshot=self.num_fewshot,
            limit=self.limit,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=self.seed,
            numpy_random_seed=self.seed,
            torch_random_seed=self.seed,
            fewshot_random_seed=self.seed,
        )
        per_task = {t: self._task_result(t, out) for t in self.tasks}
        value = sum(r["value"] for r in per_task.values()) / len(per_task)
        self._details.clear()
        self._details.update(
            tasks=per_task,
            mean=value,
            stderr=sum(r["stderr"] ** 2 for r in per_task.values()) ** 0.5 / len(per_task),
            seconds=time.perf_counter() - start,
            lm_eval=_lm_eval_version(),
        )
        return value

    def _task_result(self, task: str, out: dict) -> dict[str, object]:
        """One task's metric (``acc`` when it lacks ``acc_norm``), its stderr, n and version."""
        result = out["results"][task]
        metric = self.metric if f"{self.metric},none" in result else "acc"
        n = out["n-samples"][task]["effective"]
        value = float(result[f"{metric},none"])
        return {
            "metric": metric,
            "value": value,
            "stderr": (value * (1 - value) / max(n - 1, 1)) ** 0.5,
            "n": n,
            "version": out["versions"].get(task),
        }

    def details(self) -> dict:
        """The last ``score``'s per-task values, stderrs, sizes, versions and seconds."""
        return dict(self._details)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")
