"""The one accelerate training loop every distillation method runs in, and the small interface a method implements.

Writing a method
================
A method is a subclass of `DistillationMethod` registered with `@register_method` (its `name` becomes the CLI
subcommand `sdtoolkit distill <name>`), with a typed dataclass config (`config_class`, one docstring per field,
defaults = the paper's; every field becomes a `--flag`). The loop owns everything else: accelerate, data, mixed
precision, gradient accumulation and clipping, checkpoints with exact resume, logging, sample grids, validation,
the final student and its export. The method's life cycle, in call order:

1. `__init__(config, teacher, accelerator, data)`: `teacher` is the frozen-ready `Denoiser` of the teacher
   pipeline on `accelerator.device`; `data` holds the text cache (`data.text`) and `data.uncond(batch_size)`.
2. `build() -> dict[str, nn.Module]`: create the trainable networks (student UNet, LoRA-adapted backbone, fake
   score, discriminator...). The loop passes them through `accelerator.prepare` (DDP under `accelerate launch`).
3. `optimizers() -> list[OptimizerSpec]`: one entry per optimizer: a name, its parameters, learning rate, and
   `every`/`offset` (the optimizer steps on global steps with `step % every == offset`). Two-time-scale updates are
   two entries, e.g. DMD2's TTUR (Yin et al. 2024, Sec. 4.1)::

       [OptimizerSpec("fake_score", fake_params, lr=2e-6),              # every step, listed first: runs first
        OptimizerSpec("generator", student_params, lr=2e-6, every=5)]   # every 5th step

4. `setup(models)`: receives the prepared modules (same names) before training; build Denoisers around them here.
5. per global step, for each micro-batch (gradient accumulation), for each optimizer due at this step, in list
   order: `loss(name, batch, step) -> {"loss": scalar, ...}` (the loop backpropagates `"loss"` with
   `accelerator.backward` and logs every other entry too), then on `sync_gradients`: clip, optimizer step, LR
   scheduler step, zero grad, and `after_step(name, step)` (EMA updates go there). Gradients are isolated per
   optimizer: while one optimizer's loss is backpropagated, the others' accumulated `.grad` are set aside, so a
   generator loss that flows through the fake score never pollutes the fake score's gradients, also with
   accumulation. Per-step state shared between the updates of one step (e.g. the generator's samples that the
   fake score trains on) lives on the method object.
6. `checkpoint_objects()`: extra objects with `state_dict`/`load_state_dict` (EMA, ...) saved with every
   checkpoint; `after_load()` runs after a resume (e.g. copy the EMA into the target network).
7. `sample(cond, uncond, generator) -> latents` for sample grids and validation (use an unwrapped model and only
   `generator`'s randomness: training randomness must not move); optionally `write_samples(folder, step)` for
   samples a grid cannot show (a video method's clips).
8. `save_student(folder) -> ExportSpec`: write the trained student (diffusers UNet folder or LoRA weights) and say
   how to export it (`sdtoolkit.pipelines.export`): pipeline class, scheduler class and config, default steps.

Class attributes: `data = "images"` (cached VAE latents of an image–caption folder, `batch["latent_mean"|
"latent_std"]`) or `"prompts"` (text only); `find_unused_parameters = True` when some registered parameters do
not take part in every backward (alternating updates through one DDP module).

Batches are dicts: `prompt_index [B]`, the text conditioning `cond.<field>` (use
`sdtoolkit.distill.data.batch_conditioning(batch)`), and for image methods the VAE posterior of each image
(`sdtoolkit.distill.data.sample_latents(batch)` draws z). Randomness comes from torch's global RNG (seeded, and
saved/restored with every checkpoint, `sdtoolkit.distill.checkpoint`), which is what makes resume exact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.registry import Registry
from sdtoolkit.distill.config import MethodConfig, OptimizerSpec, TrainConfig

# ---------------------------------------------------------------------------------------------------- interface


@dataclass
class TrainingData:
    """What the loop hands a method about the data: the text cache and the dataset's prompt list."""

    text: Any
    """`sdtoolkit.distill.data.TextCache` (prompts, cond rows, the unconditional row)."""
    device: torch.device
    latent_size: tuple[int, int] | None = None
    """(height, width) of the training latents (the training resolution / VAE scale factor); None: the
    network's native sample size."""

    def uncond(self, batch_size: int) -> Conditioning:
        """Conditioning of the empty prompt, `batch_size` rows, on the training device."""
        return self.text.unconditional(batch_size).to(self.device)

    def conditioning(self, indices: list[int] | Tensor) -> Conditioning:
        return self.text.conditioning(indices).to(self.device)


