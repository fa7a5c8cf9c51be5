"""`sdtoolkit distill scm` (trainers/scm.py): end to end on the tiny SD teacher (finite losses, weights move, exact
resume, export reloaded by stock diffusers in a fresh process reproducing the trainer's sample grid), the sampler
against SCMScheduler.step, an identity of the sCM gradient, the SANA student exported as a stock SanaSprintPipeline
(checked in a fresh process) and the refusals."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from diffusers import SCMScheduler
from safetensors.torch import load_file
from sdtoolkit.pipelines.export import export_pipeline
from sdtoolkit.trainers.scm import (
    S_MAX_NETWORK,
    SCM,
    SCMConfig,
    scm_sample,
    scm_sampling_times,
    scm_step,
    w_embedded_unet,
)

from sdtoolkit.cli import main
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.trigflow import TrigFlowTeacher
from sdtoolkit.distill.method import TrainingData
from sdtoolkit.distill.scm import LogVarianceHead, network_time_delta
from sdtoolkit.testing import tiny_sana_pipeline, tiny_sd_pipeline, write_tiny_assets

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 0
SD = 0.5
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("scm"))


def distill(assets, output, *extra):
    args = ["distill", "scm", "--teacher", str(assets / "teacher"), "--output", str(output)]
    args += ["--data", str(assets / "data"), "--cache-dir", str(assets / "cache"), "--batch-size", "2"]
    args += ["--seed", str(SEED), "--sample-prompts", "2", "--sample-seeds", "2", "--log-with", "none"]
    # a large learning rate, a short tangent warm-up and a fast EMA so that three steps move the weights visibly
    args += ["--lr", "1e-3", "--tangent-warmup-steps", "2", "--ema-decay", "0.5", *extra]
    return main(args)


def losses(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in map(json.loads, (run / "losses.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def run(assets):
    out = assets / "run"
    assert distill(assets, out, "--max-steps", "3", "--checkpoint-every", "2", "--sample-every", "3") == 0
    return out


# ---------------------------------------------------------------------------------------------------- end to end


def test_sd_run_has_finite_losses_moves_the_student_and_writes_everything(assets, run):
    steps = losses(run)
    assert sorted(steps) == [1, 2, 3]
    for entry in steps.values():
        assert {"student/loss", "student/tangent_norm", "student/logvar", "student/grad_norm"} <= set(entry)
        assert all(math.isfinite(v) for k, v in entry.items() if k != "step")
    assert [steps[i]["student/r"] for i in (1, 2, 3)] == [0.0, 0.5, 1.0]  # tangent warm-up over 2 steps
    assert all(steps[i]["student/tangent_norm"] < 1 for i in steps)  # g / (||g|| + c)
    teacher = load_file(str(assets / "teacher" / "unet" / "diffusion_pytorch_model.safetensors"))
    student = load_file(str(run / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(student) - set(teacher) == {"time_embedding.cond_proj.weight"}  # the w-embedding (LCM's)
    assert max(float((student[k] - teacher[k]).abs().max()) for k in teacher) > 1e-4
    head = load_file(str(run / "checkpoints" / "step_000002" / "model_1.safetensors"))  # the log-variance head
    assert float(head["linear.weight"].abs().max()) > 0  # it trained (zero at initialisation)
    assert list((run / "samples").glob("step_*.png"))
    spec = json.loads((run / "export" / "export.json").read_text())
    assert spec["method"] == "scm" and spec["num_inference_steps"] == 1 and spec["guidance_scale"] == 4.5


def test_resume_is_exact(assets, run):
    short = assets / "short"
    assert distill(assets, short, "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0") == 0
    assert main(["distill", "scm", "--resume", str(short), "--max-steps", "3", "--no-export"]) == 0
    resumed, uninterrupted = losses(short), losses(run)
    assert sorted(resumed) == [1, 2, 3]
    for step in (1, 2, 3):
        for key, value in uninterrupted[step].items():
            if key.endswith("loss") or key.endswith("grad_norm") or key.endswith("logvar"):
                assert abs(resumed[step][key] - value) <= 1e-6 * max(1.0, abs(value)), (step, key)
    weights = "student/unet/diffusion_pytorch_model.safetensors"  # the EMA, checkpointed with the run
    a, b = load_file(str(short / weights)), load_file(str(run / weights))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_init_from_starts_student_ema_and_logvar_head_from_another_run(assets, run, tmp_path, capsys):
    """Two-stage training: sCM + LADD from an sCM run's checkpoint. The heads update first (step 1), so after one
    step the student, its log-variance head and its EMA are still exactly the source checkpoint's."""
    source = run / "checkpoints" / "step_000002"
    out = tmp_path / "stage2"
    extra = ["--init-from", str(source), "--adversarial", "--max-steps", "1", "--sample-every", "0"]
    assert distill(assets, out, *extra) == 0
    assert sorted(losses(out)) == [1] and "discriminator/loss" in losses(out)[1]  # a fresh run: step 1, heads
    new = out / "checkpoints" / "step_000001"
    for name in ("model", "model_1"):  # the student, the log-variance head
        a, b = load_file(str(source / f"{name}.safetensors")), load_file(str(new / f"{name}.safetensors"))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert (new / "model_2.safetensors").is_file()  # the new discriminator heads
    old_state, new_state = load_file(str(source / "state.safetensors")), load_file(str(new / "state.safetensors"))
    shadows = [k for k in old_state if "shadow" in k]
    assert shadows and all(torch.equal(old_state[k], new_state[k]) for k in shadows)  # the EMA
    exported = load_file(str(out / "student" / "unet" / "diffusion_pytorch_model.safetensors"))  # the loaded EMA
    assert all(torch.equal(exported[k.split(".shadow.", 1)[1]], old_state[k]) for k in shadows)
    # a checkpoint of another method is refused before anything is written
    other = tmp_path / "other"
    other.mkdir()
    for f in source.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "progress.json").write_text(json.dumps({"step": 2, "method": "lcm"}))
    capsys.readouterr()
    assert distill(assets, tmp_path / "never", "--init-from", str(other), "--max-steps", "1") == 2
    assert "written by method 'lcm', not 'scm'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


