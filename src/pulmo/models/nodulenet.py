"""A CPU-sized 3D nodule network of the NoduleNet design (Tang et al., "NoduleNet: Decoupled False Positive
Reduction for Pulmonary Nodule Detection and Segmentation", MICCAI 2019).

Design, as in the paper, scaled down for two CPU cores:

* **feature network**: a residual 3D encoder (stride 2 stem, residual stages at strides 2, 4 and 8, or 2, 4, 8
  and 16 as NoduleNet) and a top-down path of transposed convolutions and skip fusions back to stride 4 (one
  level for three stages, two for four: NoduleNet's U-Net-like "FPN"); three **coordinate channels** (the
  normalised z, y, x position of each voxel in the lung crop) are concatenated before the stride-4 fusion
  block, as NoduleNet and DeepLung do;
* **RPN** at stride 4: per voxel and per cubic 3D anchor (default 5, 10, 20, 30 mm), an objectness logit and
  a box regression ``(dz, dy, dx, log dd)``; trained with the sigmoid **focal loss** (alpha 0.25, gamma 2,
  ``torchvision.ops.sigmoid_focal_loss``) and smooth L1;
* **decoupled false-positive reduction (FPR) head**: ROI features cropped from the *shallower* stride-2 map
  (not the RPN's stride-4 map: the decoupling of the paper) with trilinear ROI sampling
  (``torch.nn.functional.grid_sample``), a small 3D CNN, a nodule logit and a box refinement;
* **mask head**: per detection, stride-4 features sampled in the ROI, up-sampled x2 and fused with the
  stride-2 features and the image itself, then a 3D CNN -> mask logits on a ``mask_size``^3 ROI grid.

Boxes are cubes ``(z, y, x, d)`` in voxels of the network input (centre and side). Shapes: input
``(B, 1, D, H, W)`` with D, H, W multiples of 8 (16 with four stages) and intensities in [0, 1] (HU window -1200..600), coordinates
``(B, 3, D/4, H/4, W/4)`` in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from pulmo.geometry.boxes import cube_iou, cube_nms
from pulmo.models.registry import register_model

RPN_STRIDE = 4


class ResBlock3d(nn.Module):
    """Pre-activation-free residual block: conv-BN-ReLU-conv-BN + (projected) identity, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.skip = (nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, D, H, W)`` -> ``(B, cout, D/stride, H/stride, W/stride)`` (sides rounded up)."""
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x), inplace=True)


def _res_stack(cin: int, cout: int, n: int) -> nn.Module:
    """``n`` residual blocks, ``cin`` -> ``cout`` in the first (a single block is kept unwrapped, so the
    weights of the three-stage default keep their names)."""
    if n == 1:
        return ResBlock3d(cin, cout)
    return nn.Sequential(ResBlock3d(cin, cout), *[ResBlock3d(cout, cout) for _ in range(n - 1)])


def coordinate_channels(shape: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """``(3, *shape)`` normalised z, y, x voxel positions in [-1, 1] (the coordinate channels)."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


#: IoU of cubes ``a (N, 4)`` and ``b (M, 4)`` given as ``(z, y, x, d)`` -> ``(N, M)``
#: (:func:`pulmo.geometry.boxes.cube_iou`).
box_iou_cubes = cube_iou


def nms_cubes(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int) -> torch.Tensor:
    """Greedy non-maximum suppression of cubes (:func:`pulmo.geometry.boxes.cube_nms`: suppressed at IoU
    ``> iou_threshold``); CPU indices kept, highest score first (at most ``max_keep``). Tied scores in the order
    of torch's default ``argsort(descending=True)`` (``stable=False``), the order the bundled weights were tuned
    and evaluated with."""
    return cube_nms(boxes, scores, iou_threshold, max_keep, stable=False).cpu()


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets of ``boxes`` w.r.t. ``anchors`` (both ``(N, 4)`` z, y, x, d)."""
    return torch.cat([(boxes[:, :3] - anchors[:, :3]) / anchors[:, 3:], torch.log(boxes[:, 3:] / anchors[:, 3:])], 1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode` (the size term clamped to avoid overflow)."""
    return torch.cat([anchors[:, :3] + deltas[:, :3] * anchors[:, 3:],
                      anchors[:, 3:] * torch.exp(deltas[:, 3:].clamp(-4, 4))], 1)


