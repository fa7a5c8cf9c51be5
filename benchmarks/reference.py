"""Plain-diffusers references: the same work as sdtoolkit's paths, written the way diffusers' example scripts do it.

Each reference follows its anchor line by line where it matters for speed:
- `ReferenceLCMStep`: `examples/consistency_distillation/train_lcm_distill_sd_wds.py` (diffusers): fp32 student
  under bf16 autocast, teacher weights cast to the weight dtype, teacher cond and uncond as TWO forwards, target
  UNet kept in fp32 and run under autocast, `torch.optim.AdamW` with default settings, a per-parameter python EMA
  loop, gradient clipping every step, `loss.item()` every step.
- `ReferenceSDSIteration`: stable-dreamfusion / threestudio's SDS: render -> VAE encode with gradient -> noise ->
  UNet on [uncond, cond] under autocast -> CFG -> w(t)(eps_hat - eps) injected through an MSE surrogate.
  `ReferenceSDSNeRFIteration` runs it on a render of sdtoolkit's NeRF (the NeRF is ours on both sides of the
  comparison: only the guidance is the plain-diffusers one), `ReferenceVSDNeRFIteration` is threestudio's
  `stable-diffusion-vsd-guidance`: a separate LoRA copy of the UNet with a camera class embedding as fake score.
- `ReferenceSampler`: a stock `StableDiffusionPipeline` call (the exported pipeline's users run exactly this).
- `reference_forward`: `unet(x, t, encoder_hidden_states=...)` under autocast, as diffusers pipelines run it.

Nothing here imports sdtoolkit's Denoiser: the point is an independent baseline.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from benchmarks.components import Components


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def reference_forward(comps: Components, mixed_precision: bool):
    """One UNet forward at batch B, as a diffusers pipeline runs it (weights in the weight dtype)."""
    weight_dtype = torch.bfloat16 if mixed_precision else torch.float32
    unet = comps.unet().to(weight_dtype).eval().requires_grad_(False)
    x, text = comps.latents().to(weight_dtype), comps.text().to(weight_dtype)
    t = torch.full((comps.batch_size,), 500, device=comps.device)

    @torch.no_grad()
    def run():
        return unet(x, t, encoder_hidden_states=text).sample

    return run


def ddim_solver(comps: Components, num_ddim_timesteps: int):
    """The LCM scripts' DDIM solver: sqrt(alpha_bar), sqrt(1 - alpha_bar), the grid [k - 1, 2k - 1, ..., T - 1], k."""
    scheduler = comps.scheduler()
    alphas_cumprod = scheduler.alphas_cumprod.to(comps.device)
    step_ratio = scheduler.config.num_train_timesteps // num_ddim_timesteps
    grid = (torch.arange(1, num_ddim_timesteps + 1, device=comps.device) * step_ratio - 1).long()
    return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt(), grid, step_ratio


def boundary_scalings(t, ndim: int, timestep_scaling: float, sigma_data: float = 0.5):
    """The LCM scripts' `scalings_for_boundary_conditions`, shaped to broadcast over `ndim` dimensions."""
    scaled = t * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    shape = (-1,) + (1,) * (ndim - 1)
    return c_skip.view(shape), c_out.view(shape)