SD_EXPORT_CHECK = r"""
import glob, json, sys
import numpy as np, torch
from PIL import Image
from diffusers import DiffusionPipeline

run, seed = sys.argv[1], int(sys.argv[2])
spec = json.load(open(run + "/export/export.json"))
pipe = DiffusionPipeline.from_pretrained(run + "/export")  # stock diffusers, no sdtoolkit import
pipe.set_progress_bar_config(disable=True)
call = dict(num_inference_steps=spec["num_inference_steps"], guidance_scale=spec["guidance_scale"])
prompts = open(run + "/samples/prompts.txt").read().splitlines()
grid = np.asarray(Image.open(sorted(glob.glob(run + "/samples/step_*.png"))[-1])).astype(np.float64)
size = grid.shape[0] // len(prompts)
worst = 0.0
for j in range(grid.shape[1] // size):
    images = pipe(prompts, generator=torch.Generator().manual_seed(seed + 1000 + j), output_type="np", **call).images
    column = grid[:, j * size : (j + 1) * size].reshape(len(prompts), size, size, 3)
    worst = max(worst, float(np.abs(images * 255 - column).max()))
print(json.dumps({"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "diff": worst}))
"""


def test_sd_export_reloads_in_a_fresh_process_and_reproduces_the_sample_grid(run):
    """The 1-step student at s = pi/2 (the teacher's noisiest time) through stock diffusers (a w-embedded UNet:
    StableDiffusionPipeline feeds guidance_scale - 1 to its embedding, as the trainer feeds w - 1)."""
    done = subprocess.run(
        [sys.executable, "-c", SD_EXPORT_CHECK, str(run), str(SEED)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pipeline"] == "StableDiffusionPipeline", result
    assert result["diff"] <= 1.0, result  # the trainer's own grid (8-bit PNG)


# ---------------------------------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_is_scm_scheduler_step(steps):
    """scm_sample against a loop of SCMScheduler.step (model_output = sigma_d F), same generator: same times, same
    x0 = cos(s) x - sin(s) sigma_d F, same fresh noise at every step."""
    torch.manual_seed(0)
    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline())
    cond = denoiser.encode_prompt(["a red cube", "a blue sphere"])[0]
    scheduler = SCMScheduler()
    scheduler.set_timesteps(steps, intermediate_timesteps=1.3 if steps == 2 else None)
    times = scm_sampling_times(steps, 1.5708, 1.3)
    assert torch.equal(times, scheduler.timesteps)
    trig = TrigFlowTeacher(denoiser, SD)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        latents = torch.randn(2, 4, 8, 8, generator=generator) * SD
        for t in scheduler.timesteps[:-1]:
            F = trig.F(latents, t.clamp(max=S_MAX_NETWORK).expand(2), cond)
            latents, x0 = scheduler.step(SD * F, t, latents, generator=generator, return_dict=False)
        generator = torch.Generator().manual_seed(7)
        noise = torch.randn(2, 4, 8, 8, generator=generator)
        ours = scm_sample(denoiser, noise, cond, times, generator, None, SD)
    torch.testing.assert_close(ours, x0 / SD, rtol=1e-5, atol=1e-5)
    assert S_MAX_NETWORK < math.pi / 2 and torch.tensor(S_MAX_NETWORK).item() == S_MAX_NETWORK


def _step_parts(student_unet, teacher, w, r, seed=0):
    """One scm_step of `student_unet` against `teacher` for fixed draws; returns (step, student_unet, head)."""
    g = torch.Generator().manual_seed(seed)
    x0, z = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    s = torch.tensor([0.4, 1.1])
    cond, uncond = teacher.encode_prompt(["a red cube", "a blue sphere"])
    student = teacher.with_model(student_unet)
    head = LogVarianceHead(16)
    out = scm_step(
        student=student,
        jvp_student=student,
        teacher=teacher,
        logvar_head=head,
        x0=x0,
        z=z,
        s=s,
        w=None if w == 1 else torch.full((2,), w),
        embed=None,
        cond=cond,
        uncond=uncond,
        r=r,
    )
    out.loss.backward()
    return out, student_unet, head


def test_a_student_on_an_attention_kernel_without_forward_ad_is_refused():
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline())  # the model's default SDPA (flash on CPU)
    with pytest.raises(ValueError, match=r"has no forward-mode AD.*\['jvp', 'math'\]"):
        _step_parts(copy.deepcopy(teacher.base_model).requires_grad_(True), teacher, 1.0, 0.0)


