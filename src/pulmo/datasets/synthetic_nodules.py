"""Synthetic lung nodules inserted into real lung parenchyma, to train nodule models where labelled nodule CTs
are scarce (a single labelled scan is all this project's development data holds).

The simulation follows the lesion-insertion literature (e.g. Li et al., "A hybrid approach to pulmonary nodule
insertion", Med. Phys. 2009; Pezeshk et al., "Seamless lesion insertion for data augmentation in CAD
training", IEEE TMI 2017) in a simple, image-domain form:

* **shape**: an ellipsoid (axes 0.8-1.2 x the radius, random orientation) whose surface is perturbed by a
  smooth random field (lobulation), diameter 3-30 mm drawn log-uniformly (small nodules are the common ones);
* **partial volume**: a soft occupancy ``w = sigmoid((r(theta) - distance) / edge)`` with an edge of ~0.5 mm;
* **density profile** (HU): ``solid`` (about 0-60 HU), ``ground-glass`` (-650 to -350 HU, blended at 80-95 %
  opacity so vessels stay visible through it) and ``part-solid`` (ground glass with a solid core of 30-60 % of
  the radius), with smoothed texture noise of 15-40 HU;
* **placement**: inside the lung mask; ``juxta-pleural`` nodules (25 % by default) are centred within one
  radius of the lung boundary so they touch the pleura;
* **ground truth**: the nodule mask is ``w >= 0.5`` where it shows against lung (the part merged into the chest
  wall is invisible and is not labelled), the diameter the equivalent-sphere diameter of that mask.

Everything works on an isotropic voxel grid (``spacing_mm``), as the nodule pipeline does.

The training data of the ``nodule`` task (:func:`pulmo.tasks.nodule.train`) is built here too: background CTs
on the detector's grid (:func:`load_backgrounds`, :class:`Background`: :func:`pulmo.transforms.ct.prepare_ct`,
with the real nodules of each scan kept out of the crops), random ``patch``^3 crops with synthetic nodules
(:func:`make_sample`, :class:`SyntheticNoduleDataset`) and their batching (:func:`collate`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, special
from torch.utils.data import Dataset

from pulmo.errors import InputError
from pulmo.geometry.boxes import mask_to_box
from pulmo.io import Volume, read_image, read_labels
from pulmo.transforms.ct import PreparedCT, prepare_ct, window

logger = logging.getLogger(__name__)

KINDS = ("solid", "part-solid", "ground-glass")


@dataclasses.dataclass
class SyntheticNodule:
    """One inserted nodule: centre ``(z, y, x)`` voxels, equivalent diameter (mm), kind, juxta-pleural flag.

    Attributes:
        centre_zyx: centroid of the labelled mask, ``(z, y, x)`` voxels of the array it was inserted into.
        diameter_mm: equivalent-sphere diameter of the labelled (visible) mask, mm.
        kind: one of :data:`KINDS`.
        juxta_pleural: centred within one radius of the lung boundary, touching the pleura.
    """

    centre_zyx: tuple[float, float, float]
    diameter_mm: float
    kind: str
    juxta_pleural: bool


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def nodule_field(diameter_mm: float, spacing_mm: float, kind: str, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """A nodule on its own cube: ``(occupancy w in [0, 1], HU values, opacity)``, both arrays ``(n, n, n)``
    with the nodule centred.

    Args:
        diameter_mm: nominal diameter in mm (the ellipsoid keeps the volume of a sphere of that diameter).
        spacing_mm: isotropic voxel size in mm.
        kind: one of :data:`KINDS`.
        rng: numpy random generator (shape, orientation, lobulation, density, texture).

    Returns:
        ``(w, hu, opacity)``: float32 ``(n, n, n)`` occupancy in [0, 1] and HU values, with
        ``n = 2 * ceil(1.6 * r + 3) + 1`` and ``r`` the radius in voxels; ``opacity`` in [0.8, 1] is 1.0 for
        ``solid``, a float in [0.8, 0.95] for ``ground-glass`` and an ``(n, n, n)`` array rising to 1 in the
        core for ``part-solid``.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    r = diameter_mm / 2 / spacing_mm                                  # radius in voxels
    half = math.ceil(1.6 * r + 3)
    ax = np.arange(-half, half + 1, dtype=np.float32)
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    p = np.stack([zz, yy, xx], -1) @ _rotation(rng).T.astype(np.float32)
    axes = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    axes /= np.prod(axes) ** (1 / 3)                                 # keep the volume of a sphere of radius r
    dist = np.sqrt(((p / axes) ** 2).sum(-1))
    lobulation = ndimage.gaussian_filter(rng.normal(size=dist.shape).astype(np.float32), sigma=max(1.0, r / 2))
    lobulation *= rng.uniform(0.05, 0.2) * r / (lobulation.std() + 1e-6)
    edge = max(0.35, 0.5 / spacing_mm)
    w = special.expit((r + lobulation - dist) / edge)                # soft edge; expit avoids exp overflow
    texture = ndimage.gaussian_filter(rng.normal(size=dist.shape).astype(np.float32), 1.0)
    texture *= rng.uniform(15, 40) / (texture.std() + 1e-6)
    if kind == "solid":
        hu, opacity = rng.uniform(0, 60) + texture, 1.0
    else:
        ggo = rng.uniform(-650, -350)
        hu, opacity = ggo + texture, rng.uniform(0.8, 0.95)
        if kind == "part-solid":
            core = special.expit((rng.uniform(0.3, 0.6) * r - dist) / edge)
            hu = hu * (1 - core) + (rng.uniform(0, 50) + texture) * core
            opacity = opacity * (1 - core) + core
    return w.astype(np.float32), np.asarray(hu, np.float32), opacity


