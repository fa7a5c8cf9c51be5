"""Export of a trained few-step student to a complete, stock diffusers pipeline folder with its scheduler baked in.

Any method's student plugs in through an `ExportSpec` (written as `export.json` beside the student weights):
its model family (`sd`, `sdxl`, `sd3`, `sana`, `flux`), a full network (`student/unet/` or
`student/transformer/`, diffusers format) or LoRA weights (`student/pytorch_lora_weights.safetensors`,
diffusers/peft format), the pipeline class, the scheduler class and the overrides of the teacher's scheduler
config, and the exact call (steps, guidance, extra arguments). `export_pipeline` writes:

- the family's own stock pipeline (`StableDiffusionPipeline` / `LatentConsistencyModelPipeline`,
  `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline`, `SanaPipeline`, `FluxPipeline`: `model_index.json`, the
  network, VAE, text encoders, tokenizers, `scheduler/`) that `DiffusionPipeline.from_pretrained(folder)` loads
  with stock diffusers — no custom code, no hand-typed timesteps; a LoRA student is fused into the network there
  (per-family knowledge: `sdtoolkit.pipelines.families`);
- for LoRA students, also `pytorch_lora_weights.safetensors` at the top, which `pipe.load_lora_weights(folder)`
  accepts on the teacher pipeline;
- `training_config.json` (the resolved training configuration), `export.json` (the final spec), a model card
  `README.md` (the exact call first, what the default call does, the teacher and how to get it, its prompt format,
  what guidance_scale means) and `export_manifest.json` (the entries written, all a later export may replace).
  No file holds a path of the training machine (`_name_or_path` and config paths are scrubbed).

Flow students (SD3, SANA, FLUX) get a `FlowMatchEulerDiscreteScheduler` built from the teacher's scheduler config
(its shift kept) that samples the trained sigmas: Euler steps for deterministic students, `stochastic_sampling=True`
for multi-step consistency-style ones (`families.flow_plan`). For the VP families (SD, SDXL):

The trainers' specs name the sampler they trained with (LCMScheduler, TCDScheduler with eta=0, a truncated
LCMScheduler for a 1-step generator on t < T - 1); `sdtoolkit.pipelines.stock_defaults` turns that into the stock
pipeline class and scheduler config whose *default* call (`pipe(prompt)`, 50 steps and CFG 7.5 in
StableDiffusionPipeline, 4 steps in LatentConsistencyModelPipeline) samples what was trained:

- deterministic samplers (1-step generators, phased PCM): `StableDiffusionPipeline` + `TCDScheduler` with a
  step-function noise schedule: the 50 default steps are the trained ones plus steps that leave the latents
  unchanged; `num_inference_steps=N` is the trained schedule alone;
- stochastic multi-step samplers (LCM, DMD2/Flash-DMD with k >= 2 steps): `LatentConsistencyModelPipeline` +
  `LCMScheduler`, whose 4-step default is the trained schedule for 4-step students;
- students without a w-embedding get a zero one (`time_cond_proj_dim`, zero weights): stock pipelines then skip
  CFG, and the outputs are unchanged. Students with a trained w-embedding keep guidance_scale = w + 1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_NAME = "export.json"
"""The ExportSpec file, beside the student weights and in every exported folder."""
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (what `load_lora_weights(folder)` looks for)."""
MANIFEST_NAME = "export_manifest.json"
"""The entries an export wrote into its folder: what a later export into the same folder may replace."""
LEGACY_ENTRIES = (
    "model_index.json",
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "README.md",
    SPEC_NAME,
    "training_config.json",
    LORA_WEIGHT_NAME,
)
"""What exports written before manifests held."""

__all__ = [
    "ExportSpec",
    "check_export_target",
    "export_pipeline",
    "is_earlier_export",
    "lcm_schedule_for",
    "lcm_single_step_schedule",
    "write_model_card",
]


