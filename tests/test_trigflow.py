"""The training-free TrigFlow view of a teacher (sCM / SANA-Sprint): at matched times the converted teacher's clean
estimate is sigma_d times the original's, to float precision, for flow (tiny SANA), VP-epsilon and VP-v teachers;
and for a flow teacher F equals SANA-Sprint's closed form."""

import math

import pytest
import torch

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.schedules import FlowSchedule, VPSchedule
from sdtoolkit.core.trigflow import (
    TrigFlowTeacher,
    matched_time,
    teacher_input,
    trigflow_x0,
)
from sdtoolkit.core.utils import append_dims
from sdtoolkit.testing import tiny_sana_pipeline, tiny_sd_pipeline


def sana_sprint_flow_to_trigflow(x_in: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SANA-Sprint's F from a flow teacher's velocity v at its input x_in and flow time t (`SanaTrigFlow.forward` in
    diffusers' research script): [(1 - 2t) x_in + (1 - 2t + 2t^2) v] / sqrt(t^2 + (1 - t)^2)."""
    t = append_dims(t.to(x_in.dtype), x_in.ndim)
    return ((1 - 2 * t) * x_in + (1 - 2 * t + 2 * t**2) * v) / torch.sqrt(t**2 + (1 - t) ** 2)


S = torch.tensor([0.05, 0.4, 0.785, 1.2, 1.5], dtype=torch.float64)


def test_matched_time_has_the_same_noise_to_signal_ratio():
    flow = FlowSchedule()
    t = matched_time(flow, S)
    torch.testing.assert_close(t, torch.sin(S) / (torch.sin(S) + torch.cos(S)))
    vp = tiny_vp()
    t_vp = matched_time(vp, S[:4])
    torch.testing.assert_close(vp.sigma(t_vp) / vp.alpha(t_vp), torch.tan(S[:4]), rtol=1e-10, atol=0)
    # beyond the VP teacher's noisiest time: clamped to its end
    assert matched_time(vp, torch.tensor([math.pi / 2], dtype=torch.float64)).item() == pytest.approx(vp.t_max)
    # float32 pi/2 and SCMScheduler's 1.5708 lie just above pi/2 (tan < 0 there): still the schedule's noisiest end
    for s_end in (torch.tensor([math.pi / 2], dtype=torch.float32), torch.tensor([1.5708])):
        assert matched_time(vp, s_end).item() == pytest.approx(vp.t_max)
        assert matched_time(flow, s_end).item() == 1.0


def tiny_vp():
    return VPSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})


def test_teacher_input_is_the_teachers_own_noising_of_the_same_sample():
    x0, eps = torch.randn(5, 4, 8, 8, dtype=torch.float64), torch.randn(5, 4, 8, 8, dtype=torch.float64)
    sigma_d = 0.5
    s4 = S[:, None, None, None]
    x_s = torch.cos(s4) * sigma_d * x0 + torch.sin(s4) * sigma_d * eps  # TrigFlow data = sigma_d x0
    for schedule in (FlowSchedule(), tiny_vp()):
        s = S if isinstance(schedule, FlowSchedule) else S[:4]
        t = matched_time(schedule, s)
        n = len(s)
        torch.testing.assert_close(
            teacher_input(schedule, x_s[:n], s, t, sigma_d), schedule.add_noise(x0[:n], eps[:n], t)
        )


@pytest.mark.parametrize("kind", ["flow-sana", "vp-epsilon", "vp-v"])
def test_converted_teacher_x0_equals_the_original_at_matched_times(kind):
    if kind == "flow-sana":
        pipe = tiny_sana_pipeline()
    else:
        pipe = tiny_sd_pipeline(prediction_type="epsilon" if kind == "vp-epsilon" else "v_prediction")
    pipe = pipe.to(torch.float64)
    denoiser = Denoiser.from_pipeline(pipe)
    cond, uncond = denoiser.encode_prompt(["a red cube , front view"] * 4)
    s = S[:4]
    x_s = 0.5 * torch.randn(4, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    teacher = TrigFlowTeacher(denoiser)
    with torch.no_grad():
        F = teacher.F(x_s, s, cond, uncond=uncond, guidance_scale=4.0)
        original = denoiser.predict(
            teacher_input(denoiser.schedule, x_s, s, matched_time(denoiser.schedule, s)),
            matched_time(denoiser.schedule, s),
            cond,
            uncond=uncond,
            guidance_scale=4.0,
        )
    torch.testing.assert_close(trigflow_x0(x_s, F, s), 0.5 * original.x0, rtol=1e-9, atol=1e-9)
    if kind == "flow-sana":  # SANA-Sprint's own formula from the velocity
        t = matched_time(denoiser.schedule, s)
        x_in = teacher_input(denoiser.schedule, x_s, s, t)
        torch.testing.assert_close(F, sana_sprint_flow_to_trigflow(x_in, original.raw, t), rtol=1e-9, atol=1e-9)


def test_bad_sigma_data_is_refused():
    with pytest.raises(ValueError, match="sigma_data must be a positive number, got 0"):
        TrigFlowTeacher(None, sigma_data=0)
