"""Score-distillation core: the real score (teacher + CFG) against a trainable fake score (by default a LoRA adapter
on the teacher's own backbone), DMD2's distribution-matching gradient and SiD's score-identity loss.

One implementation serves the few-step distillers (`trainers/dmd2.py`, `trainers/flash_dmd.py`, `trainers/sid.py`)
and text-to-3D VSD (ProlificDreamer's real-vs-LoRA score on rendered latents). Everything goes through the shared
`Denoiser`, so schedules, prediction types and classifier-free guidance are never re-derived here.

Usage for distillation (DMD2-style generator step, then a fake-score step)::

    teacher = Denoiser.from_pipeline(pipe).freeze()
    student = teacher.with_model(copy.deepcopy(pipe.unet).requires_grad_(True))   # copy BEFORE ScorePair(...)
    scores = ScorePair(teacher, FakeScoreConfig(kind="lora", rank=64))
    cond, uncond = teacher.encode_prompt(prompts)

    x = student.predict(z, t_student, cond).x0                       # generator sample, with grad
    t = sample_timesteps(teacher.schedule, len(x), 0.02, 0.98)
    with torch.no_grad():
        x_t = teacher.add_noise(x, torch.randn_like(x), t)
        x0_real = scores.real(x_t, t, cond, uncond=uncond, guidance_scale=1.75).x0
        x0_fake = scores.fake(x_t, t, cond).x0
    loss_g = injection_loss(x, dmd_gradient(x, x0_real, x0_fake))   # d loss / d x = DMD gradient

    loss_fake = scores.fake_denoising_loss(x.detach(), cond)          # trains ONLY scores.trainable_parameters()

Usage for 3D VSD (ProlificDreamer, Wang et al. 2023): render latents `z` (with grad) from a camera, then::

    scores = ScorePair(sd_teacher, FakeScoreConfig(kind="lora", rank=4, extra_cond_dim=16))
    cam = replace(cond, class_labels=c2w.flatten(1))                  # camera-conditioned fake score
    with torch.no_grad():
        z_t = teacher.add_noise(z, eps, t)
        eps_real = scores.real(z_t, t, cond, uncond=uncond, guidance_scale=7.5).eps
        eps_fake = scores.fake(z_t, t, cam).eps
    loss = injection_loss(z, w_t * (eps_real - eps_fake), reduction="sum")   # VSD gradient w(t)(eps_real - eps_fake)
    loss_lora = scores.fake_denoising_loss(z.detach(), cam)                   # fit the LoRA to the renders

Extra conditioning of the fake score: with `FakeScoreConfig(extra_cond_dim=D)` the fake score owns a small MLP
(`ExtraEmbedding`, zero-initialised output so the fake still starts equal to the teacher) that is installed as the
UNet's `class_embedding` only during fake-score forwards; put the `[B, D]` vector (e.g. a flattened 4x4 camera matrix)
in `Conditioning.class_labels`. The real score never sees it (its `class_labels` are dropped). Other conditioning
(SDXL `added_cond_kwargs`, SD3 `pooled_projections`) passes to both scores unchanged.

peft switches `requires_grad` whenever adapters are enabled or disabled; `adapter_state` here restores every flag, so
which parameters train is decided only by the caller (`ScorePair.fake_frozen()` for generator steps).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdtoolkit.core.adapters import adapter_state
from sdtoolkit.core.adapters import tuner_layers as _tuner_layers
from sdtoolkit.core.denoiser import Conditioning, Denoiser, Prediction
from sdtoolkit.core.schedules import NoiseSchedule, VPSchedule
from sdtoolkit.core.utils import append_dims, cast_floating, frozen

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "ExtraEmbedding",
    "FakeScoreConfig",
    "ScorePair",
    "adapter_state",
    "dmd_gradient",
    "drop_conditioning",
    "finite_mask",
    "injection_loss",
    "sample_timesteps",
    "sid_generator_loss",
]

#: UNet/transformer layers that the LoRA fake score adapts: attention projections, feed-forwards and resnet convs
#: (the fake score must follow a whole new distribution, so attention alone is too little).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
)


# ---------------------------------------------------------------------------------------------------------- losses


def sample_timesteps(
    schedule: NoiseSchedule,
    n: int,
    low: float = 0.0,
    high: float = 1.0,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`[n]` native times drawn uniformly from the fraction [low, high] of the schedule's range, the fractions
    converted by the schedule itself (`NoiseSchedule.time_from_fraction`, the same conversion SDS uses).

    Discrete VP schedules draw integer timesteps (DMD2: `randint(0.02 T, 0.98 T)`, Yin et al. 2024b, Sec. 4.1; SiD-LSG:
    `randint(20, 980)`); continuous schedules (flow, TrigFlow) draw uniformly in [t_min, t_max] scaled by the fraction.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1 for the time range, got low={low}, high={high}")
    if isinstance(schedule, VPSchedule):
        lo, hi = int(schedule.time_from_fraction(low)), int(schedule.time_from_fraction(high))
        return torch.randint(lo, hi + 1, (n,), device=device, generator=generator).float()
    u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
    return schedule.time_from_fraction(low + (high - low) * u).float()


def finite_mask(*tensors: Tensor) -> Tensor:
    """`[B]` bool: True for the samples whose every entry is finite in all `tensors` (SiD's NaN-sample masking)."""
    mask = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for x in tensors:
        mask &= torch.isfinite(x).flatten(1).all(dim=1)
    return mask


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float = 1e-8) -> Tensor:
    """The distribution-matching gradient with DMD2's normalisation, per sample:

        grad = (x0_fake - x0_real) / mean_{C,H,W} |x - x0_real|

    DMD (Yin et al. 2024a, Eq. 7) descends E[-(s_real(x_t) - s_fake(x_t)) dG/dtheta] with s(x_t) = -(x_t - alpha_t
    x0_hat) / sigma_t^2, i.e. along alpha_t / sigma_t^2 (x0_fake - x0_real); Eq. 8 replaces the time weighting by the
    per-sample normaliser 1 / mean|x - x0_real| (as in DMD2's code). Non-finite entries become 0 (`nan_to_num`).

    Args:
        x: `[B, ...]` the generator's samples (the normaliser uses their values; no gradient flows from here).
        x0_real, x0_fake: `[B, ...]` the real (teacher, guided) and fake scores' clean-sample predictions at x_t.
    """
    dims = tuple(range(1, x.ndim))
    normaliser = (x - x0_real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    return torch.nan_to_num((x0_fake - x0_real) / normaliser)


def injection_loss(x: Tensor, grad: Tensor, reduction: str = "mean") -> Tensor:
    """A surrogate loss whose gradient with respect to `x` is `grad` (the DMD / SDS / VSD injection trick).

    Derivation: with the target held constant (stop-gradient sg),
        L = 1/2 || x - sg(x - grad) ||^2   =>   dL/dx = x - sg(x - grad) = x - (x - grad) = grad.
    `reduction="sum"` gives exactly that; `"mean"` (DMD2's `0.5 * F.mse_loss(..., reduction="mean")`) divides it by
    x.numel(), which is the scale DMD2's learning rates were tuned for. The value of L is 1/2 ||grad||^2 (times the
    reduction), useful as a log, not as an objective.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    target = (x - grad).detach()
    return 0.5 * F.mse_loss(x, target, reduction=reduction)


def sid_generator_loss(
    x_g: Tensor, y_real: Tensor, y_fake: Tensor, alpha: float = 1.2, eps: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Score identity Distillation's generator loss (Zhou et al. 2024, "Score identity Distillation", Eq. 14 with the
    normalisation of their Algorithm 1; SiD-LSG uses the same loss with guided y_real / y_fake):

        w = mean_{C,H,W} |x_g - y_r|            (per sample, no gradient)
        L = sum_{C,H,W} (y_r - y_f) * ((y_r - x_g) - alpha (y_r - y_f)) / w

    y_r and y_f are the teacher's and the fake score's x0 predictions at x_t = alpha_t x_g + sigma_t eps; gradients
    flow through x_g AND through both forwards (the teacher's weights are frozen, so only into x_t). Samples with any
    non-finite entry in x_g, y_r or y_f are masked out; the loss is the mean over the remaining samples (0 with a
    graph if none remain).

    Returns:
        (loss, mask): the scalar loss and the `[B]` bool mask of the samples that were kept.
    """
    keep = finite_mask(x_g, y_real, y_fake)
    x_g, y_real, y_fake = x_g[keep], y_real[keep], y_fake[keep]
    dims = tuple(range(1, x_g.ndim))
    with torch.no_grad():
        w = (x_g - y_real).abs().mean(dim=dims, keepdim=True).clamp_min(eps)
    diff = y_real - y_fake
    per_sample = (diff * ((y_real - x_g) - alpha * diff) / w).sum(dim=dims)
    loss = per_sample.mean() if per_sample.numel() > 0 else per_sample.sum()
    return loss, keep


def drop_conditioning(
    cond: Conditioning, uncond: Conditioning, p: float, generator: torch.Generator | None = None
) -> Conditioning:
    """Replaces each sample's conditioning by the unconditional one with probability `p` (context dropout, so a fake
    score trained with CFG also learns the unconditional branch; SiD-LSG uses p = 0.1 when kappa_1 != 1)."""
    if p <= 0:
        return cond
    n = cond.batch_size
    drop = torch.rand(n, generator=generator) < p
    if not drop.any():
        return cond
    if uncond.batch_size != n:
        uncond = uncond.repeat_interleave(n // uncond.batch_size)

    def pick(c: Tensor, u: Tensor) -> Tensor:
        return torch.where(append_dims(drop.to(c.device), c.ndim), u.to(c.dtype), c)

    values = {}
    for name in ("encoder_hidden_states", "pooled_projections", "encoder_attention_mask", "encoder_log_multiplicity"):
        c, u = getattr(cond, name), getattr(uncond, name)
        values[name] = pick(c, u) if c is not None and u is not None else c
    added = {k: pick(v, uncond.added_cond_kwargs[k]) for k, v in cond.added_cond_kwargs.items()}
    return replace(cond, **values, added_cond_kwargs=added)


# ---------------------------------------------------------------------------------------------------------- adapters


# ---------------------------------------------------------------------------------------------------------- fake score


@dataclass
class FakeScoreConfig:
    """How the fake score (the score of the generator's own distribution) is built and trained."""

    kind: str = "lora"
    """`lora`: a peft LoRA adapter on the teacher's own backbone (one set of frozen weights serves both scores);
    `full`: a trainable full copy of the teacher (DMD2's and SiD's original setting)."""
    rank: int = 64
    """LoRA rank (DMD2's SDXL LoRA runs use 64)."""
    lora_alpha: float | None = None
    """LoRA alpha; None means alpha = rank (adapter scale 1)."""
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module-name suffixes that receive the LoRA."""
    adapter_name: str = "fake_score"
    """Name of the peft adapter on the shared backbone."""
    loss_target: str = "native"
    """Space of the fake score's denoising MSE: `native` (the teacher's own prediction type, e.g. eps for SD1.5, as
    DMD2 and SiD-LSG train it), or any prediction type / alias (`epsilon`, `x0`, `v`, `flow`)."""
    extra_cond_dim: int | None = None
    """Width of an extra conditioning vector for the fake score only (e.g. 16 for VSD's camera matrix), fed through
    `Conditioning.class_labels`; None disables it."""


class ExtraEmbedding(nn.Module):
    """MLP that turns an extra conditioning vector (a camera) into a time-embedding offset, installed as the UNet's
    `class_embedding` during fake-score forwards (as ProlificDreamer's camera-conditioned LoRA UNet). The output
    layer starts at zero, so the fake score starts equal to the teacher."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, c: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(c.to(self.linear_1.weight.dtype))))


class ScorePair(nn.Module):
    """The real score (the frozen teacher, with CFG, through its `Denoiser`) and a trainable fake score.

    Args:
        teacher: the teacher's Denoiser. With `kind="lora"` its backbone receives the adapter `config.adapter_name`
            (left switched off outside `fake()`, so plain calls of the backbone still give the teacher); make any
            full student copy of the backbone BEFORE building the pair.
        config: `FakeScoreConfig`.

    Attributes:
        teacher: the real score's Denoiser (adapters are switched off around every call).
        fake_denoiser: the fake score's Denoiser (the same object as `teacher` for LoRA).
    """

    def __init__(self, teacher: Denoiser, config: FakeScoreConfig | None = None):
        super().__init__()
        self.config = config = config or FakeScoreConfig()
        if config.kind not in ("lora", "full"):
            raise ValueError(f"FakeScoreConfig.kind={config.kind!r} is not supported; choose 'lora' or 'full'")
        self.teacher = teacher
        base = teacher.base_model
        base.requires_grad_(False)
        if config.kind == "lora":
            self._attach_lora(base)
            self.fake_denoiser = teacher
            self._fake_backbone = None
        else:
            backbone = copy.deepcopy(base)
            for m in _tuner_layers(backbone):  # a full copy starts from the plain teacher weights
                m.enable_adapters(False)
            cast_floating(backbone, torch.float32).requires_grad_(True).train()  # trainable master weights in fp32
            self._fake_backbone = backbone  # registered: trained, checkpointed
            self.fake_denoiser = teacher.with_model(backbone)
        self.extra_embedding: ExtraEmbedding | None = None
        if config.extra_cond_dim is not None:
            if getattr(base, "class_embedding", None) is not None:
                raise ValueError(
                    "the teacher already uses class_labels (it has a class_embedding); extra_cond_dim would clash"
                )
            embed_dim = base.time_embedding.linear_2.out_features
            self.extra_embedding = ExtraEmbedding(config.extra_cond_dim, embed_dim).to(teacher.device)

    # ------------------------------------------------------------------ construction helpers

    def _attach_lora(self, base: nn.Module) -> None:
        from peft import LoraConfig

        name = self.config.adapter_name
        peft_config = getattr(base, "peft_config", {}) or {}
        if name not in peft_config:
            targets = _present_targets(base, self.config.target_modules)
            lora = LoraConfig(
                r=self.config.rank,
                lora_alpha=self.config.lora_alpha or self.config.rank,
                target_modules=targets,
                init_lora_weights=True,  # A ~ Kaiming-uniform, B = 0: the fake score starts equal to the teacher
            )
            previous = [(m, list(m.active_adapters), bool(m.disable_adapters)) for m in _tuner_layers(base)]
            base.add_adapter(lora, adapter_name=name)  # diffusers activates the new adapter everywhere
            # restore: new adapter layers off, pre-existing ones as they were, so plain calls stay the teacher
            for m in _tuner_layers(base):
                m.enable_adapters(False)
            for m, names, disabled in previous:
                m.set_adapter(names)
                m.enable_adapters(not disabled)
        for param_name, p in base.named_parameters():
            is_fake = f".{name}." in param_name
            p.requires_grad_(is_fake)
            if is_fake and p.dtype != torch.float32:
                p.data = p.data.float()  # trainable adapter weights in fp32 even on a half-precision backbone

    # ------------------------------------------------------------------ parameters and state

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The fake score's trainable parameters (LoRA weights or the full copy, plus the extra embedding)."""
        return [p for _, p in self.named_trainable_parameters()]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        if self._fake_backbone is not None:
            params = list(self._fake_backbone.named_parameters())
        else:
            marker = f".{self.config.adapter_name}."
            params = [(n, p) for n, p in self.teacher.base_model.named_parameters() if marker in n]
        if self.extra_embedding is not None:
            params += [(f"extra_embedding.{n}", p) for n, p in self.extra_embedding.named_parameters()]
        return params

    def fake_state_dict(self) -> dict[str, Tensor]:
        """The fake score's trainable weights by name (for checkpoints: safetensors-ready, detached copies)."""
        return {n: p.detach().clone() for n, p in self.named_trainable_parameters()}

    def load_fake_state_dict(self, state: dict[str, Tensor]) -> None:
        params = dict(self.named_trainable_parameters())
        missing, unexpected = set(params) - set(state), set(state) - set(params)
        if missing or unexpected:
            raise KeyError(
                f"fake-score state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n])

    def fake_frozen(self) -> contextlib.AbstractContextManager:
        """Temporarily stops gradients into the fake score's weights (generator steps that backpropagate through the
        fake score, such as SiD's, then leave its weights untouched)."""
        return frozen(self.trainable_parameters())

    # ------------------------------------------------------------------ the two scores

    def real(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        *,
        uncond: Conditioning | None = None,
        guidance_scale: float | Tensor = 1.0,
        guidance_rescale: float = 0.0,
        guidance_embed: Tensor | None = None,
        grad: bool = False,
    ) -> Prediction:
        """The teacher's prediction at (x_t, t) with CFG (diffusers convention) and every adapter switched off.

        `grad=False` runs under `torch.no_grad()` (DMD); `grad=True` keeps the graph to x_t (SiD backpropagates
        through the teacher forward; its weights stay frozen). The fake score's extra conditioning is dropped."""
        cond, uncond = self._strip_extra(cond), self._strip_extra(uncond)
        grad_mode = contextlib.nullcontext() if grad else torch.no_grad()
        state = adapter_state(self.teacher.base_model, None) if self._has_adapters() else contextlib.nullcontext()
        with grad_mode, state:
            return self.teacher.predict(
                x_t,
                t,
                cond,
                uncond=uncond,
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
                guidance_embed=guidance_embed,
            )

    def fake(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        *,
        uncond: Conditioning | None = None,
        guidance_scale: float | Tensor = 1.0,
        guidance_embed: Tensor | None = None,
    ) -> Prediction:
        """The fake score's prediction at (x_t, t) (optionally with its own CFG, SiD-LSG's kappa_2/kappa_3).

        Gradients follow the caller's grad mode: wrap in `torch.no_grad()` for DMD, in `fake_frozen()` to
        backpropagate into x_t only (SiD), or neither to train the fake score."""
        with self.fake_context():
            return self.fake_denoiser.predict(
                x_t, t, cond, uncond=uncond, guidance_scale=guidance_scale, guidance_embed=guidance_embed
            )

    def fake_denoising_loss(
        self,
        x0: Tensor,
        cond: Conditioning,
        *,
        uncond: Conditioning | None = None,
        guidance_scale: float = 1.0,
        t: Tensor | None = None,
        eps: Tensor | None = None,
        t_range: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Denoising loss of the fake score on DETACHED generator samples (DMD2 Eq. 6; SiD Eq. 7): draw t, eps, form
        x_t = alpha_t sg(x0) + sigma_t eps and regress the fake prediction onto the target of `config.loss_target`.

        With `uncond` and `guidance_scale != 1` the fake score is trained through its own CFG combination (SiD-LSG's
        kappa_1, "long guidance"). Samples whose prediction or target is non-finite are dropped (SiD-LSG).

        Args:
            x0: `[B, C, H, W]` generator samples (detached here).
            t: `[B]` native times; default uniform over the fraction `t_range` of the schedule (DMD2: all of it).
            eps: `[B, C, H, W]` noise; default standard normal.
        """
        x0 = x0.detach()
        denoiser = self.fake_denoiser
        if t is None:
            t = sample_timesteps(denoiser.schedule, x0.shape[0], *t_range, device=x0.device, generator=generator)
        if eps is None:
            eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = denoiser.add_noise(x0, eps, t)
        prediction = self.fake(x_t, t, cond, uncond=uncond, guidance_scale=guidance_scale)
        target_type = self.config.loss_target
        if target_type == "native":
            target_type = denoiser.prediction_type
        target = denoiser.convert(x0, eps, t, target_type)
        if target_type == denoiser.prediction_type:
            output = prediction.raw
        else:
            output = denoiser.convert(prediction.x0, prediction.eps, t, target_type)
        keep = finite_mask(output, target)
        if not keep.all():
            output, target = output[keep], target[keep]
        return F.mse_loss(output.float(), target.float()) if output.shape[0] > 0 else output.sum() * 0.0

    # ------------------------------------------------------------------ internals

    def _has_adapters(self) -> bool:
        return bool(_tuner_layers(self.teacher.base_model))

    @contextlib.contextmanager
    def fake_context(self) -> Iterator[None]:
        """Switches the fake score's backbone to the fake score (its adapter on, its extra embedding installed), for
        calls that need the network itself (e.g. the GAN head on the fake score's bottleneck features)."""
        backbone = self.fake_denoiser.base_model
        with contextlib.ExitStack() as stack:
            if self.config.kind == "lora":
                stack.enter_context(adapter_state(backbone, self.config.adapter_name))
            elif _tuner_layers(backbone):
                stack.enter_context(adapter_state(backbone, None))
            if self.extra_embedding is not None:
                stack.enter_context(_installed_class_embedding(backbone, self.extra_embedding))
            yield

    def _strip_extra(self, cond: Conditioning | None) -> Conditioning | None:
        if cond is None or self.extra_embedding is None or cond.class_labels is None:
            return cond
        return replace(cond, class_labels=None)


@contextlib.contextmanager
def _installed_class_embedding(model: nn.Module, embedding: nn.Module) -> Iterator[None]:
    previous = model.class_embedding
    model.class_embedding = embedding
    try:
        yield
    finally:
        model.class_embedding = previous


def _present_targets(model: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """The suffixes of `suffixes` that name at least one Linear/Conv2d in `model` (peft errors on absent targets)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    present = [s for s in suffixes if any(n == s or n.endswith("." + s) for n in names)]
    if not present:
        raise ValueError(f"none of the LoRA targets {list(suffixes)} exists in {type(model).__name__}")
    return present
