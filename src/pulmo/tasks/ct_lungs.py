"""Lung mask of a chest CT by HU thresholding and connected components (no learned model).

The classic method (e.g. Hu, Hoffman & Reinhardt, IEEE TMI 2001; the LUNA16 pre-processing tutorials):
1. air-like voxels: HU < -320;
2. drop the air outside the body: 3D components touching the in-plane border of the volume;
3. keep the largest component, and the second when it is at least 20 % of the first (two separate lungs);
   components under 50 mL are dropped (bowel gas, small airway pieces);
4. close small gaps (binary closing, 2 voxels, the volume padded with copies of its end slices) and fill holes slice by slice, so vessels, nodules and dense
   infection inside the lung are part of the mask.
scipy.ndimage does the labelling and morphology. Work is done on a 2x in-plane down-sampled copy for speed
and mapped back to the input grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pulmo.errors import InputError
from pulmo.io import Image2D, Volume

AIR_THRESHOLD_HU = -320.0
MIN_LUNG_ML = 50.0


#: A lung cut by the scan's first or last slice still has this much lung area (cm²) in that slice; a scan that
#: covers the whole lung ends at the apex or the base with a few cm² at most (LIDC-IDRI-0001, 133 slices:
#: 0.0 and 0.3 cm²; its 26-slice excerpt in ``examples/``: 243 and 208 cm²; pyradiomics lung1: 92 cm² in
#: its first slice).
CUT_LUNG_AREA_CM2 = 5.0


def lung_coverage(lungs: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Whether the scan holds the whole lung field along z, from the lung area in its first and last slices.

    Args:
        lungs: bool ``(Z, Y, X)`` lung mask (:func:`lung_mask_ct`).
        spacing: ``(z, y, x)`` voxel spacing in mm.

    Returns:
        ``{"complete": bool, "cut_at": ["first slice" | "last slice", ...], "end_slice_area_cm2": [first,
        last], "note": str | None}``; ``complete`` is false when an end slice has at least
        :data:`CUT_LUNG_AREA_CM2` of lung, and ``note`` then says that volumes and percentages of lung cover
        only the part of the lungs inside the scan.
    """
    pixel_cm2 = float(spacing[1]) * float(spacing[2]) / 100.0
    areas = [round(float(lungs[0].sum()) * pixel_cm2, 1), round(float(lungs[-1].sum()) * pixel_cm2, 1)]
    cut = [name for name, area in zip(("first slice", "last slice"), areas) if area >= CUT_LUNG_AREA_CM2]
    note = None
    if cut:
        where = " and ".join(f"the {c} ({a} cm² of lung)" for c, a in zip(("first slice", "last slice"), areas)
                             if c in cut)
        note = (f"the lungs are only partly in the scan: they reach {where}, so the lung volume, and every "
                f"percentage of lung, covers only the {lungs.shape[0]} slices scanned")
    return {"complete": not cut, "cut_at": cut, "end_slice_area_cm2": areas, "note": note}

def lung_mask_ct(volume: Volume, threshold_hu: float = AIR_THRESHOLD_HU) -> np.ndarray:
    """Lung mask of a CT volume.

    Args:
        volume: CT in HU, ``hu`` shape ``(Z, Y, X)``.
        threshold_hu: air/lung threshold.

    Returns:
        bool ``(Z, Y, X)``, both lungs (trachea and main bronchi may be included where they join the lungs).

    Raises:
        InputError: the values are not plausible HU (no air below -500), or no lung-sized air region is found.
    """
    hu = volume.hu
    if hu.min() > -500:
        raise InputError(f"{volume.source.get('path', 'volume')}: minimum value {hu.min():.0f} is not air in HU; "
                         "expected a CT in Hounsfield units")
    step = 2 if min(hu.shape[1:]) >= 256 else 1
    small = hu[:, ::step, ::step]
    air = small < threshold_hu
    labels, n = ndimage.label(air)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, n + 1))
    sizes[border[border > 0] - 1] = 0
    voxel_ml = float(np.prod(volume.spacing)) * step * step / 1000.0
    order = [i for i in np.argsort(sizes)[::-1][:2] if sizes[i] * voxel_ml >= MIN_LUNG_ML]
    if not order:
        raise InputError(f"{volume.source.get('path', 'volume')}: no lung-sized air region (>= {MIN_LUNG_ML:.0f} mL) "
                         "inside the body; is this a chest CT?")
    keep = [order[0] + 1] + ([order[1] + 1] if len(order) > 1 and sizes[order[1]] >= 0.2 * sizes[order[0]] else [])
    mask = np.isin(labels, keep)
    # Closing pads with edge copies along z first: with the default zero border, erosion eats the first and
    # last two slices, and a one-slice volume entirely (an empty lung mask for a single CT slice).
    pad = 2
    padded = np.pad(mask, ((pad, pad), (0, 0), (0, 0)), mode="edge")
    mask = ndimage.binary_closing(padded, structure=ndimage.generate_binary_structure(3, 1), iterations=2)[pad:-pad]
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    if step > 1:
        mask = np.repeat(np.repeat(mask, step, axis=1), step, axis=2)[:, :hu.shape[1], :hu.shape[2]]
    return mask


def lung_mask_slice(image: Image2D) -> np.ndarray:
    """Lung mask of a single axial CT slice in HU, by :func:`lung_mask_ct` on a 10 mm slab.

    Args:
        image: the slice, ``pixels`` ``(H, W)`` in HU; ``spacing`` (mm, 1 mm assumed when unknown).

    Returns:
        bool ``(H, W)``.

    Raises:
        InputError: not HU, or less than :data:`MIN_LUNG_ML` of lung over the slab, i.e. 50 cm² of lung
            (a head or abdomen slice).
    """
    spacing = image.spacing or (1.0, 1.0)
    return lung_mask_ct(Volume(hu=image.pixels[None], spacing=(10.0, *spacing), source=image.source))[0]
