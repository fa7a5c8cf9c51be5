"""The one config -> CLI mechanism (`sdtoolkit.cli.config_cli`) on every subcommand: --config with strict keys and
types, help that states each dataclass default, validation before anything is written, and the --resume policy."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest

from sdtoolkit.cli import SUBCOMMANDS, build_parser, main
from sdtoolkit.cli.config_cli import DEST, field_default
from sdtoolkit.core.config import ConfigError, OneOf, Range, build, check, show


def leaf_parsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """'distill lcm' -> its parser, 'text-to-3d' -> its parser, ... (every parser that runs a command)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = leaf_parsers(sub, f"{prefix}{name} ")
                out.update(nested or {f"{prefix}{name}": sub})
    return out


PARSERS = leaf_parsers(build_parser())


def test_every_subcommand_has_config_flag():
    names = {name.split()[0] for name in PARSERS}
    assert names == set(SUBCOMMANDS)
    missing = [name for name, parser in PARSERS.items() if "--config" not in parser._option_string_actions]
    assert not missing


def test_every_flag_comes_from_a_config_dataclass():
    """One mechanism: besides --help, --config and --resume, no subcommand has a hand-written flag."""
    hand_written = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in PARSERS.items()
        for action in parser._actions
        if not action.dest.startswith(DEST) and action.dest not in ("help", "config", "resume")
    ]
    assert not hand_written


def expected_default(sections: dict[str, type], dotted: str):
    parts = dotted.split(".")
    cls = sections[parts[0]] if parts[0] in sections and parts[0] != "" else sections[""]
    if parts[0] in sections and parts[0] != "":
        parts = parts[1:]
    for i, part in enumerate(parts):
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        value = field_default(f)
        if i < len(parts) - 1:
            cls = type(value)
    return value


def _train_teacher_default(field: str) -> str:
    """train-teacher's flags come from TeacherConfig (--family sd) and FlowTeacherConfig (--family sd3): a flag of
    one family shows its default; a shared flag whose defaults differ shows both, each with its family."""
    from sdtoolkit.models.shapes_flow_teacher import FlowTeacherConfig
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    sd = {f.name: f for f in dataclasses.fields(TeacherConfig)}
    flow = {f.name: f for f in dataclasses.fields(FlowTeacherConfig)}
    if field in sd and field in flow and field_default(sd[field]) != field_default(flow[field]):
        return f"{show(field_default(sd[field]))} (--family sd), {show(field_default(flow[field]))} (--family sd3)"
    return show(field_default(sd[field] if field in sd else flow[field]))


def test_every_generated_flag_states_its_dataclass_default():
    from sdtoolkit.cli.text_to_3d import guidance_defaults

    checked, wrong = 0, []
    for name, parser in PARSERS.items():
        sections = parser.get_default("config_sections")
        assert sections, f"{name}: no config_sections"
        generated = [a for a in parser._actions if a.dest.startswith(DEST)]
        assert generated, name
        for action in generated:
            dotted = action.dest[len(DEST) :]
            assert action.help and action.help.strip(), (name, dotted)
            if name == "text-to-3d" and dotted.startswith("guidance."):
                shown = guidance_defaults()[dotted]  # per method, from each method's guidance config
            elif name == "text-to-3d" and dotted == "layout":
                shown = "None"
            elif name == "train-teacher" and dotted.startswith("teacher."):
                shown = _train_teacher_default(dotted.split(".", 1)[1])
            else:
                shown = show(expected_default(sections, dotted))
            if f"(default: {shown}" not in action.help.replace("%%", "%"):
                wrong.append(f"{name} {action.option_strings}: {action.help!r} lacks (default: {shown}")
            checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked > 200  # distill x methods, text-to-3d's ~70, train-teacher's ~45, ...


def test_text_to_3d_help_no_longer_lies_about_the_learning_rate():
    from sdtoolkit.text_to_3d import TextTo3DConfig

    action = PARSERS["text-to-3d"]._option_string_actions["--lr"]
    assert f"(default: {TextTo3DConfig().lr_encoding}" in action.help
    guidance = PARSERS["text-to-3d"]._option_string_actions["--guidance-scale"].help
    assert "sds 20.0 (builtin: prior) / 100.0" in guidance and "vsd 7.5" in guidance and "csd 40.0" in guidance


