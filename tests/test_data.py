"""Tests of the procedural shapes data: cameras, SDFs, renderer, captions and dataset."""

import math

import pytest
import torch

from sdtoolkit.data import (
    COLOUR_NAMES,
    COLOURS,
    SHAPES,
    VIEWS,
    VOCABULARY,
    Cameras,
    ShapesDataset,
    all_prompts,
    analytic_volume,
    caption,
    inside_mask,
    parse_caption,
    render,
    render_batch,
    render_silhouette,
    sample_cameras,
    sdf,
    turntable_cameras,
    view_word,
)
from sdtoolkit.data.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG
from sdtoolkit.data.cameras import orbit_cameras as cameras
from sdtoolkit.data.dataset import sample_parameters
from sdtoolkit.data.shapes import CUBE_HALF_SIZE, SPHERE_RADIUS

# ---------------------------------------------------------------------------------------------------------------
# cameras
# ---------------------------------------------------------------------------------------------------------------


def test_camera_conventions():
    cams = cameras([0.0, 90.0, 30.0], [0.0, 0.0, 45.0])
    c2w = cams.c2w()
    rotation = c2w[:, :3, :3]
    assert torch.allclose(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(3), atol=1e-5)  # right-handed
    # azimuth 0: on +x, looking down -x (camera -z), +z world is image up; azimuth 90: on +y
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([DEFAULT_DISTANCE, 0, 0]), atol=1e-5)
    assert torch.allclose(-c2w[0, :3, 2], torch.tensor([-1.0, 0, 0]), atol=1e-6)
    assert torch.allclose(c2w[0, :3, 1], torch.tensor([0.0, 0, 1]), atol=1e-6)
    assert torch.allclose(c2w[1, :3, 3], torch.tensor([0, DEFAULT_DISTANCE, 0]), atol=1e-5)
    assert c2w[2, 2, 3] == pytest.approx(DEFAULT_DISTANCE * math.sin(math.radians(45)), abs=1e-5)
    origins, directions = cams.generate_rays(8, 8)
    assert origins.shape == directions.shape == (3, 8, 8, 3)
    assert torch.allclose(directions.norm(dim=-1), torch.ones(3, 8, 8), atol=1e-6)
    # the four central rays surround the direction to the origin; the top row looks up (+z at elevation 0)
    centre = directions[:, 3:5, 3:5].mean(dim=(1, 2))
    to_origin = -c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    assert torch.allclose(centre / centre.norm(dim=-1, keepdim=True), to_origin, atol=1e-5)
    assert directions[0, 0, :, 2].min() > 0 and directions[0, -1, :, 2].max() < 0
    # image right at azimuth 0 is +y (counter-clockwise azimuth seen from above)
    assert directions[0, :, -1, 1].min() > 0 and directions[0, :, 0, 1].max() < 0


def test_camera_batch_helpers():
    cams = sample_cameras(6, torch.Generator().manual_seed(0))
    assert len(cams) == 6 and len(cams[2:4]) == 2 and len(cams[0]) == 1
    assert cams.to("cpu").azimuth_deg.device.type == "cpu"
    assert ((cams.elevation_deg >= -10) & (cams.elevation_deg <= 60)).all()
    turntable = turntable_cameras(4, elevation_deg=10.0)
    assert turntable.azimuth_deg.tolist() == [0.0, 90.0, -180.0, -90.0]
    with pytest.raises(ValueError, match="same shape"):
        Cameras(torch.zeros(2), torch.zeros(3), torch.ones(2), torch.ones(2))


def test_view_word_follows_dreamfusion_thresholds():
    azimuth = [0.0, 44.9, 45.1, -44.9, 90.0, 134.9, 135.1, -135.1, 180.0, 200.0, 0.0, 170.0]
    elevation = [0.0] * 10 + [60.5, 59.9]
    expected = ["front", "front", "side", "front", "side", "side", "back", "back", "back", "back", "overhead", "back"]
    assert view_word(torch.tensor(azimuth), torch.tensor(elevation)) == expected
    assert view_word(30.0, 61.0) == ["overhead"]


# ---------------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------------


