"""Every model family exports as its own stock diffusers pipeline (issue 18, item 3, the export half).

For SDXL, SD3, SANA and FLUX a tiny teacher (`sdtoolkit.testing`) gets a "student": its network with perturbed
weights (full, `student/unet|transformer/`) or a peft LoRA on the attention projections (`student/
pytorch_lora_weights.safetensors` from the family's `save_lora_weights`), with `export.json` written by hand as the
trainers do. `export_pipeline` writes the folder; ONE fresh Python process loads every folder with stock
`DiffusionPipeline.from_pretrained`, checks the class, and runs `spec.call_arguments()` with a seeded generator at
16x16 (SANA: 32x32), latent output. Measure: the largest absolute difference to the toolkit's own few-step sampler
(`sdtoolkit.core.sampling.multistep_sample` with `Denoiser` on the student network, same seed and noise).
Threshold: 1e-4 times max(1, the largest reference magnitude) (float32 rounding; an epsilon-UNet's x0 at t = 999
divides by alpha = 0.068, so SDXL's 1-step latents reach ~50). Also: a LoRA export equals the export of the same
LoRA fused by peft (same threshold), SD3/SANA at guidance_scale=1 run one transformer pass per step (no CFG
batch), an unknown family fails in one line before anything is written, and each model card holds the exact call.
"""

import copy
import json
import subprocess
import sys

import pytest
import torch
from sdtoolkit.pipelines.export import LORA_WEIGHT_NAME, ExportSpec, export_pipeline

from sdtoolkit import testing

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 0
GLOBAL_SEED = 1234
PROMPT = "a photo of a red cube"
SIZE = 16
SIZES = {"sana": 32}
"""Image sizes other than SIZE (SanaPipeline requires multiples of 32); every tiny VAE downsamples by 2."""
TOLERANCE = 1e-4
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

TEACHERS = {
    "sdxl": testing.tiny_sdxl_pipeline,
    "sd3": testing.tiny_sd3_pipeline,
    "sana": testing.tiny_sana_pipeline,
    "flux": testing.tiny_flux_pipeline,
}
NETWORK = {"sdxl": "unet", "sd3": "transformer", "sana": "transformer", "flux": "transformer"}
# (family, name, student kind, steps, stochastic): full 1-step generators; LoRA multi-step students (stochastic
# consistency-style for SDXL/SD3/SANA, deterministic Euler for FLUX) and the same LoRA fused by peft (`merged`)
CASES = [
    ("sdxl", "full1", "full", 1, False),
    ("sdxl", "lora4", "lora", 4, True),
    ("sdxl", "merged4", "merged", 4, True),
    ("sd3", "full1", "full", 1, False),
    ("sd3", "lora2", "lora", 2, True),
    ("sd3", "merged2", "merged", 2, True),
    ("sana", "full1", "full", 1, False),
    ("sana", "lora2", "lora", 2, True),
    ("sana", "merged2", "merged", 2, True),
    ("flux", "full1", "full", 1, False),
    ("flux", "lora2", "lora", 2, False),
    ("flux", "merged2", "merged", 2, False),
]


def perturbed(network, seed: int):
    """A copy of `network` with every weight moved by 0.02 N(0, 1) (seeded)."""
    student = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    return student


def with_lora(network, seed: int):
    """A copy of `network` with a rank-4 peft LoRA (random A and B) on its attention projections."""
    from peft import LoraConfig

    student = copy.deepcopy(network)
    torch.manual_seed(seed)
    # lora_alpha = r: save_lora_weights does not store alpha, and diffusers loads a LoRA without it at scale 1
    student.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.1)
    return student


def merged(lora_network):
    """The LoRA merged into the base weights by peft itself (independent of diffusers' fuse_lora)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    network = copy.deepcopy(lora_network)
    for module in network.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    state = {k.replace(".base_layer.", "."): v for k, v in network.state_dict().items() if "lora_" not in k}
    plain = type(lora_network).from_config(lora_network.config)
    plain.load_state_dict(state)
    return plain


def trained_sigmas(teacher, steps: int) -> list[float]:
    """What a trainer would write for a FLUX student: FluxPipeline's own grid linspace(1, 1/k, k) with the teacher's
    dynamic shift at the 16x16 training size (16 packed tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = teacher.scheduler.config
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(16, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
    scheduler.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)], mu=mu)
    return [float(s) for s in scheduler.sigmas[:-1]]


