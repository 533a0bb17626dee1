"""Named text sources: ``austen:emma``, ``pydoc``, ``file:PATH``, ``wikitext2``, ``c4``.

Any source may carry a fraction slice, ``austen:emma[0.5:1]``: the text between those
fractions of its characters, cut at line boundaries. Slices keep calibration and evaluation
text disjoint when both come from one source.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from pqorder.data import austen
from pqorder.errors import AssetError, ConfigError

_SLICE = re.compile(r"^(?P<name>.+?)\[(?P<a>[0-9.]*):(?P<b>[0-9.]*)\]$")
NAMES = ("austen:<novel>", "pydoc", "file:<path>", "wikitext2", "c4")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class TextSource:
    spec: str
    text: str


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub (``$HF_ENDPOINT``) answers a TCP connection, unless
    ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` say to stay offline."""
    if any(os.environ.get(v, "0").lower() in ("1", "true") for v in OFFLINE_FLAGS):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_text(spec: str) -> str:
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise AssetError(
            f"'{spec}' needs the `datasets` package (pip install 'pqorder[hub]') and a network; "
            "offline, use austen:<novel> or pydoc"
        ) from exc
    try:
        if spec == "wikitext2":
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
            return "\n\n".join(rows)
        files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
        rows = load_dataset("allenai/c4", data_files=files, split="validation")["text"]
        return "\n\n".join(rows[:3000])
    except Exception as exc:  # datasets raises many network/cache error types
        raise AssetError(
            f"cannot load '{spec}' from the Hugging Face hub ({type(exc).__name__}); "
            "offline, use austen:<novel> or pydoc"
        ) from exc


def _raw_text(name: str) -> str:
    if name.startswith("austen:"):
        return austen.read_book(name.split(":", 1)[1])
    if name == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if name.startswith("file:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if not path.is_file():
            raise AssetError(f"text file not found: {path}")
        return path.read_text(encoding="utf-8", errors="replace")
    if name in ("wikitext2", "c4"):
        return _hub_text(name)
    raise ConfigError(f"unknown text source '{name}'; known: {', '.join(NAMES)}")


def _parse_fraction(value: str, default: float, spec: str) -> float:
    try:
        frac = float(value) if value else default
    except ValueError as exc:
        raise ConfigError(f"bad slice in '{spec}': use fractions like [0.5:1]") from exc
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"bad slice in '{spec}': fractions must lie in [0, 1]")
    return frac


def _line_cut(text: str, frac: float) -> int:
    """Character index of the first line start at or after ``frac`` of the text."""
    if frac <= 0.0:
        return 0
    if frac >= 1.0:
        return len(text)
    nl = text.find("\n", int(len(text) * frac))
    return len(text) if nl < 0 else nl + 1


def load_text(spec: str) -> TextSource:
    """Resolve a source spec (optionally sliced) to its text."""
    match = _SLICE.match(spec)
    if match is None:
        return TextSource(spec, _raw_text(spec))
    a = _parse_fraction(match["a"], 0.0, spec)
    b = _parse_fraction(match["b"], 1.0, spec)
    if a >= b:
        raise ConfigError(f"empty slice in '{spec}': the start must be below the end")
    text = _raw_text(match["name"])
    return TextSource(spec, text[_line_cut(text, a) : _line_cut(text, b)])


_TOKENIZED: dict[tuple[str, str, int, int, int], Tensor] = {}  # the last few, in use order
_KEEP_TOKENIZED = 4


def tokenize(tokenizer: object, text: str) -> Tensor:
    """Token ids of ``text`` with no special tokens (BOS handling differs across versions).

    A study evaluates and calibrates on the same novel again and again (0.6-0.9 s to tokenize
    one with SmolLM2's tokenizer), so the last few results are kept in this process, keyed by
    the tokenizer (class, name, vocabulary size) and the text (length and hash). Callers must
    not write into the returned tensor.
    """
    key = (
        type(tokenizer).__name__,
        str(getattr(tokenizer, "name_or_path", "")),
        len(tokenizer),
        len(text),
        hash(text),
    )
    ids = _TOKENIZED.pop(key, None)
    if ids is None:
        out = tokenizer(text, add_special_tokens=False, return_attention_mask=False)
        ids = torch.tensor(out["input_ids"], dtype=torch.long)
    _TOKENIZED[key] = ids
    while len(_TOKENIZED) > _KEEP_TOKENIZED:
        del _TOKENIZED[next(iter(_TOKENIZED))]
    return ids


def disjoint_specs(calib: str, evaluation: str) -> tuple[str, str]:
    """Split one shared unsliced source into halves so calibration never sees evaluation text."""
    if calib == evaluation and _SLICE.match(calib) is None:
        return f"{calib}[0:0.5]", f"{evaluation}[0.5:1]"
    return calib, evaluation


def _span(spec: str) -> tuple[str, float, float]:
    """(source name, start, end) of a spec: the fractions of its slice, or the whole text."""
    match = _SLICE.match(spec)
    if match is None:
        name, a, b = spec, 0.0, 1.0
    else:
        name = match["name"]
        a, b = _parse_fraction(match["a"], 0.0, spec), _parse_fraction(match["b"], 1.0, spec)
    if name.startswith("file:"):
        name = "file:" + str(Path(name.split(":", 1)[1]).expanduser().resolve())
    return name, a, b


def overlaps(a: str, b: str) -> bool:
    """Whether two source specs share text: the same source with overlapping slices."""
    name_a, start_a, end_a = _span(a)
    name_b, start_b, end_b = _span(b)
    return name_a == name_b and start_a < end_b and start_b < end_a
