"""Image-to-3D as DreamCar does it (Du et al. 2024): reference views reconstructed by text-to-3D's NeRF, the unseen
sides filled by a 2D prior's score distillation, with a mirror-symmetry prior and pose refinement."""

from sdtoolkit.image_to_3d.config import ImageTo3DConfig, from_dict, load_config, save_config
from sdtoolkit.image_to_3d.inputs import InputError, References, load_references, parse_cameras
from sdtoolkit.image_to_3d.poses import PoseCorrections, angular_errors, corrected_cameras
from sdtoolkit.image_to_3d.symmetry import (
    SymmetricEncoding,
    make_symmetric,
    mirror_azimuth,
    mirror_cameras,
    mirror_images,
    mirror_points,
)

__all__ = [
    "ImageTo3DConfig",
    "InputError",
    "PoseCorrections",
    "References",
    "SymmetricEncoding",
    "angular_errors",
    "corrected_cameras",
    "from_dict",
    "load_config",
    "load_references",
    "make_symmetric",
    "mirror_azimuth",
    "mirror_cameras",
    "mirror_images",
    "mirror_points",
    "parse_cameras",
    "save_config",
]