def write_student(folder, family: str, teacher, network, kind: str, steps: int, stochastic: bool):
    """`student/` + `export.json` as the trainers write them (the contract of `ExportSpec`)."""
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True)
    component = NETWORK[family]
    if kind == "lora":
        layers = {f"{component}_lora_layers": get_peft_model_state_dict(network)}
        type(teacher).save_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, **layers)
    else:
        network.save_pretrained(folder / component, safe_serialization=True)
    student = "lora" if kind == "lora" else component
    common = dict(method="dmd2", student=student, num_inference_steps=steps, family=family, teacher="tiny")
    if family == "sdxl":
        spec = ExportSpec(
            pipeline_class="StableDiffusionXLPipeline",
            scheduler_class="LCMScheduler",
            scheduler_config={"original_inference_steps": steps},
            **common,
        )
    else:
        spec = ExportSpec(
            pipeline_class=type(teacher).__name__,
            scheduler_class="FlowMatchEulerDiscreteScheduler",
            scheduler_config={"stochastic_sampling": True} if stochastic else {},
            guidance_scale=3.5 if family == "flux" else 1.0,
            timesteps=trained_sigmas(teacher, steps) if family == "flux" and steps > 1 else [],
            **common,
        )
    spec.save(folder)
    return spec


def reference(teacher, network, family: str, steps: int, stochastic: bool, spec) -> torch.Tensor:
    """The toolkit's own sampler: `multistep_sample` on the student network from the same seeded noise."""
    from sdtoolkit.pipelines.families import trained_sigmas as spec_sigmas

    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.sampling import multistep_sample

    denoiser = Denoiser.from_pipeline(teacher, model=network)
    cond, _ = denoiser.encode_prompt([PROMPT])
    generator = torch.Generator().manual_seed(SEED)
    size = SIZES.get(family, SIZE) // 2
    noise = torch.randn((1, 4, size, size), generator=generator)
    if family == "sdxl":
        times = [999, 749, 499, 249][:steps] if steps > 1 else [999]
    else:
        times = spec_sigmas(spec, teacher.scheduler)
    guidance = torch.tensor([3.5]) if family == "flux" else None
    renoise = "fresh" if stochastic or family == "sdxl" else "ddim"
    if stochastic and family == "sd3":  # StableDiffusion3Pipeline re-noises from torch's global RNG
        torch.manual_seed(GLOBAL_SEED)
        generator = None
    return multistep_sample(
        denoiser, noise, cond, times, renoise=renoise, generator=generator, guidance_embed=guidance
    )


