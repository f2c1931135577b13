"""Readers on generated edge cases: photometric, bit depth, broken files, series problems."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pulmo.errors import InputError
from pulmo.io import LabelVolume, Volume, read_image, read_labels, write_mask_png, write_nifti
from tests.dicom_helpers import write_ct_series, write_dicom


def test_monochrome1_is_inverted(tmp_path):
    stored = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (32, 1))  # bright on the right
    p1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    p2 = write_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2")
    m1, m2 = read_image(p1), read_image(p2)
    assert m1.source["photometric"] == "MONOCHROME1"
    assert "invert_monochrome1" in m1.source["transforms"]
    assert m1.pixels[0, 0] > m1.pixels[0, -1]   # inverted: stored low = displayed bright
    assert m2.pixels[0, 0] < m2.pixels[0, -1]
    np.testing.assert_allclose(m1.pixels + m2.pixels, m2.pixels.max() + m2.pixels.min())


def test_dicom_rescale_spacing_and_ct_slice_in_hu(tmp_path):
    stored = np.full((16, 16), 1000, np.uint16)
    ct = read_image(write_dicom(tmp_path / "ct.dcm", stored, modality="CT", slope=1.0, intercept=-1024.0,
                                position=(0, 0, 0), spacing=(0.7, 0.8)))
    assert ct.modality == "ct"
    assert ct.pixels[0, 0] == pytest.approx(-24.0)
    assert ct.spacing == (0.7, 0.8)


def test_dicom_window_applied_for_cxr(tmp_path):
    stored = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (32, 1))
    img = read_image(write_dicom(tmp_path / "w.dcm", stored, window=(2048, 1024)))
    assert "voi_lut" in img.source["transforms"]
    # values outside the window saturate: the first columns are all equal
    assert img.pixels[0, 0] == img.pixels[0, 1] == img.pixels[0, 2]


def test_bits_stored_masks_high_bits(tmp_path):
    stored = np.full((16, 16), 0x1000 | 100, np.uint16)  # bit 12 set beyond BitsStored=12
    img = read_image(write_dicom(tmp_path / "b.dcm", stored, bits_stored=12))
    assert img.pixels.max() == pytest.approx(100)


def test_png_16bit(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    img = read_image(tmp_path / "x16.png")
    assert img.source["bit_depth"] == 16
    assert img.pixels.max() == pytest.approx(arr.max())


def test_grey_rgb_accepted_colour_photo_rejected(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    assert read_image(tmp_path / "grey_rgb.png").pixels.shape == (64, 64)
    yy, xx = np.mgrid[:64, :64]
    photo = np.stack([xx * 4, yy * 4, 255 - xx * 2], -1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    with pytest.raises(InputError, match="colour image"):
        read_image(tmp_path / "photo.jpg")


def test_truncated_png_and_dicom(tmp_path):
    grey, _ = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8), None
    Image.fromarray(grey).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    p = write_dicom(tmp_path / "full.dcm", np.full((64, 64), 7, np.uint16))
    raw = p.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(raw[: len(raw) - 3000])
    with pytest.raises(InputError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")


def test_not_an_image_and_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "folder")
    with pytest.raises(InputError, match="no such"):
        read_image(tmp_path / "missing.dcm")


def test_series_sorted_and_two_series_picks_largest(tmp_path):
    folder = tmp_path / "study"
    write_ct_series(folder, n=6, series_uid="1.2.3.4.1")
    write_ct_series(folder, n=3, series_uid="1.2.3.4.2")
    write_dicom(folder / "scout.dcm", np.zeros((16, 16), np.uint16), modality="CT", position=(0, 0, 0),
                series_uid="1.2.3.4.1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    vol = read_image(folder)
    assert isinstance(vol, Volume)
    assert vol.source["series_uid"] == "1.2.3.4.1"
    assert vol.source["excluded_series"] == {"1.2.3.4.2": 3}
    assert vol.source["skipped_files"]["localizer"] == 1
    assert vol.shape == (6, 16, 16)
    np.testing.assert_allclose(vol.hu[:, 0, 0], [10 * k for k in range(6)])  # sorted by position
    assert vol.spacing[0] == pytest.approx(2.5)


def test_series_missing_slice_detected(tmp_path):
    write_ct_series(tmp_path / "s", n=6, skip=(3,))
    with pytest.raises(InputError, match="missing slices"):
        read_image(tmp_path / "s")


def test_nifti_and_mhd_round_trip_keep_geometry(tmp_path):
    write_ct_series(tmp_path / "s", n=4)
    vol = read_image(tmp_path / "s")
    for name in ("m.nii.gz", "m.mhd", "m.nrrd"):
        out = write_nifti((vol.hu > -1000).astype(np.uint8), vol, tmp_path / name)
        back = read_image(out)
        assert back.shape == vol.shape
        np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-5)
        np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
        np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


def test_mhd_without_raw_is_clear(tmp_path):
    write_ct_series(tmp_path / "s", n=3)
    out = write_nifti(np.zeros((3, 16, 16), np.uint8), read_image(tmp_path / "s"), tmp_path / "v.mhd")
    out.with_suffix(".raw").unlink()
    with pytest.raises(InputError, match="v.mhd"):
        read_image(out)


def _write_itk(array_zyx, path, spacing_xyz=(0.7, 0.8, 2.5), origin=(-12.5, 30.0, -100.0), direction=None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(tuple(np.asarray(direction, float).ravel()))
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))
    return path


@pytest.mark.parametrize("name", ["lab.nrrd", "lab.nii.gz"])
def test_read_labels_round_trip_keeps_values_and_geometry(tmp_path, name):
    labels = np.zeros((4, 6, 5), np.int16)
    labels[1:3, 2:4, 1:3] = 1
    labels[3, 0, 0] = 7
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    back = read_labels(_write_itk(labels, tmp_path / name, direction=direction))
    assert isinstance(back, LabelVolume)
    assert back.labels.dtype == np.uint8 and back.shape == (4, 6, 5)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(back.origin, (-12.5, 30.0, -100.0), atol=1e-4)
    np.testing.assert_allclose(back.direction, direction, atol=1e-5)
    world = back.index_to_world([[1, 2, 3]])
    np.testing.assert_allclose(back.world_to_index(world), [[1, 2, 3]], atol=1e-6)


def test_read_labels_int32_float_mask_and_mhd(tmp_path):
    big = np.zeros((3, 4, 4), np.uint16)
    big[0, 0, 0] = 300
    assert read_labels(_write_itk(big, tmp_path / "big.nrrd")).labels.dtype == np.int32
    floats = np.zeros((3, 4, 4), np.float32)
    floats[1, 1:3, 1:3] = 1.0  # a float 0.0 / 1.0 mask is read exactly
    back = read_labels(_write_itk(floats, tmp_path / "f.mhd"))
    assert back.labels.dtype == np.uint8
    np.testing.assert_array_equal(back.labels, floats.astype(np.uint8))


def test_read_labels_refuses_a_ct_a_2d_image_and_a_missing_file(tmp_path):
    ct = np.full((3, 8, 8), -1000.5, np.float32)
    with pytest.raises(InputError, match=r"ct\.nii\.gz.*-1000\.5.*expected integer labels"):
        read_labels(_write_itk(ct, tmp_path / "ct.nii.gz"))
    hu = np.full((3, 8, 8), -1024, np.int16)
    with pytest.raises(InputError, match=r"hu\.nrrd.*-1024 is negative"):
        read_labels(_write_itk(hu, tmp_path / "hu.nrrd"))
    with pytest.raises(InputError, match=r"flat\.nrrd.*2-D"):
        read_labels(_write_itk(np.zeros((8, 8), np.uint8), tmp_path / "flat.nrrd", (1.0, 1.0), (0.0, 0.0)))
    with pytest.raises(InputError, match="nothere.nrrd: no such file"):
        read_labels(tmp_path / "nothere.nrrd")


def test_write_mask_png(tmp_path):
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    p = write_mask_png(mask, tmp_path / "m.png")
    arr = np.asarray(Image.open(p))
    assert arr.shape == (10, 12) and set(np.unique(arr)) == {0, 255}
