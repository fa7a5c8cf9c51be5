"""The shared Denoiser on tiny UNets and a tiny SD3 transformer: predictions, CFG, conditioning, VAE."""

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline

from sdtoolkit.core.cfg import classifier_free_guidance, guidance_scale_embedding, rescale_guidance
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.schedules import FlowSchedule, VPSchedule
from sdtoolkit.testing import tiny_sd3_transformer, tiny_sd_pipeline, tiny_unconditional_unet


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def test_from_pipeline_reads_schedule_and_prediction_type(pipe):
    denoiser = Denoiser.from_pipeline(pipe)
    assert isinstance(denoiser.schedule, VPSchedule)
    assert denoiser.prediction_type == "epsilon"
    assert denoiser.model_kind == "UNet2DConditionModel"
    # parts that are not trained are not registered as submodules
    assert set(dict(denoiser.named_children())) == {"model"}


def test_eps_prediction_is_the_unet_output_and_x0_is_consistent(pipe):
    denoiser = Denoiser.from_pipeline(pipe)
    cond, _ = denoiser.encode_prompt(["a red cube", "a blue sphere"])
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 500.0])
    with torch.no_grad():
        expected = pipe.unet(x_t, t, encoder_hidden_states=cond.encoder_hidden_states).sample
        prediction = denoiser.predict(x_t, t, cond)
    torch.testing.assert_close(prediction.eps, expected)
    # x_t = alpha x0 + sigma eps holds exactly
    c = denoiser.coefficients(t, x_t)
    torch.testing.assert_close(c.alpha_t * prediction.x0 + c.sigma_t * prediction.eps, x_t, rtol=1e-5, atol=1e-5)
    # every target comes out of one call and converts consistently
    v = denoiser(x_t, t, cond, target="v")
    torch.testing.assert_close(v, c.alpha_t * prediction.eps - c.sigma_t * prediction.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(denoiser(x_t, t, cond, target="x0"), prediction.x0)


def test_cfg_is_one_batched_forward_and_matches_the_formula(pipe):
    denoiser = Denoiser.from_pipeline(pipe)
    cond, uncond = denoiser.encode_prompt(["a red cube", "a green cone"])
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 300.0])
    calls = []
    hook = pipe.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            guided = denoiser.predict(x_t, t, cond, uncond=uncond, guidance_scale=7.5)
    finally:
        hook.remove()
    assert calls == [4], "cond and uncond must run as one forward of batch 2B"
    with torch.no_grad():
        eps_c = denoiser.predict(x_t, t, cond).eps
        eps_u = denoiser.predict(x_t, t, uncond).eps
    torch.testing.assert_close(guided.eps, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    # guidance in eps space equals guidance in x0 space (the conversions are affine)
    with torch.no_grad():
        x0_c, x0_u = denoiser.predict(x_t, t, cond).x0, denoiser.predict(x_t, t, uncond).x0
    torch.testing.assert_close(guided.x0, x0_u + 7.5 * (x0_c - x0_u), rtol=1e-4, atol=1e-4)
    # per-sample scales
    scales = torch.tensor([1.0, 3.0])
    with torch.no_grad():
        per_sample = denoiser.predict(x_t, t, cond, uncond=uncond, guidance_scale=scales).eps
    torch.testing.assert_close(per_sample[0], eps_c[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_sample[1], (eps_u + 3.0 * (eps_c - eps_u))[1], rtol=1e-4, atol=1e-5)


def test_cfg_and_rescale_formulas():
    u, c = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 0.0), u)
    cfg = classifier_free_guidance(u, c, 5.0)
    full = rescale_guidance(cfg, c, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)))
    torch.testing.assert_close(rescale_guidance(cfg, c, 0.0), cfg)
    torch.testing.assert_close(rescale_guidance(cfg, c, 0.3), 0.3 * full + 0.7 * cfg)


def test_denoiser_reproduces_the_stock_pipeline_sampling_loop(pipe):
    """DDIM with CFG through the Denoiser gives the same latents as StableDiffusionPipeline itself."""
    from diffusers import DDIMScheduler

    denoiser = Denoiser.from_pipeline(pipe)
    prompts = ["a red cube", "a blue torus"]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = pipe(
            prompts,
            num_inference_steps=3,
            guidance_scale=4.0,
            height=16,
            width=16,
            latents=latents.clone(),
            output_type="latent",
        ).images
        cond, uncond = denoiser.encode_prompt(prompts)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(3)
        x = latents * scheduler.init_noise_sigma
        for step_t in scheduler.timesteps:
            eps = denoiser(x, step_t.float(), cond, uncond=uncond, guidance_scale=4.0, target="eps")
            x = scheduler.step(eps, step_t, x).prev_sample
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)


def test_v_prediction_unet_converts_like_the_scheduler():
    pipe_v = tiny_sd_pipeline(prediction_type="v_prediction")
    denoiser = Denoiser.from_pipeline(pipe_v)
    assert denoiser.prediction_type == "v_prediction"
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([600])
    cond, _ = denoiser.encode_prompt(["a red cube"])
    with torch.no_grad():
        v = pipe_v.unet(x_t, t, encoder_hidden_states=cond.encoder_hidden_states).sample
        x0 = denoiser(x_t, t, cond, target="x0")
    # diffusers' DDIM/DDPM step: x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v
    alpha_bar = pipe_v.scheduler.alphas_cumprod[600]
    torch.testing.assert_close(x0, alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v, rtol=1e-4, atol=1e-5)


