"""Load a model by built-in alias, local directory, or Hugging Face id (network needed)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from pqorder.core import Kind, LoadedModel
from pqorder.errors import AssetError
from pqorder.hardware import Placement, auto_dtype, declared_dtype
from pqorder.models import encoder, gemma3, smollm2, zoo
from pqorder.models.vision import resize_to, timm_deit_base, torchvision_resnet18
from pqorder.offload import place_model
from pqorder.snapshot import assign
from pqorder.state import STATE_FILE, CompressionState
from pqorder.transforms import sync

ALIASES = {smollm2.ALIAS: smollm2.prepare_checkpoint, gemma3.ALIAS: gemma3.prepare_checkpoint}
CAVEATS = {smollm2.ALIAS: smollm2.CAVEAT, gemma3.ALIAS: gemma3.CAVEAT}
# Image classifiers by alias: trained and cached by pqorder, or pretrained (network needed).
VISION: dict[str, Callable[[], nn.Module]] = {
    **{alias: (lambda a=alias: zoo.load_vision(a)[0]) for alias in zoo.RECIPES},
    "resnet18": torchvision_resnet18,
    "deit-base": timm_deit_base,
}
VISION_FILE = "pqorder_vision.json"  # marks a saved compressed vision model: {"arch": alias}


def _from_pretrained(
    source: str | Path, name: str, placement: Placement, kind: Kind = "causal-lm"
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModel if kind == "encoder" else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source)  # read once: its dtype, then the model
    own = declared_dtype(config)
    dtype = placement.dtype or auto_dtype(placement.device, own, saved_output(source))
    with _quiet_if_factored(Path(source)):  # the factors are read after, from the state
        model = auto.from_pretrained(source, config=config, dtype=dtype)
    model.eval()
    local = Path(source) if Path(source).is_dir() else None
    lm = LoadedModel(name, model, tokenizer, kind=kind, caveat=CAVEATS.get(name), source=local)
    return _with_state(lm, Path(source))


def _with_state(lm: LoadedModel, folder: Path) -> LoadedModel:
    """Reload a saved composition state and its forward-pass transforms, if there is one."""
    path = folder / STATE_FILE
    if path.exists():
        lm.state = CompressionState.load(path)
        sync(lm)
        if lm.state.model.factoring is not None:
            _load_factors(lm, folder)
    return lm


@contextlib.contextmanager
def _quiet_if_factored(folder: Path) -> Iterator[None]:
    """Silence transformers' load report (projections missing, factors unexpected) for a saved
    factored model: the plain architecture is loaded first, its factors next."""
    from transformers.utils import logging as hf_logging

    path = folder / STATE_FILE
    if not path.exists() or CompressionState.load(path).model.factoring is None:
        yield
        return
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_factors(lm: LoadedModel, folder: Path) -> None:
    """The basis and coefficient weights of a factored model (the plain architecture loaded
    without them): read from the checkpoint into the factors ``sync`` built."""
    live = lm.model.state_dict()
    tensors = load_file(str(folder / "model.safetensors"))
    for key, value in tensors.items():
        if ".basis." in key or ".coef." in key:
            assign(live, key, value)


def _vision_dir(path: Path) -> LoadedModel:
    arch = json.loads((path / VISION_FILE).read_text())["arch"]
    if arch not in VISION:
        raise AssetError(f"{path} holds an unknown vision architecture '{arch}'")
    model = zoo.RECIPES[arch].build() if arch in zoo.RECIPES else VISION[arch]()
    model.arch = arch
    tensors = load_file(str(path / "model.safetensors"))
    resize_to(model, tensors)  # a dense export has fewer channels than the recipe
    model.load_state_dict(tensors)
    model.eval()
    return _with_state(LoadedModel(str(path), model, None, kind="vision"), path)


def saved_output(spec: str | Path) -> bool:
    """Whether ``spec`` is a directory pqorder saved (it holds a composition state)."""
    return (Path(spec).expanduser() / STATE_FILE).exists()


def model_kind(spec: str) -> Kind:
    """The kind of model a spec names, without loading it (hub ids count as causal LMs)."""
    path = Path(spec).expanduser()
    if spec in VISION or (path / VISION_FILE).exists():
        return "vision"
    if spec == encoder.ALIAS:
        return "encoder"
    config = path / "config.json"
    if config.exists() and "ForCausalLM" not in config.read_text():
        return "encoder"
    return "causal-lm"


def default_dataset(spec: str) -> str | None:
    """The test split a vision model is evaluated on by default (None: no offline data)."""
    path = Path(spec).expanduser() / VISION_FILE
    arch = json.loads(path.read_text())["arch"] if path.exists() else spec
    return f"{zoo.RECIPES[arch].dataset}:test" if arch in zoo.RECIPES else None


def load_model(spec: str, placement: Placement | None = None) -> LoadedModel:
    """An alias (smollm2-135m, minilm, fmnist-cnn, ...), a directory (HF checkpoint or pqorder
    output), or a hub id, loaded in ``placement``'s dtype onto its device (default: CPU,
    float32)."""
    placement = placement or Placement()
    lm = _load(spec, placement)
    dtype = placement.dtype or next(lm.model.parameters()).dtype
    if lm.kind == "vision":  # built in float32; checkpoints load in their dtype (fp32 RoPE kept)
        lm.model.to(dtype)
    lm.placement = dataclasses.replace(placement, dtype=dtype)
    place_model(lm)
    return lm


def _load(spec: str, placement: Placement) -> LoadedModel:
    if spec in ALIASES:
        return _from_pretrained(ALIASES[spec](), spec, placement)
    if spec in VISION:
        model = VISION[spec]()
        model.arch = spec  # how a saved compressed copy is rebuilt
        return LoadedModel(spec, model, None, kind="vision")
    if spec == encoder.ALIAS:
        return _from_pretrained(encoder.model_dir(), spec, placement, "encoder")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / VISION_FILE).exists():
            return _vision_dir(path)
        if not (path / "config.json").exists():
            raise AssetError(f"{path} is a directory without config.json, not a model checkpoint")
        return _from_pretrained(path, str(path), placement, model_kind(str(path)))
    try:
        return _from_pretrained(spec, spec, placement)
    except OSError as exc:
        raise AssetError(
            f"cannot load model '{spec}' (not a local directory; the Hugging Face hub is "
            f"unreachable or has no such model). Offline, use a built-in alias "
            f"({', '.join([smollm2.ALIAS, encoder.ALIAS, *zoo.RECIPES])}) or a local "
            "checkpoint directory. "
            f"({type(exc).__name__})"
        ) from exc
