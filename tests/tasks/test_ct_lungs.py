"""CT lung extraction on the real LIDC and NRRD volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from pulmo.errors import InputError
from pulmo.io import Volume, read_image
from pulmo.tasks.ct_lungs import lung_coverage, lung_mask_ct
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
    label = read_image(data_path("ct", "pyradiomics_lung", "lung1_label.nrrd")).hu > 0
    mask = lung_mask_ct(vol)
    assert 1.0 < mask.sum() * np.prod(vol.spacing) / 1e6 < 8.0
    assert (mask & label).sum() / label.sum() > 0.9


def test_not_hu_rejected():
    vol = Volume(hu=np.random.default_rng(0).uniform(0, 255, (4, 32, 32)).astype(np.float32), spacing=(1, 1, 1))
    with pytest.raises(InputError, match="Hounsfield"):
        lung_mask_ct(vol)
