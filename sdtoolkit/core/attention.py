"""Attention kernel selection for diffusers models: which kernels run where, and how to apply one to a model."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "ATTENTION_BACKENDS",
    "DIFFUSERS_BACKEND_NAMES",
    "AttentionSetting",
    "available_backends",
    "configure_attention",
    "make_setting",
    "resolve_backend",
    "sign_processors",
    "takes_attention_bias",
    "unsign_processors",
    "uses_dispatch",
]

ATTENTION_BACKENDS = ("auto", "sdpa", "flash", "efficient", "cudnn", "math", "xformers", "jvp")
"""Names accepted by `resolve_backend`. `auto` picks one of the others; the rest are concrete kernels:

- `sdpa`: `F.scaled_dot_product_attention` choosing its kernel itself (torch's own priority order).
- `flash` / `efficient` / `cudnn` / `math`: `F.scaled_dot_product_attention` restricted to that one `SDPBackend`.
- `xformers`: `xformers.ops.memory_efficient_attention` (CUDA only; `pip install xformers`).
- `jvp`: the math kernel, chosen because it is the only SDPA kernel with forward-mode AD. `torch.func.jvp` through
  the fused kernels fails: on CPU (torch 2.13) "Trying to use forward AD with
  _scaled_dot_product_flash_attention_for_cpu that does not support it"; on CUDA (seen on an H200, torch 2.11) the
  same NotImplementedError for `_scaled_dot_product_efficient_attention` and `_scaled_dot_product_flash_attention`.
  Continuous-time consistency training (sCM / TrigFlow: Lu & Song 2024, "Simplifying, Stabilizing and Scaling
  Continuous-Time Consistency Models") differentiates the model with `torch.func.jvp`, so it must run with
  `attention="jvp"` (the paper writes its own JVP-capable flash attention; the math kernel is the portable, slower,
  O(tokens^2)-memory substitute). On that H200, a bf16 JVP through diffusers' UNet / Flux failed in a Linear
  ("expected mat1 and mat2 to have the same dtype") before reaching attention, so do the JVP in float32.
"""

_SDP_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}

# Our names -> diffusers `AttentionBackendName` values, for processors that route through `dispatch_attention_fn`.
DIFFUSERS_BACKEND_NAMES: dict[str, str] = {
    "sdpa": "native",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
    "cudnn": "_native_cudnn",
    "math": "_native_math",
    "jvp": "_native_math",
    "xformers": "xformers",
}

# Tiny probe shape (batch, heads, tokens, head_dim); head_dim 64 is supported by every fused kernel.
_PROBE_SHAPE = (1, 2, 16, 64)


def _as_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@functools.cache
def _sdp_backend_runs(device: torch.device, dtype: torch.dtype, backend: SDPBackend) -> bool:
    """True when `F.scaled_dot_product_attention` restricted to `backend` runs a tiny call on `device` in `dtype`."""
    try:
        # zeros, not randn: the probe must not advance the global RNG, or a run's first draws would depend on
        # whether an earlier run in the same process already filled this cache (exact resume)
        q = torch.zeros(_PROBE_SHAPE, device=device, dtype=dtype)
        with warnings.catch_warnings(), sdpa_kernel([backend]):
            warnings.simplefilter("ignore")  # torch warns once per kernel it rejects
            F.scaled_dot_product_attention(q, q, q)
        return True
    except (RuntimeError, ValueError, NotImplementedError, TypeError):
        return False


@functools.cache
def _xformers_importable() -> bool:
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # a broken / mismatched xformers build counts as not installed
        return False
    return True


def available_backends(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """The concrete backends (all of `ATTENTION_BACKENDS` but `auto`) that run on `device` in `dtype`.

    Each SDPA kernel is checked with a tiny probe call under `torch.nn.attention.sdpa_kernel`; results are cached per
    (device, dtype). `xformers` counts only when it imports and the device is CUDA.
    """
    device = _as_device(device)
    runs = {name: _sdp_backend_runs(device, dtype, backend) for name, backend in _SDP_BACKENDS.items()}
    available = []
    for name in ATTENTION_BACKENDS:
        if name == "auto":
            continue
        if name in ("sdpa", "jvp"):
            ok = runs["math"]  # plain SDPA falls back to math; jvp *is* math
        elif name == "xformers":
            ok = device.type == "cuda" and _xformers_importable()
        else:
            ok = runs[name]
        if ok:
            available.append(name)
    return available


def _auto_backend(device: torch.device, dtype: torch.dtype, available: list[str]) -> str:
    """`auto`: on CUDA with bf16/fp16, cuDNN on Hopper and newer, else flash; else memory-efficient; else `sdpa`.

    Measured on an H200 (torch 2.11, bf16, forward + backward): cuDNN 0.62 ms vs flash 1.03 ms at (2, 8, 4096, 40)
    (SD 1.5 at 512 px) and 2.18 ms vs 3.35 ms at (2, 24, 4429, 64) (SD3 at 1024 px); memory-efficient was 2.4x slower.
    """
    if device.type != "cuda":
        return "sdpa"
    half = dtype in (torch.bfloat16, torch.float16)
    if half and "cudnn" in available and torch.cuda.get_device_capability(device) >= (9, 0):
        return "cudnn"
    if half and "flash" in available:
        return "flash"
    if "efficient" in available:
        return "efficient"
    return "sdpa"


def resolve_backend(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The concrete backend for `name` on `device` in `dtype`; `ValueError` naming the valid / available ones."""
    device = _as_device(device)
    key = str(name).strip().lower()
    available = available_backends(device, dtype)
    if key not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention={name!r} is unknown; choose one of: {', '.join(ATTENTION_BACKENDS)} "
            f"(available on {device} for {dtype}: {', '.join(available)})"
        )
    if key == "auto":
        return _auto_backend(device, dtype, available)
    if key not in available:
        hint = " (xformers needs a CUDA device and `pip install xformers`)" if key == "xformers" else ""
        raise ValueError(
            f"attention={name!r} is not available on {device} for {dtype}{hint}; available: {', '.join(available)}"
        )
    return key


def _attention_modules(model: torch.nn.Module):
    """The diffusers attention modules of `model` (those that own a `processor`)."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    for module in model.modules():
        if isinstance(module, (Attention, AttentionModuleMixin)) and getattr(module, "processor", None) is not None:
            yield module


class _CallSignature:
    """Stands in for `processor.__call__` where diffusers looks it up by attribute: every `Attention.forward` (and the
    transformers' attention modules) runs `inspect.signature(self.processor.__call__)` to filter its keyword
    arguments, which re-derives the signature from the code object on every call (~0.1 ms; 16 attention modules in
    SD1.5's UNet, per forward). `inspect.signature` returns a callable's `__signature__` as it is, so this object
    answers at once. Calling it calls the processor; `processor(...)` itself (what `forward` runs) is untouched, since
    Python looks special methods up on the type."""

    __slots__ = ("__signature__", "processor")

    def __init__(self, processor):
        self.processor = processor
        self.__signature__ = inspect.signature(type(processor).__call__.__get__(processor))

    def __call__(self, *args, **kwargs):
        return type(self.processor).__call__(self.processor, *args, **kwargs)


def sign_processors(model: torch.nn.Module) -> int:
    """Give every attention processor of `model` a precomputed call signature (see `_CallSignature`): the same
    keyword filtering in diffusers, without the per-call introspection. Outputs are unchanged (test). A processor set
    later (`set_attn_processor`, xformers) simply goes without it. Returns how many processors were signed."""
    if getattr(model, "_sdtoolkit_compiled", False):  # see `unsign_processors`
        return 0
    signed = 0
    for module in _attention_modules(model):
        processor = module.processor
        current = getattr(processor, "__dict__", {}).get("__call__")
        if isinstance(current, _CallSignature) and current.processor is processor:
            continue
        try:
            processor.__call__ = _CallSignature(processor)
        except (AttributeError, TypeError, ValueError):  # slotted or builtin processors: leave them as they are
            continue
        signed += 1
    return signed


def unsign_processors(model: torch.nn.Module) -> None:
    """Undo `sign_processors` (before `torch.compile`: compiled code pays no introspection, and a per-processor
    signature object would make dynamo guard on each processor, so that blocks of one class stop sharing code). The
    model is marked, so that later Denoisers wrapping it do not sign it again."""
    model._sdtoolkit_compiled = True
    for module in _attention_modules(model):
        if isinstance(getattr(module.processor, "__dict__", {}).get("__call__"), _CallSignature):
            del module.processor.__call__


def uses_dispatch(model: torch.nn.Module) -> bool:
    """True when some attention processor of `model` routes through diffusers' `dispatch_attention_fn`
    (it carries `_attention_backend`: Flux, Wan, QwenImage, ...). UNet2DConditionModel's `AttnProcessor2_0` and SD3's
    `JointAttnProcessor2_0` call `F.scaled_dot_product_attention` directly and return False."""
    return any(hasattr(module.processor, "_attention_backend") for module in _attention_modules(model))


def _uses_xformers_processors(model: torch.nn.Module) -> bool:
    return any(type(module.processor).__name__.startswith("XFormers") for module in _attention_modules(model))


def _set_dispatch_backend(model: torch.nn.Module, diffusers_name: str) -> None:
    """`model.set_attention_backend(diffusers_name)` without leaking diffusers' process-wide active backend (which
    `set_attention_backend` also sets, and which would change every other model whose processors are unset)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous = _AttentionBackendRegistry._active_backend
    try:
        model.set_attention_backend(diffusers_name)
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)


_TAKES_BIAS = "_sdtoolkit_attention_takes_bias"


def takes_attention_bias(model: torch.nn.Module) -> bool:
    """Whether `model`'s attention may be given an additive bias: not with xformers or a flash-only SDPA setting
    (flash kernels take no mask), and not on a regionally compiled model (swapping its processors would recompile)."""
    for inner in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):  # DDP / compile wrappers
        if inner is not None and (
            getattr(inner, "_sdtoolkit_compiled", False) or not inner.__dict__.get(_TAKES_BIAS, True)
        ):
            return False
    return True


