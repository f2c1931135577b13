"""Write small, valid DICOM files for edge-case tests (pydicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def write_dicom(path: Path, pixels: np.ndarray, modality: str = "DX", photometric: str = "MONOCHROME2",
                bits_stored: int = 12, slope: float = 1.0, intercept: float = 0.0, position=None,
                series_uid: str | None = None, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                spacing=(0.5, 0.5), window=None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = "1.2.3"
    ds.ImageType = list(image_type)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    signed = pixels.min() < 0
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelSpacing = list(spacing)
    if modality == "CT" or slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.5
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(folder: Path, n: int = 5, z_step: float = 2.5, skip: tuple[int, ...] = (),
                    series_uid: str | None = None, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    paths = []
    for k in range(n):
        if k in skip:
            continue
        stored = np.full((size, size), 1024 + 10 * k, np.uint16)  # HU = stored - 1024
        paths.append(write_dicom(folder / f"{uid[-6:]}_{k:03d}.dcm", stored, modality="CT", bits_stored=12,
                                 slope=1.0, intercept=-1024.0, position=(-10.0, -20.0, -100.0 + k * z_step),
                                 series_uid=uid))
    return paths
