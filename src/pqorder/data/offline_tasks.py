"""Zero-shot tasks built from data that ships offline, written as lm-eval task folders.

Each task is a JSON-lines file plus an lm-evaluation-harness YAML that reads it through
``datasets``' local ``json`` builder, so an offline task goes through the same code path as
a hub task. Files live in ``$PQORDER_CACHE/data/lm-eval-tasks/v{VERSION}`` and are written
once, atomically; ``VERSION`` is part of every run key, so changing a builder means a new
folder, never a stale stored score.

- ``austen_lastword`` (LAMBADA-style): paragraphs of *Emma* (never calibration text: that is
  *Pride and Prejudice*) of 40–150 words whose last word is alphabetic, ≥ 3 letters, after
  trailing punctuation and quotes are stripped. The model sees the paragraph without its last
  word; accuracy = the last word is the greedy continuation (lm-eval's ``acc`` of a
  ``loglikelihood`` task). Shuffled with seed 0 so a ``--limit`` run samples the whole novel.
- ``wordnet_definitions`` (multiple choice): WordNet noun glosses (definitions up to the first
  ';', headwords unique), the right headword among 4; the 3 distractors are other items'
  headwords drawn with seed 0 and the right answer's position is drawn too. ``acc`` and
  ``acc_norm`` (log-likelihood per byte of the choice).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from pqorder.atomic import atomic_output
from pqorder.data.sources import load_text
from pqorder.data.wordnet import definition_pairs
from pqorder.paths import data_dir

VERSION = 1
SEED = 0
DEFINITION_ITEMS = 1000
CHOICES = 4
_WORD = re.compile(r"[A-Za-z]{3,}")
_TRAILING = "\"'.,;:!?-_) "


def lastword_docs() -> list[dict[str, str]]:
    """Emma paragraphs ending in their target word (see the module docstring)."""
    docs = []
    for block in load_text("austen:emma").text.split("\n\n"):
        text = " ".join(block.split()).rstrip(_TRAILING)
        words = text.split(" ")
        if 40 <= len(words) <= 150 and _WORD.fullmatch(words[-1]):
            docs.append({"text": text})
    random.Random(SEED).shuffle(docs)
    return docs


def definition_docs() -> list[dict[str, object]]:
    """Definition → headword items with 3 seeded distractors each."""
    pairs = definition_pairs("noun", DEFINITION_ITEMS, SEED)
    rng = random.Random(SEED)
    docs = []
    for i, (definition, word) in enumerate(pairs):
        picks = rng.sample(range(len(pairs) - 1), CHOICES - 1)  # any item but i: j ≥ i → j + 1
        others = [pairs[j + (j >= i)][1] for j in picks]
        label = rng.randrange(CHOICES)
        choices = [*others[:label], word, *others[label:]]
        docs.append({"definition": definition, "choices": choices, "label": label})
    return docs


_LASTWORD_YAML = """\
task: austen_lastword
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""

_DEFINITIONS_YAML = """\
task: wordnet_definitions
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Definition: {{{{definition}}}}\\nWord:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""

BUILDERS: dict[str, tuple[Callable[[], list[dict]], str]] = {
    "austen_lastword": (lastword_docs, _LASTWORD_YAML),
    "wordnet_definitions": (definition_docs, _DEFINITIONS_YAML),
}
OFFLINE_TASKS = tuple(BUILDERS)


def task_folder() -> Path:
    """The folder of every offline task (data + YAML), built on first use."""
    folder = data_dir() / "lm-eval-tasks" / f"v{VERSION}"
    if not all((folder / f"{name}.yaml").exists() for name in BUILDERS):
        with atomic_output(folder, directory=True) as tmp:
            for name, (build, template) in BUILDERS.items():
                data = folder / f"{name}.jsonl"  # the final path: YAMLs name it
                lines = "".join(json.dumps(doc) + "\n" for doc in build())
                (tmp / data.name).write_text(lines, encoding="utf-8")
                (tmp / f"{name}.yaml").write_text(
                    template.format(data=json.dumps(str(data)), version=VERSION)
                )
    return folder


def task_size(name: str) -> int:
    """How many documents an offline task holds."""
    path = task_folder() / f"{name}.jsonl"
    return sum(1 for _ in path.open(encoding="utf-8"))
