"""CT pre-processing (:mod:`pulmo.transforms.ct`): lung extraction on the real LIDC and NRRD volumes, the
nodule window and padding, the lesion slice framing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from pulmo.errors import InputError
from pulmo.io import Volume, read_image, read_labels
from pulmo.transforms import lung_crop_box, window_hu
from pulmo.transforms.ct import (
    NODULE_HU_WINDOW,
    _pad_multiple,
    frame_ct_slices,
    lung_coverage,
    lung_distance,
    lung_mask_ct,
    window,
)
from tests.conftest import LIDC_SERIES, data_path


def test_lidc_lungs_plausible_and_contain_the_nodule():
    vol = read_image(data_path(*LIDC_SERIES))
    mask = lung_mask_ct(vol)
    litres = mask.sum() * np.prod(vol.spacing) / 1e6
    assert 2.0 < litres < 8.0
    mid = int(np.argmax(mask.sum(axis=(1, 2))))
    assert 1 <= ndimage.label(mask[mid])[1] <= 2  # two lungs (or joined at the carina)
    with open(data_path("ct", "LIDC-IDRI", "luna16_annotations_subset.csv")) as fh:
        row = next(r for r in csv.DictReader(fh) if r["seriesuid"] == vol.source["series_uid"])
    z, y, x = np.round(vol.world_to_index([[float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]])[0]).astype(int)
    assert mask[z, y, x]  # the solid nodule is inside the lung mask (holes filled)
    assert not mask[:, :5, :].any() and not mask[:, :, :5].any()  # outside air removed
    coverage = lung_coverage(mask, vol.spacing)  # the full series runs from above the apex to below the base
    assert coverage["complete"] is True and coverage["cut_at"] == [] and coverage["note"] is None
    # its first 60 slices stop mid-lung: the cut is noticed at the last slice only
    assert lung_coverage(mask[:60], vol.spacing)["cut_at"] == ["last slice"]


def test_nrrd_lungs_contain_the_labelled_nodule():
    vol = read_image(data_path("ct", "pyradiomics_lung", "lung1_image.nrrd"))
    label = read_labels(data_path("ct", "pyradiomics_lung", "lung1_label.nrrd")).labels > 0
    mask = lung_mask_ct(vol)
    assert 1.0 < mask.sum() * np.prod(vol.spacing) / 1e6 < 8.0
    assert (mask & label).sum() / label.sum() > 0.9


def test_not_hu_rejected():
    vol = Volume(hu=np.random.default_rng(0).uniform(0, 255, (4, 32, 32)).astype(np.float32), spacing=(1, 1, 1))
    with pytest.raises(InputError, match="Hounsfield"):
        lung_mask_ct(vol)


def test_nodule_window_matches_the_former_formula():
    """The nodule window reuses ``window_hu``; on float32 HU (what the pipeline feeds it) it is bit-identical
    to the formula it replaced, ``clip((hu - lo) / (hi - lo), 0, 1)``."""
    hu = np.random.default_rng(0).uniform(-2000, 1500, (4, 16, 16)).astype(np.float32)
    lo, hi = NODULE_HU_WINDOW
    old = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    new = window(hu)
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, old)


def test_pad_multiple_constant_and_mirrored():
    a = np.arange(5 * 3 * 9, dtype=np.float32).reshape(5, 3, 9)
    p = _pad_multiple(a, -1000.0)
    assert p.shape == (8, 8, 16) and (p[5:] == -1000).all() and (p[:5, :3, :9] == a).all()
    m = _pad_multiple(a, -1000.0, mirror_z=True)
    assert m.shape == (8, 8, 16)
    np.testing.assert_array_equal(m[5:8, :3, :9], a[[3, 2, 1]])  # reflected last slices along z
    assert _pad_multiple(a[:1], 0.0, mirror_z=True, divisor=16).shape == (16, 16, 16)  # one slice: edge copies


def test_lung_distance_zero_inside():
    lungs = np.zeros((1, 1, 6), bool)
    lungs[0, 0, 0] = True
    np.testing.assert_array_equal(lung_distance(lungs)[0, 0], np.arange(6, dtype=np.float32))


def test_frame_ct_slices_crops_the_lung_box_and_windows():
    hu = np.full((6, 40, 40), 40.0, np.float32)
    lungs = np.zeros(hu.shape, bool)
    lungs[1:4, 10:20, 12:30] = True
    hu[lungs] = -850.0
    vol = Volume(hu=hu, spacing=(2.0, 1.0, 1.0))
    zs, (rows, cols), slices = frame_ct_slices(vol, lungs)
    assert list(zs) == [1, 2, 3]
    assert (rows, cols) == lung_crop_box(lungs.any(axis=0))
    assert len(slices) == 3 and slices[0].dtype == np.float32
    np.testing.assert_array_equal(slices[1], window_hu(hu[2, rows, cols]))
    with pytest.raises(ValueError):
        frame_ct_slices(vol, np.zeros(hu.shape, bool))
