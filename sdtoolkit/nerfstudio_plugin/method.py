"""The nerfstudio method `sdtoolkit-sds` (registered under the `nerfstudio.method_configs` entry point in
pyproject.toml): `ns-train sdtoolkit-sds --pipeline.model.prompt "a red cube"` trains an sdtoolkit NeRF with
sdtoolkit's SDS and prior (`sdtoolkit.nerfstudio_plugin.model`) in nerfstudio's trainer, on random views of
nerfstudio's `RandomCamerasDataManager`, with its viewer (`--vis viewer`) and checkpoints.

Beside the CPU torch 2.13.0 wheel (whose PyPI torchvision cannot load its C++ ops) use `sdtoolkit-ns-train` /
`sdtoolkit-ns-viewer`, which prepare torchvision before nerfstudio imports it (`allow_torchvision_without_ops`).
"""

from __future__ import annotations

from sdtoolkit.nerfstudio_plugin import require_nerfstudio

require_nerfstudio("the nerfstudio method sdtoolkit-sds")

from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from nerfstudio.configs.base_config import ViewerConfig  # noqa: E402
from nerfstudio.data.datamanagers.random_cameras_datamanager import (  # noqa: E402
    RandomCamerasDataManager,
    RandomCamerasDataManagerConfig,
)
from nerfstudio.engine.optimizers import AdamOptimizerConfig  # noqa: E402
from nerfstudio.engine.trainer import TrainerConfig  # noqa: E402
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig  # noqa: E402
from nerfstudio.plugins.types import MethodSpecification  # noqa: E402

from sdtoolkit.nerfstudio_plugin.model import SDSModelConfig  # noqa: E402


class RandomViewsDataManager(RandomCamerasDataManager):
    """nerfstudio's random-camera data manager (no images), with a data path: `ns-viewer` saves camera paths under
    it and fails on nerfstudio's own, which has none."""

    def get_datapath(self) -> Path:
        return Path(".")


@dataclass
class RandomViewsDataManagerConfig(RandomCamerasDataManagerConfig):
    _target: type = field(default_factory=lambda: RandomViewsDataManager)


sdtoolkit_sds = MethodSpecification(
    config=TrainerConfig(
        method_name="sdtoolkit-sds",
        experiment_name="",
        steps_per_eval_batch=0,
        steps_per_eval_image=500,
        steps_per_eval_all_images=1000000,
        steps_per_save=500,
        max_num_iterations=2000,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=RandomViewsDataManagerConfig(
                train_resolution=64,
                eval_resolution=64,
                radius_mean=2.8,
                radius_std=0.1,
                focal_range=(1.2, 1.6),
                vertical_rotation_range=(-85.0, 10.0),
                jitter_std=0.0,
            ),
            model=SDSModelConfig(eval_num_rays_per_chunk=1 << 14),
        ),
        optimizers={
            "fields": {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": None},
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    ),
    description="sdtoolkit text-to-3D: score distillation (SDS) with an sdtoolkit prior on an sdtoolkit NeRF",
)