def _roi_grid(boxes: torch.Tensor, size: int, shape: Sequence[int], scale: float, expand: float) -> torch.Tensor:
    """``grid_sample`` grids ``(N, size, size, size, 3)`` covering each box (input voxels) expanded by ``expand``
    on a feature map of ``shape`` whose voxels are ``scale`` input voxels."""
    t = (torch.arange(size, dtype=boxes.dtype, device=boxes.device) + 0.5) / size - 0.5  # (-0.5, 0.5)
    side = boxes[:, 3:] * expand
    grids = []
    for axis in range(3):
        centre_f = (boxes[:, axis:axis + 1] + 0.5) / scale - 0.5        # centre in feature voxels
        coords = centre_f + t[None] * side / scale                        # (N, size) feature voxels
        grids.append(2 * (coords + 0.5) / shape[axis] - 1)                # align_corners=False normalisation
    gz, gy, gx = grids
    n = boxes.shape[0]
    z = gz[:, :, None, None].expand(n, size, size, size)
    y = gy[:, None, :, None].expand(n, size, size, size)
    x = gx[:, None, None, :].expand(n, size, size, size)
    return torch.stack([x, y, z], -1)


def roi_sample(feature: torch.Tensor, batch_index: torch.Tensor, boxes: torch.Tensor, size: int, scale: float,
               expand: float = 1.5, mode: str = "bilinear") -> torch.Tensor:
    """Trilinear ROI sampling: ``(N, C, size, size, size)`` from ``feature (B, C, D, H, W)`` for boxes in input
    voxels (``scale`` = input voxels per feature voxel); zeros outside the map."""
    if boxes.numel() == 0:
        return feature.new_zeros((0, feature.shape[1], size, size, size))
    grid = _roi_grid(boxes.float(), size, feature.shape[2:], scale, expand).to(feature.dtype)
    # One grid_sample per image with that image's ROIs stacked along depth: indexing ``feature[batch_index]``
    # would copy the whole map once per ROI (40 ROIs x a 64 MB map = 2.5 GB at inference).
    out = []
    order = []
    for b in torch.unique(batch_index):
        idx = torch.nonzero(batch_index == b).flatten()
        g = grid[idx].reshape(1, len(idx) * size, size, size, 3)
        r = F.grid_sample(feature[int(b)][None], g, mode=mode, padding_mode="zeros", align_corners=False)
        out.append(r.reshape(feature.shape[1], len(idx), size, size, size).transpose(0, 1))
        order.append(idx)
    result = torch.cat(out)
    return result[torch.argsort(torch.cat(order))]