def run_err(capsys, argv: list[str]) -> list[str]:
    capsys.readouterr()
    assert main(argv) == 2, argv
    return capsys.readouterr().err.strip().splitlines()


COMMAND_LINES = {
    "distill lcm": lambda out: ["distill", "lcm", "--output", str(out)],
    "text-to-3d": lambda out: ["text-to-3d", "a red cube", "--output", str(out)],
    "train-teacher": lambda out: ["train-teacher", "--output", str(out), "--tiny"],
    "train-evaluator": lambda out: ["train-evaluator", "--output", str(out)],
    "info": lambda out: ["info"],
    "generate": lambda out: ["generate", "--prompt", "a red cube", "--out", str(out / "grid.png")],
    "eval": lambda out: ["eval", "--images", str(out), "--out", str(out / "scores.json")],
    "export": lambda out: ["export", str(out), str(out / "export")],
    "eval-3d": lambda out: ["eval-3d", str(out / "mesh.glb"), "--out", str(out / "scores.json")],
}


@pytest.mark.parametrize("name", sorted(COMMAND_LINES))
def test_config_rejects_unknown_keys_and_wrong_types_in_one_line_each(name, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"no_such_key": 1}))
    lines = run_err(capsys, [*COMMAND_LINES[name](out), "--config", str(config)])
    assert len(lines) == 1 and "no_such_key" in lines[0] and "valid keys" in lines[0], lines
    config.write_text("{not json")
    lines = run_err(capsys, [*COMMAND_LINES[name](out), "--config", str(config)])
    assert len(lines) == 1 and "not valid JSON" in lines[0], lines
    assert not out.exists()


ISSUE_15_CONFIGS = [
    ({"train": {"max_steps": "2"}}, 'train.max_steps = "2": expected an integer, got a string'),
    ({"train": {"batch_size": "two"}}, 'train.batch_size = "two": expected an integer, got a string'),
    ({"train": [1, 2]}, "train = [1, 2]: expected an object"),
    ({"train": {"max_grad_norm": "big"}}, 'train.max_grad_norm = "big": expected a number, got a string'),
    ({"train": {"max_steps": 0}}, "--max-steps 0: must be >= 1 (train.max_steps)"),
    ({"train": {"max_grad_norm": math.inf}}, "--max-grad-norm inf: must be a finite number"),
    ({"lcm": {"w_max": float("nan")}}, "--w-max nan: must be a finite number"),
    ({"train": {"resolution": 3.5}}, "train.resolution = 3.5: expected an integer or null, got a number"),
]


@pytest.mark.parametrize("values, message", ISSUE_15_CONFIGS)
def test_distill_config_type_errors_are_one_line_and_write_nothing(values, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(values))
    lines = run_err(capsys, ["distill", "lcm", "--config", str(config), "--output", str(tmp_path / "run")])
    assert len(lines) == 1 and lines[0].startswith("sdtoolkit distill: error:"), lines
    assert message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no run folder, no runs/


def test_every_bad_value_gets_its_own_line(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"max_steps": "2", "batch_size": "two", "seed": -1}}))
    lines = run_err(capsys, ["distill", "lcm", "--config", str(config), "--output", str(tmp_path / "run")])
    assert len(lines) == 3 and "max_steps" in lines[0] and "batch_size" in lines[1] and "seed" in lines[2], lines
    lines = run_err(capsys, ["distill", "lcm", "--max-steps", "0", "--seed", "-1", "--output", str(tmp_path / "run")])
    assert lines[0].endswith("--max-steps 0: must be >= 1 (train.max_steps)")
    assert lines[1].endswith("--seed -1: must be in [0, 4294967295] (train.seed)")
    assert not (tmp_path / "run").exists()


def test_distill_refuses_a_resolution_the_vae_cannot_map(tmp_path, capsys):
    lines = run_err(capsys, ["distill", "lcm", "--resolution", "30", "--output", str(tmp_path / "run")])
    lines = [line for line in lines if line.startswith("sdtoolkit distill: error:")]  # not the loading bars
    assert len(lines) == 1 and "--resolution 30: must be a multiple of the teacher's VAE scale factor 4" in lines[0]
    assert "28 or 32" in lines[0]
    assert not (tmp_path / "run").exists()


