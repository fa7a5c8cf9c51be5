"""Tests of the shapes evaluator, the metrics, and the `eval` / `train-evaluator` commands."""

import json
import math
import sys
import types

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.data import render_batch
from sdtoolkit.eval import (
    EvaluationDependencyError,
    Evaluator,
    FeatureStats,
    ShapesClassifier,
    clip_score,
    evaluate_pipeline,
    fid,
    frechet_distance,
    psnr,
)
from sdtoolkit.eval.images import save_images


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator.load()


@pytest.fixture(scope="module")
def real():
    """200 fresh renders from a seed the evaluator never saw (it trained on seed 0, held out seed 1)."""
    batch = render_batch(200, seed=4242)
    return (batch["pixel_values"] + 1) / 2, batch["caption"]


@pytest.fixture(scope="module")
def real_other():
    return (render_batch(128, seed=4243)["pixel_values"] + 1) / 2


def test_shipped_evaluator_reads_fresh_renders(evaluator, real):
    images, prompts = real
    scores = evaluator.score(images, prompts)
    assert scores["num_images"] == scores["num_with_view"] == 200
    assert scores["prompt_accuracy"] >= 0.95
    assert scores["shape_accuracy"] >= 0.97 and scores["colour_accuracy"] >= 0.97
    assert scores["view_accuracy"] >= 0.75
    # the same images at another size are resized to 64x64 first
    upscaled = torch.nn.functional.interpolate(images[:50], size=(128, 128), mode="bilinear")
    assert evaluator.score(upscaled, prompts[:50])["prompt_accuracy"] >= 0.9


def test_noise_scores_near_chance(evaluator, real):
    _, prompts = real
    noise = torch.rand(200, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert evaluator.score(noise, prompts)["prompt_accuracy"] <= 0.2


def test_view_accuracy_only_counts_prompts_with_a_view(evaluator, real):
    images, prompts = real
    without_view = [p.split(",")[0] for p in prompts[:10]]
    scores = evaluator.score(images[:10], without_view)
    assert scores["view_accuracy"] is None and scores["num_with_view"] == 0
    with pytest.raises(ValueError, match="one prompt per image"):
        evaluator.score(images[:10], prompts[:9])
    with pytest.raises(ValueError, match="'pink'"):
        evaluator.score(images[:1], ["a pink cube"])


def test_fd_shapes_separates_real_from_noise(evaluator, real, real_other):
    images, _ = real
    noise = torch.rand(128, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference = evaluator.feature_stats(real_other)
    real_vs_real = evaluator.fd_shapes(images, reference)
    noise_vs_real = evaluator.fd_shapes(noise, reference)
    assert real_vs_real < 0.1 * noise_vs_real
    assert evaluator.fd_shapes(real_other, reference) == pytest.approx(0.0, abs=1e-6 * noise_vs_real)
    assert evaluator.fd_shapes(images[:64], real_other[:64]) < 0.2 * noise_vs_real  # images as the reference


def test_frechet_distance_of_known_gaussians():
    # diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2 over standard deviations s
    mu_1, mu_2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    std_1, std_2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 2.0, 0.0])
    distance = frechet_distance(
        FeatureStats(mu_1, torch.diag(std_1**2), 10), FeatureStats(mu_2, torch.diag(std_2**2), 10)
    )
    assert distance == pytest.approx(5.0 + 4.0 + 0.25, rel=1e-9)
    # a rotated (non-diagonal) covariance against itself is at distance 0
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    sigma = rotation @ torch.diag(torch.tensor([1.0, 0.1, 1e-6], dtype=torch.float64)) @ rotation.T
    assert frechet_distance(FeatureStats(mu_1, sigma, 10), FeatureStats(mu_1, sigma, 10)) == pytest.approx(0, abs=1e-9)


def test_psnr_identity_and_a_known_value():
    a = torch.rand(4, 3, 8, 8)
    assert psnr(a, a) == math.inf
    zeros, tenths = torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1)
    assert psnr(zeros, tenths) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    per_image = psnr(zeros, torch.cat([tenths[:1], torch.full((1, 3, 8, 8), 0.01)]), reduction="none")
    assert per_image.tolist() == pytest.approx([20.0, 40.0])
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:2])


def test_classifier_round_trips_through_save_pretrained(tmp_path):
    model = ShapesClassifier(block_out_channels=(8, 8), feature_dim=16, norm_num_groups=4).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ShapesClassifier.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).features, loaded(x).features)
        assert model(x).features.shape == (2, 16)


