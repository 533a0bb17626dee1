"""The memory plan of a run, computed from the model's config alone, and the check that it fits.

The model is built under torch's FakeTensorMode (tensors with shapes and dtypes but no
storage), so a 7B plan costs no memory and works offline from a config.json. Parameter counts
come from that fake model; activation shapes, the kwargs each block receives, the input groups
that share a Hessian (``layerwise.input_groups``) and the transient memory of one block's
forward pass come from running the engine's own capture code on fake tensors, with every new
tensor the operators allocate counted while it is alive. Statistics and the OBS solver are
sized from the unit shapes with the formulas of ``stats`` and ``methods.obs``.

Peaks: the layer-wise walk keeps a block's inputs for the whole calibration set plus the
outputs it is computing (about 2x), the block's statistics (one float64 accumulator and one
float32 Hessian per input group) and, while a unit is solved, that unit's OBS working set.
With offload only the weights outside the blocks and one block sit on the device; the rest
of the weights stay in host RAM.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from pqorder.core import Need
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import AssetError, ConfigError
from pqorder.eval import Evaluator
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.hardware import Placement, auto_dtype, declared_dtype
from pqorder.layerwise import capture_block_inputs, input_groups
from pqorder.methods.base import Method
from pqorder.methods.obs import SolverSettings
from pqorder.models import encoder
from pqorder.models.adapter import compressible_units, decoder_blocks, in_features, unit_shape
from pqorder.models.loading import ALIASES, model_kind, saved_output

GIB = 2**30
CALIB_BATCH = 8  # the layer-wise walk's calibration batch (layerwise.calibrated_units)
# The process itself: python, torch, transformers and pqorder imported (0.37 GiB measured),
# plus tokenizer, texts and allocator slack (a SmolLM2 SparseGPT run peaks ~0.3 GiB above
# its tensors).
RUNTIME_BYTES = 3 * GIB // 4


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of everything a run holds, and the peaks on its device and in host RAM.

    ``device_parts`` / ``host_parts`` name what each peak is made of (label, bytes).
    """

    model: str
    device: torch.device
    dtype: torch.dtype
    offload: bool
    need: Need
    params: int
    weights: int  # every parameter at ``dtype`` (tied weights once)
    block: int  # the largest block's parameters
    outside: int  # parameters outside the blocks (embeddings, head, final norm)
    activations: int  # block inputs and outputs for the calibration set, plus their kwargs
    batch_transient: int  # tensors a block's forward allocates for one calibration batch
    statistics: int  # one Hessian per input group of a block: float64 sum + float32 result
    solver: int  # the OBS solve of the largest unit (weights fp32 + inverse-Hessian factor)
    evaluation: int  # one evaluation batch's forward pass, logits in float32 (0: no eval)
    prefix_entry: int  # one prefix-cache entry (every state-dict tensor, as saved today)
    device_parts: tuple[tuple[str, int], ...]
    host_parts: tuple[tuple[str, int], ...]

    @property
    def device_peak(self) -> int:
        return sum(b for _, b in self.device_parts)

    @property
    def host_peak(self) -> int:
        return sum(b for _, b in self.host_parts)


def gib(n: int) -> str:
    """Bytes as GiB: one decimal from 1 GiB up, two below."""
    return f"{n / GIB:.1f}" if n >= GIB else f"{n / GIB:.2f}"


def model_config(model: str) -> object:
    """The transformers config of an alias, a checkpoint directory or a hub id (no weights)."""
    from transformers import AutoConfig

    if model_kind(model) == "vision":
        raise ConfigError(
            f"the memory plan covers transformers models (causal LMs, encoders); {model} is a "
            "vision model"
        )
    if model in ALIASES:
        source = ALIASES[model]()
    elif model == encoder.ALIAS:
        source = encoder.model_dir()
    else:
        source = model
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise AssetError(
            f"cannot read the config of '{model}' (no config.json there, and the hub is "
            f"unreachable or has no such model): pass a directory holding config.json "
            f"({type(exc).__name__})"
        ) from exc


