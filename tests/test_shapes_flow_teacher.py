"""The flow-matching shapes teacher (`train-teacher --family sd3`, `builtin:shapes-flow`): tiny runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sdtoolkit.cli import main

TINY_RUN = ["train-teacher", "--family", "sd3", "--tiny", "--checkpoint-minutes", "0", "--threads", "1"]


def _tiny_config(**changes):
    from sdtoolkit.models.shapes_flow_teacher import FlowTeacherConfig

    values = dict(
        num_train_images=32, render_chunk=16, text_hidden_size=16, text_layers=1, text_heads=2,
        text_intermediate_size=32, transformer_layers=2, attention_heads=2, attention_head_dim=8,
        transformer_steps=4, batch_size=4, warmup_steps=1, log_every=1, sample_prompts=0, checkpoint_minutes=0,
    )  # fmt: skip
    values.update(changes)
    return FlowTeacherConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow") / "teacher"
    assert main([*TINY_RUN, "--output", str(folder), "--transformer-steps", "4"]) == 0
    return folder


def test_flow_equations():
    from sdtoolkit.core.schedules import FlowSchedule
    from sdtoolkit.models.shapes_flow_teacher import flow_velocity_target, logit_normal_times

    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = FlowSchedule().add_noise(x0, eps, t)  # the path the teacher trains on (the schedule's own)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[2], eps[2])
    assert torch.allclose(x_t[1], (x0[1] + eps[1]) / 2)
    assert torch.allclose(flow_velocity_target(x0, eps), (eps - x0))
    times = logit_normal_times(10_000, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert 0 < times.min() and times.max() < 1 and abs(float(times.median()) - 0.5) < 0.02
    shifted = FlowSchedule(shift=3.0).shift_time(times)
    assert torch.allclose(shifted, 3.0 * times / (1 + 2.0 * times))  # Esser et al. 2024, Eq. 23


def test_a_few_steps_reduce_the_flow_loss_on_a_fixed_batch():
    from sdtoolkit.core.schedules import FlowSchedule
    from sdtoolkit.models.shapes_flow_teacher import (
        build_text_encoder,
        build_tokenizer,
        build_transformer,
        encode_captions,
        flow_matching_loss,
    )

    config = _tiny_config()
    torch.manual_seed(0)
    tokenizer = build_tokenizer(config)
    models = [build_transformer(config, 4, 8), build_text_encoder(config, len(tokenizer))]
    models.append(build_text_encoder(config, len(tokenizer), "gelu"))
    ids = tokenizer(["a red cube, front view", ""] * 2, padding="max_length", max_length=16, return_tensors="pt")
    x0, eps, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0.2, 0.4, 0.6, 0.8])
    optimizer = torch.optim.AdamW([p for m in models for p in m.parameters()], lr=5e-3)

    def loss_now():
        embeds, pooled = encode_captions(models[1], models[2], ids.input_ids, 2 * config.text_hidden_size, 4)
        velocity = models[0](FlowSchedule().add_noise(x0, eps, t), embeds, pooled, t * 1000).sample
        return flow_matching_loss(velocity, x0, eps)

    first = float(loss_now())
    for _ in range(20):
        optimizer.zero_grad()
        loss_now().backward()
        optimizer.step()
    assert float(loss_now().detach()) < 0.8 * first


def test_encode_captions_matches_the_stock_sd3_pipeline(trained):
    from diffusers import StableDiffusion3Pipeline

    from sdtoolkit.models.shapes_flow_teacher import encode_captions

    pipe = StableDiffusion3Pipeline.from_pretrained(trained, text_encoder_3=None, tokenizer_3=None)
    prompts = ["a red cube, front view", ""]
    stock, _, stock_pooled, _ = pipe.encode_prompt(prompts, prompts, None, do_classifier_free_guidance=False)
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds, pooled = encode_captions(
            pipe.text_encoder, pipe.text_encoder_2, ids, pipe.transformer.config.joint_attention_dim
        )
    assert embeds.shape == stock.shape == (2, 16 + 256, 32)
    assert torch.allclose(embeds, stock, atol=1e-6) and torch.allclose(pooled, stock_pooled, atol=1e-6)


FRESH = """
import json, sys, torch
from diffusers import DiffusionPipeline
folder = sys.argv[1]
config = json.load(open(folder + "/training_config.json"))
pipe = DiffusionPipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
generator = torch.Generator().manual_seed(0)
images = pipe("a red cube, front view", num_inference_steps=config["sample_steps"],
              guidance_scale=config["guidance"], generator=generator, output_type="pt").images
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.schedules import FlowSchedule
denoiser = Denoiser.from_pipeline(pipe)
print(json.dumps({"class": type(pipe).__name__, "shape": list(images.shape),
    "finite": bool(torch.isfinite(images).all()), "flow": isinstance(denoiser.schedule, FlowSchedule),
    "steps": config["sample_steps"]}))
