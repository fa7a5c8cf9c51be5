"""Typed configs of the shared training loop: `TrainConfig` (what every method shares), `MethodConfig` (base of
each method's config), `OptimizerSpec` (one optimizer of a method), and `config_from_dict` for JSON configs."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from sdtoolkit.core.config import AT_LEAST_1, NON_NEGATIVE, SEED, Bound, ConfigError, OneOf, Range, build

BUILTIN_TEACHER = "builtin:shapes"
"""The embedded teacher shipped in `assets/shapes-teacher/`; runs on it are validated with `sdtoolkit.eval`."""
SHAPES_TEACHERS = (BUILTIN_TEACHER, "builtin:shapes-flow")
"""The embedded teachers of the procedural shapes world (SD 1.x layout and rectified-flow SD3 layout): built-in
images and prompts, and validation with the shapes evaluator."""


def shapes_world(teacher: str) -> bool:
    """Whether `teacher` lives in the embedded shapes world: one of `SHAPES_TEACHERS`, or a folder this toolkit
    exported from one of them (a prepared teacher, a student; its `export.json` names the built-in teacher). Such
    teachers get the built-in renders, prompts and the evaluator's validation."""
    if teacher in SHAPES_TEACHERS:
        return True
    path = Path(teacher).expanduser() / "export.json"
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return False
    return values.get("teacher") in SHAPES_TEACHERS and values.get("teacher_source") == "builtin"


def shapes_video_teacher(teacher: str) -> bool:
    """Whether `teacher` is a video teacher folder that `sdtoolkit train-video-teacher` trained on a built-in shapes
    image teacher (its training_config.json names it): its still images, for MCM's frame critic, can be the built-in
    renders (`sdtoolkit distill mcm` without --data)."""
    path = Path(teacher).expanduser() / "training_config.json"
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return False
    config = values.get("config") if isinstance(values, dict) else None
    return isinstance(config, dict) and config.get("image_teacher") in SHAPES_TEACHERS


OPTIMIZERS = ("adamw", "adamw8bit")
"""Values of `TrainConfig.optimizer`."""