def insert_nodule(hu: np.ndarray, lungs: np.ndarray, centre: tuple[int, int, int], diameter_mm: float,
                  spacing_mm: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Blend one nodule into ``hu`` (modified in place) at ``centre``; returns its bool mask (same shape as
    ``hu``, labelled where it shows against the lung)."""
    w, values, opacity = nodule_field(diameter_mm, spacing_mm, kind, rng)
    half = w.shape[0] // 2
    src, dst = [], []
    for c, n in zip(centre, hu.shape):
        lo, hi = c - half, c + half + 1
        src.append(slice(max(0, -lo), w.shape[0] - max(0, hi - n)))
        dst.append(slice(max(0, lo), min(n, hi)))
    src, dst = tuple(src), tuple(dst)
    a = w[src] * opacity if np.isscalar(opacity) else (w * opacity)[src]
    region = hu[dst]
    hu[dst] = region * (1 - a) + values[src] * a
    mask = np.zeros(hu.shape, bool)
    mask[dst] = (w[src] >= 0.5) & (ndimage.binary_dilation(lungs[dst], iterations=1) | (region < -400))
    return mask


def sample_nodules(hu: np.ndarray, lungs: np.ndarray, spacing_mm: float, n: int, rng: np.random.Generator,
                   allowed: np.ndarray | None = None, diameter_range_mm: tuple[float, float] = (3.0, 30.0),
                   juxta_fraction: float = 0.25, kinds_p: tuple[float, float, float] = (0.6, 0.15, 0.25)
                   ) -> tuple[np.ndarray, np.ndarray, list[SyntheticNodule]]:
    """Insert ``n`` nodules into a copy of ``hu`` inside ``lungs`` (and inside ``allowed``, e.g. away from real
    nodules).

    Args:
        hu: float ``(Z, Y, X)`` HU on an isotropic grid of ``spacing_mm``.
        lungs: bool ``(Z, Y, X)`` lung mask.
        kinds_p: probabilities of solid, part-solid and ground-glass nodules.

    Returns:
        ``(hu with nodules, int16 label map 0 / 1..n, [SyntheticNodule])``; fewer than ``n`` nodules when the
        lungs have no room left.
    """
    out = hu.astype(np.float32, copy=True)
    labels = np.zeros(hu.shape, np.int16)
    inside = lungs if allowed is None else lungs & allowed
    depth = ndimage.distance_transform_edt(lungs) * spacing_mm if n else None
    nodules: list[SyntheticNodule] = []
    lo, hi = np.log(diameter_range_mm[0]), np.log(diameter_range_mm[1])
    for _ in range(n):
        d = float(np.exp(rng.uniform(lo, hi)))
        juxta = rng.random() < juxta_fraction
        free = inside & (labels == 0)
        cand = free & ((depth < d / 2) & (depth > 0.5) if juxta else depth > d / 2 + 1)
        idx = np.argwhere(cand)
        if len(idx) == 0:
            continue
        c = tuple(int(v) for v in idx[rng.integers(len(idx))])
        kind = str(rng.choice(KINDS, p=kinds_p))
        mask = insert_nodule(out, lungs, c, d, spacing_mm, kind, rng) & (labels == 0)
        if mask.sum() < 4:
            continue
        labels[mask] = len(nodules) + 1
        eq_d = float((6 * mask.sum() / math.pi) ** (1 / 3) * spacing_mm)
        centre = tuple(float(v) for v in np.argwhere(mask).mean(0))
        nodules.append(SyntheticNodule(centre, eq_d, kind, bool(juxta)))
    return out, labels, nodules


# ---------------------------------------------------------------------------------------------- nodule training crops

@dataclasses.dataclass
class Background:
    """A background CT on the detector's grid, ready for training crops (:func:`load_backgrounds`).

    Attributes:
        name: the source (path) it was read from.
        prep: the CT on the isotropic grid (:func:`pulmo.transforms.ct.prepare_ct`).
        allowed: bool ``(D, H, W)`` grid voxels whose crop may be used (away from real nodules).
        centres: int ``(N, 3)`` candidate crop centres, grid ``(z, y, x)`` (lung voxels that are allowed).
    """

    name: str
    prep: PreparedCT
    allowed: np.ndarray
    centres: np.ndarray


def _real_nodule_mask(volume: Volume, source: str, exclude_labels: dict[str, str]) -> np.ndarray:
    """Bool original-grid mask of real nodules to keep out of training (LIDC reader marks / label volumes)."""
    mask = np.zeros(volume.shape, bool)
    src = Path(source)
    if src.is_dir():
        try:
            from pulmo.datasets.lidc import load_lidc_scan

            scan = load_lidc_scan(src, volume=volume)
            for n in scan.nodules:
                mask |= n.full_mask(volume.shape)
            for p in scan.small_nodules + scan.non_nodules:
                mask[p.index] = True
        except InputError as exc:
            logger.info("%s: no LIDC reads (%s); nothing excluded", src, exc)
    if source in exclude_labels:
        lab = read_labels(exclude_labels[source])
        if lab.shape != volume.shape:
            raise InputError(f"{exclude_labels[source]}: label volume does not match {source} {volume.shape}")
        mask |= lab.labels > 0
    return mask


def load_backgrounds(sources: list[str], exclude_labels: list[str], spacing_mm: float, patch: int) -> list[Background]:
    """Prepare the background CTs: lungs, isotropic grid, and the crop centres whose ``patch`` crop stays at
    least 10 mm away from every real nodule.

    Args:
        sources: CT volumes (DICOM series folders, NIfTI, mhd, NRRD) in HU; a folder with LIDC XML also
            gives its real nodules.
        exclude_labels: label volumes of real nodules, positionally paired with ``sources`` ("" for none).
        spacing_mm: isotropic grid spacing in mm.
        patch: training crop side in grid voxels.

    Returns:
        One :class:`Background` per source: its :class:`pulmo.transforms.ct.PreparedCT`, the bool grid of
        allowed voxels and the ``(N, 3)`` candidate crop centres (lung voxels, grid ``(z, y, x)``).

    Raises:
        InputError: a source is not a CT volume, is not in HU or has no lungs, a label volume does not match
            its background's shape, or no lung voxel is far enough from the real nodules.
    """
    pairs = {s: e for s, e in zip(sources, exclude_labels) if e}
    out = []
    for s in sources:
        volume = read_image(s)
        if not isinstance(volume, Volume):
            raise InputError(f"{s}: a background must be a CT volume")
        prep = prepare_ct(volume, spacing_mm)
        real = _real_nodule_mask(volume, s, pairs)
        real_grid = np.zeros(prep.image.shape, bool)
        if real.any():
            pts = prep.to_grid(np.argwhere(real))
            idx = np.clip(np.round(pts).astype(int), 0, np.array(prep.image.shape) - 1)
            real_grid[tuple(idx.T)] = True
        reach = patch // 2 + math.ceil(10.0 / spacing_mm)
        allowed = ~ndimage.binary_dilation(real_grid, structure=np.ones((3, 3, 3), bool), iterations=reach) \
            if real_grid.any() else np.ones(prep.image.shape, bool)
        centres = np.argwhere(prep.lungs & allowed)
        if len(centres) == 0:
            raise InputError(f"{s}: no lung region far enough from its real nodules for training crops")
        logger.info("background %s: grid %s, %d real-nodule voxels excluded, %d crop centres", s, prep.image.shape,
                    int(real.sum()), len(centres))
        out.append(Background(str(s), prep, allowed, centres))
    return out


def _crop(a: np.ndarray, start: np.ndarray, size: int, value: float) -> np.ndarray:
    """The ``size``^3 crop of ``a`` from ``start`` (``(z, y, x)``, may lie outside), padded with ``value``."""
    pads = [(max(0, -s), max(0, s + size - n)) for s, n in zip(start, a.shape)]
    a = np.pad(a, pads, constant_values=value)
    s = start + np.array([p[0] for p in pads])
    return a[s[0]:s[0] + size, s[1]:s[1] + size, s[2]:s[2] + size]


def make_sample(bg: Background, patch: int, max_nodules: int, rng: np.random.Generator) -> dict[str, Any]:
    """One training crop with synthetic nodules, around a random crop centre of ``bg``.

    Args:
        bg: the background CT.
        patch: crop side P in grid voxels (a multiple of 4).
        max_nodules: nodules per crop are drawn from 0..max_nodules (none in 15 % of the crops).
        rng: numpy random generator (crop, nodules).

    Returns:
        ``{"image": (1, P, P, P) float32 [0, 1] (HU window), "boxes": (K, 4) float32 z, y, x, d crop voxels,
        "masks": (K, P, P, P) bool, "coords": (3, P/4, P/4, P/4) float32 in [-1, 1] (position in the lung
        crop)}``.
    """
    c = bg.centres[rng.integers(len(bg.centres))]
    start = c - patch // 2
    hu = _crop(bg.prep.hu, start, patch, -1000.0)
    lungs = _crop(bg.prep.lungs, start, patch, False)
    allowed = _crop(bg.allowed, start, patch, False)
    n = int(rng.integers(0, max_nodules + 1)) if rng.random() > 0.15 else 0
    hu, labels, nodules = sample_nodules(hu, lungs, bg.prep.spacing_mm, n, rng, allowed=allowed,
                                         diameter_range_mm=(3.0, 30.0))
    boxes, masks = [], []
    for i in range(1, len(nodules) + 1):
        m = labels == i
        box = mask_to_box(m)
        lo, hi = box[:3], box[3:]
        boxes.append([*((lo + hi - 1) / 2.0), float((hi - lo).max())])
        masks.append(m)
    shape = np.array(bg.prep.image.shape, np.float64)
    f = patch // 4
    axes = [((start[a] + (np.arange(f) + 0.5) * 4 - 0.5) / max(1.0, shape[a] - 1)) * 2 - 1 for a in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)
    return {"image": window(hu)[None], "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "masks": np.asarray(masks, bool).reshape(-1, patch, patch, patch), "coords": coords}


class SyntheticNoduleDataset(Dataset):
    """``length`` random crops with synthetic nodules from the backgrounds (new nodules at every access, or a
    fixed set when ``seed`` is given).

    Args:
        backgrounds: the background CTs (:func:`load_backgrounds`), one drawn at random per item.
        length: items per epoch.
        patch: crop side in grid voxels. max_nodules: see :func:`make_sample`.
        seed: None for fresh crops at every access; an int makes item ``i`` depend on ``(seed, i)`` only.
    """

    def __init__(self, backgrounds: list[Background], length: int, patch: int, max_nodules: int,
                 seed: int | None = None):
        self.backgrounds, self.length, self.patch, self.max_nodules, self.seed = backgrounds, length, patch, max_nodules, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The :func:`make_sample` item ``i``."""
        rng = np.random.default_rng(None if self.seed is None else (self.seed, i))
        bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        return make_sample(bg, self.patch, self.max_nodules, rng)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch :func:`make_sample` items: ``{"image": (B, 1, P, P, P) float32 in [0, 1], "coords": (B, 3, P/4,
    P/4, P/4) in [-1, 1], "boxes": B tensors (K_i, 4) z, y, x, d in crop voxels, "masks": B bool tensors
    (K_i, P, P, P)}`` (boxes and masks stay lists: the number of nodules differs per crop)."""
    return {"image": torch.from_numpy(np.stack([it["image"] for it in items])),
            "coords": torch.from_numpy(np.stack([it["coords"] for it in items])),
            "boxes": [torch.from_numpy(it["boxes"]) for it in items],
            "masks": [torch.from_numpy(it["masks"]) for it in items]}
