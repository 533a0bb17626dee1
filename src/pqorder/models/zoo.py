"""Built-in vision models: trained once by pqorder on first use and cached.

No pretrained Fashion-MNIST model ships offline, so each alias is a recipe: architecture,
dataset, epochs and seed. Training is deterministic on CPU for a given torch version (seed
0, fixed batch order); the cache holds the weights and a record with the training time and
the top-1 accuracy on the dataset's test split (Fashion-MNIST: the official 10k images).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pqorder.data.images import load_images
from pqorder.errors import AssetError
from pqorder.models.adapter import model_input
from pqorder.models.vision import ImageClassifier, resnet, vit
from pqorder.paths import models_dir

WEIGHTS, RECORD = "model.safetensors", "record.json"


@dataclass(frozen=True)
class Recipe:
    """How a built-in model is built and trained."""

    dataset: str
    build: Callable[[], ImageClassifier]
    epochs: int
    lr: float
    batch_size: int = 128
    seed: int = 0


RECIPES = {
    "fmnist-cnn": Recipe(
        "fashion-mnist", lambda: resnet((1, 28, 28), 10, (16, 32, 64), "fashion-mnist"), 3, 3e-3
    ),
    "fmnist-vit": Recipe(
        "fashion-mnist",
        lambda: vit((1, 28, 28), 10, patch=7, dim=64, depth=4, heads=4, dataset="fashion-mnist"),
        4,
        2e-3,
    ),
    "digits-cnn": Recipe("digits", lambda: resnet((1, 8, 8), 10, (8, 16), "digits"), 15, 1e-2, 64),
}


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Fraction of images whose highest logit is the label."""
    model.eval()
    hits = 0
    for i in range(0, len(labels), batch):
        predicted = model(model_input(model, images[i : i + batch])).argmax(dim=1).cpu()
        hits += int((predicted == labels[i : i + batch]).sum())
    return hits / len(labels)


def train(recipe: Recipe) -> tuple[ImageClassifier, dict]:
    """AdamW with a cosine schedule over ``epochs``; returns the model and its record."""
    torch.manual_seed(recipe.seed)
    model = recipe.build()
    data = load_images(f"{recipe.dataset}:train")
    steps_per_epoch = math.ceil(len(data.labels) / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch
    )
    gen = torch.Generator().manual_seed(recipe.seed)
    start = time.perf_counter()
    for _epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(data.labels), generator=gen)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    test = load_images(f"{recipe.dataset}:test")
    start = time.perf_counter()
    acc = top1(model, test.images, test.labels)
    record = {
        "dataset": recipe.dataset,
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "test_top1": acc,
        "test_images": len(test.labels),
        "eval_seconds": round(time.perf_counter() - start, 2),
        "torch": torch.__version__,
    }
    return model, record


def checkpoint_dir(alias: str) -> Path:
    return models_dir() / alias


def prepare_vision(alias: str) -> Path:
    """Train ``alias`` once and cache it (atomic); later calls return the cache folder."""
    target = checkpoint_dir(alias)
    if (target / RECORD).exists():
        return target
    model, record = train(RECIPES[alias])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        save_file(dict(model.state_dict()), str(tmp / WEIGHTS))
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / RECORD).exists():  # else another process cached it first: use that
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def trained_record(alias: str) -> str | None:
    """One line about a cached built-in model's training, or None (not built in, not cached)."""
    path = checkpoint_dir(alias) / RECORD
    if alias not in RECIPES or not path.exists():
        return None
    r = json.loads(path.read_text())
    return (
        f"{alias}: {r['params']:,} parameters, {r['epochs']} epochs on {r['dataset']}:train "
        f"(seed {r['seed']}, {r['train_seconds']:.0f} s), top-1 {r['test_top1']:.4f} on "
        f"{r['test_images']} {r['dataset']}:test images"
    )


def load_vision(alias: str) -> tuple[ImageClassifier, dict]:
    """The cached model (trained now if missing) and its training record."""
    folder = prepare_vision(alias)
    model = RECIPES[alias].build()
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (RuntimeError, OSError) as exc:
        raise AssetError(
            f"the cached {alias} in {folder} does not load ({exc}); delete that folder to retrain"
        ) from exc
    model.eval()
    return model, json.loads((folder / RECORD).read_text())
