"""Identities of the noise schedules and their construction from diffusers scheduler configs."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, SCMScheduler

from sdtoolkit.core.schedules import FlowSchedule, TrigFlowSchedule, VPSchedule, make_betas, schedule_from_config


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_vp_matches_diffusers_alphas_cumprod(beta_schedule):
    scheduler = DDPMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012)
    schedule = schedule_from_config(scheduler.config)
    assert isinstance(schedule, VPSchedule)
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(t) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_vp_is_variance_preserving_and_snr_monotone():
    schedule = VPSchedule(make_betas(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    t = torch.linspace(0, 999, 4001, dtype=torch.float64)  # includes non-integer times (interpolated)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t))
    snr = schedule.snr(t)
    assert (snr[1:] < snr[:-1]).all()


def test_vp_derivatives_match_finite_differences():
    schedule = VPSchedule(make_betas(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    t = torch.tensor([10.3, 250.5, 700.25, 990.75], dtype=torch.float64)
    h = 1e-4
    for f, df in [(schedule.alpha, schedule.d_alpha), (schedule.sigma, schedule.d_sigma)]:
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=1e-5, atol=1e-9)


def test_zero_terminal_snr_rescale():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, beta_schedule="scaled_linear")
    schedule = schedule_from_config(scheduler.config)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-4, atol=1e-6)
    assert schedule.alpha(torch.tensor([999.0])).item() < 1e-5


def test_flow_endpoints_shift_and_config():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule = schedule_from_config(scheduler)
    assert isinstance(schedule, FlowSchedule) and schedule.shift == 3.0
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(schedule.add_noise(x0, eps, torch.zeros(2)), x0)
    torch.testing.assert_close(schedule.add_noise(x0, eps, torch.ones(2)), eps)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(schedule.shift_time(t), 3 * t / (1 + 2 * t))
    torch.testing.assert_close(schedule.model_timestep(t), t * 1000)


def test_trigflow_endpoints_and_config():
    schedule = schedule_from_config(SCMScheduler(sigma_data=0.5))
    assert isinstance(schedule, TrigFlowSchedule) and schedule.sigma_data == 0.5
    x0, eps = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(schedule.add_noise(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(schedule.add_noise(x0, eps, torch.full((3,), math.pi / 2)), 0.5 * eps)
    # cos^2 + (sigma/sigma_d)^2 = 1
    t = torch.linspace(0, math.pi / 2, 11)
    torch.testing.assert_close(schedule.alpha(t) ** 2 + (schedule.sigma(t) / 0.5) ** 2, torch.ones_like(t))


def test_unknown_scheduler_and_beta_schedule_errors_name_choices():
    with pytest.raises(ValueError, match="known schedulers: .*DDIMScheduler"):
        schedule_from_config({"_class_name": "MadeUpScheduler"})
    with pytest.raises(ValueError, match="scaled_linear"):
        make_betas(beta_schedule="cubic")


def test_sana_dpm_solver_flow_shift_is_the_flow_schedules_shift():
    """SANA's stock scheduler is DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3): the teacher's
    schedule takes that shift (it was read as 1 before); an explicit `shift` still wins."""
    from diffusers import DPMSolverMultistepScheduler

    stock = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    schedule = schedule_from_config(stock)
    assert isinstance(schedule, FlowSchedule) and schedule.shift == 3.0
    assert schedule_from_config({**stock.config, "shift": 2.0}).shift == 2.0
    assert schedule_from_config(FlowMatchEulerDiscreteScheduler()).shift == 1.0