class NoduleNet3d(nn.Module):
    """The multi-task network (see the module docstring).

    Args:
        channels: widths of the encoder stages at strides 2, 4, 8 (three values: the CPU size) or 2, 4, 8, 16
            (four values: NoduleNet's depth, with a second top-down level at stride 8, so the stride-4 map the
            RPN reads fuses features of four scales as in NoduleNet's U-Net-like "FPN" path).
        blocks: residual blocks per encoder stage, one value per entry of ``channels`` (default 1, 2, 2; the
            ``nodulenet-lidc`` preset uses NoduleNet's 24/32-64-64-64 widths with 2-2-3-3 blocks).
        back_channels: output widths of the top-down fusion blocks, deepest first (stride 8 then 4 for four
            stages, stride 4 for three); default the encoder width at that stride. NoduleNet: 64, 128.
        back_blocks: residual blocks per top-down fusion block, deepest first (default 1 each; NoduleNet: 3, 3).
        anchors: cube sides of the anchors in input voxels.
        roi_size: side of the FPR head's ROI grid. mask_size: side of the mask head's ROI grid.

    Attributes:
        size_divisor: input sides must be multiples of it (8 for three stages, 16 for four).

    Raises:
        TypeError: ``channels``/``blocks``/``back_*`` of the wrong length or a stage with fewer than one block.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (24, 48, 64),
                 anchors: Sequence[float] = (3.33, 6.67, 13.33, 20.0), roi_size: int = 8, mask_size: int = 24,
                 blocks: Sequence[int] = (1, 2, 2), back_channels: Sequence[int] | None = None,
                 back_blocks: Sequence[int] | None = None):
        super().__init__()
        if len(channels) not in (3, 4) or len(blocks) != len(channels):
            raise TypeError(f"channels and blocks need 3 (strides 2-8) or 4 (strides 2-16) values each, got "
                            f"{tuple(channels)} and {tuple(blocks)}")
        if min(blocks) < 1:
            raise TypeError(f"blocks must be >= 1 per stage, got {tuple(blocks)}")
        deep = len(channels) == 4
        c2, c4, c8 = channels[:3]
        n2, n4, n8 = blocks[:3]
        n_back = len(channels) - 2
        back_channels = tuple(back_channels) if back_channels else ((c8, c4) if deep else (c4,))
        back_blocks = tuple(back_blocks) if back_blocks else (1,) * n_back
        if len(back_channels) != n_back or len(back_blocks) != n_back or min(back_blocks) < 1:
            raise TypeError(f"back_channels and back_blocks need {n_back} values (>= 1 block), got "
                            f"{back_channels} and {back_blocks}")
        self.size_divisor = 16 if deep else 8
        self.anchor_sizes = tuple(float(a) for a in anchors)
        self.roi_size, self.mask_size = roi_size, mask_size
        self.stem = nn.Sequential(nn.Conv3d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm3d(16), nn.ReLU(inplace=True))
        self.stage2 = (ResBlock3d(16, c2) if n2 == 1
                       else nn.Sequential(ResBlock3d(16, c2), *[ResBlock3d(c2, c2) for _ in range(n2 - 1)]))
        self.stage4 = nn.Sequential(ResBlock3d(c2, c4, 2), *[ResBlock3d(c4, c4) for _ in range(n4 - 1)])
        self.stage8 = nn.Sequential(ResBlock3d(c4, c8, 2), *[ResBlock3d(c8, c8) for _ in range(n8 - 1)])
        c8_out = c8
        if deep:  # NoduleNet's fourth stage and its top-down fusion at stride 8
            c16, n16 = channels[3], blocks[3]
            self.stage16 = nn.Sequential(ResBlock3d(c8, c16, 2), *[ResBlock3d(c16, c16) for _ in range(n16 - 1)])
            self.up16 = nn.Sequential(nn.ConvTranspose3d(c16, c8, 2, 2), nn.BatchNorm3d(c8), nn.ReLU(inplace=True))
            self.fuse8 = _res_stack(2 * c8, back_channels[0], back_blocks[0])
            c8_out = back_channels[0]
        self.up = nn.Sequential(nn.ConvTranspose3d(c8_out, c4, 2, 2), nn.BatchNorm3d(c4), nn.ReLU(inplace=True))
        self.fuse = _res_stack(2 * c4 + 3, back_channels[-1], back_blocks[-1])
        c4 = back_channels[-1]  # the RPN and the mask head's low path read the fused stride-4 map
        a = len(self.anchor_sizes)
        self.rpn = nn.Sequential(nn.Conv3d(c4, c4, 3, 1, 1), nn.ReLU(inplace=True))
        self.rpn_cls = nn.Conv3d(c4, a, 1)
        self.rpn_reg = nn.Conv3d(c4, 4 * a, 1)
        nn.init.constant_(self.rpn_cls.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01 (RetinaNet)
        nn.init.zeros_(self.rpn_reg.weight)
        nn.init.zeros_(self.rpn_reg.bias)
        self.fpr = nn.Sequential(nn.Conv3d(c2 + 1, 48, 3, 1, 1), nn.BatchNorm3d(48), nn.ReLU(inplace=True),
                                 nn.MaxPool3d(2), nn.Conv3d(48, 64, 3, 1, 1), nn.BatchNorm3d(64),
                                 nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(2), nn.Flatten(),
                                 nn.Linear(64 * 8, 128), nn.ReLU(inplace=True))
        self.fpr_cls = nn.Linear(128, 1)
        self.fpr_reg = nn.Linear(128, 4)
        nn.init.zeros_(self.fpr_reg.weight)
        nn.init.zeros_(self.fpr_reg.bias)
        self.mask_low = nn.Sequential(nn.Conv3d(c4, 32, 3, 1, 1), nn.BatchNorm3d(32), nn.ReLU(inplace=True))
        self.mask_high = nn.Sequential(ResBlock3d(32 + c2 + 1, 32), nn.Conv3d(32, 1, 1))

    # ------------------------------------------------------------------ features and RPN
    def features(self, image: torch.Tensor, coords: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Feature maps and RPN outputs of a batch.

        Args:
            image: ``(B, 1, D, H, W)`` lung crops, intensities in [0, 1] (HU window -1200..600), every side a
                multiple of ``size_divisor``.
            coords: ``(B, 3, D/4, H/4, W/4)`` coordinate channels in [-1, 1]; default the crop's own
                (:func:`coordinate_channels`).

        Returns:
            ``{"f2": (B, channels[0], D/2, H/2, W/2) stride-2 map, "f4": (B, C4, D/4, H/4, W/4) fused stride-4
            map, "cls": (B, A, D/4, H/4, W/4) objectness logits, "reg": (B, 4A, D/4, H/4, W/4) deltas}``
            with ``A`` anchors.

        Raises:
            ValueError: a side of ``image`` is not a multiple of ``size_divisor``.
        """
        if any(s % self.size_divisor for s in image.shape[2:]):
            raise ValueError(f"input sides must be multiples of {self.size_divisor}, got {tuple(image.shape[2:])}")
        f2 = self.stage2(self.stem(image))
        f4 = self.stage4(f2)
        f8 = self.stage8(f4)
        if hasattr(self, "stage16"):
            f8 = self.fuse8(torch.cat([f8, self.up16(self.stage16(f8))], 1))
        if coords is None:
            coords = coordinate_channels(f4.shape[2:], image.device)[None].expand(image.shape[0], -1, -1, -1, -1)
        f4 = self.fuse(torch.cat([f4, self.up(f8), coords.to(f4.dtype)], 1))
        r = self.rpn(f4)
        return {"f2": f2, "f4": f4, "cls": self.rpn_cls(r), "reg": self.rpn_reg(r)}

    def anchors(self, feature_shape: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """All anchors ``(D4 * H4 * W4 * A, 4)`` in input voxels, in the order of the flattened RPN outputs."""
        centres = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) * RPN_STRIDE - 0.5 for n in feature_shape]
        zz, yy, xx = torch.meshgrid(*centres, indexing="ij")
        pos = torch.stack([zz, yy, xx], -1).reshape(-1, 1, 3)
        sizes = torch.tensor(self.anchor_sizes, device=device).reshape(1, -1, 1)
        return torch.cat([pos.expand(-1, len(self.anchor_sizes), -1), sizes.expand(pos.shape[0], -1, -1)], -1).reshape(-1, 4)

    def flat_rpn(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN outputs as ``(B, N_anchors)`` logits and ``(B, N_anchors, 4)`` deltas (anchor order)."""
        b, a = out["cls"].shape[:2]
        cls = out["cls"].permute(0, 2, 3, 4, 1).reshape(b, -1)
        reg = out["reg"].reshape(b, a, 4, *out["reg"].shape[2:]).permute(0, 3, 4, 5, 1, 2).reshape(b, -1, 4)
        return cls, reg

    # ------------------------------------------------------------------ heads on ROIs
    def fpr_head(self, f2: torch.Tensor, image: torch.Tensor, batch_index: torch.Tensor,
                 boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodule logits ``(N,)`` and box refinements ``(N, 4)`` of ROIs ``boxes`` (input voxels)."""
        roi = torch.cat([roi_sample(f2, batch_index, boxes, self.roi_size, 2.0),
                         roi_sample(image, batch_index, boxes, self.roi_size, 1.0)], 1)
        h = self.fpr(roi)
        return self.fpr_cls(h)[:, 0], self.fpr_reg(h)

    def mask_head(self, f2: torch.Tensor, f4: torch.Tensor, image: torch.Tensor, batch_index: torch.Tensor,
                  boxes: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(N, mask_size, mask_size, mask_size)`` on each box's ROI grid (box x 1.5)."""
        m = self.mask_size
        low = self.mask_low(roi_sample(f4, batch_index, boxes, m // 2, 4.0))
        low = F.interpolate(low, scale_factor=2, mode="trilinear", align_corners=False)
        high = torch.cat([low, roi_sample(f2, batch_index, boxes, m, 2.0), roi_sample(image, batch_index, boxes, m, 1.0)], 1)
        return self.mask_high(high)[:, 0]

    # ------------------------------------------------------------------ the training / inference contract
    def forward(self, x: torch.Tensor, targets: dict[str, Any] | None = None, *,
                coords: torch.Tensor | None = None, rng: torch.Generator | None = None,
                **detect_kwargs: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The model's own contract (as torchvision's detectors), so that a ``DistributedDataParallel`` wrapper's
        ``forward`` runs everything that needs gradients (and synchronises them).

        * training mode with ``targets``: the scalar training loss (:func:`nodulenet_loss`). ``targets`` holds
          per-image ``"boxes"`` (list of ``(N_b, 4)`` cubes) and ``"masks"`` (list of ``(N_b, D, H, W)``), and may
          hold ``"coords"`` (a training batch ``{"image", "coords", "boxes", "masks"}`` can be passed whole);
          ``rng`` draws the ground-truth jitter (on the CPU; default the global generator).
        * otherwise (no ``targets``, or eval mode): the detections of :meth:`detect` on a one-image batch
          (``detect_kwargs`` are its thresholds), without gradients.
        """
        if targets is not None and self.training:
            if coords is None:
                coords = targets.get("coords")
            return nodulenet_loss(self, x, targets, coords=coords, rng=rng)
        return self.detect(x, **detect_kwargs)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, max_proposals: int = 40, nms_iou: float = 0.1, min_probability: float = 0.02,
               max_detections: int = 20, lung_dist: torch.Tensor | None = None,
               lung_margin: float = 1.5) -> dict[str, torch.Tensor]:
        """Candidates of one prepared image ``x (1, 1, D, H, W)`` in [0, 1], on the network's device:
        ``{"boxes": (N, 4) z, y, x, d input voxels, "probability": (N,) FPR probability, "rpn": (N,) RPN
        probability, "masks": (N, m, m, m) mask logits}``: RPN proposals (top 3000) -> 3D NMS (``nms_iou``,
        ``max_proposals``) -> FPR head (probability, refined box) -> NMS (``max_detections``), probability >=
        ``min_probability`` -> mask head.

        With ``lung_dist`` (distance to the lungs in voxels, shape ``(D, H, W)``, any device), proposals whose
        centre is farther from the lungs than their radius + ``lung_margin`` are dropped before the FPR head.
        Empty results are CPU tensors.
        """
        device = x.device
        out = self.features(x)
        cls, reg = self.flat_rpn(out)
        anchors = self.anchors(out["cls"].shape[2:], device=device)
        scores = torch.sigmoid(cls[0].float())
        k = min(len(scores), 3000)
        top = scores.topk(k).indices
        boxes = decode(reg[0, top].float(), anchors[top])
        boxes[:, 3] = boxes[:, 3].clamp(min=2.0)
        top_scores = scores[top]
        if lung_dist is not None:
            c = boxes[:, :3].round().long()
            for a, n in enumerate(lung_dist.shape):
                c[:, a] = c[:, a].clamp(0, n - 1)
            c = c.to(lung_dist.device)
            d = lung_dist[c[:, 0], c[:, 1], c[:, 2]].to(device)
            near = d <= boxes[:, 3] / 2 + lung_margin
            boxes, top_scores = boxes[near], top_scores[near]
        if not len(boxes):
            empty = torch.zeros(0)
            return {"boxes": torch.zeros((0, 4)), "probability": empty, "rpn": empty,
                    "masks": torch.zeros((0, self.mask_size, self.mask_size, self.mask_size))}
        keep = nms_cubes(boxes, top_scores, nms_iou, max_proposals)
        boxes, rpn = boxes[keep], top_scores[keep]
        bi = torch.zeros(len(boxes), dtype=torch.long, device=device)
        logit, delta = self.fpr_head(out["f2"], x, bi, boxes)
        refined = decode(delta.float(), boxes)
        prob = torch.sigmoid(logit.float())
        keep = nms_cubes(refined, prob, nms_iou, max_detections)
        keep = keep[(prob[keep] >= min_probability).cpu()]  # nms_cubes returns CPU indices
        refined, prob, rpn = refined[keep], prob[keep], rpn[keep]
        masks = self.mask_head(out["f2"], out["f4"], x, bi[:len(refined)], refined) if len(refined) else \
            torch.zeros((0, self.mask_size, self.mask_size, self.mask_size))
        return {"boxes": refined, "probability": prob, "rpn": rpn, "masks": masks}


# ---------------------------------------------------------------------------------------------- losses

def nodulenet_loss(model: NoduleNet3d, image: torch.Tensor, targets: dict[str, Any],
                   coords: torch.Tensor | None = None, rng: torch.Generator | None = None) -> torch.Tensor:
    """The training loss of :class:`NoduleNet3d` (called by its ``forward`` in training mode with targets; call
    the model, not this, so that DDP sees the forward): RPN focal + box loss, FPR head loss on proposals and
    jittered ground truth (BCE + smooth L1), mask Dice + BCE on jittered ground-truth boxes.

    ``targets["boxes"]`` (per image ``(N_b, 4)`` cubes) and ``targets["masks"]`` (per image ``(N_b, D, H, W)``)
    must be on ``image``'s device; the targets are built there (the jitter is drawn on the CPU, from ``rng`` or
    the global generator, then moved). Some parameters get no gradient in a step (the mask head without a
    nodule in the batch, the box regressions without a positive): DDP needs ``find_unused_parameters=True``."""
    device = image.device
    out = model.features(image, coords)
    cls, reg = model.flat_rpn(out)
    anchors = model.anchors(out["cls"].shape[2:], device=device)
    loss = image.new_zeros(())
    roi_b, roi_boxes, roi_lab, roi_tgt = [], [], [], []
    mask_b, mask_boxes, mask_tgt = [], [], []
    for b, gt in enumerate(targets["boxes"]):
        labels, rpn_tgt = rpn_targets(anchors, gt)
        loss = loss + rpn_loss(cls[b], reg[b], labels, rpn_tgt) / len(targets["boxes"])
        with torch.no_grad():
            scores = torch.sigmoid(cls[b].float())
            top = scores.topk(min(len(scores), 500)).indices
            props = decode(reg[b, top].float(), anchors[top])
            props[:, 3] = props[:, 3].clamp(min=2.0)
            props = props[nms_cubes(props, scores[top], 0.1, 12)]
            if len(gt):
                jit = gt.repeat(2, 1)
                jit[:, :3] += torch.randn(jit[:, :3].shape, generator=rng).to(device) * 0.1 * jit[:, 3:]
                jit[:, 3:] *= torch.exp(torch.randn(jit[:, 3:].shape, generator=rng).to(device) * 0.1)
                props = torch.cat([props, jit])
                iou = box_iou_cubes(props, gt)
                best, arg = iou.max(1)
                lab = torch.where(best >= 0.4, 1.0, torch.where(best < 0.2, 0.0, -1.0))
                tgt = encode(gt[arg], props)
                mb = gt.clone()
                mb[:, :3] += torch.randn(mb[:, :3].shape, generator=rng).to(device) * 0.05 * mb[:, 3:]
                mb[:, 3:] *= torch.exp(torch.randn(mb[:, 3:].shape, generator=rng).to(device) * 0.05)
                mask_b.append(torch.full((len(gt),), b, device=device))
                mask_boxes.append(mb)
                mask_tgt.append((b, targets["masks"][b]))
            else:
                lab, tgt = torch.zeros(len(props), device=device), torch.zeros((len(props), 4), device=device)
        roi_b.append(torch.full((len(props),), b, device=device))
        roi_boxes.append(props)
        roi_lab.append(lab)
        roi_tgt.append(tgt)
    bi, boxes, lab, tgt = torch.cat(roi_b), torch.cat(roi_boxes), torch.cat(roi_lab), torch.cat(roi_tgt)
    keep = lab >= 0
    if keep.any():
        logit, delta = model.fpr_head(out["f2"], image, bi[keep], boxes[keep])
        loss = loss + F.binary_cross_entropy_with_logits(logit.float(), lab[keep])
        pos = lab[keep] == 1
        if pos.any():
            loss = loss + F.smooth_l1_loss(delta[pos].float(), tgt[keep][pos], beta=1 / 9)
    if mask_boxes:
        mb, mbi = torch.cat(mask_boxes), torch.cat(mask_b)
        logits = model.mask_head(out["f2"], out["f4"], image, mbi, mb)
        mask_targets = []
        for b, masks in mask_tgt:
            sel = mb[mbi == b]
            for j in range(len(sel)):
                t = roi_sample(masks[j][None, None].float(), torch.zeros(1, dtype=torch.long, device=device), sel[j:j + 1],
                               model.mask_size, 1.0, mode="nearest")
                mask_targets.append(t[0, 0])
        loss = loss + dice_bce_loss(logits, torch.stack(mask_targets))
    return loss

def rpn_targets(anchors: torch.Tensor, gt: torch.Tensor, pos_iou: float = 0.3,
                neg_iou: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor labels (1 positive, 0 negative, -1 ignored) and regression targets for one image.

    Positives: IoU >= ``pos_iou`` with a nodule, plus the best anchor of each nodule; negatives: IoU < ``neg_iou``
    with every nodule.
    """
    labels = torch.zeros(len(anchors), dtype=torch.long, device=anchors.device)
    targets = torch.zeros((len(anchors), 4), device=anchors.device)
    if len(gt) == 0:
        return labels, targets
    iou = cube_iou(anchors, gt)
    best_iou, best_gt = iou.max(1)
    labels[(best_iou >= neg_iou) & (best_iou < pos_iou)] = -1
    labels[best_iou >= pos_iou] = 1
    forced = iou.argmax(0)
    labels[forced] = 1
    best_gt[forced] = torch.arange(len(gt), device=anchors.device)
    targets = encode(gt[best_gt], anchors)
    return labels, targets


def rpn_loss(cls: torch.Tensor, reg: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2) over non-ignored anchors, normalised by the positives, plus
    smooth L1 on the positives' regression. Shapes: ``cls (N,)``, ``reg (N, 4)``, ``labels (N,)``, ``targets (N, 4)``."""
    valid = labels >= 0
    pos = labels == 1
    n_pos = max(1, int(pos.sum()))
    focal = sigmoid_focal_loss(cls[valid].float(), labels[valid].float(), alpha=0.25, gamma=2.0, reduction="sum") / n_pos
    box = F.smooth_l1_loss(reg[pos].float(), targets[pos], reduction="sum", beta=1 / 9) / n_pos if pos.any() else cls.sum() * 0
    return focal + box


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE-with-logits of mask logits and a {0, 1} target of the same shape."""
    p = torch.sigmoid(logits.float())
    dims = tuple(range(1, target.dim()))
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + F.binary_cross_entropy_with_logits(logits.float(), target)


@register_model("nodulenet-3d", task="nodule", description="NoduleNet-style 3D RPN + decoupled FPR + mask heads (CPU size)")
def nodulenet_3d(in_channels: int = 1, channels: Sequence[int] = (24, 48, 64),
                 anchors: Sequence[float] = (3.33, 6.67, 13.33, 20.0), roi_size: int = 8, mask_size: int = 24,
                 blocks: Sequence[int] = (1, 2, 2), back_channels: Sequence[int] | None = None,
                 back_blocks: Sequence[int] | None = None) -> NoduleNet3d:
    """A :class:`NoduleNet3d` (Tang et al., MICCAI 2019, scaled down; module docstring). The default anchor
    sides 3.33-20 voxels are 5-30 mm at the 1.5 mm voxels of the nodule route.

    Raises:
        TypeError: ``channels``/``blocks``/``back_*`` of the wrong length or a stage with fewer than one
            block.
    """
    return NoduleNet3d(in_channels, tuple(channels), tuple(anchors), roi_size, mask_size, tuple(blocks),
                       back_channels, back_blocks)
