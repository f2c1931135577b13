"""The chest X-ray classifier's input (``cxr-classify``): robust normalisation, lung-field crop, optional lung
masking, histogram equalisation, resize. One function, :func:`classifier_input`, run by
:meth:`pulmo.weights.InputSpec.prepare` for a ``cxr-classify`` card and by the classifier's training cache."""

from __future__ import annotations

import numpy as np

from pulmo.errors import ConfigError, InputError
from pulmo.geometry.boxes import mask_to_box
from pulmo.transforms.geometry import resize_image
from pulmo.transforms.intensity import normalize_cxr

#: How the classifier frames the image: ``lungs`` (the lung mask's bounding box + margin) or ``none``.
CROP_MODES = ("none", "lungs")

#: The one default of ``crop`` (training settings, the card's ``input.crop`` when absent, :class:`Preprocessor`).
DEFAULT_CROP = "lungs"

#: The default margin around the lung box, a fraction of its height / width on each side.
DEFAULT_CROP_MARGIN = 0.1


def lung_field_box(lungs: np.ndarray, margin: float = DEFAULT_CROP_MARGIN) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the bounding box of ``lungs`` ``(H, W)`` grown by ``margin`` of its size on each
    side, within the image; the whole image when the mask covers less than 2 % of it (no usable lung fields)."""
    h, w = lungs.shape
    if lungs.sum() < 0.02 * h * w:
        return 0, h, 0, w
    r0, c0, r1, c1 = mask_to_box(lungs)  # rows r0..r1 - 1, columns c0..c1 - 1
    dy, dx = margin * (r1 - r0), margin * (c1 - c0)
    return (max(0, int(r0 - dy)), min(h, int(np.ceil(r1 + dy))),
            max(0, int(c0 - dx)), min(w, int(np.ceil(c1 + dx))))


def needs_lungs(crop: str, lung_mask: bool) -> bool:
    """Whether the recipe needs a lung mask (``crop == "lungs"`` or ``lung_mask``)."""
    return bool(lung_mask) or crop == "lungs"


def classifier_input(pixels: np.ndarray, size: tuple[int, int], *, lungs: np.ndarray | None = None,
                     crop: str = DEFAULT_CROP, lung_mask: bool = False, equalize: bool = False,
                     margin: float = DEFAULT_CROP_MARGIN) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The classifier's input of a greyscale chest X-ray.

    :func:`normalize_cxr` (0.5-99.5 percentile min-max to [0, 1]); times the lung mask when ``lung_mask``;
    cropped to :func:`lung_field_box` when ``crop == "lungs"``; ``skimage.exposure.equalize_hist`` when
    ``equalize`` (inside the lungs only when ``lung_mask``); :func:`resize_image` to ``size`` (aspect not
    kept); clipped to [0, 1].

    Args:
        pixels: ``(H, W)`` grey levels, any real dtype.
        size: ``(h, w)`` output size in px.
        lungs: the lung mask ``(H, W)`` (bool or 0/1); needed when ``crop == "lungs"`` or ``lung_mask``.
        crop: one of :data:`CROP_MODES`.
        lung_mask: blank the pixels outside ``lungs``.
        equalize: histogram equalisation after cropping.
        margin: the lung box's margin (a fraction of its size on each side).

    Returns:
        ``(x, box)``: float32 ``(h, w)`` in [0, 1], and the crop ``(y0, y1, x0, x1)`` in original px (the whole
        image without cropping).

    Raises:
        ConfigError: ``crop`` is not one of :data:`CROP_MODES`.
        InputError: the recipe needs a lung mask and ``lungs`` is None, or ``lungs`` is not ``(H, W)``.
    """
    if crop not in CROP_MODES:
        raise ConfigError(f"crop must be 'none' or 'lungs', got {crop!r}")
    if needs_lungs(crop, lung_mask):
        if lungs is None:
            raise InputError(f"the cxr-classify input (crop={crop!r}, lung_mask={bool(lung_mask)}) needs a lung "
                             "mask: pass the (H, W) lung mask of the image (e.g. LungSegmenter().predict(image))")
        if np.shape(lungs) != np.shape(pixels):
            raise InputError(f"the lung mask's shape {np.shape(lungs)} is not the image's {np.shape(pixels)}")
    x = normalize_cxr(pixels)
    if lung_mask:
        x = x * lungs
    box = lung_field_box(lungs, margin) if crop == "lungs" else (0, x.shape[0], 0, x.shape[1])
    x = x[box[0]:box[1], box[2]:box[3]]
    if equalize:
        from skimage.exposure import equalize_hist

        x = equalize_hist(x, mask=(x > 0) if lung_mask else None)
        if lung_mask:
            x = x * (lungs[box[0]:box[1], box[2]:box[3]] > 0)
    return np.clip(resize_image(x, tuple(size)), 0, 1).astype(np.float32), box


__all__ = ["CROP_MODES", "DEFAULT_CROP", "DEFAULT_CROP_MARGIN", "classifier_input", "lung_field_box", "needs_lungs"]
