"""Vision models as the engine sees them: stem → blocks → head.

The layer-wise engine needs a model's repeated blocks in order (each block's output is the
next block's input). ``ImageClassifier`` declares them for any torch CNN or ViT; the
Conv2d and Linear layers inside the blocks are the compressible units, while the stem (first
convolution / patch embedding) and the classifier head stay dense, as the paper and the
usual CNN-pruning protocol do. Two small built-in architectures are defined here: a
ResNet-style CNN (BasicBlocks with BatchNorm) and a pre-norm ViT; torchvision's ResNet and
timm's DeiT are wrapped when those packages are installed.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from pqorder.errors import AssetError, ConfigError
from pqorder.models.adapter import model_input


class ImageClassifier(nn.Module):
    """A classifier split into stem, a ModuleList of blocks, and head (logits)."""

    def __init__(
        self,
        stem: nn.Module,
        blocks: nn.ModuleList,
        head: nn.Module,
        input_shape: tuple[int, int, int],
        dataset: str | None = None,
    ) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = stem, blocks, head
        self.input_shape = tuple(input_shape)  # (C, H, W) the model was built for
        self.dataset = dataset  # the dataset a built-in model was trained on
        self.arch: str | None = None  # the alias it was loaded from (set by load_model)

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Raise a ConfigError when images of ``shape`` (C, H, W) do not fit the model."""
        if tuple(shape) != self.input_shape:
            raise ConfigError(
                f"images of shape {tuple(shape)} do not fit this model, built for "
                f"{self.input_shape} (C, H, W); pick a dataset with that shape"
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ConfigError(f"expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        self.check_input(x.shape[1:])
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3×3 convs with BatchNorm and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet(
    input_shape: tuple[int, int, int], n_classes: int, widths: tuple[int, ...], dataset: str
) -> ImageClassifier:
    """A small ResNet: 3×3 stem, one BasicBlock per width (stride 2 after the first)."""
    c = input_shape[0]
    stem = nn.Sequential(
        nn.Conv2d(c, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
    )
    blocks = nn.ModuleList(
        BasicBlock(widths[max(i - 1, 0)], w, 1 if i == 0 else 2) for i, w in enumerate(widths)
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], n_classes))
    return ImageClassifier(stem, blocks, head, input_shape, dataset)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, plus a class token and learned positions."""

    def __init__(self, input_shape: tuple[int, int, int], patch: int, dim: int) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ConfigError(f"patch size {patch} does not divide the image size {h}×{w}")
        self.proj = nn.Conv2d(c, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (h // patch) * (w // patch) + 1, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention with plain Linear projections (compressible units)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, d/H)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-norm transformer block (Dosovitskiy et al., 2021)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ClassTokenHead(nn.Module):
    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x[:, 0]))


def vit(
    input_shape: tuple[int, int, int],
    n_classes: int,
    patch: int,
    dim: int,
    depth: int,
    heads: int,
    dataset: str,
) -> ImageClassifier:
    """A small ViT: patch embedding, ``depth`` pre-norm blocks, class-token head."""
    blocks = nn.ModuleList(ViTBlock(dim, heads, 2 * dim) for _ in range(depth))
    return ImageClassifier(
        PatchEmbed(input_shape, patch, dim),
        blocks,
        ClassTokenHead(dim, n_classes),
        input_shape,
        dataset,
    )


def as_classifier(model: nn.Module, input_shape: tuple[int, int, int]) -> ImageClassifier:
    """Any torch image model: an ImageClassifier as is; an nn.Sequential with its last child as
    head and the others as blocks."""
    if isinstance(model, ImageClassifier):
        return model
    if isinstance(model, nn.Sequential) and len(model) >= 2:
        children = list(model)
        return ImageClassifier(
            nn.Identity(), nn.ModuleList(children[:-1]), children[-1], input_shape
        )
    raise ConfigError(
        f"cannot find the blocks of {type(model).__name__}: wrap it as "
        "ImageClassifier(stem, nn.ModuleList(blocks), head, input_shape)"
    )


def _require(package: str, alias: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise AssetError(
            f"'{alias}' needs the `{package}` package (built for your torch) and its pretrained "
            "weights (a network on first use); offline, use fmnist-cnn or fmnist-vit"
        )


def _pretrained(build, alias: str) -> nn.Module:
    try:
        return build()
    except Exception as exc:  # torchvision/timm raise URLError, HTTPError, RuntimeError, ...
        raise AssetError(
            f"cannot get the pretrained weights of '{alias}' ({type(exc).__name__}: {exc}); "
            "they download on first use and need a network"
        ) from exc


def torchvision_resnet18() -> ImageClassifier:
    """torchvision's ImageNet ResNet-18: each BasicBlock of layer1..layer4 is a block."""
    _require("torchvision", "resnet18")
    from torchvision.models import ResNet18_Weights, resnet18

    m = _pretrained(lambda: resnet18(weights=ResNet18_Weights.IMAGENET1K_V1), "resnet18")
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    blocks = nn.ModuleList([*m.layer1, *m.layer2, *m.layer3, *m.layer4])
    head = nn.Sequential(m.avgpool, nn.Flatten(), m.fc)
    return ImageClassifier(stem, blocks, head, (3, 224, 224), "imagenet")


class _TimmStem(nn.Module):
    def __init__(self, vit_model: nn.Module) -> None:
        super().__init__()
        self.m = vit_model

    def forward(self, x: Tensor) -> Tensor:
        m = self.m
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


class _TimmHead(_TimmStem):
    def forward(self, x: Tensor) -> Tensor:
        return self.m.forward_head(self.m.norm(x))


def timm_deit_base() -> ImageClassifier:
    """timm's DeiT-Base (patch 16, 224²): its transformer blocks are the blocks."""
    _require("timm", "deit-base")
    import timm

    m = _pretrained(
        lambda: timm.create_model("deit_base_patch16_224", pretrained=True), "deit-base"
    )
    blocks = nn.ModuleList(list(m.blocks))
    return ImageClassifier(_TimmStem(m), blocks, _TimmHead(m), (3, 224, 224), "imagenet")


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, images: Tensor, batch_size: int = 64) -> None:
    """Recompute every BatchNorm's running mean/var as the plain average over ``images``.

    Used after structured pruning: the statistics the model was trained with no longer match
    its activations. Only the BatchNorm layers run in training mode (no dropout, no grads).
    """
    norms = batchnorms(model).values()
    if not norms:
        return
    if images is None or not images.is_floating_point():
        raise ConfigError("BatchNorm re-estimation needs calibration images")
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    try:
        for i in range(0, len(images), batch_size):
            model(model_input(model, images[i : i + batch_size]))
    finally:
        for bn, momentum in zip(norms, saved, strict=True):
            bn.momentum = momentum
            bn.eval()


