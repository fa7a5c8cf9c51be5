"""Score-distillation core: DMD gradient vs finite differences on analytic Gaussians, the injection loss, SiD's loss by
hand, NaN masking, and the LoRA fake score on the teacher's own backbone."""

import math

import numpy as np
import pytest
import torch

from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.schedules import FlowSchedule, VPSchedule, make_betas
from sdtoolkit.distill.score_distillation import (
    FakeScoreConfig,
    ScorePair,
    adapter_state,
    dmd_gradient,
    drop_conditioning,
    finite_mask,
    injection_loss,
    sample_timesteps,
    sid_generator_loss,
)
from sdtoolkit.testing import tiny_sd_pipeline

# ------------------------------------------------------------------------------------------- toy analytic score pair


def _posterior_mean(x_t, alpha, sigma, mu, s):
    """E[x0 | x_t] for data N(mu, s^2) under x_t = alpha x0 + sigma eps (the exact x0-prediction of that score)."""
    return mu + alpha * s**2 / (alpha**2 * s**2 + sigma**2) * (x_t - alpha * mu)


def _kl_t(mu_g, s_g, mu_r, s_r, alpha, sigma):
    """KL( p_g,t || p_r,t ) between the diffused generator and data Gaussians (1-D)."""
    v_g, v_r = alpha**2 * s_g**2 + sigma**2, alpha**2 * s_r**2 + sigma**2
    return 0.5 * (v_g / v_r + (alpha * mu_g - alpha * mu_r) ** 2 / v_r - 1 + math.log(v_r / v_g))


@pytest.mark.parametrize("alpha,sigma", [(0.9, 0.4), (0.3, 0.95)])
def test_dmd_gradient_matches_finite_difference_of_the_kl(alpha, sigma):
    """DMD descends KL(p_fake,t || p_real,t): its gradient wrt the generator parameters theta = (mu_g, s_g) is
    E[alpha^2/sigma^2 (x0_fake - x0_real) dx/dtheta]. With exact x0-predictions of two Gaussians and Gauss-Hermite
    quadrature over (z, eps) the expectation is exact, so dmd_gradient (x its per-sample normaliser) pushed through
    injection_loss must equal central finite differences of the analytic KL, in float64."""
    mu_r, s_r = 0.7, 1.3
    theta = torch.tensor([-0.4, 0.6], dtype=torch.float64, requires_grad=True)
    nodes, weights = np.polynomial.hermite_e.hermegauss(12)  # probabilists' Hermite: exact for low-degree moments
    weights = weights / weights.sum()
    z, eps = (torch.tensor(a, dtype=torch.float64) for a in np.meshgrid(nodes, nodes, indexing="ij"))
    w = torch.tensor(np.outer(weights, weights), dtype=torch.float64).reshape(-1, 1)
    z, eps = z.reshape(-1, 1), eps.reshape(-1, 1)

    x = theta[0] + theta[1] * z  # generator G_theta(z): [B, 1]
    with torch.no_grad():
        x_t = alpha * x + sigma * eps
        x0_real = _posterior_mean(x_t, alpha, sigma, mu_r, s_r)
        x0_fake = _posterior_mean(x_t, alpha, sigma, theta[0], theta[1])  # the fake score = the generator's own
        grad = dmd_gradient(x, x0_real, x0_fake)
        normaliser = (x - x0_real).abs().mean(dim=1, keepdim=True)
    loss = injection_loss(x, grad * normaliser * w * alpha**2 / sigma**2, reduction="sum")
    (autograd,) = torch.autograd.grad(loss, theta)

    h = 1e-6
    fd = []
    for i in range(2):
        plus, minus = theta.detach().clone(), theta.detach().clone()
        plus[i] += h
        minus[i] -= h
        kl_plus = _kl_t(*plus.tolist(), mu_r, s_r, alpha, sigma)
        kl_minus = _kl_t(*minus.tolist(), mu_r, s_r, alpha, sigma)
        fd.append((kl_plus - kl_minus) / (2 * h))
    torch.testing.assert_close(autograd, torch.tensor(fd, dtype=torch.float64), rtol=1e-7, atol=1e-9)


