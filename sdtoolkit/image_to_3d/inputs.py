"""Reference views of an image-to-3D run: cut-out images (RGBA, or RGB with a mask file) and their cameras.

What is expected (background removal is out of scope; cut the object out first, e.g. with rembg or SAM):

- square images, all the same size, the object cut out: an alpha channel, or a mask file per image (white = object,
  same size as its image); the object centred and framed like the camera says;
- a cameras file (JSON) giving each image's camera in the world's orbit convention (`sdtoolkit.data.cameras`:
  azimuth 0 = on the +x axis, the front; elevation above the xy-plane; distance to the object's centre; vertical
  field of view), either a list of views or an object

      {"approximate": true,
       "views": [{"image": "front.png", "azimuth": 0, "elevation": 0, "distance": 2.8, "fov": 40, "mask": null}]}

  Views match images by file name when every view names one ("image"), by order otherwise. A missing value takes
  the default below; `"approximate": true` marks the poses as estimates, which turns pose refinement on by default.
- a single image needs no cameras file: it is a front view at elevation 0 and azimuth 0 (threestudio's image-
  conditioned configs: `default_elevation_deg: 0`, `default_azimuth_deg: 0`) at this world's default distance 2.8
  and field of view 40 degrees (the builtin prior's training renders; threestudio uses 3.8 and 20 for Zero123).

Everything is checked before a run writes anything; every problem is one line naming the file and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.data.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, Cameras, wrap_azimuth_deg
from sdtoolkit.data.shapes import BOUNDING_RADIUS

DEFAULT_VIEW = {"azimuth": 0.0, "elevation": 0.0, "distance": DEFAULT_DISTANCE, "fov": DEFAULT_FOV_DEG}
"""The camera of a view whose values are not given (a single front image without a cameras file)."""
VIEW_KEYS = ("image", "mask", "azimuth", "elevation", "distance", "fov")
"""The keys a view of the cameras file may have."""
MIN_DISTANCE = BOUNDING_RADIUS
"""Cameras must sit outside the object's bounding sphere (the shapes fit in radius 0.75)."""


class InputError(ValueError):
    """Bad reference images or cameras; one line per problem."""


@dataclass
class References:
    """N reference views: straight (not premultiplied) colours, their masks and cameras."""

    images: Float[Tensor, "N 3 H W"]
    """RGB in [0, 1], not premultiplied by the mask."""
    masks: Float[Tensor, "N 1 H W"]
    """Object coverage in [0, 1] (the alpha channel or the mask file)."""
    cameras: Cameras
    """Each view's camera (world convention of `sdtoolkit.data.cameras`)."""
    approximate: bool = False
    """Whether the poses are estimates (turns pose refinement on by default)."""
    names: tuple[str, ...] = ()
    """Where each view came from (file names, for messages and summaries)."""

    def __len__(self) -> int:
        return self.images.shape[0]

    def composite(self, background: tuple[float, float, float] | Tensor) -> Float[Tensor, "N 3 H W"]:
        """The target colours over `background`: m rgb + (1 - m) bg (threestudio's `gt_rgb` of its zero123 system)."""
        bg = torch.as_tensor(background, dtype=self.images.dtype).reshape(1, 3, 1, 1)
        return self.images * self.masks + bg * (1 - self.masks)

    def resized(self, resolution: int) -> References:
        """The views downsampled to `resolution` by area averaging (the colours weighted by coverage)."""
        if resolution == self.images.shape[-1]:
            return self
        masks = F.interpolate(self.masks, size=(resolution, resolution), mode="area")
        weighted = F.interpolate(self.images * self.masks, size=(resolution, resolution), mode="area")
        plain = F.interpolate(self.images, size=(resolution, resolution), mode="area")
        images = torch.where(masks > 1e-6, weighted / masks.clamp_min(1e-6), plain).clamp(0, 1)
        return References(images, masks, self.cameras, self.approximate, self.names)


# ------------------------------------------------------------------------------------------------- cameras file


