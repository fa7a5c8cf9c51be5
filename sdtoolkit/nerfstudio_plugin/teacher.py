"""A nerfstudio run as the teacher of `sdtoolkit convert-nerf` (PVD, `sdtoolkit.nerf.pvd`).

TEACHER is the run's folder (`outputs/EXPERIMENT/METHOD/TIMESTAMP`, where `ns-train` writes `config.yml`,
`nerfstudio_models/step-*.ckpt` and `dataparser_transforms.json`), its `config.yml`, or one of its `.ckpt` files
(the newest step by default). Nothing in it runs code:

- the checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only, plus numpy's
  scalars and dtypes: ns-train's scheduler states hold numpy floats);
- `config.yml` is the trainer config nerfstudio dumps with Python object tags (`!!python/object:...`); it is parsed
  with a safe YAML loader that turns every tagged object into a plain mapping, and only the method name and the
  model's plain settings (numbers, strings, booleans, lists of them) are read from it. The model is rebuilt from
  nerfstudio's own config class for that method (`TEACHER_METHODS`) and the run's field weights are loaded into it.

The teacher's field is wrapped as an sdtoolkit field (`NerfstudioField`) inside an sdtoolkit `NeRF` (collider,
sampler, occupancy grid), so PVD queries it at its own sample points like any other teacher. A nerfacto teacher
samples its rays with nerfacto's own proposal sampler (`ProposalSampledNeRF`): its field is trained only where
those samples fall. Differences from an sdtoolkit teacher, on purpose:

- the features of a nerfstudio field are not the student's (another architecture and width), so there is no
  feature stage: `convert` runs PVD's stages 2 and 3 (density and colour at the points, then rendered colour);
- sdtoolkit fields are view-independent (albedo); along a ray (its renders, PVD's points) the teacher's colour is
  nerfstudio's for that ray's direction (`NerfstudioField.features_along`), so a student fitted over many rays
  learns the mean over the directions they saw; at a bare point (mesh vertex colours) it is the mean over the six
  axis view directions (`VIEW_DIRECTIONS`);
- an instant-ngp run renders only the cells its nerfacc occupancy grid marks (checkpointed with the model); its
  field elsewhere holds density no render of it shows, so the teacher's density is zero outside those cells
  (`grid_occupied`). Its weights are read in nerfstudio's torch layout, as a run trained where tiny-cuda-nn is not
  installed saves them; a tiny-cuda-nn run's fused weights are another layout and are refused;
- world points map to the run's frame through `dataparser_transforms.json` (p_ns = scale (R p + t)), densities back
  by the scale (sigma = scale sigma_ns); without that file the frames are the same. sdtoolkit's frame has the object
  at the origin inside the cube [-1, 1]^3 (+z up), as the renders of `sdtoolkit.data.render` have it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sdtoolkit.nerf.colliders import RayBundle
from sdtoolkit.nerf.fields import FieldConfig
from sdtoolkit.nerf.model import NeRF, NeRFConfig

CONFIG_FILE = "config.yml"
MODELS_DIR = "nerfstudio_models"
TRANSFORMS_FILE = "dataparser_transforms.json"


@dataclass(frozen=True)
class TeacherMethod:
    """How to rebuild one nerfstudio method's model and which of its fields renders."""

    module: str
    config_class: str
    field: str
    """Attribute of the model holding the field that renders (vanilla-nerf: the fine one)."""


TEACHER_METHODS = {
    "nerfacto": TeacherMethod("nerfstudio.models.nerfacto", "NerfactoModelConfig", "field"),
    "tensorf": TeacherMethod("nerfstudio.models.tensorf", "TensoRFModelConfig", "field"),
    "vanilla-nerf": TeacherMethod("nerfstudio.models.vanilla_nerf", "VanillaModelConfig", "field_fine"),
    "instant-ngp": TeacherMethod("nerfstudio.models.instant_ngp", "InstantNGPModelConfig", "field"),
}
"""nerfstudio methods `convert-nerf` accepts as teachers (`method_name` in the run's config.yml)."""

VIEW_DIRECTIONS = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
"""The view directions the teacher's colour is averaged over (world frame)."""


