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
