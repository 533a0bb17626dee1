"""Where a model runs and in what precision: ``--device``, ``--dtype`` and ``--offload``.

``auto`` device is the first of cuda, mps, cpu that exists; ``auto`` dtype is the checkpoint's
own dtype on an accelerator (and for a saved pqorder output, whose grids are exact in the dtype
it was compressed in) and float32 on CPU (half precision on CPU runs, but several times slower
than float32). Whatever the model dtype, calibration statistics accumulate in float32
/ float64 and the OBS solvers run in float32 (see ``pqorder.stats``, ``pqorder.methods.obs``).
Every refusal is one line, raised before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pqorder.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
CPU = torch.device("cpu")
CPU_FLOAT32 = "cpu float32"  # the numerics of the default placement


@dataclass(frozen=True)
class Placement:
    """The device the work runs on, the model's dtype, and whether weights stay on the host.

    With ``offload`` the blocks' weights live in host memory and one block at a time moves to
    ``device`` (for calibration, compression and evaluation); everything outside the blocks
    (embeddings, final norm, head) stays on ``device``.
    """

    device: torch.device = CPU
    dtype: torch.dtype | None = torch.float32  # None: auto, decided when the model is loaded
    offload: bool = False

    @property
    def accelerated(self) -> bool:
        return self.device.type != "cpu"

    @property
    def numerics(self) -> str:
        """What can change results: the device type and dtype (offloading never does)."""
        return f"{self.device.type} {str(self.dtype).removeprefix('torch.')}"

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.device} {dtype}" + (", blocks offloaded to host" if self.offload else "")


def resolve_device(text: str) -> torch.device:
    """The device ``text`` names, refused in one line when this machine does not have it."""
    text = text.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"unknown device '{text}'; use {DEVICE_HELP}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{text}': this machine has no CUDA GPU; use --device cpu")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise ConfigError(
                f"device '{text}': this machine has {count} CUDA GPU(s) (0..{count - 1})"
            )
        return torch.device("cuda", index)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device '{text}': MPS is not available here; use --device cpu")
        return device
    raise ConfigError(f"device type '{device.type}' is not supported; use {DEVICE_HELP}")


def resolve_dtype(text: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``text`` names (None for ``auto``), refused in one line when ``device`` cannot
    run it."""
    text = text.strip().lower()
    if text == "auto":
        return None
    if text not in DTYPES:
        raise ConfigError(f"unknown dtype '{text}'; use auto, {', '.join(DTYPES)}")
    dtype = DTYPES[text]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{device} cannot run bfloat16 (compute capability < 8.0); use float16")
    return dtype


def resolve_hardware(
    device: str = "cpu", dtype: str = "float32", offload: bool = False
) -> Placement:
    """A Placement from the command-line words, checked before any model is loaded.

    ``offload`` on CPU runs the offloading code path with host and device the same (that is
    how the tests compare it with the plain path); it saves memory only on an accelerator.
    """
    where = resolve_device(device)
    return Placement(where, resolve_dtype(dtype, where), offload)
