"""sdtoolkit inside nerfstudio (https://docs.nerf.studio), an optional dependency:

- `sdtoolkit.nerfstudio_plugin.teacher`: a nerfstudio run (nerfacto, tensorf, vanilla-nerf, instant-ngp) as the
  teacher of `sdtoolkit convert-nerf` (PVD), so that a nerfstudio scene converts to sdtoolkit's representations;
- `sdtoolkit.nerfstudio_plugin.method`: text-to-3D (SDS with an sdtoolkit prior on an sdtoolkit NeRF) registered as
  the nerfstudio method `sdtoolkit-sds` through the `nerfstudio.method_configs` entry point, so that
  `ns-train sdtoolkit-sds` trains it with nerfstudio's trainer and viewer.

Nothing here imports nerfstudio at import time: sdtoolkit works without it. The install that works beside the CPU
torch 2.13.0 wheel is `NERFSTUDIO_INSTALL` (nerfstudio's own requirements pin numpy < 2 and protobuf 3.20 and pull a
CUDA torch). PyPI's torchvision wheels are CUDA builds whose C++ ops cannot load beside the CPU torch wheel, and
torchvision 0.28 then fails to import at all (it registers fake kernels for `torchvision::nms` / `qnms`
unconditionally); `allow_torchvision_without_ops` lets its Python parts (the only ones nerfstudio uses:
`torchvision.utils`, `transforms.functional.resize`) import in that case.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

NERFSTUDIO_VERSION = "1.1.5"
"""The nerfstudio release this plugin is written and tested against."""
NERFSTUDIO_INSTALL = (
    f"pip install --no-deps nerfstudio=={NERFSTUDIO_VERSION} && pip install nerfacc==0.5.2 tyro matplotlib "
    "opencv-python-headless==4.10.0.84 viser==0.2.7 tensorboard torchmetrics"
)
"""The install of nerfstudio's models and fields beside sdtoolkit that keeps the CPU torch 2.13.0 wheel and numpy 2
(measured 2026-12-01; nerfstudio's trainer and viewer need torchvision besides)."""

_torchvision_ops_library = None  # keeps the declared op schemas alive (a torch.library.Library is freed with them)


def allow_torchvision_without_ops() -> bool:
    """When torchvision is installed but its C++ extension cannot load (PyPI's CUDA build beside the CPU torch
    wheel: `operator torchvision::nms does not exist` on `import torchvision`), declares the schemas of the two ops
    torchvision 0.28 registers fake kernels for unconditionally, so that `import torchvision` succeeds with
    `torchvision.extension._has_ops()` False: its Python parts work, and its C++ ops (`torchvision.ops.nms`, ...)
    raise torchvision's own "Couldn't load custom C++ ops". Returns whether it declared them. Call it before
    anything imports torchvision; it does nothing when torchvision is absent, already imported or loads its ops."""
    global _torchvision_ops_library
    import sys

    if _torchvision_ops_library is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    libraries = sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so"))
    try:
        for library in libraries[:1]:
            torch.ops.load_library(str(library))
        return False
    except (OSError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_ops_library = library
    return True


def nerfstudio_available() -> bool:
    """Whether nerfstudio is installed (without importing it)."""
    return importlib.util.find_spec("nerfstudio") is not None


def require_nerfstudio(purpose: str) -> None:
    """Raises ImportError (one line: what needs it and how to install it) when nerfstudio is not installed;
    otherwise prepares torchvision (`allow_torchvision_without_ops`) for nerfstudio's imports."""
    if not nerfstudio_available():
        raise ImportError(f"{purpose} needs nerfstudio {NERFSTUDIO_VERSION}: {NERFSTUDIO_INSTALL}")
    allow_torchvision_without_ops()


ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"


def _offline() -> bool:
    """Whether the process was told not to touch the network (huggingface_hub's variable, which the test suite and
    the toolkit's offline users set)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def allow_lpips_offline() -> bool:
    """nerfstudio's models (nerfacto, tensorf, vanilla-nerf, ...) build torchmetrics' LPIPS in `populate_modules`,
    which downloads torchvision's AlexNet weights on first use: offline and not cached, `ns-train nerfacto` dies
    with a URLError before training. After this call, an LPIPS whose weights cannot be fetched warns once (naming
    the file to download) and scores NaN; training and the other metrics are unaffected. With the weights cached,
    or online, LPIPS is torchmetrics' own; with HF_HUB_OFFLINE set and the weights not cached no download is tried
    at all. Returns whether it patched (False where torchmetrics is absent)."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("torchmetrics") is None:
        return False
    import torch
    from torchmetrics.image import lpip

    original = lpip.LearnedPerceptualImagePatchSimilarity
    if getattr(original, "_sdtoolkit_offline", False):
        return True

    class NaNMetric(torch.nn.Module):
        """LPIPS without its network: NaN for every image pair."""

        def forward(self, *args, **kwargs):
            return torch.tensor(float("nan"))

    def nan_metric(reason: str) -> NaNMetric:
        warnings.warn(
            f"LPIPS is NaN in this run: its AlexNet weights are not cached and {reason}; put {ALEXNET_WEIGHTS} "
            f"(torchvision's AlexNet weights) in {os.path.join(torch.hub.get_dir(), 'checkpoints')} to enable it",
            stacklevel=3,
        )
        return NaNMetric()

    def lpips_or_nan(*args, **kwargs):
        weights = os.path.join(torch.hub.get_dir(), "checkpoints", ALEXNET_WEIGHTS)  # where torchvision looks now
        if _offline() and not os.path.exists(weights):
            return nan_metric("this process is offline (HF_HUB_OFFLINE), so no download was tried")
        try:
            return original(*args, **kwargs)
        except OSError as error:  # URLError (offline) is an OSError
            return nan_metric(f"could not be downloaded ({str(error).splitlines()[0][:120]})")

    lpips_or_nan._sdtoolkit_offline = True
    lpip.LearnedPerceptualImagePatchSimilarity = lpips_or_nan
    return True


def numpy_scalars_allowed():
    """A context in which torch's weights-only `torch.load` (the default since torch 2.6) also accepts the numpy
    scalars nerfstudio's own checkpoints hold (their schedulers' states): nerfstudio 1.1.5 calls `torch.load`
    without allowing them, so without this its viewer and `--load-dir` resume failed on every nerfacto or tensorf
    run (`UnpicklingError: Unsupported global: numpy._core.multiarray.scalar`). Data only: the scalar rebuilder and
    dtype classes, as `convert-nerf` allows when it reads the same checkpoints."""
    import numpy as np
    import torch

    names = ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType")
    dtypes = [getattr(np.dtypes, name) for name in names if hasattr(np.dtypes, name)]
    return torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, *dtypes])


