"""Exponential moving average (EMA) of a model's weights, with fixed decay or EDM-style half-life, and EMA targets."""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator

import torch

__all__ = ["EMA", "ema_beta_half_life", "ema_target", "ema_warmup_decay"]


def ema_beta_half_life(batch_size: int, half_life_nimg: float) -> float:
    """Per-step decay for an EMA whose weight halves every `half_life_nimg` training images:
    beta = 0.5 ** (batch_size / half_life_nimg).

    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM), Appendix F.3
    (EMA half-life given in Mimg, e.g. 0.5 Mimg for CIFAR-10).
    """
    return 0.5 ** (batch_size / max(half_life_nimg, 1e-8))


def ema_warmup_decay(decay: float, step: int) -> float:
    """Warm-up: decay_t = min(decay, (1 + step) / (10 + step)), so early averages are not dominated by the random
    initialisation. The `num_updates` rule of TensorFlow's `tf.train.ExponentialMovingAverage`, also used by
    diffusers' `EMAModel(use_ema_warmup=False)` and timm's `ModelEma` variants."""
    return min(decay, (1 + step) / (10 + step))


def ema_target(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of `model` (requires_grad False, eval mode) to serve as an EMA target or a teacher."""
    target = copy.deepcopy(model)
    target.requires_grad_(False)
    target.eval()
    return target


class EMA:
    """Exponential moving average of `model`'s parameters (and optionally its floating-point buffers).

    shadow <- decay_t * shadow + (1 - decay_t) * param, done with one `torch._foreach_lerp_` per update, where decay_t
    is `decay` (optionally warmed up, see `ema_warmup_decay`) or, when `half_life_nimg` is given,
    `ema_beta_half_life(batch_size, half_life_nimg_t)` with EDM's optional ramp-up
    half_life_nimg_t = min(half_life_nimg, nimg * rampup_ratio).

    The object has `state_dict` / `load_state_dict`, so `accelerator.register_for_checkpointing(ema)` saves and
    restores it with `save_state` / `load_state`.

    Args:
        model: the module to average (usually the unwrapped student).
        decay: fixed per-step decay (ignored when `half_life_nimg` is given).
        half_life_nimg: EDM half-life in training images; then `update` needs `batch_size` (the global batch).
        rampup_ratio: EDM ramp-up of the half-life (EDM uses 0.05); None disables it. Half-life mode only.
        warmup: clamp the decay with min(decay_t, (1 + step) / (10 + step)).
        device: where the shadow lives (e.g. "cpu" to save accelerator memory); default: beside each parameter.
        dtype: dtype of the shadow (e.g. torch.float32 for a bf16 model); default: each parameter's dtype.
        trainable_only: average only parameters with requires_grad (e.g. LoRA weights on a frozen base).
        include_buffers: also average floating-point buffers (non-float buffers are not tracked).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        decay: float | None = 0.999,
        half_life_nimg: float | None = None,
        rampup_ratio: float | None = None,
        warmup: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        trainable_only: bool = False,
        include_buffers: bool = False,
    ):
        if half_life_nimg is None and decay is None:
            raise ValueError("EMA needs decay (e.g. 0.999) or half_life_nimg (e.g. 500_000); both are None")
        if half_life_nimg is None and not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay={decay} must lie in [0, 1]")
        if half_life_nimg is not None and half_life_nimg <= 0:
            raise ValueError(f"EMA half_life_nimg={half_life_nimg} must be > 0")
        self.decay = decay
        self.half_life_nimg = half_life_nimg
        self.rampup_ratio = rampup_ratio
        self.warmup = warmup
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.trainable_only = trainable_only
        self.include_buffers = include_buffers
        self.step = 0
        self.nimg = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: tensor.detach().to(device=self.device or tensor.device, dtype=self.dtype or tensor.dtype, copy=True)
            for name, tensor in self._tracked(model)
        }
        self._backup: dict[str, torch.Tensor] | None = None
        self._tensor_lists: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- what is tracked -------------------------------------------------------------------------------------------

    def _tracked(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in model.named_parameters():
            if param.is_floating_point() and (param.requires_grad or not self.trainable_only):
                yield name, param
        if self.include_buffers:
            for name, buffer in model.named_buffers():
                if buffer.is_floating_point():
                    yield name, buffer

    def _model_tensors(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """The model's tensors in the shadow's order; a clear error when the names differ.

        Looked up by name once per model and then kept (a step's `update` and `copy_to` must not walk the module
        tree: at Stable Diffusion's ~700 tensors that walk costs milliseconds a step). `Module.to`, `load_state_dict`
        and the optimizers keep a model's tensor objects; code that re-registers a parameter (`module.weight =
        nn.Parameter(...)`) after the first update must call `forget(model)`."""
        cached = self._tensor_lists.get(model)
        if cached is not None:
            return cached
        tensors = dict(model.named_parameters())
        if self.include_buffers:
            tensors.update(model.named_buffers())
        missing = [name for name in self.shadow if name not in tensors]
        if missing:
            raise KeyError(
                f"model has no tensors named {missing[:5]} tracked by this EMA (was it built on another model?)"
            )
        found = [tensors[name] for name in self.shadow]
        self._tensor_lists[model] = found
        return found

    @staticmethod
    def _same_layout(shadows: list[torch.Tensor], tensors: list[torch.Tensor]) -> bool:
        """Whether every shadow has its model tensor's device and dtype (then one foreach call serves them all)."""
        return all(s.device == t.device and s.dtype == t.dtype for s, t in zip(shadows, tensors))

    @torch.no_grad()
    def share_with(self, model: torch.nn.Module) -> bool:
        """Make `model`'s tracked tensors views of the EMA's own storage (when every dtype and device match), so that
        `update` writes the average straight into `model` and no `copy_to(model)` is needed (an EMA target that runs
        in the EMA's dtype, e.g. LCM's f_theta^- on a CPU). `model` takes the current EMA weights. Returns whether it
        could; without a match nothing changes and `copy_to` stays the way to refresh `model`."""
        tensors = self._model_tensors(model)
        shadows = self.shadow_params
        if not self._same_layout(shadows, tensors) or any(t.shape != s.shape for t, s in zip(tensors, shadows)):
            return False
        for tensor, shadow in zip(tensors, shadows):
            tensor.data = shadow
        return True

    def forget(self, model: torch.nn.Module) -> None:
        """Drop the tensor list kept for `model` (after its parameters were re-registered)."""
        self._tensor_lists.pop(model, None)

    @property
    def shadow_params(self) -> list[torch.Tensor]:
        """The averaged tensors, in the order of `model.named_parameters()` (then buffers)."""
        return list(self.shadow.values())

    # --- the average -----------------------------------------------------------------------------------------------

    def current_decay(self, batch_size: int | None = None) -> float:
        """decay_t for the next update."""
        if self.half_life_nimg is not None:
            if batch_size is None:
                raise ValueError("EMA with half_life_nimg needs update(model, batch_size=<global batch size>)")
            half_life = self.half_life_nimg
            if self.rampup_ratio is not None:
                half_life = min(half_life, (self.nimg + batch_size) * self.rampup_ratio)
            decay = ema_beta_half_life(batch_size, half_life)
        else:
            decay = self.decay
        if self.warmup:
            decay = ema_warmup_decay(decay, self.step)
        return decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, batch_size: int | None = None) -> float:
        """One EMA step toward `model`'s current weights; returns the decay used."""
        decay = self.current_decay(batch_size)
        shadows = self.shadow_params
        tensors = self._model_tensors(model)
        if self._same_layout(shadows, tensors):  # the usual case: one multi-tensor lerp, no per-tensor Python
            torch._foreach_lerp_(shadows, tensors, 1.0 - decay)
            self.step += 1
            self.nimg += batch_size or 0
            return decay
        # Group by (device, dtype) so foreach works with a CPU shadow or a mixed-dtype model.
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for shadow, tensor in zip(shadows, tensors):
            group = groups.setdefault((shadow.device, shadow.dtype), ([], []))
            group[0].append(shadow)
            group[1].append(tensor.to(device=shadow.device, dtype=shadow.dtype, non_blocking=True))
        for group_shadows, group_tensors in groups.values():
            torch._foreach_lerp_(group_shadows, group_tensors, 1.0 - decay)
        self.step += 1
        self.nimg += batch_size or 0
        return decay

    # --- swapping weights ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Overwrite `model`'s tracked tensors with the EMA weights."""
        targets, shadows = self._model_tensors(model), self.shadow_params
        if self._same_layout(shadows, targets):
            torch._foreach_copy_(targets, shadows)  # one multi-tensor copy
            return
        for shadow, tensor in zip(shadows, targets):
            tensor.copy_(shadow)

    @torch.no_grad()
    def store(self, model: torch.nn.Module) -> None:
        """Save `model`'s current weights and swap the EMA weights in (e.g. for validation); `restore` swaps back.
        (Calling `copy_to` after `store`, as in diffusers' `EMAModel` idiom, is harmless.)"""
        if self._backup is not None:
            raise RuntimeError("EMA.store called twice without restore; the stored weights would be lost")
        self._backup = {name: t.detach().clone() for name, t in zip(self.shadow, self._model_tensors(model))}
        self.copy_to(model)

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        """Put back the weights saved by `store`."""
        if self._backup is None:
            raise RuntimeError("EMA.restore called without a matching store")
        for backup, tensor in zip(self._backup.values(), self._model_tensors(model)):
            tensor.copy_(backup)
        self._backup = None

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """`with ema.swapped_in(model): validate(model)` runs with EMA weights and restores them afterwards."""
        self.store(model)
        try:
            yield model
        finally:
            self.restore(model)

    # --- checkpointing ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Tensors and plain numbers only (loadable with `torch.load(weights_only=True)`)."""
        return {
            "shadow": dict(self.shadow),
            "step": self.step,
            "nimg": self.nimg,
            "decay": self.decay,
            "half_life_nimg": self.half_life_nimg,
            "rampup_ratio": self.rampup_ratio,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        shadow = state_dict["shadow"]
        if set(shadow) != set(self.shadow):
            extra, missing = sorted(set(shadow) - set(self.shadow)), sorted(set(self.shadow) - set(shadow))
            raise KeyError(f"EMA state_dict does not match: unexpected {extra[:5]}, missing {missing[:5]}")
        for name, current in self.shadow.items():
            if shadow[name].shape != current.shape:
                raise ValueError(f"EMA tensor {name}: shape {tuple(shadow[name].shape)} != {tuple(current.shape)}")
            current.copy_(shadow[name])
        self.step = int(state_dict["step"])
        self.nimg = int(state_dict["nimg"])
        for key in ("decay", "half_life_nimg", "rampup_ratio", "warmup"):
            if key in state_dict:
                setattr(self, key, state_dict[key])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EMA:
        """Move the shadow (e.g. to the accelerator once the model is prepared)."""
        self.shadow = {name: t.to(device=device, dtype=dtype) for name, t in self.shadow.items()}
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        return self

    def __repr__(self) -> str:
        rule = f"half_life_nimg={self.half_life_nimg}" if self.half_life_nimg is not None else f"decay={self.decay}"
        return f"EMA({rule}, warmup={self.warmup}, tensors={len(self.shadow)}, step={self.step})"
