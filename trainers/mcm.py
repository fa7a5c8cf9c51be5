"""Motion Consistency Model (MCM, Zhai et al. 2024): LCM-style consistency distillation of an AnimateDiff video
teacher (`UNetMotionModel`, `sdtoolkit.core.families.animatediff`) to a few-step video student, in the shared loop.

One step (`MCM.loss`), after LCM's Algorithm 1 (`sdtoolkit.trainers.lcm.consistency_step`) with MCM's changes:

1. clip latents z `[B, C, F, h, w]` of procedural clips (`sdtoolkit.data.clips`, encoded once by the teacher VAE);
2. mixed trajectory (MCM Sec. 3.3, `--cd_pred_x0_portion 0.5`): a fraction of the batch replaces z by the student's
   own one-step prediction from pure noise (no gradient; MCM draws the whole batch with that probability, here
   each clip, and only the chosen clips are generated), so the consistency loss also runs on the student's
   trajectories;
3. the LCM step: t_{n+k} on the 50-step DDIM grid, teacher guided with w ~ U[5, 15] (CFG in the target, diffusers'
   scale w + 1), one DDIM step, online f_theta and EMA target f_theta^- (`timestep_scaling` 4);
4. the consistency loss on a motion representation (MCM Sec. 3.2, Eq. 4): d(phi(f_theta), phi^-(f_theta^-)) with
   phi = `raw` (the latents), `diff` (frame differences x_{f+1} - x_f) or `learn` (MCM's spatial head: a per-frame
   residual head on the latents, zero-initialised so that it starts as `raw`; its EMA copy for the target);
   d = pseudo-Huber (MCM: Huber);
5. the frame-quality adversarial loss (MCM Sec. 3.2, Eq. 5): a small discriminator on latent frames, real = the
   still images of the image set (the shapes renders play MCM's high-quality image set), fake = 2 frames per clip
   of the student's consistency output f_theta (TSN-style sampling); hinge loss, R1 on real frames. As in MCM the
   critic's update follows the student's and reuses that step's f_theta (detached): no further UNet pass.

The student is a copy of the teacher's UNetMotionModel whose motion modules train (`--train motion`, MCM's
AnimateDiff setting) or all of it (`--train all`). It exports as a stock `AnimateDiffPipeline` with `LCMScheduler`
(`timestep_scaling` as trained) at the trained step count.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sdtoolkit.trainers.lcm import LCMConfig, consistency_step
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SCHEDULE_STEPS, SEED, Range
from sdtoolkit.core.consistency import consistency_distance
from sdtoolkit.core.denoiser import Conditioning
from sdtoolkit.core.sampling import lcm_sample
from sdtoolkit.distill.config import MethodConfig, OptimizerSpec, TrainConfig
from sdtoolkit.distill.data import sample_latents
from sdtoolkit.distill.method import DistillationMethod, register_method
from sdtoolkit.models.loading import teacher_network

MOTION_TARGETS = ("raw", "diff", "learn")


@dataclass
class MCMConfig(MethodConfig):
    """Motion consistency distillation; defaults follow MCM (Zhai et al. 2024, yhZhai/mcm `args.py`)."""

    BOUNDS = {
        "num_ddim_timesteps": SCHEDULE_STEPS,  # checked against the teacher's scheduler once it is loaded
        "lr": POSITIVE,
        "discriminator_lr": POSITIVE,
        "w_min": NON_NEGATIVE,
        "w_max": NON_NEGATIVE,
        "gan_frames": AT_LEAST_1,
        "num_frames": Range(2),
        "num_clips": AT_LEAST_1,
        "clip_seed": SEED,
        "lr_warmup_steps": NON_NEGATIVE,
        "ema_decay": FRACTION,
        "huber_c": POSITIVE,
        "sigma_data": POSITIVE,
        "timestep_scaling": POSITIVE,
        "head_channels": AT_LEAST_1,
        "head_layers": AT_LEAST_1,
        "head_kernel_size": AT_LEAST_1,
        "cd_pred_x0_portion": FRACTION,
        "adversarial_weight": NON_NEGATIVE,
        "r1_weight": NON_NEGATIVE,
        "sample_steps": AT_LEAST_1,
    }

    num_frames: int = 16
    """Frames per training clip (must not exceed the motion modules' motion_max_seq_length)."""
    num_clips: int = 256
    """Procedural training clips rendered and encoded once at the start (`sdtoolkit.data.clips`)."""
    clip_seed: int = 1
    """Seed of the procedural clips."""
    train: str = "motion"
    """Trainable part of the student: `motion` (the motion modules, MCM's AnimateDiff setting) or `all`."""
    lr: float = 5e-6
    """AdamW learning rate of the student (MCM: 5e-6)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    num_ddim_timesteps: int = 50
    """DDIM solver grid (MCM: 50)."""
    w_min: float = 5.0
    """Smallest guidance w (MCM: w ~ U[5, 15]); the teacher runs at diffusers' scale w + 1 (CFG in the target)."""
    w_max: float = 15.0
    """Largest guidance w."""
    ema_decay: float = 0.95
    """EMA decay of the target network and target head (LCM/MCM: 0.95)."""
    loss_type: str = "huber"
    """`huber` (pseudo-Huber, MCM) or `l2`."""
    huber_c: float = 0.001
    """c of the pseudo-Huber loss."""
    sigma_data: float = 0.5
    """sigma_data of the boundary scalings."""
    timestep_scaling: float = 4.0
    """Timestep scaling of c_skip, c_out (MCM: 4; exported as LCMScheduler's timestep_scaling)."""
    motion_target: str = "learn"
    """Motion representation of the consistency loss: `raw`, `diff` (frame differences) or `learn` (MCM's
    learned spatial head on the latents with an EMA target head)."""
    head_channels: int = 64
    """Hidden channels of the learned spatial head (MCM: 64; a multiple of its 32 GroupNorm groups)."""
    head_layers: int = 2
    """Layers of the learned spatial head, its output convolution included (MCM `learn`: 2, `hlearn`: 5)."""
    head_kernel_size: int = 1
    """Kernel size of the head's hidden convolutions (MCM `learn`: 1, `hlearn`: 3; odd)."""
    cd_pred_x0_portion: float = 0.5
    """Fraction of the batch on the student's own trajectory (mixed trajectory; MCM: 0.5)."""
    adversarial_weight: float = 1.0
    """Weight of the frame-quality adversarial loss (MCM: 1; 0 turns it off)."""
    discriminator_lr: float = 5e-5
    """Learning rate of the frame discriminator (MCM: 5e-5)."""
    r1_weight: float = 1e-5
    """R1 penalty on real frames (MCM: 1e-5)."""
    gan_frames: int = 2
    """Frames per clip the discriminator sees (MCM: 2, TSN sampling)."""
    sample_steps: int = 4
    """Sampling steps of grids and of the exported default (MCM: 4)."""


# ---------------------------------------------------------------------------------------------------- the maths


def frame_difference(x: Tensor) -> Tensor:
    """x_{f+1} - x_f over the frame axis of `[B, C, F, H, W]` (MCM's `diff` target)."""
    return x[:, :, 1:] - x[:, :, :-1]


class SpatialHead(nn.Module):
    """MCM's learned motion representation (yhZhai/mcm `models/spatial_head.py`), applied frame by frame to latents
    `[B, C, F, H, W]`: x + conv_out(layers(SiLU(x))), each hidden layer conv (kernel k) -> GroupNorm(32) -> SiLU,
    conv_out a zero-initialised 1x1 convolution, so the head starts as the identity (the `raw` target) and learns
    which part of the latents the consistency loss weighs."""

    GROUPS = 32

    def __init__(self, channels: int, hidden: int = 64, layers: int = 2, kernel_size: int = 1):
        super().__init__()
        if layers < 2 or hidden % self.GROUPS or kernel_size % 2 == 0:
            raise ValueError(
                f"SpatialHead(layers={layers}, hidden={hidden}, kernel_size={kernel_size}): layers >= 2, hidden a "
                f"multiple of {self.GROUPS}, an odd kernel size"
            )
        pad = (kernel_size - 1) // 2
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels if i == 0 else hidden, hidden, kernel_size, padding=pad),
                nn.GroupNorm(self.GROUPS, hidden),
                nn.SiLU(),
            )
            for i in range(layers - 1)
        )
        self.conv_out = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        y = F.silu(frames.float())
        for layer in self.layers:
            y = layer(y)
        y = self.conv_out(y).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        return x + y.to(x.dtype)


