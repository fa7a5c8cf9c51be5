"""The one accelerate training loop every distillation method runs in (`Trainer`): data, mixed precision,
gradient accumulation and clipping, checkpoints with exact resume, logging, sample grids, validation, the final
student and its export. The interface a method implements, and the method registry, are in
`sdtoolkit.distill.method`."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.distill.checkpoint import (  # noqa: F401  (latest_checkpoint re-exported)
    CheckpointError,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)
from sdtoolkit.distill.config import (  # noqa: F401  (re-exported: the public home of the loop's names)
    BUILTIN_TEACHER,
    SHAPES_TEACHERS,
    MethodConfig,
    OptimizerSpec,
    TrainConfig,
    config_from_dict,
    shapes_world,
)
from sdtoolkit.distill.method import (  # noqa: F401  (re-exported)
    DistillationMethod,
    TrainingData,
    get_method,
    method_names,
    register_method,
)
from sdtoolkit.models.loading import latent_size, load_teacher_pipeline, teacher_resolution  # noqa: F401
from sdtoolkit.runs import (
    OutputFolderError,
    RunDiverged,
    RunError,
    RunFolder,
    RunInterrupted,
    StopSignals,
    atomic_write_text,
    claim_output,
    inspect_output,
)

CONFIG_NAME = "config.json"
"""The resolved configuration written in every run folder (and accepted back by `--config`)."""
LOSSES_NAME = "losses.jsonl"
"""Per-step logged values (one JSON object per optimizer step) in every run folder."""
RUN_KIND = "distill"
"""The kind of run recorded in the run folder's manifest (`sdtoolkit.runs`)."""
RUN_ENTRIES = (
    CONFIG_NAME,
    LOSSES_NAME,
    "checkpoints",
    "samples",
    "student",
    "export",
    "cache",
    "logs",
    "regression_pairs.safetensors",
)
"""The top-level entries a distillation run writes in its folder."""

__all__ = [
    "BUILTIN_TEACHER",
    "DistillationMethod",
    "MethodConfig",
    "OptimizerSpec",
    "TrainConfig",
    "Trainer",
    "config_from_dict",
    "get_method",
    "method_names",
    "register_method",
]


# ---------------------------------------------------------------------------------------------------- loop


class TrainingProgress:
    """The step counter, saved with every checkpoint (`register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _legacy_run_entries(folder: Path) -> set[str]:
    """The entries of a run folder written before manifests existed (a config.json naming a method)."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(config, dict) or "method" not in config:
        return set()
    return {name for name in RUN_ENTRIES if (folder / name).exists()}


def check_output_folder(config: TrainConfig, resume: bool) -> str:
    """Whether a run may write into `config.output` (`sdtoolkit.runs.inspect_output`): `new`, `resume`,
    `restart` or `overwrite`; raises `OutputFolderError` naming --resume/--overwrite. Writes nothing. Under
    `accelerate launch` only the main process (RANK 0) checks: it alone claims the folder, and a late check on
    another rank would see the main process's own lock."""
    if int(os.environ.get("RANK", "0")) != 0:
        return "resume" if resume else "new"
    return inspect_output(
        config.output,
        RUN_KIND,
        resume=resume,
        overwrite=config.overwrite,
        has_checkpoint=lambda folder: latest_checkpoint(folder) is not None,
        reserved=RUN_ENTRIES,
        legacy=_legacy_run_entries,
    )


def _damaged_checkpoint(checkpoint: Path, error: BaseException) -> str:
    """One line for a checkpoint whose files cannot be read: what failed, and the way on (the previous complete
    checkpoint, once the damaged one is moved away; or a fresh start)."""
    older = sorted(
        (
            c
            for c in checkpoint.parent.glob("step_*")
            if c.name[5:].isdigit() and int(c.name[5:]) < _step_of(checkpoint)
        ),
        key=lambda c: int(c.name[5:]),
    )
    older = [c for c in older if latest_checkpoint(c) == c]
    way = (
        f"delete it to resume from {older[-1].name}, or start anew with --overwrite"
        if older
        else "no older checkpoint is left: start anew with --overwrite"
    )
    return f"--resume: checkpoint {checkpoint} is damaged ({type(error).__name__}: {error}); {way}"


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[5:]) if checkpoint.name[5:].isdigit() else 1 << 62


