"""Files the browser viewer shows beside the analysis outputs, written from the image the analysis already read:
``image.png`` (a 2D input as 8-bit grey for display) or ``volume.nii.gz`` (a CT volume in HU with its geometry,
for NiiVue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pulmo.io import Image2D, Volume, write_nifti
from pulmo.report.overlay import PNG_COMPRESS_LEVEL, display_base, overlay

#: longest side of the display PNG, px (larger inputs are scaled down with Lanczos)
DISPLAY_MAX_SIDE = 2048


def display_png(image: Image2D, path: Path) -> None:
    """Write a 2D input as an 8-bit grey PNG for the browser (:func:`pulmo.report.overlay.display_base`: CT slices
    in HU through the lung window, the rest min-max scaled), at most :data:`DISPLAY_MAX_SIDE` px on the longer side
    (the viewer scales the lung mask PNG onto it).
    """
    overlay(display_base(image), [], already_01=True, max_side=DISPLAY_MAX_SIDE).convert("L").save(path, compress_level=PNG_COMPRESS_LEVEL)


def write_viewer_files(image: Image2D | Volume, out_dir: Path) -> list[str]:
    """The viewer's files for an analysed input: ``volume.nii.gz`` for a CT volume (HU as int16 when every value
    fits, else float; the input geometry kept) or ``image.png`` for a 2D input (:func:`display_png`).

    Args:
        image: the image or volume the analysis read (not read again).
        out_dir: the analysis output folder.

    Returns:
        The names written (``["volume.nii.gz"]`` or ``["image.png"]``).
    """
    out_dir = Path(out_dir)
    if isinstance(image, Volume):
        hu = image.hu
        if np.isfinite(hu).all() and hu.min() >= -32768 and hu.max() <= 32767:
            hu = np.rint(hu).astype(np.int16)
        write_nifti(hu, image, out_dir / "volume.nii.gz")
        return ["volume.nii.gz"]
    display_png(image, out_dir / "image.png")
    return ["image.png"]


__all__ = ["DISPLAY_MAX_SIDE", "display_png", "write_viewer_files"]