def test_distill_refuses_steps_beyond_the_teachers_schedule(tmp_path, capsys):
    cases = [
        (
            ["lcm", "--num-ddim-timesteps", "5000"],
            "--num-ddim-timesteps 5000: must be in [1, num_train_timesteps = 1000]",
        ),
        (
            ["dmd2", "--regression-steps", "5000", "--regression-weight", "1"],
            "--regression-steps 5000: must be in [1, ",
        ),
    ]
    for extra, message in cases:
        lines = run_err(capsys, ["distill", *extra, "--output", str(tmp_path / "run")])
        lines = [line for line in lines if line.startswith("sdtoolkit distill: error:")]  # not the loading bars
        assert len(lines) == 1 and message in lines[0], lines
        assert not (tmp_path / "run").exists()
    help_text = PARSERS["distill lcm"]._option_string_actions["--num-ddim-timesteps"].help
    assert "in [1, num_train_timesteps]" in help_text


def test_text_to_3d_validates_before_writing(tmp_path, capsys):
    out = tmp_path / "asset"
    base = ["text-to-3d", "a red cube", "--output", str(out)]
    cases = [
        (["--resolution", "30"], "--resolution 30: must be a multiple of the prior's VAE scale factor 4"),
        (["--lr", "nan"], "--lr nan: must be a finite number (lr_encoding)"),
        (["--steps", "0"], "--steps 0: must be >= 1"),
        (["--guidance-scale", "inf"], "--guidance-scale inf: must be a finite number"),
        (["--guidance.lora-rank", "4"], "--guidance.lora-rank applies to vsd, not --method sds"),
        (["--nerf.collider", "cube"], "unknown --nerf.collider 'cube'"),
        (["--cameras.fov-range", "30", "200"], "--cameras.fov-range 30.0 200.0: must be in [1, 179]"),
    ]
    for extra, message in cases:
        lines = run_err(capsys, [*base, *extra])
        assert len(lines) == 1 and message in lines[0], (extra, lines)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"steps": "2", "nerf": {"num_samples": "many"}, "guidance": {"weighting": 3}}))
    lines = run_err(capsys, [*base, "--config", str(config)])
    assert len(lines) == 2 and 'steps = "2"' in lines[0] and 'nerf.num_samples = "many"' in lines[1], lines
    assert not out.exists()


def test_a_distill_runs_config_json_is_a_valid_config(tmp_path):
    from sdtoolkit.cli.distill import resolve

    parser = build_parser()
    args = parser.parse_args(["distill", "dmd2", "--max-steps", "7", "--num-steps", "2", "--output", "runs/a"])
    *_, train, _, resolved = resolve(args)
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(resolved))  # what the run writes to RUN/config.json
    args = parser.parse_args(["distill", "dmd2", "--config", str(saved), "--output", "runs/b", "--seed", "3"])
    _, method_config, again, _, resolved_again = resolve(args)
    assert (again.max_steps, again.seed, again.output, method_config.num_steps) == (7, 3, "runs/b", 2)
    assert {**resolved_again["train"], "seed": 0, "output": "runs/a"} == resolved["train"]


def test_text_to_3d_config_file_round_trip(tmp_path):
    from sdtoolkit.cli.text_to_3d import resolve
    from sdtoolkit.text_to_3d.config import to_dict

    parser = build_parser()
    args = parser.parse_args(
        ["text-to-3d", "a red cube", "--method", "vsd", "--steps", "7", "--guidance.lora-rank", "2"]
    )
    config, command, output, resume = resolve(args)
    assert (config.steps, config.guidance.lora_rank, config.lr_encoding, resume) == (7, 2, 0.03, False)
    assert output == Path("runs/a-red-cube")
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(to_dict(config)))
    args = parser.parse_args(["text-to-3d", "--config", str(saved), "--steps", "9", "--output", str(tmp_path / "b")])
    again, *_ = resolve(args)
    assert again.steps == 9 and again.guidance.lora_rank == 2 and again.method == "vsd"
    assert to_dict(again) == {**to_dict(config), "steps": 9}


