"""Latent adversarial distillation (LADD; Sauer et al. 2024, "Fast High-Resolution Image Synthesis with Latent
Adversarial Diffusion Distillation") as SANA-Sprint (Chen et al. 2025, Sec. 3.3) trains it next to sCM, in
TrigFlow time (`sdtoolkit.distill.scm`, `sdtoolkit.core.trigflow`).

The discriminator is the frozen teacher itself, seen through its Denoiser at the native time matching a TrigFlow
time s_D (`TrigFlowTeacher`: the same training-free conversion sCM uses; the teacher's own network, no CFG and no
guidance embedding), with forward hooks on a few of its blocks (`TeacherFeatures`). SANA-Sprint hooks transformer
blocks [2, 8, 14, 19] of its 20-block 1.6B model (`SanaMSCMDiscriminator`, `head_block_ids`); the token features
`[B, N, C]` are read as `[B, C, N]` and each goes through one small trainable head (`DiscHead`, from StyleGAN-T,
Sauer et al. 2023): a spectral-norm Conv1d (kernel 1) and a residual spectral-norm Conv1d (kernel 9, circular
padding), each followed by BatchNorm over virtual batches of 8 and LeakyReLU 0.2, then a spectral-norm Conv1d to one
channel; the logits of all heads are concatenated (`DiscriminatorHeads`). Only the heads train and are saved.

Both the student's clean estimate x0_hat and the real x0 (TrigFlow scale) are re-noised to s_D before the
discriminator sees them,

    x_D = cos(s_D) x0 + sin(s_D) z,     z ~ N(0, sigma_d^2 I),
    s_D = arctan(e^tau / sigma_d),      tau ~ N(-0.6, 1)                                  (`discriminator_time`)

and the losses are hinge losses (Lim & Ye 2017), as SANA-Sprint's `train_scm_ladd.py`:

    L_D = 1/2 [ E relu(1 - D(x_D^real)) + E relu(1 + D(x_D^fake)) ]                      (`hinge_discriminator_loss`)
    L_G = -E D(x_D^fake)                                                                 (`hinge_generator_loss`)

The student's x0_hat for the adversarial branch comes from real latents re-noised at a time drawn like sCM's,
replaced by s = pi/2 (pure noise, the one-step generator's input) with probability 0.5 (`train_largest_timestep`,
`generator_time`). Options of SANA-Sprint: text-misaligned fakes (`misaligned_pairs_D`: real latents rolled by one
in the batch, kept with their original prompts, join the fakes; `misaligned_fakes`) and an R1 penalty on the heads'
inputs (`r1_penalty`).

**Mixed virtual batches** (our option, off by default; `mixed_logits`): StyleGAN-T and SANA-Sprint call the heads
on the fakes and on the reals separately, so every virtual batch of BatchNormLocal holds one kind only and its
per-channel statistics erase whatever shifts all of a kind's features alike (a colour cast, a brightness or contrast
change). On builtin:shapes-flow the heads then never separated the student's samples from real ones (hinge loss 1.00
over 1000 steps at heads' learning rates 1e-4 and 1e-3), and in a probe they could not learn a fixed per-channel
shift of +-0.1 between "real" and "fake" latents (loss 1.00 after 150 steps), which they learned within 25 steps
(0.80) when every virtual batch held both kinds. With the option, the heads see fakes and reals in one call,
interleaved so that each virtual batch holds both in proportion (`interleave_order`), in the D phase and in the
student's G phase (the reals' features computed without gradient); the logits of each kind are read back out. The
heads then learn, but on builtin:shapes-flow the students came out worse than without (benchmarks/RESULTS.md), so
SANA-Sprint's separate calls stay the default.

A UNet teacher has no token blocks: its down blocks and mid block serve instead (the maps `[B, C, h, w]` read as
`[B, C, h w]` in raster order, the order in which a patch transformer sees the same positions), as PCM's
discriminator on the teacher's trunk does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.features import capture_outputs
from sdtoolkit.core.trigflow import SIGMA_DATA, TrigFlowTeacher, trigflow_x0
from sdtoolkit.distill.scm import sample_time, trigflow_noise

__all__ = [
    "SANA_SPRINT_LAYERS",
    "BatchNormLocal",
    "DiscHead",
    "DiscriminatorHeads",
    "TeacherFeatures",
    "default_layers",
    "discriminator_time",
    "feature_blocks",
    "frozen_heads",
    "generator_time",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "interleave_order",
    "ladd_discriminator_loss",
    "ladd_generator_loss",
    "misaligned_fakes",
    "mixed_logits",
    "r1_penalty",
    "renoise",
    "student_x0",
    "tokens",
]

SANA_SPRINT_LAYERS = (2, 8, 14, 19)
"""SANA-Sprint's hooked blocks of the 20-block SANA 1.6B (`head_block_ids` of its 1.6B config)."""
SANA_SPRINT_DEPTH = 20


