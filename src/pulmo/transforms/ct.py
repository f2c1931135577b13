"""CT pre-processing shared by the CT tasks: the lungs of a volume, and the volume or its slices framed to them.

* **lung extraction** (:func:`lung_mask_ct`, :func:`lung_mask_slice`, :func:`lung_coverage`): HU thresholding
  and connected components, no learned model. The classic method (e.g. Hu, Hoffman & Reinhardt, IEEE TMI 2001;
  the LUNA16 pre-processing tutorials):

  1. air-like voxels: HU < -320;
  2. drop the air outside the body: 3D components touching the in-plane border of the volume;
  3. keep the largest component, and the second when it is at least 20 % of the first (two separate lungs);
     components under 50 mL are dropped (bowel gas, small airway pieces);
  4. close small gaps (binary closing, 2 voxels, the volume padded with copies of its end slices) and fill
     holes slice by slice, so vessels, nodules and dense infection inside the lung are part of the mask.

  scipy.ndimage does the labelling and morphology. Work is done on a 2x in-plane down-sampled copy for speed
  and mapped back to the input grid.
* **3D lung crop on an isotropic grid** (:func:`prepare_ct`, :class:`PreparedCT`; the ``nodule`` detector's
  input): crop to the lungs' bounding box (+ 8 mm), trilinear resampling of HU to an isotropic grid, the HU
  window -1200..600 (:func:`window`), padding to the network's size divisor; :func:`lung_distance` for
  dropping candidates away from the lungs.
* **2D lung framing of slices** (:func:`frame_ct_slices`; the ``lesion-seg`` model's input): every slice with
  lung, cropped to the lungs' box over all slices (:func:`pulmo.transforms.geometry.lung_crop_box`) and mapped
  through the lung window (:func:`pulmo.transforms.intensity.window_hu`).

(The lung extraction was ``pulmo.tasks.ct_lungs`` before.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pulmo.errors import InputError
from pulmo.geometry.boxes import mask_to_box
from pulmo.io import Image2D, Volume
from pulmo.transforms.geometry import lung_crop_box
from pulmo.transforms.intensity import window_hu

AIR_THRESHOLD_HU = -320.0
MIN_LUNG_ML = 50.0

#: A lung cut by the scan's first or last slice still has this much lung area (cm²) in that slice; a scan that
#: covers the whole lung ends at the apex or the base with a few cm² at most (LIDC-IDRI-0001, 133 slices:
#: 0.0 and 0.3 cm²; its 26-slice excerpt in ``examples/``: 243 and 208 cm²; pyradiomics lung1: 92 cm² in
#: its first slice).
CUT_LUNG_AREA_CM2 = 5.0

#: HU window ``(low, high)`` of the nodule network's input (:func:`window`).
NODULE_HU_WINDOW = (-1200.0, 600.0)


# ---------------------------------------------------------------------------------------------- lung extraction

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
    """Lung mask of a CT volume (HU thresholding, see the module docstring).

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


# ---------------------------------------------------------------------------------------------- 3D lung crop

@dataclasses.dataclass
class PreparedCT:
    """A CT on the network's isotropic grid (:func:`prepare_ct`).

    Attributes:
        image: float32 ``(D, H, W)`` in [0, 1] (HU window, :func:`window`), D, H, W multiples of the network's
            size divisor (padded at the far end).
        hu: float32 ``(D, H, W)`` HU on the same grid (padding -1000 HU; along z the mirrored last slices when
            prepared with ``mirror_z``, see :func:`prepare_ct`).
        lungs: bool ``(D, H, W)`` lung mask on the grid.
        offset: ``(z, y, x)`` original voxel index of the crop's first voxel.
        step: ``(z, y, x)`` original voxels per grid voxel.
        valid: ``(D, H, W)`` of the resampled crop before padding.
        spacing_mm: the grid spacing.
    """

    image: np.ndarray
    hu: np.ndarray
    lungs: np.ndarray
    offset: np.ndarray
    step: np.ndarray
    valid: tuple[int, int, int]
    spacing_mm: float

    def to_original(self, index_zyx: np.ndarray) -> np.ndarray:
        """Grid voxel indices ``(N, 3)`` -> continuous original voxel indices ``(N, 3)``, both ``(z, y, x)``
        (voxel centres map to voxel centres)."""
        return self.offset + (np.atleast_2d(index_zyx) + 0.5) * self.step - 0.5

    def to_grid(self, index_zyx: np.ndarray) -> np.ndarray:
        """Original voxel indices ``(N, 3)`` -> continuous grid voxel indices ``(N, 3)``, both ``(z, y, x)``
        (the inverse of :meth:`to_original`)."""
        return (np.atleast_2d(index_zyx) - self.offset + 0.5) / self.step - 0.5