def test_student_equal_to_teacher_without_guidance_and_warmup_gets_no_gradient():
    """With r = 0, no guidance (w = 1) and F_theta = F_teacher, g = -cos^2 s (sigma_d F^- - sigma_d F_pre) = 0, so
    the first loss is mean(logvar) = 0 and its gradient into the student vanishes; the log-variance head still
    gets d/dlogvar = 1 - w(s) e^-logvar 0 = 1. With guidance (w = 4.5) or r = 1 the gradient is not zero."""
    torch.manual_seed(0)
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline(), attention="jvp")
    teacher.freeze()
    out, student, head = _step_parts(copy.deepcopy(teacher.base_model).requires_grad_(True), teacher, 1.0, 0.0)
    assert out.g.abs().max() == 0 and out.loss.item() == 0
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) == 0
    torch.testing.assert_close(head.linear.bias.grad, torch.tensor([1.0]))
    for w, r in ((4.5, 0.0), (1.0, 1.0)):
        out, student, _ = _step_parts(copy.deepcopy(teacher.base_model).requires_grad_(True), teacher, w, r)
        assert out.g.abs().max() > 1e-3
        assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) > 1e-6


def test_time_difference_is_a_fraction_of_the_networks_timestep_range():
    """SD's UNet embeds timesteps 0..999: the default 0.02 moves it by +-19.98 timesteps; a dense-time SANA student
    embeds t in [0, 1]; 0 is the exact JVP."""
    from sdtoolkit.core.schedules import FlowSchedule

    vp = Denoiser.from_pipeline(tiny_sd_pipeline()).schedule
    assert network_time_delta(vp, 0.02) == pytest.approx(0.02 * 999)
    assert network_time_delta(FlowSchedule(num_train_timesteps=1), 0.02) == pytest.approx(0.02)
    assert network_time_delta(vp, 0.0) == 0.0
    assert SCMConfig().time_difference is None