def test_guidance_embedding_unet_needs_w_and_matches_lcm_pipeline():
    pipe_w = tiny_sd_pipeline(time_cond_proj_dim=32)
    denoiser = Denoiser.from_pipeline(pipe_w)
    assert denoiser.time_cond_proj_dim == 32
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0])
    cond, _ = denoiser.encode_prompt(["a red cube", "a red cube"])
    with pytest.raises(ValueError, match="guidance_embed"):
        denoiser.predict(x_t, t, cond)
    w = torch.tensor([3.0, 7.0])
    reference = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    torch.testing.assert_close(guidance_scale_embedding(w, 32), reference)
    with torch.no_grad():
        out = denoiser.predict(x_t, t, cond, guidance_embed=w).eps
        expected = pipe_w.unet(
            x_t, t, encoder_hidden_states=cond.encoder_hidden_states, timestep_cond=reference
        ).sample
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out[0], out[1])


def test_unconditional_unet2d_model():
    unet = tiny_unconditional_unet()
    schedule = VPSchedule.from_config({"beta_schedule": "linear"})
    denoiser = Denoiser(unet, schedule, "epsilon")
    x_t = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        eps = denoiser(x_t, torch.tensor([10.0, 900.0]), target="eps")
        expected = unet(x_t, torch.tensor([10.0, 900.0])).sample
    torch.testing.assert_close(eps, expected)


def test_sd3_transformer_flow_prediction():
    transformer = tiny_sd3_transformer()
    denoiser = Denoiser(transformer, FlowSchedule(shift=3.0), "flow")
    cond = Conditioning(torch.randn(2, 5, 32), pooled_projections=torch.randn(2, 32))
    uncond = Conditioning(torch.zeros(2, 5, 32), pooled_projections=torch.zeros(2, 32))
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([0.25, 0.75])
    with torch.no_grad():
        u = transformer(
            x_t,
            encoder_hidden_states=cond.encoder_hidden_states,
            pooled_projections=cond.pooled_projections,
            timestep=t * 1000,
        ).sample
        prediction = denoiser.predict(x_t, t, cond)
        guided = denoiser.predict(x_t, t, cond, uncond=uncond, guidance_scale=3.0)
    torch.testing.assert_close(prediction.raw, u)
    t4 = t[:, None, None, None]
    torch.testing.assert_close(prediction.x0, x_t - t4 * u, rtol=1e-5, atol=1e-5)  # x0 = x_t - t u
    torch.testing.assert_close(prediction.eps, x_t + (1 - t4) * u, rtol=1e-5, atol=1e-5)  # eps = x_t + (1 - t) u
    assert guided.x0.shape == x_t.shape and not torch.allclose(guided.x0, prediction.x0)


def test_vae_encode_decode_uses_scaling_factor(pipe):
    denoiser = Denoiser.from_pipeline(pipe)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = denoiser.encode(images, sample=False)
        raw = pipe.vae.encode(images).latent_dist.mode()
        decoded = denoiser.decode(z)
        expected = pipe.vae.decode(raw).sample
    torch.testing.assert_close(z, raw * pipe.vae.config.scaling_factor)
    torch.testing.assert_close(decoded, expected)
    assert z.shape == (2, 4, 8, 8)


def test_freeze_and_with_model(pipe):
    import copy

    denoiser = Denoiser.from_pipeline(copy.deepcopy(pipe))
    denoiser.freeze()
    assert not any(p.requires_grad for p in denoiser.parameters())
    assert denoiser.dtype == torch.float32  # fp32 on CPU
    student = copy.deepcopy(denoiser.base_model).requires_grad_(True)
    other = denoiser.with_model(student)
    assert other.schedule is denoiser.schedule and other.prediction_type == denoiser.prediction_type
    assert any(p.requires_grad for p in other.parameters())


def test_freeze_casts_only_when_the_dtype_differs(pipe, caplog):
    import copy
    import logging

    denoiser = Denoiser.from_pipeline(copy.deepcopy(pipe))
    with caplog.at_level(logging.WARNING):
        denoiser.freeze(torch.float32)  # already fp32: no cast, so no diffusers "kept in float32" warning
    assert "kept in float32" not in caplog.text
    denoiser.freeze(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in denoiser.base_model.parameters())


def test_unsupported_model_and_trigflow_mismatch_errors():
    with pytest.raises(ValueError, match="'Linear' is not supported; supported families: sdxl"):
        Denoiser(torch.nn.Linear(2, 2), FlowSchedule(), "flow")
    with pytest.raises(ValueError, match="TrigFlowSchedule"):
        Denoiser(tiny_unconditional_unet(), FlowSchedule(), "trigflow")


def test_attention_backend_through_the_denoiser_matches_default(pipe):
    denoiser = Denoiser.from_pipeline(pipe)
    cond, _ = denoiser.encode_prompt(["a red cube"])
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([400.0])
    with torch.no_grad():
        default = denoiser.predict(x_t, t, cond).eps
        assert denoiser.set_attention("math") == "math"
        math = denoiser.predict(x_t, t, cond).eps
        assert denoiser.with_model(pipe.unet).attention_backend == "math"
    torch.testing.assert_close(math, default, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="available"):
        denoiser.set_attention("xformers")


def test_jvp_through_the_denoiser_in_jvp_mode(pipe):
    """sCM needs d/dt of the network output: torch.func.jvp works through the JVP-safe attention path."""
    denoiser = Denoiser.from_pipeline(pipe)
    denoiser.set_attention("jvp")
    cond, _ = denoiser.encode_prompt(["a red cube"])
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([400.0])
    tangent = torch.randn_like(x_t)
    with torch.no_grad():
        _, jvp_out = torch.func.jvp(lambda x: denoiser.model_output(x, t, cond), (x_t,), (tangent,))
        h = 1e-2
        fd = (
            denoiser.model_output(x_t + h * tangent, t, cond) - denoiser.model_output(x_t - h * tangent, t, cond)
        ) / (2 * h)
    torch.testing.assert_close(jvp_out, fd, rtol=2e-2, atol=2e-3)