class ReferenceLCMStep:
    """One LCM distillation step (Luo et al. 2023, Algorithm 1) as diffusers' `train_lcm_distill_sd_wds.py` does it."""

    def __init__(self, comps: Components, mixed_precision: bool, num_ddim_timesteps: int = 50):
        self.comps, self.mixed_precision = comps, mixed_precision
        self.weight_dtype = torch.bfloat16 if mixed_precision else torch.float32
        self.teacher = comps.unet().to(self.weight_dtype).requires_grad_(False)
        self.unet = comps.unet(time_cond_proj_dim=comps.time_cond_proj_dim).train()
        self.target = comps.unet(time_cond_proj_dim=comps.time_cond_proj_dim).requires_grad_(False)
        self.target.load_state_dict(self.unet.state_dict())
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-6)
        solver = ddim_solver(comps, num_ddim_timesteps)
        self.alpha_schedule, self.sigma_schedule, self.ddim_timesteps, self.topk = solver
        self.latents, self.text = comps.latents(), comps.text()
        self.uncond = torch.zeros_like(self.text)

    def _x0(self, eps, t, x):
        return (x - self.sigma_schedule[t].view(-1, 1, 1, 1) * eps) / self.alpha_schedule[t].view(-1, 1, 1, 1)

    def _scalings(self, t):
        return boundary_scalings(t, 4, timestep_scaling=10.0)

    def _w_embedding(self, w, dim):
        w = w * 1000.0
        half = dim // 2
        freqs = torch.exp(torch.arange(half, device=w.device) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
        angles = w[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def __call__(self) -> float:
        comps, device = self.comps, self.comps.device
        latents, text, bsz = self.latents, self.text, comps.batch_size
        index = torch.randint(0, len(self.ddim_timesteps), (bsz,), device=device)
        start_timesteps = self.ddim_timesteps[index]
        timesteps = (start_timesteps - self.topk).clamp(min=0)
        c_skip_start, c_out_start = self._scalings(start_timesteps)
        c_skip, c_out = self._scalings(timesteps)
        noise = torch.randn_like(latents)
        a, s = (
            self.alpha_schedule[start_timesteps].view(-1, 1, 1, 1),
            self.sigma_schedule[start_timesteps].view(-1, 1, 1, 1),
        )
        noisy = a * latents + s * noise
        w = (15.0 - 3.0) * torch.rand((bsz,)) + 3.0
        w_embedding = self._w_embedding(w, comps.time_cond_proj_dim).to(device)
        w = w.view(bsz, 1, 1, 1).to(device)
        with autocast(device, self.mixed_precision):
            noise_pred = self.unet(
                noisy, start_timesteps, timestep_cond=w_embedding, encoder_hidden_states=text
            ).sample
            model_pred = c_skip_start * noisy + c_out_start * self._x0(noise_pred, start_timesteps, noisy)
        with torch.no_grad(), autocast(device, self.mixed_precision):
            cond_eps = self.teacher(
                noisy.to(self.weight_dtype), start_timesteps, encoder_hidden_states=text.to(self.weight_dtype)
            ).sample
            uncond_eps = self.teacher(
                noisy.to(self.weight_dtype), start_timesteps, encoder_hidden_states=self.uncond.to(self.weight_dtype)
            ).sample
            cond_x0, uncond_x0 = (
                self._x0(cond_eps, start_timesteps, noisy),
                self._x0(uncond_eps, start_timesteps, noisy),
            )
            pred_x0 = cond_x0 + w * (cond_x0 - uncond_x0)
            pred_eps = cond_eps + w * (cond_eps - uncond_eps)
            prev = timesteps
            x_prev = (
                self.alpha_schedule[prev].view(-1, 1, 1, 1) * pred_x0
                + self.sigma_schedule[prev].view(-1, 1, 1, 1) * pred_eps
            )
        with torch.no_grad(), autocast(device, self.mixed_precision):
            target_eps = self.target(
                x_prev.float(), timesteps, timestep_cond=w_embedding, encoder_hidden_states=text
            ).sample
        target = c_skip * x_prev + c_out * self._x0(target_eps, timesteps, x_prev)
        loss = torch.mean(torch.sqrt((model_pred.float() - target.float()) ** 2 + 0.001**2) - 0.001)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for target_param, param in zip(self.target.parameters(), self.unet.parameters()):
                target_param.detach().mul_(0.95).add_(param, alpha=0.05)
        return loss.detach().item()


class ReferenceSDSIteration:
    """One SDS iteration (Poole et al. 2022) as stable-dreamfusion/threestudio run it on a differentiable render."""

    def __init__(self, comps: Components, mixed_precision: bool, guidance_scale: float = 100.0, batch_size: int = 1):
        self.comps, self.mixed_precision = comps, mixed_precision
        self.weight_dtype = torch.bfloat16 if mixed_precision else torch.float32
        self.unet = comps.unet().to(self.weight_dtype).requires_grad_(False)
        self.vae = comps.vae().to(self.weight_dtype).requires_grad_(False)
        self.alphas_cumprod = comps.scheduler().alphas_cumprod.to(comps.device)
        size = comps.image_size
        self.render = torch.nn.Parameter(torch.rand(batch_size, 3, size, size, device=comps.device))
        self.optimizer = torch.optim.Adam([self.render], lr=1e-2)
        self.text = comps.text()[:batch_size]
        self.uncond = torch.zeros_like(self.text)
        self.guidance_scale = guidance_scale

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> latents, with gradient (threestudio's `encode_images`)."""
        with autocast(self.comps.device, self.mixed_precision):
            latents = self.vae.encode((images * 2 - 1).to(self.weight_dtype)).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def guidance_loss(self, latents: torch.Tensor, **context) -> torch.Tensor:
        """The SDS surrogate loss whose latent gradient is w(t)(eps_hat - eps)."""
        device = self.comps.device
        bsz = latents.shape[0]
        t = torch.randint(20, 981, (bsz,), device=device)
        with torch.no_grad(), autocast(device, self.mixed_precision):
            noise = torch.randn_like(latents)
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            eps = self.unet(
                torch.cat([noisy] * 2).to(self.weight_dtype),
                torch.cat([t] * 2),
                encoder_hidden_states=torch.cat([self.uncond, self.text]).to(self.weight_dtype),
            ).sample
            eps_u, eps_c = eps.chunk(2)
            eps_hat = eps_u + self.guidance_scale * (eps_c - eps_u)
            grad = (1 - a) * (eps_hat - noise)
        target = (latents - grad).detach()
        return 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / bsz

    def __call__(self) -> float:
        loss = self.guidance_loss(self.encode(self.render))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()


class ReferenceSDSNeRFIteration(ReferenceSDSIteration):
    """One text-to-3D SDS iteration on a NeRF render: the same NeRF work as sdtoolkit's `training_step` (occupancy
    update, a random camera, the render at `render_resolution` bilinearly upsampled to the prior's image size as
    threestudio does, the default opacity-entropy regulariser, Adam on the hash grid and MLP with the trainer's
    learning rates), with the guidance of `ReferenceSDSIteration`. The NeRF is sdtoolkit's on both sides."""

    def __init__(self, comps: Components, mixed_precision: bool, render_resolution: int, guidance_scale=100.0):
        super().__init__(comps, mixed_precision, guidance_scale=guidance_scale, batch_size=1)
        from sdtoolkit.nerf import NeRF, NeRFConfig
        from sdtoolkit.text_to_3d.config import TextTo3DConfig

        self.config = TextTo3DConfig(prior="benchmark")  # the trainer's defaults: cameras, regulariser, lrs
        self.nerf = NeRF(NeRFConfig()).to(comps.device)
        self.render_resolution = render_resolution
        self.generator = torch.Generator().manual_seed(0)
        self.step = 0
        self.optimizer = torch.optim.Adam(self.param_groups(), betas=(0.9, 0.99), eps=1e-15)

    def param_groups(self) -> list[dict]:
        field = self.nerf.field
        return [
            {"params": list(field.encoding.parameters()), "lr": self.config.lr_encoding},
            {"params": list(field.mlp.parameters()), "lr": self.config.lr_network},
        ]

    def __call__(self) -> float:
        from sdtoolkit.text_to_3d.trainer import regularizers, sample_training_cameras

        g, device = self.generator, self.comps.device
        self.nerf.update_occupancy(self.step, g)
        cameras = sample_training_cameras(self.config.cameras, 1, g).to(device)
        out = self.nerf.render(cameras, self.render_resolution, background=self.config.background, generator=g)
        rgb = out["rgb"]
        if self.render_resolution != self.comps.image_size:
            size = (self.comps.image_size, self.comps.image_size)
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        loss = self.guidance_loss(self.encode(rgb), cameras=cameras)
        loss = loss + sum(regularizers(self.config, out).values())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.detach().item()


class ReferenceVSDNeRFIteration(ReferenceSDSNeRFIteration):
    """One VSD iteration (ProlificDreamer) on a NeRF render as threestudio's `stable-diffusion-vsd-guidance` runs it:
    the real score is the frozen UNet with CFG 7.5 on [uncond, cond]; the fake score a SEPARATE copy of the UNet
    with a rank-4 LoRA on the attention projections and a camera MLP as `class_embedding` (c2w flattened to 16),
    evaluated on [cond, uncond] with its own CFG 1; its denoising loss (camera dropped 10 %) trains the LoRA and the
    camera MLP with lr 1e-3 in the same Adam step. `lora_targets` replaces the attention projections (e.g. by
    sdtoolkit's fake-score targets, for a reference of the same LoRA work)."""

    def __init__(
        self,
        comps: Components,
        mixed_precision: bool,
        render_resolution: int,
        lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
    ):
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        super().__init__(comps, mixed_precision, render_resolution, guidance_scale=7.5)
        self.unet_lora = comps.unet().to(self.weight_dtype).requires_grad_(False)
        targets = _present_targets(self.unet_lora, lora_targets)
        self.unet_lora.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets))
        embed_dim = self.unet_lora.config.block_out_channels[0] * 4
        self.unet_lora.class_embedding = TimestepEmbedding(16, embed_dim).to(comps.device)
        lora = [p for p in self.unet_lora.parameters() if p.requires_grad]
        for parameter in lora:
            parameter.data = parameter.data.float()
        groups = self.param_groups() + [{"params": lora, "lr": 1e-3}]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)

    def guidance_loss(self, latents: torch.Tensor, cameras=None) -> torch.Tensor:
        device, amp = self.comps.device, autocast(self.comps.device, self.mixed_precision)
        bsz = latents.shape[0]
        camera = cameras.c2w().flatten(1).to(device)
        t = torch.randint(20, 981, (bsz,), device=device)
        with torch.no_grad(), amp:
            noise = torch.randn_like(latents)
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(self.weight_dtype)
            eps = self.unet(
                torch.cat([noisy] * 2),
                torch.cat([t] * 2),
                encoder_hidden_states=torch.cat([self.uncond, self.text]).to(self.weight_dtype),
            ).sample
            eps_u, eps_c = eps.chunk(2)
            eps_real = eps_u + self.guidance_scale * (eps_c - eps_u)
            est = self.unet_lora(
                torch.cat([noisy] * 2),
                torch.cat([t] * 2),
                encoder_hidden_states=torch.cat([self.text, self.uncond]).to(self.weight_dtype),
                class_labels=torch.cat([camera, torch.zeros_like(camera)]),
            ).sample
            est_c, est_u = est.chunk(2)
            eps_fake = est_u + 1.0 * (est_c - est_u)
            grad = (1 - a) * (eps_real - eps_fake)
        target = (latents - grad).detach()
        loss_vsd = 0.5 * F.mse_loss(latents.float(), target.float(), reduction="sum") / bsz
        # train the LoRA on the detached render latents (threestudio's `train_lora`)
        x0 = latents.detach()
        t_lora = torch.randint(0, 1000, (bsz,), device=device)
        noise = torch.randn_like(x0)
        a = self.alphas_cumprod[t_lora].view(-1, 1, 1, 1)
        keep = (torch.rand(bsz, device=device) >= 0.1).to(camera.dtype)[:, None]
        with amp:
            pred = self.unet_lora(
                (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(self.weight_dtype),
                t_lora,
                encoder_hidden_states=self.text.to(self.weight_dtype),
                class_labels=camera * keep,
            ).sample
        return loss_vsd + F.mse_loss(pred.float(), noise.float())


class ReferenceDMD2Step:
    """One generator update and one fake-score update of a 1-step student, as tianweiy/DMD2 (SD 1.5) runs them:
    fp32 generator and a FULL fp32 fake-UNet copy under bf16 autocast, the real score (teacher weights in the
    weight dtype) with CFG on a concatenated [uncond, cond] batch. With `sid=True` the generator loss is SiD's
    (Zhou et al. 2024), whose gradient flows through the teacher's and the fake score's forwards."""

    def __init__(
        self,
        comps: Components,
        mixed_precision: bool,
        sid: bool = False,
        guidance: float = 1.75,
        fake_lora_rank: int | None = None,
    ):
        self.comps, self.mixed_precision, self.sid, self.guidance = comps, mixed_precision, sid, guidance
        self.weight_dtype = torch.bfloat16 if mixed_precision else torch.float32
        self.real = comps.unet().to(self.weight_dtype).requires_grad_(False)
        self.generator = comps.unet().train()
        self.fake = comps.unet().train()
        fake_params = list(self.fake.parameters())
        if fake_lora_rank is not None:
            # the same LoRA work as sdtoolkit's fake score, on a SEPARATE frozen copy (threestudio's VSD pattern):
            # nothing to switch, at the memory cost of a second backbone
            from peft import LoraConfig

            from sdtoolkit.distill.score_distillation import DEFAULT_LORA_TARGETS

            self.fake.requires_grad_(False).to(self.weight_dtype)
            targets = _present_targets(self.fake, DEFAULT_LORA_TARGETS)
            self.fake.add_adapter(LoraConfig(r=fake_lora_rank, lora_alpha=fake_lora_rank, target_modules=targets))
            fake_params = [p for p in self.fake.parameters() if p.requires_grad]
            for parameter in fake_params:
                parameter.data = parameter.data.float()
        self.g_optimizer = torch.optim.AdamW(self.generator.parameters(), lr=1e-5, weight_decay=0.01)
        self.f_optimizer = torch.optim.AdamW(fake_params, lr=1e-5, weight_decay=0.01)
        self.fake_params = fake_params
        alphas_cumprod = comps.scheduler().alphas_cumprod.to(comps.device)
        self.alpha, self.sigma = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
        self.text = comps.text()
        self.uncond = torch.zeros_like(self.text)

    def _x0(self, eps, t, x):
        return (x - self.sigma[t].view(-1, 1, 1, 1) * eps) / self.alpha[t].view(-1, 1, 1, 1)

    def _noised(self, x0, t):
        noise = torch.randn_like(x0)
        return self.alpha[t].view(-1, 1, 1, 1) * x0 + self.sigma[t].view(-1, 1, 1, 1) * noise, noise

    def _real_x0(self, x_t, t):
        eps = self.real(
            torch.cat([x_t, x_t]).to(self.weight_dtype),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([self.uncond, self.text]).to(self.weight_dtype),
        ).sample
        eps_u, eps_c = eps.float().chunk(2)
        return self._x0(eps_u + self.guidance * (eps_c - eps_u), t, x_t)

    def __call__(self) -> float:
        device, bsz = self.comps.device, self.comps.batch_size
        amp = autocast(device, self.mixed_precision)
        # generator: 1 step from pure noise at t = 999
        z = self.comps.latents()
        t_gen = torch.full((bsz,), 999, device=device)
        with amp:
            x_g = self._x0(self.generator(z, t_gen, encoder_hidden_states=self.text).sample.float(), t_gen, z)
        t = torch.randint(20, 981, (bsz,), device=device)
        x_t, _ = self._noised(x_g, t)
        if self.sid:
            for parameter in self.fake_params:
                parameter.requires_grad_(False)
            with amp:
                y_r = self._real_x0(x_t, t)
                y_f = self._x0(self.fake(x_t, t, encoder_hidden_states=self.text).sample.float(), t, x_t)
            weight = (x_g - y_r).abs().mean(dim=(1, 2, 3), keepdim=True).detach()
            g_loss = ((y_r - y_f) * ((y_r - x_g) - 1.0 * (y_r - y_f)) / weight).mean()
            for parameter in self.fake_params:
                parameter.requires_grad_(True)
        else:
            with torch.no_grad(), amp:
                x0_fake = self._x0(self.fake(x_t, t, encoder_hidden_states=self.text).sample.float(), t, x_t)
                x0_real = self._real_x0(x_t, t)
            normalizer = (x_g - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
            grad = (x0_fake - x0_real) / normalizer
            g_loss = 0.5 * F.mse_loss(x_g.float(), (x_g - grad).detach().float())
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 1.0)
        self.g_optimizer.step()
        self.g_optimizer.zero_grad(set_to_none=True)
        self.f_optimizer.zero_grad(set_to_none=True)
        # fake score: denoising loss on the detached generator samples (DMD2 reuses the generator's; SiD's loop
        # draws fresh ones without gradient for its fake-score phase)
        if self.sid:
            with torch.no_grad(), amp:
                z = self.comps.latents()
                x_g = self._x0(self.generator(z, t_gen, encoder_hidden_states=self.text).sample.float(), t_gen, z)
        t = torch.randint(20, 981, (bsz,), device=device)
        x_t, noise = self._noised(x_g.detach(), t)
        with amp:
            f_loss = F.mse_loss(self.fake(x_t, t, encoder_hidden_states=self.text).sample.float(), noise)
        f_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.fake_params, 1.0)
        self.f_optimizer.step()
        self.f_optimizer.zero_grad(set_to_none=True)
        return g_loss.detach().item() + f_loss.detach().item()