def test_text_to_3d_resume_refuses_fixed_settings(tmp_path, capsys):
    from sdtoolkit.cli.text_to_3d import resolve
    from sdtoolkit.text_to_3d import TextTo3DConfig
    from sdtoolkit.text_to_3d.config import to_dict

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(to_dict(TextTo3DConfig(prompt="a red cube", steps=4))))
    (run / "checkpoint.safetensors").write_bytes(b"")
    parser = build_parser()
    args = parser.parse_args(["text-to-3d", "--resume", str(run), "--steps", "8", "--threads", "2"])
    config, _, output, resume = resolve(args)
    assert (config.steps, config.threads, config.prompt, output, resume) == (8, 2, "a red cube", run, True)
    for extra, key in [
        (["--seed", "3"], "seed"),
        (["--lr", "0.1"], "lr_encoding"),
        (["--weighting", "uniform"], "guidance.weighting"),
    ]:
        lines = run_err(capsys, ["text-to-3d", "--resume", str(run), *extra])
        assert len(lines) == 1 and f"would change the run's {key}" in lines[0] and "changeable: " in lines[0], lines
    lines = run_err(capsys, ["text-to-3d", "--resume", str(run), "--output", str(tmp_path / "other")])
    assert len(lines) == 1 and "name two folders" in lines[0], lines
    # the same value as the run's is no change
    config, *_ = resolve(parser.parse_args(["text-to-3d", "a red cube", "--resume", str(run), "--seed", "0"]))
    assert config.seed == 0


def test_distill_resume_applies_resumable_flags_and_refuses_others(tmp_path, capsys, monkeypatch):
    import sdtoolkit.distill.loop as loop
    from sdtoolkit.cli.distill import resolve

    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    config = {"method": "lcm", "train": {"max_steps": 2, "batch_size": 3, "output": "elsewhere"}, "lcm": {"w_max": 9}}
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(loop, "latest_checkpoint", lambda folder: run / "checkpoints" / "step_2")
    parser = build_parser()
    args = parser.parse_args(["distill", "lcm", "--resume", str(run), "--max-steps", "6", "--no-export"])
    _, method_config, train, checkpoint, _ = resolve(args)
    assert (train.max_steps, train.batch_size, train.export, train.output) == (6, 3, False, str(run))
    assert method_config.w_max == 9 and checkpoint == run / "checkpoints" / "step_2"
    for extra, key in [(["--batch-size", "4"], "train.batch_size"), (["--w-max", "5"], "lcm.w_max")]:
        lines = run_err(capsys, ["distill", "lcm", "--resume", str(run), *extra])
        assert len(lines) == 1 and f"would change the run's {key}" in lines[0], lines
        assert "--max-steps" in lines[0]  # names what may change


def test_train_teacher_and_evaluator_validate_every_field(tmp_path, capsys):
    lines = run_err(capsys, ["train-teacher", "--output", str(tmp_path / "t"), "--beta-end", "2", "--lr", "0"])
    assert lines[0].endswith("--beta-end 2.0: must be in (0, 1) (teacher.beta_end)")
    assert lines[1].endswith("--lr 0.0: must be > 0 (teacher.lr)")
    lines = run_err(capsys, ["train-teacher", "--output", str(tmp_path / "t"), "--resolution", "30"])
    assert lines == [
        "sdtoolkit train-teacher: error: teacher: resolution 30 must be a multiple of the VAE's downsampling factor 4 "
        "(e.g. 28 or 32)"
    ]
    lines = run_err(capsys, ["train-teacher", "--tiny"])
    assert "--output is required" in lines[0]
    lines = run_err(capsys, ["train-evaluator", "--output", str(tmp_path / "e"), "--num-test", "1"])
    assert lines == ["sdtoolkit train-evaluator: error: --num-test 1: must be >= 2 (train.num_test)"]
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()


