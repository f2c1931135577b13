"""A corpus of bad and out-of-scope inputs for the input gate: generated files plus third-party and real data.

Each case is ``(name, path, extra_argv, expected_exit_code)``. Generated files are written under a folder
given by the caller; third-party DICOM comes from pydicom's own test files (MR, US, NM, SC, SEG, RT, SR,
waveforms: written by other software than pulmo's), and the real-data cases from ``../shared/data``.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from PIL import Image
from pydicom.uid import generate_uid

from tests.conftest import DATA, LIDC_SERIES
from tests.dicom_helpers import write_dicom

PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
#: pydicom test files pulmo must refuse (every one is outside its scope: MR, US, NM, colour SC, SEG, RT, SR, ECG,
#: a CT of the head, a truncated MR, files without DICOM meta information).
PYDICOM_REFUSED = (
    "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "MR_truncated.dcm", "examples_overlay.dcm", "ExplVR_BigEnd.dcm",
    "examples_palette.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm",
    "JPEG-lossy.dcm", "JPEG2000.dcm", "JPGExtended.dcm", "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jpeg.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_small_odd.dcm", "image_dfl.dcm", "GDCMJ2K_TextGBR.dcm", "liver_1frame.dcm", "rtdose.dcm",
    "rtdose_1frame.dcm", "rtplan.dcm", "rtstruct.dcm", "reportsi.dcm", "test-SR.dcm", "waveform_ecg.dcm",
    "J2K_pixelrep_mismatch.dcm", "no_meta.dcm", "badVR.dcm", "rtdose_rle_1frame.dcm", "SC_rgb_rle_32bit.dcm",
    "SC_rgb_jls_lossy_line.dcm", "GDCMJ2K_TextGBR.dcm", "UN_sequence.dcm", "empty_charset_LEI.dcm",
    "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm", "693_J2KI.dcm", "CT_small.dcm",
)


def _dicom(path: Path, pixels: np.ndarray, sop: str, modality: str, **tags) -> Path:
    """A DICOM file with the given SOP class, Modality and extra tags (keyword = value)."""
    write_dicom(path, pixels, modality=modality if modality in ("CT", "DX") else "DX")
    ds = pydicom.dcmread(path)
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.SOPClassUID = sop
    ds.Modality = modality
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def real_cxr_pixels() -> np.ndarray:
    """A real chest X-ray (the bundled NIH example) as 12-bit values."""
    img = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "examples/cxr/00022084_000.png").convert("L"))
    return (img.astype(np.uint16) * 16)[::2, ::2]


def real_ct_slice_hu() -> np.ndarray | None:
    """Slice 60 of LIDC-IDRI-0001 in HU, or None without the shared data."""
    folder = DATA.joinpath(*LIDC_SERIES)
    files = sorted(folder.glob("*.dcm"))
    if not files:
        return None
    ds = pydicom.dcmread(files[60])
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _nifti_header(shape_xyz: tuple[int, int, int], spacing=(1.0, 1.0, 1.0), datatype: int = 4, bitpix: int = 16) -> bytes:
    """A minimal NIfTI-1 single-file header (348 bytes + 4 extension bytes)."""
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *shape_xyz, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, datatype, bitpix)
    struct.pack_into("<8f", hdr, 76, 1.0, *spacing, 0, 0, 0, 0)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    struct.pack_into("<h", hdr, 252, 0)  # qform_code
    struct.pack_into("<h", hdr, 254, 1)  # sform_code
    struct.pack_into("<4f", hdr, 280, -spacing[0], 0, 0, 0)
    struct.pack_into("<4f", hdr, 296, 0, -spacing[1], 0, 0)
    struct.pack_into("<4f", hdr, 312, 0, 0, spacing[2], 0)
    hdr[344:348] = b"n+1\0"
    return bytes(hdr)


def nifti_gz_bomb(path: Path, shape_xyz=(1024, 1024, 700)) -> Path:
    """A small ``.nii.gz`` whose int16 zeros decompress to ``prod(shape) * 2`` bytes (1.4 GiB by default)."""
    chunk = bytes(1 << 22)
    total = int(np.prod(shape_xyz)) * 2
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(_nifti_header(shape_xyz))
        while total > 0:
            fh.write(chunk[:min(total, len(chunk))])
            total -= len(chunk)
    return path


def png_bomb(path: Path, side: int) -> Path:
    """A PNG of ``side`` x ``side`` black 1-bit pixels, a few hundred KB on disk, written row by row."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)))
        fh.write(chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _volume(path: Path, hu: np.ndarray, spacing=(1.0, 1.0, 2.5), direction=None) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(tuple(float(s) for s in spacing))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    sitk.WriteImage(img, str(path))
    return path


def _phantom_ct(shape=(24, 96, 96)) -> np.ndarray:
    """A crude chest-like volume in HU: air outside, a soft-tissue body, two lungs, a spine."""
    _, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    hu = np.full(shape, -1000.0, np.float32)
    body = ((y - cy) / (0.42 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 < 1
    hu[body] = 40.0
    for ox in (-0.2, 0.2):
        lung = ((y - cy) / (0.28 * shape[1])) ** 2 + ((x - cx - ox * shape[2]) / (0.15 * shape[2])) ** 2 < 1
        hu[lung] = -850.0
    hu[(abs(y - 0.8 * shape[1]) < 4) & (abs(x - cx) < 4)] = 700.0
    return hu


def generated_cases(root: Path) -> list[tuple[str, Path, list[str], int]]:
    """Write the generated bad inputs into ``root`` and list them."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, Path, list[str], int]] = []

    def add(name: str, make: Callable[[Path], Path], argv: tuple[str, ...] = (), code: int = 3) -> None:
        cases.append((name, make(root / name), list(argv), code))

    cxr = real_cxr_pixels()
    rng = np.random.default_rng(0)
    DX = "1.2.840.10008.5.1.4.1.1.1.1"
    CR = "1.2.840.10008.5.1.4.1.1.1"
    # DICOM: other modalities and objects
    for modality, sop in (("MR", "1.2.840.10008.5.1.4.1.1.4"), ("US", "1.2.840.10008.5.1.4.1.1.6.1"),
                          ("NM", "1.2.840.10008.5.1.4.1.1.20"), ("PT", "1.2.840.10008.5.1.4.1.1.128"),
                          ("MG", "1.2.840.10008.5.1.4.1.1.1.2"), ("XA", "1.2.840.10008.5.1.4.1.1.12.1"),
                          ("RF", "1.2.840.10008.5.1.4.1.1.12.2"), ("SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
                          ("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2"), ("PR", "1.2.840.10008.5.1.4.1.1.11.1"),
                          ("KO", "1.2.840.10008.5.1.4.1.1.88.59"), ("SR", "1.2.840.10008.5.1.4.1.1.88.33")):
        add(f"{modality.lower()}.dcm", lambda p, m=modality, s=sop: _dicom(p, cxr, s, m))
    add("rg_modality.dcm", lambda p: _dicom(p, cxr, CR, "RG"))
    add("xa_as_dx_class.dcm", lambda p: _dicom(p, cxr, DX, "XA"))
    add("sc_no_chest_hint.dcm", lambda p: _dicom(p, cxr, "1.2.840.10008.5.1.4.1.1.7", "OT"))
    add("dx_for_processing.dcm", lambda p: _dicom(p, cxr, "1.2.840.10008.5.1.4.1.1.1.1.1", "DX"))
    for part in ("TIBIA", "CSPINE", "SKULL", "HAND", "ABDOMEN", "KNEE"):
        add(f"cr_{part.lower()}.dcm", lambda p, b=part: _dicom(p, cxr, CR, "CR", BodyPartExamined=b))
    for view in ("LL", "RL", "LATERAL"):
        add(f"dx_view_{view.lower()}.dcm", lambda p, v=view: _dicom(p, cxr, DX, "DX", ViewPosition=v))
    add("dx_view_oblique.dcm", lambda p: _dicom(p, cxr, DX, "DX", ViewPosition="OBLIQUE"))
    add("cr_window_width_0.dcm", lambda p: _dicom(p, cxr, CR, "CR", WindowCenter=2048, WindowWidth=0))
    add("cr_rescale_slope_0.dcm", lambda p: _dicom(p, cxr, CR, "CR", RescaleSlope=0, RescaleIntercept=0))
    add("dx_multiframe.dcm", lambda p: _dicom(p, np.concatenate([cxr, cxr]), DX, "DX", NumberOfFrames=2,
                                                Rows=cxr.shape[0]))
    add("dx_over_pixel_limit.dcm", lambda p: _dicom(p, cxr, DX, "DX", Rows=20000, Columns=4000))
    add("dx_noise.dcm", lambda p: _dicom(p, rng.integers(0, 4096, (256, 256)).astype(np.uint16), DX, "DX"))
    add("dx_constant.dcm", lambda p: _dicom(p, np.full((256, 256), 1000, np.uint16), DX, "DX"))
    add("ct_pixels_of_a_radiograph.dcm", lambda p: _dicom(p, cxr, "1.2.840.10008.5.1.4.1.1.2", "CT",
                                                           RescaleSlope=1, RescaleIntercept=0))
    add("ct_head.dcm", lambda p: _dicom(p, cxr, "1.2.840.10008.5.1.4.1.1.2", "CT", BodyPartExamined="HEAD"))
    hu = real_ct_slice_hu()
    if hu is not None:
        stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        add("cr_pixels_of_a_ct_slice.dcm", lambda p: _dicom(p, stored, CR, "CR"))
        add("cxr_is_a_ct_slice.png", lambda p: (Image.fromarray(np.clip((hu + 1000) / 1400 * 255, 0, 255).astype(
            np.uint8)).save(p), p)[1])
    add("truncated.dcm", lambda p: (p.write_bytes(_dicom(p, cxr, DX, "DX").read_bytes()[:4000]), p)[1])
    # Pictures
    add("black.png", lambda p: (Image.new("L", (512, 512), 0).save(p), p)[1])
    add("white.png", lambda p: (Image.new("L", (512, 512), 255).save(p), p)[1])
    add("noise.png", lambda p: (Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(p), p)[1])
    add("gaussian_noise.jpg", lambda p: (Image.fromarray(np.clip(rng.normal(128, 40, (400, 400)), 0, 255).astype(
        np.uint8)).save(p), p)[1])
    add("gradient.png", lambda p: (Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).save(p), p)[1])
    add("checkerboard.png", lambda p: (Image.fromarray(((np.indices((256, 256)).sum(0) // 16) % 2 * 255).astype(
        np.uint8)).save(p), p)[1])
    add("binary_mask.png", lambda p: (Image.fromarray(((np.indices((256, 256))[1] % 128 > 30) * 255).astype(
        np.uint8)).save(p), p)[1])
    add("colour_photo.jpg", lambda p: (Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize(
        (256, 256)).save(p), p)[1])
    add("icon_with_alpha.png", lambda p: (Image.fromarray(np.dstack([np.full((256, 256, 3), 200, np.uint8),
        ((np.indices((256, 256)).sum(0) < 300) * 255).astype(np.uint8)]), "RGBA").save(p), p)[1])
    add("random_bytes.png", lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(3000)), p)[1])
    add("truncated.jpg", lambda p: (Image.fromarray(cxr.astype(np.uint8)).save(p), p.write_bytes(
        p.read_bytes()[:2000]), p)[2])
    add("empty.png", lambda p: (p.write_bytes(b""), p)[1])
    add("bomb_12000.png", lambda p: png_bomb(p, 12000))
    add("bomb_30000.png", lambda p: png_bomb(p, 30000))
    add("radiograph_as_ct.png", lambda p: (Image.fromarray((cxr // 16).astype(np.uint8)).save(p), p)[1],
        ("--modality", "ct"))
    # Volumes
    ct = _phantom_ct()
    nan_ct = ct.copy()
    nan_ct[10:14, 40:50, 40:50] = np.nan
    add("nan_block.nii.gz", lambda p: _volume(p, nan_ct))
    add("spacing_20mm.nii.gz", lambda p: _volume(p, ct, spacing=(20.0, 20.0, 20.0)))
    add("spacing_0.05mm.nrrd", lambda p: _volume(p, ct, spacing=(0.05, 0.05, 0.05)))
    add("windowed_0_255.nii.gz", lambda p: _volume(p, np.clip((ct + 1000) / 8, 0, 255).astype(np.uint8)))
    add("mr_like.nii.gz", lambda p: _volume(p, np.clip(ct + 1000, 0, None).astype(np.int16)))
    add("constant_air.nii.gz", lambda p: _volume(p, np.full((12, 64, 64), -1000, np.int16)))
    add("sagittal.nii.gz", lambda p: _volume(p, ct, direction=[[0, 0, 1], [1, 0, 0], [0, 1, 0]]))
    add("bomb.nii.gz", nifti_gz_bomb)
    add("mhd_missing_raw.mhd", lambda p: (p.write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 64\n"
                                                        "ElementType = MET_SHORT\nElementDataFile = gone.raw\n"), p)[1])

    def series(p: Path, edit: Callable[[int, pydicom.Dataset], bool]) -> Path:
        """Three slices of the phantom as a DICOM CT series; ``edit(k, ds)`` changes slice k (True: save it)."""
        p.mkdir()
        uid = generate_uid()
        for k in range(3):
            f = write_dicom(p / f"{k}.dcm", (ct[k] + 1024).astype(np.uint16), modality="CT", slope=1.0,
                            intercept=-1024.0, position=(0.0, 0.0, 2.5 * k), series_uid=uid)
            ds = pydicom.dcmread(f)
            if edit(k, ds):
                ds.save_as(f, enforce_file_format=True)
        return p

    def as_mr(k: int, ds: pydicom.Dataset) -> bool:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        return True

    def slope_0_on_slice_1(k: int, ds: pydicom.Dataset) -> bool:
        ds.RescaleSlope = 0
        return k == 1

    add("mr_series", lambda p: series(p, as_mr))
    add("ct_series_slope_0", lambda p: series(p, slope_0_on_slice_1))
    # Not a file
    cases.append(("dev_null", Path("/dev/null"), [], 3))
    fifo = root / "fifo.png"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        cases.append(("fifo", fifo, [], 3))
    cases.append(("missing", root / "does-not-exist.png", [], 3))
    return cases


def pydicom_cases() -> list[tuple[str, Path, list[str], int]]:
    """The third-party DICOM files of :data:`PYDICOM_REFUSED` that this pydicom version ships."""
    return [(f"pydicom:{n}", PYDICOM_TEST_FILES / n, [], 3) for n in PYDICOM_REFUSED
            if (PYDICOM_TEST_FILES / n).is_file()]


def real_data_cases() -> list[tuple[str, Path, list[str], int]]:
    """Real non-CXR pictures of the shared data that must be refused as X-rays (skipped when absent)."""
    cases = []
    for name, rel in (("lung_mask_montgomery", "cxr/montgomery_shenzhen/masks/MCUCXR_0001_0.png"),
                      ("covid_semiseg_ct_slice", "ct/COVID-SemiSeg/TrainingSet/MultiClassInfection-Train/Imgs/1.jpg"),
                      ("covid_semiseg_mask", "ct/COVID-SemiSeg/TrainingSet/LungInfection-Train/Doctor-label/GT/1.png")):
        if (DATA / rel).is_file():
            cases.append((f"real:{name}", DATA / rel, [], 3))
    return cases
