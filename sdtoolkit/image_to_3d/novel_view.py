"""Conditioning of a Zero123-style novel-view prior (Liu et al. 2023, "Zero-1-to-3", Sec. 3.1): the relative camera
from the reference view to the target view, in spherical coordinates about the object,

    T = (delta theta, sin delta phi, cos delta phi, delta r),

theta the polar angle (from +z, so delta theta = -(delta elevation)), phi the azimuth, r the distance; angles in
radians. Zero123's `get_T` (ldm/data/simple.py) and threestudio's `Zero123Guidance.get_cond` (which passes
`deg2rad(-elevation)` for elevations already relative to the reference) compute the same four numbers. sin and cos
of delta phi make the code continuous across the +-180 degree seam.

Only the conditioning exists so far: the conditional model (reference latent concatenated to the noisy latent, T
embedded with the reference's image embedding), its training on shapes renders and its SDS guidance (issue 22,
item 2) are not built yet.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.data.cameras import Cameras


def relative_camera(reference: Cameras, target: Cameras) -> Float[Tensor, "B 4"]:
    """Zero123's T = (theta_t - theta_r, sin(phi_t - phi_r), cos(phi_t - phi_r), r_t - r_r) with the polar angle
    theta = pi/2 - elevation (radians); `reference` may hold one camera for every target."""
    delta_polar = -torch.deg2rad(target.elevation_deg - reference.elevation_deg)
    delta_azimuth = torch.deg2rad(target.azimuth_deg - reference.azimuth_deg)
    delta_distance = target.distance - reference.distance
    return torch.stack([delta_polar, delta_azimuth.sin(), delta_azimuth.cos(), delta_distance], dim=-1)