def test_dmd_gradient_normalises_per_sample_and_zeroes_nans():
    x, real, fake = (torch.randn(3, 2, 4, 4, dtype=torch.float64) for _ in range(3))
    fake[1, 0, 0, 0] = float("nan")
    grad = dmd_gradient(x, real, fake)
    for b in range(3):
        expected = (fake[b] - real[b]) / (x[b] - real[b]).abs().mean()
        torch.testing.assert_close(grad[b], torch.nan_to_num(expected))
    assert torch.isfinite(grad).all() and grad[1, 0, 0, 0] == 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_injection_loss_gradient_is_the_given_gradient(reduction):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    grad = torch.randn(2, 4, 8, 8)
    injection_loss(x, grad, reduction=reduction).backward()
    scale = 1.0 if reduction == "sum" else 1.0 / x.numel()
    # autograd returns exactly x - sg(x - grad) (times the reduction), which is grad up to one rounding
    assert torch.equal(x.grad, (x.detach() - (x.detach() - grad)) * scale)
    torch.testing.assert_close(x.grad, grad * scale, rtol=1e-6, atol=1e-7 * scale)


# ---------------------------------------------------------------------------------------------------------- SiD


def test_sid_loss_matches_a_hand_computation():
    x_g = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 0.0]]]], requires_grad=True)  # [2, 1, 1, 2]
    y_r = torch.tensor([[[[0.5, -1.0]]], [[[1.0, 2.0]]]], requires_grad=True)
    y_f = torch.tensor([[[[0.0, -1.5]]], [[[0.5, 1.0]]]], requires_grad=True)
    alpha = 1.2
    loss, keep = sid_generator_loss(x_g, y_r, y_f, alpha=alpha)
    # by hand, sample 0: w = (|1-0.5| + |-2+1|)/2 = 0.75; terms d=(0.5, 0.5), (y_r-x_g)=(-0.5, 1.0)
    #   0.5*(-0.5 - 0.6) + 0.5*(1.0 - 0.6) = -0.55 + 0.2 = -0.35 -> /0.75 = -0.4666..
    # sample 1: w = (0.5 + 2)/2 = 1.25; d=(0.5, 1.0), (y_r-x_g)=(0.5, 2.0)
    #   0.5*(0.5 - 0.6) + 1.0*(2.0 - 1.2) = -0.05 + 0.8 = 0.75 -> /1.25 = 0.6
    expected = (-0.35 / 0.75 + 0.75 / 1.25) / 2
    assert keep.tolist() == [True, True]
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    # dL/dx_g = -d / w / B (w carries no gradient); dL/dy_f = (-(y_r - x_g) + 2 alpha d) / w / B
    w = torch.tensor([0.75, 1.25]).reshape(2, 1, 1, 1)
    d = (y_r - y_f).detach()
    torch.testing.assert_close(x_g.grad, -d / w / 2)
    torch.testing.assert_close(y_f.grad, (-(y_r - x_g).detach() + 2 * alpha * d) / w / 2)
    torch.testing.assert_close(y_r.grad, ((y_r - x_g).detach() - 2 * alpha * d + d) / w / 2)


def test_sid_alpha_one_is_sid_lsg_short_form():
    x_g, y_r, y_f = (torch.randn(4, 3, 5, 5) for _ in range(3))
    loss, _ = sid_generator_loss(x_g, y_r, y_f, alpha=1.0)
    w = (x_g - y_r).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = ((y_r - y_f) * (y_f - x_g) / w).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(loss, expected)