@dataclass
class TrainConfig:
    """What every method shares: teacher, data, loop, checkpoints, logging."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "resolution": Range(8),
        "max_steps": AT_LEAST_1,
        "batch_size": AT_LEAST_1,
        "gradient_accumulation_steps": AT_LEAST_1,
        "mixed_precision": OneOf("no", "fp16", "bf16"),
        "max_grad_norm": NON_NEGATIVE,
        "seed": SEED,
        "checkpoint_every": AT_LEAST_1,
        "checkpoints_total_limit": AT_LEAST_1,
        "sample_every": NON_NEGATIVE,
        "sample_prompts": AT_LEAST_1,
        "sample_seeds": AT_LEAST_1,
        "validate_every": Range(-1),
        "validation_prompts": AT_LEAST_1,
        "log_with": OneOf("auto", "tensorboard", "none"),
        "num_workers": NON_NEGATIVE,
        "num_threads": AT_LEAST_1,
        "optimizer": OneOf(*OPTIMIZERS),
        "log_every": AT_LEAST_1,
        "builtin_images": AT_LEAST_1,
        "max_nonfinite_updates": NON_NEGATIVE,
    }
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "max_steps",
        "cache_dir",
        "checkpoint_every",
        "checkpoints_total_limit",
        "sample_every",
        "sample_prompts",
        "sample_seeds",
        "validate_every",
        "validation_prompts",
        "log_with",
        "num_workers",
        "num_threads",
        "gradient_checkpointing",
        "teacher_offload",
        "allow_tf32",
        "log_every",
        "fused_optimizer",
        "channels_last",
        "compile",
        "export",
        "overwrite",
        "max_nonfinite_updates",
    )
    """Fields a resumed run may change (`--resume` refuses the others): how long it runs, how often it checkpoints,
    samples, validates and logs, and speed/memory options that leave the maths unchanged."""

    teacher: str = BUILTIN_TEACHER
    """Teacher: `builtin:shapes` (the embedded teacher), a local diffusers pipeline folder, or a Hub id."""
    output: str = "runs/distill"
    """Run folder: config.json, losses.jsonl, checkpoints/, samples/, student/, export/."""
    data: str | None = None
    """Image–caption folder (images + metadata.jsonl or same-name .txt captions) for methods that need real
    latents. Default for builtin:shapes: procedural shape renders (`sdtoolkit.data.ShapesDataset`)."""
    prompts: str | None = None
    """Prompt file (.txt one per line, .jsonl or .csv with a prompt/text/caption field) for data-free methods.
    Default for builtin:shapes: `sdtoolkit.data.all_prompts()`."""
    cache_dir: str | None = None
    """Where cached text embeddings and VAE latents live (default: <output>/cache); share it between runs."""
    resolution: int | None = None
    """Training image resolution (default: the teacher's, unet.sample_size × VAE scale factor)."""
    max_steps: int = 1000
    """Optimizer steps to train for (global steps: one step = batch-size × processes × accumulation images)."""
    batch_size: int = 8
    """Batch size per device."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    mixed_precision: str = "no"
    """`no`, `fp16` or `bf16` (accelerate's mixed precision; fp32 master weights). bf16 is the GPU choice."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping for every optimizer (0 disables), applied only when gradients are synced."""
    seed: int = 0
    """Seed of every random draw (the data order, noise, timesteps, guidance scales)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint (safetensors + JSON: `sdtoolkit.distill.checkpoint`) every N steps and at the
    end."""
    checkpoints_total_limit: int = 2
    """Keep only the newest N checkpoints."""
    sample_every: int = 500
    """Write a sample grid (rows = prompts, columns = seeds) every N steps and at the end; 0 disables."""
    sample_prompts: int = 4
    """Rows of the sample grid (the first prompts of the data)."""
    sample_seeds: int = 4
    """Columns of the sample grid."""
    validate_every: int = 0
    """Score samples with the shapes evaluator every N steps and at the end (builtin:shapes only); 0: at the end
    only; -1: never."""
    validation_prompts: int = 60
    """How many prompts validation samples (one image each), spread evenly over the prompt list."""
    log_with: str = "auto"
    """`auto` (tensorboard when installed), `tensorboard`, or `none`. losses.jsonl is always written."""
    num_workers: int = 0
    """DataLoader worker processes (the cached data are in memory, 0 is usually fastest)."""
    num_threads: int | None = None
    """torch.set_num_threads for CPU runs (None: leave torch's default)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of the trained networks (less memory, ~30% slower)."""
    teacher_offload: bool = False
    """Keep the frozen teacher's weights in host memory and copy them to the accelerator only for its forwards
    (`sdtoolkit.core.offload`): less device memory, one host-to-device copy of the teacher per teacher forward. Needs a
    teacher separate from the trained networks: LCM-LoRA and the LoRA fake score of DMD2/SiD train on the teacher's
    own backbone and refuse it. A CPU run saves nothing with it (the host is the device; it then costs a copy)."""
    optimizer: str = "adamw"
    """`adamw` (torch's AdamW, fused on CUDA) or `adamw8bit` (bitsandbytes' AdamW8bit, Dettmers et al. 2022: both
    moments stored in blockwise-quantised 8 bits, about 1/4 of the state memory; `pip install bitsandbytes`)."""
    allow_tf32: bool = True
    """Allow TF32 matmuls on Ampere+ GPUs."""
    log_every: int | None = None
    """Read the losses back from the device (a host sync) every N steps; every step's values are still logged.
    None: every step on a CPU, every 10 steps on a GPU, so the hot loop never waits on `.item()`."""
    fused_optimizer: bool = True
    """Use PyTorch's fused AdamW kernel when all of an optimizer's parameters live on one CUDA device or the CPU, else
    its multi-tensor (foreach) kernel; False: torch's default (a per-parameter loop on a CPU, foreach on CUDA)."""
    channels_last: bool = False
    """Store the teacher's and the trainable networks' weights channels-last (faster convolutions on GPUs)."""
    compile: bool = False
    """Regional `torch.compile` of the teacher and the trainable networks: only their repeated blocks are compiled,
    which keeps compile time to seconds (`sdtoolkit.core.denoiser.compile_repeated_blocks`)."""
    export: bool = True
    """Export a ready diffusers pipeline to <output>/export at the end (also `sdtoolkit export RUN OUT`)."""
    builtin_images: int = 4096
    """How many builtin:shapes renders (`sdtoolkit.data.ShapesDataset`, seed 1) serve as real data."""
    overwrite: bool = False
    """Start anew in an --output that holds a finished or checkpointed run (its files written by sdtoolkit are
    deleted first) or other files (kept: sdtoolkit deletes only what it wrote; a file named like one the run writes
    refuses the folder)."""
    max_nonfinite_updates: int = 3
    """Non-finite guard: an update whose loss or gradient norm is NaN/inf is skipped (no weight, EMA or optimizer
    update) and logged as `<optimizer>/skipped`; after this many consecutive skipped updates of one optimizer the run
    stops (exit status 1, no export, the last good checkpoint kept). 0 turns the guard off (it costs one host sync
    per update)."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "optimizer='adamw8bit' needs bitsandbytes: `pip install bitsandbytes` (or 'sdtoolkit[lowmem]'), "
                "or use optimizer='adamw'"
            )


@dataclass
class MethodConfig:
    """Base class of method configs: a typed dataclass, one docstring per field, defaults = the paper's."""


@dataclass
class OptimizerSpec:
    """One optimizer of a method: which parameters, how fast, how often it steps (AdamW + linear warm-up)."""

    name: str
    """Name used in logs (`<name>/loss`) and passed to `DistillationMethod.loss`."""
    params: list = field(repr=False)
    """Parameters (or torch param-group dicts) it updates."""
    lr: float
    """Learning rate after warm-up."""
    every: int = 1
    """Step on global steps with step % every == offset (DMD2's two time-scale update: generator every=5)."""
    offset: int = 0
    """See `every`."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over this many of ITS OWN steps."""
    max_grad_norm: float | None = None
    """Clipping for this optimizer (None: TrainConfig.max_grad_norm)."""
    finite_gradients: bool = False
    """Before clipping, make non-finite gradient entries finite: NaN -> 0, +-inf -> +-1e5 (SiD-LSG's `nan_to_num` on
    the generator's accumulated gradients). Costs one multi-tensor norm and one host read per update; the per-entry
    pass runs only on the tensors that hold a non-finite entry."""

    def due(self, step: int) -> bool:
        return step % self.every == self.offset % self.every

    def parameters(self) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for entry in self.params:
            out.extend(entry["params"] if isinstance(entry, dict) else [entry])
        return out


def config_from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Builds dataclass `cls` from a JSON-style dict (`sdtoolkit.core.config.build`: lists become tuples where the
    field is a tuple; unknown keys and wrong types raise a ValueError with one line per bad value)."""
    try:
        return build(cls, values, where)
    except ConfigError as error:
        raise ValueError(str(error)) from error
