"""U-Net family for 2D segmentation.

* ``unet-rsna-pneumonia``: the U-Net of the RSNA Pneumonia Detection Challenge U-Net report as its PyTorch
  layer listing prints it: ``depth`` (5) scales; each block is two (3x3 conv -> ``BatchNorm2d(momentum=0.9)``
  -> ``LeakyReLU(0.03)``); stride-2 transposed convolutions up, skip concatenation, a 1x1 output conv.
  ``momentum=0.9`` is the value the report prints. In PyTorch it weights the *new* batch statistics by 0.9
  (``running = 0.1 * running + 0.9 * batch``), so the running mean/variance follow the last few batches
  closely; it does not change the forward pass in eval mode or the layout of the weights. What the report
  does not state, pulmo chooses as Ronneberger et al. 2015 do: 2x2 max-pooling down, channels doubling at each
  scale from ``features``, 2x2 transposed convs that halve the channels. Unlike Ronneberger et al., the 3x3
  convs are zero-padded ("same"), so the output has the input's size (the overlap-tile inference of
  :mod:`pulmo.models.tiling` then discards a margin of each tile instead). The convs have no bias (the
  BatchNorm after each one has a shift).
* ``unet-rsna``: the same layers and parameter names with PyTorch's default ``BatchNorm2d(momentum=0.1)``
  (``running = 0.9 * running + 0.1 * batch``). It is pulmo's earlier registration of the report's U-Net, which
  read the printed 0.9 as the other (running-average weight) convention; it is kept, as a variant and
  not as the report's network, because ``lung-seg`` trains it by default (the state dicts of the two are
  interchangeable). Its former name ``unet-seed1`` is a deprecated alias: it builds the same model with a
  ``DeprecationWarning``, and weight files whose card names it keep loading.
* ``monai-unet``: MONAI's residual U-Net (Kerfoot et al. 2018) for comparison; the bundled U-Net weights
  (``lung-seg-unet``, ``nodule-seg``) use it.
"""

from __future__ import annotations

import torch
from torch import nn

from pulmo.models.registry import register_alias, register_model

#: BatchNorm momentum printed in the RSNA pneumonia report's PyTorch layer listing (PyTorch semantics)
REPORT_BN_MOMENTUM = 0.9
#: LeakyReLU negative slope of the report
REPORT_LEAKY_SLOPE = 0.03


def _block(cin: int, cout: int, bn_momentum: float = 0.1, slope: float = REPORT_LEAKY_SLOPE) -> nn.Sequential:
    """Two (3x3 conv -> BatchNorm -> LeakyReLU). ``bn_momentum`` defaults to PyTorch's 0.1, which the
    Res-Attention U-Net report's four U-Nets (:mod:`pulmo.models.lesion_unet`) use; :class:`UNet` passes
    its own."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=bn_momentum),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout, momentum=bn_momentum),
        nn.LeakyReLU(slope, inplace=True),
    )


class UNet(nn.Module):
    """Plain U-Net (see the module docstring).

    Args:
        in_channels: input channels C.
        out_channels: output channels K (logits; one per binary mask).
        features: channels at the first scale; doubled at each of the ``depth`` scales.
        depth: number of scales (5 in the report).
        bn_momentum: PyTorch ``BatchNorm2d`` momentum (weight of the new batch statistics).

    Shapes:
        input ``(B, C, H, W)`` with H and W divisible by ``2 ** (depth - 1)`` (``self.divisor``); output
        ``(B, K, H, W)`` logits.

    Raises:
        TypeError: ``depth < 2``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5,
                 bn_momentum: float = REPORT_BN_MOMENTUM):
        super().__init__()
        if depth < 2:
            raise TypeError(f"depth must be >= 2, got {depth}")
        chans = [features * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(cin, c, bn_momentum))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(c * 2, c, 2, stride=2))
            self.dec.append(_block(c * 2, c, bn_momentum))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.depth = depth
        self.divisor = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: ``(B, C, H, W)`` float tensor, H and W divisible by ``self.divisor``.

        Returns:
            ``(B, K, H, W)`` logits (apply a sigmoid for probabilities).

        Raises:
            ValueError: H or W is not divisible by ``self.divisor``.
        """
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


@register_model("unet-rsna-pneumonia", task="segmentation",
                description="U-Net of the RSNA pneumonia report: 5 scales, BatchNorm momentum 0.9 as printed, "
                            "LeakyReLU 0.03, stride-2 transposed convs")
def unet_rsna_pneumonia(in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5) -> nn.Module:
    """The RSNA Pneumonia Detection Challenge report's U-Net (module docstring): a :class:`UNet` with
    ``BatchNorm2d(momentum=0.9)`` as printed. Input ``(B, in_channels, H, W)`` with H, W divisible by
    ``2 ** (depth - 1)``; output ``(B, out_channels, H, W)`` logits.

    Raises:
        TypeError: ``depth < 2``.
    """
    return UNet(in_channels, out_channels, features, depth, bn_momentum=REPORT_BN_MOMENTUM)


@register_model("unet-rsna", task="segmentation",
                description="unet-rsna-pneumonia's layers with PyTorch's default BatchNorm momentum 0.1 (variant)")
def unet_rsna(in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5) -> nn.Module:
    """:func:`unet_rsna_pneumonia`'s layers with PyTorch's default ``BatchNorm2d(momentum=0.1)`` (a variant,
    not the report's network; module docstring). Input ``(B, in_channels, H, W)`` with H, W divisible by
    ``2 ** (depth - 1)``; output ``(B, out_channels, H, W)`` logits.

    Raises:
        TypeError: ``depth < 2``.
    """
    return UNet(in_channels, out_channels, features, depth, bn_momentum=0.1)


register_alias("unet-seed1", "unet-rsna")  # its former name: weight cards saved under it keep loading


@register_model("monai-unet", task="segmentation", description="MONAI residual U-Net (2 residual units/scale)")
def monai_unet(in_channels: int = 1, out_channels: int = 1, features: int = 16, depth: int = 5) -> nn.Module:
    """MONAI's residual ``UNet`` (Kerfoot et al. 2018): ``depth`` scales of ``features * 2**i`` channels,
    stride-2 down-sampling, 2 residual units per scale, BatchNorm. Input ``(B, in_channels, H, W)`` with H, W
    divisible by ``2 ** (depth - 1)``; output ``(B, out_channels, H, W)`` logits."""
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