@dataclass(frozen=True)
class AttentionSetting:
    """A resolved attention backend. `apply(model)` sets what must live on the model (diffusers dispatch backend,
    xformers processors); calling the setting returns the context manager to wrap each forward in:

        setting = configure_attention(unet, "auto", device, dtype)
        with setting():
            out = unet(x, t, encoder_hidden_states=c).sample
    """

    requested: str
    """The name the user asked for (may be `auto`)."""
    backend: str
    """The concrete backend it resolved to (never `auto`)."""
    device: torch.device
    """Device the backend was resolved for."""
    dtype: torch.dtype
    """Dtype the backend was resolved for."""
    fallbacks: tuple[str, ...] = ()
    """For `auto` only: further SDPA kernels torch may use when `backend` rejects an input (e.g. a head size)."""

    @property
    def sdp_backends(self) -> list[SDPBackend] | None:
        """SDPA kernels allowed inside `__call__` (in priority order), or None for no restriction."""
        names = (self.backend, *self.fallbacks)
        if self.backend in ("sdpa", "xformers"):
            return None
        return [_SDP_BACKENDS["math" if name == "jvp" else name] for name in names]

    @property
    def diffusers_backend(self) -> str:
        """The diffusers `AttentionBackendName` set on dispatch processors. For `auto` this is `native` so that the
        priority list of `__call__` (with fallbacks) decides, instead of one strict kernel."""
        return "native" if self.fallbacks else DIFFUSERS_BACKEND_NAMES[self.backend]

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Set this backend on `model` through diffusers' own mechanisms; returns `model`."""
        # an additive attention bias (sdtoolkit.core.repeated_tokens) needs an SDPA kernel that takes a mask
        flash_only = self.backend == "flash" and not self.fallbacks
        model.__dict__[_TAKES_BIAS] = not (self.backend == "xformers" or flash_only)
        if self.backend == "xformers":
            model.enable_xformers_memory_efficient_attention()
            return model
        if _uses_xformers_processors(model):
            model.disable_xformers_memory_efficient_attention()
        if uses_dispatch(model):
            _set_dispatch_backend(model, self.diffusers_backend)
        return model

    def __call__(self) -> contextlib.AbstractContextManager:
        backends = self.sdp_backends
        if backends is None:
            return contextlib.nullcontext()
        return sdpa_kernel(backends, set_priority=len(backends) > 1)


def make_setting(name: str, device: torch.device | str, dtype: torch.dtype) -> AttentionSetting:
    """Resolve `name` into an `AttentionSetting` without touching any model."""
    device = _as_device(device)
    backend = resolve_backend(name, device, dtype)
    fallbacks: tuple[str, ...] = ()
    if str(name).strip().lower() == "auto" and backend in _SDP_BACKENDS:
        available = available_backends(device, dtype)
        fallbacks = tuple(n for n in ("flash", "efficient", "cudnn", "math") if n != backend and n in available)
    return AttentionSetting(requested=str(name), backend=backend, device=device, dtype=dtype, fallbacks=fallbacks)


def configure_attention(
    model: torch.nn.Module | None, name: str, device: torch.device | str, dtype: torch.dtype
) -> AttentionSetting:
    """Resolve `name`, apply it to `model` (may be None), and return the `AttentionSetting`: a zero-argument callable
    giving the context manager to wrap every forward of `model` in (`with setting(): model(...)`)."""
    setting = make_setting(name, device, dtype)
    if model is not None:
        setting.apply(model)
    return setting
