"""Header rules of the input gate: DICOM tags and size limits, decided before pixels are decoded."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pulmo.errors import OutOfScopeError
from pulmo.io import InputLimits, read_image
from pulmo.io.scope import CR_IMAGE, CT_IMAGE, DX_PRESENTATION, SECONDARY_CAPTURE, check_pixels, dicom_scope
from tests.bad_inputs import _dicom, nifti_gz_bomb, png_bomb, real_cxr_pixels


def _ds(**tags) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = tags.pop("SOPClassUID", CR_IMAGE)
    ds.Modality = tags.pop("Modality", "CR")
    ds.Rows, ds.Columns = 512, 512
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("tags, kind", [
    ({}, "cxr"),
    ({"BodyPartExamined": "CHEST", "ViewPosition": "PA"}, "cxr"),
    ({"SOPClassUID": DX_PRESENTATION, "Modality": "DX", "ViewPosition": "AP"}, "cxr"),
    ({"SOPClassUID": CT_IMAGE, "Modality": "CT"}, "ct"),
    ({"SOPClassUID": CT_IMAGE, "Modality": "CT", "BodyPartExamined": "CHESTABDPELVIS"}, "ct"),
    ({"SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT", "SeriesDescription": "CXR PA"}, "secondary_capture"),
    ({"SOPClassUID": CR_IMAGE, "Modality": "CR", "PhotometricInterpretation": "PALETTE COLOR"}, "cxr"),
    ({"BodyPartExamined": "CHEST PA"}, "cxr"),
    ({"BodyPartExamined": "PECHO", "ViewPosition": "AP AXIAL"}, "cxr"),
    ({"SOPClassUID": CT_IMAGE, "Modality": "CT", "BodyPartExamined": "THORAX_ABDOMEN"}, "ct"),
])
def test_accepted_tags(tags, kind):
    assert dicom_scope(_ds(**tags), "f.dcm")["kind"] == kind


@pytest.mark.parametrize("tags, message", [
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "Modality": "MR"}, "MR Image Storage"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4", "Modality": "SEG"}, "Segmentation Storage"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.2", "Modality": "RTDOSE"}, "RT Dose Storage"),
    ({"Modality": "RG"}, "RG"),
    ({"SOPClassUID": DX_PRESENTATION, "Modality": "XA"}, "angiography"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1", "Modality": "DX"}, "For Processing"),
    ({"BodyPartExamined": "TIBIA"}, "BodyPartExamined 'TIBIA'"),
    ({"ViewPosition": "LL"}, "lateral view"),
    ({"BodyPartExamined": "CHEST_LAT"}, "lateral view"),
    ({"BodyPartExamined": "CHEST HAND"}, "know the chest only"),
    ({"ViewPosition": "OBLIQUE"}, "not a frontal view"),
    ({"NumberOfFrames": 3}, "multi-frame"),
    ({"RescaleSlope": 0}, "RescaleSlope"),
    ({"WindowCenter": 100, "WindowWidth": 0}, "WindowWidth"),
    ({"SOPClassUID": SECONDARY_CAPTURE, "Modality": "OT"}, "no chest hint"),
    ({"SOPClassUID": CT_IMAGE, "Modality": "CT", "BodyPartExamined": "HEAD"}, "not of the chest"),
    ({"SOPClassUID": CT_IMAGE, "Modality": "MR"}, "expected Modality CT"),
    ({"Rows": 20000, "Columns": 5000}, "over the limit"),
])
def test_refused_tags_name_the_value_and_what_is_accepted(tags, message):
    with pytest.raises(OutOfScopeError, match=message) as info:
        dicom_scope(_ds(**tags), "f.dcm")
    text = str(info.value)
    assert text.startswith("f.dcm: ") and "; " in text and "\n" not in text


def test_pixel_limit_is_configurable():
    check_pixels("f", 100, 100, 1, InputLimits(max_pixels=10_000))
    with pytest.raises(OutOfScopeError, match="over the limit"):
        check_pixels("f", 100, 101, 1, InputLimits(max_pixels=10_000))


def test_png_bomb_is_refused_fast_from_the_header(tmp_path):
    path = png_bomb(tmp_path / "bomb.png", 12000)
    assert path.stat().st_size < 400_000
    t0 = time.perf_counter()
    with pytest.raises(OutOfScopeError, match="144 Mpx"):
        read_image(path)
    assert time.perf_counter() - t0 < 1.0


def test_png_over_pillow_limit_is_refused_not_a_traceback(tmp_path):
    with pytest.raises(OutOfScopeError):
        read_image(png_bomb(tmp_path / "bomb.png", 30000))


def test_nifti_gz_bomb_is_refused_by_ratio(tmp_path):
    path = nifti_gz_bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 160))  # 320 MiB of int16 zeros in ~300 KB
    with pytest.raises(OutOfScopeError, match="decompression bomb"):
        read_image(path)
    with pytest.raises(OutOfScopeError, match="over the limit"):
        read_image(path, InputLimits(max_voxels=1_000_000))


def test_palette_colour_dicom_grey_in_disguise_is_read_true_colour_refused(tmp_path):
    """A PALETTE COLOR image whose palette is grey is read as grey; a colour palette is refused."""
    pixels = (real_cxr_pixels() // 16).astype(np.uint16)
    for colour in (False, True):
        path = _dicom(tmp_path / f"palette_{colour}.dcm", pixels, CR_IMAGE, "CR", PhotometricInterpretation="PALETTE COLOR",
                      BitsStored=8, HighBit=7)
        ds = pydicom.dcmread(path)
        ramp = np.arange(256, dtype=np.uint16) * 257
        for k, lut in enumerate((ramp, ramp[::-1] if colour else ramp, ramp)):
            ds.add_new(0x00281101 + k, "US", [256, 0, 16])
            ds.add_new(0x00281201 + k, "OW", lut.tobytes())
        ds.save_as(path, enforce_file_format=True)
        if colour:
            with pytest.raises(OutOfScopeError, match="colour image"):
                read_image(path)
        else:
            img = read_image(path)
            assert img.shape == pixels.shape and "grey_from_palette_color" in img.source["transforms"]
            assert np.corrcoef(img.pixels.ravel(), pixels.ravel())[0, 1] > 0.99


def test_malformed_imager_pixel_spacing_is_unknown_not_a_traceback(tmp_path):
    path = _dicom(tmp_path / "sp.dcm", real_cxr_pixels(), CR_IMAGE, "CR", PixelSpacing=None)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00181164, "LO", "abc\\0.1")  # a malformed value (as LO: pydicom validates DS)
    ds.save_as(path, enforce_file_format=True)
    img = read_image(path)
    assert img.spacing is None


def test_dev_null_and_fifo_are_not_regular_files(tmp_path):
    import os

    from pulmo.errors import InputError

    with pytest.raises(InputError, match="not a regular file"):
        read_image("/dev/null")
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_image(fifo)


def test_one_slice_ct_gets_a_lung_mask():
    """The 3-D closing used to erode a one-slice volume to nothing."""
    from pulmo.io import Volume
    from pulmo.transforms.ct import lung_mask_ct
    from tests.bad_inputs import _phantom_ct

    hu = _phantom_ct((1, 256, 256))
    mask = lung_mask_ct(Volume(hu=hu, spacing=(10.0, 1.0, 1.0)))
    assert mask.shape == hu.shape and mask.sum() > 0.8 * (hu == -850).sum()


def test_compressed_metaimage_is_not_taken_for_a_bomb(tmp_path):
    """A .mhd whose voxels are in a .zraw (SimpleITK's compressed MetaImage): the ratio uses the data file."""
    import SimpleITK as sitk

    from pulmo.io.itk import check_itk_header

    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, (64, 128, 128)).astype(np.int16))
    sitk.WriteImage(img, str(tmp_path / "vol.mhd"), useCompression=True)
    assert (tmp_path / "vol.zraw").is_file()
    assert check_itk_header(tmp_path / "vol.mhd", InputLimits(bomb_min_bytes=1 << 20)) == (128, 128, 64)


def test_malformed_geometry_in_a_series_is_one_error(tmp_path):
    from pulmo.errors import InputError
    from tests.dicom_helpers import write_ct_series

    files = write_ct_series(tmp_path / "s", n=3)
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = [0.0, 0.0]
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(InputError, match="malformed ImagePositionPatient"):
        read_image(tmp_path / "s")


def test_empty_rescale_intercept_is_one_error_not_a_traceback(tmp_path):
    from pulmo.errors import InputError

    path = _dicom(tmp_path / "i.dcm", real_cxr_pixels(), CR_IMAGE, "CR", RescaleSlope=1, RescaleIntercept="")
    with pytest.raises(InputError, match="RescaleIntercept"):
        read_image(path)
