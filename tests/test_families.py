"""One adapter per model family (`sdtoolkit.core.families`): each family's Denoiser reproduces its own stock
pipeline. One sampling step of the stock pipeline from a given noise (trailing DDIM to alpha = 1 for VP, Euler from
t = 1 to 0 for flow) returns exactly the guided x0 estimate at the first time, so comparing it with
`Denoiser.predict(...).x0` checks prompt encoding, the network call (packing, ids, timestep scale, guidance input)
and classifier-free guidance against diffusers itself."""

import pytest
import torch

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.families import FAMILIES, UnsupportedModelError, family_for
from sdtoolkit.core.families.flux import image_ids, pack_latents, unpack_latents
from sdtoolkit.testing import (
    tiny_flux_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
    tiny_unconditional_unet,
)

PROMPTS = ["a red cube , front view", "a blue torus , side view"]


def _stock_one_step(pipe, latents, **kwargs):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = pipe(
            PROMPTS, num_inference_steps=1, latents=latents, output_type="latent", generator=generator, **kwargs
        )
    return out.images


@pytest.mark.parametrize(
    ("build", "family", "t", "stock_kwargs"),
    [
        (lambda: tiny_sd_pipeline(), "sd", 999.0, {"guidance_scale": 5.0}),
        (lambda: tiny_sdxl_pipeline(), "sdxl", 999.0, {"guidance_scale": 5.0}),
        (lambda: tiny_sd3_pipeline(), "sd3", 1.0, {"guidance_scale": 5.0}),
        (lambda: tiny_sana_pipeline(), "sana", 1.0, {"guidance_scale": 4.5, "use_resolution_binning": False}),
    ],
)
def test_family_denoiser_matches_its_stock_pipeline(build, family, t, stock_kwargs):
    pipe = build()
    if family == "sd":  # the tiny SD pipeline ships leading DDIM; one trailing step to alpha = 1 returns x0
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
        )
    denoiser = Denoiser.from_pipeline(pipe)
    assert denoiser.family.name == family
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = _stock_one_step(pipe, noise.clone(), **stock_kwargs)
    cond, uncond = denoiser.encode_prompt(PROMPTS)
    with torch.no_grad():
        ours = denoiser.predict(
            noise, torch.tensor(t), cond, uncond=uncond, guidance_scale=stock_kwargs["guidance_scale"]
        ).x0
    torch.testing.assert_close(ours, stock.float(), rtol=1e-4, atol=1e-5)


def test_flux_denoiser_matches_stock_flux_pipeline():
    """FLUX: packed latents, text/image ids, timestep / 1000, FLUX.1-dev's guidance input (no CFG batch)."""
    pipe = tiny_flux_pipeline()
    denoiser = Denoiser.from_pipeline(pipe)
    assert denoiser.family.name == "flux" and denoiser.prediction_type == "flow"
    noise = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = _stock_one_step(pipe, pack_latents(noise), guidance_scale=3.5, height=16, width=16)
    cond, _ = denoiser.encode_prompt(PROMPTS)
    with torch.no_grad():
        ours = denoiser.predict(noise, torch.tensor(1.0), cond, guidance_embed=torch.full((2,), 3.5)).x0
    torch.testing.assert_close(ours, unpack_latents(stock, 8, 8), rtol=1e-4, atol=1e-5)


def test_flux_packing_matches_the_pipeline_and_inverts():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    torch.testing.assert_close(pack_latents(x), FluxPipeline._pack_latents(x, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(pack_latents(x), 6, 8), x, rtol=0, atol=0)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(image_ids(6, 8, torch.device("cpu"), torch.float32), ids, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must be even, got 5x8"):
        pack_latents(torch.randn(1, 4, 5, 8))


def test_flux_without_guidance_input_and_missing_guidance_error():
    pipe = tiny_flux_pipeline(guidance_embeds=False)
    denoiser = Denoiser.from_pipeline(pipe)
    cond, _ = denoiser.encode_prompt(PROMPTS[:1])
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert denoiser.predict(x, torch.tensor(0.5), cond).x0.shape == x.shape
    guided = Denoiser.from_pipeline(tiny_flux_pipeline())
    with pytest.raises(ValueError, match="pass guidance_embed"):
        guided.model_output(x, torch.tensor(0.5), cond)
    # predict feeds FLUX.1-dev's guidance input the guidance scale, as FluxPipeline does (no CFG batch)
    cond, uncond = guided.encode_prompt(PROMPTS[:1])
    with torch.no_grad():
        scaled = guided.predict(x, torch.tensor(0.5), cond, uncond=uncond, guidance_scale=3.5).x0
        explicit = guided.predict(x, torch.tensor(0.5), cond, guidance_embed=torch.full((1,), 3.5)).x0
        default = guided.predict(x, torch.tensor(0.5), cond).x0
        one = guided.predict(x, torch.tensor(0.5), cond, guidance_embed=torch.ones(1)).x0
    torch.testing.assert_close(scaled, explicit, rtol=0, atol=0)
    torch.testing.assert_close(default, one, rtol=0, atol=0)


def test_family_lookup_order_and_unsupported_model():
    assert family_for(tiny_sdxl_pipeline().unet).name == "sdxl"
    assert family_for(tiny_sd_pipeline().unet).name == "sd"
    assert family_for(tiny_unconditional_unet()).name == "unet2d"
    with pytest.raises(UnsupportedModelError, match="'Conv2d' is not supported; supported families: sdxl") as err:
        family_for(torch.nn.Conv2d(1, 1, 1))
    for family in FAMILIES:
        assert family.name in str(err.value)
