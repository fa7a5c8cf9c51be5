"""The evaluator report: intervals on every figure (narrowing as n grows), precision/recall and diversity, the
mode-collapse indicator, and `sdtoolkit eval --compare`."""

import json
import math

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.eval import Evaluator, bootstrap_interval, compare_reports, precision_recall, vendi_score
from sdtoolkit.eval.images import save_images
from sdtoolkit.eval.report import prompt_renders
from sdtoolkit.eval.stats import split_interval, t_quantile

PROMPTS = ["a red cube, front view", "a blue torus, overhead view", "a green cone, side view"]
SMALL = {"reference_num": 64, "fd_splits": 2, "num_resamples": 200}


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator.load()


@pytest.fixture(scope="module")
def real():
    """4 real renders of each of 3 prompts, prompt-major, and their prompts."""
    return prompt_renders(PROMPTS, 4, seed=77), [p for p in PROMPTS for _ in range(4)]


@pytest.fixture(scope="module")
def reports(evaluator, real):
    images, prompts = real
    collapsed = images.reshape(3, 4, 3, 64, 64)[:, :1].expand(3, 4, 3, 64, 64).reshape(12, 3, 64, 64)
    return evaluator.report(images, prompts, **SMALL), evaluator.report(collapsed, prompts, **SMALL)


def test_bootstrap_interval_narrows_as_n_grows():
    widths = []
    for n in (100, 400, 1600):
        values = (torch.arange(n) % 10 < 8).double()  # accuracy 0.8
        interval = bootstrap_interval(values, num_resamples=500)
        assert interval.n == n and interval.low < 0.8 < interval.high and interval.method == "bootstrap"
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.25)  # 1 / sqrt(n)
    # stratified: resampling within two strata of fixed size; NaN values are dropped
    values = torch.tensor([1.0, 1.0, 0.0, 0.0, math.nan])
    assert bootstrap_interval(values, strata=[0, 0, 1, 1, 1]).to_dict() == {
        "value": 0.5, "low": 0.5, "high": 0.5, "n": 4, "method": "bootstrap"
    }  # fmt: skip


def test_bootstrap_pools_strata_of_one_value():
    """One clip per prompt (every stratum a single value) is the plain bootstrap, not a zero-width interval; strata
    with several values keep being resampled within themselves."""
    values = (torch.arange(120) % 4 == 0).double()
    alone = bootstrap_interval(values, strata=[f"prompt {i}" for i in range(120)], num_resamples=500)
    assert alone.to_dict() == bootstrap_interval(values, num_resamples=500).to_dict()
    assert alone.low < 0.25 < alone.high
    mixed = bootstrap_interval(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]), strata=[0, 0, 1, 2, 3], num_resamples=500)
    assert mixed.low < mixed.value < mixed.high  # the three singletons pooled; stratum 0 stays constant


def test_split_interval_is_a_t_interval():
    interval = split_interval(10.0, [9.0, 11.0, 10.0, 10.0], n=400)
    half = t_quantile(3) * torch.tensor([9.0, 11.0, 10.0, 10.0]).std().item() / 2
    assert (interval.low, interval.high) == pytest.approx((10 - half, 10 + half)) and interval.method == "splits-4"
    assert t_quantile(1) == pytest.approx(12.706) and 1.96 < t_quantile(100) < 2.0


def test_precision_recall_and_vendi_by_hand():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(64, 8, generator=generator)
    same = precision_recall(real, real)
    assert same["precision"].mean() == 1.0 and same["recall"].mean() == 1.0
    far = precision_recall(real + 100.0, real)
    assert far["precision"].mean() == 0.0 and far["recall"].mean() == 0.0
    collapsed = real[:1] + 0.01 * torch.randn(64, 8, generator=generator)  # one mode: precise, no recall
    pr = precision_recall(collapsed, real)
    assert pr["precision"].mean() == 1.0 and pr["recall"].mean() < 0.2
    assert vendi_score(torch.ones(5, 3)) == pytest.approx(1.0)
    assert vendi_score(torch.eye(4)) == pytest.approx(4.0)


def test_report_of_real_renders(reports):
    report, _ = reports
    metrics = report["metrics"]
    assert report["num_images"] == 12 and report["num_prompts"] == 3
    for name, m in metrics.items():
        assert m["n"] > 0, name
        if m["method"] != "none":
            assert m["low"] <= m["value"] + 1e-9 and m["value"] <= m["high"] + 1e-9, name
    assert metrics["all_attributes_accuracy"]["value"] >= 0.9 and metrics["view_accuracy"]["n"] == 12
    assert metrics["sharpness"]["value"] == 1.0 and metrics["speckle_fraction"]["value"] == 0.0
    assert metrics["fd_shapes"]["method"] == "splits-2" and metrics["diversity_ratio"]["n"] == 3
    assert report["view_classes"]["sphere"] == [["front", "side", "back", "overhead"]]
    json.dumps(report)  # plain JSON


