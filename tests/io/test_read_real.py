"""Readers on the real files of ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.io import Image2D, Volume, read_image, read_labels
from tests.conftest import LIDC_SERIES, data_path


def test_lidc_dicom_series_geometry():
    vol = read_image(data_path(*LIDC_SERIES))
    assert isinstance(vol, Volume)
    assert vol.shape == (133, 512, 512)
    assert vol.spacing == pytest.approx((2.5, 0.703125, 0.703125))
    assert vol.origin[2] == pytest.approx(-340.0)
    assert vol.source["skipped_files"]["not_dicom"] == 1  # the LIDC XML read file
    assert vol.source["excluded_series"] == {}
    # air outside the body and soft tissue inside are in HU
    assert vol.hu[60, 5, 5] < -900
    assert -200 < np.median(vol.hu[60, 200:300, 200:300]) < 200 or np.median(vol.hu[60]) < 0
    # last slice is the top (z increases), the world of the last voxel matches the geometry
    top = vol.index_to_world([[132, 0, 0]])[0]
    assert top[2] == pytest.approx(-340.0 + 132 * 2.5)
    np.testing.assert_allclose(vol.world_to_index(top[None])[0], [132, 0, 0], atol=1e-6)


def test_lidc_consensus_nodule_is_dense_at_its_world_centre():
    import csv

    vol = read_image(data_path(*LIDC_SERIES))
    with open(data_path("ct", "LIDC-IDRI", "luna16_annotations_subset.csv")) as fh:
        row = next(r for r in csv.DictReader(fh) if r["seriesuid"] == vol.source["series_uid"])
    z, y, x = np.round(vol.world_to_index([[float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]])[0]).astype(int)
    assert 0 <= z < 133
    assert vol.hu[z, y - 1:y + 2, x - 1:x + 2].mean() > -400  # a solid nodule, not lung air


def test_nrrd_volume():
    vol = read_image(data_path("ct", "pyradiomics_lung", "lung1_image.nrrd"))
    assert isinstance(vol, Volume)
    assert vol.shape == (48, 512, 512)
    assert vol.spacing[0] == pytest.approx(5.0)
    assert vol.source["hu_plausible"]


def test_nrrd_label_volume_on_its_ct_grid():
    ct = read_image(data_path("ct", "pyradiomics_lung", "lung1_image.nrrd"))
    lab = read_labels(data_path("ct", "pyradiomics_lung", "lung1_label.nrrd"))
    assert lab.labels.dtype == np.uint8 and lab.shape == ct.shape
    assert set(np.unique(lab.labels)) == {0, 1}
    assert lab.spacing == ct.spacing and lab.origin == ct.origin
    np.testing.assert_array_equal(lab.direction, ct.direction)


@pytest.mark.parametrize("parts", [
    ("cxr", "ChestX-ray14_bbox_sample", "images", "00001369_000.png"),
    ("cxr", "montgomery_shenzhen", "images", "MCUCXR_0196_1.png"),
    ("cxr", "chest_xray_pneumonia", "train", "NORMAL", "IM-0182-0001.jpeg"),
])
def test_cxr_raster(parts):
    img = read_image(data_path(*parts))
    assert isinstance(img, Image2D)
    assert img.modality == "cxr"
    assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
    assert 0 <= img.pixels.min() < img.pixels.max() <= 255


def test_nih_png_is_1024():
    img = read_image(data_path("cxr", "ChestX-ray14_bbox_sample", "images", "00022084_000.png"))
    assert img.shape == (1024, 1024)
