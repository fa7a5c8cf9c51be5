"""The interface of a model-family adapter: how the `Denoiser` calls one kind of diffusers network, encodes
prompts through that family's stock pipeline, and which stock pipeline its students export to.

This is k-diffusion's "one thin wrapper per model family" (`k_diffusion.external`): the Denoiser stays free of
class-name branches, and a new family is one new file in this folder plus one line in its `__init__`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sdtoolkit.core.cfg import guidance_scale_embedding


class ModelFamily:
    """One diffusers model family (stateless; `Denoiser.family` holds an instance).

    Subclasses set the class attributes and implement `call` and `encode_prompt`.
    """

    name: ClassVar[str]
    """Short name used in messages, README's family table and tests (`sd`, `sdxl`, `sd3`, `sana`, `flux`)."""
    model_classes: ClassVar[tuple[str, ...]]
    """diffusers network classes of this family (the pipeline's `unet` or `transformer`)."""
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    """Stock pipelines whose `encode_prompt` this family calls (text-to-image first)."""
    export_pipeline: ClassVar[str | None] = None
    """Stock text-to-image pipeline class a student of this family is exported as."""
    description: ClassVar[str] = ""
    """One line for messages and README (the models it covers)."""
    component: ClassVar[str] = "unet"
    """The network's component name in its stock pipeline (`unet` or `transformer`): a full student is saved in
    `student/<component>/`, its LoRA with `<component>_lora_layers=`."""
    lora_target_modules: ClassVar[tuple[str, ...]] = ()
    """Module-name suffixes a LoRA student adapts on this family's network (attention, feed-forward, convs)."""
    flow_sigmas: ClassVar[str] = "scheduler"
    """How the stock pipeline sets a flow-matching sampler's sigmas (`sdtoolkit.core.schedules.FlowSchedule`):
    `scheduler` (the scheduler's own default: SD3, SANA) or `inverse_steps` (linspace(1, 1/N, N): FluxPipeline)."""
    latent_packing: ClassVar[int] = 1
    """Latent patches packed into the network's channels (FLUX: 2x2): in_channels = latent channels x packing^2."""
    feature_output_index: ClassVar[int] = 0
    """Which element of a feature block's tuple output holds the image features (transformer blocks of SD3 and
    FLUX return (text, image) hidden states)."""

    # ------------------------------------------------------------------ what trainers ask of a family

    def latent_channels(self, model: nn.Module) -> int:
        """Channels of the latents `[B, C, H, W]` the Denoiser handles (before any packing)."""
        return int(model.config.in_channels) // self.latent_packing**2

    def image_seq_len(self, model: nn.Module, height: int, width: int) -> int:
        """Image tokens of a latent `height` x `width` (what a resolution-dependent time shift is computed from)."""
        patch = int(getattr(model.config, "patch_size", None) or 1) * self.latent_packing
        return (height // patch) * (width // patch)

    def guidance_input(self, model: nn.Module) -> str | None:
        """How the network takes a guidance value: `w` (LCM's w-embedding, `time_cond_proj_dim`; value w = s - 1),
        `scale` (a guidance-distilled input such as FLUX.1-dev's `guidance`; value = the diffusers scale s, given
        instead of a CFG batch, as the stock pipeline does), or None."""
        return None

    def supports_w_embedding(self, model: nn.Module) -> bool:
        """Whether a student copy can gain LCM's w-embedding (a UNet's `time_cond_proj_dim`)."""
        return False

    def feature_blocks(self, model: nn.Module) -> list[nn.Module]:
        """The blocks whose outputs a discriminator reads, in forward order; the last is the bottleneck (UNets: the
        down blocks and the mid block; transformers: the blocks up to and including the middle one)."""
        blocks = list(getattr(model, "transformer_blocks", None) or [])
        blocks += list(getattr(model, "single_transformer_blocks", None) or [])
        if not blocks:
            raise NotImplementedError(f"no feature blocks known for {type(model).__name__} ({self.name})")
        return blocks[: (len(blocks) - 1) // 2 + 1]

    def feature_channels(self, model: nn.Module) -> list[int]:
        """Channels of each of `feature_blocks`' outputs."""
        inner = int(model.config.num_attention_heads) * int(model.config.attention_head_dim)
        return [inner] * len(self.feature_blocks(model))

    def sample_size(self, model: nn.Module, pipeline: Any | None = None) -> int:
        """The network's native latent size: its config's `sample_size`, else the pipeline's `default_sample_size`."""
        size = getattr(model.config, "sample_size", None)
        if size is None and pipeline is not None:
            size = getattr(pipeline, "default_sample_size", None)
        if size is None:
            raise ValueError(f"{type(model).__name__} declares no sample_size: pass a training resolution")
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether `model` (unwrapped) belongs to this family."""
        return type(model).__name__ in cls.model_classes

    def call(
        self,
        model: nn.Module,
        x: Tensor,
        timestep: Tensor,
        cond: Any,
        guidance_embed: Tensor | None,
    ) -> Tensor:
        """The network's raw output for latents `x` `[B, C, H, W]` at the model timestep `timestep` `[B]`
        (`NoiseSchedule.model_timestep`), in the layout of `x`."""
        raise NotImplementedError

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device) -> tuple:
        """(cond, uncond) `Conditioning`s through the pipeline's own `encode_prompt`, so the conditioning is exactly
        what the stock pipeline uses at sampling time."""
        raise NotImplementedError(
            f"prompt encoding for the {self.name} family is not wired; build a Conditioning by hand"
        )


def cast(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """`x` in `dtype` (floating tensors only; masks and ids keep theirs), None stays None."""
    return x.to(dtype) if x is not None and x.is_floating_point() else x


def w_embedding(model: nn.Module, guidance_embed: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """LCM's guidance-scale embedding of w for UNets with `time_cond_proj_dim` (Luo et al. 2023, Eq. 9), else None."""
    dim = getattr(model.config, "time_cond_proj_dim", None)
    if dim is None:
        return None
    if guidance_embed is None:
        if _zero_guidance_embedding(model):  # sdtoolkit exports of students without one: it has no effect
            return None
        raise ValueError("this UNet has time_cond_proj_dim (a guidance embedding): pass guidance_embed")
    return guidance_scale_embedding(guidance_embed, dim, dtype=dtype)


def _zero_guidance_embedding(model: nn.Module) -> bool:
    """Whether the UNet's guidance embedding projection is all zeros (`sdtoolkit.pipelines.stock_defaults.
    with_zero_guidance_embedding`: it makes stock pipelines skip CFG and changes no output). Cached per weight
    version, so one check per weight update."""
    weight = getattr(getattr(getattr(model, "time_embedding", None), "cond_proj", None), "weight", None)
    if weight is None:
        return False
    key = (weight.data_ptr(), weight._version)
    cached = getattr(model, "_sdtoolkit_zero_guidance", None)
    if cached is None or cached[0] != key:
        cached = (key, not bool(weight.detach().any()))
        model._sdtoolkit_zero_guidance = cached
    return cached[1]
