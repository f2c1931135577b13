"""U-Net family for 2D segmentation.

* ``unet-seed1``: the U-Net of the RSNA pneumonia report (SEEDS.md, seed 1) and of Ronneberger et al.
  2015: five scales; each block is two (3x3 conv -> BatchNorm -> LeakyReLU(0.03)); max-pool down,
  stride-2 transposed convolution up, skip concatenation, 1x1 output. The report's BatchNorm momentum 0.9
  is Keras' convention (weight of the running average), i.e. PyTorch ``momentum=0.1``.
* ``monai-unet``: MONAI's residual U-Net (Kerfoot et al. 2018) for comparison.
"""

from __future__ import annotations

import torch
from torch import nn

from pulmo.models.registry import register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=0.1),
        nn.LeakyReLU(0.03, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=0.1),
        nn.LeakyReLU(0.03, inplace=True),
    )


class UNet(nn.Module):
    """Plain U-Net.

    Args:
        in_channels: input channels C.
        out_channels: output channels K (logits; one per binary mask).
        features: channels at the first scale; doubled at each of the ``depth`` scales.
        depth: number of scales (5 in the seed).

    Shapes:
        input ``(B, C, H, W)`` with H and W divisible by ``2 ** (depth - 1)``; output ``(B, K, H, W)`` logits.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5):
        super().__init__()
        if depth < 2:
            raise TypeError(f"depth must be >= 2, got {depth}")
        chans = [features * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(c * 2, c, 2, stride=2))
            self.dec.append(_block(c * 2, c))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.divisor = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register_model("unet-seed1", task="segmentation", description="U-Net of seed 1 (BN, LeakyReLU 0.03, 5 scales)")
def unet_seed1(in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5) -> nn.Module:
    return UNet(in_channels, out_channels, features, depth)


@register_model("monai-unet", task="segmentation", description="MONAI residual U-Net (2 residual units/scale)")
def monai_unet(in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    return MonaiUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(features * 2**i for i in range(depth)),
        strides=(2,) * (depth - 1),
        num_res_units=2,
        norm="batch",
    )
