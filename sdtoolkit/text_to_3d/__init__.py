"""Text-to-3D: SDS / CSD / VSD / SemanticSDS optimising a NeRF through the shared Denoiser, exported as meshes and
turntables."""

from sdtoolkit.text_to_3d.config import (
    METHODS,
    CameraConfig,
    RegularizerConfig,
    TextTo3DConfig,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from sdtoolkit.text_to_3d.export import (
    EmptyFieldError,
    auto_iso_threshold,
    export_mesh,
    extract_mesh,
    marching_cubes,
    sniff_format,
    write_video,
)
from sdtoolkit.text_to_3d.generate import generate
from sdtoolkit.text_to_3d.trainer import load_checkpoint, render_turntable, save_checkpoint, setup, train

__all__ = [
    "METHODS",
    "CameraConfig",
    "EmptyFieldError",
    "RegularizerConfig",
    "TextTo3DConfig",
    "auto_iso_threshold",
    "export_mesh",
    "extract_mesh",
    "from_dict",
    "generate",
    "load_checkpoint",
    "load_config",
    "marching_cubes",
    "render_turntable",
    "save_checkpoint",
    "save_config",
    "setup",
    "sniff_format",
    "to_dict",
    "train",
    "write_video",
]
