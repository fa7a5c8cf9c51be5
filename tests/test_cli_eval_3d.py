"""`sdtoolkit eval-3d` end to end: a mesh file, a text-to-3d-style folder with a layout, and bad inputs refused
before anything is written."""

import json

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from sdtoolkit.cli import main  # noqa: E402
from sdtoolkit.data.shapes import COLOURS  # noqa: E402
from sdtoolkit.text_to_3d.mesh_metrics import primitive_mesh  # noqa: E402


def coloured(shape, colour, scale=1.0, offset=(0, 0, 0)):
    mesh = primitive_mesh(shape).copy()
    rgba = np.append((np.array(COLOURS[colour]) * 255).round(), 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.tile(rgba, (len(mesh.vertices), 1))
    return mesh.apply_scale(scale).apply_translation(offset)


def test_eval_3d_on_a_mesh_file(tmp_path, capsys):
    coloured("cube", "red").export(tmp_path / "cube.glb")
    out, renders = tmp_path / "scores.json", tmp_path / "renders.png"
    code = main(
        ["eval-3d", str(tmp_path / "cube.glb"), "--prompt", "a red cube", "--out", str(out), "--renders", str(renders)]
    )
    assert code == 0
    assert "a red cube: Chamfer" in capsys.readouterr().out
    scores = json.loads(out.read_text())["objects"][0]
    assert scores["volume_iou"] > 0.98 and scores["render_view_accuracy"] == 1.0 and scores["colour_accuracy"] == 1.0
    assert renders.stat().st_size > 0


def test_eval_3d_on_a_layout_folder(tmp_path, capsys):
    layout = {
        "scene_bound": 1.5,
        "objects": [
            {"prompt": "a red cube", "box": {"center": [0, -0.6, 0], "size": [1.0, 1.0, 1.0]}},
            {"prompt": "a blue sphere", "box": {"center": [0, 0.6, 0], "size": [1.0, 1.0, 1.0]}},
        ],
    }
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"prompt": "", "method": "semantic-sds", "layout": layout}))
    coloured("cube", "red", 0.5, (0, -0.6, 0)).export(folder / "mesh.glb")  # the sphere is missing
    assert main(["eval-3d", str(folder), "--out", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "a red cube: Chamfer" in printed and "a blue sphere: MISSING" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give MESH"),
        (["nowhere.glb", "--prompt", "a red cube"], "no mesh at 'nowhere.glb'"),
        (["MESH"], "give --prompt"),
        (["MESH", "--prompt", "a teapot"], "cannot parse caption 'a teapot'"),
        (["MESH", "--prompt", "a red cube", "--out", "EXISTS"], "exists; choose a new file name"),
        (["MESH", "--prompt", "a red cube", "--seed", "-1"], "seed"),
    ],
)
def test_eval_3d_refuses_bad_input(tmp_path, capsys, args, message):
    coloured("cube", "red").export(tmp_path / "m.glb")
    (tmp_path / "exists.json").write_text("{}")
    args = [
        str(tmp_path / "m.glb") if a == "MESH" else str(tmp_path / "exists.json") if a == "EXISTS" else a for a in args
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["eval-3d", *args]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