def test_sid_masks_non_finite_samples_and_keeps_gradients_finite():
    x_g = torch.randn(3, 2, 4, 4, requires_grad=True)
    y_r, y_f = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    y_r[1, 0, 2, 2] = float("nan")
    y_f[2, 1, 0, 0] = float("inf")
    loss, keep = sid_generator_loss(x_g, y_r, y_f)
    assert keep.tolist() == [True, False, False]
    clean, _ = sid_generator_loss(x_g[:1], y_r[:1], y_f[:1])
    torch.testing.assert_close(loss, clean)
    loss.backward()
    assert torch.isfinite(x_g.grad).all() and (x_g.grad[1:] == 0).all()
    # all samples bad: a zero loss that still backpropagates
    loss, keep = sid_generator_loss(x_g, torch.full_like(y_r, float("nan")), y_f)
    assert not keep.any() and loss.item() == 0.0 and loss.requires_grad
    assert finite_mask(torch.ones(2, 3), torch.tensor([[1.0, float("nan"), 0], [0, 0, 0]])).tolist() == [False, True]


# ---------------------------------------------------------------------------------------------------------- helpers


def test_sample_timesteps_ranges():
    vp = VPSchedule(make_betas(1000))
    t = sample_timesteps(vp, 4000, 0.02, 0.98)
    assert t.min() >= 20 and t.max() <= 980 and torch.equal(t, t.round()) and t.max() >= 975
    flow = sample_timesteps(FlowSchedule(), 1000, 0.5, 1.0)
    assert flow.min() >= 0.5 and flow.max() <= 1.0 and not torch.equal(flow, flow.round())
    with pytest.raises(ValueError, match="low <= high"):
        sample_timesteps(vp, 2, 0.9, 0.1)


def test_drop_conditioning_replaces_rows_by_uncond():
    cond = Conditioning(torch.ones(64, 3, 2))
    uncond = Conditioning(torch.zeros(1, 3, 2))
    dropped = drop_conditioning(cond, uncond, 0.5, generator=torch.Generator().manual_seed(0))
    rows = dropped.encoder_hidden_states.flatten(1)
    assert ((rows == 0).all(1) | (rows == 1).all(1)).all() and 10 < int((rows == 0).all(1).sum()) < 54
    assert drop_conditioning(cond, uncond, 0.0) is cond


# ---------------------------------------------------------------------------------------------------------- fake score


@pytest.fixture()
def teacher():
    return Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()


def _batch(teacher):
    cond, uncond = teacher.encode_prompt(["a red cube", "a blue sphere"])
    x0 = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300.0, 800.0])
    return cond, uncond, x0, t, teacher.add_noise(x0, torch.randn_like(x0), t)


def _base_weights(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}


def test_lora_fake_score_starts_equal_to_teacher_and_trains_only_the_adapter(teacher):
    cond, uncond, x0, t, x_t = _batch(teacher)
    with torch.no_grad():
        before = teacher.predict(x_t, t, cond, uncond=uncond, guidance_scale=3.0).x0
    scores = ScorePair(teacher, FakeScoreConfig(rank=4))
    unet = teacher.base_model
    frozen = _base_weights(unet)
    params = scores.trainable_parameters()
    assert params and all(".fake_score." in n for n, _ in scores.named_trainable_parameters())
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in params}
    with torch.no_grad():
        real = scores.real(x_t, t, cond, uncond=uncond, guidance_scale=3.0)
        fake = scores.fake(x_t, t, cond, uncond=uncond, guidance_scale=3.0)
        plain = teacher.predict(x_t, t, cond, uncond=uncond, guidance_scale=3.0).x0  # adapter left switched off
    assert torch.equal(real.x0, before) and torch.equal(fake.x0, before) and torch.equal(plain, before)

    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        loss = scores.fake_denoising_loss(x0, cond)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for n, p in unet.named_parameters() if "lora_" not in n)
        optimizer.step()
    after = _base_weights(unet)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)  # teacher weights bit-identical
    assert all(p.requires_grad for p in params)  # adapter switching did not flip requires_grad
    with torch.no_grad():
        real_after = scores.real(x_t, t, cond, uncond=uncond, guidance_scale=3.0).x0
        fake_after = scores.fake(x_t, t, cond, uncond=uncond, guidance_scale=3.0).x0
    assert torch.equal(real_after, before)
    assert (fake_after - before).abs().max() > 1e-3


