"""LCM / PCM maths against hand computations of the papers' formulas and against stock diffusers schedulers."""

import math

import pytest
import torch
from sdtoolkit.trainers.lcm import (
    LCMConfig,
    consistency_step,
    ddim_grid,
    inference_timesteps,
    lcm_boundary_scalings,
)
from sdtoolkit.trainers.pcm import forward_transition, phase_edge_of, phase_edges

from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.testing import tiny_sd_pipeline, tiny_unet

T = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def alphas_cumprod() -> torch.Tensor:
    """SD's scaled_linear betas (0.00085 -> 0.012), written out by hand."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def w_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's guidance embedding by hand: sinusoids of 1000 w, sin first (Vaswani et al. 2017)."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = (w.float() * 1000)[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    pipe = tiny_sd_pipeline()
    teacher = Denoiser.from_pipeline(pipe)
    student_unet, target_unet = tiny_unet(time_cond_proj_dim=8, seed=1), tiny_unet(time_cond_proj_dim=8, seed=2)
    batch = 4
    cond = Conditioning(torch.randn(batch, 16, 32))
    uncond = Conditioning(torch.randn(1, 16, 32).expand(batch, -1, -1))
    x0, noise = torch.randn(batch, 4, 8, 8), torch.randn(batch, 4, 8, 8)
    return dict(
        pipe=pipe,
        teacher=teacher,
        student=teacher.with_model(student_unet),
        target=teacher.with_model(target_unet),
        student_unet=student_unet,
        target_unet=target_unet,
        cond=cond,
        uncond=uncond,
        x0=x0,
        noise=noise,
        w=torch.tensor([5.0, 7.5, 12.0, 15.0]),
    )


def hand_predict(unet, x, t, hidden, embed=None):
    """x0 and eps of an epsilon-prediction UNet by hand: x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)."""
    ab = alphas_cumprod()[t.long()].float()[:, None, None, None]
    eps = unet(x, t.long(), encoder_hidden_states=hidden, timestep_cond=embed).sample
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt(), eps


def hand_teacher_ddim(s, x_t, t_start, t_end):
    """LCM's guided teacher x0/eps (x_c + w (x_c - x_u)) and one DDIM step to t_end."""
    unet = s["pipe"].unet
    w = s["w"][:, None, None, None]
    x0_c, eps_c = hand_predict(unet, x_t, t_start, s["cond"].encoder_hidden_states)
    x0_u, eps_u = hand_predict(unet, x_t, t_start, s["uncond"].encoder_hidden_states)
    x0_g, eps_g = x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u)
    ab_end = alphas_cumprod()[t_end.long()].float()[:, None, None, None]
    return ab_end.sqrt() * x0_g + (1 - ab_end).sqrt() * eps_g


@pytest.mark.parametrize("loss_type", ["l2", "huber"])
def test_lcm_target_and_loss_match_hand_computation(setup, loss_type):
    s = setup
    config = LCMConfig(loss_type=loss_type, huber_c=0.001)
    index = torch.tensor([0, 17, 30, 49])
    out = consistency_step(
        student=s["student"],
        teacher=s["teacher"],
        target=s["target"],
        x0=s["x0"],
        noise=s["noise"],
        index=index,
        w=s["w"],
        cond=s["cond"],
        uncond=s["uncond"],
        config=config,
    )
    # skipping-step grid t = (n + 1) k - 1, k = 20; t_n = t_{n+k} - k, clamped at 0
    t_start = (index + 1) * 20 - 1
    t_end = (t_start - 20).clamp(min=0)
    ab = alphas_cumprod()
    a, sig = ab[t_start].sqrt().float()[:, None, None, None], (1 - ab[t_start]).sqrt().float()[:, None, None, None]
    x_t = a * s["x0"] + sig * s["noise"]
    embed = w_embedding(s["w"], 8)

    def c_skip_out(t):
        scaled = 10.0 * t.double()
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25).sqrt()
        return c_skip.float()[:, None, None, None], c_out.float()[:, None, None, None]

    with torch.no_grad():
        x0_online, _ = hand_predict(s["student_unet"], x_t, t_start, s["cond"].encoder_hidden_states, embed)
        c_skip, c_out = c_skip_out(t_start)
        online = c_skip * x_t + c_out * x0_online
        x_prev = hand_teacher_ddim(s, x_t, t_start, t_end)
        x0_target, _ = hand_predict(s["target_unet"], x_prev, t_end, s["cond"].encoder_hidden_states, embed)
        c_skip_n, c_out_n = c_skip_out(t_end)
        target = c_skip_n * x_prev + c_out_n * x0_target
    if loss_type == "l2":
        loss = ((online - target) ** 2).mean()
    else:
        loss = (((online - target) ** 2 + 0.001**2).sqrt() - 0.001).mean()
    assert torch.equal(out.t_start, t_start.float()) and torch.equal(out.t_end, t_end.float())
    torch.testing.assert_close(out.x_prev, x_prev, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.online.detach(), online, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.target, target, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss.detach(), loss, atol=1e-6, rtol=1e-4)
    # at t_n = 0 the boundary condition makes the target the teacher's DDIM step itself
    torch.testing.assert_close(out.target[0], x_prev[0], atol=1e-5, rtol=0)
    # gradients reach the online student only
    s["student_unet"].zero_grad()
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s["student_unet"].parameters())
    assert all(p.grad is None for p in s["target_unet"].parameters())
    assert all(p.grad is None for p in s["pipe"].unet.parameters())


