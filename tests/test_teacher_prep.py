"""`sdtoolkit distill prepare-teacher` (trainers/teacher_prep.py): SANA-Sprint's teacher preparation for sCM. The
QK-normalised copy keeps every teacher weight, the loss is the written flow-matching loss, the validation sampler is
the stock Euler pipeline, and end to end on the shipped flow teacher the exported folder is a stock SD3 pipeline
that `distill scm` takes as a shapes-world teacher (built-in data, no --data)."""

import json
import types

import pytest
import torch
from accelerate import Accelerator
from sdtoolkit.trainers.teacher_prep import (
    PrepareTeacher,
    PrepareTeacherConfig,
    flow_matching_loss,
    logit_normal_time,
)

from sdtoolkit.cli import main
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.distill.config import TrainConfig, shapes_world
from sdtoolkit.distill.students import qk_normed_network
from sdtoolkit.testing import tiny_sana_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["sd3", "sana"])
def test_qk_normed_copy_keeps_every_teacher_weight_and_adds_unit_norms(family):
    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_sana_pipeline()
    network = pipe.transformer
    copy = qk_normed_network(network, family)
    assert copy.config.qk_norm == {"sd3": "rms_norm", "sana": "rms_norm_across_heads"}[family]
    teacher = network.state_dict()
    new = {k: v for k, v in copy.state_dict().items() if k not in teacher}
    assert new and all(".norm_q." in k or ".norm_k." in k or ".norm_added_" in k for k in new)
    assert all(torch.equal(v, torch.ones_like(v)) for v in new.values())
    assert all(torch.equal(copy.state_dict()[k], v.float()) for k, v in teacher.items())
    assert all(p.requires_grad for p in copy.parameters())


def test_qk_norm_on_a_family_without_one_is_refused():
    with pytest.raises(ValueError, match="no QK-normalisation to add to a sd network"):
        qk_normed_network(tiny_sd_pipeline().unet, "sd")


def test_a_vp_teacher_is_refused_in_one_line():
    with pytest.raises(ValueError, match="fine-tunes flow-matching teachers.*VP teacher"):
        PrepareTeacher.check_teacher(PrepareTeacherConfig(), TrainConfig(), tiny_sd_pipeline())


def test_flow_matching_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    v, x0, eps = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    by_hand = sum(float(((v[i] - (eps[i] - x0[i])) ** 2).sum()) for i in range(3)) / v.numel()
    assert flow_matching_loss(v, x0, eps).item() == pytest.approx(by_hand, rel=1e-6)


def test_logit_normal_time_has_the_given_logit_moments():
    torch.manual_seed(0)
    t = logit_normal_time(200_000, mean=0.5, std=1.5)
    assert 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.02)
    assert logit.std().item() == pytest.approx(1.5, abs=0.02)


def test_validation_sampler_is_the_stock_euler_pipeline():
    """The method's sampler (grids, validation) is what the exported stock pipeline's default call runs: Euler on
    the stock FlowMatch grid with CFG, from the same noise."""
    pipe = tiny_sd3_pipeline()
    pipe.set_progress_bar_config(disable=True)
    teacher = Denoiser.from_pipeline(pipe)
    config = PrepareTeacherConfig(sample_steps=3, guidance_scale=4.0)
    method = PrepareTeacher(config, teacher, Accelerator(cpu=True), types.SimpleNamespace(latent_size=None))
    method.sampler = teacher
    prompts = ["a red cube", "a blue sphere"]
    cond, uncond = teacher.encode_prompt(prompts)
    ours = method.sample(cond, uncond, torch.Generator().manual_seed(3))
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    stock = pipe(prompts, latents=noise, num_inference_steps=3, guidance_scale=4.0, output_type="latent").images
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))


