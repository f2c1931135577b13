"""Overlap-tile inference (Ronneberger et al. 2015): mirrored borders, valid-region stitching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pulmo.models import create_model
from pulmo.models.tiling import overlap_tile_inference, whole_image_inference


def _fixed_convs(radius_per_layer: int = 1, layers: int = 3) -> nn.Module:
    """A translation-equivariant net: stacked fixed random 3x3 convs (receptive radius ``layers``)."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Conv2d(1 if i == 0 else 2, 2, 2 * radius_per_layer + 1, padding=radius_per_layer)
                          for i in range(layers)]).eval()
    return net


@pytest.mark.parametrize("shape", [(100, 72), (37, 50), (64, 64)])
def test_tiled_equals_whole_image_in_the_valid_region(shape):
    net = _fixed_convs()
    r = 3  # receptive radius of three 3x3 convs
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    tiled = overlap_tile_inference(net, image, tile=32, margin=8, batch_size=3)
    assert tiled.shape == (2, *shape) and tiled.dtype == np.float32
    with torch.no_grad():
        whole = net(torch.from_numpy(image)[None, None])[0].numpy()
    # away from the image border (where whole-image inference sees zero padding, tiles see mirrored pixels)
    np.testing.assert_allclose(tiled[:, r:-r, r:-r], whole[:, r:-r, r:-r], atol=1e-5)
    # and everywhere it equals the net on the mirror-padded image: the mirrored border is what tiles see
    with torch.no_grad():
        mirrored = net(torch.from_numpy(np.pad(image, r, mode="reflect"))[None, None])[0].numpy()
    np.testing.assert_allclose(tiled, mirrored[:, r:-r, r:-r], atol=1e-5)


def test_only_valid_regions_are_kept():
    """A net that marks its own border: the stitched output never contains a tile's discarded margin."""

    class Border(nn.Module):
        def forward(self, x):
            out = torch.zeros_like(x)
            out[..., :8, :] = out[..., -8:, :] = out[..., :, :8] = out[..., :, -8:] = 1.0
            return out

    out = overlap_tile_inference(Border(), np.zeros((90, 70), np.float32), tile=32, margin=8)
    assert out.shape == (1, 90, 70) and out.max() == 0.0
    with pytest.raises(ValueError, match="no valid region"):
        overlap_tile_inference(Border(), np.zeros((10, 10), np.float32), tile=16, margin=8)


def test_u_net_tiles_and_whole_image_have_the_input_size():
    net = create_model("unet-rsna-pneumonia", out_channels=2, features=4).eval()
    image = np.random.default_rng(1).random((100, 72)).astype(np.float32)
    assert overlap_tile_inference(net, image, tile=64).shape == (2, 100, 72)
    assert whole_image_inference(net, image, multiple=16).shape == (2, 100, 72)
