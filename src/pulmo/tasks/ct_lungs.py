"""Former home of the HU-threshold lung extraction, kept importable for compatibility: the code lives in
:mod:`pulmo.transforms.ct` (CT pre-processing shared by the tasks; ``transforms`` may not import ``tasks``).
New code imports from there.
"""

from __future__ import annotations

from pulmo.transforms.ct import (
    AIR_THRESHOLD_HU,
    CUT_LUNG_AREA_CM2,
    MIN_LUNG_ML,
    lung_coverage,
    lung_mask_ct,
    lung_mask_slice,
)

__all__ = ["AIR_THRESHOLD_HU", "CUT_LUNG_AREA_CM2", "MIN_LUNG_ML", "lung_coverage", "lung_mask_ct", "lung_mask_slice"]