def test_sdf_volumes_match_analytic_volumes():
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(1, 200_000, 3, generator=generator) * 2 - 1) * 0.8  # cube of side 1.6 holds every shape
    for index, name in enumerate(SHAPES):
        volume = inside_mask(torch.tensor([index]), points).float().mean().item() * 1.6**3
        assert volume == pytest.approx(analytic_volume(name), rel=0.02), name
    with pytest.raises(ValueError, match="sphere"):
        analytic_volume("pyramid")


def test_sdf_values_and_batching():
    points = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0.9]]]).expand(2, 3, 3)
    values = sdf(torch.tensor([0, 1]), points)
    assert torch.allclose(values[0], torch.tensor([-SPHERE_RADIUS, 1 - SPHERE_RADIUS, 0.9 - SPHERE_RADIUS]))
    assert torch.allclose(values[1], torch.tensor([-CUBE_HALF_SIZE, 1 - CUBE_HALF_SIZE, 0.9 - CUBE_HALF_SIZE]))
    # exact SDFs have unit gradient almost everywhere
    p = (torch.rand(len(SHAPES), 500, 3) * 2 - 1).requires_grad_(True)
    (gradient,) = torch.autograd.grad(sdf(torch.arange(len(SHAPES)), p).sum(), p)
    assert torch.allclose(gradient.norm(dim=-1), torch.ones(len(SHAPES), 500), atol=1e-4)
    with pytest.raises(ValueError, match="shape ids"):
        sdf(torch.tensor([7]), points[:1])


# ---------------------------------------------------------------------------------------------------------------
# renderer
# ---------------------------------------------------------------------------------------------------------------