"""


def test_written_folder_loads_in_a_fresh_process_as_stock_sd3(trained):
    log = json.loads((trained / "training_log.json").read_text())
    assert log["transformer"]["steps"] == 4
    assert not (trained / "checkpoint").exists()
    assert sorted(p.name for p in trained.rglob("*.safetensors")) == [
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors",
        "model.safetensors", "model.safetensors",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(trained)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"class": "StableDiffusion3Pipeline", "shape": [1, 3, 64, 64], "finite": True, "flow": True,
                      "steps": 28}  # fmt: skip


def test_resume_is_exact(tmp_path):
    from safetensors.torch import load_file

    from sdtoolkit.models.shapes_flow_teacher import train_flow_teacher

    cache = str(tmp_path / "cache")
    straight = train_flow_teacher(_tiny_config(cache_dir=cache), tmp_path / "straight")
    interrupted = tmp_path / "resumed"
    train_flow_teacher(_tiny_config(cache_dir=cache, stop_after=2), interrupted)
    state = json.loads((interrupted / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 2 and (interrupted / "checkpoint" / "model_index.json").exists()
    with pytest.raises(ValueError, match="differs in \\['lr'\\]"):
        train_flow_teacher(_tiny_config(cache_dir=cache, lr=1e-3), interrupted)
    train_flow_teacher(_tiny_config(cache_dir=cache), interrupted)
    assert json.loads((interrupted / "training_log.json").read_text())["transformer"]["steps"] == 4
    for part in ("transformer/diffusion_pytorch_model", "text_encoder/model", "text_encoder_2/model"):
        a, b = load_file(straight / f"{part}.safetensors"), load_file(interrupted / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_missing_builtin_flow_teacher_says_how_to_train_it(monkeypatch):
    from sdtoolkit.models import loading
    from sdtoolkit.models.shapes_flow_teacher import TRAIN_COMMAND

    monkeypatch.setitem(loading.BUILTIN_MODELS, "shapes-flow", "shapes-flow-not-trained")
    with pytest.raises(loading.ModelNotAvailableError) as error:
        loading.load_teacher("builtin:shapes-flow")
    message = str(error.value)
    assert "\n" not in message and "has not been trained yet" in message and TRAIN_COMMAND in message
    assert "train-teacher --family sd3" in TRAIN_COMMAND and "--max-minutes" in TRAIN_COMMAND


def test_cli_refuses_flags_of_the_other_family(tmp_path, capsys):
    assert main(["train-teacher", "--family", "sd3", "--output", str(tmp_path / "t"), "--unet-steps", "3"]) == 2
    assert "--unet-steps: not a setting of --family sd3" in capsys.readouterr().err
    assert main(["train-teacher", "--output", str(tmp_path / "t"), "--transformer-steps", "3"]) == 2
    assert "--transformer-steps: not a setting of --family sd" in capsys.readouterr().err


def test_compact_t5_tokens_trains_the_same_weights(tmp_path):
    """The default exact compaction of the 256 zero tokens (sdtoolkit.core.repeated_tokens) against the literal
    336-token call: the same weights after 4 steps to float rounding, and a saved model with stock processors."""
    from safetensors.torch import load_file

    from sdtoolkit.models.shapes_flow_teacher import train_flow_teacher

    cache = str(tmp_path / "cache")
    compact = train_flow_teacher(_tiny_config(cache_dir=cache, max_sequence_length=32), tmp_path / "compact")
    literal = train_flow_teacher(
        _tiny_config(cache_dir=cache, max_sequence_length=32, compact_t5_tokens=False), tmp_path / "literal"
    )
    for part in ("transformer/diffusion_pytorch_model", "text_encoder/model", "text_encoder_2/model"):
        a, b = load_file(compact / f"{part}.safetensors"), load_file(literal / f"{part}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            if k.endswith("self_attn.k_proj.bias"):
                # CLIP's key bias shifts every logit of a query equally: its true gradient is 0, so Adam turns
                # rounding noise into lr-sized steps in both runs alike (not a difference of the compaction)
                continue
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=f"{part}:{k}")
    init = train_flow_teacher(
        _tiny_config(cache_dir=cache, max_sequence_length=32, transformer_steps=1), tmp_path / "one"
    )
    a = load_file(compact / "transformer/diffusion_pytorch_model.safetensors")
    b = load_file(init / "transformer/diffusion_pytorch_model.safetensors")
    moved = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 2e-4  # training moved the weights 10x more than the tolerance above


SHIPPED = """
import json, sys, torch
from diffusers import DiffusionPipeline
from sdtoolkit.models.loading import resolve_model_id
from sdtoolkit.eval import Evaluator
folder = str(resolve_model_id("builtin:shapes-flow"))
config = json.load(open(folder + "/training_config.json"))
pipe = DiffusionPipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
pipe.set_progress_bar_config(disable=True)
prompts = ["a red cube, front view", "a green sphere, side view", "a blue cylinder, front view",
           "a yellow cone, side view", "a purple torus, overhead view", "a cyan cube, back view"]
