"""The four U-Nets compared by the Res-Attention U-Net COVID-19 CT infection report, in one implementation.

* ``unet``: plain encoder (two 3x3 conv -> BN -> LeakyReLU per scale, as :mod:`pulmo.models.unet`);
* ``res-unet``: residual encoder blocks (MONAI ``UnetResBlock``), no gates;
* ``attention-unet``: plain encoder, attention gates on every skip;
* ``res-attention-unet``: ResNet-34 encoder (torchvision, layers 0-4) + attention gates, final
  up-sampling + 1x1 conv, as in the report.

The attention gate is MONAI's ``AttentionBlock`` (Oktay et al. 2018): A = W_g g + W_x x (1x1 convs + BN),
alpha = sigmoid(psi(ReLU(A))), the skip multiplied by alpha; g is the up-sampled decoder feature.
ImageNet weights cannot be downloaded here: encoders start from random initialisation.

Shapes: input ``(B, C, H, W)``, H and W divisible by 32 (ResNet-34) or 16 (others); output
``(B, K, H, W)`` logits.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetResBlock
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from pulmo.models.registry import register_model
from pulmo.models.transfer import copy_resnet_weights
from pulmo.models.unet import _block


class _PlainEncoder(nn.Module):
    def __init__(self, in_channels: int, chans: list[int], residual: bool):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.stages.append(UnetResBlock(2, cin, c, kernel_size=3, stride=1, norm_name="batch") if residual
                               else _block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.channels = chans
        self.divisor = 2 ** (len(chans) - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class _ResNet34Encoder(nn.Module):
    """torchvision ResNet-34 layers 0-4 (strides 2, 4, 8, 16, 32; channels 64, 64, 128, 256, 512)."""

    def __init__(self, in_channels: int):
        super().__init__()
        from torchvision.models import resnet34

        r = resnet34(weights=None)
        if in_channels != 3:
            r.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.layer0 = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.layer1 = nn.Sequential(r.maxpool, r.layer1)
        self.layer2, self.layer3, self.layer4 = r.layer2, r.layer3, r.layer4
        self.channels = [64, 64, 128, 256, 512]
        self.divisor = 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.layer0(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            feats.append(layer(feats[-1]))
        return feats


class SegUNet(nn.Module):
    """U-Net with a choice of encoder and optional attention gates on the skips.

    Args:
        in_channels: input channels C.
        out_channels: output channels K (1 for binary infection, 3 for background / GGO / consolidation).
        features: channels at the first scale of the plain/residual encoders (doubled per scale).
        encoder: ``"plain"``, ``"residual"`` or ``"resnet34"``.
        attention: gate every skip connection with an attention block.
        decoder_channels: decoder channels per level, shallow to deep (default: the encoder's skip
            channels; the ResNet-34 variant uses (16, 32, 64, 96) to stay under 45 MB in fp16).

    Raises:
        TypeError: ``encoder`` is not one of the three, or ``decoder_channels`` does not have one value per
            skip connection (4).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: int = 16, encoder: str = "plain",
                 attention: bool = False, decoder_channels: tuple[int, ...] | None = None):
        super().__init__()
        if encoder == "resnet34":
            self.encoder: nn.Module = _ResNet34Encoder(in_channels)
        elif encoder in ("plain", "residual"):
            self.encoder = _PlainEncoder(in_channels, [features * 2**i for i in range(5)], encoder == "residual")
        else:
            raise TypeError(f"encoder must be 'plain', 'residual' or 'resnet34', got {encoder!r}")
        chans = self.encoder.channels
        skips = chans[:-1]
        dec_chans = list(decoder_channels or skips)
        if len(dec_chans) != len(skips):
            raise TypeError(f"decoder_channels needs {len(skips)} values, got {len(dec_chans)}")
        self.divisor = self.encoder.divisor
        self.up, self.gates, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = chans[-1]
        for c, d in zip(reversed(skips), reversed(dec_chans)):
            self.up.append(nn.ConvTranspose2d(cin, d, 2, stride=2))
            self.gates.append(AttentionBlock(2, f_int=max(c // 2, 1), f_g=d, f_l=c) if attention else nn.Identity())
            self.dec.append(_block(d + c, d))
            cin = d
        # the ResNet stem is at stride 2: one more up-sampling back to the input size
        self.final_up = (nn.ConvTranspose2d(cin, cin, 2, stride=2) if encoder == "resnet34" else nn.Identity())
        self.head = nn.Conv2d(cin, out_channels, 1)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: ``(B, C, H, W)`` float tensor, H and W divisible by ``self.divisor`` (32 for the ResNet-34
                encoder, 16 for the others).

        Returns:
            ``(B, K, H, W)`` logits.

        Raises:
            ValueError: H or W is not divisible by ``self.divisor``.
        """
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {self.divisor}")
        feats = self.encoder(x)
        y = feats[-1]
        for up, gate, dec, skip in zip(self.up, self.gates, self.dec, reversed(feats[:-1])):
            y = up(y)
            skip = gate(y, skip) if self.attention else skip
            y = dec(torch.cat([y, skip], dim=1))
        return self.head(self.final_up(y))


@register_model("unet", task="segmentation",
                description="U-Net baseline of the Res-Attention U-Net report (plain encoder)")
def unet(in_channels: int = 1, out_channels: int = 1, features: int = 16) -> nn.Module:
    """:class:`SegUNet` with the plain encoder (5 scales from ``features`` channels), no attention gates.
    Input ``(B, in_channels, H, W)``, H and W divisible by 16; output ``(B, out_channels, H, W)`` logits."""
    return SegUNet(in_channels, out_channels, features, encoder="plain", attention=False)


@register_model("res-unet", task="segmentation",
                description="U-Net with a residual encoder (Res-U-Net baseline of the Res-Attention U-Net report)")
def res_unet(in_channels: int = 1, out_channels: int = 1, features: int = 16) -> nn.Module:
    """:class:`SegUNet` with the residual encoder (MONAI ``UnetResBlock``, 5 scales), no attention gates.
    Input ``(B, in_channels, H, W)``, H and W divisible by 16; output ``(B, out_channels, H, W)`` logits."""
    return SegUNet(in_channels, out_channels, features, encoder="residual", attention=False)


@register_model("attention-unet", task="segmentation",
                description="U-Net with attention gates on the skips (baseline of the Res-Attention U-Net report)")
def attention_unet(in_channels: int = 1, out_channels: int = 1, features: int = 16) -> nn.Module:
    """:class:`SegUNet` with the plain encoder and an attention gate (Oktay et al. 2018) on every skip.
    Input ``(B, in_channels, H, W)``, H and W divisible by 16; output ``(B, out_channels, H, W)`` logits."""
    return SegUNet(in_channels, out_channels, features, encoder="plain", attention=True)


@register_model("res-attention-unet", task="segmentation",
                description="ResNet-34 encoder + attention gates (the COVID-19 CT report's Res-Attention U-Net)")
def res_attention_unet(in_channels: int = 1, out_channels: int = 1, features: int = 64,
                       decoder_channels: tuple[int, ...] | list[int] = (16, 32, 64, 96)) -> nn.Module:
    """``decoder_channels`` (16, 32, 64, 96) is the narrowed decoder of the bundled model (< 45 MB in fp16); the
    report's decoder, as wide as the encoder's skips, is (64, 64, 128, 256) (``--decoder full`` of
    ``pulmo train lesion-seg``).

    The Res-Attention U-Net: :class:`SegUNet` with the ResNet-34 encoder (random init; channels 64-512, so
    ``features`` is not used) and attention gates. Input ``(B, in_channels, H, W)``, H and W divisible by 32;
    output ``(B, out_channels, H, W)`` logits.

    Raises:
        TypeError: ``decoder_channels`` does not have 4 values.
    """
    return SegUNet(in_channels, out_channels, features, encoder="resnet34", attention=True,
                   decoder_channels=tuple(decoder_channels))


#: decoder widths of the Res-Attention U-Net: the bundled, narrowed one and the report's (the skips' widths)
DECODER_CHANNELS = {"narrow": (16, 32, 64, 96), "full": (64, 64, 128, 256)}


def init_resnet34_encoder(model: SegUNet, state: dict[str, torch.Tensor]) -> int:
    """Load a torchvision ResNet-34 state dict (e.g. ImageNet weights a user has as a local file; nothing is
    downloaded) into the ResNet-34 encoder of a :class:`SegUNet`. A 3-channel first conv is summed over its
    input channels for a 1-channel model; ``fc`` is ignored.

    Returns:
        The number of tensors copied.

    Raises:
        TypeError: the model has no ResNet-34 encoder.
        ValueError: no tensor of ``state`` fits it.
    """
    enc = model.encoder
    if not isinstance(enc, _ResNet34Encoder):
        raise TypeError("the model has no ResNet-34 encoder (architecture res-attention-unet)")
    names = {"conv1": "layer0.0", "bn1": "layer0.1", "layer1": "layer1.1", "layer2": "layer2", "layer3": "layer3",
             "layer4": "layer4"}

    def rename(key: str) -> str | None:
        head, _, rest = key.partition(".")
        return f"{names[head]}.{rest}" if head in names else None

    return copy_resnet_weights(enc, state, rename, what="the ResNet-34 encoder")