class ReferenceSampler:
    """A stock `StableDiffusionPipeline` call on the benchmark's components: the teacher's own sampler (DDIM, CFG),
    or, with `scheduler="LCMScheduler"` and `guidance_scale=1`, what a user of a few-step export runs."""

    def __init__(
        self,
        comps: Components,
        mixed_precision: bool,
        steps: int,
        guidance_scale: float,
        scheduler: str = "DDIMScheduler",
        batch_size: int = 4,
    ):
        import diffusers

        self.pipeline = comps.pipeline(torch.bfloat16 if mixed_precision else torch.float32)
        config = self.pipeline.scheduler.config
        self.pipeline.scheduler = getattr(diffusers, scheduler).from_config(config)
        self.steps, self.guidance_scale = steps, guidance_scale
        generator = torch.Generator().manual_seed(0)
        text = torch.randn(batch_size, comps.text_len, comps.text_dim, generator=generator)
        self.prompt_embeds = text.to(comps.device, self.pipeline.unet.dtype)
        self.negative_prompt_embeds = torch.zeros_like(self.prompt_embeds)
        self.size = comps.image_size

    @torch.no_grad()
    def __call__(self):
        generator = torch.Generator().manual_seed(0)
        return self.pipeline(
            prompt_embeds=self.prompt_embeds,
            negative_prompt_embeds=self.negative_prompt_embeds,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            height=self.size,
            width=self.size,
            generator=generator,
        ).images


