"""LADD (sdtoolkit/distill/ladd.py) and its wiring into `sdtoolkit distill scm --adversarial` / `distill ladd`:
hooks on the frozen teacher's blocks (tiny SANA transformer, tiny SD UNet), the StyleGAN-T heads (shapes, spectral
norm, circular padding, virtual-batch BatchNorm), hinge losses by hand, where gradients go, the time distributions,
and the loop end to end (finite losses, heads trained and checkpointed alone, exact resume, tiny SANA)."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sdtoolkit.trainers.ladd import LADDConfig
from sdtoolkit.trainers.scm import SCMConfig

from sdtoolkit.cli import main
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.features import capture_outputs
from sdtoolkit.core.trigflow import matched_time, teacher_input
from sdtoolkit.distill.ladd import (
    BatchNormLocal,
    DiscHead,
    DiscriminatorHeads,
    TeacherFeatures,
    default_layers,
    discriminator_time,
    generator_time,
    hinge_discriminator_loss,
    hinge_generator_loss,
    interleave_order,
    ladd_discriminator_loss,
    ladd_generator_loss,
    mixed_logits,
    r1_penalty,
    student_x0,
)
from sdtoolkit.testing import tiny_sana_pipeline, tiny_sd_pipeline, write_tiny_assets

pytestmark = pytest.mark.usefixtures("one_thread")

SD = 0.5
PROMPTS = ["a red cube", "a blue sphere"]


def sana_teacher(num_layers: int = 6) -> Denoiser:
    """The tiny SANA pipeline with a deeper transformer (the stock tiny one has a single block)."""
    pipe = tiny_sana_pipeline()
    torch.manual_seed(0)
    pipe.transformer = type(pipe.transformer).from_config(pipe.transformer.config, num_layers=num_layers)
    return Denoiser.from_pipeline(pipe).freeze()


@pytest.fixture(scope="module")
def sana():
    return sana_teacher()


# ---------------------------------------------------------------------------------------------------- hooks


def test_default_layers_are_sana_sprints_at_the_same_relative_depths():
    assert default_layers(20) == [2, 8, 14, 19]  # SANA-Sprint's head_block_ids of the 20-block 1.6B
    assert default_layers(28) == [3, 11, 20, 27]
    assert default_layers(6) == [1, 2, 4, 5] and default_layers(1) == [0]
    assert default_layers(3, unet=True) == [0, 1, 2]


def test_sana_hooks_capture_the_chosen_blocks_at_the_matched_teacher_time(sana):
    """The features are the outputs of exactly the chosen blocks of the teacher run at its native time matching s
    (input scaled by r_t, no guidance), `[B, N, C]`; blocks after the last hooked one never run."""
    cond = sana.encode_prompt(PROMPTS)[0]
    g = torch.Generator().manual_seed(0)
    x_s, s = SD * torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.4, 1.3])
    backbone = TeacherFeatures(sana, layers=[1, 3])
    blocks = list(sana.base_model.transformer_blocks)
    calls = [0] * len(blocks)

    def count(index):
        return lambda module, args, output: calls.__setitem__(index, calls[index] + 1)

    counters = [block.register_forward_hook(count(i)) for i, block in enumerate(blocks)]
    with torch.no_grad():
        features = backbone(x_s, s, cond)
    for handle in counters:
        handle.remove()
    assert calls == [1, 1, 1, 1, 0, 0]  # stopped after block 3
    assert [tuple(f.shape) for f in features] == [(2, 64, 8)] * 2 and backbone.channels == [8, 8]
    t = matched_time(sana.schedule, s)
    with torch.no_grad():
        reference = capture_outputs(lambda: sana.predict(teacher_input(sana.schedule, x_s, s, t, SD), t, cond), blocks)
    for got, index in zip(features, [1, 3]):
        torch.testing.assert_close(got, reference[index], rtol=0, atol=0)
    logits = DiscriminatorHeads(backbone.channels)(features)
    assert logits.shape == (2, 2 * 64)  # one logit per token and head, concatenated


def test_unet_hooks_read_the_down_and_mid_blocks():
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    backbone = TeacherFeatures(teacher)
    unet = teacher.base_model
    assert backbone.blocks == [*unet.down_blocks, unet.mid_block] and backbone.layers == [0, 1, 2]
    cond = teacher.encode_prompt(PROMPTS)[0]
    features = backbone(torch.randn(2, 4, 8, 8), torch.tensor([0.3, 1.0]), cond)
    assert [tuple(f.shape) for f in features] == [(2, 8, 4, 4), (2, 16, 4, 4), (2, 16, 4, 4)]
    assert DiscriminatorHeads(backbone.channels)(features).shape == (2, 3 * 16)  # h w positions in raster order
    with pytest.raises(ValueError, match=r"has 3 down/mid blocks \(indices 0-2\)"):
        TeacherFeatures(teacher, layers=[5])


# ---------------------------------------------------------------------------------------------------- heads


def test_disc_head_shapes_spectral_norm_and_circular_padding():
    torch.manual_seed(0)
    head = DiscHead(16)
    x = torch.randn(4, 16, 12)
    for _ in range(30):  # power iterations (one per training forward)
        out = head(x)
    assert out.shape == (4, 12)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.kernel_size[0] for c in convs] == [1, 9, 1] and convs[1].padding_mode == "circular"
    for conv in convs:
        assert torch.nn.utils.parametrize.is_parametrized(conv, "weight")
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1) < 1e-3, float(sigma)
    # circular convolutions and BatchNorm over positions: rolling the tokens rolls the logits
    head.eval()
    torch.testing.assert_close(head(torch.roll(x, 5, dims=2)), torch.roll(head(x), 5, dims=1))
    short = x[:, :, :3]  # fewer positions than the k9 padding: still a circular convolution
    assert head(short).shape == (4, 3)
    torch.testing.assert_close(head(torch.roll(short, 1, dims=2)), torch.roll(head(short), 1, dims=1))


def test_batchnorm_normalises_each_virtual_batch_of_8_on_its_own():
    norm = BatchNormLocal(3, virtual_batch=8)
    x = torch.randn(16, 3, 5) * 3 + 2
    y = norm(x)
    for group in (y[:8], y[8:]):
        torch.testing.assert_close(group.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(group.var(dim=(0, 2), unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    changed = x.clone()
    changed[12] += 10
    torch.testing.assert_close(norm(changed)[:8], y[:8])  # the first virtual batch does not see the second


def test_interleave_order_spreads_both_kinds_over_every_virtual_batch():
    assert interleave_order(4, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert interleave_order(4, 2).tolist() == [0, 4, 1, 2, 5, 3]  # keys a: 1/8 3/8 5/8 7/8, b: 1/4 3/4
    order = interleave_order(32, 16)
    assert sorted(order.tolist()) == list(range(48))
    for group in order.split(8):  # every virtual batch of 8 holds both kinds
        assert (group < 32).any() and (group >= 32).any()


def test_separate_calls_cannot_see_a_shift_common_to_all_fakes_and_mixed_calls_can():
    """Why mixed virtual batches (`mixed_logits`): the heads start with a 1x1 convolution and a per-virtual-batch
    BatchNorm, so adding one per-channel constant to every fake's features leaves the fakes' logits exactly unchanged
    when the fakes go through the heads alone (SANA-Sprint's two calls), and changes them when every virtual batch
    also holds reals."""
    torch.manual_seed(0)
    heads = DiscriminatorHeads([16, 16], virtual_batch=8)
    fake = [torch.randn(8, 12, 16) for _ in range(2)]  # [B, N, C] token features of two hooked blocks
    real = [torch.randn(8, 12, 16) for _ in range(2)]
    shift = [f + torch.linspace(-1, 1, 16) for f in fake]  # the same constant per channel for every fake token
    with torch.no_grad():
        torch.testing.assert_close(heads(shift), heads(fake), atol=1e-4, rtol=1e-4)
        fake_logits, _ = mixed_logits(heads, fake, real)
        shifted_logits, _ = mixed_logits(heads, shift, real)
        assert (shifted_logits - fake_logits).abs().max() > 0.1
        # read-back: one virtual batch holding everything gives the logits of the concatenated call, per kind
        wide = DiscriminatorHeads([16, 16], virtual_batch=16)
        wide.load_state_dict(heads.state_dict())
        both = wide([torch.cat([f, r]) for f, r in zip(fake, real)])
        got_fake, got_real = mixed_logits(wide, fake, real)
        torch.testing.assert_close(got_fake, both[:8], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_real, both[8:], atol=1e-5, rtol=1e-5)


def test_mixed_generator_loss_reaches_only_the_fakes(sana):
    cond = sana.encode_prompt(PROMPTS)[0]
    backbone = TeacherFeatures(sana)
    heads = DiscriminatorHeads(backbone.channels, virtual_batch=4)
    x0_hat = (SD * torch.randn(2, 4, 8, 8)).requires_grad_(True)
    x0_real = (SD * torch.randn(2, 4, 8, 8)).requires_grad_(True)
    loss = ladd_generator_loss(backbone, heads, x0_hat, cond, torch.tensor([0.6, 1.1]), x0_real=x0_real)
    loss.backward()
    assert torch.isfinite(loss) and x0_hat.grad.abs().max() > 0
    assert x0_real.grad is None  # the reals' features are computed without gradient
    out = ladd_discriminator_loss(backbone, heads, x0_hat, x0_real, cond, torch.tensor([0.6, 1.1]), mixed=True)
    assert torch.isfinite(out["loss"]) and set(out) == {"loss", "real", "fake"}


def test_hinge_losses_by_hand():
    real, fake = torch.tensor([[2.0, 0.5], [-1.0, 0.0]]), torch.tensor([[-2.0, 0.5], [1.5, -0.5]])
    # real: relu(1 - r) = [0, .5, 2, 1] -> 0.875; fake: relu(1 + f) = [0, 1.5, 2.5, .5] -> 1.125
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.875 + 1.125))
    assert hinge_generator_loss(fake).item() == pytest.approx(-(-2.0 + 0.5 + 1.5 - 0.5) / 4)


def test_r1_is_the_squared_input_gradient_of_each_head():
    torch.manual_seed(0)
    heads = DiscriminatorHeads([4, 6]).eval()
    features = [torch.randn(2, 4, 5), torch.randn(2, 6, 3)]
    expected = 0
    for head, f in zip(heads.heads, features):
        f = f.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(head(f).sum(), f)
        expected = expected + grad.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(r1_penalty(heads, [f.transpose(1, 2) for f in features]), expected.mean() / 2)


# ---------------------------------------------------------------------------------------------------- gradients


def test_generator_loss_reaches_x0_hat_through_the_frozen_teacher_and_not_its_weights(sana):
    cond = sana.encode_prompt(PROMPTS)[0]
    backbone = TeacherFeatures(sana)
    heads = DiscriminatorHeads(backbone.channels)
    u_before = [b.clone() for n, b in heads.named_buffers() if n.endswith("_u")]
    x0_hat = (SD * torch.randn(2, 4, 8, 8)).requires_grad_(True)
    loss = ladd_generator_loss(backbone, heads, x0_hat, cond, torch.tensor([0.6, 1.1]))
    loss.backward()
    assert torch.isfinite(loss) and x0_hat.grad is not None and x0_hat.grad.abs().max() > 0
    assert all(p.grad is None and not p.requires_grad for p in sana.base_model.parameters())
    u_after = [b for n, b in heads.named_buffers() if n.endswith("_u")]
    assert all(torch.equal(a, b) for a, b in zip(u_before, u_after))  # heads in eval mode: no power iteration
    assert heads.training  # and back in training mode


def test_discriminator_loss_trains_only_the_heads(sana):
    cond = sana.encode_prompt(PROMPTS)[0]
    backbone = TeacherFeatures(sana)
    heads = DiscriminatorHeads(backbone.channels)
    x0_fake = (SD * torch.randn(2, 4, 8, 8)).requires_grad_(True)  # a student output
    x0_real = SD * torch.randn(2, 4, 8, 8)
    s = torch.tensor([0.6, 1.1])
    out = ladd_discriminator_loss(
        backbone, heads, x0_fake, x0_real, cond, s, misaligned=(torch.roll(x0_real, 1, 0), s), r1_weight=0.1
    )
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["r1"] > 0
    assert x0_fake.grad is None  # the fake is detached
    assert all(p.grad is None for p in sana.base_model.parameters())
    assert all(p.grad is not None for p in heads.parameters())
    assert max(float(p.grad.abs().max()) for p in heads.parameters()) > 0


def test_student_x0_is_the_trigflow_clean_estimate_and_pure_noise_at_pi_over_2():
    from sdtoolkit.core.trigflow import TrigFlowTeacher, trigflow_x0

    torch.manual_seed(0)
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    cond = teacher.encode_prompt(PROMPTS)[0]
    x0, s = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 1.2])
    with torch.no_grad():
        torch.manual_seed(1)
        got = student_x0(teacher, x0, s, cond, largest_time_prob=0.0)
        torch.manual_seed(1)
        torch.rand(2)  # generator_time's draw
        x_s = torch.cos(s)[:, None, None, None] * SD * x0 + torch.sin(s)[:, None, None, None] * SD * torch.randn(
            2, 4, 8, 8
        )
        expected = trigflow_x0(x_s, TrigFlowTeacher(teacher, SD).F(x_s, s, cond), s, SD)
        torch.testing.assert_close(got, expected)
        torch.manual_seed(2)
        a = student_x0(teacher, x0, s, cond, largest_time_prob=1.0)
        torch.manual_seed(2)
        b = student_x0(teacher, x0 + 1, s, cond, largest_time_prob=1.0)
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())  # from noise alone (cos 1.5708 ~ -4e-6)


# ---------------------------------------------------------------------------------------------------- times


def test_time_distributions():
    torch.manual_seed(0)
    s = discriminator_time(200_000)
    assert 0 < float(s.min()) and float(s.max()) < math.pi / 2
    assert float(s.median()) == pytest.approx(math.atan(math.exp(-0.6) / SD), abs=5e-3)  # ~0.832
    tau = torch.log(torch.tan(s.double()) * SD)  # s = arctan(e^tau / sigma_d)
    assert float(tau.mean()) == pytest.approx(-0.6, abs=0.01) and float(tau.std()) == pytest.approx(1.0, abs=0.01)
    s_g = generator_time(torch.full((100_000,), 0.7), largest_time=1.5708, probability=0.5)
    assert s_g.unique().tolist() == pytest.approx([0.7, 1.5708])
    assert float((s_g > 1).float().mean()) == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("ladd"))


def distill(assets, output, *extra, method="scm"):
    args = [*("distill", method, "--teacher", str(assets / "teacher"), "--output", str(output))]
    args += ["--data", str(assets / "data"), "--cache-dir", str(assets / "cache"), "--batch-size", "2"]
    args += ["--seed", "0", "--sample-prompts", "2", "--sample-seeds", "1", "--log-with", "none", "--no-export"]
    args += ["--lr", "1e-3", "--discriminator-lr", "1e-2", "--tangent-warmup-steps", "2", "--ema-decay", "0.5"]
    return main([*args, *extra])


def losses(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in map(json.loads, (run / "losses.jsonl").read_text().splitlines())}


HEADS = "checkpoints/step_{:06d}/model_2.safetensors"  # student, logvar, discriminator heads


@pytest.fixture(scope="module")
def run(assets):
    out = assets / "run"
    extra = ("--adversarial", "--misaligned-pairs", "--r1-weight", "0.1")
    assert distill(assets, out, *extra, "--max-steps", "4", "--checkpoint-every", "2", "--sample-every", "4") == 0
    return out


def test_scm_adversarial_alternates_heads_and_student_with_finite_losses(run):
    steps = losses(run)
    assert sorted(steps) == [1, 2, 3, 4]
    for i in (1, 3):  # the heads on even global steps (logged as step + 1)
        assert {"discriminator/loss", "discriminator/r1", "discriminator/grad_norm"} <= set(steps[i])
        assert not any(k.startswith("student/") for k in steps[i])
    for i in (2, 4):  # the student: sCM + 0.5 adversarial
        e = steps[i]
        assert not any(k.startswith("discriminator/") for k in e)
        assert e["student/loss"] == pytest.approx(e["student/scm"] + 0.5 * e["student/adversarial"], rel=1e-5)
    assert all(math.isfinite(v) for e in steps.values() for k, v in e.items() if k != "step")
    first, last = load_file(str(run / HEADS.format(2))), load_file(str(run / HEADS.format(4)))
    assert all(k.startswith("heads.") for k in first)  # only the heads are checkpointed, never the teacher
    assert max(float((first[k] - last[k]).abs().max()) for k in first if "original" in k) > 1e-4
    assert list((run / "samples").glob("step_*.png"))
    assert json.loads((run / "config.json").read_text())["scm"]["mixed_batches"] is False  # SANA-Sprint's default


def test_resume_is_exact(assets, run):
    short = assets / "short"
    assert distill(assets, short, "--adversarial", "--misaligned-pairs", "--r1-weight", "0.1", "--max-steps", "2",
                   "--checkpoint-every", "2", "--sample-every", "0") == 0  # fmt: skip
    assert main(["distill", "scm", "--resume", str(short), "--max-steps", "4", "--no-export"]) == 0
    resumed, uninterrupted = losses(short), losses(run)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in resumed:
        for key, value in uninterrupted[step].items():
            if key != "step":
                assert abs(resumed[step][key] - value) <= 1e-6 * max(1.0, abs(value)), (step, key)
    for name in ("model_2.safetensors", "model.safetensors"):  # heads (spectral-norm u, v included), student
        a = load_file(str(short / "checkpoints" / "step_000004" / name))
        b = load_file(str(run / "checkpoints" / "step_000004" / name))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6, name


def test_ladd_alone(assets):
    out = assets / "ladd"
    extra = ("--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0", "--mixed-batches")
    assert distill(assets, out, *extra, method="ladd") == 0  # heads and student phases on mixed virtual batches
    assert json.loads((out / "config.json").read_text())["ladd"]["mixed_batches"] is True
    steps = losses(out)
    assert set(steps[2]) == {"step", "student/loss", "student/adversarial", "student/grad_norm", "student/lr"}
    assert steps[2]["student/loss"] == steps[2]["student/adversarial"]  # no sCM term, weight 1
    assert steps[2]["student/grad_norm"] > 0  # the adversarial loss alone reaches the student
    spec = json.loads((out / "student" / "export.json").read_text())
    assert spec["method"] == "ladd" and spec["notes"].startswith("LADD (adversarial weight 1.0")
    assert all(math.isfinite(v) for e in steps.values() for v in e.values())
    assert LADDConfig().adversarial and LADDConfig().scm_weight == 0 and SCMConfig().adversarial_weight == 0.5


def test_scm_with_ladd_and_ladd_alone_on_the_sd3_flow_teacher(tmp_path):
    """Both LADD paths on the shipped SD3-layout flow teacher through the CLI: heads on its joint blocks, finite
    losses for heads and student, the student exported as a stock StableDiffusion3Pipeline."""
    common = ["--teacher", "builtin:shapes-flow", "--max-steps", "2", "--batch-size", "2", "--builtin-images", "4",
              "--num-threads", "1", "--sample-every", "0", "--validate-every", "-1", "--log-with", "none",
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    for method, extra in (("scm", ["--adversarial"]), ("ladd", [])):
        out = tmp_path / method
        assert main(["distill", method, *common, "--output", str(out), *extra]) == 0
        steps = losses(out)
        assert "discriminator/loss" in steps[1] and "student/adversarial" in steps[2]
        assert all(math.isfinite(v) for e in steps.values() for v in e.values())
        index = json.loads((out / "export" / "model_index.json").read_text())
        assert index["_class_name"] == "StableDiffusion3Pipeline"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--adversarial", "--discriminator-layers", "-1"), "--discriminator-layers [-1] must be one or more"),
        (("--scm-weight", "0"), "--scm-weight 0.0 needs --adversarial"),
        (("--adversarial", "--largest-time-prob", "2"), "--largest-time-prob 2.0 must be in [0, 1]"),
    ],
)
def test_bad_values_are_refused_in_one_line(assets, tmp_path, capsys, extra, expected):
    capsys.readouterr()
    assert distill(assets, tmp_path / "never", "--max-steps", "1", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "never").exists()


def test_ladd_without_its_adversarial_loss_says_so(assets, tmp_path, capsys):
    """`distill ladd --no-adversarial` said "--scm-weight 0.0 needs --adversarial", a flag ladd has on always."""
    capsys.readouterr()
    assert distill(assets, tmp_path / "never", "--max-steps", "1", "--no-adversarial", method="ladd") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the adversarial loss is what `distill ladd` trains" in err, err


def test_layers_beyond_the_teacher_are_refused_before_training():
    from sdtoolkit.trainers.scm import SCM

    from sdtoolkit.distill.config import TrainConfig

    with pytest.raises(ValueError, match=r"\[0, 7\]: the teacher UNet2DConditionModel has 3 down/mid blocks"):
        SCM.check_teacher(SCMConfig(adversarial=True, discriminator_layers=(0, 7)), TrainConfig(), tiny_sd_pipeline())


def test_sana_through_the_loop(tmp_path):
    """Two steps (heads, then student) of sCM + LADD on a tiny 3-block SANA teacher through the shared Trainer."""
    import dataclasses

    import numpy as np
    from PIL import Image
    from sdtoolkit.trainers.scm import SCM

    from sdtoolkit.cli.distill import prepare_data
    from sdtoolkit.distill.config import TrainConfig
    from sdtoolkit.distill.loop import Trainer
    from sdtoolkit.testing import TINY_CAPTIONS

    pipe = tiny_sana_pipeline()
    torch.manual_seed(0)
    pipe.transformer = type(pipe.transformer).from_config(pipe.transformer.config, num_layers=3)
    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.asarray(pixels)).save(data / f"image{i}.png")
        (data / f"image{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    config = SCMConfig(lr=1e-3, tangent_warmup_steps=1, adversarial=True, discriminator_lr=1e-2)
    train = TrainConfig(
        teacher="tiny-sana",
        output=str(tmp_path / "run"),
        data=str(data),
        resolution=16,
        max_steps=2,
        batch_size=2,
        checkpoint_every=2,
        sample_every=0,
        validate_every=-1,
        log_with="none",
        export=False,
    )
    SCM.check_config(config, train)
    resolved = {"method": "scm", "scm": dataclasses.asdict(config), "train": dataclasses.asdict(train)}
    run = Trainer(SCM, config, train, resolved, prepare_data, pipeline=copy.copy(pipe)).run()
    steps = losses(run)
    assert "discriminator/loss" in steps[1] and "student/adversarial" in steps[2]
    assert all(math.isfinite(v) for e in steps.values() for v in e.values())
    heads = load_file(str(run / HEADS.format(2)))
    assert sorted({k.split(".")[1] for k in heads}) == ["0", "1", "2"]  # blocks 0, 1, 2
