"""Noise schedules x_t = alpha_t * x0 + sigma_t * eps: discrete VP (DDPM / Stable Diffusion), rectified flow, TrigFlow.

Every schedule is written in its own native time `t` and exposes the same five numbers, so the Denoiser can convert
between prediction types without knowing which schedule it holds:

- `alpha(t)`, `sigma(t)`: the marginal x_t = alpha_t x0 + sigma_t eps, eps ~ N(0, I);
- `d_alpha(t)`, `d_sigma(t)`: their time derivatives (the flow velocity is u = d_alpha x0 + d_sigma eps);
- `model_timestep(t)`: the value a diffusers network receives as its `timestep` argument.

| schedule | native t | alpha_t | sigma_t | network timestep |
|---|---|---|---|---|
| `VPSchedule` (DDPM, Ho et al. 2020) | index in [0, T-1], float | sqrt(alphā_t) | sqrt(1 - alphā_t) | t |
| `FlowSchedule` (Liu et al. 2022; Esser et al. 2024) | sigma in [0, 1] | 1 - t | t | t * T |
| `TrigFlowSchedule` (Lu & Song 2024, sCM) | angle in [0, pi/2] | cos t | sigma_d sin t | t * time_scale |
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sdtoolkit.core.utils import append_dims

__all__ = [
    "NoiseSchedule",
    "VPSchedule",
    "DynamicShift",
    "FlowSchedule",
    "TrigFlowSchedule",
    "make_betas",
    "schedule_from_config",
]


class NoiseSchedule(ABC):
    """Base class: the forward process x_t = alpha_t x0 + sigma_t eps in the schedule's native time `t`."""

    #: smallest and largest valid native time
    t_min: float = 0.0
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal coefficient alpha_t, same shape as `t`."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise coefficient sigma_t, same shape as `t`."""

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """d alpha_t / dt."""

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor:
        """d sigma_t / dt."""

    def model_timestep(self, t: Tensor) -> Tensor:
        """The `timestep` argument the wrapped network expects for native time `t`."""
        return t

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio SNR(t) = alpha_t^2 / sigma_t^2 (Kingma et al. 2021, Eq. 1)."""
        return self.alpha(t) ** 2 / self.sigma(t) ** 2

    def time_from_fraction(self, fraction: Tensor | float) -> Tensor:
        """Native time at `fraction` in [0, 1] of the schedule's range: t_min + fraction (t_max - t_min).

        The one conversion every "fraction of the schedule" setting goes through (DMD2's `min_step_percent`,
        threestudio's `min_step_percent` / `max_step_percent`, SDS annealing). Keeps `fraction`'s dtype (float64
        in, float64 out)."""
        fraction = torch.as_tensor(fraction, dtype=torch.float64) if not isinstance(fraction, Tensor) else fraction
        return self.t_min + fraction * (self.t_max - self.t_min)

    def add_noise(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = alpha_t x0 + sigma_t eps, with `t` of shape [B] broadcast over the sample dimensions."""
        alpha_t = append_dims(self.alpha(t), x0.ndim).to(x0.dtype)
        sigma_t = append_dims(self.sigma(t), x0.ndim).to(x0.dtype)
        return alpha_t * x0 + sigma_t * eps

    # ------------------------------------------------------------------ time grids (the schedule owns time)

    def grid(self, num_points: int) -> Tensor:
        """The N-point solver grid of the teacher's PF-ODE in native time, ascending, ending at the noisiest time
        (LCM's skipping-step grid, Luo et al. 2023, Sec. 4.3): t_i = t_min + i (t_max - t_min) / N, i = 1..N.
        VP overrides it with diffusers' integer DDIM grid, flow applies its time shift."""
        _check_points(num_points)
        i = torch.arange(1, num_points + 1, dtype=torch.float64)
        return self.t_min + i * (self.t_max - self.t_min) / num_points

    def grid_predecessor(self, t: Tensor, num_points: int) -> Tensor:
        """The grid point one solver step below each grid time `t` (`t_min` below the first): LCM's t_n for
        t_{n+k}. `t` must lie on `grid(num_points)`."""
        grid = self.grid(num_points).to(t.device, torch.float64)
        index = torch.searchsorted(grid, t.to(torch.float64) - 1e-9 * (self.t_max - self.t_min))
        below = torch.cat([grid.new_tensor([self.t_min]), grid])[index]
        return below.to(t.dtype)

    def student_timesteps(self, num_steps: int, original_steps: int | None = None) -> list[float]:
        """The k-step student's times, noisiest first: `grid(original_steps)` reversed, at indices
        floor(i N / k), i = 0..k-1, exactly what a stock `LCMScheduler` / `TCDScheduler` with
        `original_inference_steps = N` samples (N = k when not given: 1 -> [T-1], 2 -> [T-1, T/2-1], ...)."""
        original_steps = num_steps if original_steps is None else original_steps
        _check_points(original_steps)
        if not 1 <= num_steps <= original_steps:
            raise ValueError(f"num_steps={num_steps} must lie in [1, {original_steps}] (the solver grid size)")
        grid = self.grid(original_steps).flip(0)
        indices = torch.floor(torch.arange(num_steps, dtype=torch.float64) * (original_steps / num_steps)).long()
        return [float(x) for x in grid[indices]]

    def transition(self, x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Diffuses x_s forward from time s to t >= s: x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t /
        alpha_s)^2 sigma_s^2) eps, the Gaussian transition of x_t = alpha_t x0 + sigma_t eps (Kingma et al. 2021,
        Eq. 2-3; PCM's `noise_travel`), for VP, flow and TrigFlow alike."""
        alpha_s, alpha_t = append_dims(self.alpha(s), x_s.ndim), append_dims(self.alpha(t), x_s.ndim)
        sigma_s, sigma_t = append_dims(self.sigma(s), x_s.ndim), append_dims(self.sigma(t), x_s.ndim)
        ratio = (alpha_t / alpha_s).to(x_s.dtype)
        std = (sigma_t**2 - ratio**2 * sigma_s**2).clamp(min=0).sqrt().to(x_s.dtype)
        return ratio * x_s + std * noise

    def solver_step(self, x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
        """The deterministic PF-ODE step from a prediction (x0, eps) at any time to time s: x_s = alpha_s x0 +
        sigma_s eps. It is DDIM with eta = 0 for VP (Song et al. 2021, Eq. 12) and exactly the Euler step
        x_s = x_t + (s - t) u of rectified flow (u = eps - x0), so one formula serves every family."""
        return self.add_noise(x0, eps, s)

    def check_time(self, t: Tensor, what: str = "time") -> None:
        """Raises when a native time lies outside [t_min, t_max] (e.g. a VP integer timestep given to a flow
        teacher, whose times lie in [0, 1])."""
        lo, hi = float(t.min()), float(t.max())
        span = self.t_max - self.t_min
        if lo < self.t_min - 1e-6 * span or hi > self.t_max + 1e-6 * span:
            raise ValueError(
                f"{what} {lo:g}..{hi:g} lies outside {type(self).__name__}'s native time range "
                f"[{self.t_min:g}, {self.t_max:g}]"
            )

    def coefficients(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha_t, sigma_t, d_alpha_t, d_sigma_t), each broadcast to `ndim` dimensions."""
        return tuple(append_dims(f(t), ndim) for f in (self.alpha, self.sigma, self.d_alpha, self.d_sigma))


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: list[float] | None = None,
) -> Tensor:
    """DDPM betas as diffusers builds them: `linear` (Ho et al. 2020), `scaled_linear` (Stable Diffusion: linear in
    sqrt(beta)), `squaredcos_cap_v2` (Nichol & Dhariwal 2021, Eq. 17). Returned in float64."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float64)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(
        f"beta_schedule={beta_schedule!r} is not supported; choose one of 'linear', 'scaled_linear', "
        "'squaredcos_cap_v2' or pass trained_betas"
    )


class VPSchedule(NoiseSchedule):
    """Discrete variance-preserving schedule of DDPM (Ho et al. 2020, Eq. 4) as Stable Diffusion uses it.

    alphā_t = prod_{s<=t} (1 - beta_s); alpha_t = sqrt(alphā_t), sigma_t = sqrt(1 - alphā_t), so
    alpha_t^2 + sigma_t^2 = 1. Native time is the (float) timestep index t in [0, T-1]; between integer steps the
    log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) is interpolated linearly, which keeps alpha, sigma exact on the
    grid, VP everywhere, and differentiable in t (d_alpha, d_sigma from lambda'):
    d alpha / dt = 1/2 alpha sigma^2 lambda',  d sigma / dt = -1/2 sigma alpha^2 lambda'.
    """

    def __init__(self, betas: Tensor, rescale_betas_zero_snr: bool = False):
        betas = betas.to(torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if rescale_betas_zero_snr:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = len(betas)
        # keep lambda finite at a zero-terminal-SNR end point
        ac = alphas_cumprod.clamp(1e-12, 1 - 1e-12)
        self.log_snr_table = torch.log(ac) - torch.log1p(-ac)
        self.t_min, self.t_max = 0.0, float(self.num_train_timesteps - 1)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VPSchedule:
        """Builds the schedule from a diffusers DDPM/DDIM/PNDM/LCM/TCD/Euler scheduler config."""
        betas = make_betas(
            num_train_timesteps=config.get("num_train_timesteps", 1000),
            beta_start=config.get("beta_start", 0.0001),
            beta_end=config.get("beta_end", 0.02),
            beta_schedule=config.get("beta_schedule", "linear"),
            trained_betas=config.get("trained_betas"),
        )
        return cls(betas, rescale_betas_zero_snr=config.get("rescale_betas_zero_snr", False))

    def time_from_fraction(self, fraction: Tensor | float) -> Tensor:
        """The integer timestep at `fraction` of the T training steps: round(fraction T) (round half to even, as
        Python's `round` and `torch.round`), clamped to [0, T - 1]; DMD2's `int(0.02 T)` = 20 and threestudio's
        `int(T * 0.98)` = 980 for T = 1000. Returned as a float tensor of `fraction`'s dtype (float64 for a
        Python float)."""
        fraction = torch.as_tensor(fraction, dtype=torch.float64) if not isinstance(fraction, Tensor) else fraction
        T = self.num_train_timesteps
        return (fraction * T).round().clamp(0, T - 1)

    def grid(self, num_points: int) -> Tensor:
        """diffusers' DDIM solver grid t_i = i k - 1, k = T // N, i = 1..N (LCM Sec. 4.3; `DDIMSolver` of the LCM
        scripts): 19, 39, ..., 999 for T = 1000, N = 50. Integer times as float64."""
        _check_points(num_points, self.num_train_timesteps)
        k = self.num_train_timesteps // num_points
        return (torch.arange(1, num_points + 1, dtype=torch.float64) * k - 1).clamp(min=0)

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t, linearly interpolated between integer timesteps."""
        table = self.log_snr_table.to(t.device)
        t64 = t.to(torch.float64).clamp(self.t_min, self.t_max)
        lo = t64.floor().long().clamp(max=self.num_train_timesteps - 2)
        frac = t64 - lo
        return (table[lo] * (1 - frac) + table[lo + 1] * frac).to(_float_dtype(t))

    def _d_log_snr(self, t: Tensor) -> Tensor:
        table = self.log_snr_table.to(t.device)
        lo = t.to(torch.float64).clamp(self.t_min, self.t_max).floor().long().clamp(max=self.num_train_timesteps - 2)
        return (table[lo + 1] - table[lo]).to(_float_dtype(t))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def d_alpha(self, t: Tensor) -> Tensor:
        return _vp_derivatives(self.alpha(t), self.sigma(t), self._d_log_snr(t))[0]

    def d_sigma(self, t: Tensor) -> Tensor:
        return _vp_derivatives(self.alpha(t), self.sigma(t), self._d_log_snr(t))[1]

    def snr(self, t: Tensor) -> Tensor:
        return self.log_snr(t).exp()

    def coefficients(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha_t, sigma_t, d_alpha_t, d_sigma_t) from ONE table lookup of lambda_t: the same formulas as `alpha`,
        `sigma`, `d_alpha` and `d_sigma` (bitwise the same values), without the eight interpolations those four calls
        make (every prediction asks for all four)."""
        log_snr = self.log_snr(t)
        alpha, sigma = torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
        d_alpha, d_sigma = _vp_derivatives(alpha, sigma, self._d_log_snr(t))
        return tuple(append_dims(v, ndim) for v in (alpha, sigma, d_alpha, d_sigma))


def _vp_derivatives(alpha: Tensor, sigma: Tensor, d_log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """(d alpha_t / dt, d sigma_t / dt) of a VP schedule from d lambda_t / dt: with alpha^2 = sigmoid(lambda) and
    sigma^2 = sigmoid(-lambda), d alpha / d lambda = alpha sigma^2 / 2 and d sigma / d lambda = -sigma alpha^2 / 2."""
    return 0.5 * alpha * sigma**2 * d_log_snr, -0.5 * sigma * alpha**2 * d_log_snr


def _rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1."""
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    return alphas_bar_sqrt**2


@dataclass(frozen=True)
class DynamicShift:
    """FLUX's resolution-dependent time shift (diffusers' `use_dynamic_shifting`): mu grows linearly in the image
    token count from `base_shift` at `base_image_seq_len` to `max_shift` at `max_image_seq_len` (`calculate_shift`
    of FluxPipeline), and sigmas are shifted by exp(mu) / (exp(mu) + (1 / t - 1)) (`exponential`) or
    mu / (mu + (1 / t - 1)) (`linear`)."""

    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"

    def mu(self, image_seq_len: int) -> float:
        """diffusers' `calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)`."""
        m = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * m + self.base_shift - m * self.base_image_seq_len


FLOW_SIGMAS = ("scheduler", "inverse_steps")
"""How a stock pipeline sets a flow sampler's base sigmas before shifting (`FlowSchedule.sigmas`)."""


DENSE_GRID_TIMESTEPS = 1000
"""The training-timestep count whose sampling grid a dense-time flow network (num_train_timesteps = 1) keeps: the
1000 of the SD3 / SANA / FLUX teacher it was prepared from."""


class FlowSchedule(NoiseSchedule):
    """Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023): x_t = (1 - t) x0 + t eps, t in [0, 1].

    The network predicts the velocity u = dx_t/dt = eps - x0 and receives t * T as its timestep (SD3, SANA, FLUX
    in diffusers). `shift` is the resolution-dependent time shift of Esser et al. 2024 (SD3), Eq. 23:
    t' = shift t / (1 + (shift - 1) t), applied when building a sampling grid. With `dynamic` (FLUX's
    `use_dynamic_shifting`) the shift depends on the image token count instead: `at_image_seq_len(n)` fixes it
    (`Denoiser.set_latent_size` does this for the training resolution); grids need it fixed.

    `sigmas` says how the stock pipeline sets the base sigmas it shifts: `scheduler` (the scheduler's default,
    linspace(1, sigma_min, N): SD3, SANA) or `inverse_steps` (linspace(1, 1/N, N): FluxPipeline).

    `num_train_timesteps` = 1 is a dense-time network (`dense`): it receives t itself, not 1000 t (SANA-Sprint's
    teacher preparation, `timestep_norm_scale_factor`). Stock `FlowMatchEulerDiscreteScheduler` with that setting
    feeds t, but its own N-step grid degenerates to sigma 1 (its sigma_min is 1 / T = 1), so exports of such a
    network pass `sigmas`; `grid` keeps the 1000-timestep grid of the network's teacher (`DENSE_GRID_TIMESTEPS`).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        *,
        dynamic: DynamicShift | None = None,
        mu: float | None = None,
        sigmas: str = "scheduler",
    ):
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if sigmas not in FLOW_SIGMAS:
            raise ValueError(f"sigmas={sigmas!r}; choose one of {', '.join(FLOW_SIGMAS)}")
        self.num_train_timesteps = num_train_timesteps
        self.shift = shift
        self.dynamic = dynamic
        self.mu = mu
        self.sigmas = sigmas
        self.t_min, self.t_max = 0.0, 1.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowSchedule:
        """Builds the schedule from a diffusers FlowMatchEulerDiscreteScheduler (or FlowMatch*) config, including
        FLUX's dynamic shifting (`use_dynamic_shifting`, `base_shift`, `max_shift`, `base_image_seq_len`,
        `max_image_seq_len`, `time_shift_type`)."""
        dynamic = None
        if config.get("use_dynamic_shifting"):
            dynamic = DynamicShift(
                base_shift=config.get("base_shift", 0.5),
                max_shift=config.get("max_shift", 1.15),
                base_image_seq_len=config.get("base_image_seq_len", 256),
                max_image_seq_len=config.get("max_image_seq_len", 4096),
                time_shift_type=config.get("time_shift_type", "exponential"),
            )
        shift = config.get("shift")
        if shift is None:  # SANA's stock DPMSolverMultistepScheduler(use_flow_sigmas=True) names it flow_shift
            shift = config.get("flow_shift", 1.0) if config.get("use_flow_sigmas") else 1.0
        return cls(num_train_timesteps=config.get("num_train_timesteps", 1000), shift=shift, dynamic=dynamic)

    @property
    def dense(self) -> bool:
        """Whether the network's timestep is the flow time t itself (num_train_timesteps = 1), not 1000 t."""
        return self.num_train_timesteps == 1

    def replace(self, **changes: Any) -> FlowSchedule:
        """A copy with some of `num_train_timesteps`, `shift`, `dynamic`, `mu`, `sigmas` changed."""
        values = {k: getattr(self, k) for k in ("num_train_timesteps", "shift", "dynamic", "mu", "sigmas")}
        values.update(changes)
        return FlowSchedule(values.pop("num_train_timesteps"), values.pop("shift"), **values)

    def at_image_seq_len(self, image_seq_len: int) -> FlowSchedule:
        """This schedule with the dynamic shift fixed for `image_seq_len` image tokens (unchanged without one)."""
        return self if self.dynamic is None else self.replace(mu=self.dynamic.mu(image_seq_len))

    def shift_time(self, t: Tensor) -> Tensor:
        """SD3's time shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024, Eq. 23), or with dynamic shifting
        FLUX's exp(mu) / (exp(mu) + (1 / t - 1)) (`linear`: mu / (mu + (1 / t - 1))) at the fixed mu."""
        if self.dynamic is None:
            return self.shift * t / (1 + (self.shift - 1) * t)
        if self.mu is None:
            raise ValueError(
                "this flow schedule shifts time by resolution (use_dynamic_shifting, FLUX): fix the image size "
                "first with FlowSchedule.at_image_seq_len or Denoiser.set_latent_size"
            )
        scale = math.exp(self.mu) if self.dynamic.time_shift_type == "exponential" else self.mu
        return scale / (scale + (1 / t - 1))

    def grid(self, num_points: int) -> Tensor:
        """The times of the stock pipeline's `FlowMatchEulerDiscreteScheduler` with N steps, ascending.

        `sigmas="scheduler"` (SD3, SANA): shift_time(linspace(1, sigma_min, N)) reversed, where sigma_min is the
        scheduler's smallest training sigma (already shifted once for a static shift, so diffusers shifts it twice;
        1/T with dynamic shifting). `sigmas="inverse_steps"` (FluxPipeline): shift_time(linspace(1, 1/N, N)).
        N = 1 gives t = 1. A dense-time network (T = 1) gets the grid of T = `DENSE_GRID_TIMESTEPS`, its teacher's."""
        _check_points(num_points)
        T = DENSE_GRID_TIMESTEPS if self.dense else self.num_train_timesteps
        if self.sigmas == "inverse_steps":
            lowest = 1.0 / num_points
        elif self.dynamic is None:
            lowest = float(self.shift_time(torch.tensor(1.0 / T, dtype=torch.float64)))
        else:
            lowest = 1.0 / T
        return self.shift_time(torch.linspace(1.0, lowest, num_points, dtype=torch.float64)).flip(0)

    def student_timesteps(self, num_steps: int, original_steps: int | None = None) -> list[float]:
        """The k-step student's times, noisiest first: the stock FlowMatch Euler sampler's k-step grid
        (`grid(k)` reversed), which is what an exported flow student samples. Unlike VP's LCMScheduler this grid
        is not a subset of the N-point solver grid; `original_steps` only bounds k."""
        original_steps = num_steps if original_steps is None else original_steps
        _check_points(original_steps)
        if not 1 <= num_steps <= original_steps:
            raise ValueError(f"num_steps={num_steps} must lie in [1, {original_steps}] (the solver grid size)")
        return [float(x) for x in self.grid(num_steps).flip(0)]

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def model_timestep(self, t: Tensor) -> Tensor:
        return t * self.num_train_timesteps


class TrigFlowSchedule(NoiseSchedule):
    """TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models", Eq. 3):
    x_t = cos(t) x0 + sin(t) z with z ~ N(0, sigma_d^2 I), t in [0, pi/2].

    Written with unit noise eps = z / sigma_d: alpha_t = cos t, sigma_t = sigma_d sin t. The TrigFlow network
    F_theta(x_t / sigma_d, c_noise(t)) predicts the scaled velocity F = (dx_t/dt) / sigma_d, so that
    x0 = cos(t) x_t - sigma_d sin(t) F (Eq. 6). `time_scale` maps t to the network's timestep (c_noise(t) = t for
    sCM; 1000 t for networks trained on a 0..1000 embedding).
    """

    def __init__(self, sigma_data: float = 0.5, time_scale: float = 1.0):
        self.sigma_data = sigma_data
        self.time_scale = time_scale
        self.t_min, self.t_max = 0.0, math.pi / 2

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrigFlowSchedule:
        """Builds the schedule from a diffusers SCMScheduler config (`sigma_data`)."""
        return cls(sigma_data=config.get("sigma_data", 0.5), time_scale=config.get("time_scale", 1.0))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.sin(t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.sigma_data * torch.cos(t)

    def model_timestep(self, t: Tensor) -> Tensor:
        return t * self.time_scale


_VP_SCHEDULERS = {
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "LCMScheduler",
    "TCDScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler",
}
_FLOW_SCHEDULERS = {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler"}
_TRIGFLOW_SCHEDULERS = {"SCMScheduler"}


def schedule_from_config(config: dict[str, Any] | Any) -> NoiseSchedule:
    """Builds the matching schedule from a diffusers scheduler, its `config`, or its JSON dict.

    The family is decided by the scheduler class (or the config's `_class_name`); a config without one is read as
    VP when it has `beta_schedule`.
    """
    name = None
    if hasattr(config, "config") and hasattr(config, "step"):  # a scheduler object
        name = type(config).__name__
        config = config.config
    config = dict(config)
    name = name or config.get("_class_name")
    if name in _FLOW_SCHEDULERS or config.get("use_flow_sigmas"):
        return FlowSchedule.from_config(config)
    if name in _TRIGFLOW_SCHEDULERS:
        return TrigFlowSchedule.from_config(config)
    if name in _VP_SCHEDULERS or (name is None and "beta_schedule" in config):
        return VPSchedule.from_config(config)
    known = sorted(_VP_SCHEDULERS | _FLOW_SCHEDULERS | _TRIGFLOW_SCHEDULERS)
    raise ValueError(f"scheduler {name!r} has no matching noise schedule; known schedulers: {', '.join(known)}")


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _check_points(num_points: int, limit: int | None = None) -> None:
    if not isinstance(num_points, int) or num_points < 1 or (limit is not None and num_points > limit):
        bound = f"[1, {limit}]" if limit is not None else ">= 1"
        raise ValueError(f"a time grid needs a whole number of points in {bound}, got {num_points!r}")