@dataclass
class ExportSpec:
    """How a trained student becomes a stock diffusers pipeline."""

    method: str
    """The distillation method (e.g. `lcm`)."""
    student: str
    """`unet` or `transformer` (a full network in `unet/` or `transformer/`, the stock pipeline's component name) or
    `lora` (`pytorch_lora_weights.safetensors`, written by the family's stock pipeline's `save_lora_weights`)."""
    pipeline_class: str
    """A diffusers pipeline class name, e.g. `LatentConsistencyModelPipeline` or `StableDiffusionPipeline`."""
    scheduler_class: str
    """A diffusers scheduler class name, e.g. `LCMScheduler` or `TCDScheduler`."""
    num_inference_steps: int
    """The step count the student was trained for (documented in the card; pass it in the call)."""
    guidance_scale: float = 1.0
    """The `guidance_scale` of the call (diffusers convention; for w-embedded students w + 1)."""
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    """Overrides applied on top of the teacher's scheduler config (e.g. `original_inference_steps`)."""
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further call arguments (e.g. `eta`)."""
    teacher: str = ""
    """The teacher it was distilled from (builtin:shapes, a folder, a Hub id); in an exported folder its reference
    (`builtin:NAME`, a Hub id or a local folder's name, never a path)."""
    teacher_source: str = ""
    """In an exported folder: `builtin`, `hub` or `local` (what `teacher` names)."""
    trained_steps: int = 0
    """Optimizer steps trained."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Last validation metrics, for the model card."""
    notes: str = ""
    """Free text for the model card (method details)."""
    timesteps: list[float] = field(default_factory=list)
    """The trained sampling timesteps, as the exported scheduler's `timesteps` (filled in by `export_pipeline`):
    integers for VP families; sigma * 1000 (floats) for flow families, whose trainers may write their trained times
    here (sigmas in [0, 1] or sigma * 1000) for the export to check."""
    default_call: str = ""
    """What the stock default call `pipe(prompt)` of the exported folder does (filled in by `export_pipeline`; a
    spec with it set is final and is exported as it is)."""
    default_exact: bool = False
    """Whether `pipe(prompt)` gives the image of `call_arguments()` (up to float rounding)."""
    guidance_embedding: str = ""
    """`w` (a trained w-embedding: guidance_scale = w + 1), `zero` (a zero embedding that makes stock pipelines
    skip CFG; guidance_scale has no effect), `guidance` (guidance_scale is the network's distilled guidance input:
    FLUX.1-dev's guidance_embeds) or empty (none: the stock pipeline runs CFG only for guidance_scale > 1)."""
    family: str = "sd"
    """The `ModelFamily.name` of the teacher's network: `sd`, `sdxl`, `sd3`, `sana` or `flux` (`sd` for export.json
    files written before families)."""

    def save(self, folder: str | Path) -> None:
        Path(folder, SPEC_NAME).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ExportSpec:
        path = Path(folder, SPEC_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{str(folder)!r} has no {SPEC_NAME}: it is not a saved student")
        values = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def call_arguments(self) -> dict[str, Any]:
        steps, guidance = self.num_inference_steps, self.guidance_scale
        return {"num_inference_steps": steps, "guidance_scale": guidance, **self.call_kwargs}


def lcm_schedule_for(timesteps: list[int], num_train_timesteps: int = 1000) -> dict[str, Any]:
    """LCMScheduler settings whose default schedule is exactly `timesteps` (descending): for evenly spaced
    trailing timesteps t_i = T - 1 - i T/n (e.g. DMD2's 999, 749, 499, 249) that is `original_inference_steps = n`.

    Returns `{"original_inference_steps": n}`; raises ValueError naming the closest valid schedule otherwise."""
    n = len(timesteps)
    k = num_train_timesteps // n
    expected = [num_train_timesteps - 1 - i * k for i in range(n)]
    if list(timesteps) != expected:
        raise ValueError(
            f"timesteps {list(timesteps)} are not a stock LCMScheduler schedule; the {n}-step one is {expected} "
            "(export other schedules with TCDScheduler(original_inference_steps=...) or a custom scheduler)"
        )
    return {"original_inference_steps": n}


def lcm_single_step_schedule(timestep: int, teacher_scheduler_config: Any) -> dict[str, Any]:
    """LCMScheduler overrides whose 1-step default schedule is `[timestep]` for any 0 < timestep < T, with the
    teacher's noise schedule unchanged: a generator conditioned on a lower timestep than T - 1 (DMD2's SDXL 1-step
    model uses 399, SiD-LSG 625) exports to a stock scheduler without hand-typed timesteps.

    A stock LCMScheduler with `original_inference_steps = 1` samples t = num_train_timesteps - 1, so the schedule is
    truncated to its first `timestep + 1` betas (`trained_betas`; alpha_bar_t = prod_{s <= t} (1 - beta_s) is
    unchanged for every t <= timestep). Zero-SNR rescaling, if the teacher uses it, is already in those betas."""
    from diffusers import LCMScheduler

    full = LCMScheduler.from_config(dict(teacher_scheduler_config or {}))
    T = full.config.num_train_timesteps
    if not 0 < timestep < T:
        raise ValueError(f"generator timestep {timestep} must be in [1, {T - 1}]")
    return {
        "num_train_timesteps": timestep + 1,
        "trained_betas": [float(b) for b in full.betas[: timestep + 1]],
        "rescale_betas_zero_snr": False,
        "original_inference_steps": 1,
    }


def _pipeline_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"diffusers has no pipeline class {name!r}")
    return cls


def _scheduler(name: str, teacher_config: Any, overrides: dict[str, Any]):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {name!r}")
    return cls.from_config(teacher_config, **overrides)


RUN_FOLDER_FILES = (".sdtoolkit.lock", ".sdtoolkit-manifest.json")
"""`sdtoolkit.runs`' lock and manifest: a folder claimed by `runs.claim_export_folder` holds them before the export
is written (not user files)."""


def is_earlier_export(folder: str | Path) -> bool:
    """Whether `folder` was written by `export_pipeline` (its manifest, or an export from before manifests: both
    `export.json` and `model_index.json`), or is claimed for an export by `sdtoolkit.runs`."""
    folder = Path(folder)
    legacy = (folder / SPEC_NAME).is_file() and (folder / "model_index.json").is_file()
    if (folder / MANIFEST_NAME).is_file() or legacy:
        return True
    try:
        return json.loads((folder / RUN_FOLDER_FILES[1]).read_text()).get("kind") == "export"
    except (OSError, ValueError, AttributeError):
        return False


def check_export_target(out_dir: str | Path, sources: list[str | Path], overwrite: bool = False) -> None:
    """Raises ValueError if `out_dir` is, contains or lies inside one of `sources` (the student being exported, its
    run folder), and FileExistsError if it is a non-empty folder that is not an earlier export (unless
    `overwrite`)."""
    out = Path(out_dir).resolve()
    for source in sources:
        source = Path(source).resolve()
        if source.is_relative_to(out) or out.is_relative_to(source / "student"):
            raise ValueError(
                f"{out_dir} is or contains the folder being exported ({source}); export into another folder"
            )
        if (source / SPEC_NAME).is_file() and out.is_relative_to(source):
            raise ValueError(f"{out_dir} lies inside the student folder being exported ({source}); choose another")
    if out.is_file():
        raise FileExistsError(f"{out_dir} is a file; choose a folder")
    entries = [p for p in out.iterdir() if p.name not in RUN_FOLDER_FILES] if out.is_dir() else []
    if entries and not is_earlier_export(out) and not overwrite:
        raise FileExistsError(
            f"{out_dir} is not empty and is not an earlier sdtoolkit export; choose a new or empty folder (or pass "
            "--overwrite to write the export's files beside its own)"
        )
    foreign = foreign_export_files(out, LEGACY_ENTRIES) if out.is_dir() else []  # the entries every export writes
    if foreign:
        raise _foreign_error(Path(out_dir), foreign)


def export_pipeline(
    out_dir: str | Path,
    teacher: Any,
    student_dir: str | Path,
    spec: ExportSpec | None = None,
    training_config: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a complete diffusers pipeline folder for the student saved in `student_dir`, whose stock default call
    `DiffusionPipeline.from_pretrained(out_dir)(prompt)` runs the trained sampler (see `stock_defaults`).

    Args:
        out_dir: the folder to write: new, empty, or an earlier export (whose files are replaced; other files in
            it are kept). It must not be or contain `student_dir`.
        teacher: the teacher pipeline, or its spec (`builtin:shapes`, folder, Hub id) to load it fresh; its VAE,
            text encoder, tokenizer and scheduler config are reused. Pass a spec when the loaded pipeline's UNet
            carries training adapters.
        student_dir: a folder written by `DistillationMethod.save_student` (with `export.json`).
        spec: the trainer's ExportSpec (default: `student_dir/export.json`); the exported `export.json` is the
            final one (stock pipeline class, scheduler config, the card's call, what the default call does).
        training_config: the resolved training configuration, saved as `training_config.json` without the
            training machine's paths.
        overwrite: write into a non-empty folder that is not an earlier export (replacing same-named entries).
    """
    from sdtoolkit.pipelines import families, model_card

    student_dir, out_dir = Path(student_dir), Path(out_dir)
    check_export_target(out_dir, [student_dir], overwrite)
    spec = dataclasses.replace(spec or ExportSpec.load(student_dir))
    if spec.pipeline_class == "SanaSprintPipeline":
        spec.family = "sana"  # only SANA students export as SanaSprintPipeline
    if spec.pipeline_class == "AnimateDiffPipeline":  # video students (`trainers.mcm`)
        return _animatediff_export(out_dir, teacher, student_dir, spec, training_config)
    family = families.check_family(spec)
    if isinstance(teacher, str):
        from sdtoolkit.models.loading import load_teacher_pipeline

        teacher = load_teacher_pipeline(teacher)
    families.check_family(spec, teacher)
    if spec.pipeline_class == "SanaSprintPipeline":  # sCM students of SANA teachers (`trainers.scm`)
        from sdtoolkit.pipelines.sana_sprint import sana_sprint_pipeline

        spec, pipeline = sana_sprint_pipeline(teacher, student_dir, spec)
    elif family.name == "sd":
        spec, pipeline = _sd_pipeline(teacher, student_dir, spec)
    else:
        spec, pipeline = _family_pipeline(family, teacher, student_dir, spec)
    teacher_name = str(spec.teacher or (training_config or {}).get("train", {}).get("teacher", ""))
    reference = model_card.teacher_reference(teacher_name)
    teacher_path = str(Path(teacher_name).resolve()) if teacher_name and Path(teacher_name).exists() else teacher_name
    spec.teacher, spec.teacher_source = reference, model_card.teacher_kind(teacher_name, reference)
    tmp = out_dir.parent / f".{out_dir.name}.sdtoolkit-export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    if spec.student == "lora":
        shutil.copy2(student_dir / LORA_WEIGHT_NAME, tmp / LORA_WEIGHT_NAME)
    spec.save(tmp)
    if training_config is not None:
        config = model_card.scrub_machine_paths(training_config, teacher_path, reference)
        if isinstance(config.get("train"), dict) and "teacher" in config["train"]:
            config["train"]["teacher"] = reference
        (tmp / "training_config.json").write_text(json.dumps(config, indent=2) + "\n")
    model_card.scrub_json_files(tmp, teacher_path, reference)
    model_card.write_model_card(tmp, spec, training_config or {})
    _replace_folder_contents(tmp, out_dir)
    return out_dir


def _animatediff_export(out_dir: Path, teacher: Any, student_dir: Path, spec: ExportSpec, training_config) -> Path:
    """A stock AnimateDiffPipeline folder (`sdtoolkit.pipelines.animatediff`), written like the other exports."""
    from sdtoolkit.pipelines import model_card
    from sdtoolkit.pipelines.animatediff import animatediff_pipeline

    if isinstance(teacher, str):
        from sdtoolkit.models.loading import load_teacher_pipeline

        teacher = load_teacher_pipeline(teacher)
    spec, pipeline = animatediff_pipeline(teacher, student_dir, spec)
    tmp = out_dir.parent / f".{out_dir.name}.sdtoolkit-export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    spec.save(tmp)
    if training_config is not None:
        (tmp / "training_config.json").write_text(json.dumps(training_config, indent=2) + "\n")
    model_card.write_model_card(tmp, spec, training_config or {})
    _replace_folder_contents(tmp, out_dir)
    return out_dir


def _sd_pipeline(teacher: Any, student_dir: Path, spec: ExportSpec) -> tuple[ExportSpec, Any]:
    """SD 1.x/2.x: `StableDiffusionPipeline` or `LatentConsistencyModelPipeline` with the plan of `stock_defaults`
    (a zero guidance embedding for students without one), everything in fp32 on the CPU."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from sdtoolkit.pipelines import stock_defaults
    from sdtoolkit.pipelines.families import base_state_dict

    components = {"vae": teacher.vae, "text_encoder": teacher.text_encoder, "tokenizer": teacher.tokenizer}
    extras = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if spec.student == "unet":
        unet = UNet2DConditionModel.from_pretrained(student_dir / "unet")
    elif spec.student == "lora":
        unet = UNet2DConditionModel.from_config(teacher.unet.config)
        unet.load_state_dict(base_state_dict(teacher.unet))
        # load through the public API (proves the file loads), fuse into the UNet, drop the adapter modules
        fuser = StableDiffusionPipeline(unet=unet, scheduler=teacher.scheduler, **components, **extras)
        fuser.load_lora_weights(str(student_dir), weight_name=LORA_WEIGHT_NAME)
        fuser.fuse_lora()
        fuser.unload_lora_weights()
        unet = fuser.unet
    w_embedded = unet.config.get("time_cond_proj_dim") is not None
    if not spec.default_call:
        plan = stock_defaults.stock_plan(spec, teacher.scheduler.config, w_embedded)
        zero = plan.pop("zero_embedding")
        spec = dataclasses.replace(spec, **plan, guidance_embedding="zero" if zero else "w")
    if spec.guidance_embedding == "zero" and not w_embedded:
        unet = stock_defaults.with_zero_guidance_embedding(unet)
    scheduler = _scheduler(spec.scheduler_class, teacher.scheduler.config, spec.scheduler_config)
    pipeline_class = _pipeline_class(spec.pipeline_class)
    pipeline = pipeline_class(unet=unet, scheduler=scheduler, **components, **extras)
    pipeline.to("cpu")
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.float()  # (`.to(dtype)` on diffusers models warns spuriously)
    return spec, pipeline


def _family_pipeline(family: Any, teacher: Any, student_dir: Path, spec: ExportSpec) -> tuple[ExportSpec, Any]:
    """SDXL, SD3, SANA, FLUX: the family's stock pipeline (`sdtoolkit.pipelines.families`). SDXL takes SD's VP plan
    with StableDiffusionXLPipeline's defaults; flow families a `FlowMatchEulerDiscreteScheduler` on the trained
    sigmas. Components keep the teacher's devices and dtypes."""
    from sdtoolkit.pipelines import families, stock_defaults

    network = families.load_student_network(family, teacher, student_dir, spec, LORA_WEIGHT_NAME)
    if family.flow:
        if not spec.default_call:
            spec = dataclasses.replace(spec, **families.flow_plan(family, spec, teacher))
        scheduler = families.flow_scheduler(teacher.scheduler.config, spec.scheduler_config)
    else:
        w_embedded = network.config.get("time_cond_proj_dim") is not None
        if not spec.default_call:
            stock = stock_defaults.SDXL_PIPELINES
            plan = stock_defaults.stock_plan(spec, teacher.scheduler.config, w_embedded, stock)
            zero = plan.pop("zero_embedding")
            spec = dataclasses.replace(spec, **plan, guidance_embedding="zero" if zero else "w")
        if spec.guidance_embedding == "zero" and not w_embedded:
            network = stock_defaults.with_zero_guidance_embedding(network)
        scheduler = _scheduler(spec.scheduler_class, teacher.scheduler.config, spec.scheduler_config)
    return spec, families.build_pipeline(family, teacher, network, scheduler)


def _files_of(folder: Path, name: str) -> set[str]:
    """The files of entry `name` of `folder` (itself, or every file below it), as paths relative to `folder`."""
    target = folder / name
    if target.is_dir() and not target.is_symlink():
        return {p.relative_to(folder).as_posix() for p in target.rglob("*") if p.is_symlink() or not p.is_dir()}
    return {name} if target.exists() or target.is_symlink() else set()


def _earlier_export(out_dir: Path) -> tuple[set[str], set[str] | None]:
    """(the entries an earlier export wrote in `out_dir`, the files it recorded inside them, or None for a manifest
    from before files were recorded)."""
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            files = data.get("files")
            return set(data.get("entries", [])), None if files is None else set(files)
        except (json.JSONDecodeError, AttributeError):
            return set(), set()
    if is_earlier_export(out_dir):
        return set(LEGACY_ENTRIES), None
    return set(), set()


def foreign_export_files(out_dir: str | Path, names) -> list[str]:
    """The files among the entries `names` of `out_dir` that an export would replace but did not write: a user's
    file put into an earlier export's `unet/`, or a user's same-named entry in a folder given with --overwrite."""
    out_dir = Path(out_dir)
    old, recorded = _earlier_export(out_dir)
    foreign: set[str] = set()
    for name in set(names) | old:
        if "/" in name or name in ("", ".", ".."):
            continue
        if recorded is None and name in old:
            continue  # an export from before files were recorded: its entries are taken as written by it
        foreign |= _files_of(out_dir, name) - (recorded or set())
    return sorted(foreign)


def _foreign_error(out_dir: Path, foreign: list[str]) -> FileExistsError:
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return FileExistsError(
        f"{out_dir}: {shown} {'was' if len(foreign) == 1 else 'were'} not written by sdtoolkit export and would be "
        "replaced; move them away or export into another folder"
    )


def _replace_folder_contents(tmp: Path, out_dir: Path) -> None:
    """Moves the entries of `tmp` into `out_dir`, first removing the entries an earlier export listed in its
    manifest (and same-named ones), then writes the new manifest with every file it wrote. Nothing else in
    `out_dir` is touched; a file of the user's among the entries to replace refuses the export before anything is
    removed (`FileExistsError`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = sorted(item.name for item in tmp.iterdir())
    foreign = foreign_export_files(out_dir, written)
    if foreign:
        shutil.rmtree(tmp)
        raise _foreign_error(out_dir, foreign)
    old, _ = _earlier_export(out_dir)
    for name in sorted(old | set(written)):
        if "/" in name or name in ("", ".", ".."):
            continue
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for name in written:
        (tmp / name).replace(out_dir / name)
    tmp.rmdir()
    files = sorted(set().union(*(_files_of(out_dir, name) for name in written)))
    record = {"written_by": "sdtoolkit export", "entries": written, "files": files}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(record, indent=2) + "\n")


def write_model_card(out_dir: str | Path, spec: ExportSpec, training_config: dict[str, Any]) -> Path:
    """The model card `README.md` (see `sdtoolkit.pipelines.model_card`)."""
    from sdtoolkit.pipelines.model_card import write_model_card as write

    return write(out_dir, spec, training_config)
