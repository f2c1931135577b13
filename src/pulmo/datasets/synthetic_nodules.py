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
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage, special

KINDS = ("solid", "part-solid", "ground-glass")


@dataclasses.dataclass
class SyntheticNodule:
    """One inserted nodule: centre ``(z, y, x)`` voxels, equivalent diameter (mm), kind, juxta-pleural flag."""

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
    with the nodule centred."""
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
