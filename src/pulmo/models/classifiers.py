"""Chest X-ray classifiers of the lung-segmentation-first COVID-19 CXR classifier report: torchvision
ResNet-18, MobileNetV2 and DenseNet-121.

Built with ``weights=None`` (no ImageNet download is possible here), a 1-channel first convolution for
greyscale radiographs, and ``num_classes`` outputs (logits). ``GRADCAM_LAYERS`` names the last
convolutional block of each, the layer Grad-CAM / Grad-CAM++ read (MONAI ``monai.visualize``); for
DenseNet-121 it is ``denseblock4``, because torchvision applies an in-place ReLU to ``norm5``'s output,
which backward hooks cannot follow.

Shapes: input ``(B, 1, H, W)`` (H, W >= 32), output ``(B, num_classes)`` logits.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from pulmo.models.registry import register_model

GRADCAM_LAYERS = {"resnet18": "layer4", "mobilenet_v2": "features.18", "densenet121": "features.denseblock4"}


@register_model("resnet18", task="classification", description="torchvision ResNet-18, 1-channel input")
def resnet18(in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    """torchvision ResNet-18 (He et al., CVPR 2016), random init, with an ``in_channels`` 7x7 stride-2 first
    convolution. Input ``(B, in_channels, H, W)`` (H, W >= 32), output ``(B, num_classes)`` logits."""
    m = tvm.resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


@register_model("mobilenet_v2", task="classification", description="torchvision MobileNetV2, 1-channel input")
def mobilenet_v2(in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al., CVPR 2018), random init, with an ``in_channels`` 3x3 stride-2
    first convolution. Input ``(B, in_channels, H, W)`` (H, W >= 32), output ``(B, num_classes)`` logits."""
    m = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=2, padding=1, bias=False)
    return m


@register_model("densenet121", task="classification", description="torchvision DenseNet-121, 1-channel input")
def densenet121(in_channels: int = 1, num_classes: int = 4) -> nn.Module:
    """torchvision DenseNet-121 (Huang et al., CVPR 2017), random init, with an ``in_channels`` 7x7 stride-2
    first convolution. Input ``(B, in_channels, H, W)`` (H, W >= 32), output ``(B, num_classes)`` logits."""
    m = tvm.densenet121(weights=None, num_classes=num_classes)
    m.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return m


@register_model("mobilenet_v3_small", task="classification",
                description="torchvision MobileNetV3-Small, 1-channel input (the input gate)")
def mobilenet_v3_small(in_channels: int = 1, num_classes: int = 3) -> nn.Module:
    """torchvision MobileNetV3-Small (Howard et al., ICCV 2019) with a ``in_channels`` first convolution.

    Used by the input gate (:mod:`pulmo.gate`): 1.5 M parameters, about 6 MFLOPs at 128 x 128.
    torchvision builds its BatchNorm layers with momentum 0.01 (tuned for ImageNet-length training); they
    are set to PyTorch's default 0.1 here so the running statistics follow a short CPU training.
    Input ``(B, in_channels, H, W)``, output ``(B, num_classes)`` logits.
    """
    m = tvm.mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=2, padding=1, bias=False)
    for module in m.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return m
