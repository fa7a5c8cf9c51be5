"""`Conditioning`: everything but (x_t, t) that a diffusers denoiser takes, batched (text embeddings, pooled
projections, attention masks, class labels, SDXL's added conditioning). Its own module so that the Denoiser and
the model-family adapters (`sdtoolkit.core.families`) share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Everything but (x_t, t) that a diffusers denoiser takes, batched along dim 0.

    Attributes:
        encoder_hidden_states: `[B, L, D]` text embeddings (UNet cross-attention, SD3/SANA joint attention).
        pooled_projections: `[B, D']` pooled text embedding (SD3 `pooled_projections`).
        encoder_attention_mask: `[B, L]` text mask (SANA).
        class_labels: `[B]` labels for class-conditional UNet2DModel / UNet2DConditionModel.
        added_cond_kwargs: extra UNet conditioning (SDXL `text_embeds`, `time_ids`), each `[B, ...]`.
        encoder_log_multiplicity: `[B, L]` log of how many identical tokens each row of `encoder_hidden_states`
            stands for (0 for an ordinary token). Set by SD3's adapter, which keeps SD3-without-T5's 256 zero tokens
            once (`sdtoolkit.core.repeated_tokens`: exact); None means every token is itself.
        concat_latents: `[B, C', H, W]` latents concatenated to x_t along the channels before the network (an
            image-conditioned UNet: Zero123's reference view, `sdtoolkit.models.novel_view_prior`).
    """

    encoder_hidden_states: Tensor | None = None
    pooled_projections: Tensor | None = None
    encoder_attention_mask: Tensor | None = None
    class_labels: Tensor | None = None
    added_cond_kwargs: dict[str, Tensor] = field(default_factory=dict)
    encoder_log_multiplicity: Tensor | None = None
    concat_latents: Tensor | None = None

    def _tensors(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> Conditioning:
        """Applies `fn` to every tensor (including those in `added_cond_kwargs`)."""
        values = {k: (fn(v) if isinstance(v, Tensor) else v) for k, v in self._tensors().items()}
        values["added_cond_kwargs"] = {k: fn(v) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(**values)

    def to(self, *args, **kwargs) -> Conditioning:
        return self.map(lambda x: x.to(*args, **kwargs))

    def __getitem__(self, index) -> Conditioning:
        return self.map(lambda x: x[index])

    def repeat_interleave(self, repeats: int) -> Conditioning:
        return self.map(lambda x: x.repeat_interleave(repeats, dim=0))

    @property
    def batch_size(self) -> int | None:
        for value in [*self._tensors().values(), *self.added_cond_kwargs.values()]:
            if isinstance(value, Tensor):
                return value.shape[0]
        return None

    @staticmethod
    def cat(conditionings: list[Conditioning]) -> Conditioning:
        """Concatenates along the batch dimension (e.g. [uncond, cond] for one guided forward)."""
        first = conditionings[0]
        values: dict[str, Any] = {}
        for name, value in first._tensors().items():
            if name == "added_cond_kwargs":
                values[name] = {k: torch.cat([c.added_cond_kwargs[k] for c in conditionings]) for k in value}
            elif isinstance(value, Tensor):
                values[name] = torch.cat([getattr(c, name) for c in conditionings])
            else:
                values[name] = value
        return Conditioning(**values)