def test_mode_collapse_is_seen_and_compare_says_so(reports):
    real, collapsed = reports
    assert collapsed["metrics"]["collapsed_prompts"]["value"] == 1.0
    assert real["metrics"]["collapsed_prompts"]["value"] == 0.0
    assert collapsed["metrics"]["modes_ratio"]["value"] < 0.5 * real["metrics"]["modes_ratio"]["value"]
    assert collapsed["metrics"]["recall"]["value"] < real["metrics"]["recall"]["value"]
    comparison = compare_reports(real, collapsed, num_resamples=200)
    assert comparison["collapsed_prompts"]["verdict"] == "A better"
    assert comparison["modes_ratio"]["verdict"] == "A better"
    assert compare_reports(real, real, num_resamples=200)["prompt_accuracy"]["verdict"] == "within noise"


def test_eval_cli_report_and_compare(tmp_path, capsys, real):
    images, prompts = real
    save_images(images, tmp_path / "real", prompts)
    save_images(torch.rand(12, 3, 64, 64, generator=torch.Generator().manual_seed(0)), tmp_path / "noise", prompts)
    flags = ["--reference-num", "64", "--fd-splits", "2", "--bootstrap", "200"]
    for name in ("real", "noise"):
        assert main(["eval", "--images", str(tmp_path / name), "--out", str(tmp_path / f"{name}.json"), *flags]) == 0
    printed = capsys.readouterr().out
    assert "95% interval" in printed and "all_attributes_accuracy" in printed
    saved = json.loads((tmp_path / "real.json").read_text())
    assert saved["scores"]["prompt_accuracy"] == saved["report"]["metrics"]["prompt_accuracy"]["value"]

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    for name in ("real", "noise"):  # strict JSON: a figure that could not be computed is null, not a bare NaN
        json.loads((tmp_path / f"{name}.json").read_text(), parse_constant=no_constants)
    args = ["eval", "--compare", str(tmp_path / "real.json"), str(tmp_path / "noise.json"), "--bootstrap", "200"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "A better" in table and "verdict" in table
    (tmp_path / "plain.json").write_text("{}")
    assert main(["eval", "--compare", str(tmp_path / "real.json"), str(tmp_path / "plain.json")]) == 2
    assert "has no report" in capsys.readouterr().err
    both = ["eval", "--images", str(tmp_path / "real"), "--compare", str(tmp_path / "real.json"), str(tmp_path / "x")]
    assert main(both) == 2  # --compare used to ignore --images silently
    assert "give one of --images, --clips or --compare, not --images and --compare" in capsys.readouterr().err


def test_teacher_baseline_samplers_are_stock_schedulers():
    """`benchmarks/eval_teacher.py`: leading DDIM samples only t = 1 at one step; trailing spacing and DPM-Solver++
    start from t = 999."""
    from diffusers import DDIMScheduler

    from benchmarks.eval_teacher import SAMPLERS, set_sampler
    from sdtoolkit.models.loading import resolve_model_id

    base = DDIMScheduler.from_pretrained(resolve_model_id("builtin:shapes"), subfolder="scheduler").config

    class Pipe:
        scheduler = None

    expected = {"ddim-leading": [1], "ddim-trailing": [999], "dpmpp": [999], "euler-trailing": [999]}
    for sampler in SAMPLERS:
        set_sampler(Pipe, sampler, base)
        Pipe.scheduler.set_timesteps(1)
        assert [int(t) for t in Pipe.scheduler.timesteps] == expected[sampler], sampler
    set_sampler(Pipe, "ddim-trailing", base)
    Pipe.scheduler.set_timesteps(2)
    assert [int(t) for t in Pipe.scheduler.timesteps] == [999, 499]


def test_rescore_script_writes_a_table_with_intervals(tmp_path, capsys, real):
    from benchmarks import eval_rescore

    images, prompts = real
    order = [4, 0, 8, 5, 1, 9, 6, 2, 10, 7, 3, 11]  # seed-major on disk; scored prompt-major
    save_images(images[order], tmp_path / "row", [prompts[i] for i in order])
    out = tmp_path / "rescore.json"
    assert eval_rescore.main([f"real={tmp_path / 'row'}", "--out", str(out), "--fd-splits", "2"]) == 0
    table = capsys.readouterr().out.splitlines()[-1]
    assert table.startswith("| real | 12 | ") and "[" in table
    assert json.loads(out.read_text())["real"]["metrics"]["prompt_accuracy"]["n"] == 12


def test_eval_writes_strict_json_and_compare_reads_it_back():
    """`eval --out` wrote Python's bare NaN (not JSON) for a figure it could not compute; now null, which --compare
    reads back as NaN."""
    from sdtoolkit.cli.eval import _nan_for_null, strict_json

    text = strict_json({"view_accuracy": float("nan"), "values": [1.0, float("inf")], "n": 3})
    assert json.loads(text) == {"view_accuracy": None, "values": [1.0, None], "n": 3}
    back = _nan_for_null(json.loads(text))
    assert math.isnan(back["view_accuracy"]) and back["values"][0] == 1.0 and back["n"] == 3