def test_fake_frozen_and_gradients_through_both_scores(teacher):
    cond, _, x0, t, _ = _batch(teacher)
    scores = ScorePair(teacher, FakeScoreConfig(rank=4))
    x = x0.clone().requires_grad_(True)
    x_t = teacher.add_noise(x, torch.randn_like(x), t)
    with scores.fake_frozen():
        y_r = scores.real(x_t, t, cond, grad=True).x0
        y_f = scores.fake(x_t, t, cond).x0
        loss, _ = sid_generator_loss(x, y_r, y_f)
        loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in scores.trainable_parameters())
    assert all(p.requires_grad for p in scores.trainable_parameters())
    with adapter_state(teacher.base_model, "fake_score"):
        assert all(p.requires_grad for p in scores.trainable_parameters())


def test_full_copy_fake_score(teacher):
    cond, _, x0, t, x_t = _batch(teacher)
    scores = ScorePair(teacher, FakeScoreConfig(kind="full"))
    frozen = _base_weights(teacher.base_model)
    with torch.no_grad():
        assert torch.equal(scores.fake(x_t, t, cond).x0, scores.real(x_t, t, cond).x0)
    optimizer = torch.optim.SGD(scores.trainable_parameters(), lr=0.1)
    scores.fake_denoising_loss(x0, cond).backward()
    optimizer.step()
    assert all(torch.equal(frozen[n], p) for n, p in teacher.base_model.named_parameters())
    state = scores.fake_state_dict()
    scores.load_fake_state_dict(state)
    with pytest.raises(KeyError, match="mismatch"):
        scores.load_fake_state_dict({})
    with pytest.raises(ValueError, match="'lora' or 'full'"):
        ScorePair(teacher, FakeScoreConfig(kind="copy"))


def test_camera_conditioned_fake_score_for_vsd(teacher):
    cond, _, x0, t, x_t = _batch(teacher)
    scores = ScorePair(teacher, FakeScoreConfig(rank=4, extra_cond_dim=16))
    camera = Conditioning(cond.encoder_hidden_states, class_labels=torch.randn(2, 16))
    with torch.no_grad():
        real = scores.real(x_t, t, camera).x0  # the camera is dropped for the teacher
        assert torch.equal(real, scores.real(x_t, t, cond).x0)
        assert torch.equal(scores.fake(x_t, t, camera).x0, real)  # zero-initialised embedding
    assert teacher.base_model.class_embedding is None
    scores.fake_denoising_loss(x0, camera).backward()
    assert scores.extra_embedding.linear_2.weight.grad.abs().sum() > 0
    assert any(n.startswith("extra_embedding.") for n, _ in scores.named_trainable_parameters())


def test_fast_adapter_switch_equals_peft_public_switch(teacher, monkeypatch):
    """`adapter_state`'s fast path (peft's two switch attributes) gives the same forwards and leaves the same
    requires_grad flags and switch state as the public `set_adapter`/`enable_adapters` path."""
    import sdtoolkit.core.adapters as sd

    cond, _, x0, t, x_t = _batch(teacher)
    scores = ScorePair(teacher, FakeScoreConfig(rank=4))
    with torch.no_grad():
        for p in scores.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))  # a fake score that differs from the teacher
    unet = teacher.base_model

    def run() -> tuple:
        with torch.no_grad():
            real, fake = scores.real(x_t, t, cond).x0, scores.fake(x_t, t, cond).x0
        flags = [p.requires_grad for p in unet.parameters()]
        state = [(list(m.active_adapters), bool(m.disable_adapters)) for m in sd.tuner_layers(unet)]
        return real, fake, flags, state

    fast = run()
    monkeypatch.setattr(sd, "_fast_switch_supported", lambda layers: False)
    public = run()
    assert torch.equal(fast[0], public[0]) and torch.equal(fast[1], public[1])
    assert (fast[1] - fast[0]).abs().max() > 1e-4
    assert fast[2] == public[2] and fast[3] == public[3]
