"""sCM's maths (sdtoolkit.distill.scm) against independent derivations: the tangent g equals cos(s) times the
finite-difference derivative of the consistency function along the exact probability-flow ODE, and vanishes for
the exact consistency model; the JVP through a real network (tiny SANA transformer seen in TrigFlow time) equals
finite differences; a VP teacher's matched time is differentiable (the implicit derivative); the loss, its
adaptive weighting and the time distribution are the written formulas."""

import math

import pytest
import torch

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.schedules import VPSchedule
from sdtoolkit.core.trigflow import TrigFlowTeacher, matched_time
from sdtoolkit.distill.scm import (
    LogVarianceHead,
    check_jvp_backend,
    difference_step,
    normalize_tangent,
    ode_derivative,
    sample_time,
    scm_loss,
    tangent_target,
    tangent_warmup,
    trigflow_noise,
    trigflow_ode_tangents,
)
from sdtoolkit.testing import tiny_sana_pipeline, tiny_sd_pipeline

SD = 0.5


def _dirac_world(seed=0):
    """Data = one point a (TrigFlow scale): the exact ODE velocity and F_pre are closed-form."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * SD
    z = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * SD
    s = torch.tensor([0.3, 0.8, 1.3], dtype=torch.float64)

    def dxds(x_s, s):  # d/ds (cos s a + sin s z) with z = (x_s - cos s a) / sin s
        s4 = s.view(-1, 1, 1, 1)
        z_hat = (x_s - torch.cos(s4) * a) / torch.sin(s4)
        return -torch.sin(s4) * a + torch.cos(s4) * z_hat

    return a, z, s, dxds


def _g_and_fd(F, r=1.0):
    """sCM's g from a JVP of the student F(x_in, s), and cos(s) d/ds f(x_s(s), s) by central differences along the
    exact ODE x_s(s) = cos s a + sin s z, with f = cos(s) x_s - sigma_d sin(s) F(x_s / sigma_d, s)."""
    a, z, s, dxds = _dirac_world()
    x_s = trigflow_noise(a, z, s)
    velocity = dxds(x_s, s)
    v_x, v_s = trigflow_ode_tangents(x_s, s, velocity, SD)
    F_minus, cs_dF = torch.func.jvp(F, (x_s / SD, s), (v_x, v_s))
    g = tangent_target(F_minus, velocity, x_s, cs_dF, s, r, SD)

    def f(shift):
        s_ = s + shift
        x_ = trigflow_noise(a, z, s_)
        s4 = s_.view(-1, 1, 1, 1)
        return torch.cos(s4) * x_ - SD * torch.sin(s4) * F(x_ / SD, s_)

    h = 1e-5
    fd = torch.cos(s).view(-1, 1, 1, 1) * (f(h) - f(-h)) / (2 * h)
    return g, fd, (a, z, s, dxds)


def test_tangent_is_cos_s_times_the_consistency_functions_derivative_along_the_ode():
    _, _, _, dxds = _dirac_world()

    def exact(x_in, s):  # the exact consistency model's F: its f is the data point itself
        return dxds(SD * x_in, s) / SD

    g, fd, (a, z, s, _) = _g_and_fd(exact)
    assert g.abs().max() < 1e-10  # df/ds = 0: nothing to learn
    assert fd.abs().max() < 1e-6

    def perturbed(x_in, s):  # not consistent: f drifts along the ODE
        return exact(x_in, s) + 0.3 * torch.sin(2 * s).view(-1, 1, 1, 1) * x_in**2

    g, fd, _ = _g_and_fd(perturbed)
    assert g.abs().max() > 1e-2
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_tangent_warmup_scales_only_the_jvp_term():
    assert tangent_warmup(0, 100) == 0 and tangent_warmup(50, 100) == 0.5 and tangent_warmup(400, 100) == 1
    assert tangent_warmup(3, 0) == 1.0
    F_m, dx, x, jvp = (torch.randn(2, 3, dtype=torch.float64) for _ in range(4))
    s = torch.tensor([0.4, 1.1], dtype=torch.float64)
    cos, sin = torch.cos(s)[:, None], torch.sin(s)[:, None]
    expected = -(cos**2) * (SD * F_m - dx) - 0.25 * (cos * sin * x + SD * jvp)
    torch.testing.assert_close(tangent_target(F_m, dx, x, jvp, s, 0.25, SD), expected)


def test_normalized_tangent_and_loss_are_the_written_formulas():
    g = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    n = normalize_tangent(g, 0.1)
    norms = g.flatten(1).norm(dim=1)
    torch.testing.assert_close(n, g / (norms + 0.1).view(-1, 1, 1, 1))
    assert (n.flatten(1).norm(dim=1) < 1).all()

    F = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    F_minus = F.detach()
    s = torch.tensor([0.2, 0.6, 1.0, 1.4], dtype=torch.float64)
    logvar = torch.tensor([0.0, 0.5, -0.3, 1.0], dtype=torch.float64, requires_grad=True)
    loss = scm_loss(F, F_minus, n, s, logvar, SD)
    w = 1 / (SD * torch.tan(s))
    by_hand = (
        sum((w[i] / logvar[i].exp() * ((F[i] - F_minus[i] - n[i]) ** 2).mean() + logvar[i]) for i in range(4)) / 4
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    # the sCM update: at F = F^-, dL/dF = -2 w / e^logvar g / (B D)
    D = n[0].numel()
    expected = -2 * (w / logvar.detach().exp()).view(-1, 1, 1, 1) * n / (4 * D)
    torch.testing.assert_close(F.grad, expected)
    # the log-variance's gradient vanishes where e^logvar equals the weighted squared error
    assert logvar.grad.shape == (4,)


def test_time_distribution_is_arctan_of_a_lognormal():
    s = sample_time(200_000, 0.2, 1.6, SD, generator=torch.Generator().manual_seed(0))
    assert s.min() > 0 and s.max() < math.pi / 2
    tau = torch.log(torch.tan(s) * SD)
    assert tau.mean().item() == pytest.approx(0.2, abs=0.02)
    assert tau.std().item() == pytest.approx(1.6, abs=0.02)
    assert s.median().item() == pytest.approx(math.atan(math.exp(0.2) / SD), abs=0.01)


def test_log_variance_head_starts_at_zero_and_learns():
    head = LogVarianceHead(16)
    s = torch.tensor([0.1, 0.7, 1.5])
    assert torch.equal(head(s), torch.zeros(3))
    loss = (head(s) - torch.tensor([1.0, -1.0, 0.5])).pow(2).sum()
    loss.backward()
    assert head.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="even"):
        LogVarianceHead(15)


def test_jvp_backend_check_names_the_working_ones():
    check_jvp_backend("jvp")
    with pytest.raises(ValueError, match=r"'flash'.*\['jvp', 'math'\]"):
        check_jvp_backend("flash")


def test_vp_matched_time_has_the_implicit_derivative():
    vp = VPSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    s = torch.tensor([0.3, 0.9, 1.3], dtype=torch.float64)
    t, dt = torch.func.jvp(lambda s_: matched_time(vp, s_), (s,), (torch.ones_like(s),))
    rho_slope = (vp.d_sigma(t) * vp.alpha(t) - vp.sigma(t) * vp.d_alpha(t)) / vp.alpha(t) ** 2
    torch.testing.assert_close(dt, (1 + torch.tan(s) ** 2) / rho_slope)
    assert (dt > 0).all()
    # reverse mode agrees
    s_req = s.clone().requires_grad_(True)
    matched_time(vp, s_req).sum().backward()
    torch.testing.assert_close(s_req.grad, dt)


@pytest.mark.parametrize("build", [tiny_sana_pipeline, tiny_sd_pipeline], ids=["sana-flow", "sd-vp"])
def test_jvp_through_a_network_in_trigflow_time_equals_finite_differences(build, one_thread):
    """torch.func.jvp of F(x_in, s) through a real diffusers network (math attention), float64, against central
    differences of the same function along the same direction."""
    pipe = build()
    denoiser = Denoiser.from_pipeline(pipe, attention="jvp")
    denoiser.model.to(torch.float64)
    trig = TrigFlowTeacher(denoiser, SD)
    cond, _ = denoiser.encode_prompt(["a red cube"] * 2)
    cond = cond.map(lambda x: x.to(torch.float64) if x.is_floating_point() else x)
    size = denoiser.model.config.sample_size
    channels = denoiser.model.config.in_channels
    g = torch.Generator().manual_seed(0)
    x_in = torch.randn(2, channels, size, size, generator=g, dtype=torch.float64)
    s = torch.tensor([0.5, 1.1], dtype=torch.float64)
    v_x = torch.randn(x_in.shape, generator=g, dtype=torch.float64)
    v_s = torch.tensor([0.3, -0.2], dtype=torch.float64)

    def F(x, s_):
        return trig.F(SD * x, s_, cond)

    with torch.no_grad():
        out, tangent = torch.func.jvp(F, (x_in, s), (v_x, v_s))
        # diffusers embeds the timestep in float32 inside the float64 network: h = 1e-4 balances its rounding
        # against the truncation error (measured: 1e-3 of the tangent's scale, against 1e-2..1 at h = 1e-3 / 1e-6)
        h = 1e-4
        fd = (F(x_in + h * v_x, s + h * v_s) - F(x_in - h * v_x, s - h * v_s)) / (2 * h)
        x_only = torch.func.jvp(F, (x_in, s), (v_x, torch.zeros_like(v_s)))[1]
    torch.testing.assert_close(out, F(x_in, s))
    scale = fd.abs().max()
    assert (tangent - fd).abs().max() < 3e-3 * scale
    assert (x_only - fd).abs().max() > 0.05 * scale  # the time direction matters: a dropped s-tangent would show


def test_time_difference_follows_the_smooth_time_dependence_not_the_networks_wiggle():
    """A network F = smooth(x, s) + A sin(0.9 tau(s)), tau = 1000 s (sinusoids of the 1000-scale timestep, a wiggle
    between the integer timesteps it was trained at): the exact JVP's s-part is mostly the wiggle's derivative
    (0.9 * 1000 A); the difference over +-20 timesteps follows the smooth part. The x-part stays the exact JVP."""
    A = 5e-3

    def tau(s):
        return 1000 * s

    def smooth(x, s):
        s4 = s.view(-1, 1, 1, 1)
        return torch.cos(s4) * x + torch.sin(2 * s4) * x**2 + s4**2

    def F(x, s):
        return smooth(x, s) + A * torch.sin(0.9 * tau(s)).view(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    v_x = torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = torch.tensor([0.3, 0.8, 1.3], dtype=torch.float64)
    v_s = torch.cos(s) * torch.sin(s)
    value, expected = torch.func.jvp(smooth, (x, s), (v_x, v_s))
    F_exact, exact = ode_derivative(F, x, s, v_x, v_s)
    F_diff, smoothed = ode_derivative(F, x, s, v_x, v_s, tau, delta=20.0)
    torch.testing.assert_close(F_exact, F(x, s))
    torch.testing.assert_close(F_diff, F(x, s))
    wiggle = 0.9 * 1000 * A * v_s.max().item()
    assert (exact - expected).abs().max() > 0.5 * wiggle  # the exact derivative chases the wiggle
    assert (smoothed - expected).abs().max() < 0.1 * wiggle  # |sin(18) / 18| of it and the O(h^2) error
    # no time tangent: the x-part is the exact JVP
    _, x_only = ode_derivative(F, x, s, v_x, torch.zeros_like(s), tau, delta=20.0)
    torch.testing.assert_close(x_only, torch.func.jvp(lambda x_: F(x_, s), (x,), (v_x,))[1])


def test_difference_step_moves_the_timestep_by_delta_and_is_capped():
    dtau = torch.tensor([1000.0, 400.0, 0.0, -2000.0])
    h = difference_step(dtau, 20.0, h_max=0.05)
    torch.testing.assert_close(h, torch.tensor([0.02, 0.05, 0.05, 0.01]))


def test_shapes_teachers_exact_time_derivative_is_its_embedding_wiggle(one_thread):
    """builtin:shapes (an SD1.5-layout VP eps UNet, 1000-scale sinusoidal time embedding, trained at integer
    timesteps): the time part of its F's derivative along the TrigFlow ODE by the exact JVP is about 4 times the
    size of a +-50-timestep central difference and points elsewhere, while the +-20-timestep difference
    (`SCMConfig.time_difference`'s default 0.02) is near it. This is the cause of sCM's drift on this teacher
    (benchmarks/RESULTS.md, sCM section): the tangent chased the wiggle."""
    from sdtoolkit.data.dataset import ShapesDataset
    from sdtoolkit.models.loading import load_teacher_pipeline

    teacher = Denoiser.from_pipeline(load_teacher_pipeline("builtin:shapes"), attention="jvp")
    teacher.freeze()
    teacher.autocast_dtype = None
    items = [ShapesDataset(2, seed=1)[i] for i in range(2)]
    with torch.no_grad():
        x0 = teacher.encode(torch.stack([it["pixel_values"] for it in items]), sample=False).float()
    cond, _ = teacher.encode_prompt([it["caption"] for it in items])
    trig = TrigFlowTeacher(teacher, SD)
    schedule = teacher.schedule

    def tau(s_):
        return schedule.model_timestep(matched_time(schedule, s_))

    def F(x_in, s_):
        return trig.F(SD * x_in, s_, cond)

    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0.5, 1.3])
    x_in = torch.cos(s).view(-1, 1, 1, 1) * x0 + torch.sin(s).view(-1, 1, 1, 1) * z
    v_s = torch.cos(s) * torch.sin(s)
    v_x = torch.zeros_like(x_in)  # the time part alone: it is where the two differ
    with torch.no_grad():
        _, exact = ode_derivative(F, x_in, s, v_x, v_s)
        _, wide = ode_derivative(F, x_in, s, v_x, v_s, tau, delta=50.0)
        _, default = ode_derivative(F, x_in, s, v_x, v_s, tau, delta=0.02 * 999)

    def rel(a, b):
        return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)

    # measured (2026-12-01, CPU): exact 4.0 and 4.6 of the wide difference away from it; the default 0.14 and 0.48
    assert (rel(exact, wide) > 2).all()
    assert (rel(default, wide) < 0.6).all()
