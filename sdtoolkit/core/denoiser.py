"""The shared `Denoiser`: any diffusers UNet/transformer + its noise schedule + prediction type + guidance.

Every trainer and every 3D optimizer goes through this class (k-diffusion's `Denoiser` pattern). It is the one place
that knows:

- how to call the wrapped network, with which timestep, conditioning and guidance embedding, through one adapter
  per model family (`sdtoolkit.core.families`: SD 1.x/2.x, SDXL, SD3, SANA, FLUX, pixel UNets);
- its prediction type and how to turn it into x0, eps, v, flow velocity or TrigFlow F (`sdtoolkit.core.prediction`);
- classifier-free guidance (diffusers convention, cond and uncond batched into one forward) and guidance rescale
  (`sdtoolkit.core.cfg`);
- text conditioning through the pipeline's own `encode_prompt`, and VAE encode/decode with scaling and shift;
- the attention kernel (`sdtoolkit.core.attention`), dtype policy, gradient checkpointing, channels_last, compile.

Shapes: x_t is `[B, C, H, W]` latents, t is `[B]` in the schedule's native time (`sdtoolkit.core.schedules`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._C._functorch import maybe_current_level
from torch.autograd import forward_ad

from sdtoolkit.core.attention import sign_processors, unsign_processors
from sdtoolkit.core.cfg import classifier_free_guidance, rescale_guidance
from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families import family_for, supported_model_classes
from sdtoolkit.core.features import capturing
from sdtoolkit.core.prediction import Coefficients, canonical_prediction_type, from_x0_eps, to_x0_eps
from sdtoolkit.core.schedules import FlowSchedule, NoiseSchedule, TrigFlowSchedule, schedule_from_config
from sdtoolkit.core.utils import cast_floating

SUPPORTED_MODELS = supported_model_classes()
"""diffusers network classes the Denoiser wraps (one adapter per family: `sdtoolkit.core.families`)."""
#: blocks compiled by `Denoiser.compile(regional=True)` when the model declares no `_repeated_blocks`
REPEATED_BLOCKS = (
    "BasicTransformerBlock",
    "ResnetBlock2D",
    "JointTransformerBlock",
    "SanaTransformerBlock",
    "FluxTransformerBlock",
    "FluxSingleTransformerBlock",
)


@dataclass
class Prediction:
    """A denoiser output at (x_t, t): the clean-sample estimate x0 and the noise estimate eps (x_t = alpha x0 +
    sigma eps holds exactly), plus the network's raw (guided) output in its own prediction type."""

    x0: Tensor
    eps: Tensor
    raw: Tensor


