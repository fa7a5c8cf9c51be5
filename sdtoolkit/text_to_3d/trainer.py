"""The text-to-3D optimisation loop (DreamFusion's Algorithm: render a random view, encode it, apply the guidance
gradient, step Adam), with resolution and time schedules, previews, and safetensors checkpoints that resume exactly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.data.cameras import Cameras, turntable_cameras, wrap_azimuth_deg
from sdtoolkit.nerf import NeRF, restoring_checkpoint
from sdtoolkit.runs import (
    OutputFolderError,
    RunDiverged,
    RunFolder,
    RunInterrupted,
    StopSignals,
    atomic_output,
    atomic_write_text,
    claim_output,
    inspect_output,
    nonfinite_term,
)
from sdtoolkit.text_to_3d.config import TextTo3DConfig, save_config
from sdtoolkit.text_to_3d.guidance import (
    LayoutPrior,
    SingleBoxPrior,
    ViewDependentPrompts,
    build,
    parse_layout,
    region_masks,
)
from sdtoolkit.text_to_3d.regularizers import regularizer_losses

CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"
RUN_KIND = "text-to-3d"
"""The kind of run recorded in the output folder's manifest (`sdtoolkit.runs`)."""
RUN_ENTRIES = (
    CONFIG_FILE,
    CHECKPOINT_FILE,
    STATE_FILE,
    "previews",
    "timing.json",
    "summary.json",
    "views.png",
    "turntable.mp4",
    "turntable.gif",
    *(f"{name}.{fmt}" for name in ("mesh", "mesh_textured") for fmt in ("glb", "obj", "ply")),
    "mesh_textured.mtl",  # a textured OBJ's material and texture (`export_mesh`)
    "mesh_textured.png",
)
"""The top-level entries a text-to-3D run (`train` and `generate`) writes in its output folder."""
EMPTY_OPACITY = 1e-3
"""Mean rendered opacity below which a training render counts as empty (`max_empty_steps`)."""


#: half-extent of the space the prior frames around one object (the shapes fit in radius 0.75)
UNIT_OBJECT_RADIUS = 0.75
#: size of one object as the prior frames it (the shapes are about one unit across)
UNIT_OBJECT_SIZE = 1.0


def load_prior(prior: str, device: str = "cpu") -> Denoiser:
    """A frozen Denoiser around a diffusers pipeline: `builtin:NAME`, a folder, or a Hub id."""
    from sdtoolkit.models.loading import load_teacher

    return Denoiser.from_pipeline(load_teacher(prior, device=device)).freeze(torch.float32)


def prior_image_size(denoiser: Denoiser) -> int:
    """The prior's native image side: the network's latent sample size (else its pipeline's `default_sample_size`,
    e.g. FLUX) times the VAE's downsampling factor."""
    pipe = denoiser.pipeline
    factor = getattr(pipe, "vae_scale_factor", None) or 2 ** (len(denoiser.vae.config.block_out_channels) - 1)
    return int(denoiser.family.sample_size(denoiser.base_model, pipe)) * int(factor)


def sample_training_cameras(config, n: int, generator: torch.Generator, distance_scale: float = 1.0) -> Cameras:
    """Random cameras: azimuth, elevation (with a share of overhead views), distance and fov uniform in ranges."""
    c = config
    u = torch.rand(5, n, generator=generator, dtype=torch.float64)
    azimuth = c.azimuth_range[0] + (c.azimuth_range[1] - c.azimuth_range[0]) * u[0]
    normal = c.elevation_range[0] + (c.elevation_range[1] - c.elevation_range[0]) * u[1]
    overhead = c.overhead_range[0] + (c.overhead_range[1] - c.overhead_range[0]) * u[1]
    elevation = torch.where(u[2] < c.overhead_prob, overhead, normal)
    distance = (c.distance_range[0] + (c.distance_range[1] - c.distance_range[0]) * u[3]) * distance_scale
    fov = c.fov_range[0] + (c.fov_range[1] - c.fov_range[0]) * u[4]
    return Cameras(wrap_azimuth_deg(azimuth).float(), elevation.float(), distance.float(), fov.float())


@dataclass
class TextTo3DRun:
    """Everything a run holds: the prior, the NeRF, the guidance, the prompts and the optimiser."""

    config: TextTo3DConfig
    denoiser: Denoiser
    nerf: NeRF
    guidance: object
    prompts: list[ViewDependentPrompts]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    layout: object = None
    step: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def scene_scale(self) -> float:
        """Scene size relative to one prior-sized object (1 without a layout)."""
        return 1.0 if self.layout is None else self.layout.scene_bound / UNIT_OBJECT_RADIUS