def ns_train() -> None:
    """`sdtoolkit-ns-train`: nerfstudio's `ns-train`, with torchvision prepared first (see the module docstring),
    LPIPS allowed to be missing offline (`allow_lpips_offline`), its viewer's cameras opened outside the scene
    (`open_viewer_outside_the_scene`), and its own checkpoints loadable for `--load-dir` (`numpy_scalars_allowed`)."""
    require_nerfstudio("sdtoolkit-ns-train")
    allow_lpips_offline()
    open_viewer_outside_the_scene()
    from nerfstudio.scripts.train import entrypoint

    with numpy_scalars_allowed():
        entrypoint()


VIEW_DIRECTION = (1.0, -1.0, 0.6)
"""Direction from the scene box's centre to where `sdtoolkit-ns-viewer` opens a browser's camera (+z up)."""
VIEW_DISTANCE = 1.6
"""That camera's distance from the centre, in half diagonals of the scene box."""


def open_viewer_outside_the_scene() -> None:
    """viser opens every browser's camera at (-3, 3, -3) in its units, which nerfstudio divides by 10: 0.5 scene
    units from the origin, inside an object-centred scene (sdtoolkit-sds's [-1, 1]^3, a Blender scene's
    [-1.5, 1.5]^3), so the page shows the inside of the object: one flat colour. After this call nerfstudio's
    viewer puts each newly connected browser's camera outside the model's scene box, looking at its centre from
    `VIEW_DIRECTION` at `VIEW_DISTANCE` half diagonals, +z up; the user moves it as before."""
    import numpy as np
    from nerfstudio.viewer import viewer as ns_viewer_module

    original = ns_viewer_module.Viewer.handle_new_client
    if getattr(original, "_sdtoolkit_outside", False):
        return

    def handle_new_client(self, client) -> None:
        original(self, client)
        aabb = getattr(getattr(self.pipeline.model, "scene_box", None), "aabb", None)
        if aabb is None:
            return
        aabb = aabb.detach().cpu().double().numpy()
        centre, half_diagonal = aabb.mean(0), np.linalg.norm(aabb[1] - aabb[0]) / 2
        direction = np.asarray(VIEW_DIRECTION) / np.linalg.norm(VIEW_DIRECTION)
        scale = ns_viewer_module.VISER_NERFSTUDIO_SCALE_RATIO
        client.camera.up_direction = (0.0, 0.0, 1.0)
        client.camera.position = tuple(scale * (centre + VIEW_DISTANCE * half_diagonal * direction))
        client.camera.look_at = tuple(scale * centre)

    handle_new_client._sdtoolkit_outside = True
    ns_viewer_module.Viewer.handle_new_client = handle_new_client


def ns_viewer() -> None:
    """`sdtoolkit-ns-viewer`: nerfstudio's `ns-viewer`, with torchvision prepared first, LPIPS allowed to be
    missing offline, each browser's camera opened outside the scene (`open_viewer_outside_the_scene`), the run's
    checkpoint loadable (`numpy_scalars_allowed`), and `--load-config` given a run folder taken as its
    config.yml (a missing one is one line, not a traceback)."""
    require_nerfstudio("sdtoolkit-ns-viewer")
    _load_config_argument(sys.argv)
    allow_lpips_offline()
    open_viewer_outside_the_scene()
    from nerfstudio.scripts.viewer.run_viewer import entrypoint

    with numpy_scalars_allowed():
        entrypoint()


def _load_config_argument(argv: list[str]) -> None:
    """`--load-config RUN_FOLDER` -> `RUN_FOLDER/config.yml` in place; a path that is neither exits with one line
    (status 2) naming what is expected."""
    for i, arg in enumerate(argv):
        key, _, inline = arg.partition("=")
        if key not in ("--load-config", "--load_config"):
            continue
        index, value = (i, inline) if inline else (i + 1, argv[i + 1] if i + 1 < len(argv) else "")
        path = Path(value)
        if path.is_dir() and (path / "config.yml").is_file():
            path = path / "config.yml"
        if not path.is_file():
            print(
                f"sdtoolkit-ns-viewer: error: --load-config {value!r}: no config.yml there; give the config.yml of a "
                "run (outputs/EXPERIMENT/METHOD/TIMESTAMP/config.yml) or that run's folder",
                file=sys.stderr,
            )
            raise SystemExit(2)
        argv[index] = f"{key}={path}" if inline else str(path)
