"""Where work runs and in what precision: ``--device`` and ``--dtype`` resolved and checked.

``auto`` device: CUDA when there is one, else Apple's MPS, else the CPU. ``auto`` dtype: the
model's own dtype (its config's ``dtype``) on an accelerator, float32 on the CPU. Half
precision works on the CPU with torch 2.x (measured with torch 2.13: a SmolLM2 forward pass is
5-6x slower in bfloat16/float16 than in float32, but correct), so it is allowed there; what a
device cannot run at all is refused in one line before any work.
"""

from __future__ import annotations

import torch

from pqorder.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def parse_device(device: str) -> torch.device:
    """The torch device ``device`` names, whether or not this machine has it (not ``auto``)."""
    kind, _, index = device.partition(":")
    if device in ("cpu", "mps", "cuda") or (kind == "cuda" and index.isdigit()):
        return torch.device(device)
    raise ConfigError(f"unknown --device '{device}'; use one of {DEVICES}")


def resolve_device(device: str) -> torch.device:
    """The torch device ``device`` names, refused when it does not exist on this machine."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not _mps_available():
            raise ConfigError("--device mps: Apple's MPS backend is not available here; use cpu")
        return torch.device("mps")
    index = parse_device(device).index
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU; use cpu")
    count = torch.cuda.device_count()
    number = torch.cuda.current_device() if index is None else index
    if number >= count:
        raise ConfigError(
            f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
        )
    return torch.device("cuda", number)


def _check_runs(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a dtype the device cannot compute in."""
    name = str(dtype).removeprefix("torch.")
    bf16_on_cuda = device.type == "cuda" and dtype == torch.bfloat16
    if bf16_on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"--dtype bfloat16: {device} (compute capability {major}.{minor}) has no native "
            "bfloat16 (needs 8.0+); use float16 or float32"
        )
    if device.type == "mps":
        try:
            torch.ones(1, dtype=dtype, device=device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"--dtype {name}: MPS cannot hold {name} tensors here ({exc}); use float16 or "
                "float32"
            ) from exc


def resolve_hardware(
    device: str, dtype: str, torch_dtype_of_model: torch.dtype | None, present: bool = True
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype ``--device`` / ``--dtype`` name, checked to work together.

    ``torch_dtype_of_model`` is the dtype the checkpoint was saved in (None: unknown, taken as
    float32); ``auto`` uses it on an accelerator when the device can run it. ``present=False``
    names a device of another machine (planning for it): only the spelling is checked.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype '{dtype}'; use one of auto, {', '.join(DTYPES)}")
    if not present and device == "auto":
        raise ConfigError("--device auto means this machine's device: name the one to plan for")
    where = resolve_device(device) if present else parse_device(device)
    if dtype != "auto":
        chosen = DTYPES[dtype]
        if present:
            _check_runs(where, chosen)
        return where, chosen
    own = torch_dtype_of_model if torch_dtype_of_model in DTYPES.values() else torch.float32
    if where.type == "cpu" or own == torch.float32 or not present:
        return where, torch.float32 if where.type == "cpu" else own
    try:
        _check_runs(where, own)
    except ConfigError:
        return where, torch.float32  # the model's own half precision does not run here
    return where, own