def test_eval_cli_scores_a_folder_of_pngs(tmp_path, capsys, real):
    images, prompts = real
    folder = tmp_path / "images"
    save_images(images[:6], folder, prompts[:6])
    out = tmp_path / "scores.json"
    assert main(["eval", "--images", str(folder), "--out", str(out), "--reference-num", "32"]) == 0
    printed = capsys.readouterr().out
    assert "prompt_accuracy" in printed and "fd_shapes" in printed
    scores = json.loads(out.read_text())["scores"]
    assert scores["num_images"] == 6 and scores["prompt_accuracy"] >= 0.8 and scores["fd_shapes"] >= 0
    # the same images through a glob and a metadata.jsonl in another order
    (folder / "prompts.txt").unlink()
    lines = [json.dumps({"file_name": f"{i:05d}.png", "text": prompts[i]}) for i in reversed(range(6))]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    before = out.read_text()
    capsys.readouterr()
    assert main(["eval", "--images", str(folder / "*.png"), "--reference-num", "0", "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == before  # kept
    assert (
        main(["eval", "--images", str(folder / "*.png"), "--reference-num", "0", "--out", str(out), "--overwrite"])
        == 0
    )
    again = json.loads(out.read_text())["scores"]
    assert again["prompt_accuracy"] == scores["prompt_accuracy"] and "fd_shapes" not in again


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("no_images", "matches no"),
        ("no_prompts", "prompts.txt"),
        ("count", "2 prompts but there are 3 images"),
        ("bad_prompt", "'pink'"),
    ],
)
def test_eval_cli_rejects_bad_input_in_one_line(tmp_path, capsys, setup, message):
    folder = tmp_path / "images"
    folder.mkdir()
    if setup != "no_images":
        save_images(torch.rand(3, 3, 16, 16), folder)
    if setup == "count":
        (folder / "prompts.txt").write_text("a red cube\na blue cone\n")
    if setup == "bad_prompt":
        (folder / "prompts.txt").write_text("a red cube\na pink cone\na blue torus\n")
    assert main(["eval", "--images", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_evaluator_smoke(tmp_path, capsys):
    out = tmp_path / "evaluator"
    args = [
        "train-evaluator",
        "--output",
        str(out),
        "--steps",
        "2",
        "--num-train",
        "32",
        "--num-test",
        "16",
        "--quiet",
    ]
    assert main(args) == 0
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "training_config.json", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["held_out_accuracy"]) == {"shape", "colour", "view", "prompt"}
    assert "Held-out accuracy" in (out / "README.md").read_text()
    assert Evaluator.load(out).classify(torch.rand(2, 3, 64, 64))["shape"].shape == (2,)
    # a second run would overwrite it: refused before any work
    assert main(args) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_shipped_evaluator_is_small():
    from sdtoolkit.eval import default_evaluator_path

    weights = default_evaluator_path() / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 2 * 1024 * 1024
    assert (default_evaluator_path() / "README.md").is_file()


def test_evaluate_pipeline_on_the_tiny_pipeline(evaluator):
    from sdtoolkit.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cube, front view", "a green cone, side view", "a blue sphere"]
    scores = evaluate_pipeline(
        pipe, prompts, steps=2, guidance=2.0, batch_size=2, evaluator=evaluator, reference_num=16, progress=False
    )
    assert scores["num_images"] == 3 and scores["num_with_view"] == 2
    assert 0 <= scores["prompt_accuracy"] <= 1 and scores["fd_shapes"] >= 0
    assert scores["steps"] == 2 and scores["guidance"] == 2.0
    with pytest.raises(ValueError, match="'pink'"):
        evaluate_pipeline(pipe, ["a pink cube"], steps=1, guidance=1.0, evaluator=evaluator)


def test_evaluate_pipeline_fd_splits_are_the_interleaved_subsets(evaluator):
    """`fd_splits=2`: the FD of images[0::2] and images[1::2] against the same reference, by hand."""
    from sdtoolkit.eval import generate_images
    from sdtoolkit.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in ["a red cube", "a green cone", "a blue sphere"] for _ in range(2)]
    kwargs = {"steps": 1, "guidance": 1.0, "batch_size": 4, "progress": False}
    scores = evaluate_pipeline(pipe, prompts, evaluator=evaluator, reference_num=16, fd_splits=2, **kwargs)
    images = generate_images(pipe, prompts, **kwargs)
    reference = evaluator.reference_stats(n=16)
    expected = [evaluator.fd_shapes(images[k::2], reference) for k in range(2)]
    assert scores["fd_shapes_splits"] == pytest.approx(expected, rel=1e-6)
    assert scores["fd_shapes"] == pytest.approx(evaluator.fd_shapes(images, reference), rel=1e-6)
    for bad in (1, -2, 4):  # 4 splits of 6 images leave a split with one image
        with pytest.raises(ValueError, match=f"fd_splits={bad}"):
            evaluate_pipeline(pipe, prompts, evaluator=evaluator, fd_splits=bad, **kwargs)


def test_generate_images_passes_the_exports_call_arguments():
    """An export's own call arguments (e.g. a flow student's `sigmas`) reach every pipeline call."""
    from sdtoolkit.eval import generate_images

    calls = []

    def pipe(**kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(images=torch.zeros(len(kwargs["prompt"]), 3, 4, 4))

    generate_images(pipe, ["a red cube"] * 3, 2, 1.0, batch_size=2, progress=False, call_kwargs={"sigmas": [1, 0.5]})
    assert [c["sigmas"] for c in calls] == [[1, 0.5], [1, 0.5]]
    assert all(c["num_inference_steps"] == 2 and c["output_type"] == "pt" for c in calls)


def test_clip_score_and_fid_say_what_to_install_without_torchmetrics(monkeypatch):
    for name in [m for m in sys.modules if m == "torchmetrics" or m.startswith("torchmetrics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import torchmetrics -> ImportError
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(EvaluationDependencyError, match=r"pip install 'sdtoolkit\[eval\]'"):
        clip_score(images, ["a red cube", "a blue cone"])
    with pytest.raises(EvaluationDependencyError, match=r"pip install 'sdtoolkit\[eval\]'"):
        fid(images, images)
