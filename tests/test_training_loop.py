"""The shared loop's fast path: losses read back every `log_every` steps still log every step, identically."""

import json

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.testing import tiny_sd_pipeline


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    tiny_sd_pipeline().save_pretrained(root / "teacher")
    (root / "prompts.txt").write_text("a photo of a red cube\na photo of a blue sphere\n")
    return root


def _run(teacher, output, *extra):
    torch.set_num_threads(1)
    args = ["distill", "sid", "--teacher", str(teacher / "teacher"), "--prompts", str(teacher / "prompts.txt")]
    args += ["--output", str(output), "--max-steps", "4", "--cache-dir", str(teacher / "cache")]
    args += ["--batch-size", "2", "--sample-every", "0", "--log-with", "none", "--no-export", *extra]
    assert main(args) == 0
    lines = (output / "losses.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_log_every_defers_host_syncs_without_changing_the_log(teacher, tmp_path):
    every_step = _run(teacher, tmp_path / "a", "--log-every", "1")
    deferred = _run(teacher, tmp_path / "b", "--log-every", "3")
    assert [entry["step"] for entry in deferred] == [1, 2, 3, 4]
    assert deferred == every_step
