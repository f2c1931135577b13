"""Elastic deformation as the RSNA Pneumonia Detection Challenge U-Net report describes it, which is Simard,
Steinkraus and Platt, "Best practices for convolutional neural networks applied to visual document analysis",
ICDAR 2003, section 2:

1. two random displacement fields ``dx, dy`` of the image's size, every pixel drawn independently from
   the uniform distribution on (-1, 1);
2. each field smoothed with a Gaussian filter of standard deviation ``sigma`` px
   (``scipy.ndimage.gaussian_filter``, mirrored at the borders so the field is statistically the same everywhere);
3. both fields multiplied by ``alpha`` (px);
4. output pixel ``(y, x)`` takes the input at ``(y + dy, x + dx)``: the image by bilinear interpolation
   (spline order 1), masks by nearest neighbour (or bilinear and a 0.5 threshold), all with the same field;
   positions outside the image are mirrored back in.

Small ``sigma`` gives nearly random (unsmooth) displacements, large ``sigma`` nearly a translation; for a field
smoothed with ``sigma >> 1`` the displacement's standard deviation is about ``alpha / (sqrt(3) * 2 * sqrt(pi) * sigma)``.
This is not MONAI's ``Rand2DElastic`` (normal offsets on a coarse control grid, bicubic upsampling) that
:func:`pulmo.transforms.augment.segmentation_augmentation` uses with ``elastic="monai"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform
from scipy.ndimage import gaussian_filter, map_coordinates

#: pulmo's defaults (the report states neither value): Simard et al.'s MNIST setting sigma = 4 px, alpha = 34 px
DEFAULT_ALPHA = 34.0
DEFAULT_SIGMA = 4.0


def elastic_displacement(shape: tuple[int, int], alpha: float, sigma: float,
                         rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The displacement fields ``(dy, dx)``, float64 arrays of ``shape`` in px: ``U(-1, 1)`` per pixel,
    Gaussian-smoothed by ``sigma`` (no smoothing when ``sigma == 0``), scaled by ``alpha``."""
    rng = np.random.default_rng(rng)
    fields = []
    for _ in range(2):
        d = rng.uniform(-1.0, 1.0, size=shape)
        if sigma > 0:
            d = gaussian_filter(d, sigma, mode="reflect")
        fields.append(d * alpha)
    return fields[0], fields[1]


def _warp(channels: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    return np.stack([map_coordinates(c, coords, order=order, mode="mirror") for c in channels])


def elastic_deform(image: np.ndarray, masks: Sequence[np.ndarray] = (), alpha: float = DEFAULT_ALPHA,
                   sigma: float = DEFAULT_SIGMA, rng: np.random.Generator | int | None = None,
                   mask_mode: str = "nearest") -> tuple[np.ndarray, list[np.ndarray]]:
    """Deform an image and its masks with one random elastic field (module docstring).

    Args:
        image: ``(H, W)`` or channel-first ``(C, H, W)`` array.
        masks: arrays of the same spatial size (``(H, W)`` or ``(C, H, W)``), moved with the image.
        alpha: displacement scale in px (0 gives the identity).
        sigma: standard deviation of the Gaussian smoothing in px.
        rng: a numpy ``Generator`` or a seed.
        mask_mode: ``"nearest"`` or ``"bilinear"`` (then thresholded at 0.5 to 0 / 1).

    Returns:
        ``(image, masks)`` with the inputs' shapes. A float image keeps its dtype, any other image becomes
        float32; every mask keeps its dtype (integer masks stay integer).

    Raises:
        ValueError: ``mask_mode`` is neither ``"nearest"`` nor ``"bilinear"``, or a mask's last two
            dimensions differ from the image's ``(H, W)``.
    """
    if mask_mode not in ("nearest", "bilinear"):
        raise ValueError(f"mask_mode must be 'nearest' or 'bilinear', got {mask_mode!r}")
    img = np.asarray(image)
    h, w = img.shape[-2:]
    dy, dx = elastic_displacement((h, w), alpha, sigma, rng)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        a = np.asarray(a)
        if a.shape[-2:] != (h, w):
            raise ValueError(f"mask of shape {a.shape} does not match the image's {(h, w)}")
        flat = a.reshape(-1, h, w).astype(np.float64)
        return _warp(flat, coords, order).reshape(a.shape)

    out_img = warp(img, 1).astype(img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32)
    out_masks = []
    for m in masks:
        m = np.asarray(m)
        warped = warp(m, 0) if mask_mode == "nearest" else (warp(m, 1) >= 0.5).astype(np.float64)
        out_masks.append(warped.astype(m.dtype))
    return out_img, out_masks


class RandElasticReportd(RandomizableTransform, MapTransform):
    """MONAI dictionary transform applying :func:`elastic_deform` with probability ``prob``: ``image_key``
    bilinearly, every key of ``mask_keys`` with ``mask_mode``; one field per call, drawn from the transform's
    random state (``set_random_state`` seeds it). Values are channel-first ``(C, H, W)`` arrays or tensors."""

    def __init__(self, image_key: str = "image", mask_keys: Sequence[str] = ("label",), alpha: float = DEFAULT_ALPHA,
                 sigma: float = DEFAULT_SIGMA, prob: float = 1.0, mask_mode: str = "nearest"):
        MapTransform.__init__(self, (image_key, *mask_keys), allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.mask_keys = image_key, tuple(mask_keys)
        self.alpha, self.sigma, self.mask_mode = float(alpha), float(sigma), mask_mode
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        """Draw whether the next call transforms (probability ``prob``) and the seed of its field.

        Args:
            data: ignored (MONAI's ``Randomizable`` signature).
        """
        super().randomize(None)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        present = [k for k in self.mask_keys if k in d]
        image, masks = elastic_deform(np.asarray(d[self.image_key]), [np.asarray(d[k]) for k in present],
                                      self.alpha, self.sigma, np.random.default_rng(self._seed), self.mask_mode)
        d[self.image_key] = image
        d.update(zip(present, masks))
        return d


__all__ = ["DEFAULT_ALPHA", "DEFAULT_SIGMA", "RandElasticReportd", "elastic_deform", "elastic_displacement"]
