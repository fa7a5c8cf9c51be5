"""Vertex-colour rules of the opacity-level mesh (issue 21) on finished text-to-3D runs, without retraining.

For each run folder (its `config.json` and `checkpoint.safetensors`): the solid-level mesh's colour accuracy, and the
opacity-level mesh scored by eval-3d's full mesh evaluation (`evaluate_mesh`: geometry, colour %, mesh-render views)
under the old colour rule (the volume render 0.1 of the grid deep, 16 samples) and the current one
(`extract_mesh(iso_mode="opacity")`: the albedo where the inward ray first reaches the solid iso-level).

    python -m benchmarks.opacity_colours RUN [RUN ...] > rows.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from safetensors.torch import load_file

    from sdtoolkit.data import parse_caption
    from sdtoolkit.eval import Evaluator
    from sdtoolkit.nerf import NeRF
    from sdtoolkit.text_to_3d import export as ex
    from sdtoolkit.text_to_3d.config import load_config
    from sdtoolkit.text_to_3d.mesh_metrics import colour_accuracy, evaluate_mesh

    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not folders:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    evaluator = Evaluator.load()
    keys = ("render_view_accuracy", "colour_accuracy", "volume_iou", "chamfer")
    for folder in folders:
        config = load_config(folder / "config.json")
        nerf = NeRF(config.nerf)
        tensors = load_file(str(folder / "checkpoint.safetensors"))
        nerf.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("nerf.")})
        nerf.eval()
        _, colour, _ = parse_caption(config.prompt)
        solid = ex.extract_mesh(nerf, 96, None, config.min_component_share, "solid")
        mesh = ex.extract_mesh(nerf, 96, None, config.min_component_share, "opacity")
        row = {"prompt": config.prompt, "run": str(folder), "solid_colour_accuracy": colour_accuracy(solid, colour)}
        new = evaluate_mesh(mesh, config.prompt, evaluator)
        _, (lower, upper) = nerf.density_grid(96)
        old_rgb = ex.inward_colours(nerf, mesh.vertices, mesh.vertex_normals, 0.1 * float(upper - lower), 16)
        mesh.visual.vertex_colors = ex._rgba(old_rgb)
        old = evaluate_mesh(mesh, config.prompt, evaluator)
        row["old"], row["new"] = {k: old[k] for k in keys}, {k: new[k] for k in keys}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
