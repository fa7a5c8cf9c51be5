"""Export of a trained field: marching cubes (Lorensen & Cline 1987, via PyMCubes) on the density grid at an
automatic iso-threshold, vertex colours from the field, GLB/OBJ/PLY through trimesh, and turntable videos that are
mp4 when imageio-ffmpeg is present and GIF otherwise (the file name always says what the file is)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdtoolkit.runs import RunError, atomic_write_text

MESH_FORMATS = ("glb", "obj", "ply")


class EmptyFieldError(RunError, RuntimeError):
    """The density field holds no surface to extract; the message says how empty it is and what to try. The CLI
    prints it as one line and exits with 1, as for a diverged run (`sdtoolkit.runs.RunError`)."""

    exit_code = 1


EXPORT_SETTINGS = ("iso_level", "iso_mode", "min_component_share", "vertex_colours")
"""The config keys that only change the export (a failed re-export leaves the run's config.json with its old ones)."""


def no_surface(
    error: EmptyFieldError, step: int, output_dir: str | Path, previous_config: str | None = None
) -> EmptyFieldError:
    """`error` after training: where the trained field is kept and how to export it again (a finished run's
    `--resume` re-exports without training). `previous_config`, the run's config.json text before a resume, puts
    its export settings back, so that a re-export that found no surface is not what every later resume uses."""
    if previous_config is not None:
        path = Path(output_dir) / "config.json"
        with contextlib.suppress(OSError, ValueError):
            current, previous = json.loads(path.read_text()), json.loads(previous_config)
            current.update({key: previous[key] for key in EXPORT_SETTINGS if key in previous})
            atomic_write_text(path, json.dumps(current, indent=2))
    return EmptyFieldError(
        f"{error}; the field trained for {step} steps is kept in {str(output_dir)!r}: "
        f"`--resume {output_dir} --iso-level X` exports it at another level (`--iso-level none`: the automatic one)"
    )


def auto_iso_threshold(densities: Tensor, cell_size: float) -> float:
    """An iso-level for `densities` on a grid of spacing `cell_size`, chosen from the field itself.

    1. A cell is visibly solid when its own opacity 1 - exp(-sigma cell) exceeds 1/2, i.e. sigma > ln 2 / cell.
    2. The level is half the typical density of the solid cells (their 90th percentile): for a density that steps
       from ~0 to sigma_in across the surface, sigma_in / 2 puts the surface where the step is (exactly, for a
       symmetric profile such as a sigmoid), independent of how dense the interior became.
    3. Without solid cells the field is at most translucent: the level is half the maximum density, provided the
       densest cell is at least 1 % opaque; below that the field is empty and `EmptyFieldError` says so.

    The level is nudged off every grid value so the surface never passes exactly through a grid point (PyMCubes can
    leave holes there), and always lies strictly between the minimum and the maximum (never an empty mesh).
    """
    values = densities.flatten().double()
    peak = float(values.max())
    max_opacity = 1 - math.exp(-peak * cell_size)
    if not math.isfinite(peak) or max_opacity < 0.01:
        raise EmptyFieldError(
            f"the density field is empty: its densest cell is {max_opacity:.2%} opaque (max density {peak:.3g} "
            f"at cell size {cell_size:.3g}); nothing was optimised into the scene. Train longer, lower the opacity "
            "regulariser, or raise the guidance scale"
        )
    solid = values[values > math.log(2) / cell_size]
    if solid.numel() > 0:
        level = (
            0.5 * float(torch.quantile(solid.float(), 0.9)) if solid.numel() < 1 << 24 else 0.5 * float(solid.max())
        )
    else:
        level = 0.5 * peak
    level = min(max(level, float(values.min()) + 1e-6 * peak), peak * (1 - 1e-6))
    while bool((values == level).any()):
        level = float(np.nextafter(level, peak))
    return level


@torch.no_grad()
def opacity_iso_level(
    nerf, n_views: int = 8, resolution: int = 64, scene_scale: float = 1.0, elevation: float = 15.0
) -> float | None:
    """An iso-level at the surface the renders show: along every pixel ray of `n_views` turntable views whose
    rendered opacity reaches 1/2, the point where the accumulated opacity sum_i w_i first does, and the median of the
    field's density at those points. For a field with a sharp step this lands on the step, like
    `auto_iso_threshold`; for a fog that is opaque only in sum (text-to-3D's lumpy default), it meshes the fog's
    visible boundary instead of its densest patches. None when no ray reaches opacity 1/2."""
    from sdtoolkit.data.cameras import turntable_cameras
    from sdtoolkit.nerf.renderers import render_weights
    from sdtoolkit.nerf.samplers import RayBundle

    cameras = turntable_cameras(n_views, elevation_deg=elevation)
    cameras.distance = cameras.distance * scene_scale
    origins, directions = cameras.to(nerf.device).generate_rays(resolution, resolution)
    rays = nerf.collider(RayBundle(origins.reshape(-1, 3), directions.reshape(-1, 3)))
    _, sub, samples, densities, _ = nerf.sample_along(rays, stratified=False)
    if samples is None:
        return None
    accumulated = render_weights(densities, samples).cumsum(-1)
    opaque = accumulated[:, -1] >= 0.5
    if not bool(opaque.any()):
        return None
    first = (accumulated[opaque] < 0.5).sum(-1)  # the first sample at which the opacity reaches 1/2
    points = samples.positions(sub)[opaque].gather(1, first[:, None, None].expand(-1, 1, 3))[:, 0]
    return float(nerf.exact_densities(points).median())


def zero_level(nerf) -> float | None:
    """The density of an 'sdf' field's zero level set, 1 / (2 beta) (`sdtoolkit.nerf.fields.volsdf_density`): the
    exact surface, used as the automatic iso-level; None for a 'density' field."""
    field = getattr(nerf, "field", None)  # (stand-ins of a NeRF need only `density_grid` and `colours_at`)
    is_sdf = getattr(getattr(field, "config", None), "geometry", "density") == "sdf"
    return 0.5 / field.beta if is_sdf else None


def marching_cubes(densities: Tensor, lower: float, upper: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of {sigma > level} from densities sampled on a regular grid whose first and last samples sit at
    `lower` and `upper` on every axis. The grid is padded with zeros so the surface closes at the border (watertight).
    PyMCubes treats values above the level as inside; faces are wound outward. Returns (vertices [V, 3] in world
    units, faces [F, 3])."""
    import mcubes

    volume = np.pad(densities.double().numpy(), 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(volume, level)
    n = densities.shape[0]
    spacing = (upper - lower) / (n - 1)
    vertices = (vertices - 1) * spacing + lower  # undo the padding offset, index -> world
    return vertices.astype(np.float32), faces.astype(np.int64)


def remove_floaters(mesh, min_share: float):
    """Floater removal: `mesh` without its connected pieces (faces joined by shared edges) whose surface area is
    below `min_share` of the whole; the largest piece is always kept, vertex colours and metadata carry over, and
    `metadata["removed_components"]` counts the pieces dropped. A mesh of one piece is returned as it is."""
    import trimesh

    pieces = mesh.split(only_watertight=False)
    mesh.metadata["removed_components"] = 0
    if len(pieces) <= 1:
        return mesh
    areas = np.array([piece.area for piece in pieces])
    keep = areas >= min_share * areas.sum()
    keep[int(areas.argmax())] = True
    kept = [piece for piece, k in zip(pieces, keep) if k]
    cleaned = trimesh.util.concatenate(kept) if len(kept) > 1 else kept[0]
    cleaned.metadata.update(mesh.metadata)
    cleaned.metadata["removed_components"] = int((~keep).sum())
    return cleaned


def extract_mesh(
    nerf,
    resolution: int = 96,
    level: float | None = None,
    min_component_share: float | None = None,
    iso_mode: str = "solid",
    scene_scale: float = 1.0,
):
    """A `trimesh.Trimesh` of the NeRF's density at an automatic (or given) iso-level, with per-vertex colours from
    the field's albedo; with `min_component_share`, without the pieces smaller than that share of the surface
    (`remove_floaters`). The automatic level is `auto_iso_threshold` (`iso_mode="solid"`) or `opacity_iso_level`
    (`"opacity"`, falling back to the solid level when no ray is half opaque); an 'sdf' field's solid level is its zero
    level set (`zero_level`). Raises `EmptyFieldError` for an empty field."""
    densities, (lower, upper) = nerf.density_grid(resolution)
    lower, upper = float(lower), float(upper)
    cell = (upper - lower) / (resolution - 1)
    if level is None and iso_mode == "opacity":
        level = opacity_iso_level(nerf, scene_scale=scene_scale)
        if level is not None:
            peak = float(densities.max())
            level = min(max(level, float(densities.min()) + 1e-6 * peak), peak * (1 - 1e-6))
    # the solid level: the mesh's own level unless one was given, and the colour source of an opacity mesh; an
    # 'sdf' field's is its zero level set
    solid_level = None
    if level is None or iso_mode == "opacity":
        solid_level = zero_level(nerf) or auto_iso_threshold(densities, cell)
    level = solid_level if level is None else level
    vertices, faces = marching_cubes(densities, lower, upper, level)
    if len(faces) == 0:
        low, high = float(densities.min()), float(densities.max())
        raise EmptyFieldError(
            f"marching cubes found no surface at iso-level {level:.4g} (the field's densities span {low:.4g} to "
            f"{high:.4g})"
        )
    mesh = _colour_mesh(nerf, vertices, faces, level)
    if iso_mode == "opacity":  # the outer level lies in fog whose albedo is not the object's: colour from inside
        depth, normals = INWARD_DEPTH * (upper - lower), mesh.vertex_normals
        rgb = inward_colours(nerf, mesh.vertices, normals, depth, INWARD_SAMPLES, surface_level=solid_level)
        mesh.visual.vertex_colors = _rgba(rgb)
    return mesh if min_component_share is None else remove_floaters(mesh, min_component_share)


INWARD_DEPTH = 0.25
"""How deep `inward_colours` looks below an opacity-level surface, as a fraction of the extraction grid's side."""
INWARD_SAMPLES = 48
"""Samples along that depth (about 2 per grid cell at resolution 96)."""


@torch.no_grad()
def inward_colours(
    nerf,
    vertices: np.ndarray,
    normals: np.ndarray,
    depth: float,
    samples: int = 16,
    surface_level: float | None = None,
) -> np.ndarray:
    """Vertex colours as the renderer shows that spot from just outside: a ray from each vertex along its inward
    normal, down to `depth`, volume-rendered through the field (weights w_k = T_k (1 - exp(-sigma_k delta)),
    normalised; the vertex's own albedo where the ray meets no matter). On a mesh taken at the opacity level, whose
    surface lies in the fog around the object, the first dense matter below decides the colour, not the fog's
    albedo and not the never-seen interior. With `surface_level` (the solid iso-level), a ray that reaches that
    density takes the albedo where it first does: the colour the solid-level mesh has at the surface below."""
    from sdtoolkit.nerf.renderers import render_weights
    from sdtoolkit.nerf.samplers import RayBundle, RaySamples

    # rays from each vertex into the object, sampled at 0, ..., depth (intervals of depth / samples around them)
    rays = RayBundle(torch.tensor(vertices, dtype=torch.float32), -torch.tensor(normals, dtype=torch.float32))
    middles = torch.linspace(0, depth, samples).expand(len(rays), samples)
    half = depth / samples / 2
    ray_samples = RaySamples(middles - half, middles + half)
    flat = ray_samples.positions(rays).reshape(-1, 3)
    sigma = nerf.exact_densities(flat.to(nerf.device)).cpu().reshape(-1, samples).clamp(min=0)
    rgb = nerf.colours_at(flat).reshape(-1, samples, 3).clamp(0, 1)
    weights = render_weights(sigma, ray_samples)
    total = weights.sum(1, keepdim=True)
    colours = (weights[..., None] * rgb).sum(1) / total.clamp(min=1e-12)
    empty = total[:, 0] <= 1e-6
    colours[empty] = rgb[empty, 0]
    if surface_level is not None:
        dense = sigma >= surface_level
        reached = dense.any(1)
        first = dense.to(torch.int8).argmax(1)  # index of the first sample at or above the level
        colours[reached] = rgb[reached, first[reached]]
    return colours.numpy()


def delight_colours(mesh):
    """`mesh` with its vertex colours divided by the shapes world's Lambert shading at each vertex normal,
    AMBIENT + DIFFUSE max(0, n . l) (`sdtoolkit.data.render.lambert`), clipped to [0, 1]: an albedo estimate.

    A field rendered as plain albedo (`NeRFConfig.shading = "albedo"`) learns the prior's shaded colours, the fixed
    world light baked in; a renderer that shades the mesh (the evaluator's, any viewer with a light) then shades it
    twice, and the colour of its dark side is not the prompt's. Undoing the known light with the mesh's own normals
    is exact when the baked shading is the world's Lambert term on those normals."""
    from sdtoolkit.data.render import AMBIENT, DIFFUSE, light_direction

    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    shading = AMBIENT + DIFFUSE * np.clip(normals @ light_direction(torch.float64).numpy(), 0, None)
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    mesh.visual.vertex_colors = _rgba(np.clip(rgb / shading[:, None], 0, 1))
    return mesh


def _rgba(colours: np.ndarray) -> np.ndarray:
    rgba = np.concatenate([colours, np.ones_like(colours[:, :1])], axis=1)
    return (rgba * 255).round().astype(np.uint8)


def _colour_mesh(nerf, vertices: np.ndarray, faces: np.ndarray, level: float):
    import trimesh

    colours = nerf.colours_at(torch.from_numpy(vertices)).clamp(0, 1).numpy()
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=_rgba(colours), process=True)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    mesh.metadata["iso_level"] = level
    return mesh


def extract_layout_mesh(
    nerf, layout, resolution: int = 96, level: float | None = None, min_component_share: float | None = None
):
    """One mesh per layout box, merged: each box's part of the density grid (the cells whose centres lie in the box,
    every other cell zero) gets its own iso-level (automatic, or `level`), so an object whose density stayed lower
    than its neighbour's is not lost under the neighbour's level; with `min_component_share`, each box's mesh drops
    its own small pieces (`remove_floaters`), so every box keeps at least its largest. `mesh.metadata["objects"]`
    lists, per object, its prompt, iso-level and face range in the merged mesh (empty range: no surface found in
    that box)."""
    import trimesh

    densities, (lower, upper) = nerf.density_grid(resolution)
    lower, upper = float(lower), float(upper)
    cell = (upper - lower) / (resolution - 1)
    axis = torch.linspace(lower, upper, resolution)
    parts, objects, start = [], [], 0
    for obj in layout.objects:
        masks = [(axis >= lo - cell / 2) & (axis <= hi + cell / 2) for lo, hi in zip(obj.box_min, obj.box_max)]
        inside = masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]
        box_densities = torch.where(inside, densities, torch.zeros_like(densities))
        try:
            box_level = (zero_level(nerf) or auto_iso_threshold(box_densities, cell)) if level is None else level
            vertices, faces = marching_cubes(box_densities, lower, upper, box_level)
        except EmptyFieldError:
            box_level, faces = None, np.zeros((0, 3), dtype=np.int64)
        if len(faces):
            part = _colour_mesh(nerf, vertices, faces, box_level)
            parts.append(part if min_component_share is None else remove_floaters(part, min_component_share))
        count = len(parts[-1].faces) if len(faces) else 0
        entry = {"prompt": obj.prompt, "iso_level": box_level, "faces": [start, start + count]}
        if min_component_share is not None and len(faces):
            entry["removed_components"] = parts[-1].metadata["removed_components"]
        objects.append(entry)
        start += count
    if not parts:
        raise EmptyFieldError("no layout box holds a surface: every box's density field is empty")
    mesh = trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]
    mesh.metadata["objects"] = objects
    mesh.metadata["iso_level"] = max(o["iso_level"] for o in objects if o["iso_level"] is not None)
    return mesh


