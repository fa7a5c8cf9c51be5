"""The turntable renders views in chunks without gradients: the same images as one batch, less memory."""

import torch

from sdtoolkit.nerf import NeRF, NeRFConfig
from sdtoolkit.text_to_3d.trainer import render_turntable


def test_chunked_turntable_equals_one_batch_and_holds_no_graph():
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(occupancy_resolution=0, num_samples=16))
    with torch.no_grad():  # a field with some structure, not the zero-initialised one
        for p in nerf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    whole = render_turntable(nerf, 6, 12, chunk=6)
    chunked = render_turntable(nerf, 6, 12, chunk=4)
    assert whole.keys() == chunked.keys() and "rgb" in whole
    for k in whole:
        assert whole[k].shape[0] == 6
        torch.testing.assert_close(chunked[k], whole[k], rtol=1e-5, atol=1e-6)
        assert not chunked[k].requires_grad
    assert whole["rgb"].std() > 1e-3  # the views are not blank
