"""sdtoolkit: diffusion distillation and 3D score distillation on one shared Denoiser."""

__version__ = "0.1.0"
