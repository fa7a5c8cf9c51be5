"""Peak-memory knobs of the training loop: teacher CPU offload (`sdtoolkit.core.offload`) and 8-bit AdamW."""

import json

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.core.offload import FrozenOffload, offload_teacher
from sdtoolkit.testing import tiny_sd_pipeline, tiny_unet


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    tiny_sd_pipeline().save_pretrained(root / "teacher")
    (root / "prompts.txt").write_text("a photo of a red cube\na photo of a blue sphere\n")
    return root


def _args(teacher, output, method, *extra):
    args = ["distill", method, "--teacher", str(teacher / "teacher"), "--prompts", str(teacher / "prompts.txt")]
    args += ["--output", str(output), "--max-steps", "2", "--cache-dir", str(teacher / "cache")]
    return args + ["--batch-size", "2", "--sample-every", "0", "--log-with", "none", "--no-export", *extra]


def _run(teacher, output, method, *extra):
    torch.set_num_threads(1)
    assert main(_args(teacher, output, method, *extra)) == 0
    return [json.loads(line) for line in (output / "losses.jsonl").read_text().splitlines()]


def test_teacher_offload_gives_the_same_losses(teacher, tmp_path):
    # SiD's generator loss backpropagates THROUGH the teacher's forward: the offload must keep the weights for it
    plain = _run(teacher, tmp_path / "a", "sid", "--fake-score", "full")
    offloaded = _run(teacher, tmp_path / "b", "sid", "--fake-score", "full", "--teacher-offload")
    assert [entry["step"] for entry in offloaded] == [1, 2]
    assert offloaded == plain


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("sid", ["--fake-score", "lora"], "--fake-score lora"),
        ("dmd2", [], "--fake-score lora"),  # DMD2's default fake score is the LoRA
        ("lcm", ["--lora-rank", "4"], "a LoRA student (--lora-rank)"),
    ],
)
def test_teacher_offload_refuses_a_lora_on_the_teacher_backbone(teacher, tmp_path, capsys, method, extra, message):
    """Refused by the CLI in one line before anything is written (it used to be a traceback from the loop, after the
    output folder, its cache and config.json were written)."""
    out = tmp_path / "c"
    capsys.readouterr()
    assert main(_args(teacher, out, method, *extra, "--teacher-offload")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher-offload" in err[0] and message in err[0], err
    assert not out.exists()
    # the loop's own guard stays for a caller that builds the networks itself
    unet = tiny_unet()
    with pytest.raises(ValueError, match="share the teacher's weights"):
        offload_teacher(unet, {"student": unet}, "cpu")


def test_offload_moves_weights_only_for_the_forward():
    # no accelerator here: with execution device "cpu" the device copy is a second CPU tensor, told apart from the
    # host copy by its storage
    unet = tiny_unet().requires_grad_(False)
    reference = {name: p.detach().clone() for name, p in unet.named_parameters()}
    offload = FrozenOffload(unet, "cpu")
    host = [h.data_ptr() for h in offload.host]
    params = offload.tensors

    def on_host() -> bool:
        return [p.data_ptr() for p in params] == host

    seen = []
    unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(on_host()))
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 4, 32)
    assert on_host()
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=text).sample
    assert seen == [False] and on_host()  # the forward ran on the device copy, then the weights went back
    assert all(torch.equal(p, reference[name]) for name, p in unet.named_parameters())
    torch.testing.assert_close(out, _plain(reference, x, t, text))
    # with grad through the inputs the weights stay until the trainer's offload() after the backward
    out = unet(x.requires_grad_(True), t, encoder_hidden_states=text).sample
    assert not on_host()
    out.sum().backward()
    offload.offload()
    assert on_host()
    offload.remove()
    assert not on_host() and len(unet._forward_pre_hooks) == 0


def _plain(state, x, t, text):
    unet = tiny_unet()
    unet.load_state_dict(state)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text).sample


def test_offload_needs_a_frozen_separate_teacher():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="frozen network"):
        FrozenOffload(unet, "cpu")
    with pytest.raises(ValueError, match=r"\['fake_score'\] share"):
        offload_teacher(unet.requires_grad_(False), {"fake_score": unet}, "cpu")


def test_adamw8bit_keeps_8bit_states(teacher, tmp_path):
    pytest.importorskip("bitsandbytes")
    from sdtoolkit.distill.loop import TrainConfig, Trainer

    config = TrainConfig(optimizer="adamw8bit")
    trainer = Trainer.__new__(Trainer)
    trainer.config = config
    from sdtoolkit.distill.config import OptimizerSpec

    big = torch.nn.Parameter(torch.randn(64, 128))  # bitsandbytes keeps 32-bit states under 4096 elements
    optimizer = trainer._optimizer(OptimizerSpec("generator", [big], lr=1e-3))
    big.grad = torch.randn_like(big)
    optimizer.step()
    state = optimizer.state[big]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    # and the loop trains with it end to end
    losses = _run(teacher, tmp_path / "d", "sid", "--optimizer", "adamw8bit")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v in losses[-1].values())


def test_unknown_optimizer_is_a_clear_error(teacher, tmp_path, capsys):
    assert main(_args(teacher, tmp_path / "e", "sid", "--optimizer", "adam")) == 2
    assert "unknown --optimizer 'adam'; choose one of adamw, adamw8bit" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # refused before any work