def motion_representation(x: Tensor, kind: str, head: nn.Module | None = None) -> Tensor:
    """phi(x) of MCM's consistency loss (Sec. 3.2): `raw` x, `diff` frame differences, `learn` head(x)."""
    if kind == "raw":
        return x
    if kind == "diff":
        return frame_difference(x)
    if kind == "learn":
        return head(x)
    raise ValueError(f"motion_target={kind!r}; choose one of {', '.join(MOTION_TARGETS)}")


def motion_consistency_loss(
    online: Tensor, target: Tensor, kind: str, loss_type: str, huber_c: float, head=None, target_head=None
) -> Tensor:
    """MCM Eq. 4: d(phi(f_theta(x_{t_{n+k}})), phi^-(f_theta^-(x_hat_{t_n}))); phi^- uses the EMA head."""
    with torch.no_grad():
        goal = motion_representation(target, kind, target_head)
    return consistency_distance(motion_representation(online, kind, head), goal, loss_type, huber_c)


def sample_frames(x: Tensor, count: int) -> Tensor:
    """TSN-style: one random frame from each of `count` equal segments of every clip -> `[B count, C, H, W]`."""
    b, c, f = x.shape[:3]
    edges = torch.linspace(0, f, count + 1)
    picks = [int(lo) + int(torch.randint(max(int(hi) - int(lo), 1), (1,))) for lo, hi in zip(edges[:-1], edges[1:])]
    return x[:, :, picks].permute(0, 2, 1, 3, 4).reshape(b * count, c, *x.shape[3:])


