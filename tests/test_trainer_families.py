"""Every trainer on every teacher family: LCM, LCM-LoRA, PCM, DMD2, Flash-DMD, SiD and SiDA run end to end through
the shared `Trainer` (a teacher pipeline object passed in, export off) on tiny SDXL, SD3, SANA and FLUX teachers, a
couple of optimizer steps each: finite losses, trained weights that moved, a saved student that loads back with its
network class (or a LoRA file of the family's stock key layout) and an `export.json` per the export contract.
Combinations that cannot apply are refused before anything is written, with one line saying why.

Also here: FLUX's resolution-dependent (dynamic) shift against the stock FluxPipeline's timesteps, and the guard
that a flow teacher can no longer be handed VP integer times anywhere in the trainers."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sdtoolkit.testing import (
    TINY_CAPTIONS,
    tiny_flux_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "sana": tiny_sana_pipeline,
    "flux": tiny_flux_pipeline,
}
FAMILIES = tuple(BUILDERS)
STOCK_PIPELINES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sana": "SanaPipeline",
    "flux": "FluxPipeline",
}
FLOW = {"sd3", "sana", "flux"}
RESOLUTION = 16

# method -> (registry name, settings): a couple of quick steps, learning rates large enough to move the weights
METHODS = {
    "lcm": ("lcm", {"num_ddim_timesteps": 10, "lr": 1e-3, "lr_warmup_steps": 0, "w_min": 1.0, "w_max": 3.0}),
    "lcm-lora": (
        "lcm",
        {"lora_rank": 4, "num_ddim_timesteps": 10, "lr": 1e-2, "lr_warmup_steps": 0, "w_min": 1.0, "w_max": 3.0},
    ),
    "pcm": (
        "pcm",
        {
            "phases": 2,
            "num_ddim_timesteps": 10,
            "lr": 1e-3,
            "lr_warmup_steps": 0,
            "adversarial": True,
            "w_min": 1.0,
            "w_max": 3.0,
        },
    ),
    "dmd2": ("dmd2", {"num_steps": 2, "learning_rate": 1e-3, "fake_updates_per_generator": 1, "gan_weight": 1e-2}),
    "flash-dmd": ("flash-dmd", {"num_steps": 2, "learning_rate": 1e-3}),
    "sid": ("sid", {"num_steps": 1, "learning_rate": 1e-3}),
    "sida": ("sida", {"num_steps": 1, "learning_rate": 1e-3}),
}


@pytest.fixture(scope="module")
def pipelines():
    """One pristine tiny pipeline per family (each run trains on a deep copy: LoRA methods adapt the teacher)."""
    return {name: build() for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Four captioned 16x16 images and a prompt file."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("families")
    data = root / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(RESOLUTION, RESOLUTION, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.asarray(pixels)).save(data / f"image{i}.png")
        (data / f"image{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    (root / "prompts.txt").write_text("\n".join(TINY_CAPTIONS) + "\n")
    return root


def _train(method_key, family, pipeline, output: Path, assets: Path, overrides=None, max_steps: int = 2):
    from sdtoolkit.cli.distill import prepare_data
    from sdtoolkit.distill.config import TrainConfig
    from sdtoolkit.distill.loop import Trainer, get_method

    name, settings = METHODS[method_key]
    method = get_method(name)
    method_config = method.config_class(**{**settings, **(overrides or {})})
    train = TrainConfig(
        teacher=f"tiny-{family}",
        output=str(output),
        data=str(assets / "data"),
        prompts=str(assets / "prompts.txt"),
        resolution=RESOLUTION,
        max_steps=max_steps,
        batch_size=2,
        checkpoint_every=100,
        sample_every=max_steps,
        sample_prompts=1,
        sample_seeds=1,
        validate_every=-1,
        log_with="none",
        export=False,
    )
    method.check_config(method_config, train)
    resolved = {"method": name, name: dataclasses.asdict(method_config), "train": dataclasses.asdict(train)}
    trainer = Trainer(method, method_config, train, resolved, prepare_data, pipeline=pipeline)
    return trainer.run()


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k].float(), b[k].float()) for k in a if k in b)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method_key", list(METHODS))
def test_every_trainer_runs_on_every_family(method_key, family, pipelines, assets, tmp_path):
    import diffusers
    from safetensors.torch import load_file

    pristine = pipelines[family]
    component = "unet" if family == "sdxl" else "transformer"
    network = getattr(pristine, component)
    run = _train(method_key, family, copy.deepcopy(pristine), tmp_path / "run", assets)

    # finite losses at every step
    entries = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries] == [1, 2]
    values = torch.tensor([v for e in entries for k, v in e.items() if k != "step"])
    assert torch.isfinite(values).all(), entries
    assert list((run / "samples").glob("step_*.png"))

    # the spec per the export contract
    student = run / "student"
    spec = json.loads((student / "export.json").read_text())
    lora = method_key == "lcm-lora"
    assert spec["student"] == ("lora" if lora else component)
    assert spec["trained_steps"] == 2
    if "family" in spec:
        assert spec["family"] == family
    if family in FLOW:
        assert spec["pipeline_class"] == STOCK_PIPELINES[family]
        assert spec["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
        deterministic = method_key == "pcm" or METHODS[method_key][1].get("num_steps") == 1
        assert spec["scheduler_config"] == ({} if deterministic else {"stochastic_sampling": True})
        if family == "flux":  # the dynamic shift's grid holds at the trained resolution
            assert spec["call_kwargs"] == {"height": RESOLUTION, "width": RESOLUTION}
    else:
        assert spec["pipeline_class"] == "StableDiffusionXLPipeline"
        assert spec["scheduler_class"] == ("TCDScheduler" if method_key == "pcm" else "LCMScheduler")
    guided = method_key in ("lcm", "lcm-lora", "pcm") and family == "flux"  # w through FLUX's guidance input
    guided |= method_key in ("lcm", "pcm") and family == "sdxl"  # the w-embedding of a full UNet student
    assert spec["guidance_scale"] != 1.0 if guided else spec["guidance_scale"] == 1.0

    # the saved student loads back and differs from the teacher
    if lora:
        weights = load_file(str(student / "pytorch_lora_weights.safetensors"))
        assert weights and all(k.startswith(f"{component}.") for k in weights)
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at zero
        pipe_class = getattr(diffusers, STOCK_PIPELINES[family])
        state = pipe_class.lora_state_dict(str(student))  # the stock loader reads it back
        state = state[0] if isinstance(state, tuple) else state
        assert set(state) == set(weights)
    else:
        loaded = type(network).from_pretrained(student / component)
        assert loaded.config.get("_class_name", type(network).__name__) == type(network).__name__
        assert _changed(loaded.state_dict(), network.state_dict())


@pytest.mark.parametrize("family", ["sd3", "sana", "flux"])
def test_lcm_w_embedding_is_refused_on_transformers(family, pipelines, assets, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        _train("lcm", family, copy.deepcopy(pipelines[family]), output, assets, {"w_embedding": True})
    message = str(error.value)
    assert "\n" not in message
    assert "time_cond_proj_dim" in message and "drop --w-embedding" in message
    if family == "flux":
        assert "guidance input" in message
    assert not output.exists()


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_generator_timestep_is_refused_on_flow_teachers(family, pipelines, assets, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--generator-timestep 399 is an integer VP timestep.*leave it unset"):
        _train(
            "dmd2",
            family,
            copy.deepcopy(pipelines[family]),
            output,
            assets,
            {"num_steps": 1, "generator_timestep": 399},
        )
    assert not output.exists()


# ---------------------------------------------------------------------------------------------------- FLUX's shift


def _stock_flux_timesteps(pipe, size: int, steps: int) -> torch.Tensor:
    seen = {}

    def spy(pipeline, i, t, kwargs):
        seen.setdefault("timesteps", pipeline.scheduler.timesteps.clone())
        return kwargs

    with torch.no_grad():
        pipe(
            "a red cube",
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=3.5,
            output_type="latent",
            max_sequence_length=16,
            callback_on_step_end=spy,
        )
    return seen["timesteps"]


@pytest.mark.parametrize("size", [16, 64])
def test_flux_dynamic_shift_is_the_stock_flux_pipelines(pipelines, size):
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.schedules import FlowSchedule

    pipe = pipelines["flux"]
    teacher = Denoiser.from_pipeline(pipe)
    assert isinstance(teacher.schedule, FlowSchedule) and teacher.schedule.dynamic is not None
    with pytest.raises(ValueError, match="shifts time by resolution"):
        teacher.schedule.grid(4)
    latent = size // pipe.vae_scale_factor
    teacher.set_latent_size(latent, latent)
    for steps in (1, 2, 4):
        stock = _stock_flux_timesteps(pipe, size, steps)
        ours = torch.tensor(teacher.schedule.student_timesteps(steps, 50)) * 1000
        torch.testing.assert_close(ours.float(), stock.float(), rtol=1e-6, atol=1e-3)
    # the two resolutions shift differently (mu grows with the token count)
    other = Denoiser.from_pipeline(pipe).set_latent_size(2 * latent, 2 * latent)
    assert other.schedule.mu > teacher.schedule.mu


def test_static_flow_student_grid_is_the_stock_scheduler_for_any_solver_grid():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from sdtoolkit.core.schedules import FlowSchedule

    for k in (1, 2, 4):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        scheduler.set_timesteps(k)
        ours = torch.tensor(FlowSchedule(shift=3.0).student_timesteps(k, 50))
        torch.testing.assert_close(ours.float(), scheduler.sigmas[:-1])


# ---------------------------------------------------------------------------------------------------- no VP time


@pytest.mark.parametrize("method_key", list(METHODS))
def test_a_flow_teacher_refuses_vp_times_inside_every_trainer(method_key, pipelines, assets, tmp_path, monkeypatch):
    """Every time the trainers draw goes through the schedule; forcing VP integer times into those draws must make
    each trainer's loss fail on the flow teacher's own range check (old code fed them to the network)."""
    from sdtoolkit.core import schedules
    from sdtoolkit.distill import score_distillation

    def vp_times(schedule, n, low=0.0, high=1.0, *, device=None, generator=None):
        return torch.full((n,), 500.0, device=device)

    def vp_grid(self, num_points):
        return torch.arange(1, num_points + 1, dtype=torch.float64) * (1000 // num_points) - 1

    monkeypatch.setattr(score_distillation, "sample_timesteps", vp_times)
    for module in ("trainers.distribution_matching", "trainers.dmd2", "trainers.sid", "trainers.sida"):
        target = __import__(f"sdtoolkit.{module}", fromlist=["x"])
        if hasattr(target, "sample_timesteps"):
            monkeypatch.setattr(target, "sample_timesteps", vp_times)
    monkeypatch.setattr(schedules.FlowSchedule, "grid", vp_grid)
    monkeypatch.setattr(schedules.FlowSchedule, "student_timesteps", lambda self, k, n=None: [999.0, 499.0][:k])
    monkeypatch.setattr(schedules.FlowSchedule, "check_time", _check_only_network_times)
    with pytest.raises(ValueError, match=r"network time .* lies outside FlowSchedule's native time range \[0, 1\]"):
        _train(method_key, "sd3", copy.deepcopy(pipelines["sd3"]), tmp_path / "run", assets, max_steps=1)


def _check_only_network_times(self, t, what="time"):
    """FewStepStudent's own check of its timesteps would refuse them before any loss ran; let the network's check
    (inside the losses) be the one that fires."""
    if what == "network time":
        schedules_check(self, t, what)


def schedules_check(schedule, t, what):
    from sdtoolkit.core.schedules import NoiseSchedule

    NoiseSchedule.check_time(schedule, t, what)


def test_cli_refuses_a_method_the_teachers_family_cannot_take_in_one_line(tmp_path, capsys):
    """`sdtoolkit distill lcm --w-embedding` on an SD3 teacher folder: exit 2, one line naming why and what works,
    and no run folder."""
    from sdtoolkit.cli import main
    from sdtoolkit.testing import tiny_sd3_pipeline, write_tiny_assets

    teacher = tmp_path / "sd3"
    tiny_sd3_pipeline().save_pretrained(teacher)
    data = write_tiny_assets(tmp_path / "assets") / "data"
    out = tmp_path / "run"
    capsys.readouterr()
    args = ["distill", "lcm", "--teacher", str(teacher), "--data", str(data), "--w-embedding", "--output", str(out)]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (loading bars aside)
    assert len(err) == 1 and "time_cond_proj_dim" in err[0], err
    assert not out.exists()


def test_generate_runs_a_flow_family_folder_and_records_its_float_times(tmp_path):
    """`sdtoolkit generate --model FOLDER` on an SD3 folder: stock sampling, and the recorded times are the
    scheduler's own (flow times are not integers: 751.12, not 751)."""
    from sdtoolkit.cli import main

    tiny_sd3_pipeline().save_pretrained(tmp_path / "sd3")
    out = tmp_path / "grid.png"
    args = ["generate", "--model", str(tmp_path / "sd3"), "--prompt", "a red cube", "--steps", "3", "--guidance", "1"]
    assert main([*args, "--out", str(out)]) == 0
    times = json.loads(out.with_suffix(".json").read_text())["timesteps"]
    assert len(times) == 3 and times[0] == 1000 and not float(times[1]).is_integer()