def test_phased_target_matches_hand_computation(setup):
    s = setup
    config = LCMConfig(phases=2)
    index = torch.tensor([10, 24, 25, 49])  # t = 219, 499, 519, 999 -> edges 0, 0, 499, 499
    out = consistency_step(
        student=s["student"],
        teacher=s["teacher"],
        target=s["target"],
        x0=s["x0"],
        noise=s["noise"],
        index=index,
        w=s["w"],
        cond=s["cond"],
        uncond=s["uncond"],
        config=config,
    )
    t_start = (index + 1) * 20 - 1
    t_end = t_start - 20
    edge = torch.tensor([0, 0, 499, 499])
    ab = alphas_cumprod()
    col = lambda v: v.float()[:, None, None, None]  # noqa: E731
    x_t = col(ab[t_start].sqrt()) * s["x0"] + col((1 - ab[t_start]).sqrt()) * s["noise"]
    embed = w_embedding(s["w"], 8)
    with torch.no_grad():
        x0_s, eps_s = hand_predict(s["student_unet"], x_t, t_start, s["cond"].encoder_hidden_states, embed)
        online = col(ab[edge].sqrt()) * x0_s + col((1 - ab[edge]).sqrt()) * eps_s  # DDIM jump to the edge
        x_prev = hand_teacher_ddim(s, x_t, t_start, t_end)
        x0_n, eps_n = hand_predict(s["target_unet"], x_prev, t_end, s["cond"].encoder_hidden_states, embed)
        target = col(ab[edge].sqrt()) * x0_n + col((1 - ab[edge]).sqrt()) * eps_n
        target[2] = x_prev[2]  # t_n = 499 is the edge itself: PCM's boundary condition
    torch.testing.assert_close(out.edge, edge.float())
    torch.testing.assert_close(out.online.detach(), online, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.target, target, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss.detach(), ((online - target) ** 2).mean(), atol=1e-6, rtol=1e-4)


def test_grid_and_schedules_match_stock_schedulers():
    from diffusers import LCMScheduler, TCDScheduler

    grid = ddim_grid(T, 50)
    assert grid[0] == 19 and grid[-1] == 999 and torch.all(grid.diff() == 20)
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", original_inference_steps=50)
    for cls in (LCMScheduler, TCDScheduler):
        scheduler = cls(**config)
        for steps in (1, 2, 3, 4, 6, 8):
            scheduler.set_timesteps(steps)
            assert scheduler.timesteps.tolist() == inference_timesteps(steps), (cls.__name__, steps)
    lcm = LCMScheduler(**config)
    t = torch.tensor([0, 19, 259, 999])
    c_skip, c_out = lcm_boundary_scalings(t)
    for i, ti in enumerate(t.tolist()):
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(ti))
        assert math.isclose(float(c_skip[i]), float(ref_skip), rel_tol=1e-6)
        assert math.isclose(float(c_out[i]), float(ref_out), rel_tol=1e-6, abs_tol=1e-12)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0  # f(x, 0) = x


def test_phase_edges_are_the_tcd_schedule():
    edges = phase_edges(4)
    assert edges.tolist() == [0, 259, 499, 759]  # below the 4-step TCD starts 999, 759, 499, 259
    t = torch.tensor([999.0, 779.0, 759.0, 499.0, 279.0, 259.0, 19.0])
    assert phase_edge_of(t, edges).tolist() == [759, 759, 499, 259, 259, 0, 0]
    # with N | 50 the phases are PCM's own: 2 phases -> edges 0 and ddim_timesteps[24] = 499
    assert phase_edges(2).tolist() == [0, 499]


def test_forward_transition_is_the_marginal(setup):
    """Diffusing x_s forward to t gives a sample of q(x_t | x0) (same mean and variance)."""
    teacher = setup["teacher"]
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    s, t = torch.full((20000,), 259.0), torch.full((20000,), 700.0)
    x_s = teacher.add_noise(x0, torch.randn_like(x0), s)
    x_t = forward_transition(teacher, x_s, s, t, torch.randn_like(x0))
    ab = alphas_cumprod()[700].float()
    assert abs(float(x_t.mean()) - 0.7 * ab.sqrt()) < 0.02
    assert abs(float(x_t.var()) - (1 - ab)) < 0.03


def test_w_embedded_student_copy_of_an_in_memory_unet_gets_cond_proj():
    """A teacher UNet built in memory (its config lists time_cond_proj_dim among the defaults it was not given) still
    yields a student with the w-embedding, zero-initialised, equal to the teacher."""
    from types import SimpleNamespace

    from sdtoolkit.trainers.lcm import LCM

    from sdtoolkit.models.shapes_teacher import TeacherConfig, build_unet

    teacher = build_unet(TeacherConfig())  # built in memory without time_cond_proj_dim
    assert teacher.config.time_cond_proj_dim is None
    assert "time_cond_proj_dim" in teacher.config["_use_default_values"]
    fake_self = SimpleNamespace(uses_w_embedding=True, config=SimpleNamespace(time_cond_proj_dim=32))
    student = LCM._full_student_copy(fake_self, teacher)
    assert student.config.time_cond_proj_dim == 32 and student.time_embedding.cond_proj is not None
    assert torch.count_nonzero(student.time_embedding.cond_proj.weight) == 0
    x, t = torch.randn(1, teacher.config.in_channels, 16, 16), torch.tensor([10])
    text = torch.randn(1, 4, teacher.config.cross_attention_dim)
    with torch.no_grad():
        expected = teacher(x, t, text).sample
        got = student(x, t, text, timestep_cond=torch.randn(1, 32)).sample
    torch.testing.assert_close(got, expected)
