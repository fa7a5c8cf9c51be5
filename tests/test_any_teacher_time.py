"""The schedule owns time: with a flow-matching teacher (tiny SD3) every trainer path hands the network times of
the flow schedule (t in [0, 1], on the stock FlowMatch Euler grid), never VP integer timesteps; and for VP the
schedule's grids are exactly the stock diffusers schedules the exports use."""

import copy

import pytest
import torch

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.schedules import FlowSchedule, TrigFlowSchedule, VPSchedule
from sdtoolkit.testing import tiny_sd3_pipeline

PROMPTS = ["a red cube , front view", "a blue torus , side view"]


@pytest.fixture
def flow_setup(monkeypatch):
    pipe = tiny_sd3_pipeline()
    teacher = Denoiser.from_pipeline(pipe)
    assert isinstance(teacher.schedule, FlowSchedule) and teacher.schedule.shift == 3.0
    seen = []
    original = Denoiser.model_output

    def recording(self, x_t, t, cond=None, **kwargs):
        seen.append(torch.as_tensor(t, dtype=torch.float64).flatten())
        return original(self, x_t, t, cond, **kwargs)

    monkeypatch.setattr(Denoiser, "model_output", recording)
    cond, uncond = teacher.encode_prompt(PROMPTS)
    return teacher, cond, uncond, seen


def _all_flow_times(seen):
    times = torch.cat(seen)
    assert times.numel() > 0
    assert times.min() >= 0 and times.max() <= 1, f"a flow teacher received times {times.min()}..{times.max()}"
    return times


@pytest.mark.parametrize("phases", [1, 2])
def test_lcm_and_pcm_steps_use_the_flow_grid(flow_setup, phases):
    from sdtoolkit.trainers.lcm import LCMConfig, consistency_step

    teacher, cond, uncond, seen = flow_setup
    student = teacher.with_model(copy.deepcopy(teacher.base_model))
    config = LCMConfig(phases=phases, num_ddim_timesteps=10)
    index = torch.tensor([0, 9])
    out = consistency_step(
        student=student,
        teacher=teacher,
        target=student,
        x0=torch.randn(2, 4, 8, 8),
        noise=torch.randn(2, 4, 8, 8),
        index=index,
        w=torch.full((2,), 3.0),
        cond=cond,
        uncond=uncond,
        config=config,
    )
    grid = teacher.schedule.grid(10)
    torch.testing.assert_close(out.t_start.double(), grid[index], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out.t_end.double(), torch.stack([torch.tensor(0.0).double(), grid[8]]), rtol=0, atol=1e-6
    )
    _all_flow_times(seen)


def test_distribution_matching_student_and_teacher_ode_use_flow_times(flow_setup):
    from sdtoolkit.trainers.distribution_matching import FewStepStudent, student_timesteps, teacher_ode_samples

    from sdtoolkit.distill.score_distillation import FakeScoreConfig, ScorePair, sample_timesteps

    teacher, cond, uncond, seen = flow_setup
    assert student_timesteps(1, teacher.schedule) == [1.0]
    four = student_timesteps(4, teacher.schedule)
    assert four[0] == 1.0 and all(0 < t <= 1 for t in four) and four == sorted(four, reverse=True)
    student = FewStepStudent(teacher.with_model(copy.deepcopy(teacher.base_model)), four)
    with torch.no_grad():
        student.sample(torch.randn(2, 4, 8, 8), cond, torch.Generator().manual_seed(0))
    times = sample_timesteps(teacher.schedule, 64, 0.02, 0.98, generator=torch.Generator().manual_seed(0))
    assert times.min() >= 0.02 - 1e-9 and times.max() <= 0.98 + 1e-9
    scores = ScorePair(teacher, FakeScoreConfig(kind="full"))
    teacher_ode_samples(scores, torch.randn(2, 4, 8, 8), cond, uncond, 3.0, num_steps=4)
    _all_flow_times(seen)


def test_vp_grids_are_the_stock_diffusers_schedules():
    from diffusers import DDIMScheduler, LCMScheduler

    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    vp = VPSchedule.from_config(config)
    for k in (1, 2, 4, 8):
        lcm = LCMScheduler(**config, original_inference_steps=50)
        lcm.set_timesteps(k)
        assert vp.student_timesteps(k, 50) == [float(t) for t in lcm.timesteps]
    ddim_solver = DDIMScheduler(**config)
    assert vp.grid(50).long().tolist() == list(range(19, 1000, 20)) and ddim_solver.config.num_train_timesteps == 1000
    torch.testing.assert_close(vp.grid_predecessor(torch.tensor([19.0, 999.0]), 50), torch.tensor([0.0, 979.0]))


def test_flow_grid_is_the_stock_flowmatch_euler_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0):
        for n in (1, 2, 4, 28):
            scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
            scheduler.set_timesteps(n)
            torch.testing.assert_close(FlowSchedule(shift=shift).grid(n).flip(0).float(), scheduler.sigmas[:-1])


def test_transition_is_the_marginal_for_every_schedule():
    x0, eps1, eps2 = torch.randn(3, 4000, dtype=torch.float64).unbind(0)
    for schedule, s, t in [
        (VPSchedule.from_config({"beta_schedule": "linear"}), 200.0, 700.0),
        (FlowSchedule(), 0.2, 0.7),
        (TrigFlowSchedule(), 0.3, 1.2),
    ]:
        s_, t_ = torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
        x_s = schedule.add_noise(x0[None], eps1[None], s_)
        x_t = schedule.transition(x_s, s_, t_, eps2[None])
        # x_t - alpha_t x0 is Gaussian with std sigma_t
        residual = x_t - schedule.alpha(t_) * x0
        assert residual.std().item() == pytest.approx(schedule.sigma(t_).item(), rel=0.05)


def test_vp_timesteps_given_to_a_flow_student_are_refused():
    from sdtoolkit.trainers.distribution_matching import FewStepStudent

    flow_student = Denoiser.from_pipeline(tiny_sd3_pipeline())
    with pytest.raises(ValueError, match=r"student timesteps 499..999 lies outside FlowSchedule's native time range"):
        FewStepStudent(flow_student, [999, 499])
    FewStepStudent(flow_student, [1.0, 0.5])  # its own times are fine
