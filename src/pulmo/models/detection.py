"""Chest X-ray lesion detector: torchvision RetinaNet (Lin et al., "Focal Loss for Dense Object Detection",
ICCV 2017) on a ResNet FPN: ResNet-18/34 with P4-P7 sized for the CPU (the shipped detector), and ResNet-50/101
with P3-P7 at 1024 px as in the TB / ChestX-Det RetinaNet report (``retinanet-r50-fpn``, ``retinanet-r101-fpn``).

Library choice: torchvision's ``RetinaNet`` supplies the anchors, the box coder, the sigmoid focal loss
(alpha 0.25, gamma 2, the paper's values and torchvision's defaults), smooth-L1/L1 box regression and the
per-class NMS; pulmo only chooses a CPU-sized configuration:

* a 1-channel ResNet-18 (or -34) body with ordinary (trainable) batch norm, because no ImageNet weights can be
  downloaded here and frozen statistics of an untrained body are meaningless; the body can instead be
  initialised from pulmo's own chest X-ray classifier (``init_backbone``);
* FPN levels P4-P7 (strides 16-128) from C4, C5 and two extra levels, because TBX11K boxes are 50-240 px at
  512 px; dropping P3 removes 3/4 of the head cost;
* a narrower FPN / head (``fpn_channels`` 128 instead of 256);
* anchors of 32-406 px, 3 scales x 3 aspect ratios per level.

The report's configuration (``retinanet-r50-fpn`` / ``retinanet-r101-fpn``): FPN P3-P5 from C3-C5 with 256
channels, P6 by a stride-2 3x3 conv on **C5** and P7 by ReLU + a stride-2 3x3 conv on P6 (torchvision's
``LastLevelP6P7`` with ``in_channels`` = C5's 2048 channels, so it reads C5, not P5), anchors 32-512 px (one
size per level, 3 scales x 3 aspect ratios), torchvision's heads of four 3x3 convs per branch (class K x A,
box 4 x A channels) shared across levels, 1024 x 1024 input. The one departure this machine forces: no
ImageNet weights can be downloaded, so the body is randomly initialised, or from a local file
(:func:`init_backbone`, which also takes a 3-channel ImageNet ResNet and sums its first conv over RGB).

Input: a list of ``(1, H, W)`` float tensors in [0, 1] (normalised chest X-rays; see
:func:`pulmo.transforms.normalize_cxr`); torchvision's transform standardises them with mean 0.5 / std 0.25
and resizes so the shorter side is ``min_size`` (default 512). Output in eval mode: a list of
``{"boxes": (N, 4) xyxy px of the input, "scores": (N,) in [0, 1], "labels": (N,) int64 in 1..num_classes}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pulmo.models.registry import register_model
from pulmo.models.transfer import copy_resnet_weights


def _resnet_body(depth: int, in_channels: int) -> nn.Module:
    from torchvision.models import resnet18, resnet34, resnet50, resnet101

    body = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}[depth](weights=None)
    body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return body


#: output channels of ResNet stages C2-C5 (layer1-layer4) by depth
_STAGE_CHANNELS = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048),
                   101: (256, 512, 1024, 2048)}


def _retinanet(depth: int, num_classes: int, in_channels: int, fpn_channels: int, min_size: int,
               max_size: int, score_thresh: float, detections_per_img: int, levels: str = "p4-p7") -> RetinaNet:
    """``levels``: ``p4-p7`` (C4-C5 + P6/P7 from P5, the CPU-sized detector) or ``p3-p7`` (C3-C5 + P6 from C5,
    P7 from P6: the report's)."""
    body = _resnet_body(depth, in_channels)
    stages = _STAGE_CHANNELS[depth]
    if levels == "p3-p7":
        return_layers, in_list = {"layer2": "0", "layer3": "1", "layer4": "2"}, list(stages[1:])
        extra, base_sizes = LastLevelP6P7(stages[3], fpn_channels), (32, 64, 128, 256, 512)
    elif levels == "p4-p7":
        return_layers, in_list = {"layer3": "0", "layer4": "1"}, list(stages[2:])
        extra, base_sizes = LastLevelP6P7(fpn_channels, fpn_channels), (32, 64, 128, 256)
    else:
        raise ValueError(f"levels must be 'p3-p7' or 'p4-p7', got {levels!r}")
    backbone = BackboneWithFPN(body, return_layers=return_layers, in_channels_list=in_list,
                               out_channels=fpn_channels, extra_blocks=extra)
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in base_sizes)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes=num_classes + 1, anchor_generator=anchors, min_size=min_size,
                     max_size=max_size, image_mean=[0.5] * in_channels, image_std=[0.25] * in_channels,
                     score_thresh=score_thresh, detections_per_img=detections_per_img, topk_candidates=300)


