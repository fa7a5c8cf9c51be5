"""Run reliability (issue #15): no code from checkpoints, the non-finite guard, output folders that stay the user's
(refusal, manifest, lock, restart in place), Ctrl-C/SIGTERM at a step boundary with exact resume, a torn last line
of losses.jsonl, atomic caches; the same for text-to-3D."""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.testing import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    tiny_sd_pipeline().save_pretrained(root / "teacher")
    (root / "prompts.txt").write_text("a photo of a red cube\na photo of a blue sphere\n")
    return root


def distill(assets, output, *extra, method="sid"):
    """A tiny data-free run (SiD on prompts): 2 images per step, no samples, no tensorboard."""
    args = ["distill", method, "--teacher", str(assets / "teacher"), "--prompts", str(assets / "prompts.txt")]
    args += ["--output", str(output), "--cache-dir", str(assets / "cache"), "--batch-size", "2"]
    args += ["--sample-every", "0", "--log-with", "none", "--learning-rate", "1e-3", "--fake-learning-rate", "1e-3"]
    return main([*args, *extra])


def losses(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in map(json.loads, (run / "losses.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def straight(assets):
    """An uninterrupted 4-step run, checkpointed at steps 2 and 4."""
    run = assets / "straight"
    assert distill(assets, run, "--max-steps", "4", "--checkpoint-every", "2", "--no-export") == 0
    return run


# ---------------------------------------------------------------------------------------------------- 1. pickles


class _Payload:
    """A pickle whose loading creates a file (what a tampered checkpoint could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_hold_no_pickle_and_a_planted_one_is_refused(assets, straight, tmp_path, capsys):
    from sdtoolkit.distill.checkpoint import find_pickles

    checkpoint = straight / "checkpoints" / "step_000004"
    assert sorted({p.suffix for p in checkpoint.iterdir()}) == [".json", ".safetensors"]
    assert find_pickles(straight) == []
    for name in ("custom_checkpoint_0.pkl", "state.safetensors"):  # a pickle by its name, or hidden by its name
        run = tmp_path / name
        shutil.copytree(straight, run)
        marker = tmp_path / f"pwned-{name}"
        (run / "checkpoints" / "step_000004" / name).write_bytes(pickle.dumps(_Payload(marker)))
        capsys.readouterr()
        assert main(["distill", "sid", "--resume", str(run), "--max-steps", "5"]) == 2
        err = capsys.readouterr().err
        assert name in err and "pickle" in err and err.count("\n") == 1, err
        assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- 2. non-finite


def test_a_diverging_run_stops_without_exporting_and_keeps_its_last_good_checkpoint(assets, tmp_path, capsys):
    """`--learning-rate 1e6`: the updates after the first become non-finite; each is skipped and logged, and after
    3 in a row the run stops with exit status 1, names the step, the term and the learning rate, exports nothing,
    and its newest checkpoint is finite."""
    run = tmp_path / "diverge"
    capsys.readouterr()
    code = distill(assets, run, "--max-steps", "20", "--checkpoint-every", "1", "--learning-rate", "1e6")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "learning rate" in err and "generator 1e+06" in err and "not finite in 3 consecutive" in err, err
    assert not (run / "export").exists() and not (run / "student").exists()
    logged = losses(run)
    skipped = [s for s, e in logged.items() if e.get("generator/skipped")]
    assert len(skipped) >= 3 and max(logged) < 20
    from sdtoolkit.distill.checkpoint import latest_checkpoint

    last = latest_checkpoint(run)
    assert last is not None and f"step {max(logged)}:" in err and str(last) in err
    assert int(last.name[5:]) < skipped[0]  # no checkpoint while updates were skipped
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(last / "model.safetensors")).values())
    # the message's advice can be followed as written (it used to name --resume, which refuses a new rate)
    assert "rerun the command with a lower learning rate and --overwrite" in err
    assert distill(assets, run, "--max-steps", "2", "--learning-rate", "1e-3", "--overwrite", "--no-export") == 0


def test_a_skipped_update_changes_no_weight_ema_or_optimizer_state(assets, tmp_path, monkeypatch):
    """A NaN loss at one step skips exactly that update (no optimizer step, no `after_step`), the run goes on."""
    from sdtoolkit.distill.loop import Trainer

    calls = []
    original_step = Trainer.train_step

    def poisoned(self, step, batches, models):
        if step == 1:
            original = self.method.loss

            def nan_loss(name, batch, s):
                out = original(name, batch, s)
                return {**out, "loss": out["loss"] * torch.nan}

            self.method.loss = nan_loss
            try:
                return original_step(self, step, batches, models)
            finally:
                self.method.loss = original
        return original_step(self, step, batches, models)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    from sdtoolkit.trainers.sid import SiD

    after = SiD.after_step
    monkeypatch.setattr(
        SiD, "after_step", lambda self, name, step: (calls.append((name, step)), after(self, name, step))
    )
    run = tmp_path / "one-nan"
    assert distill(assets, run, "--max-steps", "3", "--checkpoint-every", "10", "--no-export") == 0
    logged = losses(run)
    assert logged[2]["generator/skipped"] == 1.0 and logged[2]["fake_score/skipped"] == 1.0
    assert "generator/skipped" not in logged[1] and "generator/skipped" not in logged[3]
    assert [step for _, step in calls] == [0, 0, 2, 2]


def test_sid_masking_every_sample_is_not_a_converged_zero(assets, tmp_path, monkeypatch, capsys):
    """When SiD's NaN masking drops every sample the loss is NaN (not 0.0 with kept 0.0), so the guard stops the
    dead run instead of letting it finish looking converged."""
    import sdtoolkit.trainers.sid as sid

    original = sid.sid_generator_loss
    monkeypatch.setattr(
        sid, "sid_generator_loss", lambda x_g, y_r, y_f, alpha: original(x_g, y_r * torch.nan, y_f, alpha)
    )
    run = tmp_path / "dead"
    assert distill(assets, run, "--max-steps", "6", "--checkpoint-every", "10") == 1
    logged = losses(run)
    assert logged[1]["generator/kept"] == 0.0 and logged[1]["generator/loss"] != logged[1]["generator/loss"]
    assert "generator/loss" in capsys.readouterr().err
    assert not (run / "export").exists()


# ---------------------------------------------------------------------------------------------------- 3. folders


def test_a_users_folder_is_refused_and_nothing_of_it_is_touched(assets, tmp_path, capsys):
    folder = tmp_path / "mine"
    for name in ("student/unet.safetensors", "export/model_index.json", "samples/step_000001.png", "notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    (folder / "losses.jsonl").write_text('{"step": 1, "mine": 1}\n')
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert distill(assets, folder, "--max-steps", "1", *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("--overwrite" in err if not extra else "student" in err), err
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # --overwrite writes beside the user's other files and keeps them
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert distill(assets, other, "--max-steps", "1", "--no-export", "--overwrite") == 0
    assert (other / "notes.txt").read_text() == "mine" and (other / "student").is_dir()
    manifest = json.loads((other / ".sdtoolkit-manifest.json").read_text())
    assert "notes.txt" not in manifest["owned"] and "student" in manifest["owned"]
    assert not (other / ".sdtoolkit.lock").exists()
    # a finished run: a plain rerun is refused (naming --resume and --overwrite); --overwrite deletes only its files
    capsys.readouterr()
    assert distill(assets, other, "--max-steps", "1", "--no-export") == 2
    err = capsys.readouterr().err
    assert f"--resume {other}" in err and "--overwrite" in err
    (other / "later.txt").write_text("added after the run")
    assert distill(assets, other, "--max-steps", "1", "--no-export", "--overwrite") == 0
    assert (other / "later.txt").is_file() and (other / "notes.txt").is_file()


def test_a_users_file_inside_a_runs_folder_refuses_overwrite_and_survives(assets, tmp_path, capsys):
    """The manifest records every file a run writes inside its folders: --overwrite (and the re-export that replaces
    export/) deletes those and refuses, naming it, a file the user put there since (it used to be deleted with the
    folder)."""
    run = tmp_path / "run"
    assert distill(assets, run, "--max-steps", "1", "--checkpoint-every", "1") == 0
    manifest = json.loads((run / ".sdtoolkit-manifest.json").read_text())
    assert any(f.startswith("export/") for f in manifest["files"]) and "student" in manifest["owned"]
    assert manifest["released"] is True
    mine = run / "export" / "USER.txt"
    mine.write_text("mine")
    for extra in (["--overwrite"], ["--resume", str(run)]):  # starting anew; a resume's re-export replacing export/
        capsys.readouterr()
        assert distill(assets, run, "--max-steps", "1", *extra) == 2, extra
        err = capsys.readouterr().err
        assert str(mine) in err and "move them away" in err and "Traceback" not in err, err
        assert mine.read_text() == "mine"
    mine.unlink()
    assert distill(assets, run, "--max-steps", "1", "--overwrite") == 0  # the run's own files alone: allowed
    # a run killed before it released the folder left files it never recorded: they are the toolkit's (as every
    # file in its folders was before files were recorded), so --overwrite is not blocked by them
    manifest = json.loads((run / ".sdtoolkit-manifest.json").read_text())
    (run / ".sdtoolkit-manifest.json").write_text(json.dumps({**manifest, "released": False}))
    (run / "export" / "written_before_the_kill.bin").write_bytes(b"x")
    assert distill(assets, run, "--max-steps", "1", "--overwrite") == 0
    assert not (run / "export" / "written_before_the_kill.bin").exists()


def test_resume_refuses_an_older_checkpoint_and_fewer_steps_than_trained(assets, straight, tmp_path, capsys):
    """Resuming from step_2 of a run that holds step_4 used to train a second history into the same folder (the
    keep-newest pruning then deleted step_2, and a later --resume continued the stale step_4); --max-steps below
    the trained steps used to be accepted and recorded in config.json. Both are refused in one line, nothing
    changed."""
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for resume, steps, message in [
        (run / "checkpoints" / "step_000002", "3", "also holds step_000004, newer than step_000002"),
        (run, "2", "--max-steps 2 is below the 4 steps the run has trained"),
    ]:
        capsys.readouterr()
        assert distill(assets, run, "--resume", str(resume), "--max-steps", steps, "--checkpoint-every", "2") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    capsys.readouterr()  # the same --max-steps on a finished run: said, not silent
    assert distill(assets, run, "--resume", str(run), "--max-steps", "4", "--no-export") == 0
    assert "already trained its --max-steps 4: nothing to train" in capsys.readouterr().out


def test_a_live_lock_refuses_a_second_run_and_a_dead_one_is_stale(assets, tmp_path, capsys):
    import socket

    run = tmp_path / "locked"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "hostname": socket.gethostname(), "since": "now"}
        (run / ".sdtoolkit.lock").write_text(json.dumps(lock))
        capsys.readouterr()
        assert distill(assets, run, "--max-steps", "1", "--no-export") == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another sdtoolkit run" in err, err
        assert list(run.iterdir()) == [run / ".sdtoolkit.lock"]
    finally:
        holder.kill()
        holder.wait()
    assert distill(assets, run, "--max-steps", "1", "--no-export") == 0  # the holder is gone: the lock is stale
    assert not (run / ".sdtoolkit.lock").exists()


def test_a_run_that_failed_before_its_first_checkpoint_restarts_in_place(assets, tmp_path, monkeypatch, capsys):
    from sdtoolkit.distill.loop import Trainer

    def boom(self, *args):
        raise RuntimeError("killed")

    run = tmp_path / "early"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_loop", boom)
        with pytest.raises(RuntimeError, match="killed"):
            distill(assets, run, "--max-steps", "2")
    assert (run / "config.json").is_file() and not (run / ".sdtoolkit.lock").exists()
    capsys.readouterr()
    assert distill(assets, run, "--max-steps", "2", "--no-export") == 0
    assert "starting the distill run anew" in capsys.readouterr().out
    assert sorted(losses(run)) == [1, 2]


# ---------------------------------------------------------------------------------------------------- 4. signals


def test_ctrl_c_checkpoints_at_the_step_boundary_and_resume_is_exact(assets, straight, tmp_path, monkeypatch, capsys):
    """SIGINT during step 2 (of 4, checkpoints every 10): a checkpoint at step 2, exit status 130 and one line on
    how to resume; a torn last line in losses.jsonl is dropped on resume; the resumed losses equal the
    uninterrupted run's."""
    from sdtoolkit.distill.loop import Trainer

    original = Trainer.train_step

    def interrupted(self, step, batches, models):
        logs = original(self, step, batches, models)
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return logs

    run = tmp_path / "ctrl-c"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", interrupted)
        capsys.readouterr()
        assert distill(assets, run, "--max-steps", "4", "--checkpoint-every", "10", "--no-export") == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdtoolkit distill:")]
    assert len(err) == 1 and "Ctrl-C at step 2" in err[0] and f"--resume {run}`" in err[0], err
    assert (run / "checkpoints" / "step_000002" / "progress.json").is_file()
    assert not (run / ".sdtoolkit.lock").exists()
    with (run / "losses.jsonl").open("a") as handle:
        handle.write('{"step": 3, "generator/lo')  # killed while writing a line
    capsys.readouterr()
    assert main(["distill", "sid", "--resume", str(run), "--max-steps", "4", "--no-export"]) == 0
    assert "torn last line" in capsys.readouterr().out
    resumed, expected = losses(run), losses(straight)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step, entry in expected.items():
        for key, value in entry.items():
            assert abs(resumed[step][key] - value) <= 1e-6 * max(1.0, abs(value)), (step, key)


SIGTERM_RUN = r"""
import os, signal, sys
from sdtoolkit.cli import main
from sdtoolkit.distill.loop import Trainer
original = Trainer.train_step
def train_step(self, step, batches, models):
    logs = original(self, step, batches, models)
    if step == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    return logs
Trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_in_a_real_process_exits_143_with_a_checkpoint(assets, tmp_path):
    run = tmp_path / "term"
    args = ["distill", "sid", "--teacher", str(assets / "teacher"), "--prompts", str(assets / "prompts.txt")]
    args += ["--output", str(run), "--cache-dir", str(assets / "cache"), "--batch-size", "2", "--max-steps", "3"]
    args += ["--sample-every", "0", "--log-with", "none", "--no-export", "--checkpoint-every", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SIGTERM_RUN, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "SIGTERM at step 1" in done.stderr and "--resume" in done.stderr
    assert (run / "checkpoints" / "step_000001" / "progress.json").is_file()


# ---------------------------------------------------------------------------------------------------- caches


def test_a_cache_rebuild_killed_midway_never_serves_torn_data(tmp_path, monkeypatch):
    """The index (cache.json) is unmarked before the data are rewritten and marked after, every file atomically:
    a rebuild for another key killed while writing leaves no valid entry pointing at torn or foreign data."""
    import sdtoolkit.distill.data as data
    from sdtoolkit.core.denoiser import Denoiser

    teacher = Denoiser.from_pipeline(tiny_sd_pipeline())
    images = [(torch.rand(3, 16, 16) * 2 - 1, f"caption {i}") for i in range(3)]
    data.build_latent_cache(teacher, iter(images), 3, tmp_path, "first")
    assert data._cache_is_valid(tmp_path, "latents", "first")

    def torn(tensors, path, **kwargs):
        Path(path).write_bytes(b"torn")
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        data.build_latent_cache(teacher, iter(images[:2]), 2, tmp_path, "second")
    monkeypatch.undo()
    assert not data._cache_is_valid(tmp_path, "latents", "second")
    assert not data._cache_is_valid(tmp_path, "latents", "first")  # unmarked before the rewrite began
    assert not list(tmp_path.glob(".*tmp*"))
    rebuilt = data.build_latent_cache(teacher, iter(images), 3, tmp_path, "first")
    assert rebuilt["mean"].shape[0] == 3


# ---------------------------------------------------------------------------------------------------- text-to-3D


@pytest.fixture(scope="module")
def prior():
    from sdtoolkit.core.denoiser import Denoiser

    return Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()


def _config(**overrides):
    from sdtoolkit.nerf import FieldConfig, NeRFConfig
    from sdtoolkit.text_to_3d import TextTo3DConfig

    nerf = NeRFConfig(
        field=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16),
        num_samples=16,
        occupancy_resolution=16,
    )
    values = dict(prompt="a red cube", prior="tiny", steps=3, nerf=nerf, preview_every=0, checkpoint_every=1)
    return TextTo3DConfig(**{**values, "start_resolution": 8, **overrides})


def test_text_to_3d_never_overwrites_a_previous_asset_or_a_users_folder(prior, tmp_path):
    from sdtoolkit.runs import OutputFolderError
    from sdtoolkit.text_to_3d.trainer import CHECKPOINT_FILE, train

    out = tmp_path / "asset"
    train(_config(steps=2), out, denoiser=prior, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(OutputFolderError, match="--resume"):
        train(_config(steps=2, seed=1), out, denoiser=prior, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert train(_config(steps=2, seed=1, overwrite=True), out, denoiser=prior, progress=False).step == 2
    assert (out / CHECKPOINT_FILE).read_bytes() != before[CHECKPOINT_FILE]
    users = tmp_path / "users"
    users.mkdir()
    (users / "mesh.glb").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError):
            train(_config(overwrite=overwrite), users, denoiser=prior, progress=False)
    assert (users / "mesh.glb").read_text() == "mine" and sorted(p.name for p in users.iterdir()) == ["mesh.glb"]


def test_text_to_3d_non_finite_guard_and_ctrl_c(prior, tmp_path, monkeypatch):
    from sdtoolkit.runs import RunDiverged, RunInterrupted
    from sdtoolkit.text_to_3d import trainer

    out = tmp_path / "nan"
    original = trainer.regularizers

    calls = []

    def poisoned(*args):  # NaN from step 3 on (the checkpoint of step 2 is the last good one)
        losses = original(*args)
        calls.append(1)
        if len(calls) >= 3:
            losses["loss_entropy"] = losses["loss_entropy"] * torch.nan
        return losses

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "regularizers", poisoned)
        with pytest.raises(RunDiverged, match=r"step 5: loss_entropy .*learning rate") as error:
            trainer.train(_config(steps=10), out, denoiser=prior, progress=False)
    assert "step 2" in str(error.value)
    assert json.loads((out / trainer.STATE_FILE).read_text())["step"] == 2 and not (out / "timing.json").exists()

    out = tmp_path / "ctrl-c"
    original_step = trainer.training_step

    def interrupted(run):
        logs = original_step(run)
        if run.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return logs

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "training_step", interrupted)
        with pytest.raises(RunInterrupted, match="--resume") as error:
            trainer.train(_config(steps=4, checkpoint_every=0), out, denoiser=prior, progress=False)
    assert error.value.exit_code == 130
    assert json.loads((out / trainer.STATE_FILE).read_text())["step"] == 2
    resumed = trainer.train(_config(steps=4, checkpoint_every=0), out, denoiser=prior, progress=False, resume=True)
    straight = trainer.train(
        _config(steps=4, checkpoint_every=0), tmp_path / "straight", denoiser=prior, progress=False
    )
    for (name, a), b in zip(straight.nerf.state_dict().items(), resumed.nerf.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------ export, generate


def test_export_folder_lock_and_single_files_are_not_overwritten(tmp_path):
    """`folder_lock` (for `sdtoolkit export`) refuses a second command while the first runs and is released on
    exit; `check_new_files` (for `generate`) refuses to replace a file."""
    from sdtoolkit.runs import LOCK_NAME, OutputFolderError, check_new_files, folder_lock

    out = tmp_path / "exported"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "hostname": socket.gethostname()}) + "\n")
        with pytest.raises(OutputFolderError, match="in use by another sdtoolkit run"):
            with folder_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out):  # the holder is gone: its lock is stale and taken over
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()
    photo = tmp_path / "photo.png"
    photo.write_text("mine")
    with pytest.raises(OutputFolderError, match="--overwrite"):
        check_new_files([photo, photo.with_suffix(".json")])
    check_new_files([photo], overwrite=True)


def test_text_to_3d_cli_refuses_a_plain_rerun_into_a_previous_asset(assets, tmp_path, capsys):
    out = tmp_path / "cube"
    common = ["text-to-3d", "a red cube", "--prior", str(assets / "teacher"), "--output", str(out), "--quiet"]
    common += [
        "--preset",
        "tiny",
        "--mesh-resolution",
        "16",
        "--video-frames",
        "2",
        "--formats",
        "glb",
        "--steps",
        "1",
    ]
    assert main(common) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*common, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {out}" in err and "--overwrite" in err and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main([*common, "--seed", "1", "--overwrite"]) == 0
    assert (out / "mesh.glb").read_bytes() != before["mesh.glb"] or (out / "config.json").read_bytes() != before[
        "config.json"
    ]


def test_an_incomplete_checkpoint_is_never_the_newest(straight, tmp_path):
    """A checkpoint is written to `.partial-step_N` and renamed when complete (progress.json last): a run killed
    while checkpointing resumes from the previous complete one."""
    from sdtoolkit.distill.checkpoint import latest_checkpoint

    run = tmp_path / "killed"
    shutil.copytree(straight, run)
    (run / "checkpoints" / ".partial-step_000006").mkdir()
    (run / "checkpoints" / ".partial-step_000006" / "model.safetensors").write_bytes(b"torn")
    shutil.copytree(run / "checkpoints" / "step_000004", run / "checkpoints" / "step_000008")
    (run / "checkpoints" / "step_000008" / "progress.json").unlink()
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000004"
    assert main(["distill", "sid", "--resume", str(run), "--max-steps", "5", "--no-export"]) == 0
    assert latest_checkpoint(run).name == "step_000005" and not list((run / "checkpoints").glob(".partial-*"))
    assert (run / "checkpoints" / "step_000004" / "progress.json").is_file()  # rotation counts complete ones only


def test_a_second_ctrl_c_interrupts_at_once(capfd):
    from sdtoolkit.runs import StopSignals

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.exit_code == 130 and stop.name == "Ctrl-C"
        # acknowledged at once (a long setup, e.g. caching latents, honours it only at the first step)
        assert "Ctrl-C: stopping at the next step" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_loading_stops_before_training_and_the_same_command_restarts(
    assets, tmp_path, monkeypatch, capsys
):
    from sdtoolkit.distill.loop import Trainer

    original = Trainer.setup

    def setup(self):
        out = original(self)
        os.kill(os.getpid(), signal.SIGINT)
        return out

    run = tmp_path / "loading"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "setup", setup)
        capsys.readouterr()
        assert distill(assets, run, "--max-steps", "2", "--no-export") == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdtoolkit distill:")]
    assert len(err) == 1 and "before the first step" in err[0] and "rerun the same command" in err[0], err
    assert not (run / "losses.jsonl").exists() and not (run / ".sdtoolkit.lock").exists()
    assert distill(assets, run, "--max-steps", "2", "--no-export") == 0
    assert sorted(losses(run)) == [1, 2]


def test_text_to_3d_killed_between_its_two_checkpoint_files_resumes_exactly(prior, tmp_path):
    """checkpoint.safetensors carries the whole state in its metadata and is replaced in one rename; checkpoint.json
    is a readable copy written after it. A kill between the two renames (the tensors of step 2, the copy of step 1,
    a temporary file left behind) loses nothing: resume continues from step 2 exactly (it used to refuse and ask for
    --overwrite, losing the run). A damaged tensors file is one line naming it."""
    from safetensors.torch import load_file

    from sdtoolkit.runs import OutputFolderError
    from sdtoolkit.text_to_3d import trainer

    straight = tmp_path / "straight"
    trainer.train(_config(steps=3), straight, denoiser=prior, progress=False)
    out = tmp_path / "torn"
    trainer.train(_config(steps=3), out, denoiser=prior, progress=False, stop_at=2)
    state = json.loads((out / trainer.STATE_FILE).read_text())
    (out / trainer.STATE_FILE).write_text(json.dumps({**state, "step": 1}))
    (out / f".checkpoint.tmp-{2**22 + 7}.json").write_text("{")  # a dead process's temporary file
    manifest = json.loads((out / ".sdtoolkit-manifest.json").read_text())
    (out / ".sdtoolkit-manifest.json").write_text(json.dumps({**manifest, "released": False}))
    assert trainer.read_checkpoint_state(out)["step"] == 2
    assert trainer.train(_config(steps=3), out, denoiser=prior, progress=False, resume=True).step == 3
    a, b = load_file(str(straight / trainer.CHECKPOINT_FILE)), load_file(str(out / trainer.CHECKPOINT_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / trainer.STATE_FILE).read_text())["step"] == 3
    assert not list(out.glob(".*tmp*"))
    data = (out / trainer.CHECKPOINT_FILE).read_bytes()
    (out / trainer.CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(OutputFolderError, match="damaged"):
        trainer.train(_config(steps=4), out, denoiser=prior, progress=False, resume=True)


def test_a_killed_runs_entries_are_its_own_and_the_users_stay_the_users(tmp_path):
    """A run killed before it released its folder recorded only the entries of its last sync. The entries it writes
    that were not the user's when it claimed the folder are taken as its own, so --overwrite and a resume replace
    them (they used to be called the user's: a dead end of "move them away"); the user's entries are kept."""
    from sdtoolkit.runs import OutputFolderError, claim_output, inspect_output

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    reserved = ("config.json", "checkpoint.safetensors", "student", "notes.txt")
    run = claim_output(
        folder, "kind", overwrite=True, reserved=("config.json", "checkpoint.safetensors", "student"), announce=None
    )
    (folder / "config.json").write_text("{}")
    (folder / "checkpoint.safetensors").write_bytes(b"x")
    (folder / "student").mkdir()
    (folder / "student" / "half.bin").write_bytes(b"x")
    run.released = True  # killed: no final manifest, and its lock is left behind with a dead pid
    lock = json.loads((folder / ".sdtoolkit.lock").read_text())
    (folder / ".sdtoolkit.lock").write_text(json.dumps({**lock, "pid": 2**22 + 7}))
    rules = {"reserved": ("config.json", "checkpoint.safetensors", "student")}
    assert inspect_output(folder, "kind", overwrite=True, **rules) == "overwrite"
    assert inspect_output(folder, "kind", resume=True, **rules) == "resume"
    again = claim_output(folder, "kind", overwrite=True, announce=None, **rules)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine"
    again.release()
    # the user's own entry of a name the run writes is still refused
    (folder / "student").mkdir()
    with pytest.raises(OutputFolderError, match="student"):
        inspect_output(folder, "kind", overwrite=True, reserved=reserved)


def test_distill_killed_while_writing_its_student_resumes_and_re_exports(assets, straight, tmp_path):
    """Killed (SIGKILL, out of memory) while `student/` or `export/` was written: the manifest of the last
    checkpoint does not list them, yet they are the run's; `--resume` writes them again (it used to refuse: "student
    was not written by sdtoolkit")."""
    run = tmp_path / "killed_at_export"
    shutil.copytree(straight, run)
    manifest = json.loads((run / ".sdtoolkit-manifest.json").read_text())
    owned = [name for name in manifest["owned"] if name != "student"]
    files = [f for f in manifest["files"] if not f.startswith("student/")]
    record = {**manifest, "owned": owned, "files": files, "released": False, "user_entries": []}
    (run / ".sdtoolkit-manifest.json").write_text(json.dumps(record))
    (run / "student" / "torn.safetensors").write_bytes(b"torn")
    assert distill(assets, run, "--resume", str(run), "--max-steps", "4", "--no-export") == 0
    assert not (run / "student" / "torn.safetensors").exists() and (run / "student").is_dir()


def test_ctrl_c_outside_a_loop_is_one_line_and_130(monkeypatch, capsys):
    """A Ctrl-C the loops do not handle (imports, teacher loading, the export, a second Ctrl-C) ends the command in
    one line with exit status 130 (it used to print a traceback of up to 134 lines)."""
    import sdtoolkit.cli.info as info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert main(["info"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped: Ctrl-C" in err[0] and "--resume" in err[0], err


def test_ctrl_c_during_the_last_checkpoint_stops_before_the_student(assets, tmp_path, monkeypatch, capsys):
    """A Ctrl-C that arrives while the last step's checkpoint is written is honoured (it used to be ignored: the run
    went on to write its student and export and exited 0); --resume then writes them."""
    from sdtoolkit.distill.loop import Trainer

    original = Trainer._checkpoint

    def checkpoint(self, step):
        original(self, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "last"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_checkpoint", checkpoint)
        capsys.readouterr()
        assert distill(assets, run, "--max-steps", "2", "--checkpoint-every", "1") == 130
    err = capsys.readouterr().err
    assert "after the last step" in err and "--resume" in err and "Traceback" not in err, err
    assert not (run / "student").exists() and not (run / "export").exists()
    assert distill(assets, run, "--resume", str(run), "--max-steps", "2") == 0
    assert (run / "export" / "model_index.json").is_file()


def test_a_damaged_checkpoint_is_one_line_naming_it_and_the_way_on(assets, straight, tmp_path, capsys):
    """A torn checkpoint file (a power loss, a full disk: the rename is atomic, the bytes may not be) is reported in
    one line naming the checkpoint and the older one to resume from (it used to be a 32-line SafetensorError
    traceback)."""
    run = tmp_path / "damaged"
    shutil.copytree(straight, run)
    model = next((run / "checkpoints" / "step_000004").glob("model*.safetensors"))
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    capsys.readouterr()
    assert distill(assets, run, "--resume", str(run), "--max-steps", "6", "--no-export") == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("sdtoolkit distill")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert "step_000004 is damaged" in ours[0] and "resume from step_000002" in ours[0], ours
    shutil.rmtree(run / "checkpoints" / "step_000004")
    assert distill(assets, run, "--resume", str(run), "--max-steps", "4", "--no-export") == 0


def test_text_to_3d_stops_when_its_field_vanishes(prior, tmp_path, monkeypatch):
    """A field that renders nothing for `max_empty_steps` steps in a row (a signed distance whose zero level left the
    scene: the purple torus under ISM, benchmarks/RESULTS.md) stops the run in one line, keeping its last checkpoint,
    instead of training on to an export that finds no surface (it used to fail only after the last step)."""
    from sdtoolkit.runs import RunDiverged
    from sdtoolkit.text_to_3d import trainer

    original = trainer.training_step

    def vanishing(run):
        logs = original(run)
        if run.step >= 3:
            logs["opacity"] = 0.0
        return logs

    out = tmp_path / "vanished"
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "training_step", vanishing)
        with pytest.raises(RunDiverged, match=r"step 6: the renders were empty for 4 consecutive steps") as error:
            trainer.train(
                _config(steps=10, checkpoint_every=2, max_empty_steps=4), out, denoiser=prior, progress=False
            )
        assert "the last checkpoint is step 4" in str(error.value) and "--seed" in str(error.value)
        assert not (out / "timing.json").exists()
        # 0 turns the guard off
        trainer.train(_config(steps=8, max_empty_steps=0), tmp_path / "off", denoiser=prior, progress=False)