def parse_cameras(data, images: list[str], source: str = "cameras") -> tuple[list[dict], bool]:
    """One camera dict per image (keys `VIEW_KEYS`, defaults filled) from a parsed cameras file, and whether the
    poses are approximate. `data` None: the single-front-image default. Raises `InputError`, one line per problem."""
    if data is None:
        if len(images) != 1:
            raise InputError(
                f"{len(images)} images need a cameras file (--cameras cams.json) giving each one's azimuth, "
                "elevation, distance and fov; only a single image defaults to a front view"
            )
        return [dict(DEFAULT_VIEW, image=images[0], mask=None)], False
    approximate = False
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"views", "approximate"})
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: views, approximate")
        approximate = data.get("approximate", False)
        if not isinstance(approximate, bool):
            raise InputError(f"{source}: approximate = {json.dumps(approximate)}: expected true or false")
        data = data.get("views")
    if not isinstance(data, list) or not all(isinstance(v, dict) for v in data):
        raise InputError(f'{source}: expected a list of views (objects) or {{"views": [...]}}')
    if len(data) != len(images):
        raise InputError(f"{source} describes {len(data)} view(s) but {len(images)} image(s) were given")
    lines = []
    named = all("image" in v for v in data)
    if named:
        by_name = {}
        for view in data:
            by_name.setdefault(Path(str(view["image"])).name, []).append(view)
        given = [Path(p).name for p in images]
        for name in given:
            if len(by_name.get(name, [])) != 1:
                lines.append(
                    f"{source}: image {name!r} is named by {len(by_name.get(name, []))} views (need exactly one); "
                    f"the views name {', '.join(sorted(by_name))}"
                )
        if lines:
            raise InputError("\n".join(lines))
        data = [by_name[name][0] for name in given]
    views = []
    for index, (view, image) in enumerate(zip(data, images)):
        where = f"{source} view {index} ({Path(image).name})"
        unknown = sorted(set(view) - set(VIEW_KEYS))
        if unknown:
            lines.append(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(VIEW_KEYS)}")
            continue
        out = dict(DEFAULT_VIEW, image=image, mask=view.get("mask"))
        for key in ("azimuth", "elevation", "distance", "fov"):
            value = view.get(key, DEFAULT_VIEW[key])
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                lines.append(f"{where}: {key} = {json.dumps(value)}: expected a finite number")
                continue
            out[key] = float(value)
        problem = _camera_problem(out)
        if problem:
            lines.append(f"{where}: {problem}")
        views.append(out)
    if lines:
        raise InputError("\n".join(lines))
    return views, approximate


def _camera_problem(view: dict) -> str | None:
    if not isinstance(view["elevation"], float) or not -90 < view["elevation"] < 90:
        return f"elevation = {view['elevation']}: must be in (-90, 90) degrees"
    if not isinstance(view["distance"], float) or not view["distance"] > MIN_DISTANCE:
        return f"distance = {view['distance']}: must be > {MIN_DISTANCE} (outside the object's bounding sphere)"
    if not isinstance(view["fov"], float) or not 1 <= view["fov"] <= 179:
        return f"fov = {view['fov']}: must be in [1, 179] degrees"
    return None


