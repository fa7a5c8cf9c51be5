"""sdtoolkit's text-to-3D (SDS) as a nerfstudio `Model`: the scene is an sdtoolkit `NeRF` (any representation of
`sdtoolkit.nerf.representations`, its occupancy grid refreshed before every step), and the loss is sdtoolkit's
score-distillation guidance with an sdtoolkit 2D prior on the image the batch's rays render (nerfstudio's
`RandomCamerasDataManager` gives one whole random view per step, as its `generfacto` does).

It imports nerfstudio's model classes only (no trainer, no torchvision); `sdtoolkit.nerfstudio_plugin.method` puts
it in a nerfstudio `TrainerConfig` for `ns-train sdtoolkit-sds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig

from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg
from sdtoolkit.nerf.colliders import RayBundle
from sdtoolkit.nerf.model import NeRFConfig


@dataclass
class SDSModelConfig(ModelConfig):
    """nerfstudio model config of `sdtoolkit-sds` (flags `--pipeline.model.*` of `ns-train sdtoolkit-sds`)."""

    _target: type = field(default_factory=lambda: SDSModel)
    prompt: str = "a red cube"
    """The text prompt."""
    prior: str = "builtin:shapes"
    """sdtoolkit's 2D prior: `builtin:shapes`, a diffusers folder, or a Hub id (SD 1.x/2.x)."""
    representation: str = "hash"
    """sdtoolkit volume representation: hash, mlp, tensorf or voxel."""
    guidance_scale: float | None = None
    """Classifier-free guidance scale of the SDS loss (None: sdtoolkit's SDS default)."""
    max_steps: int = 2000
    """Steps over which the guidance's timestep schedule anneals (set it to `--max-num-iterations`)."""
    seed: int = 0
    """Seed of the NeRF's initialisation and of the guidance's noise."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour behind the scene."""


class SDSModel(Model):
    """An sdtoolkit NeRF trained by sdtoolkit's SDS inside nerfstudio's trainer."""

    config: SDSModelConfig

    def populate_modules(self) -> None:
        from sdtoolkit.text_to_3d import TextTo3DConfig
        from sdtoolkit.text_to_3d.guidance.sds import SDSConfig
        from sdtoolkit.text_to_3d.trainer import setup

        guidance = SDSConfig()
        if self.config.guidance_scale is not None:
            guidance.guidance_scale = self.config.guidance_scale
        text_config = TextTo3DConfig(
            prompt=self.config.prompt,
            prior=self.config.prior,
            steps=self.config.max_steps,
            seed=self.config.seed,
            nerf=NeRFConfig(representation=self.config.representation),
            guidance=guidance,
            background=self.config.background,
            threads=None,
        )
        run = setup(text_config, self.kwargs.get("denoiser"))
        self.__dict__["run"] = run  # the prior is no submodule: not in nerfstudio's checkpoint or optimizer
        self.nerf = run.nerf
        self.step = 0

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"fields": list(self.nerf.field.parameters())}

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes):
        def before_step(step: int) -> None:
            self.step = step
            self.nerf.update_occupancy(step, self.run.generator)

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before_step)]

    def get_outputs(self, ray_bundle) -> dict[str, torch.Tensor]:
        shape = ray_bundle.origins.shape[:-1]
        rays = RayBundle(ray_bundle.origins.reshape(-1, 3), ray_bundle.directions.reshape(-1, 3))
        background = torch.tensor(self.config.background, device=rays.origins.device)
        out = self.nerf.render_rays(rays, background, self.run.generator if self.training else None)
        return {
            "rgb": out["rgb"].reshape(*shape, 3),
            "accumulation": out["accumulation"].reshape(*shape, 1),
            "depth": out["depth"].reshape(*shape, 1),
        }

    def _cameras(self, batch: dict, n: int) -> Cameras:
        """The batch's random views as sdtoolkit cameras (for view-dependent prompts): nerfstudio's polar angle from
        +z and rotation about +z (radians) as elevation and azimuth in degrees."""
        polar = torch.as_tensor(batch.get("vertical", torch.full((n,), torch.pi / 2))).float().reshape(-1)[:n]
        central = torch.as_tensor(batch.get("central", torch.zeros(n))).float().reshape(-1)[:n]
        elevation = (90.0 - torch.rad2deg(polar)).clamp(-89.0, 89.0)
        azimuth = wrap_azimuth_deg(torch.rad2deg(central))
        return Cameras(azimuth, elevation, torch.full((n,), 2.8), torch.full((n,), 40.0))

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> dict[str, torch.Tensor]:
        """SDS on the rendered view(s): the batch's rays are whole square images, one after the other."""
        from sdtoolkit.text_to_3d.trainer import prior_image_size

        run = self.run
        rgb = outputs["rgb"].reshape(-1, 3)
        side = int(round((len(rgb) / max(1, len(torch.as_tensor(batch.get("central", [0])).reshape(-1)))) ** 0.5))
        images = rgb.reshape(-1, side, side, 3).permute(0, 3, 1, 2)
        size = prior_image_size(run.denoiser)
        if side != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        cameras = self._cameras(batch, len(images))
        latents = run.denoiser.encode(images * 2 - 1, sample=False)
        conds = [prompt(cameras) for prompt in run.prompts]
        progress = min(self.step / max(self.config.max_steps, 1), 1.0)
        result = run.guidance(latents, conds, progress, cameras=cameras, generator=run.generator)
        return {"sds_loss": result.loss}

    def get_image_metrics_and_images(self, outputs, batch):
        return {}, {"img": outputs["rgb"], "accumulation": outputs["accumulation"]}