images = pipe(prompts, num_inference_steps=config["sample_steps"], guidance_scale=config["guidance"],
              generator=torch.Generator().manual_seed(0), output_type="pt").images
scores = Evaluator.load().score(images, prompts)  # images in [0, 1], as the evaluator takes them
print(json.dumps({"class": type(pipe).__name__, "shape": list(images.shape),
                  "accuracy": float(scores["prompt_accuracy"])}))
"""


def test_shipped_builtin_flow_teacher_loads_in_a_fresh_process_and_follows_prompts():
    """`builtin:shapes-flow` as shipped in assets/: stock StableDiffusion3Pipeline in a fresh offline process, at its
    card's default steps and CFG, draws the shape and colour of (at least 5 of) 6 prompts, one per colour."""
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", SHIPPED], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["class"] == "StableDiffusion3Pipeline" and result["shape"] == [6, 3, 64, 64]
    assert result["accuracy"] >= 5 / 6


def test_distill_cli_runs_on_the_shipped_flow_teacher_with_its_builtin_data(tmp_path):
    """`--teacher builtin:shapes-flow` gets the shapes world's renders and prompts like builtin:shapes, and its
    student exports as the family's own stock pipeline."""
    out = tmp_path / "lcm"
    argv = ["distill", "lcm", "--teacher", "builtin:shapes-flow", "--output", str(out), "--max-steps", "1",
            "--batch-size", "2", "--builtin-images", "4", "--num-threads", "1", "--sample-every", "1",
            "--sample-prompts", "1", "--sample-seeds", "1", "--validate-every", "-1", "--w-min", "4",
            "--w-max", "4"]  # fmt: skip
    assert main(argv) == 0
    index = json.loads((out / "export" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert json.loads((out / "config.json").read_text())["train"]["teacher"] == "builtin:shapes-flow"


def test_shipped_assets_fit_the_60_mb_budget_and_hold_no_pickle():
    """Issue 18: all of assets/ (both teachers, the evaluator, the motion classifier) at most 60 MB; the flow teacher
    is safetensors only, with its card, config and metrics beside it."""
    from pathlib import Path

    import sdtoolkit.assets as assets

    root = Path(assets.__file__).parent
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    assert total_mb <= 60, f"assets/ is {total_mb:.1f} MB, budget 60 MB"
    flow = root / "shapes-flow"
    weights = sorted(str(p.relative_to(flow)) for p in flow.rglob("*.safetensors"))
    assert weights == [
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    assert not [p for p in flow.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    for name in ("README.md", "training_config.json", "training_log.json", "metrics.json", "model_index.json"):
        assert (flow / name).is_file(), name
