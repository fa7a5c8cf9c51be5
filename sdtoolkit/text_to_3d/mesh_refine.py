"""The mesh stage of text-to-3D (Magic3D's second stage, Lin et al. 2023, Sec. 4.2, with a fixed-topology mesh in
place of DMTet): the extracted mesh's vertex offsets and vertex colours are optimised through a differentiable
renderer with the same guidance (SDS, ...) as the NeRF stage, kept clean by Laplacian, normal-consistency and
edge-length regularisers. The refined mesh is what `generate` exports.

The renderer is a soft rasteriser written in torch (Liu et al. 2019, "Soft Rasterizer: A Differentiable Renderer
for Image-based 3D Reasoning"), vectorised over (face, pixel) pairs like `sdtoolkit.text_to_3d.mesh_render`, with its
cameras, projection, two-sided Lambert shading and white background: its hard limit (sigma, gamma -> 0) is that
ray caster's image. None of the maintained libraries runs on this CPU from PyPI (checked 2026-12-01): nvdiffrast's
and kaolin's rasterisers are CUDA/OpenGL builds (PyPI's `kaolin` is a placeholder), pytorch3d has no distribution
pip can install here, and Mitsuba 3.9 / Dr.Jit 1.5 install but their LLVM backend aborts with the system's libLLVM
14/15 ("Cannot select: fmaximum"); Mitsuba would also need reparameterised path tracing (Monte-Carlo noise) for the
visibility gradients that a rasteriser gets exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.render import lambert
from sdtoolkit.text_to_3d.config import MeshRefineConfig
from sdtoolkit.text_to_3d.mesh_render import _pairs

#: -log of the probability below which a (face, pixel) pair is left out: D = sigmoid(-d^2 / sigma) < e^-12
CUTOFF = 12.0


# ------------------------------------------------------------------------------------------------- the renderer


def project(vertices: Tensor, cameras: Cameras, size: int) -> tuple[Tensor, Tensor]:
    """(pixel coordinates `[B, V, 2]` as (row, col), pixel centres at integers; depths `[B, V]` along the view axis)
    of world-space `vertices` in square `size` x `size` images: the pinhole of `Cameras.generate_rays`."""
    c2w = cameras.c2w().to(vertices.dtype)
    tan_half = torch.tan(torch.deg2rad(cameras.fov_deg.to(vertices.dtype)) / 2)[:, None]
    cam = torch.einsum("bvi,bij->bvj", vertices[None] - c2w[:, None, :3, 3], c2w[:, :3, :3])
    depth = -cam[..., 2]
    safe = torch.where(depth.abs() > 1e-9, depth, torch.full_like(depth, 1e-9))
    col = (cam[..., 0] / safe / tan_half + 1) / 2 * size - 0.5
    row = (-cam[..., 1] / safe / tan_half + 1) / 2 * size - 0.5
    return torch.stack([row, col], -1), depth


def point_segment_distance_sq(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Squared distance from 2D points `p` to the segments [a, b] (all `[..., 2]`)."""
    ab, ap = b - a, p - a
    s = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return ((ap - s[..., None] * ab) ** 2).sum(-1)