@register_model("retinanet-r18-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-18 FPN P4-P7, focal loss")
def retinanet_r18_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 128, min_size: int = 512,
                      max_size: int = 640, score_thresh: float = 0.05, detections_per_img: int = 50) -> RetinaNet:
    """RetinaNet with a ResNet-18 FPN. ``num_classes`` foreground classes; label 0 is background (unused).

    Input a list of ``(in_channels, H, W)`` float tensors in [0, 1], resized inside to a shorter side of
    ``min_size`` px (longer side at most ``max_size``); output in eval mode as in the module docstring, boxes
    in px of each input, scores >= ``score_thresh``, at most ``detections_per_img`` per image.
    """
    return _retinanet(18, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img)


@register_model("retinanet-r34-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-34 FPN P4-P7, focal loss")
def retinanet_r34_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 128, min_size: int = 512,
                      max_size: int = 640, score_thresh: float = 0.05, detections_per_img: int = 50) -> RetinaNet:
    """RetinaNet with a ResNet-34 FPN. ``num_classes`` foreground classes; label 0 is background (unused).

    Inputs and outputs as :func:`retinanet_r18_fpn`.
    """
    return _retinanet(34, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img)


@register_model("retinanet-r50-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-50 FPN P3-P7 (P6 from C5), 1024 px")
def retinanet_r50_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 256, min_size: int = 1024,
                      max_size: int = 1024, score_thresh: float = 0.05, detections_per_img: int = 100) -> RetinaNet:
    """RetinaNet with a ResNet-50 FPN, P3-P7 as in Lin et al. 2017. ``num_classes`` foreground classes.

    Inputs and outputs as :func:`retinanet_r18_fpn` (resized to 1024 px by default).
    """
    return _retinanet(50, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img, levels="p3-p7")


@register_model("retinanet-r101-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-101 FPN P3-P7 (P6 from C5), 1024 px: the TB report's")
def retinanet_r101_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 256, min_size: int = 1024,
                       max_size: int = 1024, score_thresh: float = 0.05, detections_per_img: int = 100) -> RetinaNet:
    """RetinaNet with a ResNet-101 FPN, P3-P7: the TB / ChestX-Det10 RetinaNet report's detector.

    Inputs and outputs as :func:`retinanet_r18_fpn` (resized to 1024 px by default).
    """
    return _retinanet(101, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img, levels="p3-p7")


def init_backbone(model: RetinaNet, classifier_state: Mapping[str, torch.Tensor]) -> int:
    """Copy a torchvision ResNet classifier's weights into the RetinaNet body: pulmo's own chest X-ray
    classifier (``resnet18``), or an ImageNet ResNet of the same depth that a user has as a local file
    (nothing is downloaded). A 3-channel first conv is summed over its input channels to fit the
    1-channel body (the usual grey-scale adaptation of RGB filters).

    Returns:
        The number of tensors copied (the ``fc`` layer is skipped).

    Raises:
        ValueError: no tensor of ``classifier_state`` fits the body (a different architecture).
    """
    return copy_resnet_weights(model.backbone.body, classifier_state, what="the RetinaNet body")