def config_dtype(model: str) -> torch.dtype | None:
    """The dtype the model's checkpoint declares (for ``--dtype auto``)."""
    return declared_dtype(model_config(model))


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors operators allocate while it is active (views not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        results = out if isinstance(out, (tuple, list)) else (out,)
        if not returns:
            return out
        if len(returns) != len(results):  # one Tensor[] return: its alias info covers all
            returns = returns[:1] * len(results)
        for ret, t in zip(returns, results, strict=True):
            if isinstance(t, Tensor) and ret.alias_info is None:  # a new tensor, not a view
                n = t.numel() * t.element_size()
                self.live += n
                weakref.finalize(t, self._release, n)
        self.peak = max(self.peak, self.live)
        return out


def _tensor_bytes(value: object, seen: set[int]) -> int:
    """Bytes of the distinct tensors in a (nested) kwargs value."""
    if isinstance(value, Tensor):
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    return 0


def _solver_bytes(out: int, inp: int) -> int:
    """OBS working set of one (out, in) unit (``methods.obs``): three float32 copies of W (the
    unit's copy, dead columns zeroed, the sweep's copy), at most five live float64 (in, in)
    matrices while (H + λI)⁻¹ is factored (H, the identity, the Cholesky factor, the inverse,
    its upper factor) and the float32 factor the sweep reads."""
    return 3 * 4 * out * inp + 5 * 8 * inp * inp + 4 * inp * inp


def _walk_shapes(model: nn.Module, seqlen: int) -> tuple[int, int, int, list[int], int]:
    """On fake tensors: block-input bytes per sample, kwargs bytes per calibration batch,
    the transient bytes of block 0's forward on one batch, the input width of each of block
    0's Hessian groups, and the largest unit's OBS working set."""
    path, blocks = decoder_blocks(model)
    tokens = torch.zeros(CALIB_BATCH, seqlen, dtype=torch.long)
    inputs = capture_block_inputs(model, tokens, CALIB_BATCH)
    hidden = inputs.hidden[0]
    per_sample = hidden.numel() * hidden.element_size() // CALIB_BATCH
    seen: set[int] = set()  # one batch's kwargs of each layer type (Gemma3 has two)
    kwargs = sum(_tensor_bytes(k[0], seen) for k in [inputs.kwargs, *inputs.typed.values()])
    units = compressible_units(model)
    block_units = {n: m for n, m in units.items() if n.startswith(f"{path}.0.")}
    groups = input_groups(blocks[0], block_units, inputs)
    with LiveBytes() as tracker, torch.no_grad():
        blocks[0](hidden, **inputs.kwargs[0])
    widths = [in_features(block_units[g[0]]) for g in groups]
    solver = max(_solver_bytes(*unit_shape(m)) for m in units.values())
    return per_sample, kwargs, tracker.peak, widths, solver


def _forward_peak(model: nn.Module, batch: int, seqlen: int, causal: bool) -> int:
    """Transient bytes of one forward pass as perplexity runs it (logits to float32, the
    cross-entropy on them) on fake tensors."""
    ids = torch.zeros(batch, seqlen, dtype=torch.long)
    with LiveBytes() as tracker, torch.no_grad():
        if causal:
            logits = model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
            nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
            )
        else:
            model(input_ids=ids)
    return tracker.peak


