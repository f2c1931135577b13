"""Geometry shared by every layer: boxes (:mod:`pulmo.geometry.boxes`).

The bottom layer of pulmo, next to ``io`` and ``metrics``: it imports nothing of ours (numpy at import time,
torch and MONAI only inside the functions that need them), so ``metrics`` may use it and stay pure.
"""

from pulmo.geometry.boxes import (
    BOX_MODES,
    box_area,
    box_iou,
    convert_box_mode,
    cube_iou,
    cube_nms,
    cubes_to_boxes,
    cxcywh_to_xyxy,
    mask_to_box,
    nms,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

__all__ = ["BOX_MODES", "box_area", "box_iou", "convert_box_mode", "cube_iou", "cube_nms", "cubes_to_boxes",
           "cxcywh_to_xyxy", "mask_to_box", "nms", "xywh_to_xyxy", "xyxy_to_cxcywh", "xyxy_to_xywh"]