def coverage_logits(p: Tensor, tri: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """SoftRas' coverage of pixel centres `p` `[N, 2]` by projected triangles `tri` `[N, 3, 2]` (Liu et al. 2019,
    Eq. 1): D = sigmoid(delta d^2 / sigma), d the distance to the triangle's boundary, delta = +1 inside, -1 outside.
    Returns (log D, log(1 - D), the 2D barycentric coordinates `[N, 3]`); logs keep far pairs finite."""
    a, b, c = tri.unbind(1)
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    area = torch.where(area.abs() > 1e-12, area, torch.full_like(area, 1e-12))

    def edge(u: Tensor, v: Tensor) -> Tensor:
        return (u[:, 0] - p[:, 0]) * (v[:, 1] - p[:, 1]) - (u[:, 1] - p[:, 1]) * (v[:, 0] - p[:, 0])

    bary = torch.stack([edge(b, c), edge(c, a), edge(a, b)], -1) / area[:, None]
    inside = (bary >= 0).all(-1)
    d_sq = torch.stack(
        [point_segment_distance_sq(p, a, b), point_segment_distance_sq(p, b, c), point_segment_distance_sq(p, c, a)],
        -1,
    ).amin(-1)
    x = torch.where(inside, d_sq, -d_sq) / sigma
    return F.logsigmoid(x), F.logsigmoid(-x), bary


def perspective_barycentrics(bary: Tensor, depths: Tensor) -> Tensor:
    """Perspective-correct barycentrics from screen-space ones (clamped to the triangle and renormalised, as SoftRas
    does for pixels outside): b_k / z_k normalised."""
    bary = bary.clamp(0, 1)
    bary = bary / bary.sum(-1, keepdim=True).clamp_min(1e-12)
    weights = bary / depths
    return weights / weights.sum(-1, keepdim=True)


def soft_render(
    vertices: Tensor,
    faces: Tensor,
    vertex_colours: Tensor,
    cameras: Cameras,
    resolution: int = 64,
    sigma: float = 0.5,
    gamma: float = 0.01,
    supersample: int = 1,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> dict[str, Tensor]:
    """Differentiable renders of a mesh (vertices `[V, 3]` world, faces `[F, 3]`, colours `[V, 3]` in [0, 1]):
    `rgb` `[B, 3, R, R]` and `alpha` `[B, 1, R, R]`, differentiable in vertices and colours.

    Per (face j, pixel i) pair within `sqrt(CUTOFF sigma)` pixels of the face's projected box:
      - coverage D_ij = sigmoid(delta d^2 / sigma) (SoftRas Eq. 1);
      - silhouette A_i = 1 - prod_j (1 - D_ij) (SoftRas Eq. 4);
      - colour C_i = sum_j w_ij C_ij with w_ij = D_ij exp(z~_ij / gamma) / sum_k D_ik exp(z~_ik / gamma), z~ the
        normalised inverse depth (SoftRas Eq. 5-6, the background term left out), C_ij the two-sided Lambert shading
        of `sdtoolkit.data.render.lambert` of the perspective-interpolated vertex colour;
      - image = A_i C_i + (1 - A_i) background.
    As sigma, gamma -> 0 this is the nearest surface's shaded colour where a face covers the pixel centre and the
    background elsewhere: the image of `sdtoolkit.text_to_3d.mesh_render.render_mesh`.
    """
    size = resolution * supersample
    dtype = vertices.dtype
    faces = faces.long()
    tri_world = vertices[faces]  # [F, 3, 3]
    normals = torch.linalg.cross(tri_world[:, 1] - tri_world[:, 0], tri_world[:, 2] - tri_world[:, 0], dim=-1)
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    pixels, depths = project(vertices, cameras, size)
    origins = cameras.positions().to(dtype)
    reach = math.sqrt(CUTOFF * sigma)
    bg = torch.tensor(background, dtype=dtype, device=vertices.device)
    images, alphas = [], []
    for b in range(len(cameras)):
        tri = pixels[b][faces]  # [F, 3, 2]
        z = depths[b][faces]  # [F, 3]
        in_front = (z > 1e-6).all(1)
        lo = (tri.detach().amin(1) - reach).ceil().clamp(0, size - 1).long()
        hi = (tri.detach().amax(1) + reach).floor().clamp(0, size - 1).long()
        hi[~in_front] = lo[~in_front] - 1  # no pairs for faces behind the camera
        face, r, c = _pairs(lo, hi)
        pix = r * size + c
        p = torch.stack([r, c], -1).to(dtype)
        log_d, log_not_d, bary = coverage_logits(p, tri[face], sigma)
        # silhouette: 1 - prod (1 - D)
        log_empty = torch.zeros(size * size, dtype=dtype, device=vertices.device).index_add(0, pix, log_not_d)
        alpha = 1 - log_empty.exp()
        # colour: the two-sided shaded, perspective-interpolated vertex colour of each pair
        weights = perspective_barycentrics(bary, z[face])
        albedo = (weights[:, :, None] * vertex_colours[faces[face]]).sum(1)
        n = normals[face]
        facing_away = (n * (tri_world[face, 0] - origins[b])).sum(-1, keepdim=True) > 0
        n = torch.where(facing_away, -n, n)
        shaded = lambert(albedo, n.T)
        # depth softmax: z~ = (z_far - z) / (z_far - z_near), over the mesh's depth range in this view
        depth = 1 / (weights / z[face]).sum(-1)
        near, far = z[in_front].min(), z[in_front].max()
        z_norm = (far - depth) / (far - near).clamp_min(1e-6)
        logits = log_d + z_norm / gamma
        top = torch.full((size * size,), -torch.inf, dtype=dtype, device=vertices.device)
        top = top.scatter_reduce(0, pix, logits.detach(), reduce="amax")
        e = (logits - top[pix]).exp()
        total = torch.zeros(size * size, dtype=dtype, device=vertices.device).index_add(0, pix, e)
        colour = torch.zeros(size * size, 3, dtype=dtype, device=vertices.device)
        colour = colour.index_add(0, pix, e[:, None] * shaded)
        colour = colour / total.clamp_min(1e-30)[:, None]
        image = alpha[:, None] * colour + (1 - alpha[:, None]) * bg
        images.append(image.T.reshape(3, size, size))
        alphas.append(alpha.reshape(1, size, size))
    rgb, alpha = torch.stack(images), torch.stack(alphas)
    if supersample > 1:
        rgb, alpha = F.avg_pool2d(rgb, supersample), F.avg_pool2d(alpha, supersample)
    return {"rgb": rgb, "alpha": alpha}


# ------------------------------------------------------------------------------------------------- regularisers


def mesh_edges(faces: Tensor) -> Tensor:
    """The unique undirected edges `[E, 2]` (smaller index first) of a triangle mesh."""
    half = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).long()
    return torch.unique(half.sort(1).values, dim=0)


def face_adjacency(faces: Tensor) -> Tensor:
    """Pairs of faces `[A, 2]` that share an edge (for a non-manifold edge: consecutive faces around it)."""
    half = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).long().sort(1).values
    owner = torch.arange(len(faces), device=faces.device).repeat(3)
    _, edge_id = torch.unique(half, dim=0, return_inverse=True)
    order = torch.argsort(edge_id, stable=True)
    edge_id, owner = edge_id[order], owner[order]
    same = edge_id[1:] == edge_id[:-1]
    return torch.stack([owner[:-1][same], owner[1:][same]], -1)