def read_cameras_file(path: str | Path | None):
    """The parsed JSON of a cameras file (None when no file is given); `InputError` if missing or not JSON."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise InputError(f"cameras file {str(path)!r}: no such file")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"cameras file {str(path)!r}: not valid JSON ({error})") from None


def cameras_of(views: list[dict]) -> Cameras:
    """The `Cameras` of parsed views (azimuths wrapped to [-180, 180))."""

    def column(key: str) -> Tensor:
        return torch.tensor([v[key] for v in views], dtype=torch.float32)

    return Cameras(wrap_azimuth_deg(column("azimuth")), column("elevation"), column("distance"), column("fov"))


# ------------------------------------------------------------------------------------------------- images


def _read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"image {str(path)!r}: no such file")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"image {str(path)!r}: not a readable image ({error})") from None
    return image


def _to_tensor(image) -> Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def load_view(image_path: str | Path, mask_path: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """(rgb [3, H, W], mask [1, H, W]) of one view: the alpha channel, or the mask file (its luminance; or its
    alpha when it has one). An RGB image without a mask is refused: the object must be cut out."""
    path = Path(image_path)
    image = _read_image(path)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if mask_path is None and not has_alpha:
        raise InputError(
            f"image {str(path)!r} has no alpha channel and no mask was given: cut the object out first (an RGBA "
            'image, or an RGB image with a mask file via --masks or the view\'s "mask"); background removal is out '
            "of scope"
        )
    rgba = _to_tensor(image.convert("RGBA"))
    rgb, mask = rgba[..., :3].permute(2, 0, 1).contiguous(), rgba[..., 3][None]
    if mask_path is not None:
        mask_image = _read_image(Path(mask_path))
        if mask_image.size != image.size:
            raise InputError(
                f"mask {str(mask_path)!r} is {mask_image.size[0]}x{mask_image.size[1]} but its image {str(path)!r} "
                f"is {image.size[0]}x{image.size[1]}; they must match"
            )
        if mask_image.mode in ("RGBA", "LA"):
            mask = _to_tensor(mask_image.getchannel("A"))[None]
        else:
            mask = _to_tensor(mask_image.convert("L"))[None]
    return rgb, mask


def load_references(
    images: list[str | Path],
    cameras: str | Path | dict | list | None = None,
    masks: list[str | Path | None] | None = None,
    resolution: int = 64,
) -> References:
    """Reads and checks reference views: `images` (RGBA, or RGB with `masks` or each view's "mask"), `cameras` (a
    path to the cameras file, its parsed JSON, or None for one front image). Images must be square, all the same
    size, and that size a multiple of `resolution` (the reference render's side; they are area-downsampled to it).
    Raises `InputError`, one line per problem; writes nothing."""
    if not images:
        raise InputError("no reference image given")
    names = [str(p) for p in images]
    data = read_cameras_file(cameras) if isinstance(cameras, (str, Path)) else cameras
    source = f"cameras file {str(cameras)!r}" if isinstance(cameras, (str, Path)) else "cameras"
    views, approximate = parse_cameras(data, names, source)
    if masks is not None and len(masks) != len(images):
        raise InputError(f"{len(masks)} mask(s) given for {len(images)} image(s); give one per image, in order")
    rgbs, alphas, lines = [], [], []
    for index, view in enumerate(views):
        mask = masks[index] if masks is not None else view.get("mask")
        if mask is not None and masks is None and isinstance(cameras, (str, Path)) and not Path(mask).is_file():
            mask = Path(cameras).parent / mask  # a view's "mask" may be relative to the cameras file
        rgb, alpha = load_view(view["image"], mask)
        rgbs.append(rgb), alphas.append(alpha)
    sizes = [tuple(r.shape[1:]) for r in rgbs]
    for name, (height, width), alpha in zip(names, sizes, alphas):
        if height != width:
            lines.append(f"image {name!r} is {width}x{height}: reference images must be square")
        elif height < resolution or height % resolution:
            lines.append(
                f"image {name!r} is {width}x{height}: its side must be a multiple of the reference resolution "
                f"{resolution} (resize it to {resolution * max(height // resolution, 1)} px, or use a reference "
                f"resolution that divides {height})"
            )
        elif sizes[0] != (height, width):
            lines.append(f"image {name!r} is {width}x{height} but {names[0]!r} is {sizes[0][1]}x{sizes[0][0]}")
        elif float(alpha.max()) < 0.5:
            lines.append(f"image {name!r}: its mask is empty (no pixel covers the object)")
        elif float(alpha.min()) > 0.5:
            lines.append(f"image {name!r}: its mask covers the whole image (no background): cut the object out first")
    if lines:
        raise InputError("\n".join(lines))
    references = References(
        torch.stack(rgbs), torch.stack(alphas), cameras_of(views), approximate, tuple(Path(n).name for n in names)
    )
    return references.resized(resolution)


# ------------------------------------------------------------------------------------------------- shapes references


def shapes_references(shape: str, colour: str, cameras: Cameras, resolution: int = 64, supersample: int = 2):
    """Reference views of a procedural shape (`sdtoolkit.data.render`), for tests and benchmarks: straight colours
    and the anti-aliased coverage (the silhouette at `supersample`^2 rays per pixel, averaged) as the mask."""
    from sdtoolkit.data.render import render, render_silhouette
    from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES

    if shape not in SHAPES or colour not in COLOUR_NAMES:
        raise InputError(f"unknown shape {shape!r} or colour {colour!r}; shapes: {SHAPES}, colours: {COLOUR_NAMES}")
    n = len(cameras)
    shape_ids = torch.full((n,), SHAPES.index(shape))
    colour_ids = torch.full((n,), COLOUR_NAMES.index(colour))
    premultiplied = render(shape_ids, colour_ids, cameras, resolution, (0.0, 0.0, 0.0), supersample)
    mask = F.avg_pool2d(render_silhouette(shape_ids, cameras, resolution * supersample), supersample)
    images = torch.where(mask > 0, premultiplied / mask.clamp_min(1e-6), torch.zeros_like(premultiplied))
    return References(images.clamp(0, 1), mask, cameras, False, tuple(f"{shape}_{i}" for i in range(n)))


def save_rgba(references: References, folder: str | Path, stem: str = "view") -> list[Path]:
    """Writes each view as an RGBA PNG `<stem>_<i>.png` (straight alpha) and returns the paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(references)):
        rgba = torch.cat([references.images[index], references.masks[index]]).permute(1, 2, 0)
        path = folder / f"{stem}_{index}.png"
        Image.fromarray((rgba * 255).round().byte().numpy(), "RGBA").save(path)
        paths.append(path)
    return paths


def cameras_json(cameras: Cameras, images: list[str | Path], approximate: bool = False) -> dict:
    """The cameras file of `cameras` for `images` (the inverse of `parse_cameras`)."""
    views = [
        {"image": Path(p).name, "azimuth": a, "elevation": e, "distance": d, "fov": f}
        for p, a, e, d, f in zip(
            images,
            cameras.azimuth_deg.tolist(),
            cameras.elevation_deg.tolist(),
            cameras.distance.tolist(),
            cameras.fov_deg.tolist(),
        )
    ]
    return {"approximate": approximate, "views": views}