@torch.no_grad()
def finite_gradients_(params: list[nn.Parameter], posinf: float = 1e5) -> int:
    """In place, NaN gradient entries -> 0 and +-inf -> +-`posinf` (SiD-LSG's `torch.nan_to_num(param.grad, nan=0,
    posinf=1e5, neginf=-1e5, out=param.grad)` over the generator before clipping). One multi-tensor norm finds the
    tensors that hold a non-finite entry (their norm is not finite) and one host read decides; only those tensors get
    the per-entry pass, so a finite update costs no per-tensor Python. Returns how many tensors were mended."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0
    bad = ~torch.isfinite(torch.stack(torch._foreach_norm(grads)))
    if not bool(bad.any()):
        return 0
    mended = 0
    for grad, is_bad in zip(grads, bad.tolist()):
        if is_bad:
            torch.nan_to_num(grad, nan=0.0, posinf=posinf, neginf=-posinf, out=grad)
            mended += 1
    return mended


class Trainer:
    """Runs one method with one `TrainConfig` on accelerate (single process or `accelerate launch`).

    Args:
        method_class: the registered method. method_config: its config. config: the loop's config.
        resolved: the full resolved configuration (written to config.json). resume_from: a checkpoint folder.
        prepare_data: builds (dataset, text cache, prompt list) from (teacher, teacher pipeline, config, method
            class), e.g. `sdtoolkit.cli.distill.prepare_data` (prompt files, image folders, builtin shapes, caches).
        pipeline: the teacher pipeline, already loaded (default: load `config.teacher`).
    """

    def __init__(
        self,
        method_class: type[DistillationMethod],
        method_config: MethodConfig,
        config: TrainConfig,
        resolved: dict[str, Any],
        prepare_data: Callable[..., tuple[Any, Any, list[str]]],
        resume_from: Path | None = None,
        pipeline: Any | None = None,
    ):
        self.method_class = method_class
        self.method_config = method_config
        self.config = config
        self.resolved = resolved
        self.prepare_data = prepare_data
        self.resume_from = resume_from
        self.pipeline = pipeline
        self.output = Path(config.output)
        self.history: list[dict[str, float]] = []
        self.metrics: dict[str, float] = {}
        self.folder: RunFolder | None = None
        self.nonfinite: dict[str, int] = {}  # consecutive skipped updates per optimizer
        self.nonfinite_terms: dict[str, str] = {}  # the non-finite term of each optimizer's last skipped update
        self.stop = StopSignals()

    # ------------------------------------------------------------------ setup

    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import (
            DataLoaderConfiguration,
            DistributedDataParallelKwargs,
            GradientAccumulationPlugin,
            ProjectConfiguration,
        )

        config = self.config
        log_with = None
        if config.log_with == "tensorboard" or (config.log_with == "auto" and _tensorboard_available()):
            log_with = "tensorboard"
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output), logging_dir=str(self.output / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=self.method_class.find_unused_parameters)
            ],
        )

    def run(self) -> Path:
        """Trains, checkpoints, samples, validates, saves the student and exports it; returns the run folder.

        Raises `RunDiverged` (consecutive non-finite updates; nothing exported, the last good checkpoint kept) or
        `RunInterrupted` (Ctrl-C/SIGTERM; a checkpoint written at the step boundary). The run folder's lock is
        released however the run ends."""
        try:
            with self.stop:
                try:
                    progress, dataloader, models = self.setup()
                    if self.stop.requested:  # Ctrl-C while loading: stop before training
                        raise KeyboardInterrupt
                except KeyboardInterrupt:
                    how = "rerun the same command" + (" (with --resume)" if self.resume_from is not None else "")
                    raise RunInterrupted(
                        f"{self.stop.name} before the first step: nothing new to save; {how} to continue",
                        exit_code=self.stop.exit_code,
                    ) from None
                self._loop(progress, dataloader, models)
                if self.stop.requested:  # during the last step's checkpoint: stop before the student is written
                    raise RunInterrupted(
                        f"{self.stop.name} after the last step ({progress.step}; its checkpoint is written): the "
                        f"student and export were not written; `sdtoolkit distill {self.method_class.name} --resume "
                        f"{self.output}` writes them",
                        exit_code=self.stop.exit_code,
                    )

            # 4. the student, its export, the end of the run
            accelerator = self.accelerator
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                self._finish(progress.step)
            accelerator.wait_for_everyone()
            accelerator.end_training()
            return self.output
        finally:
            if self.folder is not None:
                self.folder.release()

    def setup(self) -> tuple[TrainingProgress, Any, list[nn.Module]]:
        """Everything before the first step: accelerator, teacher, data, the method's networks and optimizers,
        resume. Returns (progress, dataloader, prepared models) for `_loop`, or for `train_step` in benchmarks."""
        from accelerate.utils import set_seed

        config = self.config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # 0. the teacher, and whether the method applies to its family: refused before anything is written
        pipeline = self.pipeline if self.pipeline is not None else load_teacher_pipeline(config.teacher)
        self.pipeline = pipeline
        self.method_class.check_teacher(self.method_config, config, pipeline)
        accelerator = self.accelerator = self._accelerator()
        set_seed(config.seed + accelerator.process_index)
        if accelerator.is_main_process:
            self.folder = claim_output(
                self.output,
                RUN_KIND,
                resume=self.resume_from is not None,
                overwrite=config.overwrite,
                has_checkpoint=lambda folder: latest_checkpoint(folder) is not None,
                reserved=RUN_ENTRIES,
                keep=("cache",),
                legacy=_legacy_run_entries,
                announce=accelerator.print,
            )
            atomic_write_text(self.output / CONFIG_NAME, json.dumps(self.resolved, indent=2) + "\n")
        accelerator.wait_for_everyone()

        # 1. teacher and data (the main process builds the caches, the others then read them)
        pipeline.set_progress_bar_config(disable=True)
        pipeline.to(accelerator.device)
        size = latent_size(pipeline, config.resolution)
        teacher = Denoiser.from_pipeline(pipeline).set_latent_size(*size)  # FLUX: its shift at this resolution
        with accelerator.main_process_first():
            dataset, text, self.prompts = self.prepare_data(teacher, pipeline, config, self.method_class)
        data = TrainingData(text=text, device=accelerator.device, latent_size=size)

        # 2. method: networks, optimizers, LR warm-up
        method = self.method = self.method_class(self.method_config, teacher, accelerator, data)
        modules = method.build()
        if config.gradient_checkpointing:
            for module in modules.values():
                if hasattr(module, "enable_gradient_checkpointing"):
                    module.enable_gradient_checkpointing()
        self._speed_switches(teacher, modules)
        self.teacher_offload = None
        if config.teacher_offload:
            from sdtoolkit.core.offload import offload_teacher

            self.teacher_offload = offload_teacher(teacher.base_model, modules, accelerator.device)
        specs = self.specs = method.optimizers()
        optimizers = [self._optimizer(s) for s in specs]
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, _warmup(s.warmup_steps * accelerator.num_processes))
            for s, o in zip(specs, optimizers)
        ]
        dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= config.batch_size * accelerator.num_processes,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
        names = list(modules)
        prepared = accelerator.prepare(*modules.values(), *optimizers, *schedulers, dataloader)
        prepared = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
        n = len(names)
        models = dict(zip(names, prepared[:n]))
        self.optimizers = prepared[n : n + len(specs)]
        self.schedulers = prepared[n + len(specs) : n + 2 * len(specs)]
        dataloader = prepared[-1]
        method.setup(models)

        # 3. checkpointed state beyond models/optimizers/schedulers/RNG: the step counter and the method's extras
        # (`sdtoolkit.distill.checkpoint`: safetensors + JSON, never a pickle)
        progress = TrainingProgress()
        self.models = list(models.values())
        self.checkpoint_objects = [progress, *method.checkpoint_objects()]
        if self.resume_from is not None:
            try:
                load_training_state(
                    accelerator,
                    self.resume_from,
                    self.models,
                    self.optimizers,
                    self.schedulers,
                    self.checkpoint_objects,
                )
            except CheckpointError as error:
                raise OutputFolderError(f"--resume: {error}") from None
            except (OSError, json.JSONDecodeError, SafetensorError) as error:  # a torn file (disk full, power loss)
                raise OutputFolderError(_damaged_checkpoint(Path(self.resume_from), error)) from None
            method.after_load()
            accelerator.print(f"resumed from {self.resume_from} at step {progress.step}")
            if progress.step >= self.config.max_steps:
                accelerator.print(
                    f"the run has already trained its --max-steps {self.config.max_steps}: nothing to train, "
                    "exporting again (raise --max-steps to train more)"
                )
        self._truncate_history(progress.step)
        if accelerator.log_with:
            accelerator.init_trackers("sdtoolkit", config=_flat_scalars(self.resolved))

        return progress, dataloader, list(models.values())

    def _speed_switches(self, teacher: Denoiser, modules: dict[str, nn.Module]) -> None:
        """channels_last and regional compilation of the teacher and the trainable networks (opt-in)."""
        from sdtoolkit.core.denoiser import compile_repeated_blocks

        config = self.config
        networks = {id(teacher.base_model): teacher.base_model}
        networks.update({id(m): m for m in modules.values()})
        for network in networks.values():
            if config.channels_last:
                network.to(memory_format=torch.channels_last)
            if config.compile:
                compile_repeated_blocks(network)

    def _optimizer(self, spec: OptimizerSpec) -> torch.optim.Optimizer:
        """AdamW with `TrainConfig.fused_optimizer`: torch's fused kernel when all of its parameters share one CUDA
        device or the CPU, else the multi-tensor (foreach) one. torch's own default is foreach on CUDA and a
        per-parameter loop on a CPU; on a CPU the fused kernel is 3.4x that loop at Stable Diffusion 1.5's 687 tensors
        (sd15-thin, 8.6M weights: 10.6 vs 36 ms a step, `benchmarks/RESULTS.md`) and agrees with it to rounding (one
        float32 ulp, 1.5e-8 after 5 steps of a tiny UNet). Or bitsandbytes' 8-bit AdamW (`optimizer='adamw8bit'`;
        tensors under 4096 elements keep 32-bit states, bitsandbytes' default)."""
        if self.config.optimizer == "adamw8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(
                spec.params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, eps=spec.eps
            )
        params = spec.parameters()  # `spec.params` may hold param-group dicts
        fast = self.config.fused_optimizer and len(params) > 0
        devices = {p.device for p in params}
        fused = fast and len(devices) == 1 and next(iter(devices)).type in ("cuda", "cpu")
        return torch.optim.AdamW(
            spec.params,
            lr=spec.lr,
            betas=spec.betas,
            weight_decay=spec.weight_decay,
            eps=spec.eps,
            fused=True if fused else None,
            foreach=True if fast and not fused else None,
        )

    # ------------------------------------------------------------------ the loop

    def train_step(
        self, step: int, batches: Iterator[dict[str, Tensor]], models: list[nn.Module]
    ) -> dict[str, Tensor]:
        """One global step: every optimizer due at `step`, over all accumulated micro-batches. Returns the logged
        values as detached device tensors (read back every `log_every` steps).

        The non-finite guard (`TrainConfig.max_nonfinite_updates` > 0): an update whose loss (any micro-batch) or
        gradient norm is not finite is skipped: no optimizer, LR-scheduler, weight or EMA (`after_step`) update;
        it is logged as `<name>/skipped` and counted in `self.nonfinite`. Deciding costs one host sync (a bool)
        per update. Under fp16 an overflowing gradient with a finite loss is left to the GradScaler (which skips
        and lowers its scale) and not counted."""
        accelerator, config, method = self.accelerator, self.config, self.method
        accumulation = config.gradient_accumulation_steps
        guard = config.max_nonfinite_updates > 0
        due = [(s, o, sch) for s, o, sch in zip(self.specs, self.optimizers, self.schedulers) if s.due(step)]
        logs: dict[str, Tensor] = {}
        bad_loss: dict[str, Tensor] = {}
        for _ in range(accumulation):
            batch = next(batches)
            with accelerator.accumulate(*models):
                for spec, optimizer, scheduler in due:
                    out = method.loss(spec.name, batch, step)
                    self._backward(spec, out["loss"])
                    if guard:
                        finite = torch.isfinite(out["loss"].detach()).all()
                        bad_loss[spec.name] = bad_loss[spec.name] | ~finite if spec.name in bad_loss else ~finite
                    if accelerator.sync_gradients:
                        if spec.finite_gradients:
                            finite_gradients_(spec.parameters())
                        max_norm = spec.max_grad_norm if spec.max_grad_norm is not None else config.max_grad_norm
                        clip = bool(max_norm and max_norm > 0)
                        norm = None
                        if clip or guard:  # without clipping, an infinite threshold only measures the norm
                            norm = accelerator.clip_grad_norm_(spec.parameters(), max_norm if clip else float("inf"))
                        if clip:
                            out = {**out, "grad_norm": torch.as_tensor(norm)}
                        skip = guard and self._skip_update(spec.name, out, bad_loss.pop(spec.name), norm, optimizer)
                        if skip:
                            optimizer.zero_grad(set_to_none=True)
                            out = {**out, "skipped": torch.ones(())}
                        else:
                            optimizer.step()
                            scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
                            method.after_step(spec.name, step)
                    for key, value in out.items():
                        value = torch.as_tensor(value).detach().float().mean()
                        scale = 1.0 if key in ("grad_norm", "skipped") else 1.0 / accumulation
                        name = f"{spec.name}/{key}"
                        logs[name] = logs[name] + value * scale if name in logs else value * scale
        for spec, _, scheduler in due:
            logs[f"{spec.name}/lr"] = torch.tensor(scheduler.get_last_lr()[0])
        return logs

    def _skip_update(self, name: str, out: dict[str, Tensor], bad_loss: Tensor, norm: Any, optimizer: Any) -> bool:
        """Whether the non-finite guard skips this update (one host sync); counts consecutive skips per optimizer."""
        accelerator = self.accelerator
        bad_norm = ~torch.isfinite(torch.as_tensor(norm, device=bad_loss.device))
        flags = torch.stack([bad_loss, bad_norm]).float()
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, reduction="sum")
        loss_bad, norm_bad = (bool(v) for v in flags.tolist())
        if not loss_bad and not norm_bad:
            self.nonfinite[name] = 0
            return False
        if not loss_bad and self.config.mixed_precision == "fp16":
            optimizer.step()  # the GradScaler sees the overflow, skips the update and lowers its scale
            return True
        terms = [k for k, v in out.items() if k != "grad_norm" and not torch.isfinite(torch.as_tensor(v)).all()]
        self.nonfinite_terms[name] = f"{name}/{terms[0]}" if terms else f"{name}/grad_norm"
        self.nonfinite[name] = self.nonfinite.get(name, 0) + 1
        return True

    def _diverged(self, step: int) -> RunDiverged | None:
        """The error that stops a run whose updates were skipped `max_nonfinite_updates` times in a row."""
        limit = self.config.max_nonfinite_updates
        name = next((n for n, count in self.nonfinite.items() if limit > 0 and count >= limit), None)
        if name is None:
            return None
        rates = ", ".join(f"{s.name} {s.lr:g}" for s in self.specs)
        checkpoint = latest_checkpoint(self.output)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        return RunDiverged(
            f"step {step}: {self.nonfinite_terms[name]} was not finite in {self.nonfinite[name]} consecutive updates "
            f"(each skipped); training diverged, most likely because a learning rate is too high ({rates}); "
            f"nothing was exported and {kept}: rerun the command with a lower learning rate"
            f"{' and --overwrite' if checkpoint else ''} (a --resume keeps the run's learning rates)"
        )

    def _loop(self, progress: TrainingProgress, dataloader, models: list[nn.Module]) -> None:
        from tqdm.auto import tqdm

        accelerator, config = self.accelerator, self.config
        accumulation = config.gradient_accumulation_steps
        images_per_step = config.batch_size * accelerator.num_processes * accumulation
        batches = self._batches(dataloader, progress.step * accumulation)
        bar = tqdm(
            total=config.max_steps,
            initial=progress.step,
            desc=f"{self.method_class.name}",
            unit="step",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        speed = None
        log_every = config.log_every or (10 if accelerator.device.type == "cuda" else 1)
        pending: list[tuple[int, dict[str, Tensor]]] = []
        started = time.perf_counter()
        while progress.step < config.max_steps:
            step = progress.step
            pending.append((step + 1, self.train_step(step, batches, models)))
            progress.step = step = step + 1
            last = step == config.max_steps
            diverged = self._diverged(step)
            stopping = self._stop_requested(step, log_every)
            skipping = any(self.nonfinite.values())  # no checkpoint while updates are being skipped
            sample_due = config.sample_every > 0 and (step % config.sample_every == 0 or last) and not skipping
            validation_due = self._validation_due(step, last) and not skipping
            checkpoint_due = (step % config.checkpoint_every == 0 or last or stopping) and not skipping
            if diverged is not None:
                self._flush_logs(pending)
                bar.close()
                raise diverged
            if step % log_every == 0 or last or sample_due or validation_due or checkpoint_due or stopping:
                main_loss = self._flush_logs(pending)  # the host sync: the device has finished these steps
                rate = images_per_step * len(pending) / max(time.perf_counter() - started, 1e-9)
                speed = rate if speed is None else 0.9 * speed + 0.1 * rate
                pending, started = [], time.perf_counter()
                bar.set_postfix(loss=f"{main_loss:.4g}", img_s=f"{speed:.1f}", refresh=False)
            bar.update(1)
            if sample_due:
                self._write_samples(step)
            if validation_due:
                self._validate(step)
            if checkpoint_due:
                self._checkpoint(step)
            if stopping:
                bar.close()
                saved = f"checkpoint {latest_checkpoint(self.output)} written" if checkpoint_due else "no checkpoint"
                raise RunInterrupted(
                    f"{self.stop.name} at step {step}: {saved}; continue with "
                    f"`sdtoolkit distill {self.method_class.name} --resume {self.output}`",
                    exit_code=self.stop.exit_code,
                )
        bar.close()

    def _stop_requested(self, step: int, log_every: int) -> bool:
        """Whether Ctrl-C/SIGTERM asked the run to stop at this step boundary. With several processes the request
        is shared at the log flushes (every `log_every` steps) so that all of them stop at the same step."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return self.stop.requested
        if step % log_every:
            return False
        flag = torch.tensor(float(self.stop.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item())

    def _batches(self, dataloader, consumed: int) -> Iterator[dict[str, Tensor]]:
        """Endless micro-batches starting after the first `consumed` ones: epoch e is shuffled by seed + e
        (accelerate's seedable sampler), and a resume skips into its epoch with `skip_first_batches`."""
        per_epoch = len(dataloader)
        if per_epoch == 0:
            raise ValueError("the training data yield no batch; add data or lower --batch-size")
        epoch, skip = divmod(consumed, per_epoch)
        while True:
            dataloader.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            if skip and hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            yield from loader
            epoch, skip = epoch + 1, 0

    def _backward(self, spec: OptimizerSpec, loss: Tensor) -> None:
        """`accelerator.backward(loss)` with the other optimizers' accumulated gradients set aside, so that only
        `spec`'s parameters accumulate this loss's gradient."""
        own = {id(p) for p in spec.parameters()}
        others = [p for s in self.specs if s is not spec for p in s.parameters() if id(p) not in own]
        saved = [p.grad for p in others]
        for p in others:
            p.grad = None
        self.accelerator.backward(loss)
        for p, grad in zip(others, saved):
            p.grad = grad
        if self.teacher_offload is not None:  # a teacher forward with grad kept its weights for this backward
            self.teacher_offload.offload()

    # ------------------------------------------------------------------ logging, samples, validation

    def _truncate_history(self, step: int) -> None:
        """Keeps the logged steps up to `step` (the resumed checkpoint's) in losses.jsonl, rewritten atomically; a
        torn last line (the process was killed while writing it) is dropped with a message."""
        path = self.output / LOSSES_NAME
        if not self.accelerator.is_main_process or not path.is_file():
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        entries = []
        for number, line in enumerate(lines, 1):
            try:
                entries.append((json.loads(line)["step"], line))
            except (ValueError, KeyError, TypeError):
                if number < len(lines):
                    raise RunError(f"{path}: line {number} is not a JSON log entry; repair or remove it") from None
                self.accelerator.print(f"{path}: dropped a torn last line (the run was stopped while writing it)")
        kept = [line for logged, line in entries if logged <= step]
        if len(kept) != len(lines):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _flush_logs(self, pending: list[tuple[int, dict[str, Tensor]]]) -> float:
        """Reads the pending steps' values back in ONE device-to-host copy, logs each step, returns the last loss."""
        accelerator = self.accelerator
        keys = [(step, key) for step, logs in pending for key in logs]
        values = torch.stack([logs[key].float().to(accelerator.device) for _, logs in pending for key in logs])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        numbers = values.tolist()
        per_step: dict[int, dict[str, float]] = {}
        for (step, key), number in zip(keys, numbers):
            per_step.setdefault(step, {})[key] = number
        for step, logs in per_step.items():
            self._log(step, logs)
        last = per_step[max(per_step)]
        return next((v for k, v in last.items() if k.endswith("/loss")), float("nan"))

    def _log(self, step: int, logs: dict[str, float]) -> None:
        accelerator = self.accelerator
        if accelerator.log_with:
            accelerator.log(logs, step=step)
        if accelerator.is_main_process:
            with (self.output / LOSSES_NAME).open("a") as handle:
                handle.write(json.dumps({"step": step, **logs}) + "\n")

    @torch.no_grad()
    def _sample_images(self, prompt_indices: list[int], seed: int) -> Tensor:
        """Images in [0, 1] `[len(prompt_indices), 3, H, W]` from the student, noise from `seed` only."""
        data = self.method.training_data
        cond = data.conditioning(prompt_indices)
        uncond = data.uncond(len(prompt_indices))
        generator = torch.Generator(device=self.accelerator.device).manual_seed(seed)
        latents = self.method.sample(cond, uncond, generator)
        images = self.method.teacher.decode(latents.to(self.method.teacher.vae.dtype))
        return ((images.float() + 1) / 2).clamp(0, 1).cpu()

    def _write_samples(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        from PIL import Image

        count = min(self.config.sample_prompts, len(self.prompts))
        rows = [i * len(self.prompts) // count for i in range(count)]
        columns = [self._sample_images(rows, self.config.seed + 1000 + j) for j in range(self.config.sample_seeds)]
        grid = torch.stack(columns, dim=1)  # [rows, columns, 3, H, W]
        r, c, _, h, w = grid.shape
        grid = grid.permute(0, 3, 1, 4, 2).reshape(r * h, c * w, 3)
        folder = self.output / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.numpy() * 255).round().astype("uint8")).save(folder / f"step_{step:06d}.png")
        (folder / "prompts.txt").write_text("\n".join(self.prompts[i] for i in rows) + "\n")
        self.method.write_samples(folder, step)

    def _validation_due(self, step: int, last: bool) -> bool:
        every = self.config.validate_every
        if every < 0 or not shapes_world(self.config.teacher):
            return False
        return last or (every > 0 and step % every == 0)

    def _validate(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        try:
            from sdtoolkit.eval import Evaluator
        except ImportError:  # the evaluator is optional at training time
            self.accelerator.print("validation skipped: sdtoolkit.eval.Evaluator is not available")
            return
        prompts = self.prompts
        count = min(self.config.validation_prompts, len(prompts))
        indices = [round(i * len(prompts) / count) for i in range(count)]
        chunks = [indices[i : i + 32] for i in range(0, count, 32)]
        # one seed per chunk: with a shared seed, prompts 32 apart would share their noise (32 distinct noises)
        seeds = [self.config.seed + 7 + 1009 * k for k in range(len(chunks))]
        images = torch.cat([self._sample_images(chunk, seed) for chunk, seed in zip(chunks, seeds)])
        scores = Evaluator.load().score(images, [prompts[i] for i in indices])
        metrics = _scalar_metrics(scores)
        self.metrics = {f"val/{k}": v for k, v in metrics.items()}
        self._log(step, self.metrics)
        self.accelerator.print(f"step {step} validation: {metrics}")

    # ------------------------------------------------------------------ checkpoints and the end

    def _checkpoint(self, step: int) -> None:
        """A complete checkpoint in `checkpoints/step_N` (safetensors + JSON, renamed into place when complete);
        then only the newest `checkpoints_total_limit` are kept."""
        accelerator = self.accelerator
        root = self.output / "checkpoints"
        save_training_state(
            accelerator,
            root / f"step_{step:06d}",
            self.models,
            self.optimizers,
            self.schedulers,
            self.checkpoint_objects,
            {"step": step, "method": self.method_class.name},
        )
        if accelerator.is_main_process:
            import shutil

            complete = (p for p in root.glob("step_*") if p.name[5:].isdigit() and (p / "progress.json").is_file())
            kept = sorted(complete, key=lambda p: int(p.name[5:]))
            for old in kept[: max(0, len(kept) - max(1, self.config.checkpoints_total_limit))]:
                shutil.rmtree(old, ignore_errors=True)
            if self.folder is not None:
                self.folder.sync()
        accelerator.wait_for_everyone()

    def _finish(self, step: int) -> None:
        from sdtoolkit.pipelines.export import export_pipeline

        student = self.output / "student"
        if self.folder is not None:  # only a student/ or export/ the toolkit wrote is replaced
            self.folder.remove("student")
            if self.config.export:
                self.folder.remove("export")
        student.mkdir(parents=True, exist_ok=True)
        spec = self.method.save_student(student)
        if "family" in {f.name for f in dataclasses.fields(spec)}:  # the teacher's family (sd, sdxl, sd3, ...)
            spec.family = self.method.teacher.family.name
        spec.trained_steps = step
        spec.teacher = self.config.teacher
        spec.metrics = dict(self.metrics)
        spec.save(student)
        if self.config.export:
            export_pipeline(self.output / "export", self.pipeline, student, spec, self.resolved)


def _warmup(steps: int) -> Callable[[int], float]:
    return lambda current: 1.0 if steps <= 0 else min(1.0, (current + 1) / steps)


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def _scalar_metrics(scores: Any) -> dict[str, float]:
    """Numbers out of whatever the evaluator returns (a number, a dict, or a dataclass)."""
    if isinstance(scores, (int, float)):
        return {"score": float(scores)}
    if dataclasses.is_dataclass(scores):
        scores = dataclasses.asdict(scores)
    if isinstance(scores, dict):
        return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def _flat_scalars(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
    return out