class ShiftedConv2d(nn.Conv2d):
    """A Conv2d plus a fixed (out, H, W) map added to its output.

    The dense export removes input channels that carry a constant (a pruned filter after its
    BatchNorm and ReLU). With zero padding their contribution differs at the borders, so it
    is kept exactly as this map, valid for the one input size the model is built for.
    """

    def __init__(self, *args: object, shift_shape: tuple[int, ...], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("shift", torch.zeros(shift_shape))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.shift


def _resized(m: nn.Module, w: Tensor, shift: Tensor | None) -> nn.Module | None:
    """A fresh module like ``m`` holding a weight shaped like ``w`` (None: keep ``m``)."""
    if w.shape == m.weight.shape and shift is None:
        return None
    if isinstance(m, nn.Conv2d):
        geometry = {
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "dilation": m.dilation,
            "bias": m.bias is not None,
            "padding_mode": m.padding_mode,
        }
        if shift is None:
            return nn.Conv2d(w.shape[1], w.shape[0], **geometry)
        return ShiftedConv2d(w.shape[1], w.shape[0], shift_shape=tuple(shift.shape), **geometry)
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(w.shape[0], m.eps, m.momentum)
    if isinstance(m, nn.Linear):
        return nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None)
    return None


def resize_to(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Give the Conv2d, BatchNorm2d and Linear layers of ``model`` the shapes in ``tensors``
    (the state dict of a shape-reduced copy), so that it loads; a conv with a ``shift`` entry
    becomes a ShiftedConv2d. Layers whose shapes match are left as they are."""
    for name, m in list(model.named_modules()):
        w = tensors.get(f"{name}.weight")
        new = None if w is None else _resized(m, w, tensors.get(f"{name}.shift"))
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, new.eval())
