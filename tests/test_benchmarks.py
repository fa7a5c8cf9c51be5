"""Smoke test of the benchmark harness at its smallest size (not a timing gate: no number is asserted on)."""

import json
import re

import pytest

from benchmarks import run


@pytest.mark.slow
def test_tiny_benchmark_runs_every_training_workload_and_writes_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    names = "forward,lcm,dmd2,sid,dmd2-lora,sid-lora"
    argv = ["--size", "tiny", "--only", names, "--variants", "eager,full-fake", "--steps", "1", "--warmup", "1"]
    assert run.main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["size"] == "tiny" and results["device"].startswith("cpu")
    for name in names.split(","):
        entry = results["workloads"][name]
        sides = ("reference", "eager", "full-fake") if name in ("dmd2", "sid") else ("reference", "eager")
        for side in sides:
            assert "error" not in entry[side], entry[side]
            assert entry[side]["ms_per_step"] > 0
    # sdtoolkit's forward is the same computation as the plain one: identical outputs in fp32 on a CPU
    assert results["workloads"]["forward"]["numerics"]["max_abs_diff"] == 0.0
    table = capsys.readouterr().out
    assert "× ref" in table and "lcm" in table


@pytest.mark.slow
def test_tiny_benchmark_runs_the_mcm_step_against_its_reference(tmp_path, monkeypatch):
    """Issue 20, item 5: the MCM trainer's step (the real loop on an AnimateDiffPipeline) against yhZhai/mcm's step
    written on stock UNetMotionModel; both run, every UNetMotionModel call on whole 16-frame clips."""
    from diffusers import UNetMotionModel

    frames = []
    forward = UNetMotionModel.forward

    def counted(self, sample, *args, **kwargs):
        frames.append(sample.shape[0] * sample.shape[2])
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNetMotionModel, "forward", counted)
    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--only", "mcm", "--variants", "eager", "--steps", "1", "--warmup", "1"]
    assert run.main([*argv, "--json", str(out)]) == 0
    entry = json.loads(out.read_text())["workloads"]["mcm"]
    assert entry["images_per_step"] == 16
    for side in ("reference", "eager"):
        assert "error" not in entry[side], entry[side]
        assert entry[side]["ms_per_step"] > 0
    assert frames and all(f % 16 == 0 for f in frames)