def _fake_model(config: object, kind: str, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    return auto.from_config(config, dtype=dtype).eval()


def plan_memory(
    model: str,
    steps: tuple[Method, ...],
    device: torch.device,
    dtype: torch.dtype,
    offload: bool = False,
    calib_samples: int = 128,
    calib_seqlen: int = 512,
    eval_seqlen: int = 512,
    eval_batch: int = 4,
    evaluate: bool = True,
) -> MemoryPlan:
    """The memory plan of running ``steps`` on ``model`` on ``device``, then evaluating it
    (perplexity, ``eval_batch`` windows of ``eval_seqlen``) when ``evaluate``."""
    if calib_samples < 1 or calib_seqlen < 2 or eval_seqlen < 2 or eval_batch < 1:
        raise ConfigError(
            "the plan needs calib_samples >= 1, calib_seqlen >= 2, seqlen >= 2 and batch >= 1"
        )
    config = model_config(model)
    kind = model_kind(model)
    context = getattr(config, "max_position_embeddings", None)
    for what, length in (("calibration seqlen", calib_seqlen), ("seqlen", eval_seqlen)):
        if context is not None and length > context:
            raise ConfigError(f"{what} {length} exceeds {model}'s context of {context}")
    need = max((s.needs for s in steps), default=Need.NOTHING)
    size = torch.empty((), dtype=dtype).element_size()
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = _fake_model(config, kind, dtype)
        params = sum(p.numel() for p in fake.parameters())
        _path, blocks = decoder_blocks(fake)
        block_params = [sum(p.numel() for p in b.parameters()) for b in blocks]
        entry = sum(t.numel() * t.element_size() for t in fake.state_dict().values())
        per_sample, kwargs, transient, widths, solver = _walk_shapes(fake, calib_seqlen)
        evaluation = (
            _forward_peak(fake, eval_batch, eval_seqlen, kind == "causal-lm") if evaluate else 0
        )
        if need == Need.INPUTS:
            calib_forward = _forward_peak(fake, CALIB_BATCH, calib_seqlen, kind == "causal-lm")
    batches = math.ceil(calib_samples / CALIB_BATCH)
    activations = 2 * calib_samples * per_sample + batches * kwargs
    statistics = sum(12 * w * w for w in widths)  # float64 sum + float32 result per group
    accumulate = 12 * max(widths) ** 2  # one batch's xᵀx in float32, then in float64
    uses_obs = any(isinstance(s.config, SolverSettings) for s in steps)
    weights, block = params * size, max(block_params) * size
    outside = (params - sum(block_params)) * size
    resident = (
        [("outside blocks", outside), ("one block", block)] if offload else [("weights", weights)]
    )
    candidates = [[("evaluation", evaluation)]]
    if need == Need.INPUTS:
        candidates.append([("calibration forward", calib_forward)])
    if need == Need.STATISTICS:
        inputs = calib_samples * per_sample + batches * kwargs
        collect = [("activations", inputs), ("statistics", statistics)]
        propagate = [("activations", activations), ("per batch", transient)]
        solve = [("activations", inputs), ("statistics", sum(4 * w * w for w in widths))]
        candidates += [
            [*collect, ("per batch", transient + accumulate)],
            propagate,
            [*solve, ("OBS solver", solver)] if uses_obs else solve,
        ]
    work = max(candidates, key=lambda parts: sum(b for _, b in parts))
    device_parts = tuple(resident + work)
    runtime = ("runtime", RUNTIME_BYTES)
    if device.type == "cpu":
        host_parts = (runtime, *device_parts)
    else:  # offloaded weights live in host RAM; without offload they are loaded there first
        host_parts = (runtime, ("weights", weights))
    return MemoryPlan(
        model,
        device,
        dtype,
        offload,
        need,
        params,
        weights,
        block,
        outside,
        activations,
        transient,
        statistics,
        solver if uses_obs else 0,
        evaluation,
        entry,
        device_parts,
        host_parts,
    )


def host_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    path = Path("/proc/meminfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def device_available(device: torch.device) -> int | None:
    """Free bytes on ``device`` now: CUDA's mem_get_info, host RAM for the CPU, None for MPS
    (unknown: no refusal)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return host_available()
    return None


def _parts(parts: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{label} {gib(b)}" for label, b in parts if b)


def check_fits(
    plan: MemoryPlan, device_free: int | None = None, host_free: int | None = None
) -> None:
    """Refuse, with the numbers, a run whose plan exceeds the free memory of its device or of
    the host. ``device_free`` / ``host_free`` default to what the machine has free now, so call
    it before the model is loaded (on the CPU the plan's device peak is compared with
    MemAvailable, which this process's own runtime has already taken its share of)."""
    if device_free is None:
        device_free = device_available(plan.device)
    if host_free is None and plan.device.type != "cpu":
        host_free = host_available()
    if device_free is not None and plan.device_peak > device_free:
        where = "host RAM" if plan.device.type == "cpu" else str(plan.device)
        fix = (
            "use --offload"
            if not plan.offload and plan.device.type != "cpu"
            else "lower --calib-samples, --calib-seqlen or --batch-size, or use a larger device"
        )
        raise ConfigError(
            f"needs {gib(plan.device_peak)} GiB on {where} ({_parts(plan.device_parts)}), "
            f"{gib(device_free)} GiB free; {fix}"
        )
    if plan.device.type != "cpu" and host_free is not None and plan.host_peak > host_free:
        raise ConfigError(
            f"needs {gib(plan.host_peak)} GiB of host RAM ({_parts(plan.host_parts)}), "
            f"{gib(host_free)} GiB available; free memory or use a machine with more RAM"
        )


def check_run(
    model: str,
    steps: Sequence[Method],
    placement: Placement,
    calibration: CalibrationSpec | None,
    protocol: Evaluator | None,
) -> None:
    """Refuse, before the model is loaded, compressing a transformers model with ``steps``
    (and evaluating it with ``protocol``; None: not evaluated) when the plan does not fit this
    machine. Only perplexity's forward pass is planned (other protocols run lighter passes).
    Vision models, which the plan does not cover, pass unchecked."""
    if model_kind(model) == "vision":
        return
    device = placement.device
    dtype = placement.dtype or auto_dtype(device, config_dtype(model), saved_output(model))
    calibration = calibration or CalibrationSpec()
    perplexity = protocol if isinstance(protocol, PerplexityProtocol) else None
    memory = plan_memory(
        model,
        tuple(steps),
        device,
        dtype,
        placement.offload,
        calibration.n_samples,
        calibration.seqlen,
        perplexity.seqlen if perplexity else 2,
        perplexity.batch_size if perplexity else 1,
        evaluate=perplexity is not None,
    )
    check_fits(memory)