def is_nerfstudio_run(path: Path) -> bool:
    """Whether `path` looks like a nerfstudio run (its folder, config.yml or a .ckpt), without reading it."""
    if path.is_file():
        return path.suffix == ".ckpt" or path.name == CONFIG_FILE
    return path.is_dir() and ((path / MODELS_DIR).is_dir() or (path / CONFIG_FILE).is_file())


# ------------------------------------------------------------------------------------------------- config.yml


def _safe_yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that reads nerfstudio's `!!python/...` tags as plain data and never imports or calls."""

    def plain(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            values = loader.construct_sequence(node, deep=True)
            if suffix.startswith("object/apply:pathlib"):
                return str(Path(*values)) if values else ""
            return values
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    return Loader


def read_run_config(path: Path) -> dict:
    """The run's config.yml as plain dicts and lists (safe: nothing is imported or called)."""
    import yaml

    try:
        data = yaml.load(path.read_text(), Loader=_safe_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{CONFIG_FILE} is not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("method_name"), str):
        raise ValueError(f"{CONFIG_FILE} has no method_name: it is not a nerfstudio trainer config")
    return data


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------------------- the field


class NerfstudioField(nn.Module):
    """A nerfstudio field seen as an sdtoolkit field (the methods `NeRF` and PVD call). Its "features" are the raw
    outputs [log sigma, colour logits] (decode is the identity); `comparable_features` False tells PVD that they
    are not the student's features."""

    comparable_features = False

    def __init__(
        self,
        field: nn.Module,
        transform: Tensor,
        scale: float,
        config: FieldConfig | None = None,
        occupancy: tuple[Tensor, Tensor] | None = None,
    ):
        super().__init__()
        self.ns_field = field.eval().requires_grad_(False)
        self.config = config or FieldConfig()
        self.region_prior = None
        self.register_buffer("transform", transform.float(), persistent=False)  # [3, 4] world -> run frame
        self.scale = float(scale)
        # the run's own nerfacc occupancy grid (binaries [L, X, Y, Z], level boxes [L, 6], run frame), for a method
        # that renders through one (instant-ngp): its density counts only in the cells that grid marks
        cells, boxes = (None, None) if occupancy is None else (occupancy[0].bool(), occupancy[1].float())
        self.register_buffer("ns_cells", cells, persistent=False)
        self.register_buffer("ns_boxes", boxes, persistent=False)

    def _samples(self, positions: Tensor, directions: Tensor):
        from nerfstudio.cameras.rays import Frustums, RaySamples

        n = len(positions)  # one sample on each of n rays: the [rays, samples] layout every nerfstudio field takes
        zeros = positions.new_zeros(n, 1, 1)
        frustums = Frustums(positions[:, None], directions[:, None], zeros, zeros, positions.new_ones(n, 1, 1))
        return RaySamples(frustums=frustums, camera_indices=torch.zeros(n, 1, 1, dtype=torch.long))

    @torch.no_grad()
    def _query(
        self, positions: Tensor, colour: bool = True, directions: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(sigma in world units [N], colour [N, 3] or None) at world points: the colour seen along `directions`
        ([N, 3], world frame), or without them its mean over the six axis directions."""
        from nerfstudio.field_components.field_heads import FieldHeadNames

        rotation, translation = self.transform[:, :3], self.transform[:, 3]
        points = self.scale * (positions @ rotation.T + translation)
        if directions is None:
            axes = torch.nn.functional.normalize(VIEW_DIRECTIONS.to(points) @ rotation.T, dim=-1)
            views = [axis.expand(len(points), 3) for axis in axes]
        else:
            views = [torch.nn.functional.normalize(directions.to(points) @ rotation.T, dim=-1)]
        out = self.ns_field.get_density(self._samples(points, views[0]))
        density, embedding = out if isinstance(out, tuple) else (out, None)
        sigma = density.reshape(-1) * self.scale
        if self.ns_cells is not None:
            sigma = sigma * grid_occupied(self.ns_cells, self.ns_boxes, points)
        if not colour:
            return sigma, None
        colours = []
        for view in views:
            rgb = self.ns_field.get_outputs(self._samples(points, view), density_embedding=embedding)
            colours.append(rgb[FieldHeadNames.RGB] if isinstance(rgb, dict) else rgb)
        return sigma, torch.stack(colours).mean(0).reshape(-1, 3)

    def features(self, positions: Tensor, directions: Tensor | None = None) -> Tensor:
        """[log sigma (world units), 3 colour logits] at world points: `[N, 4]`; the colour along `directions` (a
        ray's, `features_along`) or averaged over the six axis directions."""
        if not len(positions):
            return positions.new_zeros(0, 4)
        sigma, rgb = self._query(positions, directions=directions)
        logits = torch.logit(rgb.clamp(1e-4, 1 - 1e-4))
        return torch.cat([torch.log(sigma.clamp_min(1e-30))[:, None], logits], dim=-1)

    def features_along(self, positions: Tensor, directions: Tensor) -> Tensor:
        """`features` with the colour seen along each point's ray: what the teacher's own renders show. PVD and
        `NeRF.render_rays` call this for a view-dependent field; a view-independent student fitted to it learns the
        mean over the directions the rays saw (the six-axis mean also counts directions from behind a surface, which
        no training ray saw)."""
        return self.features(positions, directions)

    def forward_along(self, positions: Tensor, directions: Tensor) -> dict[str, Tensor]:
        raw = self.features_along(positions, directions)
        return {"density": self.activate_density(raw, positions), "rgb": torch.sigmoid(raw[..., 1:4])}

    def decode(self, features: Tensor) -> Tensor:
        return features

    def log_density(self, raw: Tensor, positions: Tensor) -> Tensor:
        return raw[..., 0]

    def activate_density(self, raw: Tensor, positions: Tensor) -> Tensor:
        inside = (positions.abs() <= self.config.bound).all(-1)
        return torch.exp(raw[..., 0]) * inside

    def get_density(self, positions: Tensor) -> Tensor:
        if not len(positions):
            return positions.new_zeros(0)
        inside = (positions.abs() <= self.config.bound).all(-1)
        return self._query(positions, colour=False)[0] * inside

    def forward(self, positions: Tensor) -> dict[str, Tensor]:
        raw = self.features(positions)
        return {"density": self.activate_density(raw, positions), "rgb": torch.sigmoid(raw[..., 1:4])}


def grid_occupied(binaries: Tensor, aabbs: Tensor, points: Tensor) -> Tensor:
    """Whether nerfacc's occupancy grid (`OccGridEstimator`: `binaries` [L, X, Y, Z], cell (x, y, z) of level l
    spanning its share of the box `aabbs[l]` = [min xyz, max xyz], each level's box twice the last's) marks the cell
    holding each point occupied. The finest level whose box holds a point decides, as nerfacc's ray marching reads
    the grid; a point outside every box is empty. `[N]` bool."""
    resolution = torch.tensor(binaries.shape[1:], device=points.device)
    occupied = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    decided = torch.zeros_like(occupied)
    for level, box in enumerate(aabbs.to(points)):
        u = (points - box[:3]) / (box[3:] - box[:3])  # [0, 1)^3 inside the level's box
        inside = ((u >= 0) & (u < 1)).all(-1) & ~decided
        cell = torch.minimum((u.clamp(0, 1) * resolution).long(), resolution - 1)
        occupied |= inside & binaries[level][cell[:, 0], cell[:, 1], cell[:, 2]]
        decided |= inside
    return occupied


class ProposalSampledNeRF(NeRF):
    """A nerfacto teacher that samples rays as nerfacto renders them: with its proposal sampler (the proposal
    density fields of the checkpoint), not sdtoolkit's uniform samples pruned by an occupancy grid. nerfacto's field
    is trained only where its proposal sampler puts samples; elsewhere it holds density its own renders never see,
    which sdtoolkit's sampler would render (a nerfacto at 34-36 dB in nerfstudio's eval rendered at 23 dB that
    way). PVD queries the student at the teacher's own samples, so these are the samples it must see."""

    samples_partition_rays = True
    """nerfacto's samples are contiguous intervals that cover the ray: between them the teacher renders nothing, and
    inside each it renders one density. PVD supervises the student's density at uniform points along the ray
    with those values (`sdtoolkit.nerf.pvd.interval_points`), and the student builds its own occupancy grid (the
    teacher's, from nerfacto's density off its samples, means nothing)."""

    def __init__(self, config: NeRFConfig, model: nn.Module, transform: Tensor, scale: float):
        super().__init__(config)
        self.ns_model = model.eval().requires_grad_(False)
        self.register_buffer("run_transform", transform.float(), persistent=False)  # [3, 4] world -> run frame
        self.run_scale = float(scale)

    @torch.no_grad()
    def draw_samples(self, rays: RayBundle, generator: torch.Generator | None = None, stratified: bool | None = None):
        """nerfacto's proposal sampler between the collider's near and far (in the run's frame; the samples'
        distances come back in world units) and the exact densities there; `NeRF.sample_along` prunes them."""
        from nerfstudio.cameras.rays import RayBundle as NerfstudioRays

        from sdtoolkit.nerf.samplers import RaySamples

        rotation, translation, k = self.run_transform[:, :3], self.run_transform[:, 3], self.run_scale
        n = len(rays)
        bundle = NerfstudioRays(
            origins=k * (rays.origins @ rotation.T + translation),
            directions=rays.directions @ rotation.T,
            pixel_area=rays.origins.new_ones(n, 1),
            camera_indices=torch.zeros(n, 1, dtype=torch.long, device=rays.origins.device),
            nears=k * rays.nears[:, None],
            fars=k * rays.fars[:, None],
        )
        ns_samples, _, _ = self.ns_model.proposal_sampler(bundle, density_fns=self.ns_model.density_fns)
        frustums = ns_samples.frustums
        samples = RaySamples(frustums.starts[..., 0] / k, frustums.ends[..., 0] / k)
        return samples, self.exact_densities(samples.positions(rays))


def compile_hash_encodings(module: nn.Module) -> int:
    """Compiles (`torch.compile`, dynamic shapes) the pure-torch forward of every nerfstudio `HashEncoding` inside
    `module` (a nerfstudio teacher: its field's and its proposal networks' grids); returns how many. nerfstudio's
    torch implementation builds some thirty intermediate tensors per call (eight hashed corners, eight gathers,
    seven interpolations); compiled, they fuse into one loop: the same values (identical renders in the measurements
    of benchmarks/RESULTS.md, PVD eighth round), a nerfacto teacher's PVD batch 4x and its renders 5x faster on the
    CPU, after a one-time compilation of about 20 s for its three encodings (cold; inductor's code cache keeps it for
    the next process). Needs a C++ compiler on the CPU (`compile_unavailable`)."""
    from nerfstudio.field_components.encodings import HashEncoding

    count = 0
    for encoding in module.modules():
        if isinstance(encoding, HashEncoding) and encoding.tcnn_encoding is None:
            # an instance attribute shadows the method, and HashEncoding.forward calls self.pytorch_fwd
            encoding.pytorch_fwd = torch.compile(encoding.pytorch_fwd, dynamic=True)
            count += 1
    return count


def compile_unavailable(device: str) -> str | None:
    """Why `compile_hash_encodings` cannot work on `device` (None: it can): torch.compile's CPU backend compiles
    C++ and needs a compiler (inductor's own search: `CXX`, else g++); its CUDA backend needs triton."""
    if torch.device(device).type == "cuda":
        import importlib.util

        return None if importlib.util.find_spec("triton") else "torch.compile on CUDA needs triton: pip install triton"
    if torch.device(device).type != "cpu":
        return None
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as missing:  # inductor raises InvalidCxxCompiler (a RuntimeError subclass in some versions)
        return f"torch.compile on the CPU needs a C++ compiler, e.g. g++ ({str(missing).splitlines()[0][:160]})"
    return None


# ------------------------------------------------------------------------------------------------- loading


def _run_files(path: Path, error) -> tuple[Path, Path]:
    """(config.yml, checkpoint) of a run folder, its config.yml or one of its .ckpt files."""
    if path.is_file() and path.suffix == ".ckpt":
        folder = path.parent.parent if path.parent.name == MODELS_DIR else path.parent
        checkpoint = path
    else:
        folder = path.parent if path.is_file() else path
        checkpoints = sorted((folder / MODELS_DIR).glob("*.ckpt"))
        if not checkpoints:
            raise error(f"nerfstudio run {str(folder)!r} has no {MODELS_DIR}/*.ckpt (ns-train saves them there)")
        checkpoint = checkpoints[-1]
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise error(
            f"nerfstudio checkpoint {str(checkpoint)!r}: its run's {CONFIG_FILE} is missing (expected "
            f"{str(config)!r}, which ns-train writes beside {MODELS_DIR}/); it names the method and its settings"
        )
    return config, checkpoint


def _no_metric_modules():
    """The models build PSNR/SSIM/LPIPS metric modules at the end of `populate_modules` (LPIPS downloads AlexNet
    weights, and torchmetrics is slow to import). A teacher needs no metric: while the model is set up, torchmetrics
    is a stub whose metrics are empty modules (restored after)."""
    import contextlib
    import sys
    import types

    names = ("torchmetrics", "torchmetrics.functional", "torchmetrics.image", "torchmetrics.image.lpip")

    @contextlib.contextmanager
    def context():
        previous = {name: sys.modules.get(name) for name in names}
        for name in names:
            stub = types.ModuleType(name)
            stub.__path__ = []
            for metric in ("LearnedPerceptualImagePatchSimilarity", "PeakSignalNoiseRatio"):
                setattr(stub, metric, lambda *args, **kwargs: nn.Identity())
            stub.structural_similarity_index_measure = None
            sys.modules[name] = stub
        try:
            yield
        finally:
            for name, module in previous.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    return context()


def build_model(method_name: str, settings: dict, state: dict[str, Tensor]):
    """nerfstudio's model of `method_name` from its config class, with the run's plain `settings`, its scene box and
    number of images taken from the checkpoint's tensors; weights not loaded."""
    from nerfstudio.data.scene_box import SceneBox

    method = TEACHER_METHODS[method_name]
    config_class = getattr(importlib.import_module(method.module), method.config_class)
    names = {f.name for f in dataclasses.fields(config_class) if not f.name.startswith("_")}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in names and _plain(v)}
    if "implementation" in names:
        values["implementation"] = "torch"  # the CPU implementation (tcnn's weights are laid out differently)
    config = config_class(**values)
    aabb = state.get(f"{method.field}.aabb")
    scene_box = SceneBox(aabb=aabb.clone() if aabb is not None else torch.tensor([[-1.0] * 3, [1.0] * 3]))
    images = [v.shape[0] for k, v in state.items() if k.endswith("embedding_appearance.embedding.weight")]
    with _no_metric_modules():
        return config.setup(scene_box=scene_box, num_train_data=images[0] if images else 1, metadata={})


def _resize_like(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Gives every parameter and buffer the shape it has in `state` (TensoRF grows its grids while training)."""
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if name in state and state[name].shape != tensor.shape:
            tensor.data = torch.empty_like(state[name])


def load_nerfstudio_teacher(path: str | Path, device: str = "cpu", error=ValueError) -> tuple[NeRF, dict]:
    """The nerfstudio run at `path` as an sdtoolkit `NeRF` teacher, and a description of it (the "stored" config of
    `sdtoolkit.nerf.convert.load_nerf_asset`). Bad input raises `error` with one line saying what is wrong."""
    from sdtoolkit.nerfstudio_plugin import numpy_scalars_allowed, require_nerfstudio

    path = Path(path)
    try:
        require_nerfstudio(f"TEACHER {str(path)!r} (a nerfstudio run)")
    except ImportError as missing:
        raise error(str(missing)) from None
    config_path, checkpoint = _run_files(path, error)
    try:
        run_config = read_run_config(config_path)
    except ValueError as bad:
        raise error(f"nerfstudio run {str(config_path)!r}: {bad}") from None
    method_name = run_config["method_name"]
    if method_name not in TEACHER_METHODS:
        raise error(
            f"nerfstudio run {str(config_path)!r} is a {method_name!r} run; convert-nerf accepts "
            f"{', '.join(TEACHER_METHODS)}"
        )
    try:
        with numpy_scalars_allowed():
            loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as bad:  # torch raises several error types for a file that is no (safe) checkpoint
        raise error(f"{str(checkpoint)!r} is not a nerfstudio checkpoint ({str(bad).splitlines()[0][:160]})") from None
    pipeline = loaded.get("pipeline") if isinstance(loaded, dict) else None
    field_name = TEACHER_METHODS[method_name].field
    state = {}
    for key, value in (pipeline or {}).items():
        key = key[len("_model.") :] if key.startswith("_model.") else key
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    if not any(k.startswith(f"{field_name}.") for k in state):
        raise error(
            f"{str(checkpoint)!r} holds no nerfstudio {method_name} field ('pipeline' / '_model.{field_name}.*' "
            "tensors): a checkpoint of another kind"
        )
    settings = ((run_config.get("pipeline") or {}).get("model")) or {}
    model = build_model(method_name, settings if isinstance(settings, dict) else {}, state)
    field = getattr(model, field_name)
    field_state = {k[len(field_name) + 1 :]: v for k, v in state.items() if k.startswith(f"{field_name}.")}
    _resize_like(field, field_state)
    try:
        field.load_state_dict(field_state)
    except RuntimeError as bad:
        first = str(bad).splitlines()[1].strip() if len(str(bad).splitlines()) > 1 else str(bad)
        retrain = (
            "retrain it where tiny-cuda-nn is not installed (nerfstudio's instant-ngp has no implementation option)"
            if method_name == "instant-ngp"
            else "retrain with --pipeline.model.implementation torch"
        )
        raise error(
            f"{str(checkpoint)!r} does not match the {method_name} model of its {CONFIG_FILE} ({first[:200]}); a run "
            f"trained with tiny-cuda-nn (implementation 'tcnn') has another weight layout: {retrain}"
        ) from None
    transform, scale = torch.eye(3, 4), 1.0
    transforms_path = config_path.parent / TRANSFORMS_FILE
    if transforms_path.is_file():
        stored = json.loads(transforms_path.read_text())
        transform, scale = torch.tensor(stored["transform"], dtype=torch.float32)[:3], float(stored["scale"])
    if method_name == "nerfacto":  # render at nerfacto's own samples (ProposalSampledNeRF)
        proposal_state = {
            k[len("proposal_networks.") :]: v for k, v in state.items() if k.startswith("proposal_networks.")
        }
        _resize_like(model.proposal_networks, proposal_state)
        try:
            model.proposal_networks.load_state_dict(proposal_state)
        except RuntimeError as bad:
            lines = str(bad).splitlines()
            first = lines[1].strip() if len(lines) > 1 else str(bad)
            raise error(
                f"{str(checkpoint)!r}: its proposal networks do not match its {CONFIG_FILE} ({first[:200]})"
            ) from None
        nerf = ProposalSampledNeRF(NeRFConfig(), model, transform, scale)
    else:
        nerf = NeRF(NeRFConfig())
    occupancy = None
    if method_name == "instant-ngp":  # it renders only the cells its own occupancy grid marks: the teacher too
        occupancy = state.get("occupancy_grid.binaries"), state.get("occupancy_grid.aabbs")
        if occupancy[0] is None or occupancy[1] is None or occupancy[0].dim() != 4:
            raise error(
                f"{str(checkpoint)!r}: an instant-ngp checkpoint without its occupancy grid "
                "('_model.occupancy_grid.binaries' and '.aabbs'), which decides where it renders"
            )
    nerf.field = NerfstudioField(field, transform, scale, nerf.config.field, occupancy)
    nerf = nerf.to(device).eval()
    if not isinstance(nerf, ProposalSampledNeRF):  # nerfacto samples without the grid, and passes it to no student
        nerf.update_occupancy(0, force=True)
    description = {
        "nerfstudio": {
            "method": method_name,
            "checkpoint": str(checkpoint.resolve()),
            "step": int(loaded.get("step", -1)),
            "scale": scale,
        },
        "nerf": dataclasses.asdict(nerf.config),
        "background": [1.0, 1.0, 1.0],
    }
    return nerf, description