class FrameDiscriminator(nn.Module):
    """A small convolutional critic on latent frames `[N, C, H, W]` (MCM's frame-quality discriminator; MCM uses
    DINOv2 features of decoded frames, here the latents themselves, as fits the CPU-sized shapes teacher)."""

    def __init__(self, channels: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float()).mean((1, 2, 3))


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def r1_penalty(discriminator: nn.Module, real: Tensor) -> Tensor:
    """R1 = E ||grad_x D(x)||^2 on real frames (Mescheder et al. 2018)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# ---------------------------------------------------------------------------------------------------- the method


@register_method
class MCM(DistillationMethod):
    """Motion consistency distillation of an AnimateDiff teacher."""

    name = "mcm"
    config_class = MCMConfig
    data = "images"
    description = (
        "Motion Consistency Model (Zhai et al. 2024): LCM-style consistency distillation of an AnimateDiff video "
        "teacher with the loss on a motion representation (learned head with EMA target, frame differences or raw), "
        "a frame-quality adversarial loss against still images (--data: the image set), and mixed trajectories. "
        "Exports a stock AnimateDiffPipeline with LCMScheduler."
    )
    config: MCMConfig

    @classmethod
    def check_config(cls, config: MCMConfig, train: TrainConfig) -> None:
        if config.motion_target not in MOTION_TARGETS:
            raise ValueError(f"--motion-target {config.motion_target!r}; choose one of {', '.join(MOTION_TARGETS)}")
        if config.train not in ("motion", "all"):
            raise ValueError(f"--train {config.train!r}; choose motion or all")
        if config.motion_target == "learn" and (
            config.head_layers < 2 or config.head_channels % SpatialHead.GROUPS or config.head_kernel_size % 2 == 0
        ):
            raise ValueError(
                f"--head-layers {config.head_layers}, --head-channels {config.head_channels}, --head-kernel-size "
                f"{config.head_kernel_size}: the learned head needs at least 2 layers, channels a multiple of "
                f"{SpatialHead.GROUPS} and an odd kernel size"
            )
        if config.loss_type not in ("l2", "huber"):
            raise ValueError(f"--loss-type {config.loss_type!r}; choose l2 or huber")
        if not 1 <= config.sample_steps <= config.num_ddim_timesteps:
            raise ValueError(f"--sample-steps {config.sample_steps} must lie in [1, {config.num_ddim_timesteps}]")
        if not 0 <= config.w_min <= config.w_max:
            raise ValueError(
                f"guidance range [--w-min {config.w_min}, --w-max {config.w_max}]: need 0 <= w_min <= w_max"
            )
        if not 1 <= config.gan_frames <= config.num_frames:
            raise ValueError(
                f"--gan-frames {config.gan_frames}: the frames shown to the discriminator are drawn from each clip's "
                f"--num-frames {config.num_frames}; choose 1 to {config.num_frames}"
            )

    @classmethod
    def check_teacher(cls, config: MCMConfig, train: TrainConfig, pipeline: Any) -> None:
        network = teacher_network(pipeline)
        if type(network).__name__ != "UNetMotionModel":
            raise ValueError(
                f"mcm distils a video teacher (AnimateDiffPipeline with a UNetMotionModel); {train.teacher} is a "
                f"{type(pipeline).__name__} with a {type(network).__name__}: train one with "
                "`sdtoolkit train-video-teacher`, or use `sdtoolkit distill lcm` for image teachers"
            )
        limit = int(network.config.get("motion_max_seq_length", 32))
        if config.num_frames > limit:
            raise ValueError(
                f"--num-frames {config.num_frames}: the teacher's motion modules take at most {limit} frames "
                "(motion_max_seq_length); pass --num-frames <= " + str(limit)
            )

    # ------------------------------------------------------------------ networks and data

    def _lcm_config(self) -> LCMConfig:
        c = self.config
        return LCMConfig(
            num_ddim_timesteps=c.num_ddim_timesteps,
            loss_type=c.loss_type,
            huber_c=c.huber_c,
            sigma_data=c.sigma_data,
            timestep_scaling=c.timestep_scaling,
        )

    def _clips(self) -> None:
        """Renders, encodes and text-encodes the procedural clips (deterministic: rebuilt identically on resume)."""
        from sdtoolkit.data.clips import ClipConfig, ClipDataset
        from sdtoolkit.models.shapes_video import encode_clips

        teacher, c = self.teacher, self.config
        h, w = self.latent_shape(1)[2:]
        factor = 2 ** (len(teacher.vae.config.block_out_channels) - 1)
        clips = ClipDataset(c.num_clips, c.clip_seed, ClipConfig(c.num_frames, h * factor))
        frames = torch.stack([clips[i]["pixel_values"] for i in range(len(clips))])
        self.clip_latents = encode_clips(teacher.pipeline, frames).to(self.accelerator.device)
        self.clip_prompts = clips.captions
        cond, _ = teacher.encode_prompt(self.clip_prompts)
        self.clip_cond = cond.to(self.accelerator.device)

    def build(self) -> dict[str, nn.Module]:
        c, teacher, device = self.config, self.teacher, self.accelerator.device
        self._clips()
        student = copy.deepcopy(teacher.base_model).float()
        teacher.freeze()
        student.requires_grad_(c.train == "all")
        if c.train == "motion":
            for name, parameter in student.named_parameters():
                if "motion_modules" in name:
                    parameter.requires_grad_(True)
        student.to(device).train()
        modules: dict[str, nn.Module] = {"student": student}
        channels = teacher.latent_channels
        if c.motion_target == "learn":
            modules["head"] = SpatialHead(channels, c.head_channels, c.head_layers, c.head_kernel_size).to(device)
        if c.adversarial_weight > 0:
            modules["discriminator"] = FrameDiscriminator(channels).to(device)
        from sdtoolkit.core.ema import EMA, ema_target

        self.ema = EMA(student, decay=c.ema_decay)
        self.target_unet = ema_target(student)
        if "head" in modules:
            self.head_ema = EMA(modules["head"], decay=c.ema_decay)
            self.target_head = ema_target(modules["head"])
        self.built = modules
        return modules

    def optimizers(self) -> list[OptimizerSpec]:
        c = self.config
        params = [p for p in self.built["student"].parameters() if p.requires_grad]
        if "head" in self.built:
            params += list(self.built["head"].parameters())
        specs = [OptimizerSpec("student", params, lr=c.lr, warmup_steps=c.lr_warmup_steps)]
        if "discriminator" in self.built:  # runs second, as MCM's: judges the frames the student step just made
            specs.append(
                OptimizerSpec("discriminator", list(self.built["discriminator"].parameters()), lr=c.discriminator_lr)
            )
        return specs

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        self.student = self.teacher.with_model(models["student"])
        self.target_unet.to(self.accelerator.device)
        self.target = self.teacher.with_model(self.target_unet)
        self.sampler = self.target

    # ------------------------------------------------------------------ the step

    def _one_step(self, noise: Tensor, cond: Conditioning) -> Tensor:
        """The student's one-step prediction from pure noise at the first sampling timestep (mixed trajectory)."""
        times = self.teacher.schedule.student_timesteps(1, self.config.num_ddim_timesteps)
        t = torch.full((noise.shape[0],), float(times[0]), device=noise.device)
        return self.student.predict(noise, t, cond).x0

    def _draw(self) -> tuple[Tensor, Conditioning, Tensor]:
        """A batch of clip latents with their conditioning, mixed trajectory applied (the clips on the student's
        own trajectory are chosen on the host, so choosing them costs no device sync, and only they are generated)."""
        c, device = self.config, self.accelerator.device
        index = torch.randint(len(self.clip_prompts), (self.batch_size,))
        x0 = self.clip_latents[index.to(device)]
        cond = Conditioning(self.clip_cond.encoder_hidden_states[index.to(device)])
        own = torch.rand(self.batch_size) < c.cd_pred_x0_portion
        if own.any():
            chosen = own.nonzero().squeeze(1).to(device)
            with torch.no_grad():
                noise = torch.randn_like(x0[chosen])
                generated = self._one_step(noise, Conditioning(cond.encoder_hidden_states[chosen]))
            x0 = x0.index_copy(0, chosen, generated.to(x0.dtype))
        return x0, cond, own

    def _fake_frames(self) -> Tensor:
        """The critic's fake frames: the ones the student step of this micro-batch made (MCM), else (a critic
        update without a student update) frames of a fresh one-step generation."""
        fake = getattr(self, "_last_fake", None)
        self._last_fake = None
        if fake is not None:
            return fake
        index = torch.randint(len(self.clip_prompts), (self.batch_size,))
        x0 = self.clip_latents[index.to(self.accelerator.device)]
        cond = Conditioning(self.clip_cond.encoder_hidden_states[index.to(self.accelerator.device)])
        with torch.no_grad():
            return sample_frames(self._one_step(torch.randn_like(x0), cond), self.config.gan_frames)

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        c, device = self.config, self.accelerator.device
        self.batch_size = batch["prompt_index"].shape[0]
        discriminator = self.models.get("discriminator")
        if name == "discriminator":
            real = sample_latents({k: v.to(device) for k, v in batch.items() if k.startswith("latent_")})
            d_loss = hinge_discriminator_loss(discriminator(real), discriminator(self._fake_frames()))
            r1 = r1_penalty(discriminator, real) if c.r1_weight > 0 else torch.zeros((), device=device)
            return {"loss": d_loss + c.r1_weight * r1, "r1": r1.detach()}
        x0, cond, own = self._draw()
        uncond = self.training_data.uncond(self.batch_size)
        noise = torch.randn_like(x0)
        index = torch.randint(0, c.num_ddim_timesteps, (self.batch_size,), device=device)
        w = (c.w_max - c.w_min) * torch.rand(self.batch_size, device=device) + c.w_min
        out = consistency_step(
            student=self.student,
            teacher=self.teacher,
            target=self.target,
            x0=x0,
            noise=noise,
            index=index,
            w=w,
            cond=cond,
            uncond=uncond,
            config=self._lcm_config(),
        )
        head = self.models.get("head")
        motion = motion_consistency_loss(
            out.online, out.target, c.motion_target, c.loss_type, c.huber_c, head, getattr(self, "target_head", None)
        )
        logs = {"motion_consistency": motion.detach(), "own_trajectory": own.float().mean()}
        loss = motion
        if discriminator is not None:
            fake = sample_frames(out.online, c.gan_frames)
            g_loss = -discriminator(fake).mean()
            loss = loss + c.adversarial_weight * g_loss
            logs["g_loss"] = g_loss.detach()
            self._last_fake = fake.detach()
        return {"loss": loss, **logs}

    def after_step(self, name: str, step: int) -> None:
        if name != "student":
            return
        self.ema.update(self.unwrapped("student"))
        self.ema.copy_to(self.target_unet)
        if "head" in self.models:
            self.head_ema.update(self.unwrapped("head"))
            self.head_ema.copy_to(self.target_head)

    def checkpoint_objects(self) -> list[Any]:
        return [self.ema, *([self.head_ema] if hasattr(self, "head_ema") else [])]

    def after_load(self) -> None:
        self.ema.copy_to(self.target_unet)
        if hasattr(self, "head_ema"):
            self.head_ema.copy_to(self.target_head)

    # ------------------------------------------------------------------ sampling and saving

    def sample_clip(self, cond: Conditioning, generator: torch.Generator) -> Tensor:
        """Video latents `[B, C, F, h, w]` of the EMA student at `sample_steps` LCM steps (`LCMScheduler`'s chain)."""
        b = cond.batch_size
        shape = (b, self.teacher.latent_channels, self.config.num_frames, *self.latent_shape(1)[2:])
        noise = torch.randn(shape, generator=generator, device=self.accelerator.device, dtype=torch.float32)
        times = self.sampler.schedule.student_timesteps(self.config.sample_steps, self.config.num_ddim_timesteps)
        c = self.config
        return lcm_sample(self.sampler, noise, cond, times, generator, None, c.sigma_data, c.timestep_scaling)

    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        """The loop's sample grid: each clip's frames as rows of latents `[B F, C, h, w]` (a film strip)."""
        clip = self.sample_clip(cond, generator)
        return clip.permute(0, 2, 1, 3, 4).reshape(-1, *clip.shape[1:2], *clip.shape[3:])

    def write_gif(self, path: Path, prompts: list[str], seed: int) -> Path:
        """Sample clips of the EMA student for `prompts`, one GIF (clips side by side)."""
        from PIL import Image

        cond, _ = self.teacher.encode_prompt(prompts)
        generator = torch.Generator(device=self.accelerator.device).manual_seed(seed)
        with torch.no_grad():
            clip = self.sample_clip(cond.to(self.accelerator.device), generator)
            b, ch, f, h, w = clip.shape
            frames = self.teacher.decode(clip.permute(0, 2, 1, 3, 4).reshape(b * f, ch, h, w))
        frames = ((frames.float() + 1) / 2).clamp(0, 1).reshape(b, f, 3, *frames.shape[-2:])
        strip = frames.permute(1, 3, 0, 4, 2).reshape(f, frames.shape[-2], -1, 3)
        images = [Image.fromarray((s.cpu().numpy() * 255).round().astype("uint8")) for s in strip]
        path.parent.mkdir(parents=True, exist_ok=True)
        images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)
        return path

    def write_samples(self, folder: Path, step: int) -> None:
        """Four clips of the EMA student side by side as `folder/step_N.gif` (the grid shows first frames only)."""
        self.write_gif(folder / f"step_{step:06d}.gif", self.clip_prompts[:4], seed=1234)

    def save_student(self, folder: Path) -> Any:
        from sdtoolkit.pipelines.export import ExportSpec

        c = self.config
        network = copy.deepcopy(self.target_unet).float()
        self.ema.copy_to(network)
        network.save_pretrained(folder / "unet", safe_serialization=True)
        return ExportSpec(
            method=self.name,
            student="unet",
            pipeline_class="AnimateDiffPipeline",
            scheduler_class="LCMScheduler",
            num_inference_steps=c.sample_steps,
            guidance_scale=1.0,
            scheduler_config={
                "original_inference_steps": c.num_ddim_timesteps,
                "timestep_scaling": c.timestep_scaling,
                "clip_sample": False,
                "thresholding": False,
            },
            call_kwargs={"num_frames": c.num_frames},
            notes=(
                f"Motion consistency model (Zhai et al. 2024): {c.motion_target} motion target, teacher guidance "
                f"w ~ U[{c.w_min}, {c.w_max}] distilled in (CFG in the target; call with guidance_scale 1)."
            ),
        )