def laplacian_loss(vertices: Tensor, edges: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """Uniform Laplacian smoothness (Sorkine 2005; Desbrun et al. 1999): mean_i ||v_i - mean_{j in N(i)} v_j||^2 /
    scale^2, with `scale` a length (the initial mean edge length keeps it free of the mesh's size)."""
    n = len(vertices)
    i, j = edges[:, 0], edges[:, 1]
    total = torch.zeros_like(vertices).index_add(0, i, vertices[j]).index_add(0, j, vertices[i])
    degree = torch.zeros(n, dtype=vertices.dtype, device=vertices.device)
    degree = degree.index_add(0, i, torch.ones_like(i, dtype=vertices.dtype))
    degree = degree.index_add(0, j, torch.ones_like(j, dtype=vertices.dtype))
    delta = vertices - total / degree.clamp_min(1)[:, None]
    return (delta**2).sum(-1).mean() / scale**2


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit normals `[F, 3]` of the faces, (v1 - v0) x (v2 - v0) normalised."""
    tri = vertices[faces.long()]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def normal_consistency_loss(vertices: Tensor, faces: Tensor, adjacency: Tensor) -> Tensor:
    """mean over adjacent faces (a, b) of 1 - n_a . n_b (pytorch3d's `mesh_normal_consistency`; Magic3D's mesh
    stage): 0 on a plane, 1 across a right angle."""
    n = face_normals(vertices, faces)
    return (1 - (n[adjacency[:, 0]] * n[adjacency[:, 1]]).sum(-1)).mean()


def edge_length_loss(vertices: Tensor, edges: Tensor, rest_lengths: Tensor) -> Tensor:
    """mean_e ((|e| - |e|_0) / mean |e|_0)^2: the edges' change of length from the extracted mesh, relative to its
    mean edge length (0 for the extracted mesh; (s - 1)^2 mean(|e|_0^2) / mean(|e|_0)^2 for a mesh scaled by s)."""
    lengths = (vertices[edges[:, 0]] - vertices[edges[:, 1]]).norm(dim=-1)
    return (((lengths - rest_lengths) / rest_lengths.mean()) ** 2).mean()


# ------------------------------------------------------------------------------------------------- the stage


@dataclass
class MeshRefineResult:
    """The refined mesh's arrays and the stage's logs."""

    vertices: np.ndarray
    """`[V, 3]` float32 world positions."""
    faces: np.ndarray
    """`[F, 3]` int64, the extracted mesh's (the topology is fixed)."""
    colours: np.ndarray
    """`[V, 3]` float32 in [0, 1]."""
    history: list[dict]
    """Per step: the losses (and `skipped` for a non-finite step)."""
    seconds: float
    """Wall time of the stage."""


def refine_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    colours: np.ndarray,
    config: MeshRefineConfig,
    image_loss: Callable[[Tensor, Cameras, float], Tensor],
    sample_cameras: Callable[[], Cameras],
    resolution: int,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    progress: bool = False,
) -> MeshRefineResult:
    """Optimises vertex offsets and vertex colours (logits) with Adam for `config.steps` steps: each step renders
    the mesh from `sample_cameras()` with `soft_render` at `resolution` and minimises
    image_loss(rgb, cameras, step / steps) + the weighted regularisers. A step whose loss or gradient is not finite
    is skipped (no update)."""
    from tqdm.auto import tqdm

    start = time.time()
    v0 = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    c0 = torch.as_tensor(np.asarray(colours), dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
    offsets = torch.zeros_like(v0, requires_grad=True)
    logits = torch.logit(c0).requires_grad_(True)
    optimizer = torch.optim.Adam(
        [{"params": [offsets], "lr": config.lr_vertices}, {"params": [logits], "lr": config.lr_colours}],
        betas=(0.9, 0.99),
        eps=1e-15,
    )
    edges, adjacency = mesh_edges(f), face_adjacency(f)
    rest = (v0[edges[:, 0]] - v0[edges[:, 1]]).norm(dim=-1)
    scale = rest.mean()
    history = []
    for step in tqdm(range(config.steps), desc="mesh stage", unit="step", disable=not progress):
        v = v0 + offsets
        cameras = sample_cameras()
        colours = torch.sigmoid(logits)
        out = soft_render(
            v, f, colours, cameras, resolution, config.sigma, config.gamma, config.supersample, background
        )
        losses = {"loss_image": image_loss(out["rgb"], cameras, step / max(config.steps, 1))}
        if config.lambda_laplacian:
            losses["loss_laplacian"] = config.lambda_laplacian * laplacian_loss(v, edges, scale)
        if config.lambda_normal:
            losses["loss_normal"] = config.lambda_normal * normal_consistency_loss(v, f, adjacency)
        if config.lambda_edge:
            losses["loss_edge"] = config.lambda_edge * edge_length_loss(v, edges, rest)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        logs = {k: float(x.detach()) for k, x in losses.items()}
        grads = torch.cat([offsets.grad.flatten(), logits.grad.flatten()])
        if math.isfinite(float(loss.detach())) and bool(torch.isfinite(grads).all()):
            optimizer.step()
        else:
            logs["skipped"] = 1.0
        history.append(logs)
    with torch.no_grad():
        final_v, final_c = (v0 + offsets).numpy(), torch.sigmoid(logits).numpy()
    return MeshRefineResult(final_v, f.numpy(), final_c, history, time.time() - start)


def guidance_image_loss(run) -> Callable[[Tensor, Cameras, float], Tensor]:
    """The NeRF stage's guidance as an image loss: encode the render, apply `run.guidance` with the view-dependent
    prompt (SDS's surrogate loss, whose gradient is the score difference). Only the guidance term is used (VSD's
    LoRA is not trained further here)."""

    def loss(rgb: Tensor, cameras: Cameras, progress: float) -> Tensor:
        device = run.denoiser.device
        latents = run.denoiser.encode(rgb.to(device) * 2 - 1, sample=False)
        conds = [p(cameras.to(device)) for p in run.prompts]
        result = run.guidance(latents, conds, progress, cameras=cameras.to(device), generator=run.generator)
        return result.loss.cpu()

    return loss


def refine_extracted_mesh(mesh, run, progress: bool = False):
    """`generate`'s mesh stage: the extracted `trimesh.Trimesh` refined by `refine_mesh` with the run's guidance,
    prompts, cameras and prior resolution (`run.config.mesh_refine`; returned unchanged when its steps are 0). The
    result keeps the faces and metadata, with `metadata["mesh_refine"]` = steps, seconds, first and last losses."""
    import trimesh

    from sdtoolkit.text_to_3d.trainer import prior_image_size, sample_training_cameras

    config = run.config
    refine = config.mesh_refine
    if not refine.steps:
        return mesh
    if run.layout is not None:
        raise ValueError("the mesh stage (mesh_refine.steps > 0) does not support layouts (semantic-sds) yet")
    resolution = config.resolution or prior_image_size(run.denoiser)
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float32) / 255

    def cameras() -> Cameras:
        return sample_training_cameras(config.cameras, config.cameras.batch_size, run.generator, run.scene_scale)

    guidance_config = run.guidance.config
    # the stage's own time range, uniform (no annealing)
    if refine.max_step_percent is not None and hasattr(guidance_config, "timesteps"):
        times = guidance_config.timesteps
        low = min(times.min_step_percent, refine.max_step_percent)
        stage_times = dataclasses.replace(
            times, min_step_percent=low, max_step_percent=refine.max_step_percent, anneal="none"
        )
        run.guidance.config = dataclasses.replace(guidance_config, timesteps=stage_times)
    try:
        result = refine_mesh(
            mesh.vertices,
            mesh.faces,
            colours,
            refine,
            guidance_image_loss(run),
            cameras,
            resolution,
            config.background,
            progress,
        )
    finally:
        run.guidance.config = guidance_config
    rgba = np.concatenate([result.colours, np.ones_like(result.colours[:, :1])], axis=1)
    refined = trimesh.Trimesh(
        result.vertices, result.faces, vertex_colors=(rgba * 255).round().astype(np.uint8), process=False
    )
    refined.metadata.update(mesh.metadata)
    first, last = result.history[0], result.history[-1]
    refined.metadata["mesh_refine"] = {
        "steps": refine.steps,
        "seconds": round(result.seconds, 1),
        "loss_first": {k: round(v, 6) for k, v in first.items()},
        "loss_last": {k: round(v, 6) for k, v in last.items()},
        "skipped": int(sum(h.get("skipped", 0) for h in result.history)),
    }
    return refined