class Denoiser(nn.Module):
    """Wraps a diffusers network with its schedule and prediction type; one call gives x0, eps, v, flow or F.

    Args:
        model: a diffusers UNet2DConditionModel, UNet2DModel, SD3Transformer2DModel or SanaTransformer2DModel
            (possibly wrapped by accelerate/DDP/peft; the unwrapped one is found through `.module`).
        schedule: its noise schedule (`sdtoolkit.core.schedules`).
        prediction_type: what the network outputs: `epsilon`, `sample`, `v_prediction`, `flow` or `trigflow`.
        vae, text_encoder, tokenizer, pipeline: optional parts used by `encode`/`decode`/`encode_prompt`.
        attention: attention kernel (`sdtoolkit.core.attention.ATTENTION_BACKENDS`); None leaves the model as is.
        autocast_dtype: run the network under `torch.autocast` in this dtype (trainable fp32 master weights).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        prediction_type: str,
        *,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any | None = None,
        pipeline: Any | None = None,
        attention: str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.prediction_type = canonical_prediction_type(prediction_type)
        self.model_kind = type(unwrap_model(model)).__name__
        self.family = family_for(unwrap_model(model))
        sign_processors(unwrap_model(model))  # diffusers' per-call `inspect.signature` becomes a lookup
        if self.prediction_type == "trigflow" and not isinstance(schedule, TrigFlowSchedule):
            raise ValueError("prediction_type='trigflow' needs a TrigFlowSchedule")
        # parts that are not trained here stay out of the module tree (and out of state_dicts and optimizers)
        self._parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "pipeline": pipeline}
        self.autocast_dtype = autocast_dtype
        self._attention_context = contextlib.nullcontext
        self.attention_requested: str | None = None
        self.attention_backend: str | None = None
        if attention is not None:
            self.set_attention(attention)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Any,
        *,
        model: nn.Module | None = None,
        prediction_type: str | None = None,
        attention: str | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> Denoiser:
        """Wraps a diffusers pipeline's `unet` or `transformer` (or `model`, e.g. a student copy of it), taking the
        schedule and prediction type from its scheduler config (flow schedulers mean `flow`)."""
        network = model if model is not None else getattr(pipeline, "unet", None) or pipeline.transformer
        schedule = schedule_from_config(pipeline.scheduler)
        if prediction_type is None:
            if isinstance(schedule, FlowSchedule):
                prediction_type = "flow"
            elif isinstance(schedule, TrigFlowSchedule):
                prediction_type = "trigflow"
            else:
                prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
        if isinstance(schedule, FlowSchedule):  # the sigmas the family's stock pipeline samples
            family = family_for(unwrap_model(network))
            use_flow_sigmas = pipeline.scheduler.config.get("use_flow_sigmas", False)
            schedule = schedule.replace(sigmas="scheduler" if use_flow_sigmas else family.flow_sigmas)
        return cls(
            network,
            schedule,
            prediction_type,
            vae=getattr(pipeline, "vae", None),
            text_encoder=getattr(pipeline, "text_encoder", None),
            tokenizer=getattr(pipeline, "tokenizer", None),
            pipeline=pipeline,
            attention=attention,
            autocast_dtype=autocast_dtype,
        )

    @property
    def base_model(self) -> nn.Module:
        """The diffusers model itself (unwrapped from DDP/compile wrappers)."""
        return unwrap_model(self.model)

    @property
    def vae(self) -> nn.Module | None:
        return self._parts["vae"]

    @property
    def pipeline(self) -> Any | None:
        return self._parts["pipeline"]

    @property
    def config(self) -> Any:
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.base_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base_model.parameters()).dtype

    @property
    def guidance_input(self) -> str | None:
        """How the network takes guidance (`ModelFamily.guidance_input`): `w` (LCM's w-embedding), `scale` (a
        guidance-distilled input such as FLUX.1-dev's: `predict` feeds it the guidance scale instead of a CFG
        batch), or None."""
        return self.family.guidance_input(self.base_model)

    @property
    def latent_channels(self) -> int:
        """Channels of the `[B, C, H, W]` latents this Denoiser takes (FLUX: before packing)."""
        return self.family.latent_channels(self.base_model)

    def set_latent_size(self, height: int, width: int) -> Denoiser:
        """Fixes a resolution-dependent time shift (FLUX's dynamic shifting) for latents `height` x `width`, as the
        stock pipeline does per call; a no-op for every other schedule. Returns self."""
        if isinstance(self.schedule, FlowSchedule) and self.schedule.dynamic is not None:
            tokens = self.family.image_seq_len(self.base_model, height, width)
            self.schedule = self.schedule.at_image_seq_len(tokens)
        return self

    @property
    def time_cond_proj_dim(self) -> int | None:
        """Width of the guidance embedding of guidance-distilled UNets (LCM's w-embedding), or None."""
        return getattr(self.config, "time_cond_proj_dim", None)

    # ------------------------------------------------------------------ network call

    def model_output(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning | None = None,
        *,
        guidance_embed: Tensor | None = None,
    ) -> Tensor:
        """The raw network output (in `self.prediction_type`) at (x_t, t), with no guidance.

        Args:
            x_t: `[B, C, H, W]` noisy latents. t: `[B]` native times (a scalar is broadcast).
            guidance_embed: `[B]` guidance values for guidance-embedding models: LCM's w (= diffusers scale - 1) for
                UNets with `time_cond_proj_dim`, the `guidance` input for SANA-Sprint-style transformers.
        """
        cond = cond if cond is not None else Conditioning()
        t = _as_batch(t, x_t)
        _check_time(self.schedule, t)
        timestep = self.schedule.model_timestep(t)
        model_input = x_t
        if self.prediction_type == "trigflow":
            model_input = x_t / self.schedule.sigma_data  # F_theta(x_t / sigma_d, c_noise(t)), Lu & Song 2024 Eq. 6
        dtype = self.dtype if self.autocast_dtype is None else model_input.dtype
        model_input = model_input.to(dtype)
        with self._attention_context(), self._autocast(), _no_grad_fast_path() as fast:
            output = self._call_network(model_input, timestep, cond, guidance_embed)
        if output.shape[1] == 2 * x_t.shape[1]:  # learned-variance models: keep the mean prediction
            output = output[:, : x_t.shape[1]]
        if fast and output.dtype == x_t.dtype:
            return output.clone()  # a normal tensor: later autograd may save it (inference tensors cannot be saved)
        return output.to(x_t.dtype)

    def _call_network(self, x: Tensor, timestep: Tensor, cond: Conditioning, guidance_embed: Tensor | None) -> Tensor:
        return self.family.call(self.model, x, timestep, cond, guidance_embed)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ predictions

    def coefficients(self, t: Tensor, x_t: Tensor) -> Coefficients:
        """alpha_t, sigma_t and their derivatives at `t`, broadcast against `x_t`, in x_t's dtype."""
        t = _as_batch(t, x_t)
        alpha_t, sigma_t, d_alpha_t, d_sigma_t = (c.to(x_t.dtype) for c in self.schedule.coefficients(t, x_t.ndim))
        sigma_data = getattr(self.schedule, "sigma_data", 1.0)
        return Coefficients(alpha_t, sigma_t, d_alpha_t, d_sigma_t, sigma_data)

    def predict(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning | None = None,
        *,
        uncond: Conditioning | None = None,
        guidance_scale: float | Tensor = 1.0,
        guidance_rescale: float = 0.0,
        guidance_embed: Tensor | None = None,
    ) -> Prediction:
        """x0 and eps at (x_t, t), with classifier-free guidance when `uncond` is given and the scale is not 1.

        Guidance follows diffusers: pred_u + s (pred_c - pred_u), with cond and uncond concatenated into ONE
        forward of batch 2B. It is combined in the network's own prediction type, which equals combining x0 or eps
        (the conversions are affine with weights independent of the prediction). `guidance_scale` may be a float
        or a `[B]` tensor of per-sample scales.

        Guidance-distilled networks (`guidance_input == "scale"`, FLUX.1-dev) take the scale as their guidance
        input instead, with no CFG batch, as their stock pipeline does (also at scale 1), unless `guidance_embed`
        gives the input explicitly.
        """
        if guidance_embed is None and self.guidance_input == "scale":
            guidance_embed = _as_batch(guidance_scale, x_t)
            uncond = None
        needs_uncond = uncond is not None and not _is_one(guidance_scale)
        if needs_uncond:
            x_in = torch.cat([x_t, x_t])
            t_in = torch.cat([_as_batch(t, x_t)] * 2)
            g_in = None if guidance_embed is None else torch.cat([guidance_embed, guidance_embed])
            raw_u, raw_c = self.model_output(x_in, t_in, Conditioning.cat([uncond, cond]), guidance_embed=g_in).chunk(
                2
            )
            scale = guidance_scale
            if isinstance(scale, Tensor) and scale.ndim == 1:
                scale = scale.to(raw_c.dtype)[(...,) + (None,) * (raw_c.ndim - 1)]
            raw = classifier_free_guidance(raw_u, raw_c, scale)
            raw = rescale_guidance(raw, raw_c, guidance_rescale)
        else:
            raw = self.model_output(x_t, t, cond, guidance_embed=guidance_embed)
        x0, eps = to_x0_eps(raw, x_t, self.prediction_type, self.coefficients(t, x_t))
        return Prediction(x0=x0, eps=eps, raw=raw)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning | None = None,
        *,
        target: str = "sample",
        **guidance: Any,
    ) -> Tensor:
        """The prediction of type `target` (`sample`/`x0`, `epsilon`/`eps`, `v_prediction`/`v`, `flow`, `trigflow`)
        at (x_t, t); keyword arguments as in `predict`."""
        target = canonical_prediction_type(target)
        prediction = self.predict(x_t, t, cond, **guidance)
        if target == "sample":
            return prediction.x0
        if target == "epsilon":
            return prediction.eps
        if target == self.prediction_type:
            return prediction.raw
        return from_x0_eps(prediction.x0, prediction.eps, target, self.coefficients(t, x_t))

    def convert(self, x0: Tensor, eps: Tensor, t: Tensor, target: str) -> Tensor:
        """Any prediction type from an (x0, eps) pair at time t (e.g. the v-target of a training loss)."""
        like = x0
        return from_x0_eps(x0, eps, canonical_prediction_type(target), self.coefficients(t, like))

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps (the forward process of the wrapped schedule)."""
        return self.schedule.add_noise(x0, eps, _as_batch(t, x0))

    # ------------------------------------------------------------------ text and VAE

    @torch.no_grad()
    def encode_prompt(
        self, prompts: list[str], negative_prompt: str | list[str] | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) for `prompts`, through the pipeline's own `encode_prompt` (so the conditioning is exactly
        what the pipeline would use at sampling time). The unconditional prompt defaults to "" as in diffusers."""
        pipe = self.pipeline
        if pipe is None or not hasattr(pipe, "encode_prompt"):
            raise ValueError("encode_prompt needs the Denoiser to hold a diffusers pipeline (Denoiser.from_pipeline)")
        prompts = list(prompts)
        negative = negative_prompt if negative_prompt is not None else [""] * len(prompts)
        return self.family.encode_prompt(pipe, prompts, negative, self.device)

    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Images in [-1, 1] `[B, 3, H, W]` -> latents z = (E(x) - shift) * scale (Rombach et al. 2022, Sec. 3; the
        scale/shift factors come from the VAE config). Differentiable (SDS backpropagates through it)."""
        vae = self._require_vae()
        encoded = vae.encode(images.to(vae.dtype))
        posterior = getattr(encoded, "latent_dist", None)
        if posterior is None:  # a deterministic autoencoder (SANA's AutoencoderDC)
            z = encoded.latent
        else:
            z = posterior.sample(generator) if sample else posterior.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((z - shift) * vae.config.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [-1, 1] (unclamped), inverting `encode`'s scale and shift."""
        vae = self._require_vae()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents / vae.config.scaling_factor + shift
        return vae.decode(z.to(vae.dtype), return_dict=False)[0].to(latents.dtype)

    def _require_vae(self) -> nn.Module:
        if self.vae is None:
            raise ValueError("this Denoiser holds no VAE; build it with Denoiser.from_pipeline or pass vae=")
        return self.vae

    # ------------------------------------------------------------------ performance switches and policy

    def set_attention(self, backend: str) -> str:
        """Selects the attention kernel (`sdtoolkit.core.attention`); returns the concrete backend chosen."""
        from sdtoolkit.core.attention import configure_attention

        setting = configure_attention(self.base_model, backend, self.device, self.autocast_dtype or self.dtype)
        self._attention_context = setting  # calling it gives the context manager each forward runs in
        self.attention_requested, self.attention_backend = backend, setting.backend
        return setting.backend

    def freeze(self, dtype: torch.dtype | None = None) -> Denoiser:
        """Frozen-teacher policy: no gradients, eval mode, and (on an accelerator) a half-precision copy.

        `dtype=None` picks bf16 on CUDA (fp16 where bf16 is unsupported) and keeps fp32 on CPU."""
        if dtype is None:
            dtype = torch.float32
            if self.device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        cast_floating(self.base_model.requires_grad_(False).eval(), dtype)
        for name in ("vae", "text_encoder"):
            part = self._parts[name]
            if part is not None:
                part.requires_grad_(False).eval()
        return self

    def enable_gradient_checkpointing(self) -> Denoiser:
        self.base_model.enable_gradient_checkpointing()
        return self

    def to_channels_last(self) -> Denoiser:
        self.base_model.to(memory_format=torch.channels_last)
        return self

    def compile(self, regional: bool = True, **compile_kwargs: Any) -> Denoiser:
        """torch.compile the network. `regional=True` compiles only the repeated blocks (the model's
        `_repeated_blocks`, or `REPEATED_BLOCKS`), which keeps compile time far below compiling the whole model."""
        if not regional:
            unsign_processors(self.base_model)
            self.model = torch.compile(self.model, **compile_kwargs)
            return self
        compile_repeated_blocks(self.base_model, **compile_kwargs)
        return self

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Runs the network with its (peft) LoRA adapters switched off: the teacher is the student's own backbone
        without adapters (LCM-LoRA; the LoRA fake score of distribution matching)."""
        from sdtoolkit.core.adapters import adapter_state

        with adapter_state(self.base_model, None):  # restores the previous switch state; never touches requires_grad
            yield

    @contextlib.contextmanager
    def adapter(self, name: str) -> Iterator[None]:
        """Runs the network with only the named LoRA adapter active, then restores the previous active set."""
        model = self.base_model
        previous = model.active_adapters() if callable(getattr(model, "active_adapters", None)) else None
        model.set_adapter(name)
        try:
            yield
        finally:
            if previous:
                model.set_adapter(previous)

    def with_model(self, model: nn.Module) -> Denoiser:
        """A Denoiser sharing this one's schedule, prediction type and parts around another network (a student
        or EMA copy of the same architecture)."""
        other = Denoiser(
            model,
            self.schedule,
            self.prediction_type,
            vae=self.vae,
            text_encoder=self._parts["text_encoder"],
            tokenizer=self._parts["tokenizer"],
            pipeline=self.pipeline,
            autocast_dtype=self.autocast_dtype,
        )
        if self.attention_requested is not None:
            other.set_attention(self.attention_requested)
        return other

    def replace_schedule(self, schedule: NoiseSchedule) -> Denoiser:
        other = self.with_model(self.model)
        other.schedule = schedule
        return other


def compile_repeated_blocks(model: nn.Module, **compile_kwargs: Any) -> int:
    """Regional compilation: `torch.compile` each repeated block of `model` (its `_repeated_blocks`, else
    `REPEATED_BLOCKS`) in place; blocks of one class share compiled code, so compile time stays near one block's.
    Returns the number of blocks compiled; raises if the model has none."""
    names = set(getattr(model, "_repeated_blocks", None) or REPEATED_BLOCKS)
    unsign_processors(model)  # per-processor signature objects would make every block compile its own code
    compiled = 0
    for module in model.modules():
        if type(module).__name__ in names:
            module.compile(**compile_kwargs)
            compiled += 1
    if compiled == 0:
        raise ValueError(f"no block of {sorted(names)} found in {type(model).__name__}; compile the whole model")
    return compiled


def vae_moments(vae: nn.Module, images: Tensor) -> tuple[Tensor, Tensor | None]:
    """(mean, std) of the VAE's latent posterior at `images` (unscaled), or (latent, None) for deterministic
    autoencoders without a posterior (SANA's deep-compression `AutoencoderDC`)."""
    encoded = vae.encode(images)
    posterior = getattr(encoded, "latent_dist", None)
    if posterior is None:
        latent = getattr(encoded, "latent", None)
        return (encoded[0] if latent is None else latent), None
    return posterior.mean, posterior.std


@contextlib.contextmanager
def _no_grad_fast_path():
    """A forward that records nothing for autograd (called under `torch.no_grad()`: a frozen teacher's, an EMA
    target's, a score's) runs under `torch.inference_mode()`, which also skips the version counters and view
    tracking of every op: 6 % off a UNet forward at the tiny and sd15-thin benchmark sizes on a CPU. Not inside
    forward-mode AD (`torch.func.jvp`, dual levels: inference mode would drop the tangents), and not while features
    are captured through hooks (`sdtoolkit.core.features.capturing`: they leave the forward as inference tensors,
    which a later backward could not save). Yields whether it is on; the caller returns a normal tensor (a copy),
    so the output can be used anywhere."""
    fast = not torch.is_grad_enabled() and maybe_current_level() is None and forward_ad._current_level < 0
    fast = fast and not capturing()
    if not fast:
        yield False
        return
    with torch.inference_mode():
        yield True


def _check_time(schedule: NoiseSchedule, t: Tensor) -> None:
    """Refuses native times outside the schedule's range (a VP integer timestep given to a flow network): at once on
    the CPU, as a device-side assertion (no host sync) on accelerators."""
    if t.device.type == "cpu":
        schedule.check_time(t, "network time")
        return
    span = schedule.t_max - schedule.t_min
    inside = ((t >= schedule.t_min - 1e-6 * span) & (t <= schedule.t_max + 1e-6 * span)).all()
    torch._assert_async(inside, f"network time outside {type(schedule).__name__}'s range")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strips DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__name__ in (
            "DistributedDataParallel",
            "FullyShardedDataParallel",
            "DeepSpeedEngine",
        ):
            model = model.module
        else:
            return model


def _as_batch(t: Tensor | float, x: Tensor) -> Tensor:
    """Broadcasts a scalar or `[1]` time to `[B]` on x's device."""
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim == 0 or t.shape[0] == 1 and x.shape[0] != 1:
        t = t.reshape(1).expand(x.shape[0])
    return t


def _is_one(scale: float | Tensor) -> bool:
    if isinstance(scale, Tensor):
        return bool((scale == 1).all()) if scale.numel() <= 1 else False
    return scale == 1


__all__ = [
    "Conditioning",
    "Denoiser",
    "Prediction",
    "SUPPORTED_MODELS",
    "compile_repeated_blocks",
    "unwrap_model",
    "vae_moments",
]