def test_render_is_deterministic_and_in_range():
    cams = sample_cameras(10, torch.Generator().manual_seed(1))
    shapes, colours = torch.arange(10) % len(SHAPES), torch.arange(10) % len(COLOURS)
    first, second = render(shapes, colours, cams, resolution=32), render(shapes, colours, cams, resolution=32)
    assert first.shape == (10, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert first.min() >= 0 and first.max() <= 1
    assert (first < 0.99).any(dim=1).flatten(1).sum(1).min() > 20  # every image shows its shape
    silhouette = render_silhouette(shapes, cams, resolution=32)
    assert torch.equal(silhouette, render_silhouette(shapes, cams, resolution=32))
    assert set(silhouette.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    ("distance", "fov", "elevation"), [(DEFAULT_DISTANCE, DEFAULT_FOV_DEG, 0.0), (2.0, 50.0, 35.0)]
)
def test_sphere_silhouette_area_matches_projection(distance, fov, elevation):
    resolution = 64
    silhouette = render_silhouette(torch.tensor([0]), cameras([20.0], [elevation], distance, fov), resolution)
    # a sphere of radius r at distance d subtends a cone of half-angle asin(r / d): a disc of radius tan(asin(r/d))
    # on the image plane at focal length 1, where the half frame is tan(fov / 2)
    radius_px = math.tan(math.asin(SPHERE_RADIUS / distance)) / math.tan(math.radians(fov) / 2) * resolution / 2
    assert silhouette.sum().item() == pytest.approx(math.pi * radius_px**2, rel=0.02)


def test_cube_seen_face_on_is_square():
    resolution = 64
    silhouette = render_silhouette(torch.tensor([1]), cameras([0.0], [0.0]), resolution)[0, 0]
    rows, cols = silhouette.any(dim=1).nonzero().squeeze(1), silhouette.any(dim=0).nonzero().squeeze(1)
    height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert abs(height - width) <= 1
    assert silhouette.sum().item() / (height * width) > 0.98
    # the near face (at distance d - a) sets the size: side 2 a / (d - a) / tan(fov / 2) * resolution / 2
    expected = CUBE_HALF_SIZE / (DEFAULT_DISTANCE - CUBE_HALF_SIZE) / math.tan(math.radians(DEFAULT_FOV_DEG) / 2)
    assert width == pytest.approx(expected * resolution, abs=1.0)


def test_world_fixed_light_tells_front_from_back():
    images = render(torch.tensor([0, 0]), torch.tensor([0, 0]), cameras([0.0, 180.0], [10.0, 10.0]), resolution=32)
    # the same red sphere from the front and from the back: the light is fixed in the world, towards the front
    red_front, red_back = images[0, 0][images[0, 2] < 0.5].mean(), images[1, 0][images[1, 2] < 0.5].mean()
    assert red_front > red_back + 0.2


# ---------------------------------------------------------------------------------------------------------------
# captions and dataset
# ---------------------------------------------------------------------------------------------------------------


def test_captions_round_trip_and_vocabulary():
    assert caption("cube", "red", "front") == "a red cube, front view"
    assert caption("cube", "red") == "a red cube"
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(SHAPES) * len(COLOURS) * len(VIEWS)
    assert len(all_prompts(with_view=False)) == len(SHAPES) * len(COLOURS)
    for prompt in prompts + all_prompts(with_view=False):
        shape, colour, view = parse_caption(prompt)
        assert caption(shape, colour, view) == prompt
        assert set(prompt.replace(",", " ").split()) <= set(VOCABULARY)
    assert parse_caption("  A Red CUBE ,  front view. ") == ("cube", "red", "front")


@pytest.mark.parametrize(
    ("text", "bad_word", "vocabulary"),
    [
        ("a pink cube", "pink", COLOUR_NAMES),
        ("a red pyramid, front view", "pyramid", SHAPES),
        ("a red cube, top view", "top", VIEWS),
        ("the red cube", "the", ("a",)),
    ],
)
def test_parse_caption_errors_name_the_word_and_the_vocabulary(text, bad_word, vocabulary):
    with pytest.raises(ValueError) as error:
        parse_caption(text)
    assert repr(bad_word) in str(error.value)
    assert all(word in str(error.value) for word in vocabulary)


def test_parse_caption_rejects_other_formats():
    with pytest.raises(ValueError, match="expected 'a <colour> <shape>"):
        parse_caption("red cube seen from the front")


def test_render_batch_captions_agree_with_cameras():
    batch = render_batch(300, seed=2, resolution=16)
    assert batch["pixel_values"].shape == (300, 3, 16, 16)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    words = view_word(batch["azimuth_deg"], batch["elevation_deg"])
    assert [VIEWS[v] for v in batch["view"].tolist()] == words
    for text, s, c, v in zip(batch["caption"], batch["shape"], batch["colour"], batch["view"]):
        assert parse_caption(text) == (SHAPES[s], COLOUR_NAMES[c], VIEWS[v])
    counts = torch.bincount(batch["view"], minlength=len(VIEWS))
    assert (counts > 0).all()  # the overhead fraction gives overhead views too
    assert 0.05 < counts[VIEWS.index("overhead")].item() / 300 < 0.3


def test_dataset_is_deterministic_from_the_seed():
    dataset = ShapesDataset(20, seed=3, resolution=16)
    again = ShapesDataset(25, seed=3, resolution=16)  # more samples: the first 20 do not change
    other = ShapesDataset(20, seed=4, resolution=16)
    batch = render_batch(20, seed=3, resolution=16)
    assert len(dataset) == 20
    for i in (0, 7, 19):
        item = dataset[i]
        assert set(item) == {"pixel_values", "caption", "shape", "colour", "view"}
        assert item["pixel_values"].shape == (3, 16, 16)
        assert torch.equal(item["pixel_values"], again[i]["pixel_values"]) and item["caption"] == again[i]["caption"]
        assert torch.equal(item["pixel_values"], batch["pixel_values"][i]) and item["caption"] == batch["caption"][i]
        assert item["caption"] == caption(SHAPES[item["shape"]], COLOUR_NAMES[item["colour"]], VIEWS[item["view"]])
    assert [dataset[i]["caption"] for i in range(20)] != [other[i]["caption"] for i in range(20)]
    assert dataset[-1]["caption"] == dataset[19]["caption"]
    with pytest.raises(IndexError):
        dataset[20]
    # across chunks too: sample i depends on (seed, i) only
    first, more = sample_parameters(20, seed=3), sample_parameters(600, seed=3)
    assert all(torch.equal(first[key], more[key][:20]) for key in first)
