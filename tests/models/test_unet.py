"""The RSNA pneumonia report's U-Net (``unet-rsna-pneumonia``) layer by layer, and its ``unet-seed1`` variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pulmo.models import create_model


def _layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_rsna_unet_is_the_printed_network():
    model = create_model("unet-rsna-pneumonia", in_channels=1, out_channels=2, features=4)
    bns = _layers(model, nn.BatchNorm2d)
    assert len(bns) == 2 * (5 + 4)  # two per block: five encoder scales, four decoder blocks
    assert all(bn.momentum == 0.9 for bn in bns)  # as the report prints it, PyTorch semantics
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU))]
    assert len(acts) == len(bns) and all(type(a) is nn.LeakyReLU and a.negative_slope == 0.03 for a in acts)
    assert len(model.down) == 5  # five scales: 4, 8, 16, 32, 64 channels
    assert [b[0].out_channels for b in model.down] == [4, 8, 16, 32, 64]
    convs = [c for c in _layers(model, nn.Conv2d) if c is not model.head]
    assert len(convs) == len(bns) and all(c.kernel_size == (3, 3) for c in convs)
    ups = _layers(model, nn.ConvTranspose2d)
    assert len(ups) == 4 and all(u.stride == (2, 2) for u in ups)
    assert [u.out_channels for u in ups] == [32, 16, 8, 4]
    assert [d[0].in_channels for d in model.dec] == [64, 32, 16, 8]  # upsampled + skip concatenated
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 2
    y = model(torch.rand(2, 1, 64, 48))
    assert y.shape == (2, 2, 64, 48)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 1, 40, 40))


def test_bn_momentum_0_9_weights_the_new_batch_by_0_9():
    model = create_model("unet-rsna-pneumonia", features=2).train()
    bn = model.down[0][1]
    x = torch.randn(4, 1, 32, 32) * 3 + 5
    with torch.no_grad():
        pre = model.down[0][0](x)
        model(x)
    np_mean = pre.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.9 * np_mean, rtol=1e-4, atol=1e-5)


def test_unet_seed1_is_the_same_layout_with_pytorch_default_momentum():
    seed1 = create_model("unet-seed1", features=4)
    rsna = create_model("unet-rsna-pneumonia", features=4)
    assert all(bn.momentum == 0.1 for bn in _layers(seed1, nn.BatchNorm2d))
    assert {k: v.shape for k, v in seed1.state_dict().items()} == {k: v.shape for k, v in rsna.state_dict().items()}
    rsna.load_state_dict(seed1.state_dict())  # weight files of either load into the other
