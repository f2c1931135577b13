"""Chest X-ray lesion detector: torchvision RetinaNet (Lin et al., "Focal Loss for Dense Object Detection",
ICCV 2017) on a ResNet-18/34 FPN, sized for the CPU (seeds 1 and 2 of SEEDS.md).

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


def _resnet_body(depth: int, in_channels: int) -> nn.Module:
    from torchvision.models import resnet18, resnet34

    body = {18: resnet18, 34: resnet34}[depth](weights=None)
    body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return body


def _retinanet(depth: int, num_classes: int, in_channels: int, fpn_channels: int, min_size: int,
               max_size: int, score_thresh: float, detections_per_img: int) -> RetinaNet:
    body = _resnet_body(depth, in_channels)
    backbone = BackboneWithFPN(body, return_layers={"layer3": "0", "layer4": "1"}, in_channels_list=[256, 512],
                               out_channels=fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(backbone, num_classes=num_classes + 1, anchor_generator=anchors, min_size=min_size,
                     max_size=max_size, image_mean=[0.5] * in_channels, image_std=[0.25] * in_channels,
                     score_thresh=score_thresh, detections_per_img=detections_per_img, topk_candidates=300)


@register_model("retinanet-r18-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-18 FPN P4-P7, focal loss")
def retinanet_r18_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 128, min_size: int = 512,
                      max_size: int = 640, score_thresh: float = 0.05, detections_per_img: int = 50) -> RetinaNet:
    """RetinaNet with a ResNet-18 FPN. ``num_classes`` foreground classes; label 0 is background (unused)."""
    return _retinanet(18, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img)


@register_model("retinanet-r34-fpn", task="detection",
                description="torchvision RetinaNet, 1-channel ResNet-34 FPN P4-P7, focal loss")
def retinanet_r34_fpn(num_classes: int = 2, in_channels: int = 1, fpn_channels: int = 128, min_size: int = 512,
                      max_size: int = 640, score_thresh: float = 0.05, detections_per_img: int = 50) -> RetinaNet:
    """RetinaNet with a ResNet-34 FPN. ``num_classes`` foreground classes; label 0 is background (unused)."""
    return _retinanet(34, num_classes, in_channels, fpn_channels, min_size, max_size, score_thresh,
                      detections_per_img)


def init_backbone(model: RetinaNet, classifier_state: Mapping[str, torch.Tensor]) -> int:
    """Copy a torchvision ResNet classifier's weights (e.g. pulmo's ``resnet18`` chest X-ray classifier) into
    the RetinaNet body: self-supervised-free transfer from our own data, in place of ImageNet weights.

    Returns:
        The number of tensors copied (the ``fc`` layer is skipped).

    Raises:
        ValueError: no tensor of ``classifier_state`` fits the body (a different architecture).
    """
    body = model.backbone.body
    own = body.state_dict()
    take = {k: v for k, v in classifier_state.items() if k in own and own[k].shape == v.shape}
    if not take:
        raise ValueError("no classifier tensor matches the RetinaNet body; expected a torchvision ResNet state")
    body.load_state_dict(take, strict=False)
    return len(take)