def test_w_embedded_student_starts_as_the_teacher():
    torch.manual_seed(0)
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline())
    student = teacher.with_model(w_embedded_unet(teacher.base_model, 8))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 900.0])
    cond = teacher.encode_prompt(["a red cube", "a blue sphere"])[0]
    with torch.no_grad():
        expected = teacher.predict(x, t, cond).x0
        torch.testing.assert_close(student.predict(x, t, cond, guidance_embed=torch.tensor([3.0, 4.0])).x0, expected)


# ---------------------------------------------------------------------------------------------------- SANA


SANA_CHECK = r"""
import json, sys, torch
from diffusers import DiffusionPipeline

folder, prompts, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
spec = json.load(open(folder + "/export.json"))
pipe = DiffusionPipeline.from_pretrained(folder)  # stock diffusers, no sdtoolkit import
pipe.set_progress_bar_config(disable=True)
call = dict(num_inference_steps=spec["num_inference_steps"], guidance_scale=spec["guidance_scale"])
call.update(spec["call_kwargs"])
latents = pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="latent", **call).images
torch.save(latents, folder + "/../stock.pt")
print(json.dumps({"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "call": call}))
"""


def test_sana_student_trains_samples_and_exports_as_stock_sana_sprint(tmp_path):
    """The method on a tiny SANA teacher without the loop: a guidance-embedded, dense-time student; one sCM step
    (finite, gradients reach the student and the head); its sampler reproduced by a stock SanaSprintPipeline folder
    reloaded in a fresh process (same seed, 2 steps at 1.5708 / 1.3)."""
    torch.manual_seed(0)
    pipe = tiny_sana_pipeline()
    teacher = Denoiser.from_pipeline(pipe)
    data = TrainingData(text=None, device=torch.device("cpu"), latent_size=(16, 16))  # 32 px: SanaSprint's multiple
    method = SCM(SCMConfig(lr=1e-3, export_ema=False), teacher, Accelerator(cpu=True), data)
    models = method.build()
    method.setup(models)
    network = models["student"]
    assert network.config.guidance_embeds and network.config.guidance_embeds_scale == 0.1
    assert float(method.student.schedule.model_timestep(torch.tensor(0.25))) == 0.25  # dense time t, not 1000 t
    assert float(teacher.schedule.model_timestep(torch.tensor(0.25))) == 250.0
    prompts = ["a red cube", "a blue sphere"]
    cond, uncond = teacher.encode_prompt(prompts)
    w = torch.tensor([4.0, 5.0])
    g = torch.Generator().manual_seed(0)
    out = scm_step(
        student=method.student,
        jvp_student=method.jvp_student,
        teacher=teacher,
        logvar_head=models["logvar"],
        x0=torch.randn(2, 4, 16, 16, generator=g),
        z=torch.randn(2, 4, 16, 16, generator=g),
        s=torch.tensor([0.3, 1.2]),
        w=w,
        embed=method.guidance_input(w),
        cond=cond,
        uncond=uncond,
        r=1.0,
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.g.abs().max() > 0
    assert max(float(p.grad.abs().max()) for p in network.parameters() if p.grad is not None) > 0
    assert models["logvar"].linear.bias.grad is not None
    # a non-zero guidance embedding, so that the exported guidance input (w * guidance_embeds_scale) is checked too
    torch.nn.init.normal_(network.time_embed.guidance_embedder.linear_2.weight, std=0.05)
    latents = method.sample(cond, uncond, torch.Generator().manual_seed(SEED))
    student_dir, export = tmp_path / "student", tmp_path / "export"
    student_dir.mkdir()
    spec = method.save_student(student_dir)
    spec.save(student_dir)
    assert (spec.pipeline_class, spec.scheduler_class, spec.num_inference_steps, spec.guidance_scale) == (
        "SanaSprintPipeline",
        "SCMScheduler",
        2,
        4.5,
    )
    export_pipeline(export, pipe, student_dir)
    done = subprocess.run(
        [sys.executable, "-c", SANA_CHECK, str(export), json.dumps(prompts), str(SEED)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["pipeline"], result["scheduler"]) == ("SanaSprintPipeline", "SCMScheduler")
    stock = torch.load(tmp_path / "stock.pt")
    # the network sees min(s, largest float32 below pi/2) where the stock pipeline takes s = 1.5708 (t = 1 + 4e-6)
    torch.testing.assert_close(stock, latents, rtol=0, atol=1e-4)
    assert latents.abs().max() > 0.5


def test_sana_export_refuses_a_transformer_without_guidance_input(tmp_path):
    from sdtoolkit.pipelines.sana_sprint import build_sana_sprint_pipeline

    pipe = tiny_sana_pipeline()
    with pytest.raises(ValueError, match="guidance_embeds=False"):
        build_sana_sprint_pipeline(pipe, pipe.transformer)


# ---------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--attention", "flash", "'flash' has no forward-mode AD"),
        ("--lr", "0", "--lr 0.0 must be > 0"),
        ("--p-std", "-1", "--p-std -1.0 must be > 0"),
        ("--guidance-scales", "0.5", "--guidance-scales [0.5] must be one or more scales >= 1"),
        ("--tangent-norm-c", "0", "--tangent-norm-c 0.0 must be > 0"),
        ("--ema-decay", "1.5", "--ema-decay 1.5 must lie in [0, 1]"),
        ("--sample-steps", "0", "--sample-steps 0 must lie in [1, 1000]"),
        ("--intermediate-time", "1.6", "--intermediate-time 1.6 must lie in (0, --max-time 1.5708)"),
        ("--logvar-features", "3", "--logvar-features 3 must be an even integer"),
        ("--time-difference", "0.7", "--time-difference 0.7 must lie in [0, 0.5)"),
        ("--init-from", "/nonexistent/run", "--init-from /nonexistent/run: no checkpoint there"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_anything_is_written(
    assets, tmp_path, capsys, flag, value, expected
):
    capsys.readouterr()
    assert distill(assets, tmp_path / "never", "--max-steps", "1", flag, value) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdtoolkit distill: error:"), err
    assert expected in err, err
    assert not (tmp_path / "never").exists()


def test_guidance_embedding_on_a_network_without_one_is_refused():
    from sdtoolkit.distill.config import TrainConfig

    pipe = tiny_sana_pipeline()
    with pytest.raises(ValueError, match="SanaSprintPipeline, which always feeds"):
        SCM.check_teacher(SCMConfig(guidance_embedding=False), TrainConfig(), pipe)


# ---------------------------------------------------------------------------------------------------- other families


@pytest.mark.parametrize("family", ["sana", "sdxl", "sd3", "flux"])
def test_runs_through_the_loop_on_every_family(family, tmp_path):
    """Two steps through the shared Trainer (teacher pipeline passed in, export off): finite losses, a trained
    student that differs from the teacher, the spec for the family's stock pipeline."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from sdtoolkit.cli.distill import prepare_data
    from sdtoolkit.distill.config import TrainConfig
    from sdtoolkit.distill.loop import Trainer
    from sdtoolkit.testing import TINY_CAPTIONS, tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

    build = {"sana": tiny_sana_pipeline, "sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline}
    pipe = build.get(family, tiny_flux_pipeline)()
    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.asarray(pixels)).save(data / f"image{i}.png")
        (data / f"image{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    config = SCMConfig(lr=1e-3, tangent_warmup_steps=1)
    train = TrainConfig(
        teacher=f"tiny-{family}",
        output=str(tmp_path / "run"),
        data=str(data),
        resolution=16,
        max_steps=2,
        batch_size=2,
        checkpoint_every=100,
        sample_every=2,
        sample_prompts=1,
        sample_seeds=1,
        validate_every=-1,
        log_with="none",
        export=False,
    )
    SCM.check_config(config, train)
    resolved = {"method": "scm", "scm": dataclasses.asdict(config), "train": dataclasses.asdict(train)}
    network = copy.deepcopy(pipe.unet if family == "sdxl" else pipe.transformer)
    run = Trainer(SCM, config, train, resolved, prepare_data, pipeline=pipe).run()
    entries = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == [1, 2]
    assert all(math.isfinite(v) for e in entries for k, v in e.items() if k != "step")
    spec = json.loads((run / "student" / "export.json").read_text())
    component = "unet" if family == "sdxl" else "transformer"
    student = type(network).from_pretrained(run / "student" / component)
    shared = [k for k in network.state_dict() if k in student.state_dict()]
    assert any(not torch.equal(network.state_dict()[k], student.state_dict()[k]) for k in shared)
    expected = {
        "sana": ("SanaSprintPipeline", "SCMScheduler", 2, 4.5),
        "sdxl": ("StableDiffusionXLPipeline", "LCMScheduler", 1, 4.5),  # w-embedded 1-step generator
        "sd3": ("StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", 2, 1.0),  # fixed w, no embedding
        "flux": ("FluxPipeline", "FlowMatchEulerDiscreteScheduler", 2, 4.5),  # w through FLUX's guidance input
    }[family]
    assert (spec["pipeline_class"], spec["scheduler_class"], spec["num_inference_steps"], spec["guidance_scale"]) == (
        expected
    )
    if family == "sana":
        assert student.config.guidance_embeds


def test_flow_student_samples_scms_times_through_stock_sigmas(tmp_path):
    """A 2-step sCM student of an SD3 flow teacher samples SCMScheduler's times [1.5708, 1.3] (flow sigmas 1 and
    sin 1.3 / (sin 1.3 + cos 1.3) = 0.7827), not the stock 2-step grid whose second sigma is 0.001; the export passes
    them to the stock StableDiffusion3Pipeline as `sigmas`, and its call runs on exactly those sigmas."""
    from diffusers import StableDiffusion3Pipeline

    out = tmp_path / "scm"
    argv = ["distill", "scm", "--teacher", "builtin:shapes-flow", "--output", str(out), "--max-steps", "1",
            "--batch-size", "2", "--builtin-images", "4", "--num-threads", "1", "--sample-every", "0",
            "--validate-every", "-1", "--log-with", "none"]  # fmt: skip
    assert main(argv) == 0
    spec = json.loads((out / "export" / "export.json").read_text())
    expected = [1.0, math.sin(1.3) / (math.sin(1.3) + math.cos(1.3))]
    assert spec["num_inference_steps"] == 2
    assert spec["call_kwargs"]["sigmas"] == pytest.approx(expected, abs=1e-6)
    assert spec["scheduler_config"]["stochastic_sampling"] is True
    assert "static shift" not in spec["notes"]  # the teacher's own shift (1) is kept: no note claims otherwise
    assert "`sigmas`" in spec["notes"]
    pipe = StableDiffusion3Pipeline.from_pretrained(out / "export", text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red cube, front view", output_type="pt", **spec["call_kwargs"], num_inference_steps=2,
                 guidance_scale=spec["guidance_scale"]).images  # fmt: skip
    assert torch.isfinite(image).all()
    assert pipe.scheduler.sigmas[:-1].tolist() == pytest.approx(expected, abs=1e-6)


def test_init_from_of_another_architecture_is_refused_before_writing(tmp_path):
    """`--init-from` an sCM run of another teacher architecture ended in a traceback after the run folder was
    claimed; `init_mismatch` reads the checkpoint's header against the teacher's network first (check_teacher)."""
    from safetensors.torch import save_file
    from sdtoolkit.trainers.scm import init_mismatch

    from sdtoolkit.testing import tiny_sd3_transformer, tiny_unet

    unet = tiny_unet(time_cond_proj_dim=8)  # a student with a guidance embedding the teacher lacks still fits
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "model.safetensors"))
    assert init_mismatch(tmp_path, tiny_unet()) is None
    assert "tensors missing" in init_mismatch(tmp_path, tiny_sd3_transformer())
    assert "is [" in init_mismatch(tmp_path, tiny_unet(cross_attention_dim=16))
