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

DEVICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


def resolve_dtype(dtype: str) -> torch.dtype | None:
    """The dtype ``--dtype`` names; None for ``auto`` (decided when the model is loaded)."""
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype '{dtype}'; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_hardware(
    device: str = "cpu", dtype: str = "float32", offload: bool = False
) -> Placement:
    """A Placement from the command-line words, checked before any model is loaded.

    ``offload`` on CPU runs the offloading code path with host and device the same (that is
    how the tests compare it with the plain path); it saves memory only on an accelerator.
    """
    where = resolve_device(device)
    chosen = resolve_dtype(dtype)
    if chosen is not None:
        _check_runs(where, chosen)
    return Placement(where, chosen, offload)


def declared_dtype(config: object) -> torch.dtype | None:
    """The dtype a transformers config says its checkpoint was saved in (None: it does not)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def auto_dtype(
    device: torch.device, own: torch.dtype | None, saved: bool = False, check: bool = True
) -> torch.dtype:
    """What ``--dtype auto`` means for a checkpoint saved in ``own`` (None: unknown): ``own``
    on an accelerator that runs it, and for a pqorder output (``saved``: its grids are exact in
    the dtype it was compressed in) on any device; float32 otherwise. ``check=False`` plans
    for a device of another machine: its support is not probed."""
    own = own if own in DTYPES.values() else torch.float32
    if device.type == "cpu" and not saved:
        return torch.float32
    if check:
        try:
            _check_runs(device, own)
        except ConfigError:
            return torch.float32  # the model's own half precision does not run here
    return own


def resolve_precision(
    device: str, dtype: str, own: torch.dtype | None, present: bool = True, saved: bool = False
) -> tuple[torch.device, torch.dtype]:
    """The device and the concrete dtype a run would use, for planning it from the words of
    the command line (``own``, ``saved``: as for ``auto_dtype``). ``present=False`` names a
    device of another machine (planning for it): only the spelling is checked."""
    if not present and device == "auto":
        raise ConfigError("--device auto means this machine's device: name the one to plan for")
    if present:
        placement = resolve_hardware(device, dtype)
        return placement.device, placement.dtype or auto_dtype(placement.device, own, saved)
    where = parse_device(device)
    return where, resolve_dtype(dtype) or auto_dtype(where, own, saved, check=False)