def _present_targets(model: torch.nn.Module, suffixes) -> list[str]:
    """The LoRA target suffixes that name a Linear/Conv2d of `model` (peft refuses absent ones)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return [s for s in suffixes if any(n == s or n.endswith("." + s) for n in names)]


class ReferenceMCMStep:
    """One Motion Consistency Model step as yhZhai/mcm `main.py` runs it (its AnimateDiff recipe: the motion modules
    train, `--cd_target learn`, Huber, w ~ U[5, 15] in the teacher's target only, `--cd_pred_x0_portion 0.5`, 2 TSN
    frames for the frame critic): stock `UNetMotionModel`s called directly, fp32 student under bf16 autocast, the
    teacher's cond and uncond as TWO forwards, one DDIM step, the EMA target (0.95) by a per-parameter python loop;
    the generator update, then the critic's on the same frames detached. The spatial head and the critic are
    sdtoolkit's modules (`sdtoolkit.trainers.mcm`: MCM's head; a latent critic standing in for MCM's DINOv2 one),
    so that both sides do the same work; the mixed trajectory picks clips one by one, as sdtoolkit's does (MCM: the
    whole batch with that probability, the same work on average)."""

    def __init__(self, comps: Components, mixed_precision: bool, num_ddim_timesteps: int = 50):
        import copy

        from diffusers import UNetMotionModel
        from sdtoolkit.trainers.mcm import FrameDiscriminator, SpatialHead

        from benchmarks.components import VIDEO_FRAMES

        self.comps, self.mixed_precision = comps, mixed_precision
        device = comps.device
        self.weight_dtype = torch.bfloat16 if mixed_precision else torch.float32
        adapter = comps.motion_adapter()
        self.teacher = UNetMotionModel.from_unet2d(comps.unet(), adapter).to(device, self.weight_dtype)
        self.teacher.requires_grad_(False)
        self.unet = UNetMotionModel.from_unet2d(comps.unet(), adapter).to(device).train()
        self.unet.freeze_unet2d_params()  # only the motion modules train
        self.target = copy.deepcopy(self.unet).requires_grad_(False)
        self.head = SpatialHead(4).to(device)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        self.critic = FrameDiscriminator(4).to(device)
        self.trained = [p for p in self.unet.parameters() if p.requires_grad] + list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(self.trained, lr=5e-6)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=5e-5)
        solver = ddim_solver(comps, num_ddim_timesteps)
        self.alpha_schedule, self.sigma_schedule, self.ddim_timesteps, self.topk = solver
        clips, size = comps.video_clips, comps.latent_size
        generator = torch.Generator().manual_seed(0)
        self.latents = torch.randn(clips, 4, VIDEO_FRAMES, size, size, generator=generator).to(device)
        # stock UNetMotionModel takes the text per frame (AnimateDiffPipeline repeats the prompt embeddings)
        text = torch.randn(clips, comps.text_len, comps.text_dim, generator=generator).to(device)
        self.text = text.repeat_interleave(VIDEO_FRAMES, 0)
        self.uncond = torch.zeros_like(self.text)
        self.frames = VIDEO_FRAMES
        self.real = torch.randn(clips, 4, size, size, generator=generator).to(device)  # still-image latents

    def _x0(self, eps, t, x):
        view = (-1, 1, 1, 1, 1)
        return (x - self.sigma_schedule[t].view(view) * eps) / self.alpha_schedule[t].view(view)

    def _scalings(self, t):
        return boundary_scalings(t, 5, timestep_scaling=4.0)

    @staticmethod
    def _tsn(x, count=2):
        b, c, f = x.shape[:3]
        edges = torch.linspace(0, f, count + 1)
        picks = [int(lo) + int(torch.randint(max(int(hi) - int(lo), 1), (1,))) for lo, hi in zip(edges, edges[1:])]
        return x[:, :, picks].permute(0, 2, 1, 3, 4).reshape(b * count, c, *x.shape[3:])

    def __call__(self) -> float:
        from sdtoolkit.trainers.mcm import hinge_discriminator_loss, r1_penalty

        device, bsz = self.comps.device, self.latents.shape[0]
        amp = autocast(device, self.mixed_precision)
        latents = self.latents.clone()
        own = torch.rand(bsz) < 0.5  # mixed trajectory: the student's own one-step samples
        if own.any():
            chosen = own.nonzero().squeeze(1).to(device)
            noise = torch.randn_like(latents[chosen])
            last = self.ddim_timesteps[-1].repeat(len(chosen))
            with torch.no_grad(), autocast(device, self.mixed_precision):
                text = self.text.unflatten(0, (bsz, self.frames))[chosen].flatten(0, 1)
                eps = self.unet(noise, last, encoder_hidden_states=text).sample
            latents[chosen] = self._x0(eps.float(), last, noise)
        index = torch.randint(0, len(self.ddim_timesteps), (bsz,), device=device)
        start_timesteps = self.ddim_timesteps[index]
        timesteps = (start_timesteps - self.topk).clamp(min=0)
        c_skip_start, c_out_start = self._scalings(start_timesteps)
        c_skip, c_out = self._scalings(timesteps)
        noise = torch.randn_like(latents)
        view = (-1, 1, 1, 1, 1)
        noisy = self.alpha_schedule[start_timesteps].view(view) * latents
        noisy = noisy + self.sigma_schedule[start_timesteps].view(view) * noise
        w = ((15.0 - 5.0) * torch.rand((bsz,)) + 5.0).view(view).to(device)
        with amp:
            noise_pred = self.unet(noisy, start_timesteps, encoder_hidden_states=self.text).sample
            model_pred = c_skip_start * noisy + c_out_start * self._x0(noise_pred.float(), start_timesteps, noisy)
        with torch.no_grad(), autocast(device, self.mixed_precision):
            cond_eps = self.teacher(
                noisy.to(self.weight_dtype), start_timesteps, encoder_hidden_states=self.text.to(self.weight_dtype)
            ).sample.float()
            uncond_eps = self.teacher(
                noisy.to(self.weight_dtype), start_timesteps, encoder_hidden_states=self.uncond.to(self.weight_dtype)
            ).sample.float()
            cond_x0 = self._x0(cond_eps, start_timesteps, noisy)
            uncond_x0 = self._x0(uncond_eps, start_timesteps, noisy)
            pred_x0 = cond_x0 + w * (cond_x0 - uncond_x0)
            pred_eps = cond_eps + w * (cond_eps - uncond_eps)
            x_prev = self.alpha_schedule[timesteps].view(view) * pred_x0
            x_prev = x_prev + self.sigma_schedule[timesteps].view(view) * pred_eps
            target_eps = self.target(x_prev.float(), timesteps, encoder_hidden_states=self.text).sample
            target = c_skip * x_prev + c_out * self._x0(target_eps.float(), timesteps, x_prev)
            target_cd = self.target_head(target.float())
        model_cd = self.head(model_pred.float())
        loss = torch.mean(torch.sqrt((model_cd - target_cd) ** 2 + 0.001**2) - 0.001)
        fake = self._tsn(model_pred)
        loss = loss - self.critic(fake).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.critic.zero_grad(set_to_none=True)  # the generator's loss reached the critic's weights too
        d_loss = hinge_discriminator_loss(self.critic(self.real), self.critic(fake.detach()))
        d_loss = d_loss + 1e-5 * r1_penalty(self.critic, self.real)
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for net, ema in ((self.unet, self.target), (self.head, self.target_head)):
                for target_param, param in zip(ema.parameters(), net.parameters()):
                    target_param.detach().mul_(0.95).add_(param, alpha=0.05)
        return loss.detach().item()
