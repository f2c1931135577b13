"""Synthetic nodule insertion: size, density profile, placement, labels."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.datasets.synthetic_nodules import KINDS, insert_nodule, nodule_field, sample_nodules


def _phantom(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Air-like lung (-850 HU) in a soft-tissue box (+40 HU)."""
    hu = np.full((n, n, n), 40.0, np.float32)
    lungs = np.zeros((n, n, n), bool)
    lungs[8:-8, 8:-8, 8:-8] = True
    hu[lungs] = -850.0
    return hu, lungs


@pytest.mark.parametrize("kind", KINDS)
def test_nodule_field_profile(kind):
    rng = np.random.default_rng(1)
    w, hu, _opacity = nodule_field(10.0, 1.0, kind, rng)
    assert w.shape == hu.shape and w.shape[0] % 2 == 1
    c = w.shape[0] // 2
    assert w[c, c, c] > 0.95 and w[0, 0, 0] < 0.01
    volume = (w >= 0.5).sum()
    assert 0.6 * np.pi / 6 * 1000 < volume < 1.5 * np.pi / 6 * 1000  # about a 10 mm sphere
    centre_hu = float(np.asarray(hu)[c, c, c])
    if kind == "ground-glass":
        assert -800 < centre_hu < -200
    else:  # solid, or part-solid with its solid core
        assert -100 < centre_hu < 150


def test_insert_nodule_raises_density_and_labels_lung_part_only():
    hu, lungs = _phantom()
    before = hu.copy()
    mask = insert_nodule(hu, lungs, (32, 32, 32), 12.0, 1.0, "solid", np.random.default_rng(0))
    assert mask[32, 32, 32] and mask.sum() > 300
    assert hu[32, 32, 32] > -100 and before[32, 32, 32] == -850
    assert np.array_equal(hu[0], before[0])  # far voxels untouched
    wall = insert_nodule(hu, lungs, (32, 32, 8), 12.0, 1.0, "solid", np.random.default_rng(0))
    assert not wall[:, :, :6].any()  # the part inside the chest wall is not labelled


def test_sample_nodules_sizes_kinds_and_exclusion():
    hu, lungs = _phantom(80)
    allowed = np.ones_like(lungs)
    allowed[:, :, 40:] = False
    rng = np.random.default_rng(3)
    out, labels, nodules = sample_nodules(hu, lungs, 1.0, 4, rng, allowed=allowed, diameter_range_mm=(4.0, 12.0))
    assert 1 <= len(nodules) <= 4 and labels.max() == len(nodules)
    assert not np.array_equal(out, hu) and np.array_equal(hu[lungs][:10], np.full(10, -850.0))  # input not modified
    for i, n in enumerate(nodules, start=1):
        assert n.kind in KINDS
        assert 2.5 < n.diameter_mm < 16
        assert n.centre_zyx[2] < 40 + n.diameter_mm  # centred in the allowed half
        assert (labels == i).sum() > 0