def setup(config: TextTo3DConfig, denoiser: Denoiser | None = None) -> TextTo3DRun:
    """Builds the run from its config (loading the prior unless one is given)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    denoiser = denoiser if denoiser is not None else load_prior(config.prior, config.device)
    layout, region_prior = None, None
    nerf_config = config.nerf
    if config.method == "semantic-sds":
        if config.layout is None:
            raise ValueError("method 'semantic-sds' needs a layout (--layout scene.json)")
        layout = parse_layout(config.layout)
        region_prior = LayoutPrior(layout, config.guidance.mask_softness)
        nerf_config.field.bound = layout.scene_bound
        nerf_config.scene_radius = layout.scene_bound * math.sqrt(3)
        nerf_config.field.num_semantic = len(layout.objects)  # matter starts as one blob per box (LayoutPrior)
    nerf = NeRF(nerf_config, region_prior=region_prior).to(config.device)
    guidance = build(config.method, denoiser, config.guidance)
    texts = [o.prompt for o in layout.objects] if layout is not None else [config.prompt]
    prompts = [ViewDependentPrompts(denoiser, text, config.view_dependent_prompts) for text in texts]
    grid_params, network_params = nerf.field.parameter_groups()  # (hash: the tables; the MLP)
    groups = [
        {"params": grid_params, "lr": config.lr_encoding},
        {"params": network_params, "lr": config.lr_network},
    ]
    if hasattr(guidance, "trainable_parameters"):
        groups.append({"params": guidance.trainable_parameters(), "lr": guidance.config.lora_lr})
    # multi-tensor Adam: bitwise the per-parameter loop's update (test), which torch picks on a CPU by default
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, foreach=True)
    return TextTo3DRun(config, denoiser, nerf, guidance, prompts, optimizer, generator, layout)


def current_resolution(config: TextTo3DConfig, step: int, full: int) -> int:
    """The render resolution at `step`: `start_resolution` during the warm-up fraction, then `full`."""
    if config.start_resolution and step < config.resolution_warmup * config.steps:
        return min(config.start_resolution, full)
    return full


def regularizers(config, out: dict[str, torch.Tensor], progress: float = 0.0, field=None, generator=None):
    """The enabled regularisers of `config.regularizers` on a render's outputs at training progress in [0, 1]
    (`sdtoolkit.text_to_3d.regularizers`)."""
    return regularizer_losses(config.regularizers, out, progress, field, generator)


def current_levels(config: TextTo3DConfig, step: int, num_levels: int) -> int:
    """Hash-grid levels on at `step` under coarse-to-fine (`start_levels`): `start_levels` at first, one more at
    each of the even intervals of the `levels_warmup` fraction of the steps, all of them from its end on."""
    if config.start_levels is None or config.start_levels >= num_levels:
        return num_levels
    warmup = config.levels_warmup * config.steps
    if step >= warmup:
        return num_levels
    return config.start_levels + int(step * (num_levels - config.start_levels) // warmup)


def set_levels(nerf: NeRF, levels: int | None) -> None:
    """Switches the hash grid to its `levels` coarsest levels (None: all)."""
    encoding = nerf.field.encoding
    encoding.set_active_levels(encoding.num_levels if levels is None else levels)


def current_beta(config: TextTo3DConfig, step: int) -> float:
    """VolSDF's beta at `step` for an 'sdf' field: `sdf_beta_start` decaying geometrically to `nerf.field.sdf_beta`
    over the `sdf_beta_warmup` fraction of the steps, then constant (without `sdf_beta_start`: the final beta)."""
    end = config.nerf.field.sdf_beta
    if config.sdf_beta_start is None:
        return end
    warmup = config.sdf_beta_warmup * config.steps
    a = min(step / warmup, 1.0) if warmup > 0 else 1.0
    return config.sdf_beta_start * (end / config.sdf_beta_start) ** a


def training_step(run: TextTo3DRun) -> dict[str, float]:
    """One optimisation step; returns its logs."""
    config, step, g = run.config, run.step, run.generator
    full = config.resolution or prior_image_size(run.denoiser)
    resolution = current_resolution(config, step, full)
    progress = step / max(config.steps, 1)
    if config.start_levels is not None:
        set_levels(run.nerf, current_levels(config, step, run.nerf.field.encoding.num_levels))
    run.nerf.field.beta = current_beta(config, step)
    run.nerf.update_occupancy(step, g)
    cameras = sample_training_cameras(config.cameras, config.cameras.batch_size, g, run.scene_scale)
    cameras = cameras.to(run.nerf.device)
    ray_transform, alone = None, None
    if run.layout is not None and torch.rand((), generator=g).item() < config.guidance.local_view_prob:
        isolate = config.guidance.isolate_local_views
        if isolate:  # one box for the whole batch, rendered alone
            alone = int(torch.randint(len(run.layout.objects), (), generator=g))
        centres, scales = object_view_transform(run.layout, config, len(cameras), g, box=alone)
        ray_transform = (centres.to(cameras.device), scales.to(cameras.device))
    prior = run.nerf.field.region_prior
    if alone is not None:
        run.nerf.field.region_prior = SingleBoxPrior(prior, alone)
    try:
        out = run.nerf.render(
            cameras,
            resolution,
            background=config.background,
            generator=g,
            ray_transform=ray_transform,
            compute_normals=config.regularizers.needs_normals(progress),
        )
    finally:
        run.nerf.field.region_prior = prior
    rgb = out["rgb"]
    if resolution != full:
        rgb = F.interpolate(rgb, size=(full, full), mode="bilinear", align_corners=False)
    conds = [p(cameras) for p in run.prompts]
    if alone is not None:  # an isolated object: plain SDS with its own prompt on the whole image
        latents = run.denoiser.encode(rgb * 2 - 1, sample=False)
        result = run.guidance(latents, [conds[alone]], progress, cameras=cameras, generator=g)
    elif "semantics" in out and getattr(config.guidance, "isolate_regions", False):
        result = isolated_region_guidance(run, rgb, out["semantics"], conds, progress, cameras)
    else:
        latents = run.denoiser.encode(rgb * 2 - 1, sample=False)
        masks = region_masks(out["semantics"], latents.shape[-1]) if "semantics" in out else None
        result = run.guidance(latents, conds, progress, masks=masks, cameras=cameras, generator=g)
    regularizer = regularizers(config, out, progress, run.nerf.field, g)
    losses = {"loss_guidance": result.loss, **result.extra_losses, **regularizer}
    loss = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    logs = {k: float(v.detach()) for k, v in losses.items()}  # (the loop reads every step back anyway)
    bad = nonfinite_term(logs, run.optimizer) if config.max_nonfinite_steps > 0 else None
    if bad is not None:  # the non-finite guard: no NeRF or Adam update this step
        run.optimizer.zero_grad(set_to_none=True)
        logs["skipped"] = 1.0
        logs["nonfinite_term"] = bad
    else:
        run.optimizer.step()
    run.step += 1
    logs.update(step=run.step, t=float(result.t.float().mean()), grad_norm=float(result.grad_norm), res=resolution)
    logs["opacity"] = float(out["opacity"].detach().mean())
    return logs


def isolated_region_guidance(run: TextTo3DRun, rgb, semantics, conds, progress: float, cameras):
    """SemanticSDS with region isolation: per object k, SDS with its prompt on the encode of its region composited
    over the background, M_k rgb + (1 - M_k) bg (masks from the rendered semantic map, a partition of the image).
    The losses add up; the logged t and gradient norm are the first region's."""
    size = rgb.shape[-1]
    if semantics.shape[-1] != size:
        semantics = F.interpolate(semantics, size=(size, size), mode="bilinear", align_corners=False)
    masks = region_masks(semantics)
    background = torch.as_tensor(run.config.background, dtype=rgb.dtype, device=rgb.device)[None, :, None, None]
    results = []
    for k, cond in enumerate(conds):
        image = rgb * masks[:, k : k + 1] + background * (1 - masks[:, k : k + 1])
        latents = run.denoiser.encode(image * 2 - 1, sample=False)
        results.append(run.guidance(latents, [cond], progress, cameras=cameras, generator=run.generator))
    first = results[0]
    first.loss = sum(r.loss for r in results)
    return first


