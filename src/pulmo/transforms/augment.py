"""Training-time augmentation for 2D segmentation, built from MONAI dictionary transforms.

Two elastic deformations are offered (``elastic=``):

* ``"monai"`` (the default, what pulmo's routes have always used): MONAI ``Rand2DElasticd`` with a control grid
  every ``size // 8`` px, normal offsets scaled by a magnitude drawn from (1, 3), bicubic upsampling of the grid.
  It is *not* the report's algorithm.
* ``"report"``: the RSNA pneumonia report's U-Net route's and Simard et al. 2003's: per-pixel uniform
  (-1, 1) displacement fields, Gaussian-smoothed by ``sigma``, scaled by ``alpha``, bilinear resampling
  (:mod:`pulmo.transforms.elastic`).
"""

from __future__ import annotations

import math

from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandScaleIntensityd,
)

from pulmo.errors import ConfigError
from pulmo.transforms.elastic import DEFAULT_ALPHA, DEFAULT_SIGMA, RandElasticReportd


def segmentation_augmentation(size: int, image_key: str = "image", mask_keys: tuple[str, ...] = ("label",),
                              elastic_prob: float = 0.3, elastic: str = "monai", elastic_alpha: float = DEFAULT_ALPHA,
                              elastic_sigma: float = DEFAULT_SIGMA) -> Compose:
    """Random affine (rotation +-10 deg, scale +-10 %, shift +-6 %), elastic deformation (``elastic``: "monai" or
    "report", see the module docstring; ``elastic_alpha`` / ``elastic_sigma`` in px are used by "report"),
    contrast/gamma, intensity scale and Gaussian noise. Masks are resampled with nearest neighbour.

    Inputs are channel-first arrays ``(C, H, W)`` under ``image_key`` and ``mask_keys``.

    Args:
        size: the side ``H = W`` of the training images in px; sets the shift range (``0.06 * size`` px) and
            the MONAI elastic control-grid spacing (``size // 8`` px).
        image_key: dictionary key of the image; the intensity transforms apply to it only and assume values
            in [0, 1] (noise std 0.02).
        mask_keys: dictionary keys of the masks, moved with the image.
        elastic_prob: probability in [0, 1] of the elastic deformation.
        elastic: ``"monai"`` or ``"report"``.
        elastic_alpha: displacement scale in px (``"report"`` only).
        elastic_sigma: Gaussian smoothing in px (``"report"`` only).

    Returns:
        A MONAI ``Compose`` of dictionary transforms.

    Raises:
        ConfigError: ``elastic`` is neither ``"monai"`` nor ``"report"``.
    """
    keys = (image_key, *mask_keys)
    modes = ("bilinear",) + ("nearest",) * len(mask_keys)
    if elastic == "monai":
        deform = Rand2DElasticd(keys, spacing=(size // 8, size // 8), magnitude_range=(1.0, 3.0), prob=elastic_prob,
                                mode=modes, padding_mode="zeros")
    elif elastic == "report":
        deform = RandElasticReportd(image_key, mask_keys, alpha=elastic_alpha, sigma=elastic_sigma, prob=elastic_prob)
    else:
        raise ConfigError(f"elastic must be 'monai' or 'report', got {elastic!r}")
    return Compose([
        RandAffined(keys, prob=0.8, rotate_range=math.radians(10), scale_range=0.1,
                    translate_range=0.06 * size, mode=modes, padding_mode="zeros"),
        deform,
        RandAdjustContrastd(image_key, prob=0.4, gamma=(0.6, 1.6)),
        RandScaleIntensityd(image_key, factors=0.15, prob=0.3),
        RandGaussianNoised(image_key, prob=0.2, std=0.02),
    ])


def ct_slice_augmentation(size: int, elastic_prob: float = 0.3) -> Compose:
    """:func:`segmentation_augmentation` plus random flips and 90-degree rotations: public CT slice sets
    (COVID-SemiSeg) are stored rotated and flipped, so the model must not depend on orientation.

    Args:
        size: the side of the square training slices in px.
        elastic_prob: probability in [0, 1] of the (MONAI) elastic deformation.

    Returns:
        A MONAI ``Compose`` over the keys ``image`` (``(C, H, W)`` in [0, 1]) and ``label`` (``(C, H, W)``).
    """
    from monai.transforms import RandFlipd, RandRotate90d

    keys = ("image", "label")
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotate90d(keys, prob=0.5, max_k=3),
        segmentation_augmentation(size, mask_keys=("label",), elastic_prob=elastic_prob),
    ])
