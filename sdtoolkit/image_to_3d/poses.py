"""Pose refinement (DreamCar, Du et al. 2024, Sec. 3.3 "Pose Optimization"): the reference cameras are estimates, so
each view gets a learnable correction optimised jointly with the field by the reference losses, at a learning rate
far below the field's (DreamCar's `PoseMLP`, `pose_lr: 1e-5`, predicts a small se(3) update per view).

Our cameras orbit the object's centre (`sdtoolkit.data.cameras`), so a view's correction lives in the orbit's own
coordinates: delta = (delta azimuth, delta elevation, delta log distance), radians and log-units, zero at the start:

    a' = a + delta_a,   e' = e + delta_e,   d' = d exp(delta_d)

(the three degrees of freedom of a camera that looks at the centre; a roll or an off-centre look is not modelled).
The rendering is differentiable in the camera (ray origins and directions), so the reference losses pull the
corrections. One view can be kept fixed as the anchor: a global rotation of object and cameras together is
otherwise unobservable (the gauge freedom of every structure-from-motion problem).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg


def corrected_cameras(cameras: Cameras, delta: Tensor) -> Cameras:
    """a + delta_a, e + delta_e, d exp(delta_d) with delta `[N, 3]` in (radians, radians, log-units); fov kept."""
    return Cameras(
        wrap_azimuth_deg(cameras.azimuth_deg + torch.rad2deg(delta[:, 0])),
        (cameras.elevation_deg + torch.rad2deg(delta[:, 1])).clamp(-89.0, 89.0),
        cameras.distance * delta[:, 2].exp(),
        cameras.fov_deg,
    )


class PoseCorrections(nn.Module):
    """One learnable (delta azimuth, delta elevation, delta log distance) per reference view, zero-initialised;
    `anchor` (a view index or None) stays fixed at zero."""

    def __init__(self, num_views: int, anchor: int | None = 0):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(num_views, 3))
        free = torch.ones(num_views, 1)
        if anchor is not None and num_views > 1:
            free[anchor] = 0.0
        self.register_buffer("free", free)

    def forward(self, cameras: Cameras) -> Cameras:
        """The corrected cameras (differentiable in `delta`)."""
        return corrected_cameras(cameras, self.delta * self.free.to(self.delta))

    @torch.no_grad()
    def degrees(self) -> dict[str, list[float]]:
        """The current corrections in readable units: degrees, degrees and percent of distance."""
        delta = self.delta * self.free
        return {
            "azimuth_deg": [math.degrees(v) for v in delta[:, 0].tolist()],
            "elevation_deg": [math.degrees(v) for v in delta[:, 1].tolist()],
            "distance_percent": [100 * math.expm1(v) for v in delta[:, 2].tolist()],
        }


def angular_errors(estimated: Cameras, truth: Cameras) -> Tensor:
    """Angle in degrees between the viewing directions (camera centres seen from the object) of two camera sets."""
    a, b = estimated.positions(), truth.positions()
    cosine = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))