def window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] through the nodule window :data:`NODULE_HU_WINDOW` (-1200..600 HU).

    Args:
        hu: HU array of any shape (float32 in the nodule pipeline).

    Returns:
        float32 array of the same shape in [0, 1].
    """
    lo, hi = NODULE_HU_WINDOW
    return window_hu(hu, center=(lo + hi) / 2, width=hi - lo)


def _pad_multiple(a: np.ndarray, value: float, mirror_z: bool = False, divisor: int = 8) -> np.ndarray:
    """Pad each axis at its far end to a multiple of ``divisor`` (8; 16 for a four-stage net): with ``value``,
    or along z (``mirror_z``) with the mirrored last slices, so a scan cut through the lungs does not end in an
    artificial air/tissue edge (the network reads such edges as nodule borders)."""
    if mirror_z:
        pz = (-a.shape[0]) % divisor
        a = np.pad(a, [(0, pz), (0, 0), (0, 0)], mode="reflect" if a.shape[0] > pz else "edge")
    return np.pad(a, [(0, (-n) % divisor) for n in a.shape], constant_values=value)


def prepare_ct(volume: Volume, spacing_mm: float = 1.5, lungs: np.ndarray | None = None,
               margin_mm: float = 8.0, mirror_z: bool = False, divisor: int = 8) -> PreparedCT:
    """Crop a CT to its lungs and resample it to an isotropic grid.

    The lung mask (:func:`lung_mask_ct` unless given) sets the crop: its bounding box grown by ``margin_mm``
    and clipped to the volume. HU and the lung mask are resampled trilinearly
    (``torch.nn.functional.interpolate``, the mask thresholded at 0.5) to ``spacing_mm``, the HU mapped
    through :func:`window`, and every axis padded at its far end to a multiple of ``divisor``: HU with
    -1000 (training), or along z by mirroring the last slices (``mirror_z``, inference; see
    :func:`_pad_multiple`); the lung mask with False.

    Args:
        volume: CT in HU, ``(Z, Y, X)``, spacing in mm.
        spacing_mm: the isotropic grid spacing in mm.
        lungs: bool ``(Z, Y, X)`` lung mask on the volume's grid (None: :func:`lung_mask_ct`).
        margin_mm: margin around the lungs' bounding box in mm.
        mirror_z: pad z with the mirrored last slices instead of -1000 HU.
        divisor: the network's size divisor (``NoduleNet3d.size_divisor``) the grid is padded to.

    Returns:
        The :class:`PreparedCT` (arrays ``(D, H, W)`` on the grid, and the mapping to the volume's voxels).

    Raises:
        InputError: not a CT in HU or no lungs found (from :func:`lung_mask_ct`).
    """
    lungs = lung_mask_ct(volume) if lungs is None else lungs
    box = mask_to_box(lungs)  # (z0, y0, x0, z1, y1, x1) voxels, ends exclusive
    spacing = np.asarray(volume.spacing, np.float64)
    lo = np.array([max(0, int(b - margin_mm / s)) for b, s in zip(box[:3], spacing)])
    hi = np.array([min(n, int(b + margin_mm / s)) for b, s, n in zip(box[3:], spacing, volume.shape)])
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    size = np.maximum(1, np.round((hi - lo) * spacing / spacing_mm)).astype(int)
    hu = torch.from_numpy(np.ascontiguousarray(volume.hu[crop], dtype=np.float32))[None, None]
    hu_iso = F.interpolate(hu, size=tuple(size), mode="trilinear", align_corners=False)[0, 0].numpy()
    lung_iso = F.interpolate(torch.from_numpy(lungs[crop].astype(np.float32))[None, None], size=tuple(size),
                             mode="trilinear", align_corners=False)[0, 0].numpy() >= 0.5
    step = (hi - lo) / size
    hu_iso = _pad_multiple(hu_iso, -1000.0, mirror_z=mirror_z, divisor=divisor)
    return PreparedCT(image=window(hu_iso), hu=hu_iso, lungs=_pad_multiple(lung_iso, False, divisor=divisor),
                      offset=lo.astype(np.float64), step=step, valid=tuple(int(s) for s in size),
                      spacing_mm=spacing_mm)


def lung_distance(lungs: np.ndarray) -> np.ndarray:
    """Euclidean distance of every voxel to the nearest lung voxel.

    Args:
        lungs: bool ``(D, H, W)`` lung mask (e.g. :attr:`PreparedCT.lungs`).

    Returns:
        float32 ``(D, H, W)`` distances in voxels of that grid (0 inside the lungs).
    """
    return ndimage.distance_transform_edt(~lungs).astype(np.float32)


# ---------------------------------------------------------------------------------------------- 2D slice framing

def frame_ct_slices(volume: Volume, lungs: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice], list[np.ndarray]]:
    """The lung slices of a CT volume as the lesion model sees them (COVID-SemiSeg framing): every axial slice
    with lung, cropped to the bounding box of the lungs over all slices (+8 %,
    :func:`pulmo.transforms.geometry.lung_crop_box`) and mapped through the lung window (C -600 / W 1500,
    :func:`pulmo.transforms.intensity.window_hu`).

    Args:
        volume: CT in HU, ``(Z, Y, X)``.
        lungs: bool ``(Z, Y, X)`` lung mask (not empty).

    Returns:
        ``(zs, (rows, cols), slices01)``: the slice indices, the in-plane crop, float32 ``[0, 1]`` images.

    Raises:
        ValueError: the lung mask is empty.
    """
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    rows, cols = lung_crop_box(lungs.any(axis=0))
    return zs, (rows, cols), [window_hu(volume.hu[z, rows, cols]) for z in zs]