def test_prepared_shapes_flow_teacher_exports_stock_sd3_and_feeds_scm(tmp_path):
    """End to end on the shipped flow teacher: two fine-tune steps, a stock StableDiffusion3Pipeline folder with
    QK-normalisation whose default call runs, recognised as a shapes-world teacher, then one sCM step from it
    without --data (the student keeps the norms)."""
    from diffusers import StableDiffusion3Pipeline

    prep = tmp_path / "prep"
    common = ["--batch-size", "2", "--builtin-images", "4", "--num-threads", "1", "--sample-every", "0",
              "--validate-every", "-1", "--log-with", "none", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    argv = ["distill", "prepare-teacher", "--teacher", "builtin:shapes-flow", "--output", str(prep),
            "--max-steps", "2", "--sample-steps", "2", *common]  # fmt: skip
    assert main(argv) == 0
    export = prep / "export"
    spec = json.loads((export / "export.json").read_text())
    assert (spec["pipeline_class"], spec["num_inference_steps"], spec["guidance_scale"]) == (
        "StableDiffusion3Pipeline", 2, 5.0,
    )  # fmt: skip
    assert (spec["teacher"], spec["teacher_source"]) == ("builtin:shapes-flow", "builtin")
    assert shapes_world(str(export)) and not shapes_world(str(tmp_path))
    pipe = StableDiffusion3Pipeline.from_pretrained(export, text_encoder_3=None, tokenizer_3=None)
    assert pipe.transformer.config.qk_norm == "rms_norm"
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cube, front view", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()

    scm = tmp_path / "scm"
    argv = ["distill", "scm", "--teacher", str(export), "--output", str(scm), "--max-steps", "1", "--no-export",
            *common]  # fmt: skip
    assert main(argv) == 0
    student = json.loads((scm / "student" / "transformer" / "config.json").read_text())
    assert student["qk_norm"] == "rms_norm"


# ---------------------------------------------------------------------------------------------------- dense time


def test_dense_time_schedule_feeds_t_keeps_its_teachers_grid_and_stock_feeds_t_given_sigmas():
    """A dense-time network (num_train_timesteps = 1) receives t itself; its sampling grid is its teacher's; stock
    FlowMatchEulerDiscreteScheduler with that setting feeds t when given sigmas, and its own grid degenerates to
    sigma 1 (why the exports pass sigmas)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdtoolkit.core.schedules import FlowSchedule

    dense, plain = FlowSchedule(num_train_timesteps=1, shift=3.0), FlowSchedule(shift=3.0)
    assert dense.dense and not plain.dense
    t = torch.tensor([0.25, 0.9], dtype=torch.float64)
    assert torch.equal(dense.model_timestep(t), t) and torch.equal(plain.model_timestep(t), 1000 * t)
    assert torch.equal(dense.grid(28), plain.grid(28))
    stock = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    stock.set_timesteps(sigmas=[1.0, 0.6, 0.2])
    torch.testing.assert_close(stock.timesteps, torch.tensor([1.0, 0.6, 0.2]))
    stock.set_timesteps(4)
    assert torch.equal(stock.sigmas[:-1], torch.ones(4))


def test_dense_time_is_refused_for_flux_in_one_line():
    from sdtoolkit.testing import tiny_flux_pipeline

    config = PrepareTeacherConfig(dense_time=True, qk_norm=False)
    with pytest.raises(ValueError, match=r"--dense-time: the flux .*multiplies its timestep input by 1000"):
        PrepareTeacher.check_teacher(config, TrainConfig(), tiny_flux_pipeline())


def test_dense_time_teacher_exports_stock_sd3_that_feeds_t_and_scm_keeps_it(tmp_path):
    """End to end on the shipped flow teacher with --dense-time: the exported stock StableDiffusion3Pipeline's own
    call (sigmas) feeds the transformer t in [0, 1] and gives the toolkit's Euler sampler's latents from the same
    noise; `distill scm` from it trains a dense-time student with the exact JVP, exported the same way."""
    from diffusers import StableDiffusion3Pipeline

    from sdtoolkit.models.loading import load_teacher

    prep = tmp_path / "prep"
    common = ["--batch-size", "2", "--builtin-images", "4", "--num-threads", "1", "--sample-every", "0",
              "--validate-every", "-1", "--log-with", "none", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    argv = ["distill", "prepare-teacher", "--teacher", "builtin:shapes-flow", "--output", str(prep), "--dense-time",
            "--no-qk-norm", "--max-steps", "2", "--sample-steps", "3", *common]  # fmt: skip
    assert main(argv) == 0
    export = prep / "export"
    spec = json.loads((export / "export.json").read_text())
    assert spec["scheduler_config"]["num_train_timesteps"] == 1 and "dense time" in spec["notes"]
    pipe = StableDiffusion3Pipeline.from_pretrained(export, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = lambda module, args, kwargs: seen.append(kwargs["timestep"].max().item())  # noqa: E731
    pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    call = {**spec["call_kwargs"], "guidance_scale": spec["guidance_scale"]}
    stock = pipe("a red cube, front view", latents=noise, output_type="latent", **call).images
    assert len(seen) == 3 and seen == pytest.approx(spec["call_kwargs"]["sigmas"], abs=1e-6) and max(seen) <= 1.0

    teacher = Denoiser.from_pipeline(load_teacher(str(export), text_encoder_3=None, tokenizer_3=None))
    assert teacher.schedule.dense
    method = PrepareTeacher(
        PrepareTeacherConfig(sample_steps=3, guidance_scale=spec["guidance_scale"], qk_norm=False),
        teacher,
        Accelerator(cpu=True),
        types.SimpleNamespace(latent_size=None),
    )
    method.sampler = teacher
    assert method.sampling_times()[:-1] == pytest.approx(spec["timesteps"], abs=1e-4)
    cond, uncond = teacher.encode_prompt(["a red cube, front view"])
    generator = torch.Generator().manual_seed(0)
    ours = method.sample(cond, uncond, generator)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))

    from sdtoolkit.trainers.scm import SCM, SCMConfig

    scm_method = SCM(SCMConfig(), teacher, Accelerator(cpu=True), types.SimpleNamespace(latent_size=None))
    assert scm_method.dense_time  # so its time difference defaults to 0: the exact JVP

    scm = tmp_path / "scm"
    argv = ["distill", "scm", "--teacher", str(export), "--output", str(scm), "--max-steps", "1", *common]
    assert main(argv) == 0
    scm_spec = json.loads((scm / "export" / "export.json").read_text())
    assert "dense flow time" in scm_spec["notes"]
    scheduler = json.loads((scm / "export" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 1 and scheduler["stochastic_sampling"] is True


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_dense_time_sigmas_give_the_1000_timestep_grid(shift, steps):
    """The card scorer's `sigmas` for a dense-time teacher: its stock scheduler (num_train_timesteps=1) then samples
    the same sigmas as the 1000-timestep teacher's default N-step grid, and feeds t = sigma."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdtoolkit.models.shapes_teacher_flow_card import dense_time_sigmas

    plain = FlowMatchEulerDiscreteScheduler(shift=shift)
    plain.set_timesteps(steps)
    dense = FlowMatchEulerDiscreteScheduler.from_config(plain.config, num_train_timesteps=1)
    dense.set_timesteps(sigmas=dense_time_sigmas(dense.config, steps))
    torch.testing.assert_close(dense.sigmas, plain.sigmas)
    torch.testing.assert_close(dense.timesteps, plain.timesteps / 1000)


@pytest.mark.parametrize("family", ["sd3", "sana"])
def test_dense_time_sampler_is_the_stock_pipeline_feeding_t(family):
    """A dense-time network's Euler sampler (the prepared teacher's validation and export) against the family's stock
    pipeline with a num_train_timesteps=1 scheduler and `dense_time_sigmas`: same latents from the same noise, and
    the transformer is fed t in [0, 1] at the teacher's grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdtoolkit.models.shapes_teacher_flow_card import dense_time_sigmas

    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_sana_pipeline()
    pipe.set_progress_bar_config(disable=True)
    teacher = Denoiser.from_pipeline(pipe)
    config = PrepareTeacherConfig(sample_steps=3, guidance_scale=4.0, dense_time=True, qk_norm=False)
    method = PrepareTeacher(config, teacher, Accelerator(cpu=True), types.SimpleNamespace(latent_size=(16, 16)))
    method.sampler = method._prepared(teacher.base_model)
    assert method.sampler.schedule.dense and not teacher.schedule.dense
    prompts = ["a red cube", "a blue sphere"]
    cond, uncond = teacher.encode_prompt(prompts)
    ours = method.sample(cond, uncond, torch.Generator().manual_seed(3))
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, num_train_timesteps=1)
    seen = []
    hook = lambda module, args, kwargs: seen.append(float(kwargs["timestep"].max()))  # noqa: E731
    pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    size = ours.shape[-1] * pipe.vae_scale_factor
    extra = dict(use_resolution_binning=False, height=size, width=size) if family == "sana" else {}
    sigmas = dense_time_sigmas(pipe.scheduler.config, 3)
    stock = pipe(prompts, latents=noise, sigmas=sigmas, guidance_scale=4.0, output_type="latent", **extra).images
    assert seen == pytest.approx(method.sampling_times()[:-1], abs=1e-6) and max(seen) <= 1.0
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))
