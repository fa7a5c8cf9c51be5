"""How far refined reference cameras are from the true ones: the rotation angle between each refined camera and its
truth, its azimuth, elevation and distance errors, and the same angle modulo the object's symmetries.

The angle is the geodesic distance on SO(3) between the two cameras' rotations (Hartley et al. 2013, "Rotation
Averaging", Eq. 3: d(R_1, R_2) = arccos((tr(R_1^T R_2) - 1) / 2)). Our cameras orbit the centre without roll
(`sdtoolkit.data.cameras.Cameras.c2w`), so this is the angle between the two viewing directions when only the
azimuth or only the elevation differs.

A camera pose of a symmetric object is only defined up to the object's symmetries: turning a solid of revolution
about its axis changes none of its geometry, so no image of its shape can tell the camera's azimuth. The 6D-pose
benchmarks score such objects with symmetry-aware errors (Hodan et al. 2016, "On Evaluation of 6D Object Pose
Estimation"; the BOP benchmark's MSSD/MSPD, Hodan et al. 2020, Sec. 2.2: the error is the minimum over the
object's symmetry transformations g of the error of R_est against R_true g). Here the symmetries considered are the
object's rotations about the vertical axis, the only ones a camera without roll can express:

    e_sym = min over g in G of d(R_est, R_z(g) R_true)

with G the shape's yaw symmetries (`YAW_SYMMETRY`): every angle for a solid of revolution (the minimum is at
g = a_est - a_true, so e_sym = |e_est - e_true|), the four quarter turns for a cube, and every rotation for a
sphere (e_sym = 0: only the distance is observable). In the shapes world the light is fixed in the world frame, so
a solid of revolution's azimuth still shows in its shading, but faintly: a 5 degree azimuth change of a red sphere,
cylinder, cone or torus at elevation 30 changes its 64 px render by 46, 47, 46 and 50 dB PSNR
(`benchmarks/pose_observability.py`), far below the reference fits' residuals (20-35 dB PSNR).
"""

from __future__ import annotations

import statistics

import torch

from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg

YAW_SYMMETRY: dict[str, int | None] = {"sphere": None, "cube": 4, "cylinder": 0, "cone": 0, "torus": 0}
"""Rotational symmetry of each shape about the vertical axis: n > 0 an n-fold symmetry (the quarter turns of a
cube), 0 a solid of revolution (every angle), None every rotation (a sphere)."""


def rotation_angle_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotations `[..., 3, 3]`, arccos((tr(R_1^T R_2) - 1) / 2), computed as
    2 arcsin(||R_1 - R_2||_F / (2 sqrt 2)) (the same angle, since ||R_1 - R_2||_F = 2 sqrt 2 sin(theta / 2); it
    keeps small angles exact where the arccos of a number near 1 loses them)."""
    chord = (r1 - r2).flatten(-2).norm(dim=-1) / (2 * 2**0.5)
    return torch.rad2deg(2 * torch.arcsin(chord.clamp(0.0, 1.0)))


def _rotations(cameras: Cameras) -> torch.Tensor:
    """The cameras' rotations (camera to world), in float64."""
    fields = (cameras.azimuth_deg, cameras.elevation_deg, cameras.distance, cameras.fov_deg)
    return Cameras(*(f.double() for f in fields)).c2w()[:, :3, :3]


def symmetric_angle_deg(refined: Cameras, truth: Cameras, shape: str) -> torch.Tensor:
    """min over the shape's yaw symmetries g of the angle between the refined camera and the true camera turned by
    g about the vertical axis (`YAW_SYMMETRY`)."""
    if shape not in YAW_SYMMETRY:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(YAW_SYMMETRY)}")
    order = YAW_SYMMETRY[shape]
    if order is None:
        return torch.zeros(len(refined), dtype=torch.float64)
    if order == 0:  # the best g turns the true azimuth onto the refined one
        turns = [refined.azimuth_deg - truth.azimuth_deg]
    else:
        turns = [torch.full_like(truth.azimuth_deg, 360.0 * k / order) for k in range(order)]
    angles = [
        rotation_angle_deg(
            _rotations(refined),
            _rotations(Cameras(truth.azimuth_deg + g, truth.elevation_deg, truth.distance, truth.fov_deg)),
        )
        for g in turns
    ]
    return torch.stack(angles).min(0).values


def pose_errors(refined: Cameras, truth: Cameras, shape: str | None = None, anchor: int | None = 0) -> dict:
    """Per view: `angle_deg` (refined vs true rotation), signed `azimuth_deg` (wrapped) and `elevation_deg` errors,
    `distance_percent` (refined / true - 1), and with `shape` the symmetry-aware `symmetric_angle_deg`; and their
    medians over the views other than `anchor` (a view held fixed by construction, whose errors are zero)."""
    if len(refined) != len(truth):
        raise ValueError(f"{len(refined)} refined camera(s) against {len(truth)} true one(s)")
    errors = {
        "angle_deg": rotation_angle_deg(_rotations(refined), _rotations(truth)),
        "azimuth_deg": wrap_azimuth_deg(refined.azimuth_deg - truth.azimuth_deg).double(),
        "elevation_deg": (refined.elevation_deg - truth.elevation_deg).double(),
        "distance_percent": 100 * (refined.distance / truth.distance - 1).double(),
    }
    if shape is not None:
        errors["symmetric_angle_deg"] = symmetric_angle_deg(refined, truth, shape)
    views = [i for i in range(len(truth)) if i != anchor] or list(range(len(truth)))
    out = {name: [round(float(v), 4) for v in values] for name, values in errors.items()}
    out["median_over_views"] = views
    out["median"] = {
        name: statistics.median(abs(values[i]) for i in views)
        for name, values in out.items()
        if name != "median_over_views"
    }
    return out