STOCK_RUN = r"""
import json, sys
import torch
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

cases, out = json.loads(sys.argv[1]), sys.argv[2]
results, tensors = {}, {}
for name, case in cases.items():
    pipe = DiffusionPipeline.from_pretrained(case["folder"], **case["load"])
    network = getattr(pipe, case["network"])
    batches = []
    network.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(int((args[0] if args else kwargs["hidden_states"]).shape[0])),
        with_kwargs=True,
    )
    if case["global_seed"] is not None:
        torch.manual_seed(case["global_seed"])
    generator = torch.Generator().manual_seed(case["seed"])
    latents = pipe(case["prompt"], generator=generator, **case["call"]).images
    tensors[name] = latents.float().contiguous()
    results[name] = {"class": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "batches": batches}
save_file(tensors, out + ".safetensors")
open(out + ".json", "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported, run once by stock diffusers in a fresh process: (final specs, toolkit references, stock
    classes and network batch sizes, stock latents, export folders), by case."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("export-families")
    teachers, specs, references, cases = {}, {}, {}, {}
    for family, name, kind, steps, stochastic in CASES:
        teacher = teachers.setdefault(family, TEACHERS[family]())
        base = getattr(teacher, NETWORK[family])
        if kind == "full":
            network = perturbed(base, seed=1)
        else:
            network = with_lora(base, seed=2)
        saved = merged(network) if kind == "merged" else network
        student = root / f"{family}-{name}" / "student"
        spec = write_student(student, family, teacher, saved, kind, steps, stochastic)
        out = export_pipeline(root / f"{family}-{name}" / "export", teacher, student, spec, {"train": {}})
        key = f"{family}-{name}"
        specs[key] = ExportSpec.load(out)
        with torch.no_grad():
            references[key] = reference(teacher, network, family, steps, stochastic, spec)
        size = SIZES.get(family, SIZE)
        call = {**specs[key].call_arguments(), "height": size, "width": size, "output_type": "latent"}
        if family == "sana":
            call["use_resolution_binning"] = False
        cases[key] = {
            "folder": str(out),
            "network": NETWORK[family],
            "prompt": PROMPT,
            "seed": SEED,
            "global_seed": GLOBAL_SEED if stochastic and family == "sd3" else None,
            # the tiny SD3 has no T5: stock from_pretrained needs the absent components passed as None
            "load": {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {},
            "call": call,
        }
    result = root / "stock"
    command = [sys.executable, "-c", STOCK_RUN, json.dumps(cases), str(result)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(result.with_suffix(".json").read_text())
    latents = load_file(str(result) + ".safetensors")
    return specs, references, results, latents, {key: case["folder"] for key, case in cases.items()}


def _stock_latents(family: str, latents: torch.Tensor) -> torch.Tensor:
    if family == "flux":  # FluxPipeline returns packed latents with output_type="latent"
        from sdtoolkit.core.families.flux import unpack_latents

        return unpack_latents(latents, SIZE // 2, SIZE // 2)
    return latents


STOCK_CLASSES = {
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sana": "SanaPipeline",
    "flux": "FluxPipeline",
}


@pytest.mark.parametrize("case", [f"{family}-{name}" for family, name, *_ in CASES])
def test_stock_pipeline_samples_the_trained_student(exported, case):
    specs, references, results, latents, _ = exported
    family = case.split("-")[0]
    assert results[case]["class"] == STOCK_CLASSES[family]
    assert specs[case].pipeline_class == STOCK_CLASSES[family] and specs[case].family == family
    stock = _stock_latents(family, latents[case])
    worst = (stock - references[case]).abs().max().item()
    scale = max(1.0, references[case].abs().max().item())
    assert worst <= TOLERANCE * scale, (case, worst, scale, specs[case].timesteps)
    # one network pass per step, batch 1: no CFG batch at guidance_scale 1 (SD3, SANA, SDXL's zero embedding)
    assert results[case]["batches"] == [1] * specs[case].num_inference_steps, results[case]


@pytest.mark.parametrize("family,steps", [("sdxl", 4), ("sd3", 2), ("sana", 2), ("flux", 2)])
def test_lora_export_equals_fused_full_export(exported, family, steps):
    latents = exported[3]
    lora, full = latents[f"{family}-lora{steps}"], latents[f"{family}-merged{steps}"]
    assert (lora - full).abs().max().item() <= TOLERANCE * max(1.0, full.abs().max().item())


def test_flow_schedulers(exported):
    """The exported schedulers: FlowMatch Euler with the teacher's shift (SD3, SANA: 3.0) and stochastic sampling
    for multi-step consistency-style students; FLUX's dynamic shifting kept for its 1-step student (sigma = 1 at
    every resolution), and for the 2-step one the trained sigmas passed in the call on a static shift."""
    specs = exported[0]
    for family in ("sd3", "sana"):
        assert specs[f"{family}-full1"].scheduler_config.get("stochastic_sampling", False) is False
        assert specs[f"{family}-lora2"].scheduler_config["stochastic_sampling"] is True
        assert specs[f"{family}-lora2"].timesteps[0] == 1000.0
    assert "use_dynamic_shifting" not in specs["flux-full1"].scheduler_config  # the teacher's (True) is kept
    assert specs["flux-lora2"].scheduler_config["use_dynamic_shifting"] is False
    assert len(specs["flux-lora2"].call_kwargs["sigmas"]) == 2


def test_model_cards_state_the_call(exported):
    from pathlib import Path

    specs, _, _, _, folders = exported
    for case, spec in specs.items():
        text = Path(folders[case], "README.md").read_text()
        arguments = ", ".join(f"{k}={v!r}" for k, v in spec.call_arguments().items())
        assert f'pipe("a red cube, front view", {arguments}, generator=' in text, case
        assert f"`{spec.pipeline_class}`" in text
        load = ", text_encoder_3=None, tokenizer_3=None" if case.startswith("sd3") else ""
        assert f'DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER"{load})' in text, case
        seeded = case.startswith("sd3") and spec.scheduler_config.get("stochastic_sampling")
        assert ("torch.manual_seed(0)" in text) == bool(seeded), case


def test_sana_dpm_solver_teacher_keeps_its_flow_shift():
    """SANA's stock DPMSolverMultistepScheduler(use_flow_sigmas, flow_shift=3) becomes FlowMatch Euler shift=3."""
    from diffusers import DPMSolverMultistepScheduler
    from sdtoolkit.pipelines import families

    teacher = testing.tiny_sana_pipeline()
    teacher.scheduler = DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"
    )
    spec = ExportSpec("dmd2", "transformer", "SanaPipeline", "FlowMatchEulerDiscreteScheduler", 1, family="sana")
    plan = families.flow_plan(families.check_family(spec, teacher), spec, teacher)
    scheduler = families.flow_scheduler(teacher.scheduler.config, plan["scheduler_config"])
    assert type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and scheduler.config.shift == 3.0
    assert plan["timesteps"] == [1000.0]


def test_unknown_family_fails_before_writing(tmp_path):
    teacher = testing.tiny_sd_pipeline()
    student = tmp_path / "student"
    student.mkdir()
    spec = ExportSpec("dmd2", "unet", "StableDiffusionPipeline", "LCMScheduler", 1, family="kandinsky")
    spec.save(student)
    out = tmp_path / "export"
    with pytest.raises(ValueError) as error:
        export_pipeline(out, teacher, student, spec)
    message = str(error.value)
    assert "\n" not in message and "kandinsky" in message
    assert "valid families: sd, sdxl, sd3, sana, flux" in message
    assert not out.exists() and not any(p.name.startswith(".export") for p in tmp_path.iterdir())