# ---------------------------------------------------------------------------------------------------- times


def discriminator_time(
    n: int,
    p_mean: float = -0.6,
    p_std: float = 1.0,
    sigma_data: float = SIGMA_DATA,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """s_D = arctan(e^tau / sigma_d), tau ~ N(p_mean, p_std^2): the TrigFlow time at which the discriminator sees
    re-noised latents (SANA-Sprint's `weighting_scheme_discriminator: logit_normal_trigflow` with
    `logit_mean_discriminator` -0.6 and `logit_std_discriminator` 1.0; its `compute_density_for_timestep_sampling`
    draws sigma = e^tau and returns atan(sigma / 0.5)). Median arctan(e^-0.6 / 0.5) ~ 0.83. `[n]` float32."""
    return sample_time(n, p_mean, p_std, sigma_data, generator=generator, device=device)


def generator_time(s: Tensor, largest_time: float = 1.5708, probability: float = 0.5) -> Tensor:
    """The TrigFlow time of the student's adversarial x0_hat: each sample's `s` replaced by `largest_time` (pure
    noise) with probability `probability` (SANA-Sprint's `train_largest_timestep`, `largest_timestep` 1.5708 with
    `largest_timestep_prob` 0.5: the one-step generator's input is trained adversarially half of the time)."""
    mask = torch.rand(s.shape, device=s.device) < probability
    return torch.where(mask, torch.full_like(s, largest_time), s)


# ---------------------------------------------------------------------------------------------------- losses


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = (mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2 (hinge, Lim & Ye 2017; SANA-Sprint's
    `loss_D = 0.5 * (loss_real + loss_gen)`), each mean over all logits of all heads."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """L_G = -mean D(fake) (SANA-Sprint's `adv_loss = -torch.mean(pred_fake)` for the hinge discriminator)."""
    return -fake_logits.mean()


def r1_penalty(heads: nn.Module, features: list[Tensor]) -> Tensor:
    """R1 on the heads' inputs (Mescheder et al. 2018; SANA-Sprint's `r1_penalty`): per sample the squared norm of
    d(sum of each head's logits) / d(its input), summed over heads, averaged over the batch and divided by the number
    of heads. `features` are the heads' inputs (real samples), detached here."""
    inputs = [f.detach().requires_grad_(True) for f in features]
    logits = heads(inputs)
    grads = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    penalty = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads)
    return penalty.mean() / len(inputs)


def misaligned_fakes(x0: Tensor) -> Tensor:
    """Real latents paired with the wrong prompt: x0 rolled by one along the batch (SANA-Sprint's
    `misaligned_pairs_D`); the discriminator sees them with the batch's own prompts, as fakes."""
    return torch.roll(x0, 1, 0)


# ---------------------------------------------------------------------------------------------------- heads


class BatchNormLocal(nn.Module):
    """BatchNorm over virtual batches (StyleGAN-T's `BatchNormLocal`, SANA-Sprint's `ladd_blocks.py`): the batch is
    split into ceil(B / virtual_batch) groups, each normalised with its own statistics over (samples, positions) per
    channel, never running statistics; then an affine map. `[B, C, N]` in and out."""

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-5):
        super().__init__()
        self.virtual_batch = virtual_batch
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        groups = math.ceil(x.shape[0] / self.virtual_batch)
        out = []
        for part in torch.tensor_split(x, groups):  # equal groups where B divides (StyleGAN-T's view(G, -1, C, N))
            mean = part.mean(dim=(0, 2), keepdim=True)
            var = part.var(dim=(0, 2), keepdim=True, unbiased=False)
            out.append((part - mean) / torch.sqrt(var + self.eps))
        return torch.cat(out) * self.weight[None, :, None] + self.bias[None, :, None]


def _block(channels: int, kernel_size: int, virtual_batch: int) -> nn.Sequential:
    """Spectral-norm Conv1d (circular padding) -> BatchNormLocal -> LeakyReLU 0.2 (StyleGAN-T's `make_block`)."""
    conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular")
    return nn.Sequential(spectral_norm(conv), BatchNormLocal(channels, virtual_batch), nn.LeakyReLU(0.2))


class DiscHead(nn.Module):
    """One discriminator head on `[B, C, N]` features (StyleGAN-T's `DiscHead` without class conditioning, as
    SANA-Sprint uses it): block(k=1) -> (x + block(k=9)(x)) / sqrt 2 -> spectral-norm Conv1d to one channel.
    Returns `[B, N]` logits."""

    def __init__(self, channels: int, virtual_batch: int = 8):
        super().__init__()
        self.block = _block(channels, 1, virtual_batch)
        self.residual = _block(channels, 9, virtual_batch)
        self.cls = spectral_norm(nn.Conv1d(channels, 1, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        # fewer positions than the k9 padding (tiny maps): the same circular convolution on the sequence repeated
        # (every op is position-wise, circular, or a per-channel statistic that repetition keeps)
        n = x.shape[-1]
        repeats = math.ceil(4 / n) if n < 4 else 1
        h = self.block(x.float().repeat(1, 1, repeats))
        h = (h + self.residual(h)) / math.sqrt(2)
        return self.cls(h)[:, 0, :n]


def tokens(feature: Tensor) -> Tensor:
    """`[B, C, N]` from a transformer block's `[B, N, C]` tokens or a UNet block's `[B, C, h, w]` map (raster
    order)."""
    return feature.transpose(1, 2) if feature.ndim == 3 else feature.flatten(2)


class DiscriminatorHeads(nn.Module):
    """The trainable part of the LADD discriminator: one `DiscHead` per hooked block; `forward(features)` takes the
    hooked features (`[B, N, C]` or `[B, C, h, w]` each) and returns the logits of all heads concatenated, `[B, sum
    N]` (SANA-Sprint's `SanaMSCMDiscriminator.forward`). Its state dict holds the heads only (`DiscHeadModel`)."""

    def __init__(self, channels: Sequence[int], virtual_batch: int = 8):
        super().__init__()
        self.heads = nn.ModuleList(DiscHead(c, virtual_batch) for c in channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(self.heads)} discriminator heads got {len(features)} feature maps")
        return torch.cat([head(tokens(f)) for head, f in zip(self.heads, features)], dim=1)


def interleave_order(n_a: int, n_b: int, device=None) -> Tensor:
    """A permutation of `[a_0 .. a_{n_a - 1}, b_0 .. b_{n_b - 1}]` that spreads each kind evenly: item k of a kind
    of n sits at the fraction (k + 1/2) / n, ties a first (n_a = n_b: a_0 b_0 a_1 b_1 ...). Contiguous virtual
    batches of the result hold both kinds in about the proportion n_a : n_b."""
    keys = torch.cat([(torch.arange(n_a) + 0.5) / n_a, (torch.arange(n_b) + 0.5) / n_b])
    return torch.argsort(keys, stable=True).to(device)


def mixed_logits(heads: nn.Module, features_a: list[Tensor], features_b: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The heads' logits of two kinds (e.g. fakes and reals) from one call in which every virtual batch of their
    BatchNormLocal holds both kinds (`interleave_order`), read back per kind: `([n_a, N], [n_b, N])`."""
    n_a, n_b = features_a[0].shape[0], features_b[0].shape[0]
    order = interleave_order(n_a, n_b, features_a[0].device)
    logits = heads([torch.cat([a, b])[order] for a, b in zip(features_a, features_b)])
    unmixed = torch.empty_like(logits)
    unmixed[order] = logits
    return unmixed[:n_a], unmixed[n_a:]


# ---------------------------------------------------------------------------------------------------- backbone


def feature_blocks(model: nn.Module) -> tuple[list[nn.Module], list[int]]:
    """The blocks a LADD discriminator can hook on `model`, in forward order, and their output channels: every
    transformer block (`transformer_blocks`, then FLUX's `single_transformer_blocks`), or a UNet's down blocks and
    mid block. Raises ValueError for a network with neither."""
    if hasattr(model, "down_blocks") and getattr(model, "mid_block", None) is not None:
        widths = list(model.config.block_out_channels)
        return [*model.down_blocks, model.mid_block], [*widths, widths[-1]]
    blocks = list(getattr(model, "transformer_blocks", None) or [])
    blocks += list(getattr(model, "single_transformer_blocks", None) or [])
    if not blocks:
        raise ValueError(
            f"LADD needs transformer blocks or a UNet's down/mid blocks to hook; {type(model).__name__} has neither"
        )
    width = int(model.config.num_attention_heads) * int(model.config.attention_head_dim)
    return blocks, [width] * len(blocks)


def default_layers(num_blocks: int, unet: bool = False) -> list[int]:
    """Hooked block indices: SANA-Sprint's [2, 8, 14, 19] of 20 at the same relative depths, round(k (n - 1) / 19)
    (so a 20-block transformer gets exactly SANA-Sprint's), duplicates dropped; a UNet: all down blocks and the mid
    block."""
    if unet:
        return list(range(num_blocks))
    scale = (num_blocks - 1) / (SANA_SPRINT_DEPTH - 1)
    return sorted({round(k * scale) for k in SANA_SPRINT_LAYERS})


class TeacherFeatures:
    """The frozen backbone of the LADD discriminator: the teacher's own network through its Denoiser at the native
    time matching TrigFlow time s (`TrigFlowTeacher.prediction`: input scaled by r_t, no guidance), with forward
    hooks on `layers` (indices into `feature_blocks`; None: `default_layers`). The forward stops after the last
    hooked block. Not a module: the teacher is neither trained nor saved with the heads."""

    def __init__(self, teacher: Denoiser, layers: Sequence[int] | None = None, sigma_data: float = SIGMA_DATA):
        model = teacher.base_model
        blocks, channels = feature_blocks(model)
        self.unet = hasattr(model, "mid_block") and hasattr(model, "down_blocks")
        layers = default_layers(len(blocks), self.unet) if layers is None else sorted(set(layers))
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad or not layers:
            kind = "down/mid blocks" if self.unet else "transformer blocks"
            raise ValueError(
                f"--discriminator-layers {list(layers)}: the teacher {type(model).__name__} has {len(blocks)} "
                f"{kind} (indices 0-{len(blocks) - 1})"
            )
        self.teacher = teacher
        self.layers = list(layers)
        self.blocks = [blocks[i] for i in self.layers]
        self.channels = [channels[i] for i in self.layers]
        self.trig = TrigFlowTeacher(teacher, sigma_data)
        self.output_index = 0 if self.unet else teacher.family.feature_output_index

    def __call__(self, x_s: Tensor, s: Tensor, cond: Conditioning) -> list[Tensor]:
        """Features `[B, N, C]` (or `[B, C, h, w]`) in float32 of the hooked blocks at TrigFlow (x_s, s); with
        gradient into x_s when it has one (the teacher's weights stay frozen)."""
        teacher = self.teacher
        embed = torch.zeros(x_s.shape[0], device=x_s.device) if teacher.time_cond_proj_dim is not None else None

        def run() -> None:
            self.trig.prediction(x_s, s, cond, guidance_embed=embed)

        features = capture_outputs(run, self.blocks, stop_after=self.blocks[-1], tuple_index=self.output_index)
        return [f.float() for f in features]


@contextlib.contextmanager
def frozen_heads(heads: nn.Module) -> Iterator[None]:
    """The heads in eval mode (no spectral-norm power iteration) for the generator's update, as SANA-Sprint's
    `disc.eval()` in its G phase; BatchNormLocal has no running statistics, so only the power iteration stops."""
    was_training = heads.training
    heads.train(False)
    try:
        yield
    finally:
        heads.train(was_training)


def student_x0(
    student: Denoiser,
    x0: Tensor,
    s: Tensor,
    cond: Conditioning,
    embed: Tensor | None = None,
    largest_time: float = 1.5708,
    largest_time_prob: float = 0.5,
    sigma_data: float = SIGMA_DATA,
) -> Tensor:
    """The student's clean estimate judged by the discriminator (SANA-Sprint's `train_largest_timestep` branch):
    real latents `x0` (the teacher's scale) re-noised at `s` [B] (drawn as sCM's), each s replaced by `largest_time`
    with probability `largest_time_prob` (`generator_time`), then x0_hat = cos(s) x_s - sigma_d sin(s) F_theta(x_s /
    sigma_d, s) in TrigFlow scale; `embed` is the student's guidance input. The network sees min(s, the largest
    float32 below pi/2), as the sampler (1.5708 lies just above pi/2)."""
    s = generator_time(s, largest_time, largest_time_prob)
    x_s = trigflow_noise(sigma_data * x0.float(), sigma_data * torch.randn_like(x0.float()), s)
    s_net = s.clamp(max=float(torch.nextafter(torch.tensor(math.pi / 2), torch.tensor(0.0))))
    F_theta = TrigFlowTeacher(student, sigma_data).F(x_s, s_net, cond, guidance_embed=embed).float()
    return trigflow_x0(x_s, F_theta, s, sigma_data)


def renoise(x0: Tensor, s: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """x_D = cos(s) x0 + sin(s) z, z ~ N(0, sigma_d^2 I): latents in TrigFlow scale re-noised to time s."""
    return trigflow_noise(x0, sigma_data * torch.randn_like(x0), s)


# ---------------------------------------------------------------------------------------------------- the two losses


def ladd_generator_loss(
    backbone: TeacherFeatures,
    heads: nn.Module,
    x0_hat: Tensor,
    cond: Conditioning,
    s_D: Tensor,
    sigma_data: float = SIGMA_DATA,
    x0_real: Tensor | None = None,
) -> Tensor:
    """The student's adversarial loss -mean D(x_D) for its clean estimate `x0_hat` (TrigFlow scale, with gradient)
    re-noised to `s_D`; the gradient reaches x0_hat through the frozen teacher's features, the heads run in eval mode
    (SANA-Sprint's G phase). The heads' own gradients from this loss are not theirs to use (the loop sets them
    aside). `x0_real` (TrigFlow scale): real latents, re-noised to the same `s_D` with the batch's `cond`, that share
    the heads' virtual batches with the fakes (`mixed_logits`; their features carry no gradient); None: the fakes
    alone, as SANA-Sprint."""
    x_D = renoise(x0_hat, s_D, sigma_data)
    fake_features = backbone(x_D, s_D, cond)
    with frozen_heads(heads):
        if x0_real is None:
            logits = heads(fake_features)
        else:
            with torch.no_grad():
                real_features = backbone(renoise(x0_real.float(), s_D, sigma_data), s_D, cond)
            logits = mixed_logits(heads, fake_features, real_features)[0]
    return hinge_generator_loss(logits)


def ladd_discriminator_loss(
    backbone: TeacherFeatures,
    heads: nn.Module,
    x0_fake: Tensor,
    x0_real: Tensor,
    cond: Conditioning,
    s_D: Tensor,
    misaligned: tuple[Tensor, Tensor] | None = None,
    r1_weight: float = 0.0,
    sigma_data: float = SIGMA_DATA,
    mixed: bool = False,
) -> dict[str, Tensor]:
    """The heads' loss for one batch (SANA-Sprint's D phase): the student's `x0_fake` (no gradient) and the real
    `x0_real` (TrigFlow scale), each re-noised to `s_D` with its own noise (fake first, then real); `misaligned`
    = (x0, s) of text-misaligned reals (`misaligned_fakes`), re-noised and added to the fakes with the batch's own
    prompts; hinge loss (`hinge_discriminator_loss`) plus `r1_weight` times the R1 penalty on the real features.
    The teacher's features carry no gradient. `mixed`: fakes and reals share the heads' virtual batches
    (`mixed_logits`); False: two calls, as SANA-Sprint. Returns `{"loss", "real", "fake", "r1"?}` (logit means, for
    logs)."""
    x_fake = renoise(x0_fake.detach(), s_D, sigma_data)
    x_real = renoise(x0_real, s_D, sigma_data)
    s_fake, cond_fake = s_D, cond
    if misaligned is not None:
        shifted, s_shifted = misaligned
        x_fake = torch.cat([x_fake, renoise(shifted, s_shifted, sigma_data)])
        s_fake, cond_fake = torch.cat([s_D, s_shifted]), Conditioning.cat([cond, cond])
    with torch.no_grad():
        fake_features = backbone(x_fake, s_fake, cond_fake)
        real_features = backbone(x_real, s_D, cond)
    if mixed:
        fake_logits, real_logits = mixed_logits(heads, fake_features, real_features)
    else:
        fake_logits, real_logits = heads(fake_features), heads(real_features)
    loss = hinge_discriminator_loss(real_logits, fake_logits)
    out = {"real": real_logits.detach().mean(), "fake": fake_logits.detach().mean()}
    if r1_weight > 0:
        r1 = r1_penalty(heads, real_features)
        loss = loss + r1_weight * r1
        out["r1"] = r1.detach()
    return {"loss": loss, **out}
