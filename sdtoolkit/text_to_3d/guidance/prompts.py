"""View-dependent prompts (DreamFusion, Poole et al. 2022, Sec. 3.2): each camera's prompt gets the suffix ", front
view" / ", side view" / ", back view" / ", overhead view" by its azimuth and elevation (threestudio's
`PromptProcessor` thresholds, shared with the shapes renderer through `sdtoolkit.data.cameras.view_word`)."""

from __future__ import annotations

import torch

from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.data.cameras import Cameras, view_word

VIEW_WORDS = ("front", "side", "back", "overhead")


def view_prompt(prompt: str, view: str) -> str:
    """ "a red cube" + "front" -> "a red cube, front view" (the builtin teacher's caption format)."""
    return f"{prompt}, {view} view"


class ViewDependentPrompts:
    """Encodes a prompt once per view word and hands out per-camera conditioning.

    Args:
        denoiser: the prior (its pipeline's `encode_prompt` is used).
        prompt: the user's prompt without a view suffix.
        view_dependent: False gives every camera the bare prompt.
        negative_prompt: the unconditional prompt ("" as in diffusers).
    """

    def __init__(self, denoiser: Denoiser, prompt: str, view_dependent: bool = True, negative_prompt: str = ""):
        self.prompt, self.view_dependent = prompt, view_dependent
        texts = [view_prompt(prompt, v) for v in VIEW_WORDS] if view_dependent else [prompt]
        self.texts = texts
        cond, uncond = denoiser.encode_prompt(texts, negative_prompt=[negative_prompt] * len(texts))
        self.cond, self.uncond = cond, uncond

    def view_index(self, cameras: Cameras) -> torch.Tensor:
        """`[B]` index into `texts` of each camera's prompt."""
        if not self.view_dependent:
            return torch.zeros(len(cameras), dtype=torch.long)
        words = view_word(cameras.azimuth_deg.cpu(), cameras.elevation_deg.cpu())
        return torch.tensor([VIEW_WORDS.index(w) for w in words], dtype=torch.long)

    def __call__(self, cameras: Cameras) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) for each camera, batched like `cameras`."""
        index = self.view_index(cameras)
        device = self.cond.encoder_hidden_states.device
        return self.cond[index.to(device)], self.uncond[index.to(device)]

    def texts_for(self, cameras: Cameras) -> list[str]:
        return [self.texts[i] for i in self.view_index(cameras).tolist()]