def export_mesh(mesh, output_dir: str | Path, name: str = "mesh", formats=MESH_FORMATS) -> list[Path]:
    """Writes the mesh as `name.glb` / `.obj` / `.ply` (vertex colours in all three); returns the paths."""
    output_dir = Path(output_dir)
    paths = []
    for fmt in formats:
        if fmt not in MESH_FORMATS:
            raise ValueError(f"mesh format {fmt!r} is not supported; choose from {', '.join(MESH_FORMATS)}")
        path = output_dir / f"{name}.{fmt}"
        material = getattr(mesh.visual, "material", None)
        if fmt == "obj" and material is not None and getattr(material, "image", None) is not None:
            # a textured OBJ writes its material and texture beside it: name them after the mesh (NAME.mtl,
            # NAME.png, entries the run owns) instead of trimesh's 'material.mtl' / 'material_0.png', which could
            # be the user's files or another export's
            mesh = mesh.copy()
            mesh.visual.material.name = name
            mesh.export(path, file_type=fmt, mtl_name=f"{name}.mtl")
        else:
            mesh.export(path, file_type=fmt)
        paths.append(path)
    return paths


MESH_NAMES = ("mesh", "mesh_textured")
"""The mesh files a run exports (`NAME.glb/.obj/.ply`; a textured OBJ also writes `NAME.mtl` and `NAME.png`)."""


