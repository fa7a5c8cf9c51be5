"""The occupancy grid's pruning (`NeRFConfig.occupancy_pruning`): the cached maximum of a cell stands for the whole
cell ('cached'), or only skips empty cells and the field's own density decides ('exact', nerfacc's way)."""

import pytest
import torch
from torch import nn

from sdtoolkit.nerf import FieldConfig, NeRF, NeRFConfig, RayBundle

SLAB = (0.05, 0.07)
"""A thin opaque black slab across x, deep inside the occupancy cell [0, 0.125) of a 16^3 grid over [-1, 1]^3."""


class SlabField(nn.Module):
    """Density 2000 for x in `SLAB`, 0 elsewhere; black."""

    def __init__(self):
        super().__init__()
        self.config = FieldConfig()
        self.region_prior = None

    def get_density(self, positions):
        x = positions[..., 0]
        return ((x >= SLAB[0]) & (x < SLAB[1])).float() * 2000.0

    def forward(self, positions):
        return {"density": self.get_density(positions), "rgb": torch.zeros(*positions.shape[:-1], 3)}


def slab_nerf(pruning: str) -> NeRF:
    nerf = NeRF(NeRFConfig(num_samples=48, occupancy_resolution=16, occupancy_pruning=pruning))
    nerf.field = SlabField()
    grid = nerf.occupancy
    grid.densities.zero_()
    grid.densities[8, :, :] = 2000.0  # the cell column x in [0, 0.125): its maximum, as a refresh that hit the slab
    grid.initialised.fill_(True)
    return nerf


@pytest.mark.parametrize("pruning, accumulation", [("cached", 0.0), ("exact", 1.0)])
def test_a_surface_deep_inside_its_cell_is_kept_only_by_exact_pruning(pruning, accumulation):
    """Along +x the first sample in the slab's cell is at x = 0.019, in front of the slab. 'cached' takes the cell's
    maximum (2000) for that sample's density, so everything behind it, the slab's sample at x = 0.056 included, is
    pruned as hidden: the ray renders empty (white) and no gradient can ever reach the slab. 'exact' evaluates the
    field at the occupied cell's samples and keeps the slab's."""
    nerf = slab_nerf(pruning)
    rays = RayBundle(torch.tensor([[-3.0, 0.01, 0.01]]), torch.tensor([[1.0, 0.0, 0.0]]))
    out = nerf.render_rays(rays, torch.ones(3), stratified=False)
    assert float(out["accumulation"][0]) == pytest.approx(accumulation, abs=1e-3)
    assert float(out["rgb"][0].mean()) == pytest.approx(1.0 - accumulation, abs=1e-3)


def test_exact_pruning_skips_the_empty_cells_without_evaluating_them(monkeypatch):
    """'exact' evaluates the field only at the 3 of 48 samples in the occupied cell (the grid still skips empty
    space), and the differentiable pass only at the slab's."""
    nerf = slab_nerf("exact")
    seen = []
    original = nerf.field.get_density
    monkeypatch.setattr(nerf.field, "get_density", lambda x: seen.append(x) or original(x))
    rays = RayBundle(torch.tensor([[-3.0, 0.01, 0.01]]), torch.tensor([[1.0, 0.0, 0.0]]))
    nerf.render_rays(rays, torch.ones(3), stratified=False)
    no_grad_pass, differentiable_pass = seen  # the field's forward calls get_density once, on the kept samples
    assert len(no_grad_pass) == 3 and ((no_grad_pass[:, 0] >= 0) & (no_grad_pass[:, 0] < 0.125)).all()
    assert len(differentiable_pass) == 1 and SLAB[0] <= float(differentiable_pass[0, 0]) < SLAB[1]
