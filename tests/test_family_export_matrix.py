"""The trainer x family matrix with its stock export (issue 18, item 3): every distillation method trained through
the shared `Trainer` on tiny SDXL, SD3, SANA and FLUX teachers with export ON, then every exported folder loaded in
ONE fresh Python process by stock `diffusers.DiffusionPipeline.from_pretrained` as the family's own pipeline class
and called with the exported spec's call. Where the stock sampler draws its noise from the call's generator (every
deterministic student, and the stochastic students of the VP family SDXL, whose LCMScheduler re-noises from it) the
stock latents equal the toolkit's own sampler (`DistillationMethod.sample`) for the same seed; stochastic students
of flow families re-noise from torch's global RNG inside stock SD3/SANA/FLUX pipelines (their `scheduler.step`
gets no generator), so there only the class, the step count and finiteness are checked."""

import copy
import dataclasses
import json
import subprocess
import sys
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
STOCK = {"sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline", "sana": "SanaPipeline"}
STOCK["flux"] = "FluxPipeline"
RESOLUTION = 16
SIZE = {"sana": 32}  # stock SanaPipeline samples multiples of 32 px only
SEED = 1234
METHODS = {
    "lcm": ("lcm", {"num_ddim_timesteps": 10, "lr": 1e-3, "lr_warmup_steps": 0, "w_min": 1.0, "w_max": 3.0}),
    "lcm-lora": (
        "lcm",
        {"lora_rank": 4, "num_ddim_timesteps": 10, "lr": 1e-2, "lr_warmup_steps": 0, "w_min": 1.0, "w_max": 3.0},
    ),
    "pcm": ("pcm", {"phases": 2, "num_ddim_timesteps": 10, "lr": 1e-3, "lr_warmup_steps": 0, "w_min": 1.0}),
    "dmd2": ("dmd2", {"num_steps": 2, "learning_rate": 1e-3, "fake_updates_per_generator": 1}),
    "dmd2-1step": ("dmd2", {"num_steps": 1, "learning_rate": 1e-3, "fake_updates_per_generator": 1}),
    "flash-dmd": ("flash-dmd", {"num_steps": 2, "learning_rate": 1e-3}),
    "sid": ("sid", {"num_steps": 1, "learning_rate": 1e-3}),
    "sida": ("sida", {"num_steps": 1, "learning_rate": 1e-3}),
}
CELLS = [(m, f) for f in BUILDERS for m in METHODS]


def _exact(method_key: str, family: str, spec: dict) -> bool:
    """Whether the stock sampler's noise all comes from the call's generator for this export."""
    stochastic = spec["scheduler_class"] == "LCMScheduler" or spec["scheduler_config"].get("stochastic_sampling")
    return not (stochastic and family != "sdxl") and spec["num_inference_steps"] >= 1


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Trains and exports every cell; returns {cell: (export folder, prompt, toolkit latents)}."""
    import numpy as np
    from PIL import Image

    from sdtoolkit.cli.distill import prepare_data
    from sdtoolkit.distill.config import TrainConfig
    from sdtoolkit.distill.loop import Trainer, get_method

    root = tmp_path_factory.mktemp("matrix")
    data = root / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(RESOLUTION, RESOLUTION, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.asarray(pixels)).save(data / f"image{i}.png")
        (data / f"image{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    (root / "prompts.txt").write_text("\n".join(TINY_CAPTIONS) + "\n")
    pristine = {name: build() for name, build in BUILDERS.items()}
    out = {}
    for method_key, family in CELLS:
        name, settings = METHODS[method_key]
        method = get_method(name)
        method_config = method.config_class(**settings)
        run = root / f"{family}-{method_key}"
        train = TrainConfig(
            teacher=f"tiny-{family}",
            output=str(run),
            data=str(data),
            prompts=str(root / "prompts.txt"),
            resolution=SIZE.get(family, RESOLUTION),
            max_steps=2,
            batch_size=2,
            checkpoint_every=100,
            sample_every=100,
            validate_every=-1,
            log_with="none",
            export=True,
        )
        resolved = {"method": name, name: dataclasses.asdict(method_config), "train": dataclasses.asdict(train)}
        trainer = Trainer(
            method, method_config, train, resolved, prepare_data, pipeline=copy.deepcopy(pristine[family])
        )
        trainer.run()
        m = trainer.method
        with torch.no_grad():
            latents = m.sample(
                m.training_data.conditioning([0]), m.training_data.uncond(1), torch.Generator().manual_seed(SEED)
            )
        out[(method_key, family)] = (run / "export", trainer.prompts[0], latents.float())
    return out


def test_every_export_reloads_as_its_familys_stock_pipeline_and_samples_as_trained(matrix, tmp_path):
    jobs = [
        {"cell": f"{m}/{f}", "folder": str(folder), "prompt": prompt, "family": f, "size": SIZE.get(f, RESOLUTION)}
        for (m, f), (folder, prompt, _) in matrix.items()
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    script = f"""
import json, torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file
jobs = json.load(open({str(tmp_path / "jobs.json")!r}))
out = {{}}
for job in jobs:
    spec = json.load(open(job["folder"] + "/export.json"))
    index = json.load(open(job["folder"] + "/model_index.json"))
    absent = {{k: None for k, v in index.items() if v == [None, None]}}  # SD3 without T5: as its model card says
    pipe = DiffusionPipeline.from_pretrained(job["folder"], **absent)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    net = getattr(pipe, "unet", None) or pipe.transformer
    net.register_forward_pre_hook(lambda module, args: calls.append(1))
    args = {{**spec["call_kwargs"], "num_inference_steps": spec["num_inference_steps"],
             "guidance_scale": spec["guidance_scale"], "height": job["size"], "width": job["size"]}}
    if job["family"] == "sana":
        args["use_resolution_binning"] = False
    latents = pipe(job["prompt"], generator=torch.Generator().manual_seed({SEED}), output_type="latent", **args)[0]
    if job["family"] == "flux":
        latents = pipe._unpack_latents(latents, job["size"], job["size"], pipe.vae_scale_factor)
    out[job["cell"]] = (type(pipe).__name__, len(calls), spec)
    save_file({{"x": latents.float().contiguous()}}, job["folder"] + "/../stock_latents.safetensors")
json.dump(out, open({str(tmp_path / "out.json")!r}, "w"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, "\n".join(line for line in result.stderr.splitlines() if "%|" not in line)[-3000:]
    from safetensors.torch import load_file

    reloaded = json.loads((tmp_path / "out.json").read_text())
    exact_cells = []
    for (method_key, family), (folder, _, ours) in matrix.items():
        cls, calls, spec = reloaded[f"{method_key}/{family}"]
        assert cls == STOCK[family], (method_key, family, cls)
        assert spec["family"] == family
        assert calls == spec["num_inference_steps"], (method_key, family, calls, spec)  # no CFG batch, trained steps
        stock = load_file(Path(folder).parent / "stock_latents.safetensors")["x"]
        assert torch.isfinite(stock).all()
        if _exact(method_key, family, spec):
            exact_cells.append((method_key, family))
            scale = max(1.0, ours.abs().max().item())
            assert stock.shape == ours.shape, (method_key, family)
            assert (stock - ours).abs().max().item() <= 1e-4 * scale, (method_key, family)
    # every family has exactly reproduced cells (the deterministic ones at least)
    assert {f for _, f in exact_cells} == set(BUILDERS)
    # 8 cells per family, less the 4 stochastic flow students (lcm, lcm-lora, 2-step dmd2 and flash-dmd) of each of
    # sd3, sana, flux
    assert len(exact_cells) == 8 * 4 - 4 * 3