def remove_stale_meshes(output_dir: str | Path, written: list[Path]) -> list[Path]:
    """Deletes the run's mesh files that this export did not write (an earlier export with other `--formats` or
    with `--uv-texture`), so that the folder, its summary and `eval-3d` all see the same mesh; returns them. Only
    the run's own names are touched: the folder claim refuses a folder where a user's file has one of them."""
    output_dir = Path(output_dir)
    keep = {Path(p).name for p in written}
    keep |= {f"{Path(name).stem}.{ext}" for name in keep if name.endswith(".obj") for ext in ("mtl", "png")}
    names = [f"{n}.{fmt}" for n in MESH_NAMES for fmt in MESH_FORMATS] + ["mesh_textured.mtl", "mesh_textured.png"]
    removed = [output_dir / n for n in names if n not in keep and (output_dir / n).is_file()]
    for path in removed:
        path.unlink()
    return removed


def uv_texture_mesh(mesh, nerf, texture_size: int = 512):
    """A copy of `mesh` with an xatlas UV atlas and a texture baked from the field's albedo (optional: needs
    `pip install xatlas`)."""
    try:
        import xatlas
    except ImportError:
        raise ImportError("UV textures need xatlas: pip install xatlas (vertex colours need nothing)") from None
    import trimesh
    from PIL import Image

    vmapping, indices, uvs = xatlas.parametrize(mesh.vertices, mesh.faces)
    vertices = mesh.vertices[vmapping]
    # bake: for each texel, barycentric interpolation of the 3D position over the face that covers it
    size = texture_size
    texture = np.ones((size, size, 3), dtype=np.float32)
    pixel = (np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), -1) + 0.5) / size
    for face in indices:
        a, b, c = uvs[face]
        lo = np.floor(np.minimum(np.minimum(a, b), c) * size).astype(int).clip(0, size - 1)
        hi = np.ceil(np.maximum(np.maximum(a, b), c) * size).astype(int).clip(0, size - 1)
        block = pixel[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
        matrix = np.array([[b[0] - a[0], c[0] - a[0]], [b[1] - a[1], c[1] - a[1]]])
        if abs(np.linalg.det(matrix)) < 1e-12:
            continue
        uv = np.linalg.solve(matrix, (block - a).reshape(-1, 2).T).T
        w = np.stack([1 - uv.sum(-1), uv[:, 0], uv[:, 1]], -1)
        inside = (w >= -1e-3).all(-1)
        if not inside.any():
            continue
        points = w[inside] @ vertices[face]
        colours = nerf.colours_at(torch.from_numpy(points.astype(np.float32))).numpy()
        rows, cols = np.nonzero(inside.reshape(block.shape[:2]))
        texture[lo[1] + rows, lo[0] + cols] = colours
    image = Image.fromarray((texture[::-1] * 255).round().astype(np.uint8))
    visual = trimesh.visual.TextureVisuals(uv=uvs, image=image)
    return trimesh.Trimesh(vertices, indices, visual=visual, process=False)


# ------------------------------------------------------------------------------------------------- video


def ffmpeg_available() -> bool:
    """True when imageio can write mp4 (imageio-ffmpeg installed with its binary)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return False
    return True


def write_video(frames: np.ndarray, path: str | Path, fps: int = 12) -> Path:
    """Writes uint8 frames `[N, H, W, 3]` as mp4 when imageio-ffmpeg is there, else as GIF, and returns the real
    path: the suffix is replaced by the format actually written (without imageio-ffmpeg, imageio would silently
    write a TIFF into "x.mp4"; we never do). The written file's magic bytes are checked."""
    import imageio.v3 as iio

    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if ffmpeg_available():
        path = path.with_suffix(".mp4")
        height, width = frames.shape[1:3]
        pad_h, pad_w = (-height) % 16, (-width) % 16  # H.264 wants multiples of 16 (macro blocks)
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=16)
    else:
        path = path.with_suffix(".gif")
        iio.imwrite(path, frames, plugin="pillow", duration=int(1000 / fps), loop=0)
    kind = sniff_format(path)
    if kind != path.suffix[1:]:
        raise RuntimeError(f"wrote {path} but its content is {kind!r}, not {path.suffix[1:]!r}")
    return path


def sniff_format(path: str | Path) -> str:
    """'mp4', 'gif', 'tiff', 'png' or 'unknown' from a file's magic bytes."""
    head = Path(path).read_bytes()[:12]
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"GIF8":
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "unknown"