def test_eval_saves_its_resolved_config_and_takes_it_back(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
    (folder / "prompts.txt").write_text("a red cube\na blue torus\n")
    out = tmp_path / "scores.json"
    args = ["--images", str(folder), "--reference-num", "0", "--bootstrap", "100", "--fd-splits", "0"]
    assert main(["eval", *args, "--no-diversity", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())["config"]
    assert saved["bootstrap"] == 100 and saved["diversity"] is False and saved["images"] == str(folder)
    config = tmp_path / "eval.json"
    config.write_text(json.dumps(saved))
    from sdtoolkit.cli.config_cli import resolve_flat, to_dict
    from sdtoolkit.cli.eval import EvalCommand

    args = build_parser().parse_args(["eval", "--config", str(config), "--bootstrap", "200"])
    assert to_dict(resolve_flat(args, EvalCommand, "eval")) == {**saved, "bootstrap": 200}


def test_eval_names_a_corrupt_image(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "0.png")
    (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (folder / "prompts.txt").write_text("a red cube\na blue torus\n")
    lines = run_err(capsys, ["eval", "--images", str(folder), "--out", str(tmp_path / "s.json")])
    assert len(lines) == 1 and "1.png is not a readable image" in lines[0], lines
    assert not (tmp_path / "s.json").exists()


# generate --guidance inf / nan and --steps 5000: tests/test_export_defaults.py


def test_flat_commands_take_their_settings_from_a_config_file(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"prompts": ["a red cube"], "steps": 5000, "out": str(tmp_path / "g.png")}))
    lines = run_err(capsys, ["generate", "--config", str(config)])
    assert lines == ["sdtoolkit generate: error: --steps 5000: must be in [1, 1000] (generate.steps)"]
    config.write_text(json.dumps({"prompts": "a red cube"}))
    lines = run_err(capsys, ["generate", "--config", str(config)])
    assert lines == [
        'sdtoolkit generate: error: generate.prompts = "a red cube": expected a list of strings or null, got a string'
    ]
    config.write_text(json.dumps({"run_dir": str(tmp_path / "nope"), "out_dir": str(tmp_path / "x")}))
    lines = run_err(capsys, ["export", "--config", str(config)])
    assert len(lines) == 1 and "RUN_DIR" in lines[0] and "nope" in lines[0], lines
    lines = run_err(capsys, ["eval", "--images", str(tmp_path), "--bootstrap", "10"])
    assert lines == ["sdtoolkit eval: error: --bootstrap 10: must be >= 100 (eval.bootstrap)"]


# ------------------------------------------------------------------------------------------------ the mechanism


@dataclasses.dataclass
class Inner:
    BOUNDS = {"rate": Range(0, 1, low_open=True)}
    rate: float = 0.5
    """A rate."""


@dataclasses.dataclass
class Outer:
    BOUNDS = {"kind": OneOf("a", "b"), "sizes": Range(1)}
    kind: str = "a"
    """Kind."""
    sizes: tuple[int, ...] = (1, 2)
    """Sizes."""
    pair: tuple[float, float] | None = None
    """Pair."""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """Inner."""


def test_build_converts_and_reports_every_problem():
    built = build(Outer, {"sizes": [3, 4], "pair": [1, 2.5], "inner": {"rate": 1}}, "x")
    assert built == Outer(sizes=(3, 4), pair=(1.0, 2.5), inner=Inner(rate=1.0))
    with pytest.raises(ConfigError) as error:
        build(Outer, {"kind": "c", "sizes": [0], "pair": [1], "inner": {"rate": 0, "extra": 1}, "zzz": 1}, "x")
    assert error.value.lines == [
        "x: unknown key zzz; valid keys: inner, kind, pair, sizes",
        "unknown x.kind 'c'; choose one of a, b",
        "x.sizes = 0: must be >= 1",
        "x.pair = [1]: expected a list of 2 numbers or null, got a list",
        "x.inner: unknown key extra; valid keys: rate",
        "x.inner.rate = 0.0: must be in (0, 1]",
    ]
    assert check(Outer(inner=Inner(rate=float("nan"))), "x") == ["x.inner.rate = nan: must be a finite number"]


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_strict_checks(path):
    from sdtoolkit.cli.distill import resolve

    method = json.loads(path.read_text())["method"]
    _, _, train, _, resolved = resolve(build_parser().parse_args(["distill", method, "--config", str(path)]))
    assert resolved["method"] == method and train.max_steps >= 1