class DistillationMethod(ABC):
    """A distillation method in the shared loop; see the module docstring for the call order."""

    name: ClassVar[str]
    """Registry name and CLI subcommand."""
    config_class: ClassVar[type[MethodConfig]]
    """Its typed dataclass config."""
    data: ClassVar[str] = "images"
    """`images` (cached VAE latents + captions) or `prompts` (text only)."""
    find_unused_parameters: ClassVar[bool] = False
    """Passed to DDP: True when some registered parameters miss some backward passes."""
    description: ClassVar[str] = ""
    """One paragraph shown by `sdtoolkit distill <name> --help`."""

    def __init__(self, config: MethodConfig, teacher: Denoiser, accelerator: Any, data: TrainingData):
        self.config = config
        self.teacher = teacher
        self.accelerator = accelerator
        self.training_data = data
        self.models: dict[str, nn.Module] = {}

    @classmethod
    def check_config(cls, config: MethodConfig, train: TrainConfig) -> None:
        """Validate the configs before anything is loaded; raise ValueError naming the bad value and the fix."""
        return None

    @classmethod
    def check_teacher(cls, config: MethodConfig, train: TrainConfig, pipeline: Any) -> None:
        """Validate the configs against the loaded teacher pipeline (its model family) before anything is written;
        raise ValueError with one line saying why the method cannot apply and what works instead."""
        return None

    def latent_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """`[B, C, H, W]` of the student's latents: the teacher's latent channels (before any packing) at the
        training latent size."""
        teacher = self.teacher
        size = self.training_data.latent_size
        if size is None:
            side = teacher.family.sample_size(teacher.base_model, teacher.pipeline)
            size = (side, side)
        return (batch_size, teacher.latent_channels, *size)

    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """Create the trainable networks; the loop `prepare`s them and hands them back to `setup`."""

    @abstractmethod
    def optimizers(self) -> list[OptimizerSpec]:
        """One `OptimizerSpec` per optimizer, in the order their updates run within a step."""

    def setup(self, models: dict[str, nn.Module]) -> None:
        """Receives the prepared (possibly DDP-wrapped) modules under the names `build` gave them."""
        self.models = models

    def unwrapped(self, name: str) -> nn.Module:
        """The plain module behind `self.models[name]` (without DDP or compile wrappers), looked up once: accelerate's
        `unwrap_model` walks the whole module tree, which a per-step EMA update should not pay for."""
        cache = self.__dict__.setdefault("_unwrapped_models", {})
        model = self.models[name]
        if name not in cache or cache[name][0] is not model:
            cache[name] = (model, self.accelerator.unwrap_model(model))
        return cache[name][1]

    @abstractmethod
    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The loss of optimizer `name` on `batch`: `{"loss": scalar tensor, <other scalars to log>...}`."""

    def after_step(self, name: str, step: int) -> None:
        """Called after optimizer `name` stepped (gradients synced), e.g. for EMA updates."""
        return None

    def checkpoint_objects(self) -> list[Any]:
        """Extra state saved in checkpoints (objects with `state_dict`/`load_state_dict`), same order every run."""
        return []

    def after_load(self) -> None:
        """Called after `load_state` restored a checkpoint."""
        return None

    @abstractmethod
    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        """Latents sampled by the current student at its default step count, from `generator`'s noise only."""

    def write_samples(self, folder: Path, step: int) -> None:
        """Samples beside the grid at every sample step (`--sample-every`), e.g. a video method's clips as
        `folder/step_N.gif`; nothing by default."""
        return None

    @abstractmethod
    def save_student(self, folder: Path) -> Any:
        """Writes the trained student into `folder`; returns its `sdtoolkit.pipelines.export.ExportSpec`."""


def flow_export_fields(method: DistillationMethod, times: list[float], stochastic: bool) -> dict[str, Any]:
    """The `ExportSpec` fields of a flow-matching student (SD3, SANA, FLUX): the family's stock pipeline with a
    stock `FlowMatchEulerDiscreteScheduler`, whose k-step grid at the teacher's shift is the student's `times`
    (`FlowSchedule.student_timesteps`). `stochastic`: each step takes x0 = x - sigma v and re-noises it to the next
    sigma with fresh noise (multi-step consistency and distribution-matching students); else Euler steps. With a
    resolution-dependent shift (FLUX) the grid holds at the training resolution only, so the call names it."""
    teacher = method.teacher
    call_kwargs: dict[str, Any] = {}
    size = method.training_data.latent_size
    if getattr(teacher.schedule, "dynamic", None) is not None and size is not None:
        from sdtoolkit.models.loading import vae_scale_factor

        factor = vae_scale_factor(teacher.pipeline)
        call_kwargs = {"height": size[0] * factor, "width": size[1] * factor}
    return {
        "pipeline_class": teacher.family.export_pipeline,
        "scheduler_class": "FlowMatchEulerDiscreteScheduler",
        "scheduler_config": {"stochastic_sampling": True} if stochastic else {},
        "call_kwargs": call_kwargs,
        "timesteps": [float(t) for t in times],  # the trained sigmas: the export checks the stock grid against them
    }


# ---------------------------------------------------------------------------------------------------- registry

_PLUGINS_LOADED = False


def _load_methods() -> None:
    """Imports `sdtoolkit.trainers` and, once per process, the `sdtoolkit.methods` entry points of plug-ins."""
    global _PLUGINS_LOADED
    import importlib
    from importlib.metadata import entry_points

    importlib.import_module("sdtoolkit.trainers")
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for entry in entry_points(group="sdtoolkit.methods"):
            entry.load()


METHODS: Registry[type[DistillationMethod]] = Registry("distillation method", load=_load_methods)
"""Registered methods by name (populated by importing `sdtoolkit.trainers` and the `sdtoolkit.methods` entry
points of installed plug-ins); the same `Registry` pattern as the 3D guidances."""


def register_method(cls: type[DistillationMethod]) -> type[DistillationMethod]:
    """Class decorator adding a method to `METHODS` under `cls.name`; a duplicate name is an error."""
    return METHODS.add(cls.name, cls)


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[DistillationMethod]:
    try:
        return METHODS.get(name)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
