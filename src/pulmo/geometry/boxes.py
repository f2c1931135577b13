"""Box geometry for 2-D and 3-D boxes: mode conversions, areas, IoU matrices, non-maximum suppression (NMS),
the bounding box of a mask. One implementation for the metrics, the detectors and the tasks.

Library: MONAI's box utilities (``monai.data.box_utils``; MONAI is already a dependency of pulmo's models and
transforms). pulmo follows its conventions and delegates to it where it gives the numbers pulmo has always
produced:

* **modes**, named as MONAI names them: ``"xyxy"`` / ``"xyzxyz"`` (corners, MONAI's ``StandardMode``),
  ``"xywh"`` / ``"xyzwhd"`` (corner and size), ``"ccwh"`` / ``"cccwhd"`` (centre and size; ``"cxcywh"``,
  torchvision's name, is accepted for ``"ccwh"``). Coordinates are **continuous**: a box covers
  ``[x1, x2) x [y1, y2)``, its width is ``x2 - x1`` (MONAI's ``TO_REMOVE = 0``; no pixel-inclusive ``+ 1``),
  as in COCO, torchvision and MONAI. The bounding box of the pixels ``r0..r1`` of a mask is ``[r0, r1 + 1)``
  (:func:`mask_to_box`). The coordinates follow the axis order they are given in: pulmo's CXR boxes are
  ``(x = column, y = row)``, its CT boxes ``(z, y, x)`` voxel indices; IoU and NMS do not depend on the order;
* **NMS** is MONAI's :func:`monai.data.box_utils.non_max_suppression`: greedy, highest score first, a box is
  suppressed when its overlap with a kept box is **greater than** the threshold (kept at ``<=``), at most
  ``max_keep`` boxes kept, indices returned highest score first.

Where MONAI computes differently from the code these functions replaced, pulmo keeps the old numbers:

* MONAI's ``box_iou``, ``box_area`` and ``convert_box_mode`` compute in float32 (``COMPUTE_DTYPE``; a float64
  width of 0.1 becomes 0.10000000149), add ``eps`` to the IoU's union and raise on a box with ``x2 < x1``.
  :func:`box_iou`, :func:`box_area` and :func:`convert_box_mode` do the same arithmetic in float64 (IoU, area)
  or in the input's dtype (conversions), an inverted side counts as length 0 and an empty union gives IoU 0:
  the detection metrics follow pycocotools (float64), where an IoU of exactly 0.5 must stay 0.5. They agree
  with MONAI to float32 rounding (``tests/geometry/test_boxes.py`` checks it);
* nodule cubes ``(z, y, x, d)`` (:mod:`pulmo.models.nodulenet`) have their own IoU, :func:`cube_iou`, with the
  volume as ``d ** 3`` (not the product of the corner differences, which can differ in the last bit and flip
  an NMS decision at the threshold);
* MONAI sorts the scores with a stable sort (tied scores in index order). ``stable=False`` in :func:`nms`
  keeps torch's default ``argsort(descending=True)`` order of tied scores instead, the order pulmo's nodule
  NMS has always used (the bundled ``nodule`` weights were tuned and evaluated with it);
* ``max_keep=0`` keeps nothing (MONAI reads ``max_proposals`` 0 as "no limit"; here that is ``None``).

Layering: this module is at the bottom of pulmo with ``io`` and ``metrics``: it imports nothing of ours, only
numpy at import time; torch and MONAI are imported inside :func:`nms` / :func:`cube_iou` (importing MONAI
takes seconds), so :mod:`pulmo.metrics` imports it and stays pure numpy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

#: Box modes by number of spatial dimensions (MONAI's names; ``"cxcywh"`` is an alias of ``"ccwh"``).
BOX_MODES = {2: ("xyxy", "xywh", "ccwh"), 3: ("xyzxyz", "xyzwhd", "cccwhd")}
_KIND = {"xyxy": "corner", "xyzxyz": "corner", "xywh": "size", "xyzwhd": "size", "ccwh": "centre",
         "cccwhd": "centre", "cxcywh": "centre"}
_DIMS = {"xyxy": 2, "xywh": 2, "ccwh": 2, "cxcywh": 2, "xyzxyz": 3, "xyzwhd": 3, "cccwhd": 3}


def _is_tensor(x: Any) -> bool:
    """``x`` is a torch tensor (without importing torch when nobody has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _cat(parts: list[Any], like: Any) -> Any:
    if _is_tensor(like):
        import torch

        return torch.cat(parts, dim=1)
    return np.concatenate(parts, axis=1)


def _spatial_dims(boxes: Any, what: str) -> int:
    if len(boxes.shape) != 2 or boxes.shape[1] not in (4, 6):
        raise ValueError(f"{what}: boxes must have shape (N, 4) (2-D) or (N, 6) (3-D), "
                         f"got {tuple(boxes.shape)}")
    return boxes.shape[1] // 2


def convert_box_mode(boxes: Any, src_mode: str, dst_mode: str) -> Any:
    """Boxes ``(N, 4)`` or ``(N, 6)`` from one mode to another (see the module docstring for the names).

    Same modes and formulas as :func:`monai.data.box_utils.convert_box_mode` (through the corners), but in the
    input's dtype: MONAI rounds sizes through float32 and clamps negative sizes to 0; here nothing is rounded
    or clamped (check the boxes first where that matters).

    Args:
        boxes: numpy array or torch tensor ``(N, 2 * D)``, D = 2 or 3 spatial dimensions, floating point.
        src_mode: the mode of ``boxes``, e.g. ``"xywh"``.
        dst_mode: the mode wanted, e.g. ``"xyxy"``; same number of dimensions.

    Returns:
        A new array or tensor (never a view of ``boxes``), same type, shape and dtype.

    Raises:
        ValueError: an unknown mode, modes of different dimensions, or boxes of another shape.
    """
    for m in (src_mode, dst_mode):
        if m not in _KIND:
            raise ValueError(f"unknown box mode {m!r}; expected one of {sorted(_KIND)}")
    n = _spatial_dims(boxes, "convert_box_mode")
    if _DIMS[src_mode] != n or _DIMS[dst_mode] != n:
        raise ValueError(f"convert_box_mode: {src_mode!r} -> {dst_mode!r} for {n}-D boxes of shape "
                         f"{tuple(boxes.shape)}")
    src, dst = _KIND[src_mode], _KIND[dst_mode]
    if src == dst:
        return boxes.clone() if _is_tensor(boxes) else np.array(boxes, copy=True)
    a, b = boxes[:, :n], boxes[:, n:]
    if src == "corner":
        lo, hi = a, b
    elif src == "size":
        lo, hi = a, a + b
    else:
        lo, hi = a - b / 2, a + b / 2
    if dst == "corner":
        return _cat([lo, hi], boxes)
    if dst == "size":
        return _cat([lo, hi - lo], boxes)
    return _cat([(lo + hi) / 2, hi - lo], boxes)


def xywh_to_xyxy(boxes: Any) -> Any:
    """``(x, y, w, h)`` -> ``(x1, y1, x2, y2)`` (2-D; :func:`convert_box_mode` for 3-D)."""
    return convert_box_mode(boxes, "xywh", "xyxy")


def xyxy_to_xywh(boxes: Any) -> Any:
    """``(x1, y1, x2, y2)`` -> ``(x, y, w, h)``."""
    return convert_box_mode(boxes, "xyxy", "xywh")


def cxcywh_to_xyxy(boxes: Any) -> Any:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    return convert_box_mode(boxes, "ccwh", "xyxy")


def xyxy_to_cxcywh(boxes: Any) -> Any:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    return convert_box_mode(boxes, "xyxy", "ccwh")


def cubes_to_boxes(cubes: Any) -> Any:
    """Cubes ``(N, 4)`` ``(c0, c1, c2, side)`` (centre and side, e.g. the ``(z, y, x, d)`` voxel cubes of
    :mod:`pulmo.models.nodulenet`) -> corner boxes ``(N, 6)`` ``(lo0, lo1, lo2, hi0, hi1, hi2)`` in the same
    axis order (``"cccwhd"`` with w = h = d -> ``"xyzxyz"``). Numpy or torch, same dtype.

    Raises:
        ValueError: ``cubes`` is not ``(N, 4)``.
    """
    if len(cubes.shape) != 2 or cubes.shape[1] != 4:
        raise ValueError(f"cubes must have shape (N, 4) (centre and side), got {tuple(cubes.shape)}")
    c, d = cubes[:, :3], cubes[:, 3:]
    return _cat([c - d / 2, c + d / 2], cubes)


def _as_float64(boxes: Any, what: str) -> np.ndarray:
    b = np.asarray(boxes.detach().cpu() if _is_tensor(boxes) else boxes, dtype=np.float64)
    if b.size == 0 and b.ndim < 2:
        b = b.reshape(0, 4)
    _spatial_dims(b, what)
    return b


def _sides(boxes: np.ndarray) -> list[np.ndarray]:
    n = boxes.shape[1] // 2
    return [np.clip(boxes[:, n + k] - boxes[:, k], 0, None) for k in range(n)]


def box_area(boxes: Any) -> np.ndarray:
    """Area (2-D) or volume (3-D) of corner boxes: float64 ``(N,)``, the product of the sides in axis order;
    a side with ``hi < lo`` counts as 0 (MONAI's ``box_area`` raises there and works in float32).

    Args:
        boxes: ``(N, 4)`` ``xyxy`` or ``(N, 6)`` ``xyzxyz``, numpy, a CPU tensor or nested lists.

    Raises:
        ValueError: not ``(N, 4)`` or ``(N, 6)``.
    """
    sides = _sides(_as_float64(boxes, "box_area"))
    area = sides[0]
    for s in sides[1:]:
        area = area * s
    return area


def box_iou(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Intersection over union of every pair of corner boxes, 2-D (``xyxy``) or 3-D (``xyzxyz``).

    MONAI's ``box_iou`` formula in float64 (see the module docstring): continuous coordinates, an inverted
    side counts as 0, IoU 0 where the union is empty (degenerate boxes).

    Args:
        boxes1: ``(N, 4)`` or ``(N, 6)``, numpy, a CPU tensor or nested lists (px or voxels).
        boxes2: ``(M, 4)`` or ``(M, 6)``, the same number of dimensions.

    Returns:
        float64 ``(N, M)`` in [0, 1].

    Raises:
        ValueError: a shape other than ``(K, 4)`` / ``(K, 6)``, or 2-D boxes against 3-D ones.
    """
    a, b = _as_float64(boxes1, "boxes1"), _as_float64(boxes2, "boxes2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"box_iou: boxes of shape {a.shape} against {b.shape}; expected the same dimensions")
    n = a.shape[1] // 2
    area_a, area_b = box_area(a), box_area(b)
    lt = np.maximum(a[:, None, :n], b[None, :, :n])
    rb = np.minimum(a[:, None, n:], b[None, :, n:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0]
    for k in range(1, n):
        inter = inter * wh[..., k]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def cube_iou(cubes1: Any, cubes2: Any) -> Any:
    """IoU of cubes ``(z, y, x, d)`` (centre and side, any one unit), every pair: torch ``(N, 4)`` and
    ``(M, 4)`` -> ``(N, M)`` in the input's dtype. The volume of a cube is ``d ** 3`` and the union is
    clamped at 1e-6 (the formula of pulmo's nodule detector, kept bit for bit; close to :func:`box_iou` of
    :func:`cubes_to_boxes`). Symmetric to the last bit: ``cube_iou(a, b) == cube_iou(b, a).T``.
    """
    import torch

    a, b = cubes1, cubes2
    lo = torch.maximum(a[:, None, :3] - a[:, None, 3:] / 2, b[None, :, :3] - b[None, :, 3:] / 2)
    hi = torch.minimum(a[:, None, :3] + a[:, None, 3:] / 2, b[None, :, :3] + b[None, :, 3:] / 2)
    inter = (hi - lo).clamp(min=0).prod(-1)
    return inter / (a[:, None, 3] ** 3 + b[None, :, 3] ** 3 - inter).clamp(min=1e-6)


def _torch_box_iou(boxes1: Any, boxes2: Any) -> Any:
    import torch

    return torch.from_numpy(box_iou(boxes1, boxes2)).to(boxes1.device)


def nms(boxes: Any, scores: Any, iou_threshold: float, max_keep: int | None = None, *, stable: bool = True,
        overlap: Callable[[Any, Any], Any] | None = None) -> Any:
    """Greedy non-maximum suppression (MONAI's :func:`~monai.data.box_utils.non_max_suppression`): take the
    highest-scoring box left, drop every remaining box whose overlap with it is **greater than**
    ``iou_threshold``, repeat.

    Args:
        boxes: ``(N, 4)`` ``xyxy`` or ``(N, 6)`` ``xyzxyz`` (or any per-box format ``overlap`` reads), numpy
            or torch.
        scores: ``(N,)``, higher is better.
        iou_threshold: boxes with an overlap ``> iou_threshold`` with a kept box are suppressed.
        max_keep: stop after this many boxes (None: no limit; 0 or less: keep nothing).
        stable: tied scores in index order (MONAI's stable sort); False: in the order of torch's default
            ``argsort(descending=True)`` (not stable; the order pulmo's nodule NMS was tuned with).
        overlap: ``overlap(boxes_a (K, C), boxes_b (1, C)) -> (K, 1)`` tensor; default :func:`box_iou`
            (float64), :func:`cube_iou` for cubes (:func:`cube_nms`).

    Returns:
        int64 indices into ``boxes`` of the kept boxes, highest score first: a numpy array for numpy boxes, a
        tensor on the boxes' device for tensors.

    Raises:
        ValueError: ``boxes`` not 2-D or not as many scores as boxes.
    """
    import torch
    from monai.data.box_utils import non_max_suppression

    numpy_in = not _is_tensor(boxes)
    b, s = torch.as_tensor(boxes), torch.as_tensor(scores)
    if b.ndim != 2 or s.shape != (b.shape[0],):
        raise ValueError(f"nms: boxes {tuple(b.shape)} and scores {tuple(s.shape)}; expected (N, C) and (N,)")
    if b.dtype in (torch.float16, torch.bfloat16):
        b = b.float()  # the ranks below must be exact in the boxes' dtype
    if len(b) == 0 or (max_keep is not None and max_keep <= 0):
        keep = torch.zeros(0, dtype=torch.long, device=b.device)
    else:
        # Sort here (MONAI casts the scores to the boxes' dtype before sorting, which can tie distinct scores)
        # and hand MONAI strictly decreasing ranks, which its stable sort keeps in this order.
        order = torch.argsort(s, descending=True, stable=True) if stable else s.argsort(descending=True)
        order = order.to(b.device)
        rank_dtype = b.dtype if b.is_floating_point() else torch.float64
        ranks = torch.arange(len(order), 0, -1, device=b.device).to(rank_dtype)
        metric = overlap or _torch_box_iou
        kept = non_max_suppression(b[order], ranks, iou_threshold, -1 if max_keep is None else int(max_keep),
                                   box_overlap_metric=lambda x, y: torch.as_tensor(metric(x, y)))
        keep = order[torch.as_tensor(kept, dtype=torch.long, device=b.device)]
    return keep.cpu().numpy() if numpy_in else keep


def cube_nms(cubes: Any, scores: Any, iou_threshold: float, max_keep: int | None = None, *,
             stable: bool = True) -> Any:
    """:func:`nms` of cubes ``(z, y, x, d)`` (torch ``(N, 4)``) with :func:`cube_iou`; indices kept, highest
    score first."""
    return nms(cubes, scores, iou_threshold, max_keep, stable=stable, overlap=cube_iou)


def mask_to_box(mask: Any) -> np.ndarray:
    """Bounding box of the non-zero elements of an N-D mask, as corners in array axis order: int64 ``(2 N,)``
    ``(lo_0, ..., lo_{N-1}, hi_0, ..., hi_{N-1})`` with ``hi`` exclusive (the last index + 1), so
    ``mask[lo_0:hi_0, ...]`` is the tight crop and, for a 2-D ``(H, W)`` mask, ``(row0, col0, row1, col1)``
    (pulmo's ``xyxy`` CXR box is ``(col0, row0, col1, row1)``). Reads one projection per axis (no list of
    coordinates), so it is cheap on a whole CT volume.

    Raises:
        ValueError: the mask is empty.
    """
    m = np.asarray(mask)
    lo, hi = [], []
    for axis in range(m.ndim):
        idx = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        if not len(idx):
            raise ValueError(f"mask_to_box: empty mask of shape {m.shape}")
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.array(lo + hi, dtype=np.int64)
