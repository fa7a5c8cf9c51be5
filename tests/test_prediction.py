"""Prediction-type conversions round-trip for every schedule, and match the schedulers' definitions."""

import math

import pytest
import torch

from sdtoolkit.core.prediction import (
    PREDICTION_TYPES,
    Coefficients,
    canonical_prediction_type,
    convert,
    from_x0_eps,
    to_x0_eps,
)
from sdtoolkit.core.schedules import FlowSchedule, TrigFlowSchedule, VPSchedule, make_betas

SCHEDULES = {
    "vp": (VPSchedule(make_betas(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)), (1.0, 998.0)),
    "flow": (FlowSchedule(shift=3.0), (0.02, 0.98)),
    "trigflow": (TrigFlowSchedule(sigma_data=0.5), (0.05, math.pi / 2 - 0.05)),
}


def _coefficients(schedule, t, ndim):
    a, s, da, ds = schedule.coefficients(t, ndim)
    return Coefficients(a, s, da, ds, getattr(schedule, "sigma_data", 1.0))


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("source", PREDICTION_TYPES)
@pytest.mark.parametrize("target", PREDICTION_TYPES)
def test_conversions_round_trip(name, source, target):
    schedule, (lo, hi) = SCHEDULES[name]
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 4, 6, 6, generator=generator, dtype=torch.float64)
    eps = torch.randn(5, 4, 6, 6, generator=generator, dtype=torch.float64)
    t = torch.linspace(lo, hi, 5, dtype=torch.float64)
    c = _coefficients(schedule, t, 4)
    x_t = schedule.add_noise(x0, eps, t)
    prediction = from_x0_eps(x0, eps, source, c)
    # the (x0, eps) pair is recovered from any prediction type
    x0_hat, eps_hat = to_x0_eps(prediction, x_t, source, c)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)
    # and converting source -> target -> source is the identity
    there = convert(prediction, x_t, source, target, c)
    torch.testing.assert_close(there, from_x0_eps(x0, eps, target, c))
    torch.testing.assert_close(convert(there, x_t, target, source, c), prediction)


def test_definitions_match_known_formulas():
    x0, eps = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    flow = FlowSchedule()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    torch.testing.assert_close(from_x0_eps(x0, eps, "flow", _coefficients(flow, t, 4)), eps - x0)  # u = eps - x0
    vp, _ = SCHEDULES["vp"]
    t = torch.tensor([100.0, 800.0], dtype=torch.float64)
    c = _coefficients(vp, t, 4)
    torch.testing.assert_close(from_x0_eps(x0, eps, "v_prediction", c), c.alpha_t * eps - c.sigma_t * x0)
    trig = TrigFlowSchedule(sigma_data=0.5)
    t = torch.tensor([0.4, 1.1], dtype=torch.float64)
    c = _coefficients(trig, t, 4)
    x_t = trig.add_noise(x0, eps, t)
    F = from_x0_eps(x0, eps, "trigflow", c)
    # Lu & Song 2024 Eq. 6: x0 = cos t x_t - sigma_d sin t F
    torch.testing.assert_close(torch.cos(c.alpha_t.acos()) * x_t - 0.5 * torch.sin(t)[:, None, None, None] * F, x0)


def test_v_prediction_matches_diffusers_get_velocity():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    vp = VPSchedule.from_config(scheduler.config)
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    timesteps = torch.tensor([10, 900])
    expected = scheduler.get_velocity(x0, eps, timesteps)
    c = _coefficients(vp, timesteps.float(), 4)
    torch.testing.assert_close(from_x0_eps(x0, eps, "v_prediction", c).float(), expected, rtol=1e-5, atol=1e-5)


def test_aliases_and_bad_names():
    assert canonical_prediction_type("eps") == "epsilon"
    assert canonical_prediction_type("x0") == "sample"
    assert canonical_prediction_type("v") == "v_prediction"
    with pytest.raises(ValueError, match="epsilon, sample, v_prediction, flow, trigflow"):
        canonical_prediction_type("noise")