def object_view_transform(
    layout, config, n: int, generator: torch.Generator, box: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray transform of object-centric views: one random layout box per camera (or box `box` for all); the camera
    orbits its centre at a distance that frames the box like the prior frames one object (`box_fill`)."""
    if box is None:
        index = torch.randint(len(layout.objects), (n,), generator=generator)
    else:
        index = torch.full((n,), box, dtype=torch.long)
    centres = torch.tensor([layout.objects[i].centre for i in index.tolist()])
    sizes = torch.tensor([max(layout.objects[i].size) for i in index.tolist()])
    # the cameras are sampled at scene scale; bring them back to unit scale, then to the box's scale
    scale = sizes / UNIT_OBJECT_SIZE * config.guidance.box_fill / (layout.scene_bound / UNIT_OBJECT_RADIUS)
    return centres, scale


# ------------------------------------------------------------------------------------------------- previews


@torch.no_grad()
def render_turntable(
    nerf: NeRF,
    n_views: int,
    resolution: int,
    scene_scale: float = 1.0,
    elevation: float = 15.0,
    background=(1, 1, 1),
    chunk: int = 4,
) -> dict[str, torch.Tensor]:
    """`n_views` renders evenly spaced in azimuth from the front (the evaluation and video cameras), without
    gradients and `chunk` views at a time (one batch of 36 frames held 7.8 GB with a symmetric field)."""
    cameras = turntable_cameras(n_views, elevation_deg=elevation)
    cameras.distance = cameras.distance * scene_scale
    cameras = cameras.to(nerf.device)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, n_views, chunk):
            out = nerf.render(cameras[start : start + chunk], resolution, background=background, stratified=False)
            for k, v in out.items():
                if not k.startswith("packed_"):
                    parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def save_image_grid(images: torch.Tensor, path: Path) -> None:
    """Saves `[N, 3, H, W]` images in [0, 1] side by side as one PNG."""
    from PIL import Image

    row = images.clamp(0, 1).permute(2, 0, 3, 1).reshape(images.shape[2], -1, 3)
    Image.fromarray((row * 255).round().byte().numpy()).save(path)


# ------------------------------------------------------------------------------------------------- checkpoints


def checkpoint_modules(run) -> dict:
    """The modules a checkpoint holds, by key prefix: the NeRF, a guidance with weights (VSD's LoRA), and any the run
    adds in `run.extra_modules` (image-to-3D's pose corrections)."""
    modules = {"nerf": run.nerf}
    if hasattr(run.guidance, "state_dict"):
        modules["guidance"] = run.guidance
    modules.update(getattr(run, "extra_modules", {}))
    return modules


def save_checkpoint(run: TextTo3DRun, output_dir: Path) -> Path:
    """Writes `checkpoint.safetensors` (NeRF, guidance weights, Adam state, RNG states) and `checkpoint.json`."""
    tensors = {}
    for prefix, module in checkpoint_modules(run).items():
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    optim = run.optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    tensors["rng.generator"] = run.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    path = output_dir / CHECKPOINT_FILE
    groups = [
        {k: v for k, v in group.items() if k != "params"} | {"params": group["params"]}
        for group in optim["param_groups"]
    ]
    state = {"step": run.step, "param_groups": groups, "history": run.history[-50:]}
    # The tensors file is the whole checkpoint (its metadata carries the state too) and is replaced in one rename;
    # checkpoint.json is a readable copy written after it, so a kill between the two renames loses nothing.
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(run.step), "state": json.dumps(state)})
    atomic_write_text(output_dir / STATE_FILE, json.dumps(state, indent=1))
    return path


def read_checkpoint_state(output_dir: Path) -> dict | None:
    """The state (step, optimizer groups, history) of the checkpoint in `output_dir`: from the metadata of its
    checkpoint.safetensors, which is written in one rename with the tensors, else (a checkpoint written before
    the metadata held it) from checkpoint.json; None when there is no readable checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(output_dir / CHECKPOINT_FILE), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if "state" in metadata:
            return json.loads(metadata["state"])
        return json.loads((output_dir / STATE_FILE).read_text())
    except (OSError, ValueError, TypeError, SafetensorError):
        return None


def load_checkpoint(run: TextTo3DRun, output_dir: Path) -> None:
    """Restores a run saved by `save_checkpoint` (the run must be built from the same config)."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = load_file(str(output_dir / CHECKPOINT_FILE), device=str(run.nerf.device))
        with safe_open(str(output_dir / CHECKPOINT_FILE), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError) as error:  # a torn or damaged file
        raise OutputFolderError(
            f"{output_dir / CHECKPOINT_FILE} cannot be read ({type(error).__name__}: {error}); the checkpoint is "
            "damaged: start the run again with --overwrite"
        ) from None
    saved_step = metadata.get("step")
    state = json.loads(metadata["state"]) if "state" in metadata else json.loads((output_dir / STATE_FILE).read_text())
    if saved_step is not None and int(saved_step) != state["step"]:
        raise OutputFolderError(
            f"{output_dir}: {CHECKPOINT_FILE} is of step {saved_step} but {STATE_FILE} of step {state['step']} (the "
            "run was killed while checkpointing); start it again with --overwrite"
        )
    for prefix, module in checkpoint_modules(run).items():
        start = len(prefix) + 1
        module.load_state_dict({k[start:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")})
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim_state.setdefault(int(index), {})[name] = value
    run.optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    run.generator.set_state(tensors["rng.generator"].cpu())
    torch.set_rng_state(tensors["rng.torch"].cpu())
    run.step = state["step"]
    run.history = state.get("history", [])


# ------------------------------------------------------------------------------------------------- the loop


def _legacy_entries(folder: Path) -> set[str]:
    """The entries of a text-to-3D folder written before manifests existed (its checkpoint.json or config.json)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        config = None
    if (folder / STATE_FILE).is_file() or (isinstance(config, dict) and "prior" in config and "nerf" in config):
        return {name for name in RUN_ENTRIES if (folder / name).exists()}
    return set()


def _folder_rules(config: TextTo3DConfig, resume: bool) -> dict:
    return {
        "resume": resume,
        "overwrite": config.overwrite,
        "has_checkpoint": lambda folder: (folder / CHECKPOINT_FILE).exists(),
        "reserved": RUN_ENTRIES,
        "legacy": _legacy_entries,
    }


def check_output_folder(config: TextTo3DConfig, output_dir: str | Path, resume: bool = False) -> str:
    """Whether a text-to-3D run may write into `output_dir` (`sdtoolkit.runs.inspect_output`): `new`, `resume`,
    `restart` or `overwrite`; raises `OutputFolderError` naming --resume/--overwrite. Writes nothing: the CLI calls
    it before loading the prior."""
    return inspect_output(output_dir, RUN_KIND, **_folder_rules(config, resume))


def claim_folder(config: TextTo3DConfig, output_dir: str | Path, resume: bool = False) -> RunFolder:
    """Claims `output_dir` for a text-to-3D run (lock + manifest, `sdtoolkit.runs.claim_output`)."""
    return claim_output(output_dir, RUN_KIND, **_folder_rules(config, resume))


def train(
    config: TextTo3DConfig,
    output_dir: str | Path,
    denoiser: Denoiser | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    folder: RunFolder | None = None,
    *,
    setup_fn=None,
    step_fn=None,
    command: str = RUN_KIND,
    export_settings: dict | None = None,
) -> TextTo3DRun:
    """Runs (or resumes) the optimisation, writing config, previews and checkpoints under `output_dir`.

    The folder is claimed first (`claim_folder`; `folder` passes one already claimed, as `generate` does): a folder
    holding another run or the user's files is refused unless `config.overwrite`. `stop_at` ends the loop early at
    that step (after checkpointing), as an interrupted run would. Raises `RunDiverged` after
    `config.max_nonfinite_steps` consecutive skipped (non-finite) steps, and `RunInterrupted` on Ctrl-C/SIGTERM
    (after a checkpoint at the step boundary). `setup_fn(config, denoiser)` and `step_fn(run)` replace `setup` and
    `training_step` for a loop built on this one (image-to-3D; `command` names it in messages). `export_settings`
    (the CLI's mesh resolution, formats, turntable frames) is saved in config.json under "command", so that a
    `--resume` re-export uses them again."""
    output_dir = Path(output_dir)
    resume = resume and (output_dir / CHECKPOINT_FILE).exists()
    owned = folder is None
    folder = folder if folder is not None else claim_folder(config, output_dir, resume)
    try:
        with StopSignals() as stop:
            hooks = (setup_fn or setup, step_fn or training_step, command)
            return _train(config, output_dir, denoiser, resume, progress, stop_at, stop, hooks, export_settings)
    finally:
        if owned:
            folder.release()


def _train(
    config, output_dir: Path, denoiser, resume: bool, progress: bool, stop_at, stop, hooks, export_settings=None
) -> TextTo3DRun:
    setup_fn, step_fn, command = hooks
    with restoring_checkpoint(resume):  # the checkpoint fills the field (a mesh sdf_init's grid included)
        run = setup_fn(config, denoiser)
    if resume:
        load_checkpoint(run, output_dir)
    if stop.requested:  # Ctrl-C while loading: stop before the first step
        raise RunInterrupted(
            f"{stop.name} before the first step: nothing new to save; rerun the same command to continue",
            exit_code=stop.exit_code,
        )
    with atomic_output(output_dir / CONFIG_FILE) as tmp:
        save_config(config, tmp, {"command": export_settings} if export_settings else None)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    start_time = time.time()
    skipped = empty = 0
    bar = tqdm(total=config.steps, initial=run.step, desc=command, unit="step", disable=not progress)
    while run.step < end:
        logs = step_fn(run)
        run.history.append(logs)
        skipped = skipped + 1 if logs.get("skipped") else 0
        empty = empty + 1 if logs.get("opacity", 1.0) < EMPTY_OPACITY else 0
        if config.max_empty_steps and empty >= config.max_empty_steps:
            bar.close()
            saved = _saved_step(output_dir)
            raise RunDiverged(
                f"step {run.step}: the renders were empty for {empty} consecutive steps (mean opacity below "
                f"{EMPTY_OPACITY:g}): the field vanished, so no mesh would be found; rerun with another --seed (with "
                f"--overwrite), or with --max-empty-steps 0 to train on; "
                + (f"the last checkpoint is step {saved}" if saved is not None else "no checkpoint was written yet")
            )
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss_guidance']:.3g}", t=f"{logs['t']:.0f}", res=logs["res"])
        if config.max_nonfinite_steps > 0 and skipped >= config.max_nonfinite_steps:
            bar.close()
            kept = f"the last good checkpoint is {output_dir / CHECKPOINT_FILE} (step {_saved_step(output_dir)})"
            raise RunDiverged(
                f"step {run.step}: {logs['nonfinite_term']} was not finite in {skipped} consecutive steps (each "
                f"skipped); the optimisation diverged, most likely because the learning rate is too high "
                f"(lr_encoding {config.lr_encoding:g}, lr_network {config.lr_network:g}); no mesh was exported and "
                f"{kept if (output_dir / CHECKPOINT_FILE).exists() else 'no checkpoint was written yet'}"
            )
        if skipped and stop.requested:
            bar.close()
            raise RunInterrupted(
                f"{stop.name} at step {run.step} while non-finite steps were being skipped: no new checkpoint; "
                f"continue with `sdtoolkit {command} --resume {output_dir}`",
                exit_code=stop.exit_code,
            )
        if skipped:
            continue  # no preview or checkpoint while steps are being skipped
        if config.preview_every and run.step % config.preview_every == 0:
            preview = render_turntable(run.nerf, 8, 64, run.scene_scale, background=config.background)
            (output_dir / "previews").mkdir(exist_ok=True)
            save_image_grid(preview["rgb"], output_dir / "previews" / f"step_{run.step:06d}.png")
        if (config.checkpoint_every and run.step % config.checkpoint_every == 0) or stop.requested:
            save_checkpoint(run, output_dir)
        if stop.requested:
            bar.close()
            raise RunInterrupted(
                f"{stop.name} at step {run.step}: checkpoint written; continue with "
                f"`sdtoolkit {command} --resume {output_dir}`",
                exit_code=stop.exit_code,
            )
    bar.close()
    if config.start_levels is not None:
        set_levels(run.nerf, None)  # every level on for the export (a resumed run's steps set their own)
    run.nerf.field.beta = config.nerf.field.sdf_beta  # the final surface for the export
    save_checkpoint(run, output_dir)
    if stop.requested:  # during the last step or its checkpoint: stop before the export
        raise RunInterrupted(
            f"{stop.name} after the last step ({run.step}; its checkpoint is written): nothing was exported; "
            f"`sdtoolkit {command} --resume {output_dir}` exports it",
            exit_code=stop.exit_code,
        )
    timing = {"train_seconds": time.time() - start_time, "steps": run.step}
    atomic_write_text(output_dir / "timing.json", json.dumps(timing))
    return run


def _saved_step(output_dir: Path) -> int | None:
    state = read_checkpoint_state(output_dir)
    try:
        return int(state["step"]) if state is not None else None
    except (KeyError, TypeError, ValueError):
        return None