@pytest.mark.slow
def test_tiny_benchmark_runs_text_to_3d_and_sampling_workloads(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--only", "sds,vsd,vsd-same-lora,sample", "--steps", "1", "--warmup", "1"]
    assert run.main([*argv, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    sides = {"sds": ["reference", "eager"], "vsd": ["reference", "eager"], "vsd-same-lora": ["reference", "eager"]}
    sides["sample"] = ["reference", "1-step", "2-step", "4-step"]
    for name, keys in sides.items():
        entry = results["workloads"][name]
        assert sorted(k for k, v in entry.items() if isinstance(v, dict)) == sorted(keys)  # no GPU-only variant
        for side in keys:
            assert "error" not in entry[side], entry[side]
            assert entry[side]["ms_per_step"] > 0
    assert results["workloads"]["sds"]["images_per_step"] == 1
    assert results["workloads"]["sample"]["reference"]["label"] == "teacher-50"
    table = capsys.readouterr().out
    assert "teacher-50" in table and "2-step" in table


def test_text_to_3d_workload_runs_the_real_training_step():
    import torch

    from benchmarks import components, workloads

    torch.set_num_threads(1)
    comps = components.build("tiny", torch.device("cpu"))
    step = workloads.toolkit_text_to_3d(comps, False, "eager")
    step.run.config.regularizers.lambda_entropy = 0.0  # what moves the NeRF below is the guidance alone
    before = {k: v.clone() for k, v in step.run.nerf.field.encoding.state_dict().items()}
    logs = [step() for _ in range(2)]
    assert [entry["step"] for entry in logs] == [1, 2] and step.run.step == 2
    assert logs[0]["res"] == comps.image_size and step.run.config.guidance.guidance_scale == 100.0
    assert set(logs[0]) >= {"loss_guidance", "t", "grad_norm"} and "loss_entropy" not in logs[0]
    # the SDS gradient reached the hash grid through the VAE encoder and the render
    after = step.run.nerf.field.encoding.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_sampling_workload_counts_steps_as_asked():
    import torch

    from benchmarks import components, workloads

    torch.set_num_threads(1)
    comps = components.build("tiny", torch.device("cpu"), batch_size=2)
    sampler = workloads.toolkit_sample(comps, False, "2-step")
    calls = []
    unet = sampler.pipeline.unet
    unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    images = sampler()
    assert len(images) == 2 and images[0].size == (comps.image_size, comps.image_size)
    assert calls == [2, 2]  # two steps, no CFG batch doubling
    teacher = workloads.WORKLOADS["sample"].reference(comps, False)
    calls.clear()
    teacher.pipeline.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    teacher()
    assert calls == [4] * 50  # 50 DDIM steps, cond and uncond batched


def test_unknown_workload_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run.main(["--only", "lcm,nope"])
    assert "unknown workload(s) ['nope']" in capsys.readouterr().err


def test_sd15_thin_has_sd15s_topology_and_module_count_with_narrow_channels():
    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks import components

    comps = components.build("sd15-thin", torch.device("cpu"))
    thin = comps.unet()
    with torch.device("meta"):  # the full-width SD1.5 UNet, without allocating its 860M parameters
        full = UNet2DConditionModel(**components.SD15_UNET)
    assert [type(m).__name__ for m in thin.modules()] == [type(m).__name__ for m in full.modules()]
    assert [n for n, _ in thin.named_modules()] == [n for n, _ in full.named_modules()]
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in full.parameters()) / 50
    assert comps.fake_rank == components.scaled_rank(32) and components.scaled_rank(320) == 64


def test_repeats_alternate_the_paths_and_report_medians_and_paired_ratios(tmp_path):
    import json

    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--only", "forward", "--variants", "eager", "--steps", "1", "--warmup", "1"]
    assert run.main([*argv, "--repeats", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    entry = results["workloads"]["forward"]
    assert results["repeats"] == 3 and len(entry["reference"]["rounds_ms"]) == 3
    assert entry["eager"]["ms_per_step"] == sorted(entry["eager"]["rounds_ms"])[1]
    assert entry["eager"]["paired_ratio_median"] > 0


def test_families_gpu_script_runs_the_real_loop_at_tiny_size(one_thread):
    """The prepared GPU script (issue 18) times the real distillation loop per family and method: checked here at
    tiny size on a CPU (its SD1.5/SDXL sizes were checked once to build 860M / 2567M-parameter UNets)."""
    from benchmarks.families_gpu import SDXL_UNET, measure

    row = measure("sdxl", "dmd2", "tiny", "cpu", steps=1, warmup=1, batch_size=2)
    assert row["finite_losses"] and row["ms_per_step_median"] > 0 and row["peak_memory_gb"] is None
    assert SDXL_UNET["cross_attention_dim"] == 768 + 1280  # the two text encoders' widths, concatenated


def test_repeated_tokens_benchmark_checks_equality_and_reports_paired_ratios(tmp_path, one_thread):
    from benchmarks import repeated_tokens

    out = tmp_path / "rt.json"
    assert repeated_tokens.main(["--rounds", "2", "--batch-size", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens"] == {"literal": 336, "compact": 81}
    assert result["max_abs_output_difference"] < 1e-5  # the same function on both sides
    assert result["paired_ratio_median"] > 0 and set(result["median_s"]) == {"literal", "compact"}


def test_scm_step_benchmark_matches_the_plain_reference_and_reports_paired_ratios(tmp_path, one_thread):
    """Issue 19's benchmark: the research-script-style reference and sdtoolkit's `scm_step` compute the same loss
    and the same student gradients from the same weights and draws, then are timed in alternating rounds."""
    from benchmarks import scm_step

    out = tmp_path / "scm.json"
    argv = ["--rounds", "2", "--batch-size", "2", "--layers", "1", "--size", "8", "--json", str(out)]
    assert scm_step.main(argv) == 0
    result = json.loads(out.read_text())
    losses = result["first_step_loss"]
    assert losses["sdtoolkit"] == pytest.approx(losses["reference"], rel=1e-4) and losses["reference"] > 0
    assert result["first_step_max_gradient"] > 0
    assert result["first_step_max_gradient_difference"] < 1e-4 * result["first_step_max_gradient"]
    assert result["paired_ratio_median"] > 0 and set(result["median_s"]) == {"reference", "sdtoolkit"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stage-fractions", "0.1"], "is not A:B"),
        (["--stage-fractions", "0.5:0.2"], "0 <= A <= B <= 1"),
        (["--stage-fractions", "0.1:1.5"], "0 <= A <= B <= 1"),
        (["--representations", "mlp,nerfacto"], "unknown \\['nerfacto'\\]"),
        (["--scratch-seconds", "0"], "--scratch-seconds: 0.0 is not a positive"),
        (["--inherit-decoder", "yes"], "invalid choice: 'yes'"),
        (["--teacher", "no/such/run"], "TEACHER 'no/such/run': no such file or folder"),
        (["--compile-teacher"], "--compile-teacher compiles a nerfstudio teacher's hash encodings: give --teacher"),
    ],
)
def test_pvd_benchmark_refuses_bad_arguments_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    """`benchmarks/pvd.py` names the bad value and the valid form before it fits a teacher or writes a file."""
    from benchmarks import pvd

    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["pvd.py", *argv, "--out", str(out)])
    with pytest.raises(SystemExit):
        pvd.main()
    assert re.search(message, capsys.readouterr().err) and not out.exists()


def test_pvd_benchmark_times_the_from_scratch_renders_and_reports_both_fractions(tmp_path, monkeypatch):
    """A tiny end-to-end run of `benchmarks/pvd.py` on a saved teacher: the teacher's renders of the from-scratch
    data are timed, and the fraction of the from-scratch time with them counted is PVD's time to the from-scratch
    best over (the from-scratch fit's seconds + the render seconds)."""
    import torch
    from safetensors.torch import save_file

    from benchmarks import pvd
    from sdtoolkit.cli.config_cli import to_dict
    from sdtoolkit.nerf import NeRF, NeRFConfig

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    torch.manual_seed(0)
    config = NeRFConfig(num_samples=16, occupancy_resolution=16)
    config.field.num_levels, config.field.max_res, config.field.log2_hashmap_size = 4, 32, 12
    config.field.hidden_dim = 16
    nerf = NeRF(config)
    with torch.no_grad():
        nerf.field.encoding.tables.normal_(0, 0.5)
    nerf.update_occupancy(0, force=True)
    tensors = {f"nerf.{k}": v.contiguous() for k, v in nerf.state_dict().items()}
    save_file(tensors, str(teacher / "checkpoint.safetensors"))
    asset = {"prompt": "a red cube", "nerf": to_dict(config), "background": [1, 1, 1]}
    (teacher / "config.json").write_text(json.dumps(asset))
    out = tmp_path / "out"
    argv = ["--teacher", str(teacher), "--representations", "voxel", "--seconds", "3", "--scratch-seconds", "0.05"]
    argv += ["--evals", "2", "--train-views", "2", "--rays-per-step", "128", "--stage-fractions", "0:0", "--out"]
    monkeypatch.setattr("sys.argv", ["pvd.py", *argv, str(out)])
    pvd.main()
    result = json.loads((out / "results.json").read_text())
    assert result["scratch_render_seconds"] > 0
    run = result["runs"]["voxel"]
    reached = run["pvd"][0]["pvd_seconds_to_scratch_best"]
    assert reached is not None, run  # a 0.05 s fit from scratch is a low bar for 3 s of PVD
    counted = run["scratch_seconds"] + result["scratch_render_seconds"]
    fractions = run["pvd"][0]
    assert fractions["fraction_of_scratch_time_with_renders"] == pytest.approx(reached / counted, rel=0.01)  # rounded
    assert fractions["fraction_of_scratch_time_with_renders"] < fractions["fraction_of_scratch_time"]


def test_json_is_written_after_every_workload_so_a_stopped_run_keeps_what_it_measured(tmp_path, monkeypatch):
    """A GPU stage cut by its time limit (benchmarks/gpu_sd15.sh) must leave the finished workloads' figures."""
    out = tmp_path / "bench.json"

    def stopped(*args):
        raise KeyboardInterrupt  # what a time limit's signal looks like to the loop: not caught per variant

    monkeypatch.setattr(run.WORKLOADS["lcm"], "reference", stopped)
    argv = ["--size", "tiny", "--only", "forward,lcm", "--variants", "eager", "--steps", "1", "--warmup", "1"]
    with pytest.raises(KeyboardInterrupt):
        run.main([*argv, "--json", str(out)])
    results = json.loads(out.read_text())
    assert results["workloads"]["forward"]["eager"]["ms_per_step"] > 0
    assert "lcm" not in results["workloads"]


def test_video_teacher_benchmark_balances_motions_and_scores_a_tiny_teacher(tmp_path, one_thread):
    """`benchmarks.video_teacher`: every image caption once per motion in 360 clips; end to end on a --tiny teacher
    (generate through the stock pipeline, clips saved in the `eval --clips` layout, per-motion counts)."""
    from collections import Counter

    from benchmarks import video_teacher
    from sdtoolkit.cli import main
    from sdtoolkit.data.clips import MOTIONS, image_prompt, parse_clip_caption

    prompts = video_teacher.balanced_prompts(360)
    assert len(set(prompts)) == 360  # every caption: 120 image captions x 3 motions
    assert Counter(parse_clip_caption(p)[3] for p in prompts[:120]) == dict.fromkeys(MOTIONS, 40)
    assert len({image_prompt(p) for p in prompts[:120]}) == 120
    teacher = tmp_path / "teacher"
    assert main(["train-video-teacher", "--tiny", "--output", str(teacher), "--probe-clips", "0"]) == 0
    out = tmp_path / "score"
    argv = ["--model", str(teacher), "--num-clips", "4", "--steps", "2", "--chunk", "3", "--reference-num", "4"]
    assert video_teacher.main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["num_clips"] == 4 and report["num_frames"] == 4  # the tiny teacher's clip length
    assert sum(row["clips"] for row in report["per_motion"].values()) == 4
    assert (out / "clips" / "prompts.txt").read_text().splitlines() == video_teacher.balanced_prompts(4)
    with pytest.raises(SystemExit):  # never overwrites a scored folder
        video_teacher.main([*argv, "--out", str(out)])
    assert video_teacher.main([*argv, "--negative", "swapped", "--out", str(tmp_path / "swapped")]) == 0
    assert json.loads((tmp_path / "swapped" / "scores.json").read_text())["settings"]["negative"] == "swapped"
    # the turning clips' negative prompt changed (CFG 5), so did they
    assert (out / "clips" / "00000.gif").read_bytes() != (tmp_path / "swapped" / "clips" / "00000.gif").read_bytes()


def test_pose_observability_shows_a_cube_turning_and_a_solid_of_revolution_hardly(one_thread, capsys):
    from benchmarks.pose_observability import main, sensitivity

    cube, cylinder = sensitivity("cube", "red", 120.0, 30.0), sensitivity("cylinder", "red", 120.0, 30.0)
    # a quarter-turn-symmetric cube shows its azimuth in its edges; a cylinder only in its shading (> 20 dB less)
    assert cube["azimuth"][2] < 30 and cylinder["azimuth"][2] > cube["azimuth"][2] + 20
    assert cylinder["elevation"][2] < 30  # its elevation shows in its silhouette
    assert all(a > b for a, b in zip(cylinder["azimuth"], cylinder["azimuth"][1:]))  # larger turns, lower PSNR
    assert main(["--colour", "blue"]) == 0 and "| blue torus, azimuth |" in capsys.readouterr().out
